"""Bandwidth limits per destination, like rclone's ``--bwlimit``.

Two keys that every ``[destinations.NAME]`` table takes, whatever its type
(:class:`BandwidthOptions`, parsed by :func:`parse` for :mod:`syncd.config`):

``bwlimit``
    Bytes per second for all uploads to this destination together
    (``10485760`` or ``"10 MiB"``); ``0``, the default, is no limit.
``bwlimit_schedule``
    A timetable instead of one rate, in local time, rclone-like:
    ``["08:00,512 KiB", "12:00,10 MiB", "18:00,off"]``. From each time of day
    on, that rate applies until the next entry; before the first entry of the
    day the last one (of the day before) applies. ``off`` (or ``0``) is no
    limit. The entries need not be sorted; two with the same time are an
    error, and so is setting both keys.

How it is enforced: each destination has one :class:`TokenBucket` shared by
every worker uploading to it and every part in flight (:class:`Bandwidth`,
owned by the uploader). A :class:`Throttle` is handed to each upload's
Source; every block read from the file for sending is paid for before it is
handed to the HTTP client, so bytes leave at most at the rate, averaged over
a second (a bucket holds at most one second's worth: after an idle spell a
burst of up to one second of data goes at once). While a limit is set,
reads are cut into blocks of about an eighth of a second's worth (16 KiB to
1 MiB), so a slow limit sends a steady trickle rather than a long pause and
then a burst that a server might time out on.

A reload (or a schedule switch) changes the rate at once, for uploads in
flight too; waits already begun end at their time, except that a switch to
no limit ends them at once. A reader waiting for its turn gives up as soon
as the upload is cancelled (syncd stopping).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from syncd.destinations.base import READ_BLOCK
from syncd.errors import Problem

# syncd._options (parsing, sizes) is imported where it is used: the config's dataclasses
# import this module, and an upload helper process unpickles a config, parsing none

log = logging.getLogger(__name__)

BURST_SECONDS = 1.0  # a bucket holds at most this many seconds' worth of bytes
MIN_BLOCK = 16 * 1024  # smallest read while a limit is set
BLOCKS_PER_SECOND = 8  # reads of about rate / 8 bytes while a limit is set
WAIT_SLICE = 0.1  # a waiting reader looks at the stop flag and the rate this often
OFF_WORDS = ("off", "0", "none", "unlimited")
_ENTRY = re.compile(r"\s*(\d{1,2}):(\d{2})\s*,\s*(.*?)\s*\Z")


@dataclass(frozen=True)
class BandwidthOptions:
    """The bandwidth keys of every ``[destinations.NAME]`` table (see the module docstring)."""

    bwlimit: int = field(
        default=0,
        metadata={
            "doc": "Bytes per second for all uploads to this destination together; 0 = no limit.",
            "unit": "bytes",
            "min": 0,
        },
    )
    bwlimit_schedule: tuple[str, ...] = field(
        default=(),
        metadata={
            "doc": 'Instead of bwlimit, a timetable in local time: ["08:00,512 KiB", '
            '"18:00,off"]; each rate applies from its time until the next entry.',
            "nonempty": True,
            "no_control": True,
        },
    )


KEYS = tuple(f.name for f in fields(BandwidthOptions))
"""The config keys :func:`parse` takes out of a destination table."""


@dataclass(frozen=True)
class Limit:
    """A destination's limit: one ``rate`` (bytes/s, 0 = none), or a ``schedule``."""

    rate: int = 0
    schedule: tuple[tuple[int, int], ...] = ()  # (minute of the day, bytes/s), sorted

    @property
    def active(self) -> bool:
        """Whether it ever limits anything."""
        return bool(self.rate) or any(rate for _, rate in self.schedule)

    def rate_at(self, minute: int) -> int:
        """Bytes/s at ``minute`` of the day (0-1439); 0 = no limit."""
        if not self.schedule:
            return self.rate
        current = self.schedule[-1][1]  # before the first switch: the day before's last
        for start, rate in self.schedule:
            if start > minute:
                break
            current = rate
        return current

    def describe(self) -> str:
        """``10 MiB/s``, ``08:00 512 KiB/s, 18:00 off``, or ``off``."""
        if self.schedule:
            return ", ".join(f"{m // 60:02d}:{m % 60:02d} {rate_text(r)}" for m, r in self.schedule)
        return rate_text(self.rate)


