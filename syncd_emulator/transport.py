"""The in-process way in: an httpx transport over the dispatcher, no socket.

::

    emulator = Emulator(tmp_path / "emu")          # not started: no port is bound
    client = httpx.Client(transport=EmulatorTransport(emulator))
    client.get(emulator.url + "/lilt/v2/upload", auth=(KEY, KEY))

Every request goes through the same :meth:`~syncd_emulator.dispatch.Dispatcher.respond`
as on the socket server: same routes, same fault injection, same request log.
Any host name reaches the emulator (the services build their absolute URLs
from the ``Host`` the client sent, so the URLs they hand out come back here);
an emulator that was not started answers at :data:`IN_PROCESS_URL`.

The request body is streamed from the httpx request as the handler reads it
(a large upload is never held in memory). What a client would see on the
wire, it sees here:

* a ``reset`` fault raises :class:`httpx.ReadError` (connection reset by
  peer), after the emulator read about half of the body;
* a body shorter than its ``Content-Length`` raises
  :class:`httpx.LocalProtocolError`, as h11 does;
* an exception raised by the request's own byte stream (a file that changed
  while it was read) propagates unchanged, after the handler cleaned up;
* a ``slow`` fault delays the answer by its full delay, on the calling thread.

Client timeouts are not simulated: no request here times out. The tests of
timeouts (and of TLS, proxies, ports) use the socket server.
"""

from __future__ import annotations

import email.utils
from collections.abc import Iterable, Iterator
from http import HTTPStatus
from typing import Protocol
from urllib.parse import parse_qs, unquote

import httpx

from syncd_emulator.messages import (
    CHUNK,
    Body,
    IncompleteBody,
    Request,
    Reset,
    Response,
    headers_of,
    parse_uint,
)

#: The root URL of an emulator that serves only in process (``Emulator.url`` before
#: ``start()``). ``.invalid`` never resolves: a socket client pointed at it fails loudly.
IN_PROCESS_URL = "http://emulator.invalid"


class Responder(Protocol):
    """What the transport talks to: an ``Emulator`` or a ``Dispatcher``."""

    def respond(self, request: Request) -> Response | Reset: ...


class StreamBody(Body):
    """The body of an httpx request, pulled from its byte stream as it is read.

    ``length`` is the declared Content-Length (None: until the stream ends).
    An exception from the stream is kept in :attr:`error` and surfaces to the
    handler as :class:`IncompleteBody`, so it cleans up as for a client gone.
    """

    def __init__(self, stream: Iterable[bytes], length: int | None) -> None:
        self._chunks: Iterator[bytes] = iter(stream)
        self._buffer = b""
        self._left = length
        self._done = length == 0
        self.error: Exception | None = None
        self.consumed = 0

    def read(self, n: int = CHUNK) -> bytes:
        if self._done:
            return b""
        while not self._buffer:
            try:
                self._buffer = bytes(next(self._chunks))
            except StopIteration:
                if self._left is None:
                    self._done = True
                    return b""
                raise IncompleteBody("the request stream ended before its Content-Length") from None
            except Exception as exc:
                self.error = exc
                raise IncompleteBody("the request stream failed") from exc
        want = n if self._left is None else min(n, self._left)
        data, self._buffer = self._buffer[:want], self._buffer[want:]
        self.consumed += len(data)
        if self._left is not None:
            self._left -= len(data)
            self._done = self._left == 0
        return data

    @property
    def done(self) -> bool:
        return self._done


class _Payload(httpx.SyncByteStream):
    """A response body handed over as a stream, as the network hands it: the client
    reads and closes it (so ``Response.elapsed`` and streamed reads work as usual)."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def __iter__(self) -> Iterator[bytes]:
        if self._data:
            yield self._data


class EmulatorTransport(httpx.BaseTransport):
    """``httpx.Client(transport=EmulatorTransport(emulator))``: see the module docstring.

    Thread-safe: each request is answered on the thread that sends it, so
    requests from several threads run concurrently, as on the socket server.
    """

    def __init__(self, emulator: Responder) -> None:
        self._emulator = emulator

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        stream = request.stream
        if not isinstance(stream, httpx.SyncByteStream):
            raise TypeError("EmulatorTransport serves synchronous clients (httpx.Client)")
        raw_path, _, qs = request.url.raw_path.decode("ascii").partition("?")
        text = request.headers.get("Content-Length")
        length = parse_uint(text.strip()) if text is not None else None
        if text is not None and length is None:
            return self._render(request, Response.json({"message": "bad Content-Length"}, 400))
        body = StreamBody(stream, length)
        parsed = Request(
            request.method,
            unquote(raw_path),
            parse_qs(qs, keep_blank_values=True),
            headers_of(request.headers.multi_items()),
            body,
            host=request.url.netloc.decode("ascii"),
        )
        result = self._emulator.respond(parsed)
        if body.error is not None:
            raise body.error  # the client's own stream failed: as on the wire, it is the caller's
        if isinstance(result, Reset):
            if result.injected:
                raise httpx.ReadError("[Errno 104] Connection reset by peer", request=request)
            raise httpx.LocalProtocolError("Too little data for declared Content-Length", request=request)
        return self._render(request, result)

    @staticmethod
    def _render(request: httpx.Request, response: Response) -> httpx.Response:
        try:
            phrase = HTTPStatus(response.status).phrase
        except ValueError:
            phrase = "Error"
        headers = [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Server", "syncd-emulator"),
            ("Content-Length", str(len(response.body))),
            *response.headers.items(),
        ]
        if response.close:
            headers.append(("Connection", "close"))
        return httpx.Response(
            response.status,
            headers=headers,
            stream=_Payload(b"" if request.method == "HEAD" else response.body),
            request=request,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": phrase.encode("ascii")},
        )
