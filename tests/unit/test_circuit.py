"""syncd.circuit: the per-destination circuit's contract, with an injected clock."""

from __future__ import annotations

from typing import Any

import pytest

from syncd.circuit import (
    DOWN,
    FLAKY_GRACE,
    GO,
    HARD_STREAK,
    OPEN_QUIET,
    RATE_LIMITED,
    REFUSED,
    THRESHOLD,
    UP,
    Circuit,
    CircuitState,
    is_outage,
)
from syncd.errors import ExpiredError, FatalError, PermanentError, RetryableError
from tests.conftest import FakeClock

REFUSED_CONN = "RetryableError: lilt: initiate: ConnectError: [Errno 111] Connection refused"


def make(clock: FakeClock, **kw: Any) -> Circuit:
    """A circuit made OPEN_QUIET ago (before that, failures in a row do not open it)."""
    c = Circuit("d", base=kw.pop("base", 1.0), cap=kw.pop("cap", 10.0), clock=clock, **kw)
    clock.advance(OPEN_QUIET)
    return c


def open_it(c: Circuit, reason: str = REFUSED_CONN) -> None:
    for _ in range(THRESHOLD):
        c.failed(reason)
    assert c.snapshot().state == DOWN


def test_what_is_an_outage() -> None:
    assert is_outage(RetryableError("ConnectError", transport=True))
    assert is_outage(RetryableError("HTTP 503", status=503))
    assert is_outage(RetryableError("HTTP 500", status=500))
    assert not is_outage(RetryableError("HTTP 408", status=408))
    assert not is_outage(RetryableError("HTTP 429", status=429))
    assert not is_outage(RetryableError("the answer is not JSON"))  # an answer, not an outage
    assert not is_outage(ExpiredError("expired", status=403))
    assert not is_outage(PermanentError("HTTP 400", status=400))
    assert not is_outage(FatalError("HTTP 401", status=401))
    assert not is_outage(OSError("read error"))


def test_closed_admits_everyone_and_opens_after_threshold_failures_in_a_row(clock: FakeClock) -> None:
    c = make(clock)
    assert c.admit() == GO and c.wait() is None
    assert c.snapshot() == CircuitState()
    for n in range(1, THRESHOLD):
        verdict = c.failed(REFUSED_CONN)
        assert not verdict.open and verdict.failures == n and not verdict.charge
        assert c.admit() == GO
    c.succeeded()  # a success in between: the streak starts again
    for _ in range(THRESHOLD):  # ... and seconds since it must pass too (a flaky service)
        assert not c.failed(REFUSED_CONN).open
    clock.advance(OPEN_QUIET)
    verdict = c.failed(REFUSED_CONN)
    assert verdict.open and not verdict.charge and verdict.retry_at == clock() + 1.0
    state = c.snapshot()
    assert (state.state, state.since, state.reason, state.up) == (DOWN, clock(), REFUSED_CONN, False)
    assert state.next_probe_at == clock() + 1.0
    assert state.to_json()["state"] == "down" and state.to_json()["up"] is False


def test_one_probe_per_step_and_the_step_doubles_up_to_the_cap(clock: FakeClock) -> None:
    c = make(clock, base=1.0, cap=5.0)
    open_it(c)
    since = clock()
    steps = []
    for _ in range(6):
        assert c.admit() is None  # nobody before the step is over
        wait = c.wait()
        assert wait is not None and wait > 0
        steps.append(wait)
        clock.advance(wait)
        token = c.admit()
        assert token is not None and token > 0  # the probe
        assert c.admit() is None and c.wait() is None  # only one, and nothing to wait for
        assert c.snapshot().probing
        verdict = c.failed("HTTP 503", probe=token)
        assert verdict.open and not verdict.charge
    assert steps == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    state = c.snapshot()
    assert state.since == since and state.reason == "HTTP 503"  # since: when it went down
    assert state.failures == THRESHOLD + 6


