"""Prometheus metrics (``daemon.metrics_listen = "HOST:PORT"``).

Served from a private prometheus-client registry by syncd's own small HTTP
server (below), at ``http://HOST:PORT/metrics``. The series:

=========================================  ======================================
``syncd_files{state,folder}``              ledger rows per state and folder (read
                                           from the ledger at scrape time)
``syncd_uploaded_files_total{destination}``  confirmed uploads
``syncd_uploaded_bytes_total{destination}``  bytes of confirmed uploads
``syncd_upload_duration_seconds``          histogram of one successful upload
                                           attempt (``destination`` label)
``syncd_end_to_end_seconds``               histogram from first seen (detected)
                                           to done (archived/deleted/kept)
``syncd_retries_total{class}``             retries scheduled, by what failed:
                                           ``rate_limited``, ``server_error``,
                                           ``timeout``, ``network``, ``expired``,
                                           ``client_error``, ``local_io``, ``internal``
``syncd_failed_files_total``               files given up on (to failed_dir)
``syncd_rescans_total{folder,reason}``     folder scans: ``startup``, ``periodic``,
                                           ``rearmed``, ``reload``, ``directory``
``syncd_rescan_found_files_total``         files a scan found that no event had
``{folder,reason}``                        reported (events recovered by rescans)
``syncd_folder_healthy{folder}``           1 watched and usable, 0 missing,
                                           unmounted, marker missing
``syncd_disk_full``                        1 while work is paused for a full disk
``syncd_destination_up{destination}``      1 when the destination takes uploads
                                           (rate limited counts as up), 0 while
                                           its circuit is open: down or refused
``syncd_destination_down_since_seconds``   Unix time its circuit opened (0 while
``{destination}``                          up): how long the outage has lasted
``syncd_destination_state``                1 for the destination's circuit state:
``{destination,state}``                    ``up``, ``down`` (transport errors,
                                           5xx), ``refused`` (401/403, TLS),
                                           ``rate_limited`` (429); read at scrape
                                           time, like ``syncd_files``
``syncd_uploads_in_flight``                uploads running now
``syncd_upload_bytes_in_flight``           bytes of the files being uploaded now
``syncd_upload_sent_bytes_in_flight``      of those, the bytes sent so far (read at
                                           scrape time; per file: `syncd status`)
``syncd_workers``                          uploader threads configured
``syncd_last_upload_timestamp_seconds``    wall clock of the last confirmed upload
``syncd_backlog_age_seconds``              how long the file waiting longest for an
                                           uploader has been due (queued, or its
                                           retry time passed); 0 when none is.
                                           Read at scrape time (one index lookup)
=========================================  ======================================

plus prometheus-client's ``process_*`` series (start time, memory, fds).
:class:`Metrics` is always there; without ``metrics_listen`` it only counts.

The endpoint is syncd's own small HTTP/1.1 server (``GET``/``HEAD /metrics``,
one request per connection), not prometheus-client's thread-per-connection
one: an asyncio loop in one thread reads every request and one more thread
renders the series, so no number of idle or slow clients adds a thread. A
client has ``REQUEST_TIMEOUT`` seconds in total to send its request head (at
most ``MAX_REQUEST_BYTES``) and the response must be sent within
``RESPONSE_TIMEOUT``; at most ``MAX_CONNECTIONS`` connections are open, and
when one more arrives the oldest connection still sending its request is
dropped (or, when every one is being answered, the new one is closed), so a
flood of half-open sockets cannot lock a scraper out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from syncd.circuit import CIRCUIT_STATES, CircuitState

log = logging.getLogger(__name__)

# Upload attempts: small files take milliseconds, 5 GiB parts minutes.
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)
# Detected -> done includes settle time and queueing.
LATENCY_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800, 3600, 4 * 3600, 24 * 3600)

# Limits of the endpoint (read when it starts): see the module docstring.
MAX_CONNECTIONS = 32
REQUEST_TIMEOUT = 5.0  # seconds for the whole request head, however slowly it trickles in
RESPONSE_TIMEOUT = 30.0  # seconds to render the series and send them
MAX_REQUEST_BYTES = 8192


class _LedgerCollector(Collector):
    """``syncd_files`` from the ledger, read when scraped (never stale)."""

    def __init__(self, counts: Callable[[], Mapping[str, Mapping[str, int]]]) -> None:
        self._counts = counts

    def collect(self) -> Any:
        family = GaugeMetricFamily("syncd_files", "Ledger rows by state and folder.",
                                   labels=["state", "folder"])
        try:
            by_folder = self._counts()
        except Exception as exc:  # ledger closing or busy: serve the other series
            log.debug("metrics: cannot read the ledger: %s", exc)
            by_folder = {}
        for folder, states in sorted(by_folder.items()):
            for state, n in sorted(states.items()):
                family.add_metric([state, folder], n)
        yield family


class _DestinationCollector(Collector):
    """``syncd_destination_*`` from the uploader's circuits, read when scraped."""

    def __init__(self, states: Callable[[], Mapping[str, CircuitState]]) -> None:
        self._states = states

    def collect(self) -> Any:
        up = GaugeMetricFamily("syncd_destination_up",
                               "1 when the destination takes uploads, 0 while it is down or "
                               "refuses them.", labels=["destination"])
        since = GaugeMetricFamily("syncd_destination_down_since_seconds",
                                  "Unix time the destination went down or began refusing "
                                  "uploads; 0 while it is up.", labels=["destination"])
        state = GaugeMetricFamily("syncd_destination_state",
                                  "1 for the state of the destination's circuit.",
                                  labels=["destination", "state"])
        try:
            states = dict(self._states())
        except Exception as exc:  # stopping: serve the other series
            log.debug("metrics: cannot read the destinations: %s", exc)
            states = {}
        for name, current in sorted(states.items()):
            up.add_metric([name], 1 if current.up else 0)
            since.add_metric([name], 0 if current.up or current.since is None else current.since)
            for kind in CIRCUIT_STATES:
                state.add_metric([name, kind], 1 if current.state == kind else 0)
        yield up
        yield since
        yield state


