"""The emulator: store, services, faults, request log, the dispatcher, and its control API."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from syncd_emulator.apivideo import ApiVideoService
from syncd_emulator.dispatch import Dispatcher, RequestLog
from syncd_emulator.faults import DEFAULT_KINDS, FaultInjector
from syncd_emulator.lilt import PART_SIZE as LILT_PART_SIZE
from syncd_emulator.lilt import LiltService
from syncd_emulator.messages import ApiError, Request, Reset, Response
from syncd_emulator.server import EmulatorHTTPServer
from syncd_emulator.service import Route, Service, ServiceContext, Settings, UrlSigner
from syncd_emulator.store import Store
from syncd_emulator.transport import IN_PROCESS_URL
from syncd_emulator.wriftai import DEFAULT_PART_SIZE as WRIFTAI_PART_SIZE
from syncd_emulator.wriftai import WriftAIService
from syncd_emulator.xvid import XvidService

#: The registry of emulated services, in the order their base URLs are printed.
SERVICE_CLASSES: list[type[Service]] = [LiltService, WriftAIService, ApiVideoService, XvidService]


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
            Route("GET", "/requests", "requests", lambda r: Response.json({"requests": e.requests()})),
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
    """The emulator: store, services, faults, log, the dispatcher, and (after
    :meth:`start`) a socket server.

    Every request goes through :meth:`respond`. ``start()`` binds
    ``host:port`` (0 = a free port) and serves from a background thread;
    ``url`` is then ``http://host:port``. ``stop()`` closes the listener and
    every open connection. Without ``start()`` the emulator is reached in
    process only, through :class:`~syncd_emulator.transport.EmulatorTransport`,
    and ``url`` is :data:`~syncd_emulator.transport.IN_PROCESS_URL`.

    Objects persist in ``data_dir`` across instances. ``clock`` (epoch
    seconds) drives URL expiry and the Lilt scan delay, so tests can move
    time without sleeping. The services' rules: ``lilt_part_size`` (the one
    Lilt part size accepted; 0 = any S3 accepts), ``wriftai_part_size`` (the
    smallest WriftAI part the server hands out), ``wriftai_omit_etags`` and
    ``wriftai_empty_without_parts`` (see :mod:`syncd_emulator.wriftai`),
    ``apivideo_private_videos`` (new videos are private).
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
        lilt_part_size: int = LILT_PART_SIZE,
        wriftai_part_size: int = WRIFTAI_PART_SIZE,
        wriftai_omit_etags: bool = False,
        wriftai_empty_without_parts: bool = False,
        apivideo_private_videos: bool = False,
    ) -> None:
        self.settings = Settings(
            lilt_key=lilt_key,
            wriftai_token=wriftai_token,
            xvid_client=xvid_client,
            apivideo_token=apivideo_token,
            apivideo_key=apivideo_key,
            url_ttl=url_ttl,
            clock=clock or time.time,
            lilt_part_size=lilt_part_size,
            wriftai_part_size=wriftai_part_size,
            wriftai_omit_etags=wriftai_omit_etags,
            wriftai_empty_without_parts=wriftai_empty_without_parts,
            apivideo_private_videos=apivideo_private_videos,
        )
        self.store = Store(data_dir)
        self.faults = FaultInjector(fail_rate, fault_kinds, seed)
        self.log = RequestLog(verbose=not quiet)
        context = ServiceContext(self.settings, self.store, UrlSigner())
        self.services: list[Service] = [cls(context) for cls in SERVICE_CLASSES]
        self.dispatcher = Dispatcher([*self.services, ControlService(context, self)], self.faults, self.log)
        self.host, self.port, self.quiet = host, port, quiet
        self._url = ""
        self._server: EmulatorHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://host:port`` once started; :data:`IN_PROCESS_URL` before."""
        return self._url or IN_PROCESS_URL

    def respond(self, request: Request) -> Response | Reset:
        """Answer one request (:meth:`Dispatcher.respond`): every way in ends here."""
        return self.dispatcher.respond(request)

    def start(self) -> Emulator:
        """Bind and serve in a background thread; OSError if the port is taken."""
        if self._server is not None:
            return self
        self.faults.stopping(False)
        self._server = EmulatorHTTPServer((self.host, self.port), self.respond, verbose=not self.quiet)
        self.port = self._server.server_address[1]
        host = f"[{self.host}]" if ":" in self.host else self.host
        self._url = f"http://{host}:{self.port}"
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
            self.faults.stopping(True)
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
        """``{"lilt": "http://127.0.0.1:8790/lilt", ...}``."""
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
