"""Local emulator of every upload service syncd supports (``syncd emulate``).

One port, one prefix per service (``/lilt``, later ``/xvid/v1``,
``/wriftai/v1``, ``/apivideo``), plus control endpoints under ``/_emulator``.
To add a service: write ``syncd/emulator/<service>.py`` with a
:class:`~syncd.emulator.server.Service` subclass and append the class to
:data:`SERVICE_CLASSES`. Everything else (routing, faults, the request log,
the store, the CLI) is shared. ``docs/emulator.md`` is the user's guide.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import socket
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from syncd.emulator.apivideo import ApiVideoService
from syncd.emulator.faults import DEFAULT_KINDS, FaultInjector, parse_kinds
from syncd.emulator.lilt import LiltService
from syncd.emulator.server import (
    ApiError,
    ConnectionHandler,
    EmulatorHTTPServer,
    IncompleteBody,
    Request,
    Response,
    Route,
    Service,
    ServiceContext,
    Settings,
    UrlSigner,
)
from syncd.emulator.store import Store
from syncd.emulator.wriftai import WriftAIService
from syncd.emulator.xvid import XvidService

__all__ = ["SERVICE_CLASSES", "Emulator", "build_parser", "main"]

#: The registry of emulated services, in the order their base URLs are printed.
SERVICE_CLASSES: list[type[Service]] = [LiltService, WriftAIService, ApiVideoService, XvidService]

LOG_LIMIT = 100_000  # request-log entries kept (oldest dropped first)


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

    def handle(self, h: ConnectionHandler) -> None:
        """Serve one request on connection ``h`` (on that connection's thread)."""
        started, t0 = time.time(), time.perf_counter()
        request = h.build_request()
        if request is None:
            return
        service = self.find(request.path)
        entry: dict[str, Any] = {
            "service": service.name if service else None,
            "op": None,
            "method": request.method,
            "path": request.path,
            "status": 0,
            "time": started,
        }
        try:
            response = self._respond(h, service, request, entry)
            # Unread body (early rejection): drain it so keep-alive stays in step.
            close = response is not None and not request.body.drain()
        except (IncompleteBody, ConnectionError, TimeoutError):
            response, close = None, True  # the client is gone; nothing to answer
        if service is not None and not service.internal:
            # Logged before answering, so a client that has its answer sees the entry.
            entry["status"] = response.status if response is not None else 0
            entry["bytes"] = request.body.consumed
            entry["duration"] = round(time.perf_counter() - t0, 6)
            self.log.add(entry)
        if response is None:
            h.close_connection = True
        else:
            h.send(response, close=close)

    def _respond(
        self, h: ConnectionHandler, service: Service | None, request: Request, entry: dict[str, Any]
    ) -> Response | None:
        """The response, or None when the connection was reset on purpose."""
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
                    h.reset(request)
                    return None
                if fault.kind == "slow":
                    time.sleep(self.faults.slow_delay(fault))
                elif fault.status is not None:
                    return _fault_response(service, op, fault.status, fault.retry_after,
                                           fault.message)
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
            response.headers["Retry-After"] = email.utils.formatdate(
                int(time.time()) + 2, usegmt=True
            )
        elif retry_after != "none":  # "none": a 429 without the header (Lilt documents none)
            response.headers["Retry-After"] = str(retry_after)
    return response


class ControlService(Service):
    """``/_emulator/*``: listing, request log, faults, health. Never faulted or logged."""

    name = "_emulator"
    prefix = "/_emulator"
    internal = True

    def __init__(self, context: ServiceContext, emulator: Emulator) -> None:
        self.emulator = emulator
        super().__init__(context)

    def routes(self) -> list[Route]:
        e = self.emulator
        return [
            Route(
                "GET",
                "/uploads",
                "uploads",
                lambda r: Response.json({"uploads": e.store.uploads(r.arg("service"))}),
            ),
            Route(
                "GET", "/requests", "requests", lambda r: Response.json({"requests": e.requests()})
            ),
            Route("POST", "/reset-log", "reset-log", self._reset_log),
            Route("GET", "/faults", "faults", lambda r: Response.json(e.faults.snapshot())),
            Route("POST", "/faults", "faults", self._set_faults),
            Route("DELETE", "/faults", "faults", self._clear_faults),
            Route(
                "GET",
                "/health",
                "health",
                lambda r: Response.json({"ok": True, "services": e.base_urls()}),
            ),
        ]

    def _reset_log(self, request: Request) -> Response:
        self.emulator.reset_log()
        return Response.json({"ok": True})

    def _set_faults(self, request: Request) -> Response:
        body = request.json()
        if not isinstance(body, dict):
            raise ApiError(400, "body must be a JSON object")
        unknown = set(body) - {"fail_rate", "kinds", "seed", "script"}
        if unknown:
            raise ApiError(400, f"unknown field(s) {sorted(unknown)}")
        try:
            self.emulator.set_faults(**body)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        return Response.json(self.emulator.faults.snapshot())

    def _clear_faults(self, request: Request) -> Response:
        self.emulator.faults.clear()
        return Response.json(self.emulator.faults.snapshot())


class Emulator:
    """The emulator: store, services, faults, log, and (after :meth:`start`) a server.

    ``start()`` binds ``host:port`` (0 = a free port) and serves from a
    background thread; ``url`` is then ``http://host:port``. ``stop()`` closes
    the listener and every open connection. Objects persist in ``data_dir``
    across instances. ``clock`` (epoch seconds) drives URL expiry and the
    Lilt scan delay, so tests can move time without sleeping.
    """

    def __init__(
        self,
        data_dir: str | Path,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        lilt_key: str = "demo-lilt-key",
        wriftai_token: str = "demo-wriftai-token",
        xvid_client: str = "demo-client:demo-secret",
        apivideo_token: str = "to-demo-upload-token",
        apivideo_key: str = "demo-apivideo-key",
        fail_rate: float = 0.0,
        seed: int | None = None,
        fault_kinds: Sequence[str] = DEFAULT_KINDS,
        url_ttl: float = 900.0,
        quiet: bool = True,
        clock: Callable[[], float] | None = None,
        lilt_part_size: int = 8 * 1024 * 1024,
    ) -> None:
        self.settings = Settings(
            lilt_key,
            wriftai_token,
            xvid_client,
            apivideo_token,
            apivideo_key,
            url_ttl,
            clock or time.time,
        )
        self.store = Store(data_dir)
        self.faults = FaultInjector(fail_rate, fault_kinds, seed)
        self.log = RequestLog(verbose=not quiet)
        context = ServiceContext(self.settings, self.store, UrlSigner())
        self.services: list[Service] = [cls(context) for cls in SERVICE_CLASSES]
        for service in self.services:
            if isinstance(service, LiltService):
                service.part_size = lilt_part_size  # Lilt's 8 MiB rule, or 0 for any size
        self._dispatcher = Dispatcher(
            [*self.services, ControlService(context, self)], self.faults, self.log
        )
        self.host, self.port, self.quiet = host, port, quiet
        self.url = ""
        self._server: EmulatorHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Emulator:
        """Bind and serve in a background thread; OSError if the port is taken."""
        if self._server is not None:
            return self
        self._server = EmulatorHTTPServer(
            (self.host, self.port), self._dispatcher.handle, verbose=not self.quiet
        )
        self.port = self._server.server_address[1]
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{host}:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="emulator",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close every connection (idempotent)."""
        server, thread, self._server, self._thread = self._server, self._thread, None, None
        if server is not None:
            host, port = str(server.server_address[0]), int(server.server_address[1])
            stopper = threading.Thread(target=server.shutdown, name="emulator-stop")
            stopper.start()
            while stopper.is_alive():  # wake serve_forever's select() instead of waiting it out
                with contextlib.suppress(OSError):
                    socket.create_connection((host, port), timeout=0.2).close()
                stopper.join(0.01)
            server.close()
        if thread is not None:
            thread.join()

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def base_urls(self) -> dict[str, str]:
        """``{"lilt": "http://127.0.0.1:8790/lilt", ...}`` (after start)."""
        return {s.name: self.url + s.prefix for s in self.services}

    def uploads(self) -> list[dict[str, Any]]:
        """Every stored object, oldest first (as ``GET /_emulator/uploads``)."""
        return self.store.uploads()

    def requests(self) -> list[dict[str, Any]]:
        """The request log (as ``GET /_emulator/requests``)."""
        return self.log.snapshot()

    def set_faults(
        self,
        *,
        fail_rate: float | None = None,
        kinds: Sequence[str] | None = None,
        seed: int | None = None,
        script: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        """Change fault injection (None = unchanged); ValueError on bad values."""
        self.faults.configure(fail_rate=fail_rate, kinds=kinds, seed=seed, script=script)

    def reset_log(self) -> None:
        self.log.clear()


# -- command line ------------------------------------------------------------


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}")
    return value


def _kinds(text: str) -> tuple[str, ...]:
    try:
        return parse_kinds(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _client(text: str) -> str:
    if ":" not in text:
        raise argparse.ArgumentTypeError("expected ID:SECRET")
    return text


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="syncd emulate",
        description="Serve local emulators of every supported upload service on one port.",
    )
    p.add_argument(
        "--listen",
        type=_listen,
        default=("127.0.0.1", 8790),
        metavar="HOST:PORT",
        help="address to listen on (default 127.0.0.1:8790; port 0 = any free port)",
    )
    p.add_argument(
        "--data",
        default="./emulator-data",
        metavar="DIR",
        help="where received objects are kept (default ./emulator-data)",
    )
    p.add_argument("--lilt-key", default="demo-lilt-key", help="Lilt API key accepted")
    p.add_argument("--wriftai-token", default="demo-wriftai-token", help="WriftAI token accepted")
    p.add_argument(
        "--xvid-client",
        type=_client,
        default="demo-client:demo-secret",
        metavar="ID:SECRET",
        help="Xvid client id and secret accepted",
    )
    p.add_argument(
        "--apivideo-token",
        default="to-demo-upload-token",
        help="api.video delegated upload token accepted",
    )
    p.add_argument("--apivideo-key", default="demo-apivideo-key", help="api.video API key accepted")
    p.add_argument(
        "--lilt-part-size",
        type=int,
        default=8 * 1024 * 1024,
        metavar="BYTES",
        help="the only Lilt multipart part size accepted (default 8388608, Lilt's rule; "
        "0 = any size S3 accepts)",
    )
    p.add_argument(
        "--fail-rate",
        type=_rate,
        default=0.0,
        metavar="F",
        help="fraction of service requests answered with a random fault (default 0)",
    )
    p.add_argument("--seed", type=int, default=None, metavar="N", help="seed for random faults")
    p.add_argument(
        "--faults",
        type=_kinds,
        default=DEFAULT_KINDS,
        metavar="KINDS",
        help="comma list of fault kinds to draw from: 500,503,429,reset,slow,expire "
        "(default 500,503,429,reset,slow)",
    )
    p.add_argument(
        "--url-ttl",
        type=_positive,
        default=900.0,
        metavar="SECONDS",
        help="lifetime of presigned URLs (default 900)",
    )
    noise = p.add_mutually_exclusive_group()
    noise.add_argument(
        "--quiet",
        dest="quiet",
        action="store_true",
        default=True,
        help="no per-request log (default)",
    )
    noise.add_argument(
        "--verbose",
        dest="quiet",
        action="store_false",
        help="one line per request on stderr (secrets masked)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the emulator until SIGINT/SIGTERM: 0 on a clean stop, 1 if it cannot start
    (port taken, data folder unusable), 2 for bad arguments (argparse)."""
    from syncd import redact

    args = build_parser().parse_args(argv)
    for secret in (args.lilt_key, args.wriftai_token, args.xvid_client.partition(":")[2],
                   args.apivideo_token, args.apivideo_key):  # fmt: skip
        redact.register(secret)
    host, port = args.listen
    try:
        emulator = Emulator(
            args.data, host, port, lilt_key=args.lilt_key, wriftai_token=args.wriftai_token,
            xvid_client=args.xvid_client, apivideo_token=args.apivideo_token,
            apivideo_key=args.apivideo_key, fail_rate=args.fail_rate, seed=args.seed,
            fault_kinds=args.faults, url_ttl=args.url_ttl, quiet=args.quiet,
            lilt_part_size=args.lilt_part_size,
        )  # fmt: skip
    except OSError as exc:
        print(f"syncd emulate: cannot use data folder {args.data}: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    try:
        try:
            emulator.start()
        except OSError as exc:
            print(f"syncd emulate: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
            return 1
        print(f"syncd emulator on {emulator.url} (data in {emulator.store.root})")
        for name, url in emulator.base_urls().items():
            print(f"  {name:<10} base_url = {url}")
        print(f"  {'control':<10} {emulator.url}/_emulator/uploads", flush=True)
        while not stop.wait(0.5):
            pass
        emulator.stop()
        print("syncd emulator stopped", flush=True)
        return 0
    finally:
        emulator.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
