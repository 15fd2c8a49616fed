"""The ledger: one SQLite database that records every file syncd has seen.

This module is the only place that speaks SQL. Callers use verbs:
:meth:`Ledger.observe`, :meth:`~Ledger.promote`, :meth:`~Ledger.claim_next`,
:meth:`~Ledger.checkpoint`, :meth:`~Ledger.mark_uploaded`,
:meth:`~Ledger.mark_done`, :meth:`~Ledger.mark_failed`,
:meth:`~Ledger.requeue_stale` and so on.

A row is one *version* of one file: the folder, the path relative to it, and
the size, mtime, inode and (once read) SHA-256 of the bytes. States::

    settling -> queued -> uploading -> uploaded -> done
                   ^          |
                   +- retrying+-> failed        (attempts exhausted / permanent)
    settling|queued|retrying -> vanished        (gone before upload, or superseded)
    uploading -> uploaded (duplicate_of set) -> skipped   (on_duplicate = "skip")

At most one *active* row (settling, queued, uploading, retrying, uploaded)
exists per inbox path; a partial unique index enforces it. ``location`` is
NULL while the bytes are at ``folder/relpath`` and holds the absolute path
once they have moved (to failed_dir, or to the archive).

Durability: WAL with ``synchronous=NORMAL`` and group commit. Every write
is one ``BEGIN IMMEDIATE`` transaction, committed into the WAL without an
fsync: it survives a crash of the process (SIGKILL) at once, and survives a
power loss once the WAL has been synced. A verb whose outcome an invariant
depends on is *durable*: it returns only after :meth:`Ledger.sync` has
fsynced the WAL past its commit. One fsync serves every commit before it, and
callers that arrive while an fsync runs are served together by the next one,
so four workers finishing four files pay for about one fsync, not four. In
particular :meth:`mark_uploaded` returns only once "the remote confirmed these
exact bytes" is durable, and :meth:`set_archive_target` once the archive name
is; nothing may touch the source file before that. The busy path (observe,
settle, claim, checkpoints, done, retries) only commits. Concurrent processes
(the daemon and ``syncd retry``) wait on ``busy_timeout`` instead of failing.

Thread safety: one connection shared by every thread of the process, guarded
by a lock; each verb holds it only for its own statements.

Errors: opening a file that is not a database, is corrupt (``quick_check``
fails) or has a schema from a newer syncd raises
:class:`~syncd.errors.LedgerError`. Other :class:`sqlite3.Error` exceptions
(disk full, I/O error) propagate from the verb after the transaction rolled
back; the database stays valid.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import stat
import threading
import time
import uuid as uuidlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from syncd import crashpoints
from syncd.errors import LedgerError
from syncd.lock import make_state_dir
from syncd.logs import printable as _printable

SCHEMA_VERSION = 5
QUICK_CHECK_MAX_BYTES = 32 * 1024 * 1024  # read-only opens quick_check ledgers up to this size
APPLICATION_ID = 0x73796E63  # "sync"

STATES = (
    "settling", "queued", "uploading", "retrying", "uploaded",
    "done", "failed", "vanished", "skipped",
)
ACTIVE_STATES = ("settling", "queued", "uploading", "retrying", "uploaded")
_ACTIVE_SQL = "('settling','queued','uploading','retrying','uploaded')"
_ERROR_STATES_SQL = "('retrying','failed','queued','uploading')"

_MIGRATIONS: dict[int, str | tuple[str, ...]] = {
    1: f"""
    CREATE TABLE files (
        id INTEGER PRIMARY KEY,
        uuid TEXT NOT NULL UNIQUE,
        folder TEXT NOT NULL,
        relpath BLOB NOT NULL,
        location BLOB,
        state TEXT NOT NULL,
        size INTEGER,
        mtime_ns INTEGER,
        inode INTEGER,
        sha256 TEXT,
        destination TEXT NOT NULL,
        labels TEXT NOT NULL DEFAULT '[]',
        category TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL,
        last_error TEXT,
        receipt TEXT,
        resume TEXT,
        archive_path BLOB,
        first_seen REAL NOT NULL,
        changed_at REAL NOT NULL,
        queued_at REAL,
        uploaded_at REAL,
        done_at REAL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX files_state ON files(state, next_attempt_at);
    CREATE INDEX files_path ON files(folder, relpath);
    CREATE UNIQUE INDEX files_active_path ON files(folder, relpath)
        WHERE location IS NULL AND state IN {_ACTIVE_SQL};
    CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at REAL NOT NULL);
    """,
    # A file's identity is (device, inode): an inode number alone is reused across devices.
    2: "ALTER TABLE files ADD COLUMN device INTEGER",
    # Counts per folder and state kept by triggers in the same transaction as the change,
    # so `syncd status` reads a few rows instead of scanning the table (a million rows:
    # milliseconds); indexes for the other questions status asks.
    3: (
        "CREATE TABLE counts (folder TEXT NOT NULL, state TEXT NOT NULL, n INTEGER NOT NULL,"
        " PRIMARY KEY (folder, state)) WITHOUT ROWID",
        "INSERT INTO counts (folder, state, n) SELECT folder, state, COUNT(*) FROM files"
        " GROUP BY folder, state",
        "CREATE TRIGGER files_counts_insert AFTER INSERT ON files BEGIN"
        " INSERT INTO counts (folder, state, n) VALUES (NEW.folder, NEW.state, 1)"
        " ON CONFLICT (folder, state) DO UPDATE SET n = n + 1; END",
        "CREATE TRIGGER files_counts_delete AFTER DELETE ON files BEGIN"
        " UPDATE counts SET n = n - 1 WHERE folder = OLD.folder AND state = OLD.state; END",
        "CREATE TRIGGER files_counts_update AFTER UPDATE OF state, folder ON files"
        " WHEN OLD.state IS NOT NEW.state OR OLD.folder IS NOT NEW.folder BEGIN"
        " UPDATE counts SET n = n - 1 WHERE folder = OLD.folder AND state = OLD.state;"
        " INSERT INTO counts (folder, state, n) VALUES (NEW.folder, NEW.state, 1)"
        " ON CONFLICT (folder, state) DO UPDATE SET n = n + 1; END",
        # files done per local day ("done today" without counting them)
        "CREATE TABLE done_days (day TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID",
        "INSERT INTO done_days (day, n) SELECT date(done_at, 'unixepoch', 'localtime'), COUNT(*)"
        " FROM files WHERE state = 'done' AND done_at IS NOT NULL GROUP BY 1",
        "CREATE TRIGGER files_done_days_in AFTER UPDATE OF state ON files"
        " WHEN NEW.state = 'done' AND OLD.state IS NOT 'done' AND NEW.done_at IS NOT NULL BEGIN"
        " INSERT INTO done_days (day, n) VALUES (date(NEW.done_at, 'unixepoch', 'localtime'), 1)"
        " ON CONFLICT (day) DO UPDATE SET n = n + 1; END",
        "CREATE TRIGGER files_done_days_out AFTER UPDATE OF state ON files"
        " WHEN OLD.state = 'done' AND NEW.state IS NOT 'done' AND OLD.done_at IS NOT NULL BEGIN"
        " UPDATE done_days SET n = n - 1 WHERE day = date(OLD.done_at, 'unixepoch', 'localtime');"
        " END",
        "CREATE TRIGGER files_done_days_delete AFTER DELETE ON files"
        " WHEN OLD.state = 'done' AND OLD.done_at IS NOT NULL BEGIN"
        " UPDATE done_days SET n = n - 1 WHERE day = date(OLD.done_at, 'unixepoch', 'localtime');"
        " END",
        f"CREATE INDEX files_errors ON files(updated_at) WHERE last_error IS NOT NULL"
        f" AND state IN {_ERROR_STATES_SQL}",
        # inode_busy() asks this for every file about to be queued: a burst of 20,000
        # quiet files must not make it a scan each
        "CREATE INDEX files_inode ON files(folder, inode)"
        " WHERE state IN ('queued', 'uploading', 'retrying', 'uploaded')",
    ),
    # Duplicate content (on_duplicate = "skip") and per-file metadata (labels_from_path,
    # metadata_sidecar): the earlier upload a skipped row points at, what was sent, and
    # where the sidecar was moved (recorded before the move, like archive_path).
    4: """
    ALTER TABLE files ADD COLUMN duplicate_of INTEGER;
    ALTER TABLE files ADD COLUMN meta TEXT;
    ALTER TABLE files ADD COLUMN sidecar_path BLOB;
    CREATE INDEX files_sha256 ON files(folder, sha256) WHERE sha256 IS NOT NULL
    """,
    # When the settle stage looks at a settling row next: work per wake-up is the rows
    # due, found by an index, instead of every settling row on every tick.
    5: (
        "ALTER TABLE files ADD COLUMN due_at REAL",
        "UPDATE files SET due_at = changed_at WHERE state = 'settling'",
        "CREATE INDEX files_settle_due ON files(due_at) WHERE state = 'settling'",
    ),
}


@dataclass(frozen=True)
class Stat:
    """What the settle stage saw of a file: written with its verdict (:meth:`Ledger.promote`,
    :meth:`Ledger.set_due`). ``changed_at`` set: the file changed, its quiet time restarts."""

    size: int
    mtime_ns: int
    inode: int
    device: int
    changed_at: float | None = None


@dataclass(frozen=True)
class Row:
    """One ledger row, decoded. ``relpath`` is ``str`` (surrogate-escaped bytes)."""

    id: int
    uuid: str
    folder: str
    relpath: str
    location: str | None
    state: str
    size: int | None
    mtime_ns: int | None
    inode: int | None
    sha256: str | None
    destination: str
    labels: tuple[str, ...]
    category: str | None
    attempts: int
    next_attempt_at: float | None
    last_error: str | None
    receipt: dict[str, Any] | None
    resume: dict[str, Any] | None
    archive_path: str | None
    first_seen: float
    changed_at: float
    queued_at: float | None
    uploaded_at: float | None
    done_at: float | None
    updated_at: float
    device: int | None = None  # st_dev with ``inode``: the file's identity
    duplicate_of: int | None = None  # skipped (on_duplicate = "skip"): the row that was uploaded
    meta: dict[str, Any] | None = None  # labels/category sent, and the sidecar read (metadata.py)
    sidecar_path: str | None = None  # where the metadata sidecar was moved (target recorded first)

    @property
    def inbox_path(self) -> str:
        """Where the file sits (or sat) in its watched folder."""
        return os.path.join(self.folder, self.relpath)

    @property
    def current_path(self) -> str:
        """Where the bytes are now: ``location`` if they moved, else the inbox path."""
        return self.location if self.location is not None else self.inbox_path

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict (paths with undecodable bytes are backslash-escaped)."""
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, str):
                value = _printable(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[name] = value
        return out


def make_private(path: Path) -> None:
    """Create ``path`` as an empty file with mode 0600 (whatever the umask), or bring an
    existing one and its ``-wal``/``-shm`` to 0600 (ledgers of older versions were 0644).

    The ledger holds every file name, receipt and resume state, so it is the
    owner's alone; SQLite gives the ``-wal``, ``-shm`` and ``-journal`` files
    it creates the mode of the database file.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            with contextlib.suppress(OSError):  # missing, or not ours to change
                if stat.S_IMODE(p.stat().st_mode) & 0o077:
                    p.chmod(0o600)
        return
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def _enc(path: str | None) -> bytes | None:
    return None if path is None else os.fsencode(path)


def _dec(blob: bytes | str | None) -> str | None:
    if blob is None:
        return None
    return os.fsdecode(blob)


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True, ensure_ascii=False)


def _ascii_json(value: Any) -> str:
    """JSON with non-ASCII escaped: keeps the surrogate escapes of undecodable file names."""
    return json.dumps(value, sort_keys=True)


def _unjson(text: str | None) -> Any:
    return None if text is None else json.loads(text)


class Ledger:
    """The SQLite ledger. Open with :meth:`open`; close with :meth:`close`."""

    def __init__(self, conn: sqlite3.Connection, path: Path, clock: Any = time.time) -> None:
        self._conn = conn
        self.path = path
        self._lock = threading.RLock()
        self._clock = clock
        # group commit: commits so far, commits known synced, and the one fsync in flight
        self._committed = 0
        self._synced = 0
        self._syncing = False
        self._sync_cond = threading.Condition()
        self._wal_fd: int | None = None
        self._wal_id: tuple[int, int] | None = None

    # ----------------------------------------------------------------- opening

    @classmethod
    def open(cls, path: str | Path, *, readonly: bool = False, clock: Any = time.time,
             timeout: float = 10.0) -> Ledger:
        """Open (creating and migrating unless ``readonly``) the ledger at ``path``."""
        path = Path(path)
        try:
            if readonly:
                if not path.exists():
                    raise LedgerError(f"no ledger at {path} (has syncd run with this config?)")
                uri = f"file:{path}?mode=ro"
                conn = sqlite3.connect(uri, uri=True, timeout=timeout, check_same_thread=False,
                                       isolation_level=None)
            else:
                make_state_dir(path.parent)
                make_private(path)  # before SQLite: its -wal and -shm copy this file's mode
                conn = sqlite3.connect(str(path), timeout=timeout, check_same_thread=False,
                                       isolation_level=None)
            conn.row_factory = sqlite3.Row
            if not readonly:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")  # durability by Ledger.sync()
            # Writers (the daemon) check the whole file at open. A read-only look
            # (`syncd status`, `files`) checks a ledger up to QUICK_CHECK_MAX_BYTES the
            # same way, but does not pay a scan of a million rows for it: on a larger one
            # the daemon's check at its start stands (and `syncd ledger check` does it).
            scan = not readonly or path.stat().st_size <= QUICK_CHECK_MAX_BYTES
            check = conn.execute("PRAGMA quick_check").fetchone()[0] if scan else "ok"
            if check != "ok":
                conn.close()
                raise LedgerError(f"ledger {path} is corrupt ({check}); run `syncd ledger rebuild`")
            ledger = cls(conn, path, clock)
            if not readonly:
                ledger._migrate()
            else:
                ledger._check_version()
            return ledger
        except sqlite3.DatabaseError as exc:
            raise LedgerError(
                f"ledger {path} is unusable ({exc}); run `syncd ledger rebuild` to rebuild it "
                "from the folders"
            ) from None

    def _check_version(self) -> int:
        version = int(self._conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise LedgerError(
                f"ledger {self.path} has schema version {version}, newer than this syncd "
                f"understands ({SCHEMA_VERSION}); upgrade syncd"
            )
        return version

    def _migrate(self) -> None:
        version = self._check_version()
        app_id = int(self._conn.execute("PRAGMA application_id").fetchone()[0])
        if version and app_id != APPLICATION_ID:
            raise LedgerError(f"{self.path} is an SQLite database but not a syncd ledger")
        for target in range(version + 1, SCHEMA_VERSION + 1):
            with self._write(durable=True):
                steps = _MIGRATIONS[target]
                # a string is split on ";"; a tuple holds statements that contain ";" (triggers)
                for statement in steps.split(";") if isinstance(steps, str) else steps:
                    if statement.strip():
                        self._conn.execute(statement)
                self._conn.execute(f"PRAGMA user_version={target}")
                self._conn.execute(f"PRAGMA application_id={APPLICATION_ID}")

    def close(self) -> None:
        with self._lock:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass
            if self._wal_fd is not None:
                os.close(self._wal_fd)
                self._wal_fd = None

    @contextmanager
    def _write(self, point: str = "commit", *, durable: bool = False) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction; ``point`` names its crash point.

        ``durable``: return only once the commit is on disk (:meth:`sync`).
        """
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                try:
                    self._conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                raise
            else:
                self._conn.execute("COMMIT")
                self._committed += 1
                mine = self._committed
                crashpoints.point(f"ledger.{point}")
        if durable:
            self.sync(mine, point)

    def sync(self, upto: int | None = None, point: str = "sync") -> None:
        """Make every commit of this connection so far (or up to commit number ``upto``) durable.

        Group commit: one caller (the leader) fsyncs the WAL while the others
        wait; the fsync covers every commit made before it started, so each
        waiter whose commit it covers returns without an fsync of its own. A
        waiter whose commit came later becomes the next leader. Commits go on
        meanwhile: the ledger lock is not held during the fsync.
        """
        with self._sync_cond:
            target = self._committed if upto is None else upto
            while self._synced < target:
                if self._syncing:
                    self._sync_cond.wait()
                    continue
                self._syncing = True
                covered = 0
                try:
                    covered = self._committed  # every commit up to here is in the WAL file
                    fd = self._wal()  # only the leader opens it
                    self._sync_cond.release()
                    try:
                        os.fdatasync(fd)
                    finally:
                        self._sync_cond.acquire()
                    crashpoints.point(f"ledger.{point}.synced")  # by the leader, for all
                    self._synced = max(self._synced, covered)
                finally:
                    self._syncing = False
                    self._sync_cond.notify_all()

    def _wal(self) -> int:
        """A descriptor of the WAL file (opened once; again if SQLite made a new one).

        Syncing it is what ``synchronous=FULL`` does after each commit: frames
        already moved into the database by a checkpoint were synced there by
        SQLite (``synchronous=NORMAL`` syncs the WAL before a checkpoint and the
        database after it). A new WAL file's directory entry is synced once.
        """
        wal = f"{self.path}-wal"
        st = os.stat(wal)
        if self._wal_fd is None or self._wal_id != (st.st_dev, st.st_ino):
            if self._wal_fd is not None:
                os.close(self._wal_fd)
                self._wal_fd = None
            self._wal_fd = os.open(wal, os.O_RDONLY | os.O_CLOEXEC)
            self._wal_id = (st.st_dev, st.st_ino)
            dirfd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(dirfd)
            finally:
                os.close(dirfd)
        return self._wal_fd

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        with self._lock:
            rows = self._conn.execute(sql, args).fetchall()
        return [self._row(r) for r in rows]

    @staticmethod
    def _row(r: sqlite3.Row) -> Row:
        return Row(
            id=r["id"], uuid=r["uuid"], folder=r["folder"], relpath=os.fsdecode(r["relpath"]),
            location=_dec(r["location"]), state=r["state"], size=r["size"],
            mtime_ns=r["mtime_ns"], inode=r["inode"], sha256=r["sha256"],
            destination=r["destination"], labels=tuple(json.loads(r["labels"])),
            category=r["category"], attempts=r["attempts"], next_attempt_at=r["next_attempt_at"],
            last_error=r["last_error"], receipt=_unjson(r["receipt"]), resume=_unjson(r["resume"]),
            archive_path=_dec(r["archive_path"]), first_seen=r["first_seen"],
            changed_at=r["changed_at"], queued_at=r["queued_at"], uploaded_at=r["uploaded_at"],
            done_at=r["done_at"], updated_at=r["updated_at"], device=r["device"],
            **Ledger._v4(r),
        )

    @staticmethod
    def _v4(r: sqlite3.Row) -> dict[str, Any]:
        """The columns of schema 4, absent from a ledger opened read-only before its migration."""
        if "duplicate_of" not in r.keys():  # noqa: SIM118 (a Row iterates its values)
            return {}
        return {"duplicate_of": r["duplicate_of"], "meta": _unjson(r["meta"]),
                "sidecar_path": _dec(r["sidecar_path"])}

    def _set(self, conn: sqlite3.Connection, row_id: int, **fields: Any) -> None:
        fields["updated_at"] = self._clock()
        cols = ", ".join(f"{k} = ?" for k in fields)
        conn.execute(f"UPDATE files SET {cols} WHERE id = ?", (*fields.values(), row_id))

    def _update(self, point: str, row_id: int, *, durable: bool = False, **fields: Any) -> None:
        """One ``UPDATE`` of one row as a transaction of its own (SQLite's autocommit: one
        statement, where BEGIN/UPDATE/COMMIT are three); otherwise like :meth:`_write`."""
        fields["updated_at"] = self._clock()
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self._lock:
            self._conn.execute(f"UPDATE files SET {cols} WHERE id = ?", (*fields.values(), row_id))
            self._committed += 1
            mine = self._committed
            crashpoints.point(f"ledger.{point}")
        if durable:
            self.sync(mine, point)

    # ------------------------------------------------------------ observation

    def observe(self, folder: str, relpaths: Iterable[str], *, destination: str,
                labels: Sequence[str] = (), category: str | None = None) -> int:
        """Record that these paths in ``folder`` were seen; returns rows created.

        A path that already has an active row is left alone (the settle stage
        re-checks it anyway); otherwise a new ``settling`` row is created with
        no stat yet. Cheap enough for the watchdog thread: no I/O but SQLite,
        one transaction per call (callers batch up to ~1000 paths).
        """
        now = self._clock()
        created = 0
        labels_json = json.dumps(list(labels), ensure_ascii=False)
        with self._write("observe") as conn:
            for relpath in relpaths:
                cur = conn.execute(
                    "INSERT OR IGNORE INTO files (uuid, folder, relpath, state, destination, labels,"
                    " category, first_seen, changed_at, updated_at, due_at)"
                    " VALUES (?, ?, ?, 'settling', ?, ?, ?, ?, ?, ?, ?)",
                    (str(uuidlib.uuid4()), folder, os.fsencode(relpath), destination, labels_json,
                     category, now, now, now, now),
                )
                created += cur.rowcount
                if not cur.rowcount:  # an event for a file still settling: look at it now
                    conn.execute(
                        "UPDATE files SET due_at = ? WHERE folder = ? AND relpath = ?"
                        " AND state = 'settling' AND location IS NULL AND due_at > ?",
                        (now, folder, os.fsencode(relpath), now))
        return created

    def settling_due(self, now: float, limit: int) -> list[Row]:
        """Settling rows whose next look is due at ``now``, the most overdue first, at most ``limit``."""
        return self._query(
            "SELECT * FROM files INDEXED BY files_settle_due WHERE state = 'settling'"
            " AND due_at <= ? ORDER BY due_at LIMIT ?", (now, limit))

    def next_settle_due(self) -> float | None:
        """When the next settling row is due a look (None: nothing settles)."""
        with self._lock:
            r = self._conn.execute(
                "SELECT MIN(due_at) FROM files WHERE state = 'settling'").fetchone()
        return None if r[0] is None else float(r[0])

    def set_due(self, looks: Sequence[tuple[int, float]], stats: Mapping[int, Stat] | None = None) -> None:
        """When to look at these settling rows next, and the new stats seen of them (one
        transaction for a whole settle tick)."""
        if not looks and not stats:
            return
        with self._write("due") as conn:
            for row_id, st in (stats or {}).items():
                self._set_stat(conn, row_id, st)
            conn.executemany("UPDATE files SET due_at = ? WHERE id = ? AND state = 'settling'",
                             [(at, row_id) for row_id, at in looks])

    def _set_stat(self, conn: sqlite3.Connection, row_id: int, st: Stat) -> None:
        fields: dict[str, Any] = {"size": st.size, "mtime_ns": st.mtime_ns, "inode": st.inode,
                                  "device": st.device}
        if st.changed_at is not None:
            fields["changed_at"] = st.changed_at
        conn.execute(f"UPDATE files SET {', '.join(f'{k} = ?' for k in fields)}, updated_at = ?"
                     " WHERE id = ? AND state = 'settling'",
                     (*fields.values(), self._clock(), row_id))

    def settling_ids(self) -> set[int]:
        with self._lock:
            return {r[0] for r in self._conn.execute("SELECT id FROM files WHERE state = 'settling'")}

    def settling(self) -> list[Row]:
        """Every row waiting to be judged finished, oldest first."""
        return self._query("SELECT * FROM files WHERE state = 'settling' ORDER BY id")

    def note_stat(self, row_id: int, *, size: int, mtime_ns: int, inode: int,
                  changed: bool, device: int | None = None) -> None:
        """Store the latest stat of a settling file; ``changed`` restarts its quiet time."""
        with self._write() as conn:
            if changed:
                self._set(conn, row_id, size=size, mtime_ns=mtime_ns, inode=inode, device=device,
                          changed_at=self._clock())
            else:
                self._set(conn, row_id, size=size, mtime_ns=mtime_ns, inode=inode, device=device)

    def promote(self, row_id: int, stat: Stat | None = None) -> None:
        """settling -> queued: the file has been quiet long enough (``stat``: its latest
        stat, when it differs from the row's)."""
        now = self._clock()
        with self._write("promote") as conn:
            if stat is not None:
                self._set_stat(conn, row_id, stat)
            self._set(conn, row_id, state="queued", queued_at=now, next_attempt_at=now)

    def forget(self, row_id: int) -> None:
        """Delete a settling row that turned out not to be a new version."""
        with self._write() as conn:
            conn.execute("DELETE FROM files WHERE id = ? AND state = 'settling'", (row_id,))

    def latest_for_path(self, folder: str, relpath: str) -> Row | None:
        """The newest row for an inbox path, whatever its state."""
        rows = self._query(
            "SELECT * FROM files WHERE folder = ? AND relpath = ? ORDER BY id DESC LIMIT 1",
            (folder, os.fsencode(relpath)),
        )
        return rows[0] if rows else None

    def at_location(self, folder: str, path: str) -> Row | None:
        """The newest row of ``folder`` whose bytes are at ``path`` (archived or moved to
        failed_dir), or planned to go there; for `syncd explain` on such a path."""
        rows = self._query(
            "SELECT * FROM files WHERE folder = ? AND (location = ? OR archive_path = ?)"
            " ORDER BY id DESC LIMIT 1", (folder, os.fsencode(path), os.fsencode(path)),
        )
        return rows[0] if rows else None

    def previous_version(self, row: Row) -> Row | None:
        """The newest older row for the same inbox path, whatever its state."""
        rows = self._query(
            "SELECT * FROM files WHERE folder = ? AND relpath = ? AND id < ?"
            " ORDER BY id DESC LIMIT 1",
            (row.folder, os.fsencode(row.relpath), row.id),
        )
        return rows[0] if rows else None

    def active_for_path(self, folder: str, relpath: str) -> Row | None:
        rows = self._query(
            f"SELECT * FROM files WHERE folder = ? AND relpath = ? AND location IS NULL"
            f" AND state IN {_ACTIVE_SQL} LIMIT 1",
            (folder, os.fsencode(relpath)),
        )
        return rows[0] if rows else None

    def active_paths(self, folder: str) -> set[str]:
        """Relative paths in ``folder`` that have an active row (for scans)."""
        with self._lock:
            rows = self._conn.execute(
                f"SELECT relpath FROM files WHERE folder = ? AND location IS NULL"
                f" AND state IN {_ACTIVE_SQL}", (folder,),
            ).fetchall()
        return {os.fsdecode(r[0]) for r in rows}

    def done_versions(self, folder: str) -> dict[str, tuple[int | None, int | None, int | None]]:
        """Files finished but still in the inbox (kept, or failed in place).

        path -> (size, mtime_ns, inode) of the newest such row, so scans do
        not mistake them for new versions.
        """
        with self._lock:
            rows = self._conn.execute(
                "SELECT relpath, size, mtime_ns, inode FROM files WHERE folder = ? AND location IS NULL"
                " AND state IN ('done', 'skipped', 'failed') ORDER BY id", (folder,),
            ).fetchall()
        return {os.fsdecode(r[0]): (r[1], r[2], r[3]) for r in rows}

    # --------------------------------------------------------------- uploads

    def claim_next(self, destinations: Iterable[str] | None = None) -> Row | None:
        """Atomically take the next due queued/retrying row: -> uploading, attempts+1."""
        now = self._clock()
        where = "state IN ('queued', 'retrying') AND (next_attempt_at IS NULL OR next_attempt_at <= ?)"
        args: list[Any] = [now]
        if destinations is not None:
            names = list(destinations)
            if not names:
                return None
            where += f" AND destination IN ({', '.join('?' * len(names))})"
            args.extend(names)
        with self._lock:
            # one statement, so one implicit transaction: pick and take the row atomically
            rows = self._conn.execute(
                "UPDATE files SET state = 'uploading', attempts = attempts + 1, updated_at = ?"
                f" WHERE id = (SELECT id FROM files WHERE {where} ORDER BY next_attempt_at, id LIMIT 1)"
                " RETURNING *", (now, *args)).fetchall()  # all: the statement ends, and commits
            if not rows:
                return None
            self._committed += 1
            crashpoints.point("ledger.claim")
        return self._row(rows[0])

    def next_due(self) -> float | None:
        """When the earliest waiting queued/retrying row becomes due (wall clock)."""
        with self._lock:
            r = self._conn.execute(
                "SELECT MIN(next_attempt_at) FROM files WHERE state IN ('queued', 'retrying')"
            ).fetchone()
        return None if r is None else r[0]

    def checkpoint(self, row_id: int, resume: dict[str, Any] | None) -> None:
        """Store a destination's resumable state for this row.

        Committed, not synced: a crash of the process keeps it; after a power
        loss an older state (or none) is resumed, which sends some parts again.
        """
        self._update("checkpoint", row_id, resume=_json(resume))

    def mark_uploaded(self, row_id: int, *, sha256: str, receipt: dict[str, Any],
                      meta: dict[str, Any] | None = None) -> None:
        """The remote confirmed these bytes.

        Committed, and made durable by the next :meth:`sync` before the source
        file is touched: :func:`syncd.archive.finish` syncs before a delete, and
        the durable :meth:`set_archive_target` (or :meth:`set_location`) that
        precedes a move covers this commit too, with one fsync for both.

        ``meta``: the labels and category sent and the sidecar they came from
        (:meth:`syncd.metadata.Metadata.to_json`), which the archive moves along.
        """
        fields: dict[str, Any] = {}
        if meta is not None:
            fields["meta"] = _ascii_json(meta)
        self._update("uploaded", row_id, state="uploaded", sha256=sha256, receipt=_json(receipt),
                     uploaded_at=self._clock(), last_error=None, next_attempt_at=None, **fields)

    def uploaded_copy(self, folder: str, sha256: str, *, destination: str,
                      exclude: int | None = None) -> Row | None:
        """The oldest row of ``folder`` whose upload of these bytes to ``destination``
        was confirmed (``uploaded`` or ``done``, not itself a skipped duplicate)."""
        rows = self._query(
            "SELECT * FROM files WHERE folder = ? AND sha256 = ? AND destination = ?"
            " AND state IN ('uploaded', 'done') AND duplicate_of IS NULL AND receipt IS NOT NULL"
            " AND id != ? ORDER BY id LIMIT 1",
            (folder, sha256, destination, -1 if exclude is None else exclude),
        )
        return rows[0] if rows else None

    def mark_duplicate(self, row_id: int, *, sha256: str, original: Row,
                       meta: dict[str, Any] | None = None) -> None:
        """on_duplicate = "skip": these bytes were uploaded already, as ``original``.

        Durable on return, before the file is archived. The row goes to
        ``uploaded`` with ``duplicate_of`` set and a receipt naming the earlier
        upload, so the after-upload action is finished like an upload's after
        a crash; :meth:`mark_done` then makes it ``skipped``.
        """
        receipt = {"duplicate_of": original.id,
                   "remote_id": (original.receipt or {}).get("remote_id"),
                   "url": (original.receipt or {}).get("url")}
        fields: dict[str, Any] = {}
        if meta is not None:
            fields["meta"] = _ascii_json(meta)
        with self._write("duplicate", durable=True) as conn:
            self._set(conn, row_id, state="uploaded", sha256=sha256, receipt=_json(receipt),
                      duplicate_of=original.id, last_error=None, next_attempt_at=None,
                      resume=None, **fields)

    def set_sidecar_target(self, row_id: int, target: str | None) -> None:
        """Record where the metadata sidecar is being moved, before the move (crash recovery)."""
        self._update("sidecar_target", row_id, durable=True, sidecar_path=_enc(target))

    def set_location(self, row_id: int, location: str) -> None:
        """The bytes of this row are now at ``location`` (renamed during upload)."""
        self._update("location", row_id, durable=True, location=_enc(location))

    def inode_busy(self, row: Row) -> Row | None:
        """Another row of the same folder and inode that is queued or further along.

        A file renamed during its upload shows up again at its new path; that
        new row must wait until the upload of the same bytes has finished.
        """
        rows = self._query(
            "SELECT * FROM files WHERE folder = ? AND inode = ? AND id != ? AND state IN"
            " ('queued', 'uploading', 'retrying', 'uploaded') LIMIT 1",
            (row.folder, row.inode, row.id),
        )
        return rows[0] if rows else None

    def set_archive_target(self, row_id: int, target: str | None) -> None:
        """Record where the archive move is going, before it starts (for crash recovery)."""
        self._update("archive_target", row_id, durable=True, archive_path=_enc(target))

    def mark_done(self, row_id: int, *, location: str | None = None, note: str | None = None) -> None:
        """The after-upload action (archive, delete or keep) has completed.

        A row that was a skipped duplicate (``duplicate_of`` set) becomes ``skipped``.
        """
        fields: dict[str, Any] = {"done_at": self._clock()}
        if location is not None:
            fields["location"] = _enc(location)
        if note is not None:
            fields["last_error"] = note
        cols = "".join(f", {k} = ?" for k in fields)
        with self._lock:
            self._conn.execute(
                "UPDATE files SET state = CASE WHEN duplicate_of IS NULL THEN 'done' ELSE 'skipped'"
                f" END, updated_at = ?{cols} WHERE id = ?", (self._clock(), *fields.values(), row_id))
            self._committed += 1
            crashpoints.point("ledger.done")

    def mark_retry(self, row_id: int, *, error: str, at: float, count: bool = True) -> None:
        """The attempt failed but may work later; due again at ``at`` (wall clock).

        ``count=False`` gives the attempt back: for local conditions (a file
        not readable yet) that say nothing about the upload itself.
        """
        with self._write("retry") as conn:
            if not count:
                conn.execute("UPDATE files SET attempts = MAX(attempts - 1, 0) WHERE id = ?",
                             (row_id,))
            self._set(conn, row_id, state="retrying", last_error=error, next_attempt_at=at)

    def requeue_now(self, row_id: int, *, reason: str | None = None) -> None:
        """Back to queued without counting the attempt (shutdown, paused destination)."""
        with self._write() as conn:
            conn.execute("UPDATE files SET attempts = MAX(attempts - 1, 0) WHERE id = ?", (row_id,))
            self._set(conn, row_id, state="queued", next_attempt_at=self._clock(),
                      last_error=reason)

    def mark_failed(self, row_id: int, *, error: str, location: str | None) -> None:
        """Given up: the file was moved to ``location`` (failed_dir), or stays put if None."""
        with self._write("failed", durable=True) as conn:
            fields: dict[str, Any] = {"state": "failed", "last_error": error, "next_attempt_at": None,
                                      "resume": None}
            if location is not None:
                fields["location"] = _enc(location)
            self._set(conn, row_id, **fields)

    def mark_vanished(self, row_id: int, *, reason: str) -> None:
        """The file disappeared (or was superseded) before its upload completed."""
        with self._write() as conn:
            self._set(conn, row_id, state="vanished", last_error=reason, next_attempt_at=None,
                      resume=None)

    def supersede(self, row: Row, *, reason: str) -> None:
        """The file changed during upload: retire ``row`` and start a new settling version."""
        now = self._clock()
        with self._write() as conn:
            self._set(conn, row.id, state="vanished", last_error=reason, resume=None,
                      next_attempt_at=None)
            if row.location is None:
                conn.execute(
                    "INSERT OR IGNORE INTO files (uuid, folder, relpath, state, destination, labels,"
                    " category, first_seen, changed_at, updated_at, due_at)"
                    " VALUES (?, ?, ?, 'settling', ?, ?, ?, ?, ?, ?, ?)",
                    (str(uuidlib.uuid4()), row.folder, os.fsencode(row.relpath), row.destination,
                     json.dumps(list(row.labels), ensure_ascii=False), row.category, now, now, now,
                     now),
                )

    def requeue_stale(self) -> int:
        """At startup: uploads interrupted by a crash go back to the queue (resume kept)."""
        now = self._clock()
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE files SET state = 'queued', next_attempt_at = ?, updated_at = ?"
                " WHERE state = 'uploading'", (now, now),
            )
        return cur.rowcount

    def requeue_failed(self, ids: Sequence[int] | None = None) -> list[Row]:
        """``syncd retry``: failed rows (all, or these ids) go back to the queue.

        The bytes stay where they are (usually failed_dir) and are uploaded
        from there; ``attempts`` starts again from zero.
        """
        now = self._clock()
        with self._write("requeue_failed", durable=True) as conn:
            if ids is None:
                found = conn.execute("SELECT id FROM files WHERE state = 'failed'").fetchall()
                targets = [r[0] for r in found]
            else:
                targets = list(ids)
            for row_id in targets:
                conn.execute(
                    "UPDATE files SET state = 'queued', attempts = 0, next_attempt_at = ?,"
                    " updated_at = ?, last_error = NULL, archive_path = NULL"
                    " WHERE id = ? AND state = 'failed'",
                    (now, now, row_id),
                )
        return [r for r in (self.get(i) for i in targets) if r is not None]

    # ---------------------------------------------------------------- reading

    def get(self, row_id: int) -> Row | None:
        rows = self._query("SELECT * FROM files WHERE id = ?", (row_id,))
        return rows[0] if rows else None

    def rows(self, *, state: str | None = None, folder: str | None = None,
             limit: int | None = None) -> list[Row]:
        sql = "SELECT * FROM files"
        where: list[str] = []
        args: list[Any] = []
        if state is not None:
            where.append("state = ?")
            args.append(state)
        if folder is not None:
            where.append("folder = ?")
            args.append(folder)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return self._query(sql, args)

    def in_state(self, *states: str) -> list[Row]:
        marks = ", ".join("?" * len(states))
        return self._query(f"SELECT * FROM files WHERE state IN ({marks}) ORDER BY id", states)

    def counts(self) -> dict[str, int]:
        """Rows per state (every state present, 0 when none): from the maintained counters."""
        with self._lock:
            found = self._conn.execute("SELECT state, SUM(n) FROM counts GROUP BY state").fetchall()
        out = {s: 0 for s in STATES}
        out.update({r[0]: r[1] for r in found if r[1]})
        return out

    def counts_by_folder(self) -> dict[str, dict[str, int]]:
        """Rows per folder and state (only states with rows): from the maintained counters."""
        with self._lock:
            found = self._conn.execute("SELECT folder, state, n FROM counts WHERE n > 0").fetchall()
        out: dict[str, dict[str, int]] = {}
        for folder, state, n in found:
            out.setdefault(folder, {})[state] = n
        return out

    def recent_errors(self, limit: int = 10) -> list[Row]:
        """The newest rows with an error that still matters (the partial index answers it)."""
        return self._query(
            # the planner would pick files_state and sort every matching row
            f"SELECT * FROM files INDEXED BY files_errors WHERE last_error IS NOT NULL"
            f" AND state IN {_ERROR_STATES_SQL}"
            " ORDER BY updated_at DESC LIMIT ?",
            (limit,),
        )

    def done_today(self) -> int:
        """Files done since local midnight, from the per-day counter."""
        with self._lock:
            r = self._conn.execute(
                "SELECT n FROM done_days WHERE day = date('now', 'localtime')").fetchone()
        return int(r[0]) if r else 0

    def done_since(self, since: float) -> int:
        with self._lock:
            r = self._conn.execute(
                "SELECT COUNT(*) FROM files WHERE state = 'done' AND done_at >= ?", (since,)
            ).fetchone()
        return int(r[0])

    def integrity_check(self) -> str:
        with self._lock:
            return str(self._conn.execute("PRAGMA integrity_check").fetchone()[0])

    # -------------------------------------------------------------- key/value

    def put_meta(self, key: str, value: Any, *, durable: bool = True) -> None:
        """Set ``key`` in the kv table. ``durable=False`` does not wait for an fsync: for a
        snapshot rewritten every second (upload progress), carried to disk by the next
        durable commit; a power loss may lose it, nothing else."""
        with self._write("meta", durable=durable) as conn:
            conn.execute(
                "INSERT INTO kv (key, value, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT(key) DO UPDATE SET value = excluded.value,"
                " updated_at = excluded.updated_at",
                (key, json.dumps(value), self._clock()),
            )

    def get_meta(self, key: str, default: Any = None) -> Any:
        with self._lock:
            r = self._conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return default if r is None else json.loads(r[0])
