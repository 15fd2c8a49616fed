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
                                           ``rearmed``, ``reload``, ``directory``,
                                           ``disk-space``, ``overflow``
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
``syncd_webhook_notifications_total``      webhook notifications since start, by
``{outcome}``                              ``delivered``, ``failed`` (given up after
                                           every retry), ``dropped`` (queue full);
                                           with ``syncd_webhook_failing`` (1 while
                                           deliveries fail) and
                                           ``syncd_webhook_pending``. Only while
                                           ``webhook_url`` is set; read at scrape time
``syncd_upload_helpers``                   upload helper processes running, with
                                           ``syncd_upload_helpers_sending``,
                                           ``syncd_upload_helper_files_total`` (files
                                           they sent), ``syncd_upload_helper_``
                                           ``failures_total`` and
                                           ``syncd_upload_helpers_given_up``. Only
                                           while ``upload_processes`` is set
=========================================  ======================================

plus prometheus-client's ``process_*`` series (start time, memory, fds).
:class:`Metrics` is always there; without ``metrics_listen`` it only counts.
``syncd once`` never serves them: it counts nothing (:class:`.unserved.Unserved`) and does
not import prometheus-client.

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

The series read at scrape time are :mod:`.collectors`, the endpoint is
:mod:`.endpoint`; the counters, gauges and histograms are here.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from syncd.circuit import CircuitState
    from syncd.metrics.collectors import (
        BacklogCollector,
        DestinationCollector,
        HelpersCollector,
        LedgerCollector,
        ProgressCollector,
        WebhookCollector,
    )
    from syncd.metrics.endpoint import Endpoint

log = logging.getLogger(__name__)

# Upload attempts: small files take milliseconds, 5 GiB parts minutes.
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)
# Detected -> done includes settle time and queueing.
LATENCY_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800, 3600, 4 * 3600, 24 * 3600)

# Limits of the endpoint (read each time it starts): see the module docstring.
MAX_CONNECTIONS = 32
REQUEST_TIMEOUT = 5.0  # seconds for the whole request head, however slowly it trickles in
RESPONSE_TIMEOUT = 30.0  # seconds to render the series and send them
MAX_REQUEST_BYTES = 8192


def split_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:8791"`` / ``"[::1]:8791"`` -> (host, port)."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


