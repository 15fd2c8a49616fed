"""Steps of the system clock, seen from inside a running syncd.

syncd writes wall-clock times (``time.time``) in its ledger: they must mean
the same after a restart, and ``syncd status`` shows them. The wall clock can
be stepped (NTP correcting a host that booted with its clock wrong, an
operator's ``date -s``, a VM restored from a snapshot); the boot-time clock
(``CLOCK_BOOTTIME``) cannot, and it runs on through a suspend as the wall
clock does. :class:`ClockSteps` compares the two: when the wall clock moved
:data:`STEP` seconds or more further (or less far) than the boot-time clock
since the last look, it was stepped by the difference. A slewing NTP (at
most half a millisecond per second) never adds up to a step, since each look
starts from the last.

The settle stage asks at each tick, and moves the quiet times of settling
files by the step (:meth:`syncd.ledger.schedule.Schedule.shift_settling`), so
that a step forward cannot cut a quiet time short (a file still being written
would be uploaded half-written) and a step back cannot stretch it. Other
waits need no look at the clock: see :mod:`syncd.ledger.schedule`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

STEP = 1.0  # seconds; a difference smaller than this is not a step
CLEAN_READ = 0.1  # seconds: a reading interrupted for longer than this is not used


def boottime() -> float:
    """Seconds since boot, suspend included (``CLOCK_BOOTTIME``; the monotonic clock elsewhere)."""
    try:
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    except (AttributeError, OSError):
        return time.monotonic()


class ClockSteps:
    """Call :meth:`check` now and then: it returns the step since the last call (seconds,
    negative for a step back), or 0.0."""

    def __init__(self, wall: Callable[[], float] = time.time, steady: Callable[[], float] = boottime) -> None:
        self._wall = wall
        self._steady = steady
        self._offset = self._read()

    def _read(self) -> float | None:
        """Wall clock minus boot-time clock, or None if the thread was held up between the
        readings for so long that they do not belong together."""
        before = self._steady()
        wall = self._wall()
        after = self._steady()
        if after - before > CLEAN_READ:
            return None
        return wall - (before + after) / 2

    def check(self) -> float:
        offset = self._read()
        if offset is None:
            return 0.0
        last, self._offset = self._offset, offset
        if last is None:
            return 0.0
        step = offset - last
        return step if abs(step) >= STEP else 0.0
