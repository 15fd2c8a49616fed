"""The real daemon (a subprocess) against every emulated service: one suite, every type.

Each scenario runs once per destination type in :data:`syncd.destinations.REGISTRY`,
as that type is described in :mod:`tests.e2e_services`, and once more with
20 % of the emulator's answers replaced by injected faults:

* files of every size (0 bytes, 1 byte, exactly one part, several parts)
  arrive byte-identical, each stored once, archived, with a clean receipt;
  a service that cannot hold an empty file refuses it as documented;
* a SIGKILL in the middle of a multi-part upload, then a restart: only the
  parts the ledger had not recorded as confirmed are sent again, into the
  same remote session;
* a signed URL or form that expires mid-upload is renewed within the
  attempt, without failing the file.

A scenario that needs a capability the type lacks is skipped with the reason.
What only one service does stays in ``tests/daemon/test_e2e_<service>.py``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import pytest

from syncd.destinations import REGISTRY
from tests.e2e_services import (
    CAPABILITIES,
    CLEAN_OR_FAULTY,
    SERVICES,
    Service,
    assert_delivered,
    assert_sealed,
    log,
    make,
    ok,
)
from tests.harness import Setup, wait_until

pytestmark = pytest.mark.timeout(120)

HOLD = 3.0  # seconds the emulator holds the part request a SIGKILL interrupts
URL_TTL = 3.0  # seconds signed URLs and forms live in the expiry scenario ...
EXPIRING_HOLD = 4.5  # ... and how long one part request is held there, to outlive its URL


@pytest.fixture(params=sorted(REGISTRY))
def service(request: pytest.FixtureRequest) -> Service:
    found = SERVICES.get(request.param)
    if found is None:  # the guard test reports this once, as a failure
        pytest.skip(f"no end-to-end description for destination type {request.param!r}")
    return found


def part_number(e: dict[str, Any]) -> int:
    return int(e["path"].rsplit("/", 1)[1])


def test_every_registered_type_has_a_service() -> None:
    missing = sorted(set(REGISTRY) - set(SERVICES))
    assert not missing, f"destination types without an end-to-end description: {missing}"
    for service in SERVICES.values():
        assert service.supports <= CAPABILITIES, service.type
        assert set(service.lacks) == CAPABILITIES - service.supports, (
            f"{service.type}: say why for every capability it lacks, and only for those"
        )
        assert service.destination["type"] == service.type
        assert ("expiry" in service.supports) == (service.renewal is not None)


@pytest.mark.process
@CLEAN_OR_FAULTY
def test_sizes_arrive_byte_identical(
    make_setup: Callable[..., Setup], service: Service, faults: bool
) -> None:
    s = make(make_setup, service, faults=faults, seed=7)
    part = service.part_size
    files = {
        "empty.bin": b"",
        "one.bin": b"\x01",
        "exact.bin": os.urandom(part),
        "sub/parts.bin": os.urandom(3 * part + 1234),
    }
    if faults:  # more requests, so that every kind of fault has a chance
        files.update({f"small-{i}.txt": os.urandom(100 + i) for i in range(6)})
    for name, data in files.items():
        s.drop(name, data)
    s.start()
    stored = [d for d in files.values() if d or "empty" in service.supports]
    wait_until(lambda: s.all_done(len(stored)), 60, 0.1, "every file done")
    if faults:
        assert [e for e in s.emulator.requests() if e.get("fault")], "no fault was injected"
    assert_delivered(s, service)
    if not faults:  # every byte went once, in as many requests as there are parts
        sent = [e for e in log(s, *service.data_ops) if ok(e)]
        assert sorted(e["bytes"] for e in sent) == sorted(
            min(part, len(d) - i) for d in stored for i in range(0, max(len(d), 1), part)
        )
    assert s.stop() == 0


@pytest.mark.process
@CLEAN_OR_FAULTY
def test_sigkill_mid_upload_resends_only_unconfirmed_parts(
    make_setup: Callable[..., Setup], service: Service, faults: bool
) -> None:
    service.require("resume")
    s = make(make_setup, service, faults=faults, seed=3)
    part, count = service.part_size, 4
    data = os.urandom(count * part - 100)
    # Parts 1 and 2 go through; part 3 is held, so that the kill lands while it is in flight.
    s.emulator.set_faults(
        script=[
            {"op": service.part_op, "kind": "slow", "delay": 0, "count": 2},
            {"op": service.part_op, "kind": "slow", "delay": HOLD},
        ]
    )
    s.drop("big.bin", data)
    s.start()
    wait_until(lambda: s.confirmed_parts() >= 2, 30, 0.02, "two parts confirmed")
    s.kill()

    (row,) = s.rows()  # what the ledger durably holds after the kill
    assert row.state == "uploading" and row.resume is not None
    assert sorted(row.resume["parts"]) == ["1", "2"]
    session = row.resume["session"][service.session[0]]
    assert_sealed(s, service)

    restarted = time.time()
    s.start()
    wait_until(s.all_done, 60, 0.1, "the upload finished after the restart")
    # Only what the new process sent: the killed one's held request may still end on the server.
    sent = [e for e in log(s, service.part_op, since=restarted) if ok(e)]
    assert sorted(e["bytes"] for e in sent) == [part - 100, part], "not only parts 3 and 4"
    if service.numbered_op:  # (a part whose request failed is signed again: a set)
        numbered = [e for e in log(s, service.numbered_op, since=restarted) if ok(e)]
        assert set(map(part_number, numbered)) == {3, 4}
    assert not [e for e in log(s, service.open_op, since=restarted) if ok(e)], "a new session"
    (obj,) = s.emulator.uploads()
    assert obj[service.session[1]] == session, "finished in the session the ledger recorded"
    assert obj[service.parts_field] == count
    assert_delivered(s, service)
    assert s.stop() == 0


@pytest.mark.process
@CLEAN_OR_FAULTY
def test_expired_url_is_renewed_without_failing_the_file(
    make_setup: Callable[..., Setup], service: Service, faults: bool
) -> None:
    service.require("expiry")
    assert service.renewal is not None
    # Part 1 goes through; part 2 is held past the life of its signed URL or form, so the
    # emulator refuses it for real (403) when it arrives.
    s = make(make_setup, service, faults=faults, seed=5, url_ttl=URL_TTL)
    s.emulator.set_faults(
        script=[
            {"op": service.part_op, "kind": "slow", "delay": 0, "count": 1},
            {"op": service.part_op, "kind": "slow", "delay": EXPIRING_HOLD},
        ]
    )
    parts = 3
    data = os.urandom((parts - 1) * service.part_size + 5)
    s.drop("late.bin", data)
    s.start()
    wait_until(s.all_done, 60, 0.1, "the file done")
    assert [e for e in log(s, service.part_op) if e["status"] == 403], "nothing expired"
    assert service.renewal.logged in s.log_text()
    (row,) = s.rows()
    if not faults:
        assert row.attempts == 1 and not row.last_error, "renewed within the attempt"
        renewed = [e for e in log(s, service.renewal.op) if ok(e)]
        sent = [e for e in log(s, service.part_op) if ok(e)]
        if service.renewal.per_part:  # the expired part again, and no confirmed part
            assert (len(renewed), len(sent)) == (parts + 1, parts)
        else:  # a new session, which gets every part
            assert (len(renewed), len(sent)) == (2, 1 + parts)
    assert_delivered(s, service)
    assert s.stop() == 0
