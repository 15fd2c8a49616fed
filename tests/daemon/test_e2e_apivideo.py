"""The real daemon (subprocess) and the emulated api.video: what only api.video does.

Sizes (with the empty file's documented refusal), tags and metadata, and a
SIGKILL mid-upload, with an ``api_key``, are in the suite every service runs
(``tests/daemon/test_e2e_services.py``). Here: the token-only route (no
``api_key``), where no ``/status`` says what the server holds: after a
SIGKILL, the chunks without a recorded 201 are sent again with the
``videoId`` the first chunk returned, and no second video is made.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.e2e_services import APIVIDEO, MiB, assert_delivered, log, make, ok
from tests.harness import CANARIES, Setup, wait_until

pytestmark = [pytest.mark.process, pytest.mark.timeout(60)]

CHUNK = APIVIDEO.part_size
BIG = 3 * CHUNK + MiB + 11  # four chunks: 5, 5, 5 and 1 MiB (+11 bytes)

#: No api_key: chunks go to /upload?token=, and a token can carry no tags, metadata or uuid.
TOKEN_ONLY = dataclasses.replace(
    APIVIDEO,
    destination={k: v for k, v in APIVIDEO.destination.items() if k != "api_key"},
    part_op="apivideo.upload",
    supports=frozenset({"resume"}),
)


def videos(s: Setup) -> list[dict[str, Any]]:
    """Every video the emulator knows (complete or not), through the API."""
    r = httpx.get(
        f"{s.emulator.url}/apivideo/videos", params={"pageSize": 100}, auth=(CANARIES["apivideo_key"], "")
    )
    data: list[dict[str, Any]] = r.json()["data"]
    return data


def test_token_only_sigkill_resends_only_unconfirmed_chunks(make_setup: Callable[..., Setup]) -> None:
    # Chunks 1 and 2 go through; chunk 3 is held by the server, so the daemon is killed
    # while sending it, after it checkpointed chunk 2.
    s = make(make_setup, TOKEN_ONLY)
    s.emulator.set_faults(
        script=[
            {"op": "apivideo.upload", "kind": "slow", "delay": 0, "count": 2},
            {"op": "apivideo.upload", "kind": "slow", "delay": 3},
        ]
    )
    s.drop("talk.mp4", os.urandom(BIG))
    s.start()
    wait_until(lambda: s.confirmed_parts() >= 2, 20, 0.02, "chunks 1 and 2 confirmed")
    s.kill()
    (row,) = s.rows()
    assert row.resume is not None and row.resume["session"]["via"] == "token"
    video = row.resume["session"]["video_id"]
    assert video and sorted(row.resume["parts"]) == ["1", "2"]

    restarted = time.time()
    s.start()
    wait_until(s.all_done, 30, 0.1, "the upload resumed")
    sent = [e["bytes"] for e in log(s, "apivideo.upload", since=restarted) if ok(e)]
    assert sent == [CHUNK, MiB + 11], "chunks 1 and 2 must not be sent again"
    assert_delivered(s, TOKEN_ONLY)
    assert [v["videoId"] for v in videos(s)] == [video]  # one video, resumed; not a second one
    (row,) = s.rows()
    assert row.receipt is not None and row.receipt["remote_id"] == video
    assert s.stop() == 0
