"""What a ledger row is: the :class:`State` of a file, the decoded :class:`Row`, the
:class:`Stat` the settle stage saw, and how values are stored in SQLite columns."""

from __future__ import annotations

import enum
import json
import os
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from syncd.logs import printable as _printable


class State(enum.StrEnum):
    """Where a file version is in the pipeline; stored as its value in ``files.state``.

    A ``StrEnum``: a member equals its value (``State.DONE == "done"``), so values read
    from SQLite, JSON and the command line compare with members directly.
    """

    SETTLING = "settling"  # seen; waiting until size, mtime and inode stay put
    QUEUED = "queued"  # quiet long enough: waiting for a worker
    UPLOADING = "uploading"  # a worker holds it
    RETRYING = "retrying"  # an attempt failed; due again at next_attempt_at
    UPLOADED = "uploaded"  # the remote confirmed the bytes; the after-upload action is pending
    DONE = "done"  # archived, deleted or kept after its upload
    FAILED = "failed"  # given up (moved to failed_dir, or left in place)
    VANISHED = "vanished"  # gone before its upload, or superseded by a newer version
    SKIPPED = "skipped"  # duplicate content (on_duplicate = "skip"), archived without uploading
    # its folder left the configuration for good and `syncd ledger forget` retired the row
    # while it was still on its way; the file was left where it was (not finished: a folder
    # configured again ledgers and uploads it as a new file)
    FORGOTTEN = "forgotten"


# The state names in pipeline order, as plain strings (command-line choices, metric labels).
STATES: tuple[str, ...] = tuple(s.value for s in State)
# At most one row in these states exists per inbox path (``files_active_path``).
ACTIVE_STATES: tuple[State, ...] = (
    State.SETTLING,
    State.QUEUED,
    State.UPLOADING,
    State.RETRYING,
    State.UPLOADED,
)
# Waiting for a worker.
WAITING_STATES: tuple[State, ...] = (State.QUEUED, State.RETRYING)
# Active and past settling: queued or further along, not finished.
SETTLED_ACTIVE_STATES: tuple[State, ...] = (State.QUEUED, State.UPLOADING, State.RETRYING, State.UPLOADED)
# Finished while the bytes may still be in the inbox (kept, or failed in place). Not
# ``forgotten``: a file whose row was forgotten is a new file to a folder configured again.
FINISHED_STATES: tuple[State, ...] = (State.DONE, State.SKIPPED, State.FAILED)
# The error of a row in these states still matters to the operator (``syncd status``).
ERROR_STATES: tuple[State, ...] = (State.RETRYING, State.FAILED, State.QUEUED, State.UPLOADING)


def sql_in(states: Iterable[State]) -> str:
    """``('a','b')``: states as an SQL list of literals. A partial index serves a query
    only if the query repeats the index's ``WHERE`` terms with the same literals in the
    same order; a bound parameter does not qualify."""
    return "(" + ",".join(f"'{s}'" for s in states) + ")"


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
    state: State
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
    # the inode change time at which the bytes uploaded were last found the file's (a kept
    # file: scans and settle hash it again when it differs; syncd/kept.py)
    ctime_ns: int | None = None

    @classmethod
    def from_db(cls, r: sqlite3.Row) -> Row:
        """Decode a ``SELECT *`` (or ``RETURNING *``) row of ``files``."""
        return cls(
            id=r["id"],
            uuid=r["uuid"],
            folder=r["folder"],
            relpath=os.fsdecode(r["relpath"]),
            location=_dec(r["location"]),
            state=State(r["state"]),
            size=r["size"],
            mtime_ns=r["mtime_ns"],
            inode=r["inode"],
            sha256=r["sha256"],
            destination=r["destination"],
            labels=tuple(json.loads(r["labels"])),
            category=r["category"],
            attempts=r["attempts"],
            next_attempt_at=r["next_attempt_at"],
            last_error=r["last_error"],
            receipt=_unjson(r["receipt"]),
            resume=_unjson(r["resume"]),
            archive_path=_dec(r["archive_path"]),
            first_seen=r["first_seen"],
            changed_at=r["changed_at"],
            queued_at=r["queued_at"],
            uploaded_at=r["uploaded_at"],
            done_at=r["done_at"],
            updated_at=r["updated_at"],
            device=r["device"],
            **_v4(r),
            ctime_ns=r["ctime_ns"] if "ctime_ns" in r.keys() else None,  # noqa: SIM118 (schema 9)
        )

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


def _v4(r: sqlite3.Row) -> dict[str, Any]:
    """The columns of schema 4, absent from a ledger opened read-only before its migration."""
    if "duplicate_of" not in r.keys():  # noqa: SIM118 (a Row iterates its values)
        return {}
    return {
        "duplicate_of": r["duplicate_of"],
        "meta": _unjson(r["meta"]),
        "sidecar_path": _dec(r["sidecar_path"]),
    }


# -- column codecs: paths are BLOBs of the file system's bytes, structured values JSON


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
