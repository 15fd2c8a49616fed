"""The verbs that write: a row's way through its states, and the key/value table.

Each verb is one transaction (see :mod:`syncd.ledger.writer`). A verb that
passes ``durable=True`` returns only once its commit is on disk; the others
are committed, which survives a crash of the process, and become durable with
the next durable commit.
"""

from __future__ import annotations

import json
import os
import sqlite3
import uuid as uuidlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from syncd.ledger.queries import Queries
from syncd.ledger.row import WAITING_STATES, Row, Stat, State, _ascii_json, _enc, _json, sql_in

MANY_DESTINATIONS = 100  # a claim for more destinations than this reads files_state, filtered
UPLOADING = (State.UPLOADING,)  # the verbs of an attempt's outcome: nothing else is theirs to change
SETTLING = (State.SETTLING,)  # promote: a row forgotten meanwhile (`syncd ledger forget`) stays so
_GIVE_BACK = f"UPDATE files SET attempts = MAX(attempts - 1, 0) WHERE id = ? AND state = '{State.UPLOADING}'"

_NEW_SETTLING = (
    "INSERT OR IGNORE INTO files (uuid, folder, relpath, state, destination, labels,"
    " category, first_seen, changed_at, updated_at, due_at)"
    f" VALUES (?, ?, ?, '{State.SETTLING}', ?, ?, ?, ?, ?, ?, ?)"
)


