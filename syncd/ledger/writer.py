"""The ledger's connection: opening, the lock, transactions and the group commit.

Every write is one transaction committed into the WAL without an fsync
(``synchronous=NORMAL``): :meth:`Writer._write` (``BEGIN IMMEDIATE`` ...
``COMMIT``) or :meth:`Writer._update` (one ``UPDATE``, SQLite's autocommit).
Each commit is numbered; a durable one then waits in :meth:`Writer.sync` until
an ``fdatasync`` of the WAL that started after it has returned. Crash points:
``ledger.<point>`` right after a commit, ``ledger.<point>.synced`` after the
fsync that made it durable (reached by the caller that ran the fsync).
"""

from __future__ import annotations

import errno
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any, Self

from syncd import crashpoints, durable
from syncd.errors import LedgerDiskFull, LedgerError, LedgerUnreachable
from syncd.failure_kinds import is_disk_full
from syncd.ledger import schema
from syncd.ledger.row import Row

REBUILDING = ".rebuilding"  # PATH.rebuilding: `syncd ledger rebuild` under way (salvage.py)
SPACE_TO_OPEN = 1 << 20  # bytes SQLite may need to open a ledger (its -wal and -shm files)
MIGRATE_PROGRESS_STEPS = 100_000  # SQLite instructions between two calls of a migration's progress


def out_of_reach(path: Path, readonly: bool = False) -> str | None:
    """Why this process cannot use the ledger at ``path`` for a reason outside the file
    (a read-only file system, a directory or file it may not write or read), or None."""
    try:
        if os.statvfs(path.parent).f_flag & os.ST_RDONLY:
            return "the file system holding it is mounted read-only (an I/O error may do that: see dmesg)"
    except OSError:
        return None
    # a read-only look still creates the WAL's index (-shm) beside the ledger if it is not there
    shm = Path(f"{path}-shm").exists()
    # the WAL and its index too: left another user's (a restore with `cp` as root), they
    # keep the ledger from opening as surely as its own file
    places = (
        ("directory", path.parent),
        ("file", path),
        ("file", Path(f"{path}-wal")),
        ("file", Path(f"{path}-shm")),
    )
    for what, place in places:
        wants = os.R_OK if readonly and (shm or what == "file") else os.R_OK | os.W_OK
        if place.exists() and not os.access(place, wants | (os.X_OK if what == "directory" else 0)):
            able = "readable" if wants == os.R_OK else "writable"
            return f"its {what} {place} is not {able} by this user (uid {os.geteuid()})"
    return None


def space_left(path: Path) -> int:
    """Bytes free to syncd on the file system of ``path`` (unknown: plenty)."""
    try:
        free = os.statvfs(path.parent)
    except OSError:
        return SPACE_TO_OPEN
    return free.f_bavail * free.f_frsize


