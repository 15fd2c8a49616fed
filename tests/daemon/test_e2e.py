"""The real daemon (subprocess) against the real emulator, on real folders."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
import tomli_w

from tests.harness import CANARY_KEY, ROOT, Setup, sha, wait_until

pytestmark = pytest.mark.process


def two_folders() -> list[dict[str, object]]:
    return [
        {"name": "contracts", "labels": ["legal", "review-needed"], "category": "SOURCE"},
        {"name": "refs", "labels": ["reference"], "category": "REFERENCE"},
    ]


def test_thousand_files_in_two_folders(make_setup: Callable[..., Setup]) -> None:
    s = make_setup(folders=two_folders())
    s.start()
    rng = random.Random(7)
    for i in range(500):
        s.drop(f"c{i:04d}.txt", rng.randbytes(rng.randint(0, 4000)), "contracts")
        s.drop(f"sub/{i % 7}/r{i:04d}.bin", rng.randbytes(rng.randint(1, 4000)), "refs")
    wait_until(lambda: s.all_done(), 180, 0.5, "1000 files done")
    uploads = {u["uuid"]: u for u in s.emulator.uploads()}
    rows = [r for r in s.rows() if r.state == "done"]
    assert len(rows) == 1000
    for r in rows:
        up = uploads[r.uuid]
        folder = Path(r.folder).name
        data = s.dropped[(folder, r.relpath)]
        assert up["sha256"] == sha(data) and up["size"] == len(data)
        if folder == "contracts":
            assert up["labels"] == ["legal", "review-needed"] and up["category"] == "SOURCE"
        else:
            assert up["labels"] == ["reference"] and up["category"] == "REFERENCE"
        assert up["times_received"] == 1
    assert not any(s.inbox("contracts").iterdir())
    s.invariants()
    assert s.stop() == 0
    s.assert_no_secret()


def test_slow_writer_is_uploaded_once_with_final_content(make_setup: Callable[..., Setup]) -> None:
    s = make_setup(folders=[{"name": "in", "settle_seconds": 1.0}])
    s.start()
    path = s.inbox() / "growing.bin"
    content = b""
    for i in range(8):  # open, write, close, pause, reopen ...
        chunk = bytes([i]) * 50_000
        with open(path, "ab") as f:
            f.write(chunk)
        content += chunk
        time.sleep(0.4)
    s.dropped[("in", "growing.bin")] = content
    wait_until(lambda: s.all_done(1), 30, what="upload")
    ups = [u for u in s.emulator.uploads() if u["filename"] == "growing.bin"]
    assert len(ups) == 1 and ups[0]["sha256"] == sha(content) and ups[0]["times_received"] == 1
    assert len([r for r in s.rows()]) == 1
    s.invariants()


def test_sigkill_twenty_times_during_500_files(make_setup: Callable[..., Setup]) -> None:
    s = make_setup(folders=two_folders(), emulator={"seed": 3})
    rng = random.Random(11)
    for i in range(250):
        s.drop(f"c{i:03d}.txt", rng.randbytes(rng.randint(1, 3000)), "contracts")
        s.drop(f"r{i:03d}.txt", rng.randbytes(rng.randint(1, 3000)), "refs")
    kills = 0
    while kills < 20:
        s.start()
        time.sleep(rng.uniform(0.3, 1.2))
        s.kill()
        kills += 1
    s.start()
    s.wait_started()
    wait_until(lambda: s.all_done(), 180, 0.5, "all files done after the kills")
    s.invariants()
    uploads = s.emulator.uploads()
    assert {u["uuid"] for u in uploads} >= {r.uuid for r in s.rows() if r.state == "done"}
    # duplicates only for what was in flight at a kill: at most `workers` per kill
    extra = sum(u["times_received"] - 1 for u in uploads) + (len(uploads) - 500)
    assert extra <= 20 * 4
    assert s.stop() == 0
    s.assert_no_secret()


def test_twenty_percent_faults_still_deliver_everything(make_setup: Callable[..., Setup]) -> None:
    s = make_setup(
        folders=two_folders(),
        emulator={"fail_rate": 0.2, "seed": 5, "fault_kinds": ("500", "503", "429", "reset")},
        daemon={"retry_max_seconds": 1.0},
    )
    rng = random.Random(2)
    for i in range(100):
        s.drop(f"c{i}.txt", rng.randbytes(500), "contracts")
        s.drop(f"r{i}.txt", rng.randbytes(500), "refs")
    s.start()
    wait_until(lambda: s.all_done(), 120, 0.5, "all delivered despite faults")
    s.invariants()
    faults = [r for r in s.emulator.requests() if r.get("fault")]
    assert len(faults) > 20
    assert "retrying" in s.log_text()
    s.assert_no_secret()


WEIRD_NAMES = [
    "with space.txt",
    "tab\there.txt",
    "new\nline.txt",
    "-leading-dash",
    "ünïcödé.txt",
    "e\u0301-nfd.txt",
    "\u00e9-nfc.txt",
    "%46percent.txt",
    'quote"d.txt',
    "back\\slash.txt",
    "emoji-😀.txt",
    "x" * 255,
    "cr\rhere.txt",
    "semi;colon&amp.txt",
    " leading-space.txt",
    "trailing-space.txt ",
    "trailing.dot.",
    "ctrl-\x01-\x1f.txt",
]


def test_weird_filenames(make_setup: Callable[..., Setup]) -> None:
    s = make_setup(folders=[{"name": "in"}])
    for i, name in enumerate(WEIRD_NAMES):
        s.drop(name, f"content {i}".encode())
    bad = os.fsdecode(b"invalid-\xff\xfe-utf8.txt")
    s.drop(bad, b"bytes that are not utf-8 in the name")
    s.start()
    wait_until(lambda: s.all_done(), 60, what="weird names done")
    s.invariants()
    archived = {p.name for p in s.archive().iterdir()}
    assert archived == set(WEIRD_NAMES) | {bad}
    log = s.log_text()
    assert "new\nline" not in log  # a name cannot forge a log line
    for line in log.splitlines():
        assert line.startswith(("20", "    ")), f"forged or unprefixed log line: {line!r}"


def test_second_instance_exits_3(make_setup: Callable[..., Setup]) -> None:
    s = make_setup()
    s.start()
    wait_until(lambda: s.ledger_path.exists(), 10, what="ledger")
    time.sleep(0.5)
    out = s.cli("run")
    assert out.returncode == 3
    assert "already running" in out.stderr


def test_missing_folder_does_not_stop_the_others(make_setup: Callable[..., Setup]) -> None:
    s = make_setup(folders=two_folders())
    os.rmdir(s.inbox("refs"))
    out = s.cli("check")  # a missing folder is reported, not a config error (it may be mounted later)
    assert out.returncode == 0 and "does not exist" in out.stdout + out.stderr
    assert "folders[1].path" in out.stdout + out.stderr
    s.start()
    s.drop("a.txt", b"a", "contracts")
    wait_until(lambda: s.all_done(1), 20, what="the healthy folder works")
    status = s.status()
    refs = [f for f in status["folders"] if f["path"].endswith("refs")][0]
    assert "missing" in (refs["problem"] or "") or "not exist" in (refs["problem"] or "")
    s.inbox("refs").mkdir()
    s.drop("b.txt", b"b", "refs")
    wait_until(lambda: s.all_done(2), 20, what="the folder that came back works")
    assert "refs" in s.log_text() and "not available" in s.log_text()


def test_permanent_rejection_goes_to_failed_with_reason_and_retry(make_setup: Callable[..., Setup]) -> None:
    s = make_setup(folders=[{"name": "in"}])
    s.emulator.set_faults(script=[{"op": "lilt.initiate", "status": 400, "count": 1}])
    s.drop("a.txt", b"rejected once")
    s.start()
    wait_until(lambda: s.counts().get("failed") == 1, 20, what="failed")
    failed = s.failed() / "a.txt"
    assert failed.read_bytes() == b"rejected once"
    assert "HTTP 400" in (s.failed() / "a.txt.error.json").read_text()
    out = s.cli("files", "--state", "failed")
    assert "a.txt" in out.stdout and "400" in out.stdout
    out = s.cli("explain", str(s.inbox() / "a.txt"))
    assert "failed" in out.stdout
    s.invariants(allow_failed=True)
    rid = s.rows()[0].id
    assert s.cli("retry", str(rid)).returncode == 0
    wait_until(lambda: s.counts().get("done") == 1, 20, what="retried upload")
    assert not failed.exists()
    assert (s.archive() / "a.txt").read_bytes() == b"rejected once"


def test_wrong_key_pauses_and_loses_nothing(make_setup: Callable[..., Setup]) -> None:
    s = make_setup(folders=[{"name": "in"}], lilt={"api_key": "wrong-key-123"})
    s.drop("a.txt", b"x")
    s.start()
    wait_until(lambda: "pausing it" in s.log_text(), 20, what="pause message")
    assert (s.inbox() / "a.txt").exists()
    assert s.counts().get("failed", 0) == 0
    assert "wrong-key-123" not in s.log_text()


def test_once_exits_when_done(make_setup: Callable[..., Setup]) -> None:
    s = make_setup(folders=[{"name": "in"}])
    for i in range(10):
        s.drop(f"{i}.txt", str(i).encode())
    out = subprocess.run(
        [sys.executable, "-m", "syncd", "-c", str(s.config), "once"],
        env=s.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "syncd once: finished in" in out.stdout and "10 done" in out.stdout
    assert s.counts() == {"done": 10}
    s.invariants()
    assert CANARY_KEY not in out.stderr


def test_once_with_a_folder_it_cannot_read_says_so_and_exits_1(make_setup: Callable[..., Setup]) -> None:
    """A folder missing (an unmounted share, a path typo) when `syncd once` runs from cron:
    it said "finished ... (no files)" and exited 0, as if the folder were empty."""
    s = make_setup(folders=[{"name": "in"}, {"name": "gone"}])
    s.drop("a.txt", b"a")
    shutil.rmtree(s.inbox("gone"))
    out = subprocess.run(
        [sys.executable, "-m", "syncd", "-c", str(s.config), "once", "--no-progress"],
        env=s.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1, out.stdout + out.stderr
    assert "1 done" in out.stdout and "1 folder(s) not read" in out.stdout, out.stdout
    assert "not read:" in out.stderr and "folder missing" in out.stderr, out.stderr


def test_once_stopped_before_it_is_done_says_what_it_left_and_exits_1(
    make_setup: Callable[..., Setup],
) -> None:
    """SIGTERM (a timeout in a cron wrapper, Ctrl-C) during `syncd once`: the files it did
    not finish are left for the next run, which the exit code and the last line say. It
    said "finished ... (1 done)" and exited 0."""
    s = make_setup(folders=[{"name": "in", "settle_seconds": 0}], lilt={"bwlimit": "300 KiB"})
    s.drop("small.txt", b"quick")
    s.drop("slow.bin", os.urandom(3 << 20))  # 10 s at 300 KiB/s
    proc = subprocess.Popen(
        [sys.executable, "-m", "syncd", "-c", str(s.config), "once", "--no-progress"],
        env=s.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_until(
        lambda: s.counts() == {"done": 1, "uploading": 1}, 30, what="the small file done, the slow in flight"
    )
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)  # a second one: no drain
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, (out, err)
    assert "1 left for the next run" in out, out
    assert (s.inbox() / "slow.bin").exists()


def test_sigterm_exits_zero(make_setup: Callable[..., Setup]) -> None:
    s = make_setup()
    proc = s.start()
    s.wait_started()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    assert "syncd stopped" in s.log_text()


def _unshare_works() -> bool:
    try:
        return subprocess.run(["unshare", "-U", "true"], timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def test_unreadable_file_stays_in_the_inbox_and_is_retried(make_setup: Callable[..., Setup]) -> None:
    """Run without capabilities (plain `unshare -U`) so mode bits apply even to root."""
    if not _unshare_works():
        pytest.skip("unshare -U is not permitted here: cannot drop capabilities to test EACCES")
    s = make_setup(
        folders=[{"name": "in", "max_attempts": 2}],
        daemon={"retry_base_seconds": 0.1, "retry_max_seconds": 0.3, "log_level": "debug"},
    )
    s.drop("good.txt", b"fine")
    bad = s.drop("locked.txt", b"secret stuff")
    bad.chmod(0)
    s.start(wrapper=["unshare", "-U"])
    wait_until(lambda: s.counts().get("done") == 1, 20, what="the readable file")
    wait_until(
        lambda: "leaving it in place" in s.log_text() and s.log_text().count("cannot read") >= 3,
        20,
        what="several retries",
    )
    said = [line for line in s.log_text().splitlines() if "cannot read" in line]
    assert sum(" WARNING " in line for line in said) == 1, said  # once, then at debug level
    row = [r for r in s.rows() if r.relpath == "locked.txt"][0]
    assert row.state == "retrying" and "Permission denied" in (row.last_error or "")
    assert bad.exists() and not (s.failed() / "locked.txt").exists()
    status = s.status()
    assert any("locked.txt" in e["path"] for e in status["recent_errors"])
    bad.chmod(0o644)
    wait_until(lambda: s.all_done(), 20, what="upload once readable")
    s.invariants()


def test_once_shows_progress_on_a_terminal(make_setup: Callable[..., Setup]) -> None:
    import pty

    s = make_setup(folders=[{"name": "in", "settle_seconds": 1.0}])
    for i in range(5):
        s.drop(f"{i}.txt", str(i).encode())
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "syncd", "-c", str(s.config), "once", "--log-level", "error"],
        env=s.env(),
        stdout=slave,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(30) == 0
    os.close(master)
    text = b"".join(chunks).decode()
    assert "\r" in text and "settling" in text and "5 done" in text


def _once(s: Setup, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "syncd", "-c", str(s.config), "once", "--no-progress", *args],
        env=s.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_once_leaves_a_distant_retry_for_the_next_run(make_setup: Callable[..., Setup]) -> None:
    """A file told to come back in five minutes (a 429's Retry-After) does not keep
    `once` running for five minutes: it says so and exits 1, the file in place."""
    s = make_setup(folders=[{"name": "in"}], daemon={"retry_max_seconds": 600, "workers": 1})
    s.emulator.set_faults(script=[{"op": "lilt.initiate", "kind": "429", "retry_after": 300}])
    for i in range(3):
        s.drop(f"f{i}.txt", b"told to wait")
    started = time.monotonic()
    out = _once(s)
    assert out.returncode == 1, out.stdout + out.stderr
    assert time.monotonic() - started < 30
    assert "(no files; 3 left for the next run)" in out.stdout
    assert "destination 'lilt' is rate_limited (rate limited (HTTP 429)): 3 file(s) wait" in out.stderr
    assert s.counts() == {"retrying": 1, "queued": 2}
    assert all(r.attempts == 0 for r in s.rows())  # a 429 spends nothing
    assert sorted(p.name for p in s.inbox().iterdir()) == ["f0.txt", "f1.txt", "f2.txt"]


def test_once_max_wait_sets_how_long_a_retry_may_be_waited_for(make_setup: Callable[..., Setup]) -> None:
    """`--max-wait 0`: a file told to come back in 3 s is left for the next run at once;
    `--max-wait 10` waits for it (the default, 60 s, would too)."""
    s = make_setup(folders=[{"name": "in"}], daemon={"workers": 1})
    s.emulator.set_faults(script=[{"op": "lilt.initiate", "kind": "429", "retry_after": 3}])
    s.drop("a.txt", b"told to wait a little")
    started = time.monotonic()
    out = _once(s, "--max-wait", "0")
    assert out.returncode == 1, out.stdout + out.stderr
    assert time.monotonic() - started < 3
    assert "(no files; 1 left for the next run)" in out.stdout
    assert "destination 'lilt' is rate_limited (rate limited (HTTP 429)): 1 file(s) wait" in out.stderr
    s.emulator.set_faults(script=[{"op": "lilt.initiate", "kind": "429", "retry_after": 3}])
    started = time.monotonic()
    out = _once(s, "--max-wait", "10")
    assert out.returncode == 0, out.stdout + out.stderr
    assert time.monotonic() - started >= 3  # the 429's wait, waited out
    assert s.counts() == {"done": 1}
    bad = _once(s, "--max-wait", "-1")
    assert bad.returncode == 2 and "expected a number of seconds >= 0, got '-1'" in bad.stderr


def test_once_does_not_wait_out_an_outage(make_setup: Callable[..., Setup]) -> None:
    s = make_setup(
        folders=[{"name": "in"}],
        daemon={"retry_base_seconds": 0.2, "retry_max_seconds": 0.5},
        destination={"type": "lilt", "base_url": "http://127.0.0.1:9/lilt", "api_key": "env:TEST_LILT_KEY"},
    )
    for i in range(4):
        s.drop(f"f{i}.txt", b"x")
    out = _once(s)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "(no files; 4 left for the next run)" in out.stdout
    assert "destination 'lilt' is down" in out.stderr and "4 file(s) wait for the next run" in out.stderr
    assert sorted(p.name for p in s.inbox().iterdir()) == [f"f{i}.txt" for i in range(4)]


def _rename_destination(s: Setup, old: str, new: str, *, replaces: bool = True) -> None:
    """The operator's edit: destination ``old`` becomes ``new`` (at the emulator), which
    says ``replaces = [old]`` (or not); every folder points at ``new``."""
    doc = tomllib.loads(s.config.read_text())
    dest = doc["destinations"].pop(old, None) or doc["destinations"].pop(new)
    dest.update(base_url=s.emulator.url + "/lilt", replaces=[old] if replaces else [])
    doc["destinations"][new] = dest
    for folder in doc["folders"]:
        folder["destination"] = new
    s.config.write_text(tomli_w.dumps(doc))


def test_a_renamed_destination_takes_the_files_waiting_for_the_old_name(
    make_setup: Callable[..., Setup],
) -> None:
    """Files wait for destination 'lilt' (down); the operator renames it 'lilt-prod' and
    points it at the working service. The files stay waiting for 'lilt', and `syncd
    status` says so. Then `replaces = ["lilt"]` and another reload: the waiting files go
    to 'lilt-prod' and are archived."""
    s = make_setup(
        folders=[{"name": "in"}],
        destination={"type": "lilt", "base_url": "http://127.0.0.1:9/lilt", "api_key": "env:TEST_LILT_KEY"},
    )
    s.start()
    s.wait_started()
    for i in range(3):
        s.drop(f"f{i}.txt", f"waiting {i}".encode())
    wait_until(
        lambda: any(d["name"] == "lilt" and d["state"] == "down" for d in s.status()["destinations"]),
        20,
        what="lilt down",
    )
    _rename_destination(s, "lilt", "lilt-prod", replaces=False)
    assert s.cli("reload").returncode == 0
    lost = "3 file(s) wait for destination 'lilt', which the configuration no longer has"
    wait_until(lambda: lost in (s.status()["daemon"].get("problems") or []), 10, what="the status problem")
    assert s.counts().get("done", 0) == 0
    _rename_destination(s, "lilt", "lilt-prod")
    out = s.cli("reload")
    assert out.returncode == 0, out.stderr
    wait_until(lambda: s.all_done(3), 20, what="the waiting files, sent to lilt-prod")
    wait_until(lambda: not s.status()["daemon"].get("problems"), 10, what="the problem gone")
    assert {r.destination for r in s.rows()} == {"lilt-prod"}
    assert "3 file(s) queued for destination 'lilt' now go to 'lilt-prod'" in s.log_text()
    assert len(s.emulator.uploads()) == 3
    s.invariants()
    assert s.stop() == 0


def test_uploads_cut_by_a_crash_go_to_the_destination_that_replaces_theirs(
    make_setup: Callable[..., Setup],
) -> None:
    """SIGKILL while files upload to 'lilt'; before the restart the operator renames it
    'lilt-prod' with `replaces = ["lilt"]`. The interrupted uploads, requeued by recovery
    at the start, go to 'lilt-prod' with the files that were still queued."""
    s = make_setup(folders=[{"name": "in"}], daemon={"workers": 2})
    s.emulator.set_faults(script=[{"op": "lilt.put", "kind": "slow", "delay": 10.0, "count": 2}])
    s.start()
    s.wait_started()
    for i in range(4):
        s.drop(f"f{i}.txt", f"cut short {i}".encode())
    wait_until(lambda: s.counts().get("uploading") == 2, 20, what="two uploads in flight")
    s.kill()
    s.emulator.set_faults(script=[])
    _rename_destination(s, "lilt", "lilt-prod")
    s.start()
    wait_until(lambda: s.all_done(4), 30, what="every file, sent to lilt-prod")
    assert {r.destination for r in s.rows() if r.state == "done"} == {"lilt-prod"}
    assert "4 file(s) queued for destination 'lilt' now go to 'lilt-prod'" in s.logs[-1].read_text()
    assert "no longer has" not in s.logs[-1].read_text()
    s.invariants()
    assert s.stop() == 0


def _waiting(s: Setup) -> int:
    counts = s.counts()
    return counts.get("queued", 0) + counts.get("retrying", 0)


def _waiting_for_a_destination_that_is_down(
    make_setup: Callable[..., Setup], n: int, folders: list[str]
) -> Setup:
    """A daemon whose destination answers 503 (until the test clears the faults), with
    ``n`` files of the first folder waiting for it."""
    s = make_setup(
        folders=[{"name": name, "settle_seconds": 0} for name in folders],
        daemon={"retry_base_seconds": 0.5, "retry_max_seconds": 1},
    )
    s.emulator.set_faults(script=[{"op": "lilt.initiate", "status": 503, "count": 100_000}])
    s.start()
    s.wait_started()
    for i in range(n):
        s.drop(f"f{i:03}.txt", f"waiting {i}".encode())
    wait_until(lambda: _waiting(s) == n, 30, what=f"{n} files waiting")
    return s


def test_files_of_a_folder_that_went_away_wait_quietly_and_go_when_it_is_back(
    make_setup: Callable[..., Setup],
) -> None:
    """100 files wait for a destination that is down; their folder goes away (renamed, as
    an unmounted share would); the destination comes back. The files are not tried, and
    not logged, one by one every few seconds while the folder is away (each was, every
    10 s, with a warning each): one warning for the folder. When the folder is back they
    all go at once."""
    s = _waiting_for_a_destination_that_is_down(make_setup, 100, ["in"])
    away = s.inbox().parent / "in.away"
    s.inbox().rename(away)
    time.sleep(3)
    s.emulator.set_faults(script=[])
    time.sleep(12)
    assert s.log_text().count("its folder is unavailable") <= 1
    assert _waiting(s) == 100 and not s.emulator.uploads()
    # deferred for minutes, not claimed again at once (the workers spun on them)
    assert all(r.next_attempt_at and r.next_attempt_at > time.time() + 60 for r in s.rows())
    away.rename(s.inbox())
    back = time.monotonic()
    wait_until(lambda: s.all_done(100), 30, 0.2, "the files, once their folder is back")
    assert time.monotonic() - back < 10
    s.invariants()
    assert s.stop() == 0


def test_files_of_a_folder_a_reload_removed_go_at_once_when_a_reload_brings_it_back(
    make_setup: Callable[..., Setup],
) -> None:
    """The operator comments a folder out while its files wait for a destination that is
    down, and puts it back: the files go at once, not after the 5 minutes a file of a
    folder that left the config waits between looks."""
    s = _waiting_for_a_destination_that_is_down(make_setup, 5, ["in", "other"])
    original = s.config.read_text()
    doc = tomllib.loads(original)
    doc["folders"] = [f for f in doc["folders"] if not f["path"].endswith("/in")]
    s.config.write_text(tomli_w.dumps(doc))
    assert s.cli("reload").returncode == 0
    s.emulator.set_faults(script=[])
    wait_until(
        lambda: all("no longer configured" in (r.last_error or "") for r in s.rows()),
        30,
        what="the files put off for their folder",
    )
    s.config.write_text(original)
    assert s.cli("reload").returncode == 0
    back = time.monotonic()
    wait_until(lambda: s.all_done(5), 30, 0.2, "the files, once a reload brings their folder back")
    assert time.monotonic() - back < 10
    s.invariants()
    assert s.stop() == 0


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_ledger_deleted_or_replaced_under_the_daemon_stops_it_with_exit_4(
    make_setup: Callable[..., Setup], how: str
) -> None:
    """`rm ledger.sqlite3*`, or a backup copied over it, while syncd runs: what it recorded
    from then on would be in no ledger at the next start, so it stops at once (exit 4, the
    unit does not restart), says why and how to go on. Started again, it goes on with the
    ledger it finds (the restored backup here)."""
    s = make_setup(folders=[{"name": "in", "settle_seconds": 0}], lilt={"bwlimit": "600 KiB"})
    s.start()
    s.wait_started()
    s.drop("before.txt", b"recorded in the first ledger")
    wait_until(lambda: s.all_done(1), 20, what="the first file")
    s.drop("slow.bin", os.urandom(3 << 20))  # in flight when the ledger goes: about 5 s
    wait_until(lambda: s.counts().get("uploading"), 20, what="an upload in flight")
    if how == "deleted":
        for suffix in ("", "-wal", "-shm"):
            Path(f"{s.ledger_path}{suffix}").unlink(missing_ok=True)
    else:
        backup = s.tmp / "backup.sqlite3"
        assert s.cli("ledger", "backup", str(backup)).returncode == 0
        os.replace(backup, s.ledger_path)
    assert s.proc is not None and s.proc.wait(20) == 4
    log = s.log_text()
    assert (
        f"the ledger {s.ledger_path} was {'deleted' if how == 'deleted' else 'replaced by another file'}"
        in log
    )
    assert "Restore the ledger from a backup" in log and "Traceback" not in log
    # no drain: the upload in flight was not finished and archived into the lost ledger
    assert (s.inbox() / "slow.bin").exists() and not (s.archive() / "slow.bin").exists()
    s.start()
    s.wait_started()
    s.drop("after.txt", b"recorded in the ledger found at the restart")
    wait_until(lambda: (s.archive() / "after.txt").exists(), 20, what="a file after the restart")
    assert s.stop() == 0


def test_a_failed_fsync_of_the_ledger_stops_the_daemon_and_moves_nothing(
    make_setup: Callable[..., Setup],
) -> None:
    """The disk fails one fsync of the ledger (EIO). Linux reports it once and marks the
    pages clean, so a later fsync that succeeds would vouch for commits that never reached
    the disk, and files would be archived on their word. syncd takes no fsync for durable
    after that, moves nothing, and stops with exit 4; started again, it delivers."""
    s = make_setup(folders=[{"name": "in", "settle_seconds": 0}])
    trigger = s.tmp / "fail-next-fsync"
    s.start(
        extra_env={
            "PYTHONPATH": f"{ROOT / 'tests' / 'fsyncshim'}:{ROOT}",
            "SYNCD_TEST_FSYNC_EIO": str(trigger),
        }
    )
    s.wait_started()
    s.drop("before.txt", b"archived before the disk failed")
    wait_until(lambda: s.all_done(1), 20, what="the first file")
    trigger.touch()
    s.drop("after.txt", b"must not be archived on a ledger that is not on disk")
    assert s.proc is not None and s.proc.wait(30) == 4, s.log_text()[-3000:]
    assert not trigger.exists()  # the failure happened
    log = s.log_text()
    assert "could not be written to disk (fsync: Input/output error)" in log and "Traceback" not in log
    assert (s.inbox() / "after.txt").exists() and not (s.archive() / "after.txt").exists()
    s.start()
    s.wait_started()
    wait_until(lambda: (s.archive() / "after.txt").exists(), 20, what="the file after the restart")
    assert s.stop() == 0


def test_a_reload_lets_the_uploads_in_flight_finish(make_setup: Callable[..., Setup]) -> None:
    """A reload builds a new HTTP client; the uploads in flight keep the old one, which was
    closed under them 2 x io_timeout later: every long upload failed ("Bad file
    descriptor"), and a few at once marked the destination down."""
    s = make_setup(
        folders=[{"name": "in", "settle_seconds": 0}],
        daemon={"io_timeout": 1, "workers": 2},
        lilt={"bwlimit": "600 KiB"},
    )
    s.start()
    s.wait_started()
    for name in ("a.bin", "b.bin"):
        s.drop(name, os.urandom(2 << 20))  # about 7 s for both at 600 KiB/s
    wait_until(lambda: s.counts().get("uploading", 0) >= 1, 20, what="uploads in flight")
    assert s.cli("reload").returncode == 0  # the same config
    wait_until(lambda: s.all_done(2), 40, 0.2, "both uploads")
    log = s.log_text()
    assert "retrying" not in log and "is down" not in log, log[-3000:]
    s.invariants()
    assert s.stop() == 0


def test_a_reload_that_fixes_a_destination_sends_its_waiting_files_at_once(
    make_setup: Callable[..., Setup],
) -> None:
    """The operator got the service's address wrong: files wait minutes between tries.
    They fix `base_url` and reload: the files go at once, not when the backoffs they earned
    against the wrong address are over."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    port = closed.getsockname()[1]
    s = make_setup(
        folders=[{"name": "in", "settle_seconds": 0}],
        daemon={"retry_base_seconds": 300, "retry_max_seconds": 600},
        lilt={"base_url": f"http://127.0.0.1:{port}/lilt"},
    )
    try:
        s.start()
        s.wait_started()
        for i in range(5):
            s.drop(f"f{i}.txt", f"waiting {i}".encode())
        # every file tried (the last ones may wait for the circuit's probe, minutes away),
        # and at least one due minutes from now: without the fix it waits that long
        wait_until(
            lambda: (
                _waiting(s) == 5
                and sum(r.state == "retrying" for r in s.rows()) >= 3
                and any(r.next_attempt_at and r.next_attempt_at > time.time() + 60 for r in s.rows())
            ),
            30,
            what="files waiting minutes to retry",
        )
        doc = tomllib.loads(s.config.read_text())
        doc["destinations"]["lilt"]["base_url"] = s.emulator.url + "/lilt"
        s.config.write_text(tomli_w.dumps(doc))
        assert s.cli("reload").returncode == 0
        fixed = time.monotonic()
        wait_until(lambda: s.all_done(5), 30, 0.2, "the files, once the address is fixed")
        assert time.monotonic() - fixed < 10
        assert "file(s) waiting to retry on 'lilt' are due now" in s.log_text()
        s.invariants()
        assert s.stop() == 0
    finally:
        closed.close()