class Transitions(Queries):
    """settling → queued → uploading → uploaded → done, and the ways off that line."""

    # ------------------------------------------------------------ settling

    def observe(
        self,
        folder: str,
        relpaths: Iterable[str],
        *,
        destination: str,
        labels: Sequence[str] = (),
        category: str | None = None,
    ) -> int:
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
                    _NEW_SETTLING,
                    (
                        str(uuidlib.uuid4()),
                        folder,
                        os.fsencode(relpath),
                        destination,
                        labels_json,
                        category,
                        now,
                        now,
                        now,
                        now,
                    ),
                )
                created += cur.rowcount
                if not cur.rowcount:  # an event for a file still settling: look at it now
                    conn.execute(  # by path: the planner would look through every settling row
                        "UPDATE files INDEXED BY files_path SET due_at = ? WHERE folder = ? AND relpath = ?"
                        f" AND state = '{State.SETTLING}' AND location IS NULL AND due_at > ?",
                        (now, folder, os.fsencode(relpath), now),
                    )
        return created

    def set_due(self, looks: Sequence[tuple[int, float]], stats: Mapping[int, Stat] | None = None) -> None:
        """When to look at these settling rows next, and the new stats seen of them (one
        transaction for a whole settle tick)."""
        if not looks and not stats:
            return
        with self._write("due") as conn:
            for row_id, st in (stats or {}).items():
                self._set_stat(conn, row_id, st)
            conn.executemany(
                f"UPDATE files SET due_at = ? WHERE id = ? AND state = '{State.SETTLING}'",
                [(at, row_id) for row_id, at in looks],
            )

    def _set_stat(self, conn: sqlite3.Connection, row_id: int, st: Stat) -> None:
        fields: dict[str, Any] = {
            "size": st.size,
            "mtime_ns": st.mtime_ns,
            "inode": st.inode,
            "device": st.device,
        }
        if st.changed_at is not None:
            fields["changed_at"] = st.changed_at
        conn.execute(
            f"UPDATE files SET {', '.join(f'{k} = ?' for k in fields)}, updated_at = ?"
            f" WHERE id = ? AND state = '{State.SETTLING}'",
            (*fields.values(), self._clock(), row_id),
        )

    def promote(self, row_id: int, stat: Stat | None = None) -> None:
        """settling -> queued: the file has been quiet long enough (``stat``: its latest
        stat, when it differs from the row's)."""
        self.promote_many([(row_id, stat)])

    def promote_many(self, rows: Sequence[tuple[int, Stat | None]]) -> None:
        """:meth:`promote` for several rows in one transaction (a settle tick's)."""
        if not rows:
            return
        now = self._clock()
        with self._write("promote") as conn:
            for row_id, stat in rows:
                if stat is not None:
                    self._set_stat(conn, row_id, stat)
                self._set(conn, row_id, state=State.QUEUED, queued_at=now, next_attempt_at=now, only=SETTLING)

    def forget(self, row_id: int, *, queued: bool = False) -> None:
        """Delete a settling row (``queued``: or one no worker has claimed yet) that turned
        out not to be a new version."""
        states = (State.SETTLING, State.QUEUED) if queued else (State.SETTLING,)
        with self._write() as conn:
            conn.execute(f"DELETE FROM files WHERE id = ? AND state IN {sql_in(states)}", (row_id,))

    # ------------------------------------------------------------- uploading

    def claim_next(self, destinations: Iterable[str] | None = None) -> Row | None:
        """Atomically take the next due queued/retrying row: -> uploading, attempts+1."""
        now = self._clock()
        due = "(next_attempt_at IS NULL OR next_attempt_at <= ?)"
        # The first due row of each waiting state (of each destination asked for), read in
        # order from an index on (state, next_attempt_at) (files_waiting: (destination,
        # state, next_attempt_at)): a few rows read whatever the backlog, of this
        # destination or of another one that is down.
        names = None if destinations is None else list(dict.fromkeys(destinations))
        if names is not None and not names:
            return None
        if names is None or len(names) > MANY_DESTINATIONS:  # SQLite: at most 500 UNION terms
            among = "" if names is None else f" AND destination IN ({', '.join('?' * len(names))})"
            picks = [
                (f"files_state WHERE state = '{state}'{among}", [*(names or []), now])
                for state in WAITING_STATES
            ]
        else:
            waiting = sql_in(WAITING_STATES)  # the partial index's own term, for the planner
            picks = [
                (
                    f"files_waiting WHERE destination = ? AND state = '{state}' AND state IN {waiting}",
                    [name, now],
                )
                for name in names
                for state in WAITING_STATES
            ]
        first = " UNION ALL ".join(
            f"SELECT * FROM (SELECT id, next_attempt_at FROM files INDEXED BY {where} AND {due}"
            " ORDER BY next_attempt_at, id LIMIT 1)"
            for where, _ in picks
        )
        args = [a for _, pick_args in picks for a in pick_args]
        with self._lock:
            # one statement, so one implicit transaction: pick and take the row atomically
            rows = self._conn.execute(
                f"UPDATE files SET state = '{State.UPLOADING}', attempts = attempts + 1, updated_at = ?"
                f" WHERE id = (SELECT id FROM ({first}) ORDER BY next_attempt_at, id LIMIT 1)"
                " RETURNING *",
                (now, *args),
            ).fetchall()  # all: it ends, commits
            if not rows:
                return None
            self._count_commit("claim")
        return Row.from_db(rows[0])

    def checkpoint(self, row_id: int, resume: dict[str, Any] | None) -> None:
        """Store a destination's resumable state for this row.

        Committed, not synced: a crash of the process keeps it; after a power
        loss an older state (or none) is resumed, which sends some parts again.
        """
        self._update("checkpoint", row_id, resume=_json(resume))

    def set_location(self, row_id: int, location: str) -> None:
        """The bytes of this row are now at ``location`` (renamed during upload)."""
        self._update("location", row_id, durable=True, location=_enc(location))

    def mark_uploaded(
        self,
        row_id: int,
        *,
        sha256: str,
        receipt: dict[str, Any],
        meta: dict[str, Any] | None = None,
        archive_target: str | None = None,
        ctime_ns: int | None = None,
    ) -> None:
        """The remote confirmed these bytes (the file's, still, at inode change time ``ctime_ns``).

        Committed, and made durable by the next :meth:`sync` before the source
        file is touched: :func:`syncd.archive.finish` syncs before a delete or
        a move (or the durable :meth:`set_archive_target` or
        :meth:`set_location` it makes first covers this commit too).

        ``meta``: the labels and category sent and the sidecar they came from
        (:meth:`syncd.metadata.Metadata.to_json`), which the archive moves along.
        ``archive_target``: where the archive move will go, recorded in this
        same commit (one commit and one fsync for both, where the move would
        otherwise add its own :meth:`set_archive_target`).
        """
        fields: dict[str, Any] = {}
        if meta is not None:
            fields["meta"] = _ascii_json(meta)
        if archive_target is not None:
            fields["archive_path"] = _enc(archive_target)
        self._update(
            "uploaded",
            row_id,
            state=State.UPLOADED,
            sha256=sha256,
            receipt=_json(receipt),
            uploaded_at=self._clock(),
            last_error=None,
            next_attempt_at=None,
            ctime_ns=ctime_ns,
            **fields,
        )

    def mark_duplicate(
        self,
        row_id: int,
        *,
        sha256: str,
        original: Row,
        meta: dict[str, Any] | None = None,
        ctime_ns: int | None = None,
    ) -> None:
        """on_duplicate = "skip": these bytes (the file's at ``ctime_ns``) were uploaded
        already, as ``original``.

        Durable on return, before the file is archived. The row goes to
        ``uploaded`` with ``duplicate_of`` set and a receipt naming the earlier
        upload, so the after-upload action is finished like an upload's after
        a crash; :meth:`mark_done` then makes it ``skipped``.
        """
        receipt = {
            "duplicate_of": original.id,
            "remote_id": (original.receipt or {}).get("remote_id"),
            "url": (original.receipt or {}).get("url"),
        }
        fields: dict[str, Any] = {}
        if meta is not None:
            fields["meta"] = _ascii_json(meta)
        with self._write("duplicate", durable=True) as conn:
            self._set(
                conn,
                row_id,
                state=State.UPLOADED,
                sha256=sha256,
                receipt=_json(receipt),
                duplicate_of=original.id,
                last_error=None,
                next_attempt_at=None,
                resume=None,
                ctime_ns=ctime_ns,
                **fields,
            )

    # --------------------------------------------------------- after upload

    def set_sidecar_target(self, row_id: int, target: str | None) -> None:
        """Record where the metadata sidecar is being moved, before the move (crash recovery)."""
        self._update("sidecar_target", row_id, durable=True, sidecar_path=_enc(target))

    def note_left_sidecar(self, row_id: int, fields: dict[str, Any]) -> None:
        """Add ``fields`` to the row's ``meta``: the metadata sidecar its file left in the
        inbox (:mod:`syncd.left_sidecars`)."""
        row = self.get(row_id)
        meta = {**((row.meta if row is not None else None) or {}), **fields}
        self._update("left_sidecar", row_id, meta=_ascii_json(meta))

    def set_archive_target(self, row_id: int, target: str | None, *, reason: str | None = None) -> None:
        """Record where the archive move (or the move to failed_dir) is going, before it
        starts (for crash recovery); ``reason``: why the file failed, kept with it so a
        crash in the move does not lose it (``last_error``)."""
        fields = (
            {"archive_path": _enc(target)}
            if reason is None
            else {"archive_path": _enc(target), "last_error": reason}
        )
        self._update("archive_target", row_id, durable=True, **fields)

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
                f"UPDATE files SET state = CASE WHEN duplicate_of IS NULL THEN '{State.DONE}'"
                f" ELSE '{State.SKIPPED}' END, updated_at = ?{cols} WHERE id = ?",
                (self._clock(), *fields.values(), row_id),
            )
            self._count_commit("done")

    # --------------------------------------------------- retries and failures

    def mark_retry(self, row_id: int, *, error: str, at: float, count: bool = True) -> None:
        """The attempt failed but may work later; due again at ``at`` (wall clock).

        ``count=False`` gives the attempt back: for local conditions (a file
        not readable yet) that say nothing about the upload itself.
        """
        with self._write("retry") as conn:
            if not count:
                conn.execute(_GIVE_BACK, (row_id,))
            self._set(
                conn, row_id, state=State.RETRYING, last_error=error, next_attempt_at=at, only=UPLOADING
            )

    def requeue_now(self, row_id: int, *, reason: str | None = None) -> None:
        """Back to queued without counting the attempt (shutdown, paused destination)."""
        with self._write() as conn:
            conn.execute(_GIVE_BACK, (row_id,))
            self._set(
                conn,
                row_id,
                state=State.QUEUED,
                next_attempt_at=self._clock(),
                last_error=reason,
                only=UPLOADING,
            )

    def mark_failed(
        self, row_id: int, *, error: str, location: str | None, ctime_ns: int | None = None
    ) -> None:
        """Given up: the file was moved to ``location`` (failed_dir), or stays put if None
        (its inode change time then, ``ctime_ns``: a later change of it is tried again)."""
        with self._write("failed", durable=True) as conn:
            fields: dict[str, Any] = {
                "state": State.FAILED,
                "last_error": error,
                "next_attempt_at": None,
                "resume": None,
            }
            if location is not None:
                fields["location"] = _enc(location)
            else:
                fields["ctime_ns"] = ctime_ns
            self._set(conn, row_id, **fields)

    def mark_vanished(self, row_id: int, *, reason: str) -> None:
        """The file disappeared (or was superseded) before its upload completed."""
        with self._write() as conn:
            self._set(
                conn, row_id, state=State.VANISHED, last_error=reason, next_attempt_at=None, resume=None
            )

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
