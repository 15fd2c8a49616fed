"""Liveness: a heartbeat per stage, and the rule the systemd watchdog follows.

Every stage that could wedge keeps a :class:`Pulse`: the main loop, the
scanner thread and each upload worker. A pulse is either *idle* (waiting for
work; such waits are bounded or only wait for work to arrive, and cannot
wedge) or *in a step*, with the monotonic time of its last sign of progress.
The main loop sends ``WATCHDOG=1`` (syncd/health.py) only while
:meth:`Liveness.stalls` finds no stage in a step for longer than its bound
without progress:

``main``, the main loop
    a tick completed within :data:`MAIN_BOUND` (30 s). A tick is short by
    construction (at most 2,000 settling rows, one batch of the intake); a
    reload or a busy ledger may make one slow, never this slow.
``scanner``
    one scan of a folder (or of a directory that appeared) lasts at most
    :data:`SCAN_BOUND` (30 min). A walk reports no progress of its own; a
    million files on a slow share take minutes, a hung mount forever.
``upload-N``, each worker
    within one step (claim a row, upload it, record the outcome, archive
    it) no more than the worker bound passes without progress. Progress is
    a block of the file read for sending (every ``Source`` read, also the
    reads of parallel parts; the same bytes the progress meter counts) and
    the start of each phase (open, metadata, hash, send, verify, record,
    archive), so a huge upload that keeps sending is never judged wedged.
    The bound is :data:`WORKER_BOUND` (10 min), or more when the timeouts
    are longer: the longest wait in a step that reads nothing is a service
    finishing a file after the last byte (Lilt's scan, Xvid's completion:
    polled for at most :data:`SERVICE_WAIT`, 300 s) plus a few requests
    that may each take ``connect_timeout`` + ``io_timeout``, so the bound
    is at least ``SERVICE_WAIT + 4 * (connect_timeout + io_timeout)``. A
    phase that reads or copies the whole file locally without reporting
    (the SHA-256 of ``on_duplicate = "skip"``, the re-hash of a file
    touched during upload, a copy into an archive or failed folder on
    another filesystem) gets ``size / LOCAL_RATE`` seconds more
    (:data:`LOCAL_RATE`: 10 MB/s).

``archiver``, the thread that finishes ``uploaded`` rows no worker holds
    (syncd/recovery.py): a worker's bound, each file's archive move with the
    local allowance of its size (a copy across file systems).

A wedged stage stops the pings, and syncd says so once at ERROR level (which
stage, doing what, for how long); systemd's ``WatchdogSec=`` then restarts
it. When the stage moves again the pings resume, and that is logged too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from syncd.config import DaemonConfig

log = logging.getLogger("syncd.daemon")

MAIN_BOUND = 30.0
SCAN_BOUND = 1800.0
WORKER_BOUND = 600.0
SERVICE_WAIT = 300.0  # the longest a destination polls a service after sending (lilt, xvid)
LOCAL_RATE = 10e6  # bytes/s: the slowest a local whole-file read or copy is taken to be


@dataclass(frozen=True)
class Bounds:
    """Seconds a stage may go without progress within one step."""

    main: float = MAIN_BOUND
    scan: float = SCAN_BOUND
    worker: float = WORKER_BOUND

    @classmethod
    def for_config(cls, daemon: DaemonConfig) -> Bounds:
        """The bounds for a ``[daemon]`` table: the worker's grows with the timeouts."""
        per_request = daemon.connect_timeout + daemon.io_timeout
        return cls(MAIN_BOUND, SCAN_BOUND, max(WORKER_BOUND, SERVICE_WAIT + 4 * per_request))

    def of(self, kind: str) -> float:
        return {"main": self.main, "scan": self.scan}.get(kind, self.worker)


def local_allowance(size: int | None) -> float:
    """Extra seconds for a phase that reads or copies ``size`` bytes without reporting."""
    return max(0, size or 0) / LOCAL_RATE


