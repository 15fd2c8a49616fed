"""The ``/metrics`` endpoint: syncd's own small HTTP/1.1 server.

``GET``/``HEAD /metrics``, one request per connection. An asyncio loop in
one thread reads every request and one more thread renders the series, so no
number of idle or slow clients adds a thread. Its limits (passed in by
:meth:`syncd.metrics.Metrics.serve`, which documents them): the connections
open at once, the time a client has to send its request head, the size of
that head, and the time to send the response. When one connection more
arrives, the oldest one still sending its request is dropped (or, when every
one is being answered, the new one is closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

log = logging.getLogger("syncd.metrics")  # the metrics lines keep one logger name


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (IPv4 or IPv6, as the host resolves)."""
    family, _, _, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    return socket.create_server(address, family=family, backlog=128)


_STATUS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
}


class Endpoint:
    """``GET /metrics`` on ``sock``: one event-loop thread and one render thread, whatever
    the number of clients. At most ``max_connections`` open; ``request_timeout`` seconds
    for the whole request head of at most ``max_request_bytes``; ``response_timeout``
    seconds to render and send the series."""

    def __init__(
        self,
        registry: CollectorRegistry,
        sock: socket.socket,
        *,
        max_connections: int,
        request_timeout: float,
        response_timeout: float,
        max_request_bytes: int,
    ) -> None:
        self._registry = registry
        self._max = max_connections
        self._request_timeout = request_timeout
        self._response_timeout = response_timeout
        self._limit = max_request_bytes
        # Open connections, oldest first; True while the request head is still coming in.
        self._conns: dict[asyncio.StreamWriter, bool] = {}
        self._render = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metrics-render")
        self._loop = asyncio.new_event_loop()
        self._serving = threading.Event()
        self._failed: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(sock,), name="metrics-http", daemon=True)
        self._thread.start()
        self._serving.wait()
        if self._failed is not None:
            raise self._failed

    def _run(self, sock: socket.socket) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        try:
            server = loop.run_until_complete(asyncio.start_server(self._handle, sock=sock, limit=self._limit))
        except BaseException as exc:
            self._failed = exc
            sock.close()
            loop.close()
            return
        finally:
            self._serving.set()
        try:
            loop.run_forever()
        finally:
            server.close()
            for writer in list(self._conns):
                writer.transport.abort()
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.close()

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._render.shutdown(wait=False, cancel_futures=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._conns) >= self._max:
            idle = next((w for w, reading in self._conns.items() if reading), None)
            if idle is None:  # every slot is answering a request: no room
                writer.transport.abort()
                return
            del self._conns[idle]
            idle.transport.abort()
        self._conns[writer] = True
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self._request_timeout)
            except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
                return  # too slow, too large, or gone
            if writer not in self._conns:
                return
            self._conns[writer] = False
            await asyncio.wait_for(self._respond(head, writer), self._response_timeout)
        except (TimeoutError, OSError):
            pass
        except asyncio.CancelledError:  # the endpoint is closing; end quietly (3.11's
            pass  # start_server logs a task that ends cancelled)
        except Exception:  # a bug here must not end the endpoint
            log.exception("metrics endpoint")
        finally:
            self._conns.pop(writer, None)
            writer.transport.abort()  # a no-op once the response went out and it closed

    async def _respond(self, head: bytes, writer: asyncio.StreamWriter) -> None:
        lines = head.decode("latin-1").split("\r\n")
        request = lines[0].split()
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        status, content_type, body = 200, "text/plain; charset=utf-8", b""
        extra = ""
        if len(request) != 3 or not request[2].startswith("HTTP/1."):
            status = 400
        elif request[0] not in ("GET", "HEAD"):
            status, extra = 405, "Allow: GET, HEAD\r\n"
        elif request[1].partition("?")[0] != "/metrics":
            status, body = 404, b"syncd serves its metrics at /metrics\n"
        else:
            try:
                content_type, body = await asyncio.get_running_loop().run_in_executor(
                    self._render, self._render_series, headers.get("accept", "")
                )
            except Exception as exc:
                log.warning("metrics: cannot render the series: %s", exc)
                status, body = 500, b"cannot render the metrics\n"
        writer.write(
            (
                f"HTTP/1.1 {status} {_STATUS[status]}\r\n"
                f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                f"{extra}Connection: close\r\n\r\n"
            ).encode("latin-1")
        )
        if request[:1] != ["HEAD"]:
            writer.write(body)
        writer.close()  # sends what is buffered, then FIN
        await writer.wait_closed()

    def _render_series(self, accept: str) -> tuple[str, bytes]:
        encoder, content_type = choose_encoder(accept)
        return content_type, encoder(self._registry)


__all__ = ["Endpoint", "bind"]