def test_retry_after_longer_than_the_step_is_waited_up_to_the_cap(clock: FakeClock) -> None:
    c = make(clock, base=1.0, cap=30.0)
    for _ in range(THRESHOLD):
        verdict = c.failed("HTTP 503", retry_after=12.0)
    assert verdict.retry_at == clock() + 12.0
    clock.advance(12.0)
    token = c.admit()
    assert token
    assert c.failed("HTTP 503", retry_after=999.0, probe=token).retry_at == clock() + 30.0


def test_a_successful_probe_closes_it(clock: FakeClock) -> None:
    c = make(clock)
    open_it(c)
    clock.advance(1.0)
    token = c.admit()
    assert token
    assert c.succeeded() is True
    assert c.snapshot() == CircuitState() and c.admit() == GO
    assert c.succeeded() is False  # already closed
    clock.advance(OPEN_QUIET)
    open_it(c)  # and it starts again from the base step
    assert c.wait() == 1.0


def test_a_late_success_from_an_upload_in_flight_closes_it(clock: FakeClock) -> None:
    c = make(clock)
    open_it(c)
    assert c.succeeded() is True and c.admit() == GO


def test_failures_of_uploads_in_flight_do_not_move_the_step(clock: FakeClock) -> None:
    c = make(clock)
    open_it(c)
    until = c.snapshot().next_probe_at
    clock.advance(0.5)
    verdict = c.failed("reset")  # an upload that was in flight when it opened
    assert verdict.open and not verdict.charge and verdict.retry_at == until
    clock.advance(0.5)
    token = c.admit()
    assert token
    c.failed("reset", probe=token + 100)  # not the probe's token: ignored as a probe
    assert c.snapshot().probing and c.admit() is None


def test_release_probe_lets_the_next_caller_probe(clock: FakeClock) -> None:
    c = make(clock)
    open_it(c)
    clock.advance(1.0)
    first = c.admit()
    assert first and c.admit() is None
    c.release_probe(first + 1)  # a stale token changes nothing
    assert c.admit() is None
    c.release_probe(first)
    second = c.admit()
    assert second and second != first
    assert c.snapshot().state == DOWN  # no verdict: still down, same step
    c.failed("again", probe=second)
    assert c.wait() == 2.0
    c.release_probe(second)  # after a verdict: a no-op


def test_only_failures_that_belong_to_the_file_are_charged(clock: FakeClock) -> None:
    c = make(clock)
    # A file's first outage failure is never charged.
    first = c.failed("HTTP 500", since=None)
    assert not first.charge
    failed_at = clock()
    clock.advance(1)
    # No success since its previous failure: the service may be what fails.
    assert not c.failed("HTTP 500", since=failed_at).charge
    works(c)  # other files get through...
    clock.advance(1)
    # ...while this one fails again: it is about the file.
    assert c.failed("HTTP 500", since=failed_at).charge
    # The first failure after an outage ended is not charged either (the outage may
    # have been what failed it: a connection that died with the old server).
    clock.advance(OPEN_QUIET)
    c.failed("x")
    c.failed("x")
    assert c.failed("x").open
    clock.advance(1)
    assert c.succeeded()
    clock.advance(1)
    assert not c.failed("HTTP 500", since=failed_at).charge
    failed_at = clock()
    clock.advance(1)
    works(c)
    clock.advance(1)
    assert c.failed("HTTP 500", since=failed_at).charge
    # A failure that opens the circuit, and every failure while open, is never charged.
    clock.advance(OPEN_QUIET)
    c.failed("x")  # two in a row
    opening = c.failed("HTTP 500", since=failed_at)  # three: it opens
    assert opening.open and not opening.charge
    assert not c.failed("HTTP 500", since=failed_at).charge


def works(c: Circuit, n: int = 16) -> None:
    """Other files get through: ``n`` successes."""
    for _ in range(n):
        c.succeeded()


