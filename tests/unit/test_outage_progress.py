"""A connection reset in the middle of a multi-part upload that moves on at every attempt.

The circuit charges an outage failure to the file when the service served other files
since the file's previous one: meant for the file a service keeps choking on. A large
file on a link that resets a connection now and then met a reset somewhere in each
attempt, though each confirmed more parts than the one before: every attempt from the
second on was charged, and the file went to failed_dir half-sent while the network,
not the file, was at fault.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn

from syncd.circuit import THRESHOLD
from syncd.destinations.base import Checkpoint, Receipt, Source, UploadItem
from syncd.errors import RetryableError
from tests.conftest import FakeClock
from tests.unit.test_uploader import setup, work  # noqa: F401 - the fixture

RESET = "ReadError: [Errno 104] Connection reset by peer"


def _one_more_part_then_a_reset(done: int, checkpoint: Checkpoint) -> NoReturn:
    """An attempt that had ``done`` parts confirmed gets one more confirmed, then the link
    drops the connection."""
    checkpoint({"v": 1, "part_size": 1, "parts": {str(n): "e" for n in range(1, done + 2)}})
    raise RetryableError(RESET, transport=True)


def test_a_reset_after_new_parts_were_confirmed_spends_no_attempt(
    setup: Any,  # noqa: F811 - the fixture
    clock: FakeClock,
    tmp_path: Path,
) -> None:
    ledger, folder, dest, up, drop, step = setup  # max_attempts = 3
    big = drop("big.bin", b"0123456789")
    plain = dest.upload
    tries: list[int] = []

    def upload(
        item: UploadItem, source: Source, resume: dict[str, Any] | None, checkpoint: Checkpoint
    ) -> Receipt:
        if item.name != "big.bin":
            return plain(item, source, resume, checkpoint)
        done = len((resume or {}).get("parts", {}))
        tries.append(done)
        if done >= 6:  # every part confirmed at last
            return Receipt(remote_id="obj/big.bin", url="http://x/obj")
        _one_more_part_then_a_reset(done, checkpoint)

    dest.upload = upload
    for n in range(20):
        drop(f"ok{n}.txt", b"fine")  # the service serves other files meanwhile
        while work(up) is not None:
            clock.advance(0.01)
        if ledger.get(big).state in ("done", "failed", "uploaded"):
            break
        clock.advance(60)
    row = ledger.get(big)
    assert row.state != "failed", f"failed for good after {tries}: {row.last_error}"
    assert tries[-1] >= 6


def test_a_file_that_moves_on_at_every_attempt_does_not_call_the_service_down(
    setup: Any,  # noqa: F811 - the fixture
    clock: FakeClock,
) -> None:
    """One large file alone, a connection reset in each attempt after a new part: three
    such failures in a row opened the circuit, "destination is down" while every attempt
    had parts confirmed. A confirmed part is the service's answer that it works."""
    ledger, folder, dest, up, drop, step = setup
    big = drop("big.bin", b"0123456789")
    plain = dest.upload
    states: list[str] = []

    def upload(
        item: UploadItem, source: Source, resume: dict[str, Any] | None, checkpoint: Checkpoint
    ) -> Receipt:
        done = len((resume or {}).get("parts", {}))
        if done >= 6:
            return plain(item, source, resume, checkpoint)
        _one_more_part_then_a_reset(done, checkpoint)

    dest.upload = upload
    for _ in range(30):
        while work(up) is not None:
            clock.advance(0.01)
        states.append(up.destination_states()["dest"].state)
        if ledger.get(big).state not in ("queued", "retrying"):
            break
        clock.advance(60)
    assert ledger.get(big).state != "failed"
    assert "down" not in states, states


def test_an_attempt_in_flight_when_the_circuit_opened_does_not_close_it(
    setup: Any,  # noqa: F811 - the fixture
    clock: FakeClock,
) -> None:
    """Parts it confirmed before the outage say nothing of the service now: the circuit
    other files opened stays open, and the file waits without spending an attempt."""
    ledger, folder, dest, up, drop, step = setup
    big = drop("big.bin", b"0123456789")

    def upload(
        item: UploadItem, source: Source, resume: dict[str, Any] | None, checkpoint: Checkpoint
    ) -> Receipt:
        checkpoint({"v": 1, "part_size": 1, "parts": {"1": "e", "2": "e"}})
        for _ in range(THRESHOLD):  # meanwhile the other workers see the service go down
            up.circuit("dest").failed("ConnectError: refused")
        raise RetryableError(RESET, transport=True)

    dest.upload = upload
    row = up._claim()
    assert row is not None
    state = up.process(row)
    up._attempt_over(row, state)
    assert up.destination_states()["dest"].state == "down"
    assert ledger.get(big).attempts == 0