class _ProgressCollector(Collector):
    """``syncd_upload_bytes_in_flight`` and ``syncd_upload_sent_bytes_in_flight`` from the
    uploader (Uploader.progress), read when scraped; sums, not a series per file."""

    def __init__(self, progress: Callable[[], list[dict[str, Any]]]) -> None:
        self._progress = progress

    def collect(self) -> Any:
        try:
            files = self._progress()
        except Exception as exc:  # stopping: serve the other series
            log.debug("metrics: cannot read the uploads in flight: %s", exc)
            files = []
        total = GaugeMetricFamily("syncd_upload_bytes_in_flight",
                                  "Bytes of the files being uploaded now.")
        total.add_metric([], sum(int(f["total"]) for f in files))
        sent = GaugeMetricFamily("syncd_upload_sent_bytes_in_flight",
                                 "Bytes of the files being uploaded now that were sent so far.")
        sent.add_metric([], sum(int(f["sent"]) for f in files))
        yield total
        yield sent


class _BacklogCollector(Collector):
    """``syncd_backlog_age_seconds`` from the ledger's earliest due time, read when scraped."""

    def __init__(self, next_due: Callable[[], float | None], clock: Callable[[], float]) -> None:
        self._next_due = next_due
        self._clock = clock

    def collect(self) -> Any:
        family = GaugeMetricFamily(
            "syncd_backlog_age_seconds", "How long the file waiting longest for an uploader "
            "has been due (queued, or its retry time passed); 0 when none is.")
        try:
            due = self._next_due()
        except Exception as exc:  # ledger closing or busy: serve the other series
            log.debug("metrics: cannot read the ledger: %s", exc)
            return
        family.add_metric([], 0.0 if due is None else max(0.0, self._clock() - due))
        yield family


def split_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:8791"`` / ``"[::1]:8791"`` -> (host, port)."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


