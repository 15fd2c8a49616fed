"""The series read when scraped, not counted: each asks the daemon at scrape time.

``syncd_files`` (the ledger's counts), ``syncd_destination_*`` (the
uploader's circuits), the bytes in flight (the uploader's progress),
``syncd_backlog_age_seconds`` (the ledger's earliest due time) and
``syncd_webhook_*`` (the webhook's deliveries). A source
that fails (the ledger closing, the uploader stopping) leaves its series
out of that scrape; the others are still served. :class:`syncd.metrics.Metrics`
registers them through its ``track_*`` hooks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from syncd.circuit import CIRCUIT_STATES, CircuitState

log = logging.getLogger("syncd.metrics")  # the metrics lines keep one logger name


class LedgerCollector(Collector):
    """``syncd_files`` from the ledger, read when scraped (never stale)."""

    def __init__(self, counts: Callable[[], Mapping[str, Mapping[str, int]]]) -> None:
        self._counts = counts

    def collect(self) -> Any:
        family = GaugeMetricFamily(
            "syncd_files", "Ledger rows by state and folder.", labels=["state", "folder"]
        )
        try:
            by_folder = self._counts()
        except Exception as exc:  # ledger closing or busy: serve the other series
            log.debug("metrics: cannot read the ledger: %s", exc)
            by_folder = {}
        for folder, states in sorted(by_folder.items()):
            for state, n in sorted(states.items()):
                family.add_metric([state, folder], n)
        yield family


class DestinationCollector(Collector):
    """``syncd_destination_*`` from the uploader's circuits, read when scraped."""

    def __init__(self, states: Callable[[], Mapping[str, CircuitState]]) -> None:
        self._states = states

    def collect(self) -> Any:
        up = GaugeMetricFamily(
            "syncd_destination_up",
            "1 when the destination takes uploads, 0 while it is down or refuses them.",
            labels=["destination"],
        )
        since = GaugeMetricFamily(
            "syncd_destination_down_since_seconds",
            "Unix time the destination went down or began refusing uploads; 0 while it is up.",
            labels=["destination"],
        )
        state = GaugeMetricFamily(
            "syncd_destination_state",
            "1 for the state of the destination's circuit.",
            labels=["destination", "state"],
        )
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


class ProgressCollector(Collector):
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
        total = GaugeMetricFamily("syncd_upload_bytes_in_flight", "Bytes of the files being uploaded now.")
        total.add_metric([], sum(int(f["total"]) for f in files))
        sent = GaugeMetricFamily(
            "syncd_upload_sent_bytes_in_flight",
            "Bytes of the files being uploaded now that were sent so far.",
        )
        sent.add_metric([], sum(int(f["sent"]) for f in files))
        yield total
        yield sent


class BacklogCollector(Collector):
    """``syncd_backlog_age_seconds`` from the ledger's earliest due time, read when scraped."""

    def __init__(self, next_due: Callable[[], float | None], clock: Callable[[], float]) -> None:
        self._next_due = next_due
        self._clock = clock

    def collect(self) -> Any:
        family = GaugeMetricFamily(
            "syncd_backlog_age_seconds",
            "How long the file waiting longest for an uploader "
            "has been due (queued, or its retry time passed); 0 when none is.",
        )
        try:
            due = self._next_due()
        except Exception as exc:  # ledger closing or busy: serve the other series
            log.debug("metrics: cannot read the ledger: %s", exc)
            return
        family.add_metric([], 0.0 if due is None else max(0.0, self._clock() - due))
        yield family


class _HealthCollector(Collector):
    """Series read from a ``health()`` dict when scraped; none while it returns None."""

    def __init__(self, health: Callable[[], Mapping[str, Any] | None]) -> None:
        self._health = health

    def collect(self) -> Any:
        seen = self._health()
        if seen is not None:
            yield from self.families(seen)

    def families(self, seen: Mapping[str, Any]) -> Iterator[Metric]:
        raise NotImplementedError


class WebhookCollector(_HealthCollector):
    """``syncd_webhook_*`` from the webhook's counts (:meth:`syncd.webhook.Webhook.health`),
    read when scraped; nothing while no ``webhook_url`` is set."""

    def families(self, seen: Mapping[str, Any]) -> Iterator[Metric]:
        outcomes = CounterMetricFamily(
            "syncd_webhook_notifications",
            "Webhook notifications since start: delivered, failed (given up after every retry) "
            "or dropped (the queue was full).",
            labels=["outcome"],
        )
        for outcome in ("delivered", "failed", "dropped"):
            outcomes.add_metric([outcome], seen[outcome])
        yield outcomes
        yield GaugeMetricFamily(
            "syncd_webhook_failing",
            "1 while webhook deliveries fail (from the first failed try to the next delivery).",
            value=0 if seen["failing_since"] is None else 1,
        )
        yield GaugeMetricFamily(
            "syncd_webhook_pending", "Webhook notifications waiting to be sent.", value=seen["pending"]
        )


class HelpersCollector(_HealthCollector):
    """``syncd_upload_helpers*`` from the upload helpers' counts
    (:meth:`syncd.offload.Offload.health`), read when scraped; nothing while they are off."""

    def families(self, seen: Mapping[str, Any]) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "syncd_upload_helpers", "Upload helper processes running (upload_processes).", seen["running"]
        )
        yield GaugeMetricFamily(
            "syncd_upload_helpers_sending", "Upload helpers sending a file now.", value=seen["sending"]
        )
        yield CounterMetricFamily(
            "syncd_upload_helper_files", "Files sent by upload helpers since start.", value=seen["sent"]
        )
        yield CounterMetricFamily(
            "syncd_upload_helper_failures",
            "Upload helpers that died or broke while sending, since start (that file was retried).",
            value=seen["failed"],
        )
        yield GaugeMetricFamily(
            "syncd_upload_helpers_given_up",
            "1 when upload helpers kept failing to start: the workers send every file until a reload.",
            value=1 if seen["given_up"] else 0,
        )


__all__ = [
    "BacklogCollector",
    "HelpersCollector",
    "DestinationCollector",
    "LedgerCollector",
    "ProgressCollector",
    "WebhookCollector",
]