class Writer:
    """One SQLite connection shared by every thread, guarded by a lock that each verb
    holds only for its own statements. Open with :meth:`open`; close with :meth:`close`."""

    def __init__(self, conn: sqlite3.Connection, path: Path, clock: Any = time.time) -> None:
        self._conn = conn
        self.path = path
        self._lock = threading.RLock()
        self._clock = clock
        # group commit: commits so far, commits known synced, and the one fsync in flight
        self._committed = 0
        self._synced = 0
        self._syncing = False
        self._sync_failed: str | None = None  # an fsync of the WAL failed: nothing is durable since
        self._sync_cond = threading.Condition()
        self._wal_fd: int | None = None
        self._identity: tuple[int, int] | None = None  # the file opened: (device, inode)
        self._wal_id: tuple[int, int] | None = None

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        readonly: bool = False,
        clock: Any = time.time,
        timeout: float = 10.0,
        rebuilding: bool = False,
        migrating: Callable[[int, int], AbstractContextManager[Any]] | None = None,
    ) -> Self:
        """Open (creating and migrating unless ``readonly``) the ledger at ``path``.

        A ledger a ``syncd ledger rebuild`` left half-made (killed) is partial: it does
        not open for writing, except to the rebuild itself (``rebuilding``).
        ``migrating(from_version, to_version)``, when given, is entered around the
        migration of a ledger of an older schema (the daemon's start says so and keeps
        systemd's start timeout from ending it: a million rows take seconds); a callable
        it yields is SQLite's progress handler meanwhile (a hung migration is told apart)."""
        path = Path(path)
        if not (readonly or rebuilding) and Path(f"{path}{REBUILDING}").exists():
            raise LedgerError(
                f"the ledger {path} is partial: a `syncd ledger rebuild` was interrupted; run "
                "`syncd ledger rebuild` again (it starts over from the damaged ledger it set aside)"
            )
        try:
            conn = schema.connect(path, readonly=readonly, timeout=timeout)
            # SQLite opens a WAL index (-shm) it may only read, and fails at the first write
            if not readonly and (why := out_of_reach(path)) is not None:
                conn.close()
                raise LedgerUnreachable(
                    f"cannot write the ledger {path}: {why}; the ledger itself is fine (do not rebuild it)"
                )
            ledger = cls(conn, path, clock)
            ledger._identity = _identity(path)
            try:
                if readonly:
                    schema.check_readable(conn, path)
                elif pending := schema.pending_migrations(conn, path):
                    # one transaction for them all: a reader (`syncd status` while syncd starts)
                    # sees the schema before or after, never a step on the way
                    new = schema.SCHEMA_VERSION
                    old = new - len(pending)  # 0: a ledger being created, not upgraded
                    around = migrating if migrating is not None and old else (lambda o, n: nullcontext())
                    with around(old, new) as progress, ledger._write(durable=True):
                        if callable(progress):  # told as the migration gets on (a hang is not)
                            conn.set_progress_handler(progress, MIGRATE_PROGRESS_STEPS)
                        try:
                            for statements in pending:
                                for statement in statements:
                                    conn.execute(statement)
                        finally:
                            conn.set_progress_handler(None, 0)
            except BaseException:
                ledger.close()
                raise
            return ledger
        except sqlite3.DatabaseError as exc:
            if is_disk_full(exc) or space_left(path) < SPACE_TO_OPEN:  # full: "disk I/O error" too
                raise LedgerDiskFull(
                    f"cannot open the ledger {path} ({exc}): the disk holding it is full; the "
                    "ledger itself is fine (do not rebuild it): free some space there"
                ) from None
            why = out_of_reach(path, readonly)
            if why is not None and isinstance(exc, sqlite3.OperationalError):
                raise LedgerUnreachable(
                    f"cannot open the ledger {path} ({exc}): {why}; the ledger itself is fine "
                    "(do not rebuild it)"
                ) from None
            raise LedgerError(
                f"ledger {path} is unusable ({exc}); run `syncd ledger rebuild` to rebuild it "
                "from the folders"
            ) from None

    def close(self) -> None:
        with self._lock:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass
            if self._wal_fd is not None:
                os.close(self._wal_fd)
                self._wal_fd = None

    # ------------------------------------------------------------ transactions

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
                mine = self._count_commit(point)
        if durable:
            self.sync(mine, point)

    def _update(self, point: str, row_id: int, *, durable: bool = False, **fields: Any) -> None:
        """One ``UPDATE`` of one row as a transaction of its own (SQLite's autocommit: one
        statement, where BEGIN/UPDATE/COMMIT are three); otherwise like :meth:`_write`."""
        fields["updated_at"] = self._clock()
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self._lock:
            self._conn.execute(f"UPDATE files SET {cols} WHERE id = ?", (*fields.values(), row_id))
            mine = self._count_commit(point)
        if durable:
            self.sync(mine, point)

    def _count_commit(self, point: str) -> int:
        """Number the commit just made (under the lock) and reach its crash point."""
        self._committed += 1
        crashpoints.point(f"ledger.{point}")
        return self._committed

    def _set(self, conn: sqlite3.Connection, row_id: int, *, only: Sequence[str] = (), **fields: Any) -> None:
        """``UPDATE`` these columns of one row (and ``updated_at``) inside a :meth:`_write`;
        ``only``: the states it may be in (a row in another state is left alone)."""
        fields["updated_at"] = self._clock()
        cols = ", ".join(f"{k} = ?" for k in fields)
        guard = f" AND state IN ({', '.join('?' * len(only))})" if only else ""
        conn.execute(f"UPDATE files SET {cols} WHERE id = ?{guard}", (*fields.values(), row_id, *only))

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        with self._lock:
            rows = self._conn.execute(sql, args).fetchall()
        return [Row.from_db(r) for r in rows]

    def gone(self) -> str | None:
        """How the file at the ledger's path stopped being the one this connection writes
        (``"was deleted"``, ``"was replaced by another file"``), or None while it is."""
        if self._sync_failed is not None:
            return f"could not be written to disk (fsync: {self._sync_failed})"
        now = _identity(self.path)
        if now is None:
            return "was deleted"
        if self._identity is not None and now != self._identity:
            return "was replaced by another file"
        return None

    def held_by(self) -> str:
        """`` (held by pid 1234, sqlite3)``: who holds the write lock, for a message; ""
        if the system cannot say."""
        holder = lock_holder(self.path)
        return f" (held by {holder})" if holder else ""

    # ------------------------------------------------------------ group commit

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
                if self._sync_failed is not None:
                    # Linux reports a failed writeback once and marks the pages clean: a later
                    # fsync that succeeds says nothing of the commits the failed one covered
                    raise OSError(errno.EIO, f"an earlier fsync of the ledger failed ({self._sync_failed})")
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
                        if fd is not None:
                            os.fdatasync(fd)
                    except OSError as exc:
                        self._sync_failed = exc.strerror or str(exc)
                        raise
                    finally:
                        self._sync_cond.acquire()
                    crashpoints.point(f"ledger.{point}.synced")  # by the leader, for all
                    self._synced = max(self._synced, covered)
                finally:
                    self._syncing = False
                    self._sync_cond.notify_all()

    def _wal(self) -> int | None:
        """A descriptor of the WAL file (opened once; again if SQLite made a new one).

        Syncing it is what ``synchronous=FULL`` does after each commit: frames
        already moved into the database by a checkpoint were synced there by
        SQLite (``synchronous=NORMAL`` syncs the WAL before a checkpoint and the
        database after it). A new WAL file's directory entry is synced once.
        """
        wal = f"{self.path}-wal"
        try:
            st = os.stat(wal)
        except FileNotFoundError:
            # Deleted under syncd (the daemon stops on it: Health.check_ledger_file): the
            # descriptor opened before, if any, still names the file SQLite writes.
            return self._wal_fd
        if self._wal_fd is None or self._wal_id != (st.st_dev, st.st_ino):
            if self._wal_fd is not None:
                os.close(self._wal_fd)
                self._wal_fd = None
            self._wal_fd = os.open(wal, os.O_RDONLY | os.O_CLOEXEC)
            self._wal_id = (st.st_dev, st.st_ino)
            durable.fsync_dir(self.path.parent)
        return self._wal_fd


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino)


