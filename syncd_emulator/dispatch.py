"""The dispatcher: every request to every service goes through :meth:`Dispatcher.respond`.

``respond(request)`` picks the service by path prefix, matches the route,
asks the fault injector whether to misbehave, calls the handler, drains what
the handler left of the body, logs the request and returns a
:class:`~syncd_emulator.messages.Response`, or a
:class:`~syncd_emulator.messages.Reset` when the connection is to be dropped
without an answer. It knows nothing of sockets or httpx: the socket server
(:mod:`syncd_emulator.server`) and the in-process transport
(:mod:`syncd_emulator.transport`) are shells around it, so faults behave
the same through both.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Mapping, Sequence
from typing import IO, Any

from syncd_emulator.faults import FaultInjector
from syncd_emulator.messages import CHUNK, ApiError, IncompleteBody, Request, Reset, Response
from syncd_emulator.service import Service

LOG_LIMIT = 100_000  # request-log entries kept (oldest dropped first)
RESET_READ_LIMIT = 4 * CHUNK  # a reset reads about half the body, at most this much


class RequestLog:
    """Thread-safe bounded log of service requests (never ``/_emulator/*``).

    Entry: ``{"service","op","method","path","status","time","bytes"}`` plus
    ``"duration"`` (seconds) and ``"fault"`` when one was injected. ``path``
    has no query string (signatures live there); ``status`` is 0 when no
    response was sent (reset fault, client gone); ``time`` is epoch seconds.
    Query strings and headers (``?token=``, ``X-Emu-Signature=``,
    ``Authorization``) are never recorded, and a credential in the path is
    masked as the entry is added, with the shapes that mask syncd's own logs
    (:func:`syncd.redact.redact`): ``/upload-tokens/***``. The other fields
    (op, status, bytes) are exact.
    """

    def __init__(self, *, verbose: bool = False, stream: IO[str] | None = None) -> None:
        self._entries: deque[dict[str, Any]] = deque(maxlen=LOG_LIMIT)
        self._lock = threading.Lock()
        self.verbose = verbose
        self._stream = stream

    def add(self, entry: dict[str, Any]) -> None:
        from syncd.redact import redact

        if isinstance(entry.get("path"), str):  # the only field a client chooses
            entry["path"] = redact(entry["path"])
        with self._lock:
            self._entries.append(entry)
        if self.verbose:
            self._echo(entry)

    def _echo(self, entry: Mapping[str, Any]) -> None:
        """One stderr line per request; secrets masked (and the path has no query),
        control characters escaped (the path is percent-decoded: it may hold any)."""
        from syncd.logs import printable
        from syncd.redact import redact

        stamp = time.strftime("%H:%M:%S", time.localtime(entry["time"]))
        fault = f" fault={entry['fault']}" if entry.get("fault") else ""
        line = (
            f"{stamp} {entry['method']} {entry['path']} -> {entry['status']} "
            f"{entry.get('op') or '-'} {entry['bytes']}B "
            f"{entry['duration'] * 1000:.1f}ms{fault}"
        )
        with self._lock:
            stream = self._stream or sys.stderr
            stream.write(printable(redact(line)) + "\n")
            stream.flush()

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(e) for e in self._entries]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


class Dispatcher:
    """Routes one request to its service, applies faults, answers, logs."""

    def __init__(self, services: Sequence[Service], faults: FaultInjector, log: RequestLog) -> None:
        # Longest prefix first, so /xvid/v1 would win over a hypothetical /xvid.
        self.services = sorted(services, key=lambda s: len(s.prefix), reverse=True)
        self.faults = faults
        self.log = log

    def find(self, path: str) -> Service | None:
        for service in self.services:
            if path == service.prefix or path.startswith(service.prefix + "/"):
                return service
        return None

    def respond(self, request: Request) -> Response | Reset:
        """Answer one request (on the caller's thread); see the module docstring.

        The body is drained after the handler (``Response.close`` is set when
        more than ``DRAIN_LIMIT`` remained); a body that ends early, or a
        client that goes away, gives ``Reset(injected=False)``.
        """
        started, t0 = time.time(), time.perf_counter()
        service = self.find(request.path)
        entry: dict[str, Any] = {
            "service": service.name if service else None,
            "op": None,
            "method": request.method,
            "path": request.path,
            "status": 0,
            "time": started,
        }
        result: Response | Reset
        try:
            result = self._respond(service, request, entry)
            # Unread body (early rejection): drain it so keep-alive stays in step.
            if isinstance(result, Response) and not request.body.drain():
                result.close = True
        except (IncompleteBody, ConnectionError, TimeoutError):
            result = Reset(injected=False)  # the client is gone; nothing to answer
        if service is not None and not service.internal:
            # Logged before answering, so a client that has its answer sees the entry.
            entry["status"] = result.status if isinstance(result, Response) else 0
            entry["bytes"] = request.body.consumed
            entry["duration"] = round(time.perf_counter() - t0, 6)
            self.log.add(entry)
        return result

    def _respond(self, service: Service | None, request: Request, entry: dict[str, Any]) -> Response | Reset:
        op = ""
        try:
            if service is None:
                raise ApiError(404, f"no emulated service at {request.path}")
            request.service_path = request.path[len(service.prefix) :] or "/"
            matched = service.match(request.method, request.service_path)
            if matched is None:
                raise ApiError(404, f"no route for {request.method} {request.path}")
            route, request.params = matched
            op = entry["op"] = route.op_for(request)
            fault = None if service.internal else self.faults.decide(op)
            if fault is not None:
                entry["fault"] = fault.kind
                if fault.kind == "reset":
                    _read_half(request)
                    return Reset()
                if fault.kind == "slow":
                    self.faults.pause(fault)
                elif fault.status is not None:
                    return _fault_response(service, op, fault.status, fault.retry_after, fault.message)
            return route.handler(request)
        except ApiError as exc:
            if service is None:
                return Response.json({"message": exc.message}, exc.status)
            response = service.error(op, exc.status, exc.message, exc.code)
            response.headers.update(exc.headers)
            return response
        except (IncompleteBody, ConnectionError, TimeoutError):
            raise
        except Exception:
            sys.stderr.write(f"emulator: internal error in {op or request.path}:\n")
            traceback.print_exc()
            if service is None:
                return Response.json({"message": "internal emulator error"}, 500)
            return service.error(op, 500, "internal emulator error")


def _read_half(request: Request) -> None:
    """What a reset reads before dropping the connection: about half the announced
    body (at most ``RESET_READ_LIMIT``), so the client is cut off mid-upload."""
    want = min((request.content_length or 0) // 2, RESET_READ_LIMIT)
    try:
        while request.body.consumed < want and request.body.read(want - request.body.consumed):
            pass
    except IncompleteBody:
        pass


_FAULT_TEXT = {
    400: ("InvalidRequest", "Bad request (injected)"),
    401: ("AccessDenied", "Unauthorized (injected)"),
    403: ("AccessDenied", "Request has expired"),
    404: ("NoSuchKey", "Not found (injected)"),
    429: ("SlowDown", "Too many requests, slow down"),
    500: ("InternalError", "Internal server error"),
    503: ("SlowDown", "Service unavailable, try again"),
}


def _fault_response(
    service: Service, op: str, status: int, retry_after: int | str, text: str | None = None
) -> Response:
    code, message = _FAULT_TEXT.get(status, ("InternalError", f"injected error {status}"))
    message = message if text is None else text
    response = service.error(op, status, message, code)
    if status == 429:
        if retry_after == "date":
            import email.utils

            # A whole second from now at least, after the date's truncation.
            response.headers["Retry-After"] = email.utils.formatdate(int(time.time()) + 2, usegmt=True)
        elif retry_after != "none":  # "none": a 429 without the header (Lilt documents none)
            response.headers["Retry-After"] = str(retry_after)
    return response
