"""The real daemon (subprocess) uploading to the emulated Xvid MediaHub.

A 0-byte, a 1-byte and a 3-chunk file arrive byte-identical, under object keys
that carry the folder's labels and category; a SIGKILL in the middle of a
multi-chunk upload resumes after a restart and posts only the chunks that
were not confirmed (the sealed form in the ledger); an expired form policy
is replaced by a new session without failing the file. Each runs again with
20 % of the emulator's answers replaced by injected faults.

Xvid has no field for syncd's uuid: it travels only inside ``object_key``.
The template here puts it in the fourth segment, and :func:`xvid` teaches
the harness's ``invariants()`` (which finds remote objects by uuid) to read
it from there.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from syncd.emulator import Emulator
from syncd.emulator.xvid import XvidService
from tests.harness import Setup, sha, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

MiB = 1024 * 1024
CHUNK = 5 * MiB
PIPELINE = "5f3a9c0e7b1d4a2c8e6f0a1b"
LABELS, CATEGORY = ["legal", "review-needed"], "SOURCE"
FAULTS: dict[str, Any] = {"fail_rate": 0.2, "fault_kinds": ("500", "503", "429", "reset")}
CLEAN_OR_FAULTY = pytest.mark.parametrize("faults", [False, True], ids=["clean", "faults20"])
ISSUED: dict[int, list[str]] = {}  # id(Setup) -> the policies and signatures its emulator issued


@pytest.fixture
def setups(tmp_path: Path) -> Iterator[list[Setup]]:
    made: list[Setup] = []
    yield made
    for s in made:
        s.close()


def xvid(setups: list[Setup], tmp_path: Path, *, faults: bool = False, seed: int = 1,
         **emulator: Any) -> Setup:
    if faults:
        emulator = {**FAULTS, "seed": seed, **emulator}
    s = Setup(tmp_path, emulator=emulator, daemon={"retry_max_seconds": 1.0},
              folders=[{"name": "in", "labels": LABELS, "category": CATEGORY,
                        "max_attempts": 50}],
              destination={"type": "xvid", "base_url": "{url}/xvid/v1",
                           "client_id": "canary-client", "client_secret": "env:TEST_XVID_SECRET",
                           "pipeline_id": PIPELINE, "chunk_size": "5 MiB",
                           # doubled braces: the harness formats every string with {url}
                           "object_key": "e2e/{{category}}/{{labels}}/{{uuid}}/{{relpath}}"})
    setups.append(s)
    listing = s.emulator.uploads
    s.emulator.uploads = lambda: [  # type: ignore[method-assign]
        {**u, "uuid": u["object_key"].split("/")[3]} for u in listing()]
    svc, issued = service(s), ISSUED.setdefault(id(s), [])
    sign = svc._sign_policy

    def recording_sign(pipeline_id: str) -> tuple[str, str]:  # every policy and signature issued
        policy, signature = sign(pipeline_id)
        issued.extend((policy, signature))
        return policy, signature

    svc._sign_policy = recording_sign  # type: ignore[method-assign]
    return s


def service(s: Setup) -> XvidService:
    (found,) = [x for x in s.emulator.services if isinstance(x, XvidService)]
    return found


def chunk_posts(emulator: Emulator, status: int = 201, since: float = 0.0) -> list[int]:
    """The sizes of the chunk posts answered ``status``, in order."""
    return [e["bytes"] for e in emulator.requests()
            if e["op"] == "xvid.post_chunk" and e["status"] == status and e["time"] >= since]


def count(emulator: Emulator, op: str, status: int = 200) -> int:
    return sum(1 for e in emulator.requests() if e["op"] == op and e["status"] == status)


def assert_delivered(s: Setup) -> None:
    """Every file done and archived intact, stored once under its templated key; no secret leaked."""
    s.invariants()
    rows = {os.fsdecode(r["relpath"]): r for r in s.rows()}
    objects = {u["object_key"]: u for u in s.emulator.uploads()}
    assert len(objects) == len(s.dropped), "one remote object per file, no more"
    for (_, rel), data in s.dropped.items():
        row = rows[rel]
        assert row["state"] == "done", (rel, row["state"], row["last_error"])
        key = f"e2e/{CATEGORY}/{','.join(LABELS)}/{row['uuid']}/{rel}"
        assert json.loads(row["receipt"])["remote_id"] == key
        obj = objects[key]
        assert (obj["sha256"], obj["size"], obj["times_received"]) == (sha(data), len(data), 1)
        assert Path(obj["path"]).read_bytes() == data
        assert obj["filename"] == os.path.basename(rel) and obj["pipeline_id"] == PIPELINE
    assert not [p for p in s.inbox().rglob("*") if p.is_file()]
    s.assert_no_secret()
    raw = b"".join(p.read_bytes() for p in s.ledger_path.parent.glob("ledger.sqlite3*"))
    log = s.log_text()
    secrets = [*service(s)._tokens, *ISSUED[id(s)]]  # noqa: SLF001 (what the emulator issued)
    assert len(secrets) >= 3
    for secret in secrets:
        assert secret not in log and secret.encode() not in raw
    assert b"/_s3/" not in raw  # not even the form's URL: it is sealed with the rest


@CLEAN_OR_FAULTY
def test_sizes_arrive_byte_identical(setups: list[Setup], tmp_path: Path, faults: bool) -> None:
    s = xvid(setups, tmp_path, faults=faults, seed=7)
    files = {"empty.bin": b"", "one.bin": b"\x01", "sub/three.bin": os.urandom(2 * CHUNK + 12345)}
    if faults:  # more requests, so that every kind of fault has a chance
        files.update({f"small-{i}.txt": os.urandom(100 + i) for i in range(6)})
    for name, data in files.items():
        s.drop(name, data)
    s.start()
    wait_until(s.all_done, 30, 0.1, "every file done")
    assert_delivered(s)
    sizes = {u["size"]: u["chunks"] for u in s.emulator.uploads()}
    assert (sizes[0], sizes[1], sizes[2 * CHUNK + 12345]) == (1, 1, 3)
    if faults:
        assert [e for e in s.emulator.requests() if e.get("fault")], "no fault was injected"
    else:
        assert sorted(chunk_posts(s.emulator)) == sorted([0, 1, CHUNK, CHUNK, 12345] + [
            len(d) for n, d in files.items() if n.startswith("small")])
    assert s.stop() == 0


@CLEAN_OR_FAULTY
def test_sigkill_mid_upload_posts_only_unconfirmed_chunks(
        setups: list[Setup], tmp_path: Path, faults: bool) -> None:
    s = xvid(setups, tmp_path, faults=faults, seed=3)
    data = os.urandom(3 * CHUNK + 777)  # 4 chunks
    # The second chunk post hangs in the emulator for 3 s: the kill lands while it is in flight.
    s.emulator.set_faults(script=[{"op": "xvid.post_chunk", "kind": "slow", "delay": 0.0},
                                  {"op": "xvid.post_chunk", "kind": "slow", "delay": 3.0}])
    s.drop("big.bin", data)
    s.start()

    wait_until(lambda: s.confirmed_parts() >= 1, 20, 0.02, "the first chunk confirmed")
    s.kill()
    (row,) = s.rows()
    resume = json.loads(row["resume"])  # what the ledger durably holds after the kill
    assert list(resume["parts"]) == ["1"] and row["state"] == "uploading"
    assert resume["session"]["sealed"] and "finished" not in resume["session"]

    restarted = time.time()
    s.start()
    wait_until(s.all_done, 30, 0.1, "the upload finished after the restart")
    # Chunk 1 was posted once, before the kill; the new process posted only chunks 2-4,
    # into the same session (the killed post of chunk 2 never completed).
    assert chunk_posts(s.emulator) == [CHUNK, CHUNK, CHUNK, 777]
    assert chunk_posts(s.emulator, since=restarted) == [CHUNK, CHUNK, 777]
    assert count(s.emulator, "xvid.open") == 1 and count(s.emulator, "xvid.delete") == 0
    (obj,) = s.emulator.uploads()
    assert obj["upload_id"] == resume["session"]["upload_id"] and obj["chunks"] == 4
    assert_delivered(s)
    assert s.stop() == 0


class JumpAfterFirstChunk:
    """The emulator's clock: real time, until a chunk has been accepted; then 1000 s ahead,
    past the life of every policy issued so far (900 s), but not of the token (7200 s)."""

    def __init__(self) -> None:
        self.emulator: Emulator | None = None
        self.offset = 0.0

    def __call__(self) -> float:
        if not self.offset and self.emulator is not None and chunk_posts(self.emulator):
            self.offset = 1000.0
        return time.time() + self.offset


@CLEAN_OR_FAULTY
def test_expired_policy_is_renewed_without_failing_the_file(
        setups: list[Setup], tmp_path: Path, faults: bool) -> None:
    clock = JumpAfterFirstChunk()
    s = xvid(setups, tmp_path, faults=faults, seed=5, clock=clock)
    clock.emulator = s.emulator
    data = os.urandom(2 * CHUNK + 5)
    s.drop("late.bin", data)
    s.start()
    wait_until(s.all_done, 30, 0.1, "the file done")
    assert chunk_posts(s.emulator, 403), "the old policy was refused"
    assert count(s.emulator, "xvid.open") == 2, "a new session replaced the expired one"
    assert chunk_posts(s.emulator)[1:] == [CHUNK, CHUNK, 5], "all chunks again, in the new one"
    (row,) = s.rows()
    if not faults:  # (with faults, the delete itself may fail: it is best effort)
        assert count(s.emulator, "xvid.delete") == 1, "the expired session was deleted"
        assert row["attempts"] == 1 and not row["last_error"], "renewed within the attempt"
    assert "opening a new one" in s.log_text()
    assert_delivered(s)
    assert s.stop() == 0
