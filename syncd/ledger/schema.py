"""The ledger's schema and how a database file becomes a checked, current ledger.

The schema is the sum of :data:`_MIGRATIONS`: step ``n`` brings a ledger from
``user_version`` ``n - 1`` to ``n``. A released step never changes (ledgers
everywhere ran it as written), so the DDL spells states out instead of using
:class:`~syncd.ledger.row.State`. Partial indexes serve only queries that repeat
their ``WHERE`` terms: :data:`ACTIVE_SQL` and :data:`ERROR_STATES_SQL` are those
terms, as the queries write them.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import stat
from pathlib import Path

from syncd.errors import LedgerError, LedgerUnreachable
from syncd.ledger.row import ACTIVE_STATES, ERROR_STATES, sql_in
from syncd.lock import holder_pid, make_state_dir

SCHEMA_VERSION = 9
READABLE_FROM = 3  # the oldest schema read-only commands read without its upgrade (counts, device)
QUICK_CHECK_MAX_BYTES = 32 * 1024 * 1024  # read-only opens quick_check ledgers up to this size
APPLICATION_ID = 0x73796E63  # "sync"

# the WHERE terms of files_active_path and files_errors, for the queries they serve
ACTIVE_SQL = sql_in(ACTIVE_STATES)  # ('settling','queued','uploading','retrying','uploaded')
ERROR_STATES_SQL = sql_in(ERROR_STATES)  # ('retrying','failed','queued','uploading')

_MIGRATIONS: dict[int, str | tuple[str, ...]] = {
    1: """
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
        WHERE location IS NULL AND state IN ('settling','queued','uploading','retrying','uploaded');
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
        "CREATE INDEX files_errors ON files(updated_at) WHERE last_error IS NOT NULL"
        " AND state IN ('retrying','failed','queued','uploading')",
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
    # `syncd files --state S --limit N`: the newest rows in a state are the last entries
    # of that state in this index, instead of a sort of every row in it.
    6: "CREATE INDEX files_state_id ON files(state, id)",
    # A worker claims only for destinations it may send to: through files_state it read past
    # every due row of a destination that is down (60 ms a claim at 200,000 of them, under
    # the ledger lock). Scans ask which finished files are still in the folder: through
    # files_path they read every archived row of it (2 s a rescan at a million). Both
    # indexes hold only the rows asked for, so they stay small whatever the ledger's size.
    7: (
        "CREATE INDEX files_waiting ON files(destination, state, next_attempt_at)"
        " WHERE state IN ('queued','retrying')",
        "CREATE INDEX files_kept ON files(folder, relpath)"
        " WHERE location IS NULL AND state IN ('done','skipped','failed')",
        "CREATE INDEX files_kept_moved ON files(location) WHERE location IS NOT NULL"
        " AND state IN ('done','skipped','failed') AND (archive_path IS NULL OR state = 'failed')",
    ),
    # A row may be 'forgotten' (`syncd ledger forget`: its folder left the configuration).
    # No table changes; the version alone makes an older syncd, which does not know that
    # state, refuse the ledger instead of failing on such a row.
    8: (),
    # A file left in its folder after its upload (after_upload = "keep", or failed in place)
    # is recognised by its size, mtime and inode, which a rewrite in place can all keep
    # (`touch -d`, `cp --preserve=timestamps`); its inode change time, which no program
    # sets back, says when to hash it again. Adding a column rewrites no row.
    9: "ALTER TABLE files ADD COLUMN ctime_ns INTEGER",
}


