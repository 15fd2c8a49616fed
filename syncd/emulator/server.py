"""The emulator's HTTP layer: server, requests, responses, services, routes.

One :class:`EmulatorHTTPServer` (stdlib ``ThreadingHTTPServer``, HTTP/1.1,
keep-alive, one daemon thread per connection) serves every service. A service
is a :class:`Service` subclass with a ``prefix`` (``/lilt``) and a route table
of :class:`Route`; the dispatcher (``syncd.emulator.Dispatcher``) picks the
service by prefix, matches the route, asks the fault injector whether to
misbehave, calls the handler, answers and logs the request.

Contracts for service handlers:

* A handler gets a :class:`Request` and returns a :class:`Response`, or raises
  :class:`ApiError`; the dispatcher renders that with :meth:`Service.error`, so
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

import contextlib
import email.utils
import functools
import hashlib
import hmac
import io
import json
import os
import re
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.message import Message
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, quote, unquote

from syncd.emulator.store import Sessions, Store

CHUNK = 1024 * 1024
JSON_LIMIT = 8 * 1024 * 1024
DRAIN_LIMIT = 256 * 1024 * 1024
_UINT = re.compile(r"[0-9]{1,19}")


def parse_uint(text: str | None) -> int | None:
    """``"42"`` → 42; None for None, signs, spaces, non-ASCII digits or junk."""
    return int(text) if text is not None and _UINT.fullmatch(text) else None


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
    """The request body as a bounded stream: Content-Length or chunked."""

    def __init__(self, rfile: io.BufferedIOBase, length: int | None, chunked: bool) -> None:
        self._rfile = rfile
        self._left = 0 if chunked else length or 0
        self._chunked = chunked
        self._done = not chunked and not length
        self.consumed = 0

    def read(self, n: int = CHUNK) -> bytes:
        """Up to ``n`` bytes; ``b""`` at the end. Raises IncompleteBody on EOF."""
        if self._done:
            return b""
        if self._chunked and self._left == 0:
            self._next_chunk()
            if self._done:
                return b""
        data = self._rfile.read(min(n, self._left))
        if not data:
            raise IncompleteBody("connection closed inside the request body")
        self._left -= len(data)
        self.consumed += len(data)
        if self._left == 0:
            if self._chunked:
                self._rfile.readline()  # CRLF after the chunk data
            else:
                self._done = True
        return data

    def _next_chunk(self) -> None:
        line = self._rfile.readline(1024)
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise IncompleteBody("malformed chunked body") from None
        if size == 0:
            while self._rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            self._done = True
        self._left = size

    @property
    def done(self) -> bool:
        return self._done

    def drain(self, limit: int = DRAIN_LIMIT) -> bool:
        """Read and discard the rest; False if more than ``limit`` bytes remain."""
        start = self.consumed
        while not self._done:
            if self.consumed - start > limit:
                return False
            self.read(CHUNK)
        return True


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


@dataclass
class Response:
    """What a handler answers. The body is small (JSON, XML); always length-framed."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(
        cls, obj: Any, status: int = 200, headers: Mapping[str, str] | None = None
    ) -> Response:
        data = json.dumps(obj, separators=(",", ":")).encode()
        return cls(status, data, {"Content-Type": "application/json", **(headers or {})})

    @classmethod
    def xml(
        cls, text: str, status: int = 200, headers: Mapping[str, str] | None = None
    ) -> Response:
        return cls(status, text.encode(), {"Content-Type": "application/xml", **(headers or {})})


Handler = Callable[[Request], Response]


