"""The socket shell: an HTTP/1.1 server around the dispatcher.

One :class:`EmulatorHTTPServer` (stdlib ``ThreadingHTTPServer``, HTTP/1.1,
keep-alive, one daemon thread per connection) serves every service. Each
:class:`ConnectionHandler` parses a request into a
:class:`~syncd_emulator.messages.Request` whose :class:`WireBody` reads the
socket (Content-Length or chunked framing), passes it to the server's
``respond`` callable (:meth:`syncd_emulator.dispatch.Dispatcher.respond`), and
renders the result: a framed response, or for a
:class:`~syncd_emulator.messages.Reset` an aborted connection (an RST when
the reset was injected). Everything else (routing, faults, the log) is the
dispatcher's, and is the same for the in-process transport.
"""

from __future__ import annotations

import contextlib
import email.utils
import io
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote

from syncd_emulator.messages import CHUNK, Body, IncompleteBody, Request, Reset, Response, parse_uint

Respond = Callable[[Request], "Response | Reset"]


class WireBody(Body):
    """The request body read from the connection: Content-Length or chunked."""

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


class ConnectionHandler(BaseHTTPRequestHandler):
    """One connection: parses each request into a :class:`Request`, hands it
    to the server's ``respond`` callable, and answers with :meth:`send` (a
    framed response) or :meth:`abort` (an RST, no answer)."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    timeout = 300  # seconds a connection may sit idle (or stall mid-body) before it is dropped
    server: EmulatorHTTPServer

    def _dispatch(self) -> None:
        request = self.build_request()
        if request is None:
            return
        result = self.server.respond(request)
        if isinstance(result, Reset):
            if result.injected:
                self.abort()
            else:
                self.close_connection = True
        else:
            self.send(result, close=result.close)

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
        body = WireBody(self.rfile, None if chunked else length, chunked)
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

    def abort(self) -> None:
        """Close the connection with an RST (``SO_LINGER`` 0): the client sees a reset."""
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

    ``respond(request)`` is called for every request on the connection's
    thread (the dispatcher's :meth:`~syncd_emulator.dispatch.Dispatcher.respond`).
    """

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # socketserver's default of 5 drops SYNs under load

    def __init__(self, address: tuple[str, int], respond: Respond, *, verbose: bool = False) -> None:
        self.respond = respond
        self.verbose = verbose
        self._active: dict[socket.socket, threading.Thread] = {}
        # every connection thread not yet seen to end: one leaves _active (shutdown_request)
        # a moment before it ends, and close() waits for that moment too
        self._conn_threads: set[threading.Thread] = set()
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
            self._conn_threads = {t for t in self._conn_threads if t.is_alive()}
            self._conn_threads.add(thread)
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
            active = list(self._active)
            threads = list(self._conn_threads)
        for sock in active:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
