"""The emulator's own request/response model, shared by every way in.

A :class:`Request` is what a service handler reads: method, percent-decoded
path, query, headers and a :class:`Body` stream. A handler answers a
:class:`Response`; the dispatcher (:mod:`syncd_emulator.dispatch`) may also
answer :class:`Reset`: no response at all, the connection dropped. The
socket server (:mod:`syncd_emulator.server`) and the in-process httpx
transport (:mod:`syncd_emulator.transport`) each turn their input into a
:class:`Request` with a :class:`Body` of their own, and render the result.

Contracts for service handlers:

* A handler gets a :class:`Request` and returns a :class:`Response`, or raises
  :class:`ApiError`; the dispatcher renders that with ``Service.error``, so
  every error a service sends is in that service's own format.
* Request bodies are never buffered whole unless the handler asks for it
  (:meth:`Request.json`, capped at ``JSON_LIMIT``); :meth:`Request.save_to`
  streams a body of any size to disk in ``CHUNK`` pieces while hashing it.
* Whatever body the handler did not read is drained before the response is
  sent (up to ``DRAIN_LIMIT``; beyond that the connection is closed instead),
  so keep-alive stays correct after early rejections.
* A body that ends early (client gone) raises :class:`IncompleteBody`; the
  handler must then leave no state behind (``save_to`` removes its file).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import escape as xml_escape

CHUNK = 1024 * 1024
JSON_LIMIT = 8 * 1024 * 1024
DRAIN_LIMIT = 256 * 1024 * 1024
_UINT = re.compile(r"[0-9]{1,19}")


def parse_uint(text: str | None) -> int | None:
    """``"42"`` → 42; None for None, signs, spaces, non-ASCII digits or junk."""
    return int(text) if text is not None and _UINT.fullmatch(text) else None


def quote_key(key: str) -> str:
    """A storage key as a URL path (slashes kept, everything else escaped)."""
    return quote(key, safe="/")


class ApiError(Exception):
    """Raised by a handler: answer ``status`` in the service's error format."""

    def __init__(
        self, status: int, message: str, code: str = "", headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = dict(headers or {})


class IncompleteBody(Exception):
    """The client sent fewer body bytes than it announced (or broke chunking)."""


@dataclass(frozen=True)
class BodyDigest:
    """Size and digests of a body saved by :meth:`Request.save_to`."""

    size: int
    md5: str
    sha256: str


class Body:
    """The request body as a bounded stream; each way in supplies a subclass.

    :meth:`read` gives up to ``n`` bytes, ``b""`` at the end, and raises
    :class:`IncompleteBody` when the body ends before its announced length.
    ``consumed`` counts the bytes read (the request log's ``bytes``; a service
    may set it to what it counts as the payload).
    """

    consumed: int = 0

    def read(self, n: int = CHUNK) -> bytes:
        raise NotImplementedError

    @property
    def done(self) -> bool:
        raise NotImplementedError

    def drain(self, limit: int = DRAIN_LIMIT) -> bool:
        """Read and discard the rest; False if more than ``limit`` bytes remain."""
        start = self.consumed
        while not self.done:
            if self.consumed - start > limit:
                return False
            self.read(CHUNK)
        return True


class BytesBody(Body):
    """A body held in memory (tests, small control requests)."""

    def __init__(self, data: bytes = b"") -> None:
        self._data = data
        self.consumed = 0

    def read(self, n: int = CHUNK) -> bytes:
        chunk = self._data[self.consumed : self.consumed + n]
        self.consumed += len(chunk)
        return chunk

    @property
    def done(self) -> bool:
        return self.consumed >= len(self._data)


@dataclass
class Request:
    """One parsed request. ``path`` is percent-decoded and has no query."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: Message
    body: Body
    host: str
    params: dict[str, str] = field(default_factory=dict)
    service_path: str = ""  # path below the service prefix

    def arg(self, name: str) -> str | None:
        """First value of query parameter ``name``, or None."""
        values = self.query.get(name)
        return values[0] if values else None

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("Content-Length")
        return parse_uint(value.strip()) if value is not None else None

    @property
    def base_url(self) -> str:
        """``http://host:port`` as the client addressed us (for absolute URLs)."""
        return f"http://{self.headers.get('Host') or self.host}"

    def read_all(self, limit: int = JSON_LIMIT) -> bytes:
        out = bytearray()
        while chunk := self.body.read(CHUNK):
            out += chunk
            if len(out) > limit:
                raise ApiError(413, f"request body larger than {limit} bytes")
        return bytes(out)

    def json(self) -> Any:
        """The body parsed as JSON; ApiError 400 if it is not JSON."""
        raw = self.read_all()
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, ValueError):
            raise ApiError(400, "request body is not valid JSON") from None

    def save_to(self, path: str | os.PathLike[str]) -> BodyDigest:
        """Stream the body into ``path`` (created/truncated), hashing as it goes.

        On IncompleteBody or any I/O error the file is removed and the error
        propagates, so a broken upload leaves nothing behind.
        """
        md5, sha = hashlib.md5(), hashlib.sha256()
        size = 0
        try:
            with open(path, "wb") as out:
                while chunk := self.body.read(CHUNK):
                    out.write(chunk)
                    md5.update(chunk)
                    sha.update(chunk)
                    size += len(chunk)
        except BaseException:
            Path(path).unlink(missing_ok=True)
            raise
        return BodyDigest(size, md5.hexdigest(), sha.hexdigest())


def headers_of(items: Mapping[str, str] | list[tuple[str, str]]) -> Message:
    """A header block (as services read it: case-insensitive ``get``) from pairs."""
    message = Message()
    for name, value in items.items() if isinstance(items, Mapping) else items:
        message[name] = value  # appends: repeated headers are kept
    return message


@dataclass
class Response:
    """What a handler answers. The body is small (JSON, XML); always length-framed.

    ``close`` is set by the dispatcher when the request body could not be
    drained: the socket server then closes the connection after answering.
    """

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    close: bool = False

    @classmethod
    def json(cls, obj: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
        data = json.dumps(obj, separators=(",", ":")).encode()
        return cls(status, data, {"Content-Type": "application/json", **(headers or {})})

    @classmethod
    def xml(cls, text: str, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
        return cls(status, text.encode(), {"Content-Type": "application/xml", **(headers or {})})

    @classmethod
    def s3_error(cls, code: str, message: str, status: int) -> Response:
        """An S3-style ``<Error>`` document: what a storage endpoint answers a refusal with."""
        return cls.xml(
            f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{xml_escape(code)}</Code>'
            f"<Message>{xml_escape(message)}</Message></Error>",
            status,
        )


@dataclass(frozen=True)
class Reset:
    """No response: the connection is dropped.

    ``injected``: a ``reset`` fault (the socket server aborts with an RST; the
    transport raises the error a client sees for one). Otherwise the client
    went away in the middle of its request body, and there is no one to answer.
    """

    injected: bool = True
