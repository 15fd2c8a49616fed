"""A deadline for an answer's head, below httpx, in httpcore's network stream.

httpx's read timeout is per socket read: a server that sends its status line
and headers a byte at a time, each byte within the timeout, held a worker
until h11's 16 KiB limit for a head, hours. :func:`install` wraps the
network backend of a client's connection pools so that, while
:func:`head_phase` is entered (``syncd.http.send`` enters it around
``Client.send``, which returns once the head is in), every read after the
request was written shares one deadline: the read timeout, counted from the
first of them. A write starts the count again: a proxy's ``CONNECT`` answer
is read before the request is written on the tunnel. A server sends its head
in one write, so only a head that trickles meets it; the body's own deadline (``http.BODY_SECONDS``) is
separate, as a service may take minutes over a body it has begun.

The phase is per thread (each request runs on its caller's thread), so
reads of other requests on other threads are untouched.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpcore
import httpx


class HeadTimeout(httpcore.ReadTimeout):
    """The answer's head did not arrive within the read timeout."""


class _Phase(threading.local):
    active = False
    deadline: float | None = None


_phase = _Phase()


@contextlib.contextmanager
def head_phase() -> Iterator[None]:
    """Reads on this thread until the block ends belong to an answer's head."""
    _phase.active, _phase.deadline = True, None
    try:
        yield
    finally:
        _phase.active, _phase.deadline = False, None


def ran_out(exc: BaseException) -> bool:
    """Whether an httpx error is a head that did not arrive in time (httpx keeps
    httpcore's exception as the cause)."""
    return isinstance(exc.__cause__, HeadTimeout)


class _Stream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if not _phase.active or timeout is None:
            return self._stream.read(max_bytes, timeout)
        now = time.monotonic()
        if _phase.deadline is None:
            _phase.deadline = now + timeout
        left = _phase.deadline - now
        try:
            if left <= 0:
                raise httpcore.ReadTimeout("timed out")
            return self._stream.read(max_bytes, min(timeout, left))
        except httpcore.ReadTimeout:
            if left >= timeout:  # nothing at all within the read timeout: as ever
                raise
            raise HeadTimeout(f"the answer's head still coming after {timeout:g}s") from None

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        # a head read before this write was another exchange's (a proxy's answer to
        # CONNECT): the deadline counts from the first read after the request is sent
        _phase.deadline = None
        self._stream.write(buffer, timeout)

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        return _Stream(self._stream.start_tls(*args, **kwargs))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _Backend(httpcore.NetworkBackend):
    def __init__(self, backend: httpcore.NetworkBackend) -> None:
        self._backend = backend

    def connect_tcp(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        return _Stream(self._backend.connect_tcp(*args, **kwargs))

    def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        return _Stream(self._backend.connect_unix_socket(*args, **kwargs))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


def install(client: httpx.Client) -> None:
    """Wrap the network backend of each of ``client``'s network transports (the default
    and any proxy's). httpx does not pass a backend through, so this sets httpcore's
    pool attribute; ``tests/unit/test_http.py`` fails if a new httpcore moves it."""
    transports = [client._transport, *client._mounts.values()]
    for transport in transports:
        pool: Any = getattr(transport, "_pool", None)
        backend = getattr(pool, "_network_backend", None)
        if backend is not None and not isinstance(backend, _Backend):
            pool._network_backend = _Backend(backend)
