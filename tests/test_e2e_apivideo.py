"""The real daemon (subprocess) uploading to the api.video emulation, on real folders.

Files are small enough (5 MiB chunks, ~16 MiB files) that each test stays
well under 20 s. What is checked: bytes identical, tags and metadata set
(with api_key), the empty file's documented refusal, resume after SIGKILL
in the middle of a chunked upload without re-sending confirmed chunks, and
all of it again under a 20 % fault rate.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness import CANARIES, Setup, sha, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

MIB = 1024 * 1024
CHUNK = 5 * MIB
BIG = 3 * CHUNK + MIB + 11  # four chunks: 5, 5, 5 and 1 MiB (+11 bytes)
LABELS = ["talks", "2026"]


def destination(api_key: bool = True) -> dict[str, Any]:
    table: dict[str, Any] = {"type": "apivideo", "base_url": "{url}/apivideo",
                             "upload_token": "env:TEST_APIVIDEO_TOKEN", "chunk_size": "5 MiB"}
    if api_key:
        table["api_key"] = "env:TEST_APIVIDEO_KEY"
    return table


@pytest.fixture
def make_setup(tmp_path: Path) -> Iterator[Any]:
    made: list[Setup] = []

    def make(*, api_key: bool = True, emulator: dict[str, Any] | None = None) -> Setup:
        folder = {"name": "videos", "labels": LABELS, "category": "SOURCE", "max_attempts": 30}
        s = Setup(tmp_path, destination=destination(api_key), folders=[folder],
                  emulator=emulator)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


# The token route (/upload?token=) and the API-key route (/videos/{id}/source).
CHUNK_OPS = ("apivideo.upload", "apivideo.upload_source")


def chunk_requests(s: Setup) -> list[dict[str, Any]]:
    return [e for e in s.emulator.requests() if e["op"] in CHUNK_OPS]


def videos(s: Setup) -> list[dict[str, Any]]:
    """Every video the emulator knows (complete or not), through the API."""
    r = httpx.get(f"{s.emulator.url}/apivideo/videos", params={"pageSize": 100},
                  auth=(CANARIES["apivideo_key"], ""))
    return r.json()["data"]  # type: ignore[no-any-return]


def check_delivered(s: Setup, *, metadata: bool = True) -> None:
    """Every dropped non-empty file: one video, identical bytes, received once."""
    uploads = {u["filename"]: u for u in s.emulator.uploads() if u["service"] == "apivideo"}
    for (_, rel), data in s.dropped.items():
        if not data:
            continue
        up = uploads[rel]
        assert up["sha256"] == sha(data) and up["size"] == len(data), rel
        assert up["times_received"] == 1, rel
        if metadata:
            assert up["labels"] == LABELS and up["category"] == "SOURCE", rel
    assert len(uploads) == sum(1 for d in s.dropped.values() if d)


def check_empty_file_failed(s: Setup, name: str) -> None:
    """The documented handling: refused without a request, in failed_dir with the reason."""
    (row,) = [r for r in s.rows() if os.fsdecode(r["relpath"]) == name]
    assert row["state"] == "failed" and "empty" in row["last_error"]
    assert (s.failed() / name).exists()
    sidecar = json.loads((s.failed() / (name + ".error.json")).read_text())
    assert "empty" in json.dumps(sidecar)
    assert all(e["bytes"] > 0 for e in chunk_requests(s))


def test_empty_small_and_chunked_files(make_setup: Any) -> None:
    s = make_setup()
    s.drop("empty.mp4", b"")
    s.drop("one-byte.mp4", b"\x7f")
    s.drop("talk.mp4", os.urandom(BIG))
    s.start()
    wait_until(lambda: s.all_done(2), 30, 0.1, "two uploads and one refusal")
    check_delivered(s)
    check_empty_file_failed(s, "empty.mp4")
    ok = [e["bytes"] for e in chunk_requests(s) if e["status"] == 201]
    assert sorted(ok) == sorted([1, CHUNK, CHUNK, CHUNK, MIB + 11])
    uploads = {u["filename"]: u for u in s.emulator.uploads()}
    rows = {os.fsdecode(r["relpath"]): r for r in s.rows()}
    for name in ("one-byte.mp4", "talk.mp4"):
        assert uploads[name]["uuid"] == rows[name]["uuid"]  # metadata syncd-uuid
        receipt = json.loads(rows[name]["receipt"])
        assert receipt["remote_id"] == uploads[name]["video_id"]
        assert "?" not in receipt["url"]
    assert uploads["talk.mp4"]["chunks"] == 4
    s.invariants(allow_failed=True)
    assert s.stop() == 0
    s.assert_no_secret()


@pytest.mark.parametrize("api_key", [False, True], ids=["token-only", "api-key"])
def test_sigkill_in_the_middle_resends_only_unconfirmed_chunks(make_setup: Any,
                                                               api_key: bool) -> None:
    # Chunks 1 and 2 go through; chunk 3 is held by the server for 8 s, so the daemon
    # is killed while sending it, after it checkpointed chunk 2.
    s = make_setup(api_key=api_key)
    op = "apivideo.upload_source" if api_key else "apivideo.upload"
    s.emulator.set_faults(script=[{"op": op, "kind": "slow", "delay": 0, "count": 2},
                                  {"op": op, "kind": "slow", "delay": 8}])
    data = os.urandom(BIG)
    s.drop("talk.mp4", data)
    s.start()
    wait_until(lambda: s.emulator.faults.snapshot()["script"] == [], 20, 0.02,
               "chunk 3 on its way")
    s.kill()
    before = [e["bytes"] for e in chunk_requests(s) if e["status"] == 201]
    assert before == [CHUNK, CHUNK]
    s.emulator.faults.clear()
    s.emulator.reset_log()
    s.start()
    wait_until(lambda: s.all_done(1), 30, 0.1, "the upload resumed")
    after = [e["bytes"] for e in chunk_requests(s) if e["status"] == 201]
    assert after == [CHUNK, MIB + 11], "chunks 1 and 2 must not be sent again"
    check_delivered(s, metadata=api_key)
    assert len(videos(s)) == 1  # one video, resumed; not a second one
    (row,) = s.rows()
    assert json.loads(row["receipt"])["remote_id"] == videos(s)[0]["videoId"]
    s.invariants() if api_key else None  # token-only videos carry no syncd-uuid to match
    assert s.stop() == 0
    s.assert_no_secret()


def test_everything_under_twenty_percent_faults(make_setup: Any) -> None:
    s = make_setup(emulator={"fail_rate": 0.2, "seed": 11,
                             "fault_kinds": ("500", "503", "429", "reset")})
    s.drop("one-byte.mp4", b"\x01")
    s.drop("talk.mp4", os.urandom(BIG))
    for i in range(4):
        s.drop(f"short-{i}.mp4", os.urandom(1000 * (i + 1)))
    s.start()
    # A SIGKILL once the big file is partly uploaded, then a restart.
    wait_until(lambda: any(e["status"] == 201 and e["bytes"] == CHUNK
                           for e in chunk_requests(s)), 20, 0.02, "a chunk confirmed")
    s.kill()
    time.sleep(0.2)
    s.start()
    # Dropped only now: a kill while a file moves to failed_dir is a window of the
    # core's to_failed (not of this destination), which this test is not about.
    s.drop("empty.mp4", b"")
    wait_until(lambda: s.all_done(len(s.dropped) - 1), 45, 0.2, "all delivered despite faults")
    faults = [e for e in s.emulator.requests() if e.get("fault")]
    assert faults, "the fault rate injected nothing"
    s.emulator.faults.clear()  # the checks below talk to the emulator too
    check_delivered(s)
    check_empty_file_failed(s, "empty.mp4")
    assert len(videos(s)) == len(s.dropped) - 1  # no duplicate videos
    s.invariants(allow_failed=True)
    assert s.stop() == 0
    s.assert_no_secret()