def test_a_service_that_served_nothing_yet_opens_at_three(clock: FakeClock) -> None:
    """Just started, or reloaded: no evidence the service works, so a dead one is not
    sent hundreds of requests a second for OPEN_QUIET (1,666 were, at start)."""
    c = Circuit("d", base=1.0, cap=10.0, clock=clock)
    for _ in range(THRESHOLD - 1):
        assert not c.failed(REFUSED_CONN).open
    assert c.failed(REFUSED_CONN).open
    clock.advance(1.0)
    assert c.admit() and c.succeeded()
    c.reset()  # a reload changed the destination: its past successes say nothing
    for _ in range(THRESHOLD - 1):
        assert not c.failed(REFUSED_CONN).open
    assert c.failed(REFUSED_CONN).open


def test_a_service_that_went_down_just_after_a_success_opens_at_the_hard_streak(clock: FakeClock) -> None:
    """Dead right after it served a file: twenty failures in a row open it at once (a
    flaky service hardly ever fails twenty times in a row), not a few thousand in 5 s."""
    c = make(clock)
    c.succeeded()
    for n in range(1, HARD_STREAK):
        clock.advance(0.001)
        assert not c.failed(REFUSED_CONN).open, n
    assert c.failed(REFUSED_CONN).open


def test_a_clock_stepped_back_past_the_last_success_does_not_hold_it_closed(clock: FakeClock) -> None:
    c = make(clock)
    c.succeeded()
    clock.advance(-3600.0)
    for _ in range(THRESHOLD - 1):
        c.failed(REFUSED_CONN)
    assert c.failed(REFUSED_CONN).open


def test_a_flaky_service_is_not_down_and_charges_no_file(clock: FakeClock) -> None:
    """Half of the requests fail, the others work: three failures in a row are
    frequent, yet the service is not down (it served a file moments ago), and a file
    that keeps failing there is unlucky, not broken."""
    c = make(clock)
    failed_at: float | None = None
    for i in range(200):
        clock.advance(0.1)
        if i % 5 in (0, 2):  # 40 % succeed, runs of three failures
            c.succeeded()
            continue
        verdict = c.failed("HTTP 503", since=failed_at, file=i % 7)
        assert not verdict.open and not verdict.charge, i
        failed_at = clock()
    assert c.admit() == GO
    # Nothing gets through for OPEN_QUIET: now it is an outage.
    clock.advance(OPEN_QUIET)
    assert c.failed("HTTP 503").open


def test_a_file_the_flaky_service_always_fails_is_charged_after_its_grace(clock: FakeClock) -> None:
    """Ten files the server always fails, among others it serves: each failure of one
    of them counts against the healthy share of the rest, so none would ever be charged
    (1,111 free retries in 90 s). After FLAKY_GRACE excused failures, each is."""
    c = make(clock)
    failed_at: dict[int, float] = {}
    excused: dict[int, int] = {}
    charged: dict[int, int] = {}
    for i in range(300):
        clock.advance(0.1)
        if i % 3 == 0:
            c.succeeded()
            continue
        poison = i % 10
        verdict = c.failed(
            "HTTP 500", since=failed_at.get(poison), file=poison, excused=excused.get(poison, 0)
        )
        assert not verdict.open
        excused[poison] = excused.get(poison, 0) + verdict.excused
        charged[poison] = charged.get(poison, 0) + verdict.charge
        failed_at[poison] = clock()
    assert all(n == FLAKY_GRACE for n in excused.values()), excused
    assert all(n >= 8 for n in charged.values()), charged  # max_attempts' worth, each


def test_refused_opens_for_the_refuse_pause_then_probes(clock: FakeClock) -> None:
    c = make(clock, refuse_pause=60.0)
    c.refused("FatalError: HTTP 401")
    state = c.snapshot()
    assert (state.state, state.up, state.since, state.next_probe_at) == (
        REFUSED,
        False,
        clock(),
        clock() + 60.0,
    )
    assert c.admit() is None
    clock.advance(60)
    token = c.admit()
    assert token
    c.refused("FatalError: HTTP 401", probe=token)  # still refused: another pause
    assert c.snapshot().since == clock() - 60 and c.wait() == 60.0
    clock.advance(60)
    token = c.admit()
    assert token
    c.succeeded()
    assert c.snapshot().state == UP