# The WAL write lock: byte 120 of the -shm file (SQLite's WALINDEX_LOCK_OFFSET), a POSIX
# record lock, which /proc/locks lists with the pid that holds it.
_WAL_WRITE_LOCK = 120


def lock_holder(path: str | Path) -> str | None:
    """Who holds the write lock of the ledger at ``path``: ``pid 1234, sqlite3``, or None
    when nobody does or the system cannot say (another PID namespace, no -shm file).

    Read from /proc/locks, never by opening the -shm file: closing a descriptor of a
    file drops every POSIX lock this process holds on it, SQLite's own included.
    """
    try:
        st = os.stat(f"{path}-shm")
        with open("/proc/locks") as f:
            table = f.read()
    except OSError:
        return None
    device = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in table.splitlines():
        # "1: POSIX  ADVISORY  WRITE 20790 fd:01:1234 120 120"
        fields = line.split()
        if len(fields) < 8 or fields[1] != "POSIX" or fields[3] != "WRITE" or fields[5] != device:
            continue
        start, end = fields[6], fields[7]
        if not (start.isdigit() and int(start) <= _WAL_WRITE_LOCK) or not (
            end == "EOF" or (end.isdigit() and int(end) >= _WAL_WRITE_LOCK)
        ):
            continue
        pid = int(fields[4]) if fields[4].isdigit() else 0
        if pid <= 0 or pid == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/comm") as f:
                return f"pid {pid}, {f.read().strip()}"
        except OSError:
            return f"pid {pid}"
    return None
