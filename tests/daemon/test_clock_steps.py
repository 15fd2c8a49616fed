"""The real daemon while its wall clock is stepped (docs/guarantees.md, F22).

The daemon runs with tests/clockshim on its path: a file holds the offset of
its wall clock, so a test steps it back or forward at any moment, as an NTP
correction steps a real host's. Its monotonic clock runs on, as a real one
does. Without syncd's handling of a step back, every wait scheduled before
the step lasts as long as the step (an hour here), and these tests time out.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.harness import ROOT, Setup, wait_until

pytestmark = pytest.mark.process

HOUR = 3600.0
YEAR = 365 * 86400.0


def _stepped(s: Setup) -> tuple[Path, dict[str, str]]:
    """The offset file (0 for now) and the environment that gives the daemon that clock."""
    offset = s.tmp / "clock-offset"
    offset.write_text("0")
    env = {"PYTHONPATH": f"{ROOT / 'tests' / 'clockshim'}:{ROOT}", "SYNCD_TEST_CLOCK_FILE": str(offset)}
    return offset, env


def test_a_clock_stepped_back_an_hour_delays_no_file(make_setup: Callable[..., Setup]) -> None:
    """A file held back by a 429 (its destination rate limited for 5 s) and a file
    settling (3 s) when the clock goes back an hour are both delivered within seconds,
    as is a file dropped after the step; the log says what happened."""
    s = make_setup(folders=[{"name": "in", "settle_seconds": 3}])
    offset, env = _stepped(s)
    s.emulator.set_faults(script=[{"op": "lilt.initiate", "kind": "429", "retry_after": 5, "count": 1}])
    s.start(extra_env=env)
    s.wait_started()
    s.drop("held.txt", b"held back by a 429")
    wait_until(lambda: s.counts().get("retrying") == 1, 20, what="the 429")
    s.drop("settling.txt", b"settling through the step")
    wait_until(lambda: s.counts().get("settling") == 1, 10, what="the second file settling")
    offset.write_text(str(-HOUR))
    s.drop("after.txt", b"dropped after the step")
    wait_until(lambda: s.all_done(3), 25, 0.5, "every file, within seconds of the step")
    assert "were due later than syncd ever schedules" in s.log_text()
    s.invariants()
    assert s.stop() == 0


def test_a_restart_after_the_clock_went_back_a_year_delays_no_file(
    make_setup: Callable[..., Setup],
) -> None:
    """A host that ran with its clock a year ahead: files wait for a destination that is
    down, syncd stops, the clock is put right, syncd starts again and the destination is
    back. The files go at once, not a year later."""
    s = make_setup(folders=[{"name": "in", "settle_seconds": 0.5}])
    offset, env = _stepped(s)
    offset.write_text(str(YEAR))
    s.emulator.set_faults(script=[{"op": "lilt.initiate", "status": 503, "count": 1000}])
    s.start(extra_env=env)
    s.wait_started()
    for i in range(3):
        s.drop(f"f{i}.txt", f"waiting {i}".encode())
    wait_until(
        lambda: any(d["state"] == "down" for d in s.status()["destinations"]), 30, what="destination down"
    )
    assert s.stop() == 0
    assert s.counts().get("done", 0) == 0
    offset.write_text("0")
    s.emulator.set_faults(script=[])
    s.start(extra_env=env)
    wait_until(lambda: s.all_done(3), 25, 0.5, "the files, right after the restart")
    assert "were due later than syncd ever schedules" in s.log_text()
    s.invariants()
    assert s.stop() == 0


def test_a_clock_stepped_forward_loses_nothing(make_setup: Callable[..., Setup]) -> None:
    """Stepped forward a day while a file is being written: it is uploaded whole (a
    file queued early is caught by change detection), and nothing waits."""
    s = make_setup(folders=[{"name": "in", "settle_seconds": 2}])
    offset, env = _stepped(s)
    s.start(extra_env=env)
    s.wait_started()
    path = s.inbox() / "growing.txt"
    with open(path, "wb") as f:
        f.write(b"first half, ")
        f.flush()
        wait_until(lambda: s.counts().get("settling") == 1, 10, what="settling")
        offset.write_text(str(86400.0))
        time.sleep(1.0)  # the producer pauses, well inside the quiet time, after the step
        f.write(b"second half")
    s.dropped[("in", "growing.txt")] = b"first half, second half"
    wait_until(lambda: s.all_done(1), 30, 0.5, "the file")
    assert (s.archive() / "growing.txt").read_bytes() == b"first half, second half"
    s.invariants()
    assert s.stop() == 0
