"""Per-destination circuit: a service outage is not a file failure.

The uploader keeps one :class:`Circuit` per destination, asks it before
every upload (:meth:`Circuit.admit`) and tells it how each attempt ended.
This docstring is the contract; ``tests/unit/test_circuit.py`` checks it with an
injected clock.

What feeds it (the uploader classifies every attempt, see :func:`is_outage`):

* :meth:`~Circuit.succeeded`: the service answered in a way that shows it
  works: an upload confirmed, or an answer about one file (a 4xx, an
  expired URL, a malformed body).
* :meth:`~Circuit.failed`: an *outage* failure: a transport error (no HTTP
  answer at all: connection refused or reset, DNS, timeouts) or a 5xx.
* :meth:`~Circuit.refused`: no file can succeed until an operator acts
  (401/403, a rejected TLS certificate).
* :meth:`~Circuit.rate_limited`: a 429; the account, not the file, must
  slow down.

States (``CircuitState.state``):

``up``            closed: uploads flow. Outage failures are counted; after
                  ``threshold`` (3) of them in a row, across files, with no
                  success in between, the circuit opens ("down"), unless the
                  service served a file less than :data:`OPEN_QUIET` (5 s)
                  ago: then only at :data:`HARD_STREAK` (20) in a row. One
                  reset or timeout is routine on a long transfer; three in a
                  row with nothing getting through is an outage. A *flaky*
                  service, one that fails some requests and serves the rest,
                  is not down: three failures in a row are frequent at a 50 %
                  failure rate, twenty come once in a million. One that has
                  served nothing yet (just started, or changed by a reload)
                  opens at three, as does one whose last success the clock
                  was stepped back past. A hanging one opens at the third
                  timeout.
``down``          open: no upload starts except the *probe*: once per step,
                  :meth:`~Circuit.admit` lets exactly one caller through (a
                  real upload attempt, or ``Destination.probe()`` when nothing
                  waits). The step starts at ``base`` (retry_base_seconds) and
                  doubles after every failed probe up to ``cap``
                  (retry_max_seconds); a server's Retry-After longer than the
                  step is waited instead. A success (the probe's, or a late
                  one from an upload that was already in flight) closes the
                  circuit at once and everything queued flows again.
``refused``       open after a refusal for ``refuse_pause`` (60 s) per step,
                  then probed like ``down``.
``rate_limited``  held until the server's Retry-After, at most ``cap`` (or,
                  without one, a step that grows with every 429 in a row from
                  ``base`` up to ``cap``), and never less than a wait the
                  service documents (``min_wait``, e.g. Lilt's 60 s, which no
                  ``cap`` shortens); then every worker goes again, without a
                  probe.

Attempts (``max_attempts`` counts what belongs to the file).
:meth:`~Circuit.failed` returns a :class:`Verdict`; ``charge`` is True only
when the circuit is closed and stays closed, and the service confirmed other
work after the file's previous outage failure (``since``), which itself came
after the circuit last closed: the service demonstrably works while this one
file keeps failing (a server that chokes on it). Unless :data:`HEALTHY_SHARE`
(80 %) of the last :data:`WINDOW` (20) outcomes of other files (``file``)
were successes (a flaky service: chance, not the file), it is *excused*
instead, the first :data:`FLAKY_GRACE` (4) times for a file (``excused``).
A file's first outage failure, its first after an outage ended, every
failure that opens the circuit and every failure while it is open (an
upload in flight when it opened, a failed probe) are given back. Refusals
and 429s are never charged.

Thread-safe (one lock). ``clock`` is the wall clock, so ``since`` and
``next_probe_at`` can be shown as times of day; a step back does not hold an
open circuit for its length: a deadline further ahead than when it was set
keeps its own length, counted from the first look after the step.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from syncd.errors import ExpiredError, RetryableError

UP = "up"
DOWN = "down"
REFUSED = "refused"
RATE_LIMITED = "rate_limited"
CIRCUIT_STATES = (UP, DOWN, REFUSED, RATE_LIMITED)

THRESHOLD = 3  # outage failures in a row (across files, no success between) that open it
OPEN_QUIET = 5.0  # ... unless a success came this recently (a flaky service is not down)
HARD_STREAK = 20  # ... then at this many in a row
WINDOW = 20  # the last outcomes (success, outage failure) the healthy share is taken over
HEALTHY_SHARE = 0.8  # successes among them for a file's own failure to be charged to it
FLAKY_GRACE = 4  # ... or failures of one file excused as the service's flakiness before that
CLOCK_SLACK = 1.0  # a deadline this little further ahead than set is not a clock step
REFUSE_PAUSE = 60.0  # seconds between probes of a destination that refuses uploads
GO = 0  # admit(): upload normally


def is_outage(exc: BaseException) -> bool:
    """A transport error, a 5xx or a garbled answer (a proxy's or captive portal's page
    where the protocol names JSON): says the service, not the file, is in trouble."""
    if not isinstance(exc, RetryableError) or isinstance(exc, ExpiredError):
        return False
    if exc.garbled:
        return True
    if exc.status is None:
        return exc.transport
    return exc.status >= 500


@dataclass(frozen=True)
class CircuitState:
    """What status lines, ``syncd status`` and the metrics say about a destination."""

    state: str = UP  # up | down | refused | rate_limited
    since: float | None = None  # when it left "up"
    reason: str | None = None  # the failure that opened it, or the latest probe's
    next_probe_at: float | None = None  # when the next probe goes (rate limited: the hold ends)
    failures: int = 0  # outage failures in a row, across files (failed probes included)
    probing: bool = False

    @property
    def up(self) -> bool:
        """Whether the service is believed to work (rate limited counts as up)."""
        return self.state in (UP, RATE_LIMITED)

    def to_json(self) -> dict[str, object]:
        return {
            "state": self.state,
            "up": self.up,
            "since": self.since,
            "reason": self.reason,
            "next_probe_at": self.next_probe_at,
            "failures": self.failures,
        }


@dataclass(frozen=True)
class Verdict:
    """The answer to :meth:`Circuit.failed`."""

    charge: bool  # the failure belongs to the file: it spends one of its attempts
    open: bool  # the circuit is open now: the file waits for it
    retry_at: float | None  # open: when the next probe goes (the file is due then)
    failures: int  # outage failures in a row, for the file's own backoff while closed
    excused: bool = False  # the file's own failure by the rule, excused on a flaky service


class Circuit:
    """The circuit of one destination (see the module docstring for the contract)."""

    def __init__(
        self,
        name: str,
        *,
        base: float,
        cap: float,
        clock: Callable[[], float] = time.time,
        threshold: int = THRESHOLD,
        refuse_pause: float = REFUSE_PAUSE,
    ) -> None:
        self.name = name
        self.base = base
        self.cap = cap
        self.threshold = threshold
        self.refuse_pause = refuse_pause
        self._clock = clock
        self._lock = threading.Lock()
        self._state = UP
        self._since: float | None = None
        self._reason: str | None = None
        self._until = 0.0  # open / rate limited: no upload starts before this
        self._hold = 0.0  # how far ahead _until was when it was set
        self._step = base
        self._failures = 0
        # (a success?, the file's key or None): the last outcomes, for the healthy share
        self._outcomes: deque[tuple[bool, object]] = deque(maxlen=WINDOW)
        self._limited = 0  # 429s in a row
        self._last_success: float | None = None
        self._closed_at: float | None = None  # when it last closed after being open
        self._probe = 0  # token of the probe in flight, 0 = none
        self._tokens = 0

    # asking ---------------------------------------------------------------------------

    def admit(self) -> int | None:
        """May an upload to this destination start now?

        ``None``: no, wait. :data:`GO` (0): yes. A positive number: yes, as
        the probe; report its outcome with that token (``probe=``), or give
        it back with :meth:`release_probe` if it ends without one.
        """
        with self._lock:
            if self._state == UP:
                return GO
            now = self._clock()
            self._bound(now)
            if now < self._until:
                return None
            if self._state == RATE_LIMITED:
                self._close()
                return GO
            if self._probe:
                return None
            self._tokens += 1
            self._probe = self._tokens
            return self._probe

    def release_probe(self, token: int) -> None:
        """The probe ended without a verdict (nothing to upload, the file vanished):
        the next caller may probe at once."""
        with self._lock:
            if token and self._probe == token:
                self._probe = 0

    def wait(self) -> float | None:
        """Seconds until :meth:`admit` may say yes again; None while closed or while a
        probe is in flight (its outcome is reported, nothing to wait for)."""
        with self._lock:
            if self._state == UP or self._probe:
                return None
            now = self._clock()
            self._bound(now)
            return max(0.0, self._until - now)

    def snapshot(self) -> CircuitState:
        with self._lock:
            now = self._clock()
            self._bound(now)
            if self._state == UP or (self._state == RATE_LIMITED and now >= self._until):
                return CircuitState(failures=self._failures)
            return CircuitState(
                self._state, self._since, self._reason, self._until, self._failures, bool(self._probe)
            )

    # telling --------------------------------------------------------------------------

    def succeeded(self) -> bool:
        """The service works. Closes the circuit; True if it was open."""
        with self._lock:
            self._last_success = self._clock()
            self._outcomes.append((True, None))
            self._failures = 0
            self._limited = 0
            if self._state in (DOWN, REFUSED):
                self._close()
                self._closed_at = self._last_success
                return True
            return False

    def failed(
        self,
        reason: str,
        *,
        since: float | None = None,
        retry_after: float | None = None,
        probe: int = GO,
        file: object = None,
        excused: int = 0,
    ) -> Verdict:
        """An outage failure (:func:`is_outage`). ``since``: the time of this file's
        previous outage failure, None if it has none; ``probe``: the token
        from :meth:`admit` if this attempt was the probe; ``file``: a key of the file
        (its own failures do not count against the service's healthy share);
        ``excused``: how many of its failures were excused already."""
        with self._lock:
            now = self._clock()
            is_probe = bool(probe) and probe == self._probe
            if self._state in (UP, RATE_LIMITED):
                self._failures += 1
                others = [ok for ok, key in self._outcomes if key is None or key != file]
                self._outcomes.append((False, file))
                served = self._last_success
                working = (
                    served is not None and 0.0 <= now - served < OPEN_QUIET and self._failures < HARD_STREAK
                )
                if self._failures < self.threshold or working:
                    owned = (
                        since is not None
                        and served is not None
                        and served > since
                        and (self._closed_at is None or since > self._closed_at)
                    )
                    healthy = sum(others) >= HEALTHY_SHARE * len(others)
                    charge = owned and (healthy or excused >= FLAKY_GRACE)
                    return Verdict(charge, False, None, self._failures, owned and not charge)
                self._open(DOWN, reason, now, self.base, retry_after)
            elif is_probe:
                self._probe = 0
                self._reason = reason
                self._failures += 1
                if self._state == DOWN:
                    step = min(self._step * 2, self.cap)
                else:  # refused, rate limited: now it does not answer at all
                    self._state = DOWN
                    step = self.base
                self._step = step
                self._set_until(now + max(step, min(retry_after or 0.0, self.cap)), now)
            # else: an upload that was in flight when the circuit opened: it waits
            return Verdict(False, True, self._until, self._failures)

    def refused(self, reason: str, *, probe: int = GO) -> None:
        """Every file would fail alike (credentials, certificate): open for ``refuse_pause``."""
        with self._lock:
            now = self._clock()
            if self._state != REFUSED or (probe and probe == self._probe):
                if self._state not in (DOWN, REFUSED):
                    self._since = now
                self._state = REFUSED
                self._reason = reason
                self._set_until(now + self.refuse_pause, now)
                self._step = self.refuse_pause
            if probe and probe == self._probe:
                self._probe = 0

    def rate_limited(
        self, retry_after: float | None, reason: str, *, probe: int = GO, min_wait: float = 0.0
    ) -> float:
        """A 429: no upload starts until the wait is over. Returns when it is over.

        ``min_wait`` (a wait the service documents) is kept even above ``cap``."""
        with self._lock:
            now = self._clock()
            is_probe = bool(probe) and probe == self._probe
            self._bound(now)
            if self._state in (DOWN, REFUSED) and not is_probe:
                return self._until  # a late answer from before it opened
            if self._state != RATE_LIMITED or now >= self._until:
                self._limited += 1  # a 429 after the last hold ended: the next step
            # (several uploads in flight answered 429 at once are one step, not four)
            step = min(self.base * 2 ** min(self._limited - 1, 60), self.cap)  # no float overflow
            # A wait the server names is kept, but never shorter than the growing step:
            # "Retry-After: 0" on every answer made syncd send thousands of requests a second.
            wait = min(step if retry_after is None else max(retry_after, step), self.cap)
            until = now + max(wait, min_wait)
            if self._state != RATE_LIMITED:
                self._since = now
                self._state = RATE_LIMITED
                self._set_until(until, now)
            else:
                self._set_until(max(self._until, until), now)
            self._reason = reason
            self._failures = 0
            if is_probe:
                self._probe = 0
            return self._until

    def reset(self) -> None:
        """Forget everything (a reload changed the destination): up, a fresh start."""
        with self._lock:
            self._close()
            self._last_success = self._closed_at = None
            self._limited = 0
            self._outcomes.clear()

    # internals --------------------------------------------------------------------------

    def _open(self, state: str, reason: str, now: float, step: float, retry_after: float | None) -> None:
        self._state = state
        self._since = now
        self._reason = reason
        self._step = step
        self._set_until(now + max(step, min(retry_after or 0.0, self.cap)), now)
        self._probe = 0

    def _set_until(self, until: float, now: float) -> None:
        self._until = until
        self._hold = max(0.0, until - now)

    def _bound(self, now: float) -> None:
        """A deadline further ahead than when it was set was set before the system clock
        was stepped back: it keeps its own length, counted from now, not the step's."""
        if self._until - now > self._hold + CLOCK_SLACK:
            self._until = now + self._hold

    def _close(self) -> None:
        self._state = UP
        self._since = None
        self._reason = None
        self._until = self._hold = 0.0
        self._step = self.base
        self._failures = 0
        self._probe = 0


__all__ = [
    "CIRCUIT_STATES",
    "DOWN",
    "GO",
    "RATE_LIMITED",
    "REFUSED",
    "THRESHOLD",
    "UP",
    "Circuit",
    "CircuitState",
    "Verdict",
    "is_outage",
]
