"""The ledger: one SQLite database that records every file syncd has seen.

This package is the only place that speaks SQL. Callers use verbs:
:meth:`Ledger.observe`, :meth:`~Ledger.promote`, :meth:`~Ledger.claim_next`,
:meth:`~Ledger.checkpoint`, :meth:`~Ledger.mark_uploaded`,
:meth:`~Ledger.mark_done`, :meth:`~Ledger.mark_failed`,
:meth:`~Ledger.requeue_stale` and so on.

A row is one *version* of one file: the folder, the path relative to it, and
the size, mtime, inode and (once read) SHA-256 of the bytes; once uploaded, the
inode change time at which those bytes were last found the file's. States
(:class:`State`)::

    settling -> queued -> uploading -> uploaded -> done
                   ^          |
                   +- retrying+-> failed        (attempts exhausted / permanent)
    settling|queued|retrying -> vanished        (gone before upload, or superseded)
    uploading -> uploaded (duplicate_of set) -> skipped   (on_duplicate = "skip")
    settling|queued|retrying|uploading|uploaded -> forgotten   (`syncd ledger forget`:
                                                  its folder left the configuration)

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
particular :meth:`~Ledger.mark_uploaded` returns only once "the remote confirmed these
exact bytes" is durable, and :meth:`~Ledger.set_archive_target` once the archive name
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

Modules: :mod:`~syncd.ledger.row` (states, the row, column codecs),
:mod:`~syncd.ledger.schema` (DDL and migrations, opening and checking),
:mod:`~syncd.ledger.writer` (the connection, transactions, group commit),
:mod:`~syncd.ledger.queries` (reads), :mod:`~syncd.ledger.transitions` (the
verbs that write), :mod:`~syncd.ledger.versions` (versions of one file: those
kept in the folder after their upload), :mod:`~syncd.ledger.schedule` (due times a stepped-back
clock left in the future), :mod:`~syncd.ledger.retention` (old rows of finished
files deleted), :mod:`~syncd.ledger.salvage` (``syncd ledger rebuild``),
:mod:`~syncd.ledger.backup` (``syncd ledger backup``).
"""

from __future__ import annotations

from syncd.ledger.backup import Backup, backup
from syncd.ledger.retention import Retention
from syncd.ledger.row import ACTIVE_STATES, STATES, Row, Stat, State
from syncd.ledger.schema import _MIGRATIONS as _MIGRATIONS
from syncd.ledger.schema import APPLICATION_ID, QUICK_CHECK_MAX_BYTES, SCHEMA_VERSION, make_private

# ledger kv: what the configuration the daemon applied last names (paths, destination names
# and types, never a secret): `syncd status` shows it when the file says otherwise
CONFIG_KEY = "config"


class Ledger(Retention):
    """The SQLite ledger. Open with :meth:`open`; close with :meth:`close`.

    Its verbs come in layers, one module each: :class:`~syncd.ledger.writer.Writer`
    (connection, transactions, :meth:`sync`), :class:`~syncd.ledger.queries.Queries`
    (reads), :class:`~syncd.ledger.transitions.Transitions` (writes),
    :class:`~syncd.ledger.versions.Versions` (kept versions, superseded, adopted),
    :class:`~syncd.ledger.requeue.Requeues` (back to the queue: after a crash, ``retry``),
    :class:`~syncd.ledger.schedule.Schedule` (due times after a clock step),
    :class:`~syncd.ledger.routing.Routing` (waiting files after a reload) and
    :class:`~syncd.ledger.retention.Retention` (``keep_done_days``).
    """


__all__ = [
    "ACTIVE_STATES",
    "APPLICATION_ID",
    "CONFIG_KEY",
    "QUICK_CHECK_MAX_BYTES",
    "SCHEMA_VERSION",
    "STATES",
    "Backup",
    "Ledger",
    "Row",
    "Stat",
    "State",
    "backup",
    "make_private",
]