class Pulse:
    """One stage's heartbeat: written by the stage's own thread (and, for a worker, by the
    threads reading its file's parts), read by the main loop."""

    def __init__(self, name: str, kind: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.kind = kind  # "main", "scan" or "worker": which bound applies
        self._clock = clock
        self._lock = threading.Lock()
        self._since: float | None = None  # when the step in progress began; None while idle
        self._last = clock()  # the last sign of progress in this step
        self._doing = "idle"
        self._extra = 0.0  # seconds beyond the bound that the current phase may take

    def step(self, doing: str, extra: float = 0.0) -> None:
        """A step begins (a tick, a scan, a claim)."""
        now = self._clock()
        with self._lock:
            self._since = self._last = now
            self._doing, self._extra = doing, extra

    def phase(self, doing: str, extra: float = 0.0) -> None:
        """The step moves on to ``doing``: progress, with that phase's own allowance."""
        now = self._clock()
        with self._lock:
            self._last = now
            self._doing, self._extra = doing, extra

    def beat(self) -> None:
        """Progress within the current phase (a block read, a tick done)."""
        now = self._clock()
        with self._lock:
            self._last = now

    def idle(self) -> None:
        """Waiting for work: not judged until the next step."""
        now = self._clock()
        with self._lock:
            self._since, self._last = None, now
            self._doing, self._extra = "idle", 0.0

    def silence(self, now: float) -> tuple[float, float, str] | None:
        """``(seconds without progress, extra allowed, doing)`` within a step; None when idle."""
        with self._lock:
            if self._since is None:
                return None
            return max(0.0, now - self._last), self._extra, self._doing


NO_PULSE = Pulse("none", "worker")  # for callers that keep no heartbeat (tests, tools)


@dataclass(frozen=True)
class Stall:
    """A stage past its bound: who, doing what, how long without progress."""

    stage: str
    doing: str
    seconds: float
    bound: float

    def __str__(self) -> str:
        return (
            f"{self.stage} ({self.doing}) has made no progress for {self.seconds:.0f}s "
            f"(bound {self.bound:.0f}s)"
        )


class Liveness:
    """Every stage's pulse and the watchdog's rule over them (see the module docstring)."""

    def __init__(self, bounds: Bounds | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.bounds = bounds or Bounds()
        self.clock = clock
        self._lock = threading.Lock()
        self._pulses: dict[str, Pulse] = {}
        self._reported: dict[str, Stall] = {}  # stage -> the stall logged (once)

    def pulse(self, name: str, kind: str) -> Pulse:
        """A new pulse for stage ``name`` (replacing one of that name), idle."""
        pulse = Pulse(name, kind, self.clock)
        with self._lock:
            self._pulses[name] = pulse
        return pulse

    def release(self, pulse: Pulse) -> None:
        """The stage ended normally (a worker the pool shrank, the scanner at stop)."""
        with self._lock:
            if self._pulses.get(pulse.name) is pulse:
                del self._pulses[pulse.name]
            self._reported.pop(pulse.name, None)

    def stalls(self, now: float | None = None) -> list[Stall]:
        """The stages in a step with no progress for longer than their bound."""
        now = self.clock() if now is None else now
        with self._lock:
            pulses = list(self._pulses.values())
        found = []
        for pulse in pulses:
            quiet = pulse.silence(now)
            if quiet is None:
                continue
            seconds, extra, doing = quiet
            bound = self.bounds.of(pulse.kind) + extra
            if seconds > bound:
                found.append(Stall(pulse.name, doing, seconds, bound))
        return sorted(found, key=lambda s: s.stage)

    def alive(self, now: float | None = None) -> bool:
        """True while every stage progresses; logs a stage that stalls (once) and its
        recovery."""
        stalls = {s.stage: s for s in self.stalls(now)}
        with self._lock:
            new = [s for name, s in stalls.items() if name not in self._reported]
            self._reported.update((s.stage, s) for s in new)
            over = [self._reported.pop(n) for n in list(self._reported) if n not in stalls]
        for stall in new:
            log.error("wedged: %s; watchdog pings stop, so systemd restarts syncd (WatchdogSec=)", stall)
        for stall in over:
            log.warning("%s moves again (it was stuck %s); watchdog pings resume", stall.stage, stall.doing)
        return not stalls
