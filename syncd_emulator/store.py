"""The emulator's durable object store, and S3-style multipart sessions on disk.

Layout under the data directory (everything survives a restart; nothing is
fsynced, so it survives a killed emulator but not a power cut)::

    objects/<service>/<id>.bin     the bytes of one stored object
    objects/<service>/<id>.json    its metadata (see Store.put)
    sessions/<service>/<upload id>/session.json, part-00001 ...
    tmp/                           bodies being received; emptied at start-up

``<id>`` is a hash of the object's key, so any key (slashes, unicode) is safe.
An object is identified by (service, key): storing the same key again replaces
the bytes and increments ``times_received``, which is how tests see a
duplicate upload. Bytes are written to ``tmp/`` first and moved into place
with ``os.replace`` only when complete, so a broken upload never shows up.

The store knows nothing of HTTP: services stream bodies into
:meth:`Store.temp_path` files and hand them over.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
import uuid as uuidlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

_SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_CORE_FIELDS = (
    "service",
    "key",
    "filename",
    "size",
    "sha256",
    "content_type",
    "labels",
    "category",
    "uuid",
    "times_received",
    "created_at",
    "updated_at",
)


def utc_iso() -> str:
    """Now as ``2025-01-02T03:04:05.123456Z`` (sorts as text in time order)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _write_json(path: Path, data: Any) -> None:
    """Atomically replace ``path`` with ``data`` as JSON."""
    tmp = path.with_name(f".{path.name}.{uuidlib.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


class Store:
    """Thread-safe object store. See the module docstring for the layout."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.tmp_dir = self.root / "tmp"
        self._lock = threading.Lock()
        self._index: dict[tuple[str, str], dict[str, Any]] = {}
        shutil.rmtree(self.tmp_dir, ignore_errors=True)  # half-received bodies of a past run
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self._load()

    def _load(self) -> None:
        for meta_path in sorted((self.root / "objects").glob("*/*.json")):
            try:
                meta = json.loads(meta_path.read_text())
            except (OSError, ValueError):
                continue  # a damaged record is skipped, not fatal
            if meta_path.with_suffix(".bin").exists():
                self._index[(meta["service"], meta["key"])] = meta

    def _object_path(self, service: str, key: str) -> Path:
        digest = hashlib.sha256(f"{service}\0{key}".encode()).hexdigest()[:40]
        return self.root / "objects" / service / digest

    def temp_path(self) -> Path:
        """A fresh path in ``tmp/`` (not created) for a body being received."""
        return self.tmp_dir / uuidlib.uuid4().hex

    def put(
        self,
        service: str,
        key: str,
        src: Path,
        *,
        size: int,
        sha256: str,
        filename: str,
        content_type: str = "",
        labels: Iterable[str] = (),
        category: str | None = None,
        uuid: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Move the complete file ``src`` into place as object (service, key).

        Returns the stored metadata: the core fields, ``times_received``
        (1 for a new key, +1 for each repeat), ``created_at`` (first time),
        ``updated_at`` (last time) and every ``extra`` field (which never
        overrides a core field). ``src`` is consumed.
        """
        base = self._object_path(service, key)
        with self._lock:
            old = self._index.get((service, key))
            now = utc_iso()
            meta: dict[str, Any] = {
                "service": service, "key": key, "filename": filename, "size": size,
                "sha256": sha256, "content_type": content_type, "labels": list(labels),
                "category": category, "uuid": uuid,
                "times_received": (old["times_received"] if old else 0) + 1,
                "created_at": old["created_at"] if old else now, "updated_at": now,
            }  # fmt: skip
            for name, value in {**(old or {}), **(extra or {})}.items():
                if name not in _CORE_FIELDS:
                    meta[name] = value
            base.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, base.with_suffix(".bin"))
            _write_json(base.with_suffix(".json"), meta)
            self._index[(service, key)] = meta
            return self._public(meta)

    def get(self, service: str, key: str) -> dict[str, Any] | None:
        with self._lock:
            meta = self._index.get((service, key))
            return self._public(meta) if meta else None

    def uploads(self, service: str | None = None) -> list[dict[str, Any]]:
        """Every stored object (optionally of one service), oldest first.

        Each dict also has ``path``, the absolute path of the bytes file.
        """
        with self._lock:
            metas = [m for m in self._index.values() if service is None or m["service"] == service]
            rows = [self._public(m) for m in metas]
        return sorted(rows, key=lambda m: (m["created_at"], m["service"], m["key"]))

    def _public(self, meta: dict[str, Any]) -> dict[str, Any]:
        row = dict(meta)
        row["labels"] = list(meta.get("labels") or [])
        row["path"] = str(self._object_path(meta["service"], meta["key"]).with_suffix(".bin"))
        return row


