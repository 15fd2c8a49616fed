"""The Lilt destination's test harness: the in-process emulator, :class:`Wire` (what was
sent, and answers changed on their way back), the destination and its uploads. The
fixtures (``emu``, ``wire``, ``client``) are in tests/destinations/conftest.py.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from syncd.destinations.base import Source, UploadItem
from syncd.destinations.lilt import LiltDestination, LiltOptions
from syncd.secrets import Secret
from syncd_emulator import IN_PROCESS_URL, Emulator, EmulatorTransport

KEY = "lilt-test-key-0123456789"
BASE = IN_PROCESS_URL + "/lilt"
MiB = 1024 * 1024
PART = 5 * MiB  # the suite's part size, which the emulator is told to take (Lilt's is 8 MiB)

Edit = Callable[[httpx.Request, httpx.Response], httpx.Response]


@dataclass
class Sent:
    """One request as the destination sent it, and the answer it got (None: reset)."""

    op: str | None  # the emulator's name for it (its request log)
    request: httpx.Request
    body: bytes
    response: httpx.Response | None
    stream: type  # what the body was given as (an iterator, or bytes up front)


class Tee(httpx.SyncByteStream):
    def __init__(self, inner: Any, into: bytearray) -> None:
        self._inner, self._into = inner, into

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._inner:
            self._into += chunk
            yield chunk


class Wire(httpx.BaseTransport):
    """The emulator in process, with every request kept (:attr:`sent`) and answers
    that :meth:`edit` may change on their way back, as a proxy or a broken server would."""

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        self._inner = EmulatorTransport(emulator)
        self.sent: list[Sent] = []
        self._edits: dict[str, list[Edit | None]] = {}

    def edit(self, op: str, *edits: Edit | None) -> None:
        """Change the next answers to ``op``, one edit each (None leaves that one alone)."""
        self._edits.setdefault(op, []).extend(edits)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body, stream = bytearray(), request.stream
        request.stream = Tee(stream, body)
        before = len(self.emulator.requests())
        response = None
        try:
            response = self._inner.handle_request(request)
            response.read()  # kept for the assertions (and the edits)
        finally:
            log = self.emulator.requests()
            op = log[-1]["op"] if len(log) > before else None
            self.sent.append(Sent(op, request, bytes(body), response, type(stream)))
        pending = self._edits.get(op or "")
        edit = pending.pop(0) if pending else None
        if edit is not None:
            response = self.sent[-1].response = edit(request, response)
        return response

    def ops(self) -> list[str | None]:
        return [s.op for s in self.sent]

    def requests(self, op: str) -> list[Sent]:
        return [s for s in self.sent if s.op == op]


class Clock:
    """The emulator's clock: still unless moved (URL expiry, the scan's pending window)."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def reply(status: int, headers: dict[str, str] | None = None, **kw: Any) -> Edit:
    """An edit that replaces the answer."""
    return lambda request, response: httpx.Response(status, headers=headers, **kw)


def without_etag(request: httpx.Request, response: httpx.Response) -> httpx.Response:
    headers = {k: v for k, v in response.headers.items() if k.lower() != "etag"}
    return httpx.Response(response.status_code, headers=headers, content=response.content)


def unquoted_etag(request: httpx.Request, response: httpx.Response) -> httpx.Response:
    headers = dict(response.headers, etag=response.headers["ETag"].strip('"'))
    return httpx.Response(response.status_code, headers=headers, content=response.content)


def all_pending(request: httpx.Request, response: httpx.Response) -> httpx.Response:
    return httpx.Response(200, json=[dict(e, status="pending") for e in response.json()])


def stored(emu: Emulator) -> dict[str, str]:
    """key -> sha256 of what the emulator holds."""
    return {u["key"]: u["sha256"] for u in emu.uploads()}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_dest(
    client: httpx.Client,
    *,
    threshold: int = 8 * MiB,
    part_size: int = PART,
    wait_for_scan: bool = False,
    **kw: Any,
) -> LiltDestination:
    opts = LiltOptions(
        api_key=Secret(KEY),
        base_url=BASE + "/",
        multipart_threshold=threshold,
        part_size=part_size,
        wait_for_scan=wait_for_scan,
    )
    return LiltDestination("contracts", opts, client, **kw)


def write(tmp_path: Path, size: int, name: str = "doc.pdf") -> Path:
    path = tmp_path / name
    path.write_bytes(os.urandom(size))
    return path


def open_source(path: Path) -> Source:
    st = path.stat()
    return Source(path, size=st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino)


def item_for(
    path: Path,
    *,
    labels: tuple[str, ...] = ("legal", "review-needed"),
    category: str | None = "SOURCE",
    content_type: str = "application/pdf",
) -> UploadItem:
    return UploadItem(
        uuid="123e4567-e89b-12d3-a456-426614174000",
        name=path.name,
        relpath=f"sub/{path.name}",
        size=path.stat().st_size,
        content_type=content_type,
        labels=labels,
        category=category,
    )


class Recorder:
    """A checkpoint callback that keeps deep copies, optionally failing after N calls
    (``then`` sees each state first: a test's hook into the middle of an upload)."""

    def __init__(
        self, crash_after: int | None = None, then: Callable[[dict[str, Any]], None] | None = None
    ) -> None:
        self.states: list[dict[str, Any]] = []
        self.crash_after = crash_after
        self.then = then

    def __call__(self, state: dict[str, Any]) -> None:
        json.dumps(state)  # must be JSON-serialisable
        self.states.append(copy.deepcopy(state))
        if self.then is not None:
            self.then(state)
        if self.crash_after is not None and len(self.states) >= self.crash_after:
            raise Crash()

    @property
    def last(self) -> dict[str, Any]:
        return self.states[-1]


class Crash(Exception):
    """Stands for a process crash right after a durable checkpoint."""


def upload(
    dest: LiltDestination,
    path: Path,
    resume: dict[str, Any] | None = None,
    checkpoint: Recorder | None = None,
    **item_kw: Any,
) -> Any:
    with open_source(path) as source:
        return dest.upload(item_for(path, **item_kw), source, resume, checkpoint or Recorder())


def assert_no_secrets(text: str) -> None:
    assert KEY not in text
    assert base64.b64encode(f"{KEY}:{KEY}".encode()).decode() not in text
    assert not re.search(r"Signature=[0-9a-f]", text)  # the emulator's URL signatures
