"""The metrics of a run that never serves them (``syncd once``).

``syncd once`` ends before anyone could scrape it, so what :class:`~syncd.metrics.Metrics`
would count there is never read; building its series would import
prometheus-client, about 15 ms of CPU of every run. :class:`Unserved` takes its
place: every hook and observation does nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from syncd.metrics import Metrics

if TYPE_CHECKING:
    from syncd.circuit import CircuitState


class Unserved(Metrics):
    """The metrics of a run that never serves them (``syncd once``): every hook and
    observation does nothing, and prometheus-client is never imported."""

    def __init__(self) -> None:  # no series, no registry
        self.error = None
        self._server = None
        self.listen = ""

    def track_ledger(self, counts: Callable[[], Mapping[str, Mapping[str, int]]]) -> None:
        pass

    def track_destinations(self, states: Callable[[], Mapping[str, CircuitState]]) -> None:
        pass

    def track_progress(self, progress: Callable[[], list[dict[str, Any]]]) -> None:
        pass

    def track_backlog(
        self, next_due: Callable[[], float | None], clock: Callable[[], float] = time.time
    ) -> None:
        pass

    def track_webhook(self, health: Callable[[], Mapping[str, Any] | None]) -> None:
        pass

    def track_helpers(self, health: Callable[[], Mapping[str, Any] | None]) -> None:
        pass

    def observe_upload(self, destination: str, size: int, seconds: float, at: float) -> None:
        pass

    def observe_done(self, first_seen: float, now: float) -> None:
        pass

    def observe_retry(self, klass: str) -> None:
        pass

    def observe_failed(self) -> None:
        pass

    def observe_scan(self, folder: str, reason: str, found: int) -> None:
        pass

    def set_folders(self, health: Mapping[str, bool]) -> None:
        pass

    def forget_folder(self, folder: str) -> None:
        pass

    def set_workers(self, workers: int) -> None:
        pass

    def set_disk_full(self, full: bool) -> None:
        pass

    def set_in_flight(self, uploads: int) -> None:
        pass

    def serve(self, listen: str) -> None:
        if listen:
            raise RuntimeError("these metrics are never served")