class Metrics:
    """Every series syncd exports, and the HTTP server that serves them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.uploaded = Counter("syncd_uploaded_files", "Confirmed uploads.", ["destination"],
                                registry=r)
        self.uploaded_bytes = Counter("syncd_uploaded_bytes", "Bytes of confirmed uploads.",
                                      ["destination"], registry=r)
        self.upload_duration = Histogram(
            "syncd_upload_duration_seconds", "Duration of a successful upload attempt.",
            ["destination"], buckets=DURATION_BUCKETS, registry=r)
        self.end_to_end = Histogram(
            "syncd_end_to_end_seconds", "From first seen in a folder to done (archived, "
            "deleted or kept).", buckets=LATENCY_BUCKETS, registry=r)
        self.retries = Counter("syncd_retries", "Retries scheduled, by class of failure.",
                               ["class"], registry=r)
        self.failed = Counter("syncd_failed_files", "Files given up on (moved to failed_dir).",
                              registry=r)
        self.rescans = Counter("syncd_rescans", "Folder scans, by reason.", ["folder", "reason"],
                               registry=r)
        self.rescan_found = Counter(
            "syncd_rescan_found_files", "Files found by a scan that no event had reported.",
            ["folder", "reason"], registry=r)
        self.folder_healthy = Gauge("syncd_folder_healthy",
                                    "1 when the folder is watched and usable.", ["folder"],
                                    registry=r)
        self.disk_full = Gauge("syncd_disk_full", "1 while work is paused for a full disk.",
                               registry=r)
        self.in_flight = Gauge("syncd_uploads_in_flight", "Uploads running now.", registry=r)
        self.workers = Gauge("syncd_workers", "Uploader threads configured.", registry=r)
        self.last_upload = Gauge("syncd_last_upload_timestamp_seconds",
                                 "Wall clock of the last confirmed upload.", registry=r)
        ProcessCollector(registry=r)
        self._ledger_collector: _LedgerCollector | None = None
        self._destination_collector: _DestinationCollector | None = None
        self._progress_collector: _ProgressCollector | None = None
        self._backlog_collector: _BacklogCollector | None = None
        self.error: str | None = None  # why metrics_listen is not served (`syncd status`)
        self._server: _Endpoint | None = None
        self.listen = ""

    # hooks -------------------------------------------------------------------

    def track_ledger(self, counts: Callable[[], Mapping[str, Mapping[str, int]]]) -> None:
        """Export ``syncd_files`` from ``counts()`` (Ledger.counts_by_folder)."""
        if self._ledger_collector is None:
            self._ledger_collector = _LedgerCollector(counts)
            self.registry.register(self._ledger_collector)

    def track_destinations(self, states: Callable[[], Mapping[str, CircuitState]]) -> None:
        """Export ``syncd_destination_*`` from ``states()`` (Uploader.destination_states)."""
        if self._destination_collector is None:
            self._destination_collector = _DestinationCollector(states)
            self.registry.register(self._destination_collector)

    def track_progress(self, progress: Callable[[], list[dict[str, Any]]]) -> None:
        """Export the bytes in flight from ``progress()`` (Uploader.progress)."""
        if self._progress_collector is None:
            self._progress_collector = _ProgressCollector(progress)
            self.registry.register(self._progress_collector)

    def track_backlog(self, next_due: Callable[[], float | None],
                      clock: Callable[[], float] = time.time) -> None:
        """Export ``syncd_backlog_age_seconds`` from ``next_due()`` (Ledger.next_due)."""
        if self._backlog_collector is None:
            self._backlog_collector = _BacklogCollector(next_due, clock)
            self.registry.register(self._backlog_collector)

    def observe_upload(self, destination: str, size: int, seconds: float, at: float) -> None:
        self.uploaded.labels(destination).inc()
        self.uploaded_bytes.labels(destination).inc(size)
        self.upload_duration.labels(destination).observe(seconds)
        self.last_upload.set(at)

    def observe_done(self, first_seen: float, now: float) -> None:
        self.end_to_end.observe(max(0.0, now - first_seen))

    def observe_retry(self, klass: str) -> None:
        self.retries.labels(klass).inc()

    def observe_failed(self) -> None:
        self.failed.inc()

    def observe_scan(self, folder: str, reason: str, found: int) -> None:
        self.rescans.labels(folder, reason).inc()
        if found:
            self.rescan_found.labels(folder, reason).inc(found)

    def set_folders(self, health: Mapping[str, bool]) -> None:
        for folder, ok in health.items():
            self.folder_healthy.labels(folder).set(1 if ok else 0)

    def forget_folder(self, folder: str) -> None:
        with contextlib.suppress(KeyError):
            self.folder_healthy.remove(folder)

    # the endpoint --------------------------------------------------------------

    def serve(self, listen: str) -> None:
        """Serve on ``listen`` ("" = stop serving). Errors are logged and kept in
        :attr:`error` (the heartbeat shows it in `syncd status`), never raised."""
        if listen == self.listen and (self._server is not None or not listen):
            return
        self.stop()
        self.listen = listen
        if not listen:
            return
        host, port = split_listen(listen)
        try:
            self._server = _Endpoint(self.registry, _bind(host, port))
        except OSError as exc:
            log.error("cannot serve metrics on %s: %s; running without metrics",
                      listen, exc.strerror or exc)
            self._server = None
            self.error = f"cannot serve metrics on {listen}: {exc.strerror or exc}"
            return
        log.info("serving metrics on http://%s/metrics", listen)

    def stop(self) -> None:
        server, self._server = self._server, None
        self.listen = ""
        self.error = None
        if server is not None:
            server.close()


def _bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (IPv4 or IPv6, as the host resolves)."""
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                  flags=socket.AI_PASSIVE)[0]
    return socket.create_server(address, family=family, backlog=128)


