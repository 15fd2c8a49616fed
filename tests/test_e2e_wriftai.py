"""The real daemon (subprocess) uploading to the emulated WriftAI.

Sizes (0 bytes, 1 byte, exactly one part, several parts) arrive byte-identical;
a SIGKILL in the middle of a multi-part upload resumes after a restart and
sends only the parts that were not confirmed; an expired part URL is renewed
(a new upload) without failing the file. Each runs again with 20 % of the
emulator's answers replaced by injected faults.

WriftAI stores no client id, so the harness's ``invariants()`` (which finds
remote objects by the syncd uuid) does not apply: :func:`assert_delivered`
finds each object through the receipt's ``download_url`` instead.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from syncd.emulator.wriftai import find
from tests.harness import Setup, sha, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

PART = 64 * 1024  # the emulator's part size here (its hidden knob), so parts are many and fast
FAULTS: dict[str, Any] = {"fail_rate": 0.2, "fault_kinds": ("500", "503", "429", "reset")}
CLEAN_OR_FAULTY = pytest.mark.parametrize("faults", [False, True], ids=["clean", "faults20"])


@pytest.fixture
def setups(tmp_path: Path) -> Iterator[list[Setup]]:
    made: list[Setup] = []
    yield made
    for s in made:
        s.close()


def wriftai(setups: list[Setup], tmp_path: Path, *, protocol: str = "uploads",
            faults: bool = False, seed: int = 1, **emulator: Any) -> Setup:
    if faults:
        emulator = {**FAULTS, "seed": seed, **emulator}
    s = Setup(tmp_path, folders=[{"name": "in"}], emulator=emulator,
              daemon={"retry_max_seconds": 1.0},
              destination={"type": "wriftai", "base_url": "{url}/wriftai/v1",
                           "token": "env:TEST_WRIFTAI_TOKEN", "protocol": protocol})
    setups.append(s)
    find(s.emulator.services).min_part_size = PART
    return s


def assert_delivered(s: Setup) -> None:
    """Every dropped file is done, archived intact, and stored once with the same bytes."""
    conn = sqlite3.connect(s.ledger_path, timeout=10)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()
    rows = {os.fsdecode(r["relpath"]): r for r in s.rows()}
    objects = {u["url"]: u for u in s.emulator.uploads()}
    assert len(objects) == len(s.dropped), "one remote object per file, no more"
    for (_, rel), data in s.dropped.items():
        row = rows[rel]
        assert row["state"] == "done", (rel, row["state"], row["last_error"])
        assert row["sha256"] == sha(data)
        assert Path(os.fsdecode(row["location"])).read_bytes() == data, f"{rel}: archive"
        receipt = json.loads(row["receipt"])
        assert "?" not in receipt["url"]
        obj = objects[receipt["url"]]
        assert (obj["sha256"], obj["size"], obj["times_received"]) == (sha(data), len(data), 1)
        assert Path(obj["path"]).read_bytes() == data
    assert not any(s.inbox().iterdir())


def ok_part_numbers(log: list[dict[str, Any]]) -> list[int]:
    return sorted(int(e["path"].rsplit("/", 1)[1]) for e in log
                  if e["op"] == "wriftai.put_part" and 200 <= e["status"] < 300)


@CLEAN_OR_FAULTY
@pytest.mark.parametrize("protocol", ["uploads", "urls"])
def test_sizes_arrive_byte_identical(setups: list[Setup], tmp_path: Path, protocol: str,
                                     faults: bool) -> None:
    s = wriftai(setups, tmp_path, protocol=protocol, faults=faults, seed=7)
    files = {"empty.bin": b"", "one.bin": b"\x01", "exact.bin": os.urandom(PART),
             "parts.bin": os.urandom(3 * PART + 1234)}
    if faults:  # more requests, so every kind of fault has a chance
        files.update({f"small-{i}.txt": os.urandom(100 + i) for i in range(6)})
    for name, data in files.items():
        s.drop(name, data)
    s.start()
    wait_until(s.all_done, 20, 0.1, "every file done")
    assert_delivered(s)
    by_size = {u["size"]: u for u in s.emulator.uploads()}
    if protocol == "uploads":
        assert (by_size[0]["parts"], by_size[PART]["parts"], by_size[3 * PART + 1234]["parts"]) \
            == (1, 1, 4)
    else:
        assert by_size[1]["filename"] == "one.bin" and by_size[1]["protocol"] == "urls"
    if faults:
        assert [e for e in s.emulator.requests() if e.get("fault")], "no fault was injected"
    assert s.stop() == 0
    s.assert_no_secret()


@CLEAN_OR_FAULTY
def test_sigkill_mid_upload_resends_only_unconfirmed_parts(
        setups: list[Setup], tmp_path: Path, faults: bool) -> None:
    s = wriftai(setups, tmp_path, faults=faults, seed=3)
    count = 8
    data = os.urandom(count * PART - 100)
    # The first part PUTs are slowed down so that the kill lands in the middle.
    s.emulator.set_faults(script=[{"op": "wriftai.put_part", "kind": "slow", "delay": 0.4,
                                   "count": 4}])
    s.drop("big.bin", data)
    s.start()

    wait_until(lambda: s.confirmed_parts() >= 2, 20, 0.02, "two parts confirmed")
    s.kill()
    (row,) = s.rows()
    resume = json.loads(row["resume"])  # what the ledger durably holds after the kill
    confirmed = {int(n) for n in resume["parts"]}
    assert 2 <= len(confirmed) < count and row["state"] == "uploading"
    upload_id = resume["session"]["id"]
    raw = b"".join(p.read_bytes() for p in s.ledger_path.parent.glob("ledger.sqlite3*"))
    assert b"X-Emu-Signature" not in raw and b"/parts/" not in raw  # the URLs are sealed

    restarted = time.time()
    s.start()
    wait_until(s.all_done, 20, 0.1, "the upload finished after the restart")
    # Only what the new process sent: the killed one's last PUT may still finish on the server.
    log = [e for e in s.emulator.requests() if e["time"] >= restarted]
    assert ok_part_numbers(log) == sorted(set(range(1, count + 1)) - confirmed)
    assert all(f"/uploads/{upload_id}/parts/" in e["path"] for e in log
               if e["op"] == "wriftai.put_part")
    assert not [e for e in log if e["op"] == "wriftai.initiate_multipart"], "no new upload"
    assert_delivered(s)
    (obj,) = s.emulator.uploads()
    assert obj["upload_id"] == upload_id and obj["parts"] == count
    assert s.stop() == 0
    s.assert_no_secret()


@CLEAN_OR_FAULTY
def test_expired_part_url_is_renewed_without_failing_the_file(
        setups: list[Setup], tmp_path: Path, faults: bool) -> None:
    # URLs live 2 s; the first four part PUTs take 1 s each, so a later one
    # reaches the emulator after its URL expired and is refused for real.
    s = wriftai(setups, tmp_path, faults=faults, seed=5, url_ttl=2.0)
    s.emulator.set_faults(script=[{"op": "wriftai.put_part", "kind": "slow", "delay": 1.0,
                                   "count": 4}])
    data = os.urandom(4 * PART + 5)
    s.drop("late.bin", data)
    s.start()
    wait_until(s.all_done, 30, 0.1, "the file done")
    log = s.emulator.requests()
    assert [e for e in log if e["op"] == "wriftai.put_part" and e["status"] == 403]
    opened = [e for e in log if e["op"] == "wriftai.initiate_multipart" and e["status"] == 200]
    assert len(opened) >= 2, "a new upload replaced the expired one"
    (row,) = s.rows()
    assert row["state"] == "done"
    if not faults:
        assert row["attempts"] == 1 and not row["last_error"], "renewed within the attempt"
    assert_delivered(s)
    assert "starting a new upload" in s.log_text()
    assert s.stop() == 0
    s.assert_no_secret()


def test_files_receipt_shows_the_usable_download_url(setups: list[Setup],
                                                     tmp_path: Path) -> None:
    """The signed download_url is sealed in the ledger; `syncd files --receipt ID` opens it
    with the token from the config, and the URL it shows downloads the file."""
    import httpx

    s = wriftai(setups, tmp_path)
    data = os.urandom(2 * PART + 3)
    s.drop("report.bin", data)
    s.start()
    wait_until(s.all_done, 20, 0.1, "the file done")
    assert s.stop() == 0
    (row,) = s.rows()
    plain = json.loads(row["receipt"])
    assert "sealed_urls" in plain and "?" not in plain["url"] and plain["url_expires_at"]
    out = s.cli("files", "--receipt", str(row["id"]), check=True)
    shown = json.loads(out.stdout)
    assert "sealed_urls" not in shown and "X-Emu-Signature=" in shown["url"]
    r = httpx.get(shown["url"], timeout=20)
    assert r.status_code == 200 and r.content == data
    assert httpx.get(plain["url"], timeout=20).status_code == 403
    assert s.cli("files", "--receipt", "999").returncode == 1
    s.assert_no_secret()  # the ledger and the logs still hold no signature