@dataclass
class Session:
    """One multipart upload. ``info`` is whatever the service needs at the
    end (filename, content type, metadata); ``parts`` maps part number to
    ``{"size": int, "etag": str}``; ``state`` is active, completed or aborted;
    ``result`` is what the completing call returned (for idempotent repeats)."""

    id: str
    key: str
    info: dict[str, Any]
    directory: Path
    state: str = "active"
    parts: dict[int, dict[str, Any]] = field(default_factory=dict)
    result: dict[str, Any] | None = None
    created_at: str = field(default_factory=utc_iso)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def part_path(self, number: int) -> Path:
        return self.directory / f"part-{number:05d}"

    def save(self) -> None:
        _write_json(
            self.directory / "session.json",
            {
                "id": self.id,
                "key": self.key,
                "info": self.info,
                "state": self.state,
                "parts": {str(n): p for n, p in self.parts.items()},
                "result": self.result,
                "created_at": self.created_at,
            },
        )


class Sessions:
    """Durable multipart sessions of one service (S3 semantics, parts on disk).

    Callers hold ``session.lock`` around any sequence of reads and changes of
    one session; the methods here do not take it themselves.
    """

    def __init__(self, store: Store, service: str) -> None:
        self.store = store
        self.root = store.root / "sessions" / service
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._cache: dict[str, Session] = {}

    def create(self, key: str, info: dict[str, Any]) -> Session:
        session_id = uuidlib.uuid4().hex
        session = Session(session_id, key, info, self.root / session_id)
        session.directory.mkdir(parents=True)
        session.save()
        with self._lock:
            self._cache[session_id] = session
        return session

    def get(self, session_id: str) -> Session | None:
        """The session (any state), loaded from disk after a restart; None if unknown."""
        if not _SESSION_ID.match(session_id):
            return None
        with self._lock:
            session = self._cache.get(session_id)
            if session is None:
                session = self._load(session_id)
                if session is not None:
                    self._cache[session_id] = session
            return session

    def _load(self, session_id: str) -> Session | None:
        try:
            raw = json.loads((self.root / session_id / "session.json").read_text())
        except (OSError, ValueError):
            return None
        return Session(
            raw["id"],
            raw["key"],
            raw["info"],
            self.root / session_id,
            raw["state"],
            {int(n): p for n, p in raw["parts"].items()},
            raw.get("result"),
            raw["created_at"],
        )

    def add_part(self, session: Session, number: int, src: Path, size: int, etag: str) -> None:
        """Make the received file ``src`` part ``number`` (replacing an earlier one)."""
        os.replace(src, session.part_path(number))
        session.parts[number] = {"size": size, "etag": etag}
        session.save()

    def assemble(self, session: Session, numbers: list[int]) -> tuple[Path, int, str, str]:
        """Concatenate parts ``numbers`` (in that order) into a temp file, streamed.

        Returns (path, size, sha256 hex, S3 multipart ETag ``"md5-of-md5s-N"``).
        """
        out_path = self.store.temp_path()
        sha = hashlib.sha256()
        md5s = hashlib.md5()
        size = 0
        try:
            with open(out_path, "wb") as out:
                for number in numbers:
                    md5s.update(bytes.fromhex(session.parts[number]["etag"].strip('"')))
                    with open(session.part_path(number), "rb") as part:
                        while chunk := part.read(1024 * 1024):
                            out.write(chunk)
                            sha.update(chunk)
                            size += len(chunk)
        except BaseException:
            out_path.unlink(missing_ok=True)
            raise
        return out_path, size, sha.hexdigest(), f'"{md5s.hexdigest()}-{len(numbers)}"'

    def close(self, session: Session, state: str, result: dict[str, Any] | None = None) -> None:
        """End the session as ``completed`` or ``aborted`` and delete its parts."""
        session.state = state
        session.result = result
        for number in list(session.parts):
            session.part_path(number).unlink(missing_ok=True)
        session.parts = {}
        session.save()