def rate_text(rate: int) -> str:
    """``512 KiB/s``, ``1000 bytes/s``, or ``off``."""
    from syncd._options import format_size

    return f"{format_size(rate)}/s" if rate else "off"


def parse_rate(text: str) -> int:
    """Bytes/s in ``"512 KiB"``, ``"10MB"``, ``"1000"``, or 0 for ``"off"``; ValueError."""
    from syncd._options import parse_size

    if text.strip().lower() in OFF_WORDS:
        return 0
    return parse_size(text)


def parse_entry(text: str) -> tuple[int, int]:
    """``"08:00,512 KiB"`` -> (480, 524288); ValueError with the reason."""
    match = _ENTRY.match(text)
    if not match:
        raise ValueError('expected "HH:MM,RATE" like "08:00,512 KiB" or "18:00,off"')
    hours, minutes, rate = int(match[1]), int(match[2]), match[3]
    if hours > 23 or minutes > 59:
        raise ValueError(f"{match[1]}:{match[2]} is not a time of day (00:00 to 23:59)")
    try:
        return hours * 60 + minutes, parse_rate(rate)
    except ValueError as exc:
        raise ValueError(f"rate {rate!r}: {exc}") from None


def parse(table: Mapping[str, Any], *, prefix: str, base_dir: Path, problems: list[Problem]) -> Limit | None:
    """The :class:`Limit` of one destination table (only its :data:`KEYS` are read).

    Every problem is appended to ``problems`` with its dotted key and value
    (``destinations.x.bwlimit_schedule[1]``); returns None when there was one.
    """
    from syncd._options import parse_options, show

    own = {k: v for k, v in table.items() if k in KEYS}
    errors = len(problems)
    options: BandwidthOptions | None = parse_options(
        BandwidthOptions, own, prefix=prefix, base_dir=base_dir, problems=problems
    )
    if options is None:
        return None
    schedule: dict[int, int] = {}
    for i, entry in enumerate(options.bwlimit_schedule):
        key = f"{prefix}.bwlimit_schedule[{i}]"
        try:
            minute, rate = parse_entry(entry)
        except ValueError as exc:
            problems.append(Problem(key, f"{exc}, got {show(entry)}"))
            continue
        if minute in schedule:
            problems.append(
                Problem(
                    key, f"{entry.split(',')[0].strip()} appears twice in the schedule, got {show(entry)}"
                )
            )
            continue
        schedule[minute] = rate
    if schedule and options.bwlimit:
        problems.append(
            Problem(
                f"{prefix}.bwlimit",
                (
                    f"set either bwlimit or bwlimit_schedule, not both (bwlimit_schedule decides the "
                    f"rate at every time of day), got {show(own.get('bwlimit'))}"
                ),
            )
        )
    if len(problems) > errors:
        return None
    return Limit(options.bwlimit, tuple(sorted(schedule.items())))