class Metrics:
    """Every series syncd exports, and the HTTP server that serves them."""

    def __init__(self) -> None:
        # imported here, as the collectors below: prometheus-client (with the standard
        # library's http.server it brings) is about 15 ms of CPU, which `syncd once`, whose
        # metrics are never served, does not pay (it counts with syncd.metrics.unserved.Unserved)
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
        from prometheus_client.process_collector import ProcessCollector

        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.uploaded = Counter("syncd_uploaded_files", "Confirmed uploads.", ["destination"], registry=r)
        self.uploaded_bytes = Counter(
            "syncd_uploaded_bytes", "Bytes of confirmed uploads.", ["destination"], registry=r
        )
        self.upload_duration = Histogram(
            "syncd_upload_duration_seconds",
            "Duration of a successful upload attempt.",
            ["destination"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.end_to_end = Histogram(
            "syncd_end_to_end_seconds",
            "From first seen in a folder to done (archived, deleted or kept).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            "syncd_retries", "Retries scheduled, by class of failure.", ["class"], registry=r
        )
        self.failed = Counter("syncd_failed_files", "Files given up on (moved to failed_dir).", registry=r)
        self.rescans = Counter("syncd_rescans", "Folder scans, by reason.", ["folder", "reason"], registry=r)
        self.rescan_found = Counter(
            "syncd_rescan_found_files",
            "Files found by a scan that no event had reported.",
            ["folder", "reason"],
            registry=r,
        )
        self.folder_healthy = Gauge(
            "syncd_folder_healthy", "1 when the folder is watched and usable.", ["folder"], registry=r
        )
        self.disk_full = Gauge("syncd_disk_full", "1 while work is paused for a full disk.", registry=r)
        self.in_flight = Gauge("syncd_uploads_in_flight", "Uploads running now.", registry=r)
        self.workers = Gauge("syncd_workers", "Uploader threads configured.", registry=r)
        self.last_upload = Gauge(
            "syncd_last_upload_timestamp_seconds", "Wall clock of the last confirmed upload.", registry=r
        )
        ProcessCollector(registry=r)
        self._ledger_collector: LedgerCollector | None = None
        self._destination_collector: DestinationCollector | None = None
        self._progress_collector: ProgressCollector | None = None
        self._backlog_collector: BacklogCollector | None = None
        self._webhook_collector: WebhookCollector | None = None
        self._helpers_collector: HelpersCollector | None = None
        self.error: str | None = None  # why metrics_listen is not served (`syncd status`)
        self._server: Endpoint | None = None
        self.listen = ""

    # hooks -------------------------------------------------------------------

    def track_ledger(self, counts: Callable[[], Mapping[str, Mapping[str, int]]]) -> None:
        """Export ``syncd_files`` from ``counts()`` (Ledger.counts_by_folder)."""
        if self._ledger_collector is None:
            from syncd.metrics.collectors import LedgerCollector

            self._ledger_collector = LedgerCollector(counts)
            self.registry.register(self._ledger_collector)

    def track_destinations(self, states: Callable[[], Mapping[str, CircuitState]]) -> None:
        """Export ``syncd_destination_*`` from ``states()`` (Uploader.destination_states)."""
        if self._destination_collector is None:
            from syncd.metrics.collectors import DestinationCollector

            self._destination_collector = DestinationCollector(states)
            self.registry.register(self._destination_collector)

    def track_progress(self, progress: Callable[[], list[dict[str, Any]]]) -> None:
        """Export the bytes in flight from ``progress()`` (Uploader.progress)."""
        if self._progress_collector is None:
            from syncd.metrics.collectors import ProgressCollector

            self._progress_collector = ProgressCollector(progress)
            self.registry.register(self._progress_collector)

    def track_backlog(
        self, next_due: Callable[[], float | None], clock: Callable[[], float] = time.time
    ) -> None:
        """Export ``syncd_backlog_age_seconds`` from ``next_due()`` (Ledger.next_due)."""
        if self._backlog_collector is None:
            from syncd.metrics.collectors import BacklogCollector

            self._backlog_collector = BacklogCollector(next_due, clock)
            self.registry.register(self._backlog_collector)

    def track_webhook(self, health: Callable[[], Mapping[str, Any] | None]) -> None:
        """Export ``syncd_webhook_*`` from ``health()`` (the webhook in force, or None)."""
        if self._webhook_collector is None:
            from syncd.metrics.collectors import WebhookCollector

            self._webhook_collector = WebhookCollector(health)
            self.registry.register(self._webhook_collector)

    def track_helpers(self, health: Callable[[], Mapping[str, Any] | None]) -> None:
        """Export ``syncd_upload_helper*`` from ``health()`` (None while helpers are off)."""
        if self._helpers_collector is None:
            from syncd.metrics.collectors import HelpersCollector

            self._helpers_collector = HelpersCollector(health)
            self.registry.register(self._helpers_collector)

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

    def set_workers(self, workers: int) -> None:
        self.workers.set(workers)

    def set_disk_full(self, full: bool) -> None:
        self.disk_full.set(1 if full else 0)

    def set_in_flight(self, uploads: int) -> None:
        self.in_flight.set(uploads)

    # the endpoint --------------------------------------------------------------

    def serve(self, listen: str) -> None:
        """Serve on ``listen`` ("" = stop serving). Errors are logged and kept in
        :attr:`error` (the heartbeat shows it in `syncd status`), never raised."""
        if listen == self.listen and (self._server is not None or not listen):
            return
        # imported here: the endpoint (asyncio, prometheus-client's exposition) costs
        # every start of syncd about 30 ms, and most run without metrics_listen
        from syncd.metrics.endpoint import Endpoint, bind

        self.stop()
        self.listen = listen
        if not listen:
            return
        host, port = split_listen(listen)
        try:
            self._server = Endpoint(
                self.registry,
                bind(host, port),
                max_connections=MAX_CONNECTIONS,
                request_timeout=REQUEST_TIMEOUT,
                response_timeout=RESPONSE_TIMEOUT,
                max_request_bytes=MAX_REQUEST_BYTES,
            )
        except (OSError, ValueError) as exc:  # ValueError: UnicodeError of a name IDNA refuses
            why = getattr(exc, "strerror", None) or exc
            log.error("cannot serve metrics on %s: %s; running without metrics", listen, why)
            self._server = None
            self.error = f"cannot serve metrics on {listen}: {why}"
            return
        log.info("serving metrics on http://%s/metrics", listen)

    def stop(self) -> None:
        server, self._server = self._server, None
        self.listen = ""
        self.error = None
        if server is not None:
            server.close()


__all__ = [
    "DURATION_BUCKETS",
    "LATENCY_BUCKETS",
    "MAX_CONNECTIONS",
    "MAX_REQUEST_BYTES",
    "REQUEST_TIMEOUT",
    "RESPONSE_TIMEOUT",
    "Metrics",
    "split_listen",
]