@dataclass(frozen=True)
class Route:
    """``pattern`` is relative to the service prefix: ``/v2/upload/{uploadId:int}``.

    ``{name}`` matches one segment, ``{name:int}`` digits, ``{name:path}`` the
    rest including slashes. ``op`` names the operation in the request log and
    in fault scripts; it may be a function of the request.
    """

    method: str
    pattern: str
    op: str | Callable[[Request], str]
    handler: Handler
    regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    _KINDS: ClassVar[dict[str, str]] = {"": "[^/]+", "int": "[0-9]+", "path": "(?s:.+)"}

    def __post_init__(self) -> None:
        def repl(m: re.Match[str]) -> str:
            return f"(?P<{m.group(1)}>{self._KINDS[m.group(2) or '']})"

        body = re.sub(r"\\\{(\w+)(?::(\w+))?\\\}", repl, re.escape(self.pattern))
        object.__setattr__(self, "regex", re.compile(f"^{body}$"))

    def op_for(self, request: Request) -> str:
        return self.op(request) if callable(self.op) else self.op


@dataclass(frozen=True)
class Settings:
    """What the emulator accepts and how long its signed URLs live.

    ``clock`` (epoch seconds) is injectable so expiry can be tested
    without sleeping.
    """

    lilt_key: str = "demo-lilt-key"
    wriftai_token: str = "demo-wriftai-token"
    xvid_client: str = "demo-client:demo-secret"
    apivideo_token: str = "to-demo-upload-token"
    apivideo_key: str = "demo-apivideo-key"
    url_ttl: float = 900.0
    clock: Callable[[], float] = time.time


@dataclass(frozen=True)
class ServiceContext:
    """Everything a service is built from: settings, the shared store, the signer."""

    settings: Settings
    store: Store
    signer: UrlSigner


class Service:
    """Base class of an emulated service: one module, one prefix, one route table.

    Subclasses set ``name`` and ``prefix`` and implement :meth:`routes`; they
    override :meth:`error` to render errors (and injected faults) in the
    service's own format. The base sets up what every service uses:
    ``settings`` (credentials, url_ttl, clock), the shared ``store``, the URL
    ``signer``, a ``_lock`` for the service's own state, and ``sessions``
    (its durable multipart sessions, created on first use). ``routes()`` is
    called on the first request, so a subclass calls ``super().__init__``
    first and then sets up its own attributes.
    """

    name: ClassVar[str] = ""
    prefix: ClassVar[str] = ""
    internal: ClassVar[bool] = False  # True: never faulted, never logged (/_emulator)

    def __init__(self, context: ServiceContext) -> None:
        self.context = context
        self.settings = context.settings
        self.store = context.store
        self.signer = context.signer
        self._lock = threading.Lock()

    @functools.cached_property
    def sessions(self) -> Sessions:
        return Sessions(self.store, self.name)

    @functools.cached_property
    def _routes(self) -> list[Route]:
        return self.routes()

    def routes(self) -> list[Route]:
        raise NotImplementedError

    def error(self, op: str, status: int, message: str, code: str = "") -> Response:
        """The service's error body for ``status``; default ``{"message": ...}``."""
        return Response.json({"message": message}, status)

    def base_url(self, request: Request) -> str:
        return request.base_url + self.prefix

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]] | None:
        """(route, params) for ``path`` below the prefix; ApiError 405/404 if none."""
        allowed = False
        for route in self._routes:
            m = route.regex.match(path)
            if m:
                if route.method == method:
                    return route, m.groupdict()
                allowed = True
        if allowed:
            raise ApiError(405, f"method {method} not allowed here")
        return None


class UrlSigner:
    """HMAC-SHA256 signatures for presigned URLs, with a per-process secret.

    ``sign(*fields)`` and ``verify(signature, *fields)``: the caller decides
    which fields are covered (method, key, content type, expiry, ...). A
    restart changes the secret, so URLs from a previous run stop working,
    as a rotated signing key would.
    """

    def __init__(self, secret: bytes | None = None) -> None:
        import secrets

        self._secret = secret or secrets.token_bytes(32)

    def sign(self, *fields: object) -> str:
        message = "\n".join(str(f) for f in fields).encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def verify(self, signature: str, *fields: object) -> bool:
        return hmac.compare_digest(signature.encode(), self.sign(*fields).encode())


def quote_key(key: str) -> str:
    """A storage key as a URL path (slashes kept, everything else escaped)."""
    return quote(key, safe="/")