def test_a_probe_without_any_answer_turns_refused_into_down(clock: FakeClock) -> None:
    c = make(clock, refuse_pause=60.0)
    c.refused("HTTP 401")
    clock.advance(60)
    token = c.admit()
    assert token
    verdict = c.failed(REFUSED_CONN, probe=token)
    assert c.snapshot().state == DOWN and verdict.retry_at == clock() + 1.0


def test_rate_limited_holds_everyone_then_lets_everyone_go_without_a_probe(clock: FakeClock) -> None:
    c = make(clock, base=1.0, cap=10.0)
    until = c.rate_limited(7.0, "rate limited (HTTP 429)")
    assert until == clock() + 7.0
    state = c.snapshot()
    assert state.state == RATE_LIMITED and state.up  # throttled, not down
    assert c.admit() is None
    assert c.rate_limited(2.0, "rate limited (HTTP 429)") == until  # never shortened
    clock.advance(7.0)
    assert c.snapshot().state == UP  # the hold is over
    assert c.admit() == GO and c.admit() == GO
    c.succeeded()  # an upload got through
    # Without a Retry-After, 429s in a row wait longer and longer, up to the cap.
    waits = []
    for _ in range(6):
        waits.append(c.rate_limited(None, "429") - clock())
        clock.advance(waits[-1])
        assert c.admit() == GO
    assert waits == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    c.succeeded()
    assert c.rate_limited(None, "429") - clock() == 1.0


def test_retry_after_zero_on_every_answer_still_backs_off(clock: FakeClock) -> None:
    """A server answering every request 429 with "Retry-After: 0" made syncd send 6,933
    requests in ten seconds (a file's 429 spends no attempt): the named wait is kept, but
    never shorter than the growing step."""
    c = make(clock, base=1.0, cap=10.0)
    waits = []
    for _ in range(5):
        waits.append(c.rate_limited(0.0, "429") - clock())
        clock.advance(waits[-1])
        assert c.admit() == GO
    assert waits == [1.0, 2.0, 4.0, 8.0, 10.0]
    c.succeeded()
    assert c.rate_limited(7.0, "429") - clock() == 7.0  # a longer named wait: as named


def test_429s_of_uploads_in_flight_at_once_are_one_step_and_the_step_never_overflows(
    clock: FakeClock,
) -> None:
    """Four uploads answered 429 at the same moment grew the hold four steps (16 s where
    the server asked for 1 s); a 429 storm of 1,025 answers overflowed the float."""
    c = make(clock, base=1.0, cap=600.0)
    holds = [c.rate_limited(1.0, "429") - clock() for _ in range(4)]
    assert holds == [1.0, 1.0, 1.0, 1.0]
    for _ in range(1100):  # every one after its hold ended: a step each, capped, no error
        clock.advance(c.rate_limited(0.0, "429") - clock())
    assert c.rate_limited(0.0, "429") - clock() == 600.0


def test_a_documented_wait_is_kept_above_the_cap(clock: FakeClock) -> None:
    """retry_max_seconds caps the waits servers name; a wait the service documents
    (min_wait: Lilt's 60 s) is held whatever the cap."""
    c = make(clock, base=1.0, cap=5.0)
    assert c.rate_limited(60.0, "429", min_wait=60.0) == clock() + 60.0
    clock.advance(60.0)
    assert c.admit() == GO
    assert c.rate_limited(60.0, "429") == clock() + 5.0  # a server's own word: capped


def test_a_late_429_does_not_close_an_open_circuit(clock: FakeClock) -> None:
    c = make(clock)
    open_it(c)
    c.rate_limited(1.0, "429")
    assert c.snapshot().state == DOWN


def test_reset_forgets_everything(clock: FakeClock) -> None:
    c = make(clock)
    open_it(c)
    c.reset()
    assert c.snapshot() == CircuitState() and c.admit() == GO


@pytest.mark.parametrize("n", [1, 2])
def test_threshold_is_configurable(clock: FakeClock, n: int) -> None:
    c = make(clock, cap=2.0, threshold=n)
    for _ in range(n):
        c.failed("x")
    assert c.snapshot().state == DOWN
