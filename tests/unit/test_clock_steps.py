"""A stepped system clock: its detection, and what each stage does about it (F22).

Every test here steps an injected wall clock; the end-to-end tests with a real
daemon are in tests/daemon/test_clock_steps.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncd import scanner
from syncd.circuit import DOWN, GO, OPEN_QUIET, RATE_LIMITED, THRESHOLD, Circuit
from syncd.clock_steps import CLEAN_READ, ClockSteps
from syncd.ledger import Ledger, State
from syncd.settle import Settler
from tests.conftest import FakeClock, make_folder

HOUR = 3600.0


@pytest.fixture
def ledger(tmp_path: Path, clock: FakeClock) -> Iterator[Ledger]:
    led = Ledger.open(tmp_path / "state" / "ledger.sqlite3", clock=clock)
    yield led
    led.close()


# -- ClockSteps --------------------------------------------------------------------------


def test_a_step_is_the_wall_clock_moving_apart_from_the_boot_clock() -> None:
    wall, steady = FakeClock(1_800_000_000.0), FakeClock(5000.0)
    steps = ClockSteps(wall, steady)
    wall.advance(10)
    steady.advance(10)
    assert steps.check() == 0.0  # ten seconds went by on both
    wall.advance(-HOUR)
    assert steps.check() == -HOUR
    assert steps.check() == 0.0  # reported once
    wall.advance(86400 + 0.5)
    steady.advance(0.5)
    assert steps.check() == 86400


def test_slewing_never_adds_up_to_a_step() -> None:
    """NTP slews at most 500 ppm: half a millisecond per second, each look from the last."""
    wall, steady = FakeClock(0.0), FakeClock(0.0)
    steps = ClockSteps(wall, steady)
    for _ in range(10_000):
        wall.advance(0.2505)
        steady.advance(0.25)
        assert steps.check() == 0.0


def test_a_reading_held_up_between_the_two_clocks_is_not_taken_for_a_step() -> None:
    wall, steady = FakeClock(0.0), FakeClock(0.0)
    steps = ClockSteps(wall, lambda: steady())

    class Stalling:
        """The boot clock jumps ahead between the two reads, as a thread held up would see."""

        calls = 0

        def __call__(self) -> float:
            self.calls += 1
            if self.calls == 2:
                steady.advance(CLEAN_READ * 50)
                wall.advance(CLEAN_READ * 50)
            return steady()

    stalling = Stalling()
    steps._steady = stalling
    assert steps.check() == 0.0  # not used
    steps._steady = steady
    wall.advance(-HOUR)
    assert steps.check() == -HOUR  # the next clean reading still sees the step


# -- the ledger --------------------------------------------------------------------------


def _retrying(ledger: Ledger, folder_root: str, rel: str, wait: float) -> int:
    ledger.observe(folder_root, [rel], destination="d")
    row = ledger.active_for_path(folder_root, rel)
    assert row is not None
    ledger.promote(row.id)
    assert ledger.claim_next() is not None
    ledger.mark_retry(row.id, error="HTTP 503", at=ledger._clock() + wait)
    return int(row.id)


def test_a_step_back_leaves_each_waiting_file_its_own_wait(ledger: Ledger, clock: FakeClock) -> None:
    """After the clock goes back an hour, a queued file is due at once and a retry is due
    after the wait it was given (2 s), not an hour later; a step forward changes nothing."""
    retry = _retrying(ledger, "/in", "r.txt", 2.0)
    ledger.observe("/in", ["q.txt"], destination="d")
    queued = ledger.active_for_path("/in", "q.txt")
    assert queued is not None
    ledger.promote(queued.id)
    assert ledger.rein_in(900, 5).total == 0
    clock.advance(-HOUR)
    assert ledger.claim_next() is None  # what a stepped clock alone does
    reined = ledger.rein_in(900, 5)
    assert (reined.queued, reined.retrying) == (1, 1)
    first = ledger.claim_next()
    assert first is not None and first.id == queued.id
    assert ledger.claim_next() is None
    clock.advance(2.1)
    second = ledger.claim_next()
    assert second is not None and second.id == retry
    clock.advance(2 * HOUR)
    assert ledger.rein_in(900, 5).total == 0


def test_no_wait_lasts_longer_than_the_horizon(ledger: Ledger, clock: FakeClock) -> None:
    """A retry set 5,000 s ahead (retry_max_seconds lowered since, or a time written by a
    clock far ahead that was put right before this start) is due within the horizon."""
    row_id = _retrying(ledger, "/in", "far.txt", 5000.0)
    reined = ledger.rein_in(900, 5)
    assert reined.retrying == 1
    row = ledger.get(row_id)
    assert row is not None and row.next_attempt_at == pytest.approx(clock() + 900, abs=1e-3)


def test_a_restart_after_a_year_ahead_finds_every_file_due(ledger: Ledger, clock: FakeClock) -> None:
    """Rows written while the clock was a year ahead: a settling file is looked at now and
    its quiet time starts again; a retry keeps its wait."""
    ledger.observe("/in", ["s.txt"], destination="d")
    retry = _retrying(ledger, "/in", "r.txt", 30.0)
    clock.advance(-365 * 86400.0)
    reined = ledger.rein_in(900, 5)
    assert (reined.retrying, reined.settling) == (1, 1)
    settling = ledger.active_for_path("/in", "s.txt")
    assert settling is not None
    assert settling.changed_at == settling.first_seen == clock()
    assert ledger.settling_due(clock(), 10)[0].id == settling.id
    row = ledger.get(retry)
    assert row is not None and row.next_attempt_at == pytest.approx(clock() + 30.0, abs=1e-3)


def test_nothing_to_rein_in_writes_nothing(ledger: Ledger, clock: FakeClock) -> None:
    ledger.observe("/in", ["a.txt"], destination="d")
    _retrying(ledger, "/in", "b.txt", 60.0)
    before = ledger._committed
    assert ledger.rein_in(900, 5).total == 0
    assert ledger._committed == before


def test_rein_in_finds_its_rows_through_indexes(ledger: Ledger) -> None:
    """A sweep every 10 s must not read the backlog: each lookup is an index range."""
    from syncd.ledger import schedule

    for index, where in (
        schedule._QUEUED_AHEAD,
        schedule._WRITTEN_AHEAD,
        schedule._BEYOND_HORIZON,
        schedule._SETTLING_AHEAD,
    ):
        sql = f"EXPLAIN QUERY PLAN SELECT 1 FROM files INDEXED BY {index} WHERE {where}"
        args = {"ahead": 0.0, "beyond": 0.0, "settle_beyond": 0.0}
        (plan,) = [r[-1] for r in ledger._conn.execute(sql, args)]
        assert plan.startswith("SEARCH") and f"INDEX {index} (" in plan and ">?" in plan, plan


def test_shift_settling_moves_every_quiet_time(ledger: Ledger, clock: FakeClock) -> None:
    ledger.observe("/in", ["a.txt", "b.txt"], destination="d")
    before = {r.id: (r.changed_at, r.first_seen) for r in ledger.rows()}
    assert ledger.shift_settling(86400.0) == 2
    for row in ledger.rows():
        assert (row.changed_at, row.first_seen) == tuple(t + 86400.0 for t in before[row.id])


# -- the circuit -------------------------------------------------------------------------


def test_an_open_circuit_is_not_held_for_the_length_of_a_step_back(clock: FakeClock) -> None:
    c = Circuit("d", base=2.0, cap=10.0, clock=clock)
    clock.advance(OPEN_QUIET)  # a fresh circuit opens only once nothing got through for that long
    for _ in range(THRESHOLD):
        c.failed("RetryableError: HTTP 503")
    assert c.snapshot().state == DOWN and c.wait() == pytest.approx(2.0)
    clock.advance(0.5)
    clock.advance(-HOUR)
    assert c.wait() == pytest.approx(2.0)  # its own length again, not an hour and 1.5 s
    clock.advance(2.1)
    assert c.admit() not in (None, GO)  # the probe


def test_a_rate_limit_keeps_its_length_after_a_step_back(clock: FakeClock) -> None:
    c = Circuit("d", base=1.0, cap=600.0, clock=clock)
    c.rate_limited(60.0, "HTTP 429")
    clock.advance(-365 * 86400.0)
    assert c.snapshot().state == RATE_LIMITED
    assert c.wait() == pytest.approx(60.0)
    clock.advance(60.1)
    assert c.admit() == GO


# -- the settle stage --------------------------------------------------------------------


def _settling(tmp_path: Path, ledger: Ledger, clock: FakeClock, *, settle: float) -> tuple[Settler, Path]:
    folder = make_folder(tmp_path, settle_seconds=settle)
    path = folder.path / "growing.txt"
    path.write_bytes(b"first half, ")
    scanner.scan_folder(ledger, folder)
    return Settler(ledger, lambda: {os.fspath(folder.path): folder}, clock=clock), path


def test_a_step_forward_does_not_cut_a_quiet_time_short(
    tmp_path: Path, ledger: Ledger, clock: FakeClock
) -> None:
    """The settle stage sees the step and moves every quiet time with it: a file whose
    writer paused for one of its two quiet seconds is not queued."""
    wall, steady = clock, FakeClock(100.0)
    settler, path = _settling(tmp_path, ledger, clock, settle=2.0)
    settler.steps = ClockSteps(wall, steady)
    assert settler.tick() == 0  # the first look
    clock.advance(1.0)
    steady.advance(1.0)
    clock.advance(86400.0)  # the step, while the writer pauses
    assert settler.tick() == 0
    with open(path, "ab") as f:
        f.write(b"second half")
    clock.advance(1.5)
    steady.advance(1.5)
    assert settler.tick() == 0  # its next look: it changed, the quiet time starts again
    clock.advance(2.1)
    steady.advance(2.1)
    assert settler.tick() == 1
    (row,) = ledger.rows()
    assert row.state == State.QUEUED and row.size == len(b"first half, second half")


def test_a_change_seen_before_a_step_back_waits_one_quiet_time(
    tmp_path: Path, ledger: Ledger, clock: FakeClock
) -> None:
    """Without a settle stage that saw the step (a restart): a last change "in the future"
    starts the quiet time again now, so the file is queued after settle_seconds, not
    after the length of the step."""
    settler, _ = _settling(tmp_path, ledger, clock, settle=2.0)
    assert settler.tick() == 0
    clock.advance(-HOUR)
    ledger.rein_in(900, 2.0)
    assert settler.tick() == 0
    clock.advance(2.1)
    assert settler.tick() == 1
