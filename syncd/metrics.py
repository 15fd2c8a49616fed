"""Prometheus metrics (``daemon.metrics_listen = "HOST:PORT"``).

Served by prometheus-client's own HTTP server (a daemon thread) from a
private registry, at ``http://HOST:PORT/metrics``. The series:

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
``syncd_uploads_in_flight``                uploads running now
``syncd_workers``                          uploader threads configured
``syncd_last_upload_timestamp_seconds``    wall clock of the last confirmed upload
=========================================  ======================================

plus prometheus-client's ``process_*`` series (start time, memory, fds).
:class:`Metrics` is always there; without ``metrics_listen`` it only counts.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

# Upload attempts: small files take milliseconds, 5 GiB parts minutes.
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)
# Detected -> done includes settle time and queueing.
LATENCY_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 1800, 3600, 4 * 3600, 24 * 3600)


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


def split_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:9100"`` / ``"[::1]:9100"`` -> (host, port)."""
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
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.listen = ""

    # hooks -------------------------------------------------------------------

    def track_ledger(self, counts: Callable[[], Mapping[str, Mapping[str, int]]]) -> None:
        """Export ``syncd_files`` from ``counts()`` (Ledger.counts_by_folder)."""
        if self._ledger_collector is None:
            self._ledger_collector = _LedgerCollector(counts)
            self.registry.register(self._ledger_collector)

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
        """Serve on ``listen`` ("" = stop serving). Errors are logged, never raised."""
        if listen == self.listen and (self._server is not None or not listen):
            return
        self.stop()
        self.listen = listen
        if not listen:
            return
        host, port = split_listen(listen)
        try:
            self._server, self._thread = start_http_server(port, addr=host,
                                                           registry=self.registry)
        except OSError as exc:
            log.error("cannot serve metrics on %s: %s; running without metrics",
                      listen, exc.strerror or exc)
            self._server = None
            return
        log.info("serving metrics on http://%s/metrics", listen)

    def stop(self) -> None:
        server, thread, self._server, self._thread = self._server, self._thread, None, None
        self.listen = ""
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(5)
