"""The chunk driver (syncd.destinations._chunked) against a fake, in-memory service."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from syncd.destinations import _chunked
from syncd.destinations._chunked import (
    Opened,
    Part,
    PartRules,
    SessionLost,
    choose_part_size,
    part_count,
)
from syncd.destinations.base import Receipt, Source, UploadItem
from syncd.errors import ExpiredError, PermanentError, RetryableError

MiB = 1024 * 1024
GiB = 1024 * MiB


class FakeService:
    """Stores parts in memory; scripted failures per part number."""

    kind = "fake"
    session_fields = {"id": str}

    def __init__(
        self, rules: PartRules | None = None, preferred: int = 10, server_part_size: int | None = None
    ) -> None:
        self.rules = dataclasses.replace(rules or PartRules(min_size=10), part_size=preferred)
        self.server_part_size = server_part_size
        self.sessions: dict[str, dict[int, bytes]] = {}
        self.calls: list[tuple[str, Any]] = []
        self.fail: dict[int, list[BaseException]] = {}
        self.finished: list[tuple[str, list[tuple[int, str]], bytes]] = []
        self.aborted: list[str] = []
        self.token_override: str | None = None
        self.opened = 0
        self._lock = threading.Lock()

    def open(self, item: UploadItem, source: Source, part_size: int) -> Opened:
        with self._lock:
            self.opened += 1
            sid = f"s{self.opened}"
            self.sessions[sid] = {}
            self.calls.append(("open", part_size))
        return Opened({"id": sid, "_url": "https://signed.example/?sig=SECRET"}, self.server_part_size)

    def send_part(self, session: dict[str, Any], part: Part) -> str:
        with self._lock:
            self.calls.append(("part", part.number))
            failures = self.fail.get(part.number)
            exc = failures.pop(0) if failures else None
        if exc is not None:
            raise exc
        if session["id"] not in self.sessions:
            raise SessionLost("gone")
        data = part.read() if part.number % 2 else b"".join(part.stream())
        assert len(data) == part.size
        with self._lock:
            self.sessions[session["id"]][part.number] = data
        if self.token_override is not None:
            return self.token_override
        return f'"{hashlib.md5(data).hexdigest()}"'

    def finish(self, session: dict[str, Any], parts: list[tuple[int, str]]) -> Receipt:
        stored = self.sessions[session["id"]]
        assert [n for n, _ in parts] == sorted(stored)
        blob = b"".join(stored[n] for n, _ in parts)
        self.finished.append((session["id"], parts, blob))
        return Receipt(remote_id=session["id"], details={"parts": len(parts)})

    def abort(self, session: dict[str, Any]) -> None:
        self.aborted.append(session["id"])
        self.sessions.pop(session["id"], None)


class Recorder:
    def __init__(self, crash_after: int | None = None) -> None:
        self.states: list[dict[str, Any]] = []
        self.crash_after = crash_after

    def __call__(self, state: dict[str, Any]) -> None:
        self.states.append(copy.deepcopy(state))
        if self.crash_after is not None and len(self.states) >= self.crash_after:
            raise Crash()


class Crash(Exception):
    pass


def run(
    service: FakeService,
    tmp_path: Path,
    data: bytes,
    resume: dict[str, Any] | None = None,
    cps: Recorder | None = None,
    parallel: int = 1,
) -> tuple[Receipt, str]:
    path = tmp_path / "f.bin"
    if not path.exists() or path.read_bytes() != data:
        path.write_bytes(data)
    st = path.stat()
    item = UploadItem(
        uuid="u", name="f.bin", relpath="f.bin", size=len(data), content_type="application/octet-stream"
    )
    with Source(path, size=st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino) as source:
        receipt = _chunked.run(
            service, item, source, resume, cps or Recorder(), parallel=_chunked.Parallel(parallel)
        )
        return receipt, source.sha256()


# -- planning ---------------------------------------------------------------------


def test_part_count() -> None:
    assert part_count(0, 10) == 1 and part_count(0, 10, empty_parts=0) == 0
    assert part_count(1, 10) == 1 and part_count(10, 10) == 1 and part_count(11, 10) == 2


def test_choose_part_size_respects_minimum_and_multiple() -> None:
    rules = PartRules(min_size=5 * MiB, multiple=256 * 1024)
    assert choose_part_size(100, 1, rules) == 5 * MiB
    assert choose_part_size(100, 5 * MiB + 1, rules) == 5 * MiB + 256 * 1024


def test_choose_part_size_grows_to_fit_10000_parts() -> None:
    rules = PartRules(min_size=5 * MiB, max_size=5 * GiB, multiple=MiB)
    size = 100 * GiB  # 12,800 parts of 8 MiB
    part = choose_part_size(size, 8 * MiB, rules)
    assert part % MiB == 0 and part_count(size, part) <= 10_000
    assert part_count(size, part - MiB) > 10_000  # the smallest that fits


def test_choose_part_size_refuses_impossible_files() -> None:
    rules = PartRules(min_size=5 * MiB, max_size=5 * GiB)
    with pytest.raises(PermanentError, match="too large"):
        choose_part_size(10_000 * 5 * GiB + 1, 8 * MiB, rules)


def test_choose_part_size_clamps_to_maximum() -> None:
    assert choose_part_size(10, 100, PartRules(max_size=64, multiple=16)) == 64


def test_rules_validate() -> None:
    with pytest.raises(ValueError):
        PartRules(empty_parts=2)


@pytest.mark.parametrize(
    ("session", "fits"),
    [
        ({"id": "a", "n": 0, "via": "api"}, True),
        ({"id": "a", "n": 3, "via": "token", "sealed": "x", "done": False}, True),
        ({"id": "", "n": 0, "via": "api"}, False),  # an empty str is not a str here
        ({"id": "a", "n": -1, "via": "api"}, False),
        ({"id": "a", "n": True, "via": "api"}, False),  # a bool is not an int here
        ({"id": "a", "n": 0, "via": "other"}, False),
        ({"id": "a", "n": 0, "via": "api", "sealed": 5}, False),
        ({"id": "a", "n": 0, "via": "api", "done": "yes"}, False),
        ({"n": 0, "via": "api"}, False),
    ],
)
def test_session_fields(session: dict[str, Any], fits: bool) -> None:
    fields = {"id": str, "n": int, "via": ("token", "api"), "sealed": (str, None), "done": (bool, None)}
    assert _chunked.session_fits(fields, session) is fits


# -- sending ----------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 9, 10, 11, 35])
def test_parts_and_checkpoints(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    service, cps = FakeService(), Recorder()
    receipt, sha = run(service, tmp_path, data, cps=cps)
    count = part_count(size, 10)
    assert service.finished[0][2] == data
    assert [n for n, _ in service.finished[0][1]] == list(range(1, count + 1))
    assert len(cps.states) == count + 1  # after open, then after every part
    assert cps.states[0] == {
        "v": 1,
        "kind": "fake",
        "session": {"id": "s1"},
        "part_size": 10,
        "size": size,
        "parts": {},
        "ctime_ns": os.stat(tmp_path / "f.bin").st_ctime_ns,  # the file's as its parts were read
    }
    assert sorted(cps.states[-1]["parts"], key=int) == [str(n) for n in range(1, count + 1)]
    assert sha == hashlib.sha256(data).hexdigest()
    assert receipt.remote_id == "s1"


def test_transient_session_keys_are_not_checkpointed(tmp_path: Path) -> None:
    cps = Recorder()
    run(FakeService(), tmp_path, b"x" * 25, cps=cps)
    assert all("_url" not in s["session"] and "SECRET" not in repr(s) for s in cps.states)


def test_empty_file_as_one_empty_part(tmp_path: Path) -> None:
    service = FakeService()
    run(service, tmp_path, b"")
    assert service.finished[0][1] == [(1, f'"{hashlib.md5(b"").hexdigest()}"')]


def test_empty_file_as_no_parts(tmp_path: Path) -> None:
    service = FakeService(PartRules(min_size=10, empty_parts=0))
    cps = Recorder()
    run(service, tmp_path, b"", cps=cps)
    assert service.finished[0][1] == [] and len(cps.states) == 1
    assert ("part", 1) not in service.calls


def test_sequential_parts_hash_on_the_way(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    data = os.urandom(45)
    path.write_bytes(data)
    st = path.stat()
    item = UploadItem(uuid="u", name="f", relpath="f", size=45, content_type="x")
    with Source(path, size=45, mtime_ns=st.st_mtime_ns, inode=st.st_ino) as source:
        _chunked.run(FakeService(), item, source, None, Recorder())
        assert source.bytes_read == 45  # no extra read needed for the hash
        assert source.sha256() == hashlib.sha256(data).hexdigest()
        assert source.bytes_read == 45


def test_parallel_parts(tmp_path: Path) -> None:
    data = os.urandom(205)
    service, cps = FakeService(), Recorder()
    _, sha = run(service, tmp_path, data, cps=cps, parallel=4)
    assert service.finished[0][2] == data
    assert len(cps.states) == 22
    assert sha == hashlib.sha256(data).hexdigest()


def test_parallel_error_keeps_confirmed_parts(tmp_path: Path) -> None:
    data = os.urandom(100)
    service, cps = FakeService(), Recorder()
    service.fail[3] = [RetryableError("503")]
    with pytest.raises(RetryableError):
        run(service, tmp_path, data, cps=cps, parallel=3)
    done = set(cps.states[-1]["parts"])
    assert "3" not in done and {"1", "2"} <= done
    service.calls.clear()
    run(service, tmp_path, data, resume=cps.states[-1], parallel=3)
    assert sorted(n for op, n in service.calls if op == "part") == sorted(
        n for n in range(1, 11) if str(n) not in done
    )
    assert service.finished[0][2] == data


def test_checkpoints_are_spaced_by_the_share_of_parts_not_saved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each checkpoint rewrites every part's token: one per part is quadratic in the part
    count. A checkpoint comes once the unsaved parts are 1/SHARE of the confirmed ones
    (here 1/4; the clock never allows one), and the last one, as the loop ends, holds
    every part."""
    monkeypatch.setattr(_chunked, "SHARE", 4)
    monkeypatch.setattr(_chunked, "CHECKPOINT_EVERY", 3600.0)
    data = os.urandom(300)
    service, cps = FakeService(), Recorder()
    run(service, tmp_path, data, cps=cps)
    saved = [len(s["parts"]) for s in cps.states]
    assert saved == [0, 1, 2, 3, 4, 6, 8, 11, 15, 20, 27, 30]  # 30: the end of the loop
    # a part before each save, the unsaved ones were fewer than 1/4 of the confirmed ones
    assert all((later - earlier - 1) * 4 < later - 1 for earlier, later in itertools.pairwise(saved[1:-1]))
    assert service.finished[0][2] == data