class ConnectionHandler(BaseHTTPRequestHandler):
    """One connection: parses each request into a :class:`Request`, hands it
    to the server's ``dispatch`` callable, and offers the two ways to answer:
    :meth:`send` (a framed response) and :meth:`reset` (an RST, no answer)."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    timeout = 300  # seconds a connection may sit idle (or stall mid-body) before it is dropped
    server: EmulatorHTTPServer

    def _dispatch(self) -> None:
        self.server.dispatch(self)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _dispatch

    def build_request(self) -> Request | None:
        """The parsed request, or None after answering 400 for broken framing."""
        raw_path, _, qs = self.path.partition("?")
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        text = self.headers.get("Content-Length")
        length = parse_uint(text.strip()) if text is not None else None
        if text is not None and length is None and not chunked:
            self.send(Response.json({"message": "bad Content-Length"}, 400), close=True)
            return None
        body = Body(self.rfile, None if chunked else length, chunked)
        host, port = self.server.server_address[:2]
        return Request(
            self.command,
            unquote(raw_path),
            parse_qs(qs, keep_blank_values=True),
            self.headers,
            body,
            host=f"{host!s}:{port}",
        )

    def send(self, response: Response, *, close: bool = False) -> None:
        """Status line, headers and body in one write (no Nagle/delayed-ACK stalls)."""
        close = close or self.close_connection
        try:
            phrase = HTTPStatus(response.status).phrase
        except ValueError:
            phrase = "Error"
        lines = [
            f"HTTP/1.1 {response.status} {phrase}",
            f"Date: {email.utils.formatdate(usegmt=True)}",
            "Server: syncd-emulator",
            f"Content-Length: {len(response.body)}",
        ]
        lines += [f"{k}: {v}" for k, v in response.headers.items()]
        if close:
            lines.append("Connection: close")
            self.close_connection = True
        payload = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if self.command != "HEAD":
            payload += response.body
        try:
            self.wfile.write(payload)
        except OSError:
            self.close_connection = True

    def reset(self, request: Request) -> None:
        """Read about half the body (at most 4 MiB), then abort with an RST."""
        try:
            want = min((request.content_length or 0) // 2, 4 * CHUNK)
            while request.body.consumed < want and request.body.read(want - request.body.consumed):
                pass
        except IncompleteBody:
            pass
        self.close_connection = True
        conn: socket.socket = self.connection
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.rfile.close()  # drop the makefile reference so close() really closes
        conn.close()

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:  # protocol-level errors only (bad request line)
            from syncd.logs import printable
            from syncd.redact import redact

            sys.stderr.write(printable(redact("emulator: " + format % args)) + "\n")


class EmulatorHTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer (HTTP/1.1 keep-alive, daemon thread per connection)
    that tracks its connections so :meth:`close` ends them too.

    ``dispatch(handler)`` is called for every request on the connection's
    thread; it must answer with ``handler.send`` or ``handler.reset``.
    """

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # socketserver's default of 5 drops SYNs under load

    def __init__(
        self,
        address: tuple[str, int],
        dispatch: Callable[[ConnectionHandler], None],
        *,
        verbose: bool = False,
    ) -> None:
        self.dispatch = dispatch
        self.verbose = verbose
        self._active: dict[socket.socket, threading.Thread] = {}
        self._active_lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, ConnectionHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name="emulator-conn",
            daemon=True,
        )
        with self._active_lock:
            self._active[request] = thread
        thread.start()

    def shutdown_request(self, request: Any) -> None:
        with self._active_lock:
            self._active.pop(request, None)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):  # ConnectionError and TimeoutError included
            return  # a client that went away mid-request is not an emulator error
        super().handle_error(request, client_address)

    def close(self, timeout: float = 5.0) -> None:
        """Close the listener and every open connection; wait for their threads."""
        self.server_close()
        with self._active_lock:
            active = list(self._active.items())
        for sock, _ in active:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout
        for _, thread in active:
            thread.join(max(0.0, deadline - time.monotonic()))
