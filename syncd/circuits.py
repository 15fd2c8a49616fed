"""Every destination's circuit, as the upload workers use them.

:mod:`syncd.circuit` is one circuit (its docstring is the contract); this
module keeps one per configured destination (made, closed, on first use;
made afresh when a reload changes the destination), asks them which
destinations a worker may take a row for (:meth:`Circuits.admit`), remembers
which row in flight is a circuit's probe, asks the service itself
(``Destination.probe()``) when a probe is due and none of its files waits or
the one that would be the probe is large (:meth:`Circuits.probe_with_file`),
and tells the webhook when a destination goes down or comes back.
Circuits live in memory: a restart starts with every destination up.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from syncd.circuit import GO, RATE_LIMITED, UP, Circuit, CircuitState, is_outage
from syncd.destinations.base import Destination
from syncd.errors import FatalError, RetryableError, UploadError, describe
from syncd.ledger import Row

if TYPE_CHECKING:
    from syncd.webhook import Webhook

log = logging.getLogger("syncd.uploader")  # the upload stage's lines keep one logger name

PROBE_FILE_MAX = 8 * 1024 * 1024  # a larger file is never a probe (Circuits.probe_with_file)


def _when(at: float | None) -> str:
    """A wall-clock time for a log line: ``14:02:11``."""
    return "?" if at is None else time.strftime("%H:%M:%S", time.localtime(at))


class Circuits:
    """Destination name -> :class:`Circuit`, with the probe bookkeeping around them."""

    def __init__(
        self,
        destinations: Callable[[], Mapping[str, Destination]],
        *,
        base: float,
        cap: float,
        clock: Callable[[], float] = time.time,
        on_back: Callable[[], None] = lambda: None,
    ) -> None:
        self._destinations = destinations
        self.base, self.cap = base, cap
        self.clock = clock
        self.on_back = on_back  # a destination is back: wake the idle workers
        self.webhook: Webhook | None = None  # told when a destination goes down or comes back
        self._lock = threading.Lock()
        self._circuits: dict[str, Circuit] = {}
        self._probes: dict[int, int] = {}  # row id -> probe token (the row is its circuit's probe)
        self._resets: dict[str, int] = {}  # name -> reloads that reset its circuit
        self._admitted: dict[int, int] = {}  # row id in flight -> its destination's resets then

    def get(self, name: str) -> Circuit:
        """The circuit of destination ``name`` (made, closed, on first use)."""
        with self._lock:
            circuit = self._circuits.get(name)
            if circuit is None:
                circuit = self._circuits[name] = Circuit(name, base=self.base, cap=self.cap, clock=self.clock)
            return circuit

    def names(self) -> list[str]:
        """The destinations that have a circuit (every one that was used)."""
        with self._lock:
            return list(self._circuits)

    def set_retry(self, base: float, cap: float) -> None:
        """New ``retry_base_seconds`` / ``retry_max_seconds`` (a reload)."""
        with self._lock:
            self.base, self.cap = base, cap
            for circuit in self._circuits.values():
                circuit.base, circuit.cap = base, cap

    def reset(self, names: Iterable[str]) -> list[str]:
        """A reload changed or removed these destinations: each starts afresh, closed; but a
        rate limit's wait is the service's word and stands. Attempts begun before are
        :meth:`stale` from now on. Returns the names that started afresh."""
        afresh = []
        with self._lock:
            for name in names:
                self._resets[name] = self._resets.get(name, 0) + 1
                circuit = self._circuits.get(name)
                if circuit is None or circuit.snapshot().state != RATE_LIMITED:
                    self._circuits.pop(name, None)
                    afresh.append(name)
        return afresh

    def claimed(self, row: Row) -> None:
        """A worker took ``row`` (an attempt begins under the settings in force now)."""
        with self._lock:
            self._admitted[row.id] = self._resets.get(row.destination, 0)

    def stale(self, row: Row, exc: BaseException | None = None) -> bool:
        """Whether ``exc`` is a verdict on the service (refused, rate limited, down; None: it
        works) about settings a reload replaced: the row's attempt began before its
        destination was reset. It must not move the circuit of the settings in force."""
        about_service = (
            exc is None
            or isinstance(exc, FatalError)
            or (isinstance(exc, RetryableError) and (exc.status == 429 or is_outage(exc)))
        )
        with self._lock:
            began = self._admitted.get(row.id)
            return about_service and began is not None and began != self._resets.get(row.destination, 0)

    def states(self) -> dict[str, CircuitState]:
        """Every configured destination's circuit state (status lines, heartbeat, metrics)."""
        names = list(self._destinations())
        with self._lock:
            return {
                name: self._circuits[name].snapshot() if name in self._circuits else CircuitState()
                for name in names
            }

    def waits(self) -> list[float]:
        """Seconds until each open circuit may let a row through (idle workers wait that)."""
        with self._lock:
            circuits = list(self._circuits.values())
        return [until for c in circuits if (until := c.wait()) is not None]

    # claiming -----------------------------------------------------------------

    def admit(self) -> tuple[list[str], tuple[str, int] | None]:
        """The destinations a worker may take a row for now, and at most one probe
        ``(name, token)`` this worker makes (others' probe tickets are handed back)."""
        names: list[str] = []
        probe: tuple[str, int] | None = None
        for name in self._destinations():
            ticket = self.get(name).admit()
            if ticket == GO:
                names.append(name)
            elif ticket is not None:
                if probe is None:
                    probe = (name, ticket)
                else:
                    self.get(name).release_probe(ticket)
        return names, probe

    def probe_with(self, row_id: int, token: int) -> None:
        """The row just claimed is its destination's probe."""
        self._probes[row_id] = token

    def probe_with_file(self, row: Row) -> bool:
        """``row`` was just claimed as its circuit's probe: whether it may go.

        A file over :data:`PROBE_FILE_MAX` bytes is not the probe: its upload would
        hold back every other file of the destination until it ends. The service is
        asked with ``Destination.probe()`` instead, and the file goes (as an ordinary
        upload) only if that closed the circuit; False: it waits for the next step.
        """
        if (row.size or 0) <= PROBE_FILE_MAX:
            return True
        log.debug(
            "destination %r: asking the service, not a %d-byte file, as the probe", row.destination, row.size
        )
        self.probe_idle(row.destination, self._probes.pop(row.id, GO))
        return self.get(row.destination).snapshot().state == UP

    def probe_of(self, row_id: int) -> int:
        """The probe token of a row in flight (GO for an ordinary upload)."""
        return self._probes.get(row_id, GO)

    def attempt_over(self, row_id: int, destination: str) -> None:
        """A row's attempt ended: a probe that ended without a verdict lets the next
        worker probe."""
        token = self._probes.pop(row_id, GO)
        with self._lock:
            self._admitted.pop(row_id, None)
        if token:
            self.get(destination).release_probe(token)

    def probe_idle(self, name: str, token: int) -> None:
        """The circuit of ``name`` is due for a probe and none of its files waits:
        ask the service itself (``Destination.probe()``: reachability, credentials)."""
        circuit = self.get(name)
        dest = self._destinations().get(name)
        try:
            if dest is None:
                return
            dest.probe()
        except FatalError as exc:
            circuit.refused(describe(exc), probe=token)
        except RetryableError as exc:
            if exc.status == 429:
                circuit.rate_limited(
                    exc.retry_after, "rate limited (HTTP 429)", probe=token, min_wait=exc.min_wait
                )
            elif is_outage(exc):
                verdict = circuit.failed(describe(exc), retry_after=exc.retry_after, probe=token)
                log.info(
                    "destination %r is still down (probe: %s); next probe in %.1fs",
                    name,
                    describe(exc),
                    max(0.0, (verdict.retry_at or 0.0) - self.clock()),
                )
            else:
                self.service_ok(name)
        except UploadError:
            self.service_ok(name)  # an answer about the request: the service is there
        except Exception as exc:
            log.warning("destination %r: probe failed unexpectedly: %s", name, describe(exc))
            circuit.failed(describe(exc), probe=token)
        else:
            self.service_ok(name)
        finally:
            circuit.release_probe(token)  # a no-op once a verdict was recorded

    # what happened ---------------------------------------------------------------

    def service_ok(self, name: str, row: Row | None = None) -> None:
        """The service answered in a way that shows it works: close its circuit (unless
        that was ``row``'s attempt on settings a reload replaced, :meth:`stale`)."""
        if row is not None and self.stale(row):
            return
        circuit = self.get(name)
        before = circuit.snapshot()
        if circuit.succeeded():
            log.warning(
                "destination %r is back (%s since %s: %s); resuming its uploads",
                name,
                before.state,
                _when(before.since),
                before.reason,
            )
            self.moved(name, before)
            self.on_back()

    def moved(self, name: str, before: CircuitState) -> None:
        """Tell the webhook when destination ``name`` went down (or began refusing
        uploads) or came back; ``before`` is its state before the change."""
        if self.webhook is None:
            return
        after = self.get(name).snapshot()
        if before.up and not after.up:
            self.webhook.destination_down(name, after)
        elif not before.up and after.up:
            self.webhook.destination_up(name, before, now=self.clock())