def make_private(path: Path) -> None:
    """Create ``path`` as an empty file with mode 0600 (whatever the umask; made by root,
    owned by the owner of its directory), or bring an existing one and its
    ``-wal``/``-shm`` to 0600 (ledgers of older versions were 0644).

    The ledger holds every file name, receipt and resume state, so it is the
    owner's alone; SQLite gives the ``-wal``, ``-shm`` and ``-journal`` files
    it creates the mode of the database file.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            # a symlink put in their place (by the daemon's user, for root's next command)
            # is not followed: root would make any file it points at 0600
            with contextlib.suppress(OSError):  # missing, a symlink, or not ours to change
                other = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
                try:
                    st = os.fstat(other)
                    if stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) & 0o077:
                        os.fchmod(other, 0o600)
                finally:
                    os.close(other)
        return
    try:
        os.fchmod(fd, 0o600)
        if os.geteuid() == 0:
            # root (the operator's `syncd ledger rebuild`, a `syncd once` by hand) makes the
            # ledger for the daemon's user, who owns state_dir: SQLite gives the -wal and -shm
            # it creates the owner of this file
            st = os.stat(path.parent)
            with contextlib.suppress(OSError):  # an owner this user namespace does not map
                os.fchown(fd, st.st_uid, st.st_gid)
    finally:
        os.close(fd)


def connect(path: Path, *, readonly: bool, timeout: float) -> sqlite3.Connection:
    """A connection to the ledger at ``path`` that passed ``quick_check``; unless
    ``readonly``, the file is created (0600, its directory 0700) and set to WAL with
    ``synchronous=NORMAL``.

    Raises :class:`LedgerError` for a missing (``readonly``) or corrupt ledger;
    :class:`sqlite3.DatabaseError` for a file that is not a database.
    """
    if readonly:
        if not path.exists():
            raise LedgerUnreachable(f"no ledger at {path} (has syncd run with this config?)")
        conn = sqlite3.connect(
            uri(path, "mode=ro"), uri=True, timeout=timeout, check_same_thread=False, isolation_level=None
        )
    else:
        make_state_dir(path.parent)
        make_private(path)  # before SQLite: its -wal and -shm copy this file's mode
        conn = sqlite3.connect(str(path), timeout=timeout, check_same_thread=False, isolation_level=None)
    try:
        conn.row_factory = sqlite3.Row
        if not readonly:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # durability by Ledger.sync()
            # Statement journals (every UPDATE that fires the counts triggers has one)
            # and sorts stay in memory: without this SQLite writes them to a temporary
            # file in /var/tmp, about 30 writes per uploaded file.
            conn.execute("PRAGMA temp_store=MEMORY")
        # Writers (the daemon) check the whole file at open. A read-only look
        # (`syncd status`, `files`) checks a ledger up to QUICK_CHECK_MAX_BYTES the
        # same way, but does not pay a scan of a million rows for it: on a larger one
        # the daemon's check at its start stands (and `syncd ledger check` does it).
        scan = not readonly or path.stat().st_size <= QUICK_CHECK_MAX_BYTES
        check = conn.execute("PRAGMA quick_check").fetchone()[0] if scan else "ok"
        if check != "ok":
            raise LedgerError(f"ledger {path} is corrupt ({check}); run `syncd ledger rebuild`")
    except BaseException:
        conn.close()
        raise
    return conn


def uri(path: Path | str, query: str) -> str:
    """An SQLite ``file:`` URI of ``path`` with ``query``: the path percent-encoded, so
    that a ``%``, ``#`` or ``?`` in it (a state_dir named ``st%20x``) names that file
    and not another one."""
    return f"{Path(path).absolute().as_uri()}?{query}"


def check_version(conn: sqlite3.Connection, path: Path) -> int:
    """The schema version of the ledger; refuses one from a newer syncd."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise LedgerError(
            f"ledger {path} has schema version {version}, newer than this syncd "
            f"understands ({SCHEMA_VERSION}); upgrade syncd"
        )
    return version


def check_readable(conn: sqlite3.Connection, path: Path) -> None:
    """For a read-only look: a syncd ledger this syncd understands (an empty file, or
    another program's database, has none of its tables)."""
    version = check_version(conn, path)
    app_id = int(conn.execute("PRAGMA application_id").fetchone()[0])
    if version and app_id == APPLICATION_ID:
        if version < READABLE_FROM:  # its tables lack what the read-only views ask for
            raise LedgerUnreachable(_too_old(conn, path, version))
        return
    if not conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall():
        raise LedgerError(f"{path} holds no ledger yet (being created by a syncd starting now, or empty)")
    raise LedgerError(f"{path} is not a syncd ledger (is daemon.state_dir right?)")


def _too_old(conn: sqlite3.Connection, path: Path, version: int) -> str:
    """Why a read-only look cannot read the ledger of schema ``version`` yet, and what to do:
    restart the daemon, unless the one holding the lock is starting, and so upgrading it now
    (a restart then would roll its upgrade back and begin it again)."""
    old = f"{path} is a ledger of an older syncd (schema {version})"
    pid = holder_pid(path.parent)
    if pid is not None:
        row = conn.execute("SELECT value FROM kv WHERE key = 'daemon'").fetchone()
        with contextlib.suppress(ValueError, TypeError, AttributeError):  # not the daemon's record
            if json.loads(row[0]).get("pid") == pid:
                pid = None  # that daemon has started: it runs the older syncd
        if pid is not None:
            who = f" (pid {pid})" if pid > 0 else ""
            return (
                f"{old}, which the syncd starting now{who} upgrades first: this command reads it "
                "then; do not restart syncd meanwhile (the upgrade would begin again)"
            )
    return (
        f"{old}: the daemon upgrades it when it starts (`systemctl restart syncd`); "
        "then this command reads it"
    )


def pending_migrations(conn: sqlite3.Connection, path: Path) -> list[list[str]]:
    """The migrations the ledger still needs, in order: the statements of one
    transaction each, the last of them recording the version reached."""
    version = check_version(conn, path)
    app_id = int(conn.execute("PRAGMA application_id").fetchone()[0])
    if version and app_id != APPLICATION_ID:
        raise LedgerError(f"{path} is an SQLite database but not a syncd ledger")
    return [
        [
            *migration_statements(target),
            f"PRAGMA user_version={target}",
            f"PRAGMA application_id={APPLICATION_ID}",
        ]
        for target in range(version + 1, SCHEMA_VERSION + 1)
    ]


def migration_statements(version: int) -> list[str]:
    """The statements of migration ``version``."""
    steps = _MIGRATIONS[version]
    # a string is split on ";"; a tuple holds statements that contain ";" (triggers)
    return [s for s in (steps.split(";") if isinstance(steps, str) else steps) if s.strip()]