class TokenBucket:
    """Bytes allowed at ``rate`` per second, at most ``burst`` seconds' worth saved up.

    :meth:`reserve` takes ``n`` bytes at once, into debt if need be, and
    returns the time (of ``clock``) at which the caller may send them: callers
    from many threads are served in the order they asked, and together never
    faster than the rate. Thread-safe.
    """

    def __init__(
        self, rate: float, *, burst: float = BURST_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._burst = burst
        self._rate = float(rate)
        self._last = clock()
        self._tokens = self._capacity()

    @property
    def rate(self) -> float:
        return self._rate

    def _capacity(self) -> float:
        return self._rate * self._burst

    def _refill(self, now: float) -> None:
        if self._rate:
            self._tokens = min(self._capacity(), self._tokens + (now - self._last) * self._rate)
        self._last = now

    def set_rate(self, rate: float) -> None:
        """A new rate from now on (0 = unlimited: debts are forgiven). A debt (bytes sent
        ahead at the old rate) takes as long to clear at the new rate as it would have at
        the old one: charged at a much lower rate it held every upload back for minutes."""
        with self._lock:
            if rate == self._rate:
                return
            now = self._clock()
            self._refill(now)
            old, self._rate = self._rate, float(rate)
            if self._tokens < 0 and old and rate:
                self._tokens *= rate / old
            self._tokens = 0.0 if not rate else min(self._tokens, self._capacity())

    def reserve(self, n: int) -> float:
        """Take ``n`` bytes; the ``clock`` time at which they may go (now or later)."""
        with self._lock:
            now = self._clock()
            if not self._rate:
                self._last = now
                return now
            self._refill(now)
            self._tokens -= n
            if self._tokens >= 0:
                return now
            return now + -self._tokens / self._rate


class _Limiter:
    """One destination's limit and bucket (shared by every upload to it)."""

    def __init__(
        self, name: str, limit: Limit, *, clock: Callable[[], float], wall: Callable[[], float]
    ) -> None:
        self.name = name
        self.limit = limit
        self._wall = wall
        self._lock = threading.Lock()
        self.bucket = TokenBucket(self._rate_now(), clock=clock)

    def _rate_now(self) -> int:
        if not self.limit.schedule:
            return self.limit.rate
        t = time.localtime(self._wall())
        return self.limit.rate_at(t.tm_hour * 60 + t.tm_min)

    def rate(self) -> int:
        """The rate in force now (a schedule switch is applied and logged here)."""
        rate = self._rate_now()
        if rate != self.bucket.rate:
            with self._lock:
                if rate != self.bucket.rate:
                    self.bucket.set_rate(rate)
                    if self.limit.schedule:
                        log.info(
                            "destination %r: bandwidth limit now %s (schedule)", self.name, rate_text(rate)
                        )
        return rate

    def set_limit(self, limit: Limit) -> None:
        with self._lock:
            self.limit = limit
        self.rate()


class Throttle:
    """What one upload's Source calls with each block before sending it (see the module
    docstring); ``stop`` set ends a wait at once (the upload is being cancelled)."""

    def __init__(
        self,
        limiter: _Limiter,
        stop: threading.Event | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limiter = limiter
        self._stop = stop or threading.Event()
        self._clock = clock

    @property
    def block(self) -> int:
        """How many bytes to read at a time now (smaller while a limit is set)."""
        rate = self._limiter.rate()
        if not rate:
            return READ_BLOCK
        return max(MIN_BLOCK, min(READ_BLOCK, rate // BLOCKS_PER_SECOND))

    def __call__(self, n: int) -> None:
        """Wait until ``n`` more bytes may be sent to this destination."""
        limiter = self._limiter
        if not limiter.limit.active or not limiter.rate():
            return
        until = limiter.bucket.reserve(n)
        while (left := until - self._clock()) > 0:
            if self._stop.wait(min(left, WAIT_SLICE)) or not limiter.rate():
                return


class Bandwidth:
    """The limiters of every destination (the uploader has one; the daemon configures it)."""

    def __init__(
        self, *, clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time
    ) -> None:
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        self._limiters: dict[str, _Limiter] = {}

    def configure(self, limits: Mapping[str, Limit]) -> None:
        """The limits of the configured destinations (at start and at every reload).

        A destination keeps its bucket across reloads, so a changed limit applies
        at once to its uploads in flight."""
        with self._lock:
            for name in set(self._limiters) - set(limits):
                del self._limiters[name]
            for name, limit in limits.items():
                limiter = self._limiters.get(name)
                if limiter is None:
                    self._limiters[name] = _Limiter(name, limit, clock=self._clock, wall=self._wall)
                elif limiter.limit != limit:
                    limiter.set_limit(limit)
                else:
                    continue
                if limit.active:
                    log.info("destination %r: bandwidth limit %s", name, limit.describe())
                elif limiter is not None:
                    log.info("destination %r: no bandwidth limit", name)

    def limit(self, name: str) -> Limit:
        limiter = self._limiters.get(name)
        return limiter.limit if limiter is not None else Limit()

    def rate(self, name: str) -> int:
        """The rate in force for ``name`` now, bytes/s (0 = no limit)."""
        limiter = self._limiters.get(name)
        return limiter.rate() if limiter is not None else 0

    def throttle(self, name: str, stop: threading.Event | None = None) -> Throttle | None:
        """The throttle for one upload to ``name``; None when it is not configured here."""
        limiter = self._limiters.get(name)
        return None if limiter is None else Throttle(limiter, stop, clock=self._clock)


__all__ = [
    "KEYS",
    "Bandwidth",
    "BandwidthOptions",
    "Limit",
    "Throttle",
    "TokenBucket",
    "parse",
    "parse_entry",
    "parse_rate",
    "rate_text",
]