def test_spaced_checkpoints_follow_the_clock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_chunked, "SHARE", 1)
    monkeypatch.setattr(_chunked, "CHECKPOINT_EVERY", 0.0)  # every part is a second later
    cps = Recorder()
    run(FakeService(), tmp_path, os.urandom(60), cps=cps)
    assert [len(s["parts"]) for s in cps.states] == [0, 1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("parallel", [1, 3])
def test_a_failure_past_the_spaced_checkpoints_keeps_every_confirmed_part(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, parallel: int
) -> None:
    monkeypatch.setattr(_chunked, "SHARE", 1)
    monkeypatch.setattr(_chunked, "CHECKPOINT_EVERY", 3600.0)
    data = os.urandom(150)
    service, cps = FakeService(), Recorder()
    service.fail[12] = [RetryableError("503")]
    with pytest.raises(RetryableError):
        run(service, tmp_path, data, cps=cps, parallel=parallel)
    done = set(cps.states[-1]["parts"])
    assert {str(n) for n in range(1, 12)} <= done and "12" not in done
    service.calls.clear()
    run(service, tmp_path, data, resume=cps.states[-1], parallel=parallel)
    assert sorted(n for op, n in service.calls if op == "part") == sorted(
        n for n in range(1, 16) if str(n) not in done
    )
    assert service.finished[0][2] == data


# -- resume -----------------------------------------------------------------------


def test_resume_sends_only_missing_parts(tmp_path: Path) -> None:
    data = os.urandom(35)
    service, crashing = FakeService(), Recorder(crash_after=3)
    with pytest.raises(Crash):
        run(service, tmp_path, data, cps=crashing)
    service.calls.clear()
    run(service, tmp_path, data, resume=crashing.states[-1])
    assert service.calls == [("part", 3), ("part", 4)]
    assert service.finished[0][2] == data


def test_a_file_changed_in_place_since_its_parts_were_sent_starts_over(tmp_path: Path) -> None:
    """Same size, mtime set back: only the inode change time differs, and the parts the
    service holds are of the old bytes. A state without ``ctime_ns`` (an older syncd's)
    is trusted as before."""
    data = os.urandom(35)
    service, crashing = FakeService(), Recorder(crash_after=2)
    with pytest.raises(Crash):
        run(service, tmp_path, data, cps=crashing)
    saved = crashing.states[-1]
    path = tmp_path / "f.bin"
    st = path.stat()
    new = os.urandom(5) + data[5:]
    with open(path, "r+b") as f:
        f.write(new[:5])
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    service.calls.clear()
    run(service, tmp_path, new, resume=saved)
    assert service.aborted == ["s1"] and service.calls[0] == ("open", 10)
    assert service.finished[0][2] == new
    service.calls.clear()
    older = {k: v for k, v in saved.items() if k != "ctime_ns"}
    run(service, tmp_path, new, resume=older)
    assert service.calls[0] == ("part", 2)


def test_recorded_part_size_wins_over_config(tmp_path: Path) -> None:
    data = os.urandom(35)
    service, crashing = FakeService(), Recorder(crash_after=2)
    with pytest.raises(Crash):
        run(service, tmp_path, data, cps=crashing)
    service.rules = dataclasses.replace(service.rules, part_size=20)
    service.calls.clear()
    run(service, tmp_path, data, resume=crashing.states[-1])
    assert service.calls == [("part", 2), ("part", 3), ("part", 4)]


@pytest.mark.parametrize(
    "damage",
    [
        {"size": 36},
        {"part_size": 3},
        {"part_size": "10"},
        {"parts": {"9": "x"}},
        {"parts": {"1": ""}},
        {"parts": []},
        {"v": 2},
    ],
)
def test_inconsistent_resume_aborts_and_restarts(tmp_path: Path, damage: dict[str, Any]) -> None:
    data = os.urandom(35)
    service, crashing = FakeService(), Recorder(crash_after=2)
    with pytest.raises(Crash):
        run(service, tmp_path, data, cps=crashing)
    resume = {**crashing.states[-1], **damage}
    service.calls.clear()
    run(service, tmp_path, data, resume=resume)
    assert service.aborted == ([] if "v" in damage else ["s1"])
    assert service.calls[0] == ("open", 10)
    assert service.finished[0][0] == "s2" and service.finished[0][2] == data


@pytest.mark.parametrize("resume", [{}, {"kind": "single", "key": "k"}, {"v": 1, "kind": "fake"}])
def test_foreign_resume_starts_over_without_abort(
    tmp_path: Path, resume: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    service = FakeService()
    with caplog.at_level("INFO", logger="syncd.destinations._chunked"):
        run(service, tmp_path, b"abc", resume=resume)
    assert service.aborted == [] and service.finished
    starting_over = [r.getMessage() for r in caplog.records if "starting over" in r.getMessage()]
    # said with the file's name when there was a state to go on from; nothing said for none
    assert starting_over == ([] if not resume else [starting_over[0]])
    assert all("not one this upload can go on from" in m and "'f.bin'" in m for m in starting_over)


def test_expired_part_is_sent_again(tmp_path: Path) -> None:
    data = os.urandom(25)
    service = FakeService()
    service.fail[2] = [ExpiredError("403"), ExpiredError("403")]
    run(service, tmp_path, data)
    assert service.calls.count(("part", 2)) == 3
    assert service.finished[0][2] == data


def test_expiry_renewals_are_bounded(tmp_path: Path) -> None:
    service = FakeService()
    service.fail[1] = [ExpiredError("403")] * 10
    with pytest.raises(ExpiredError):
        run(service, tmp_path, b"abc")
    assert service.calls.count(("part", 1)) == _chunked.MAX_RENEWALS + 1


def test_lost_session_reopens_once(tmp_path: Path) -> None:
    data = os.urandom(25)
    service, crashing = FakeService(), Recorder(crash_after=2)
    with pytest.raises(Crash):
        run(service, tmp_path, data, cps=crashing)
    service.sessions.clear()
    service.calls.clear()
    run(service, tmp_path, data, resume=crashing.states[-1])
    assert service.calls[:2] == [("part", 2), ("open", 10)]
    assert service.finished[0][2] == data


def test_lost_session_twice_gives_up(tmp_path: Path) -> None:
    service = FakeService()
    service.fail[1] = [SessionLost("gone")] * 5
    with pytest.raises(SessionLost):
        run(service, tmp_path, b"abc")
    assert [c for c in service.calls if c[0] == "open"] == [("open", 10)] * 2


def test_empty_token_is_retryable(tmp_path: Path) -> None:
    service = FakeService()
    service.token_override = ""
    cps = Recorder()
    with pytest.raises(RetryableError):
        run(service, tmp_path, b"abc", cps=cps)
    assert cps.states[-1]["parts"] == {}


def test_server_dictated_part_size(tmp_path: Path) -> None:
    data = os.urandom(30)
    service, cps = FakeService(server_part_size=7), Recorder()
    run(service, tmp_path, data, cps=cps)
    assert cps.states[0]["part_size"] == 7
    assert len(service.finished[0][1]) == 5


def test_abort_helper_tolerates_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    service = FakeService()
    assert _chunked.abort(service, None) is False
    assert _chunked.abort(service, {"v": 1, "kind": "other", "session": {"id": "x"}}) is False
    service.sessions["x"] = {}
    assert _chunked.abort(service, {"v": 1, "kind": "fake", "session": {"id": "x"}}) is True

    def broken(session: dict[str, Any]) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(service, "abort", broken)
    assert _chunked.abort(service, {"v": 1, "kind": "fake", "session": {"id": "x"}}) is False


@pytest.mark.parametrize("threads", [0, 1, 3])
def test_parallel_parts_go_out_with_the_threads_the_host_allows(
    monkeypatch: pytest.MonkeyPatch, threads: int
) -> None:
    """At the thread limit (the unit's TasksMax=) `parallel_parts = 4` gets fewer threads:
    starting one raised "can't start new thread" out of the upload, which failed the file
    like an internal error at every attempt. The parts go out with the threads there are,
    or one after the other on the caller's thread; each is recorded there, in order."""
    from syncd.destinations._chunked_parallel import send_parallel
    from syncd.destinations._chunked_parts import Part

    started = []
    real_start = threading.Thread.start

    def limited(thread: threading.Thread) -> None:
        if thread.name.startswith("part") and len(started) >= threads:
            raise RuntimeError("can't start new thread")
        if thread.name.startswith("part"):
            started.append(thread)
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", limited)
    parts = [Part(n, (n - 1) * 10, 10, 12, 120, source=None) for n in range(1, 13)]  # type: ignore[arg-type]
    me = threading.current_thread()
    recorded: list[tuple[int, bool]] = []
    send_parallel(
        parts,
        lambda part: f"etag-{part.number}",
        lambda part, token: recorded.append((part.number, threading.current_thread() is me)),
        per_file=4,
    )
    assert sorted(n for n, _ in recorded) == list(range(1, 13))
    assert all(on_caller for _, on_caller in recorded)
    assert len(started) == threads