_STATUS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           500: "Internal Server Error"}


class _Endpoint:
    """``GET /metrics`` on ``sock``: one event-loop thread and one render thread, whatever
    the number of clients (limits: MAX_CONNECTIONS, REQUEST_TIMEOUT, RESPONSE_TIMEOUT,
    MAX_REQUEST_BYTES, read when it starts)."""

    def __init__(self, registry: CollectorRegistry, sock: socket.socket) -> None:
        self._registry = registry
        self._max = MAX_CONNECTIONS
        self._request_timeout = REQUEST_TIMEOUT
        self._response_timeout = RESPONSE_TIMEOUT
        self._limit = MAX_REQUEST_BYTES
        # Open connections, oldest first; True while the request head is still coming in.
        self._conns: dict[asyncio.StreamWriter, bool] = {}
        self._render = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metrics-render")
        self._loop = asyncio.new_event_loop()
        self._serving = threading.Event()
        self._failed: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(sock,), name="metrics-http",
                                        daemon=True)
        self._thread.start()
        self._serving.wait()
        if self._failed is not None:
            raise self._failed

    def _run(self, sock: socket.socket) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        try:
            server = loop.run_until_complete(
                asyncio.start_server(self._handle, sock=sock, limit=self._limit))
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
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"),
                                              self._request_timeout)
            except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                    OSError):
                return  # too slow, too large, or gone
            if writer not in self._conns:
                return
            self._conns[writer] = False
            await asyncio.wait_for(self._respond(head, writer), self._response_timeout)
        except (TimeoutError, OSError):
            pass
        except asyncio.CancelledError:  # the endpoint is closing; end quietly (3.11's
            pass                        # start_server logs a task that ends cancelled)
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
                    self._render, self._render_series, headers.get("accept", ""))
            except Exception as exc:
                log.warning("metrics: cannot render the series: %s", exc)
                status, body = 500, b"cannot render the metrics\n"
        writer.write((f"HTTP/1.1 {status} {_STATUS[status]}\r\n"
                      f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                      f"{extra}Connection: close\r\n\r\n").encode("latin-1"))
        if request[:1] != ["HEAD"]:
            writer.write(body)
        writer.close()  # sends what is buffered, then FIN
        await writer.wait_closed()

    def _render_series(self, accept: str) -> tuple[str, bytes]:
        encoder, content_type = choose_encoder(accept)
        return content_type, encoder(self._registry)
