"""Failure scenarios on the wire (docs/guarantees.md, F17-F19, F21, F22, F29), and secrets
in every output (T8, below).

The real daemon (subprocess) against the in-process emulator, directly or
through a loopback proxy:

* F17: 429 with ``Retry-After`` as delay-seconds and as an HTTP-date, then a
  503: the emulator's request log shows the daemon waited at least what the
  server asked (lower bounds only, minus 10 %); a huge ``Retry-After`` is
  capped by ``retry_max_seconds``; attempts never exceed ``max_attempts``
  (which counts what belongs to the file: a 408, not the 429 or an outage).
* F18: a server that stalls mid-body (``stall_after`` in the fault proxy):
  each stalled attempt is abandoned after ``io_timeout``, other files keep
  flowing, the heartbeat keeps moving, and the file arrives once the stall
  ends.
* F19: a connection reset (RST) or closed (FIN) in the middle of part 2 of a
  three-part upload: only part 2 is signed and sent again.
* Outage: the service unreachable for ~24 s (refused, then reset) while
  files keep arriving: the destination's circuit holds them without spending
  attempts, status and metrics say it is down, and all arrive afterwards.
* F21: a sparse file larger than the service's part rules allow (S3 rules:
  10,000 parts of at most 5 GiB; api.video: 100,000 chunks of 128 MiB) is
  refused at planning time with the reason, without a request and without
  being read.
* F22: a server whose clock is 20 minutes ahead or behind (``Date``,
  ``Retry-After`` dates and URL expiry on its clock): uploads succeed and the
  server-measured backoff is unchanged. Unit level: backoff never reads a
  clock, and what a wall-clock jump does to scheduled retries (a documented
  limit, docs/guarantees.md).
* F29: HTTPS with a throwaway CA (trustme) in front of the emulator: refused
  by default (the destination pauses, the file stays, "certificate verify
  failed"), uploads with ``ca_bundle``, and with ``tls_verify = false`` while
  ``syncd check`` warns.
* Secrets: one run through every destination type, at debug log level,
  with faults on every service; no canary in any log, CLI output or the
  ledger files.
"""

from __future__ import annotations

import email.utils
import json
import os
import random
import re
import select
import shutil
import socket
import ssl
import tempfile
import threading
import time
import tomllib
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import tomli_w

from syncd.http import parse_retry_after
from syncd.retry_policy import backoff
from tests.faultproxy import FaultProxy
from tests.harness import CANARIES, Setup, sha, wait_until

pytestmark = pytest.mark.timeout(60)

MIB = 1024 * 1024
TIB = 1024 * 1024 * MIB
STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def _edit_config(s: Setup, edit: Any) -> None:
    doc = tomllib.loads(s.config.read_text())
    edit(doc)
    s.config.write_text(tomli_w.dumps(doc))


def _upstream(s: Setup) -> tuple[str, int]:
    return ("127.0.0.1", int(s.emulator.url.rsplit(":", 1)[1]))


def _proxied(s: Setup, proxy: FaultProxy) -> None:
    def edit(doc: dict[str, Any]) -> None:
        doc["destinations"]["lilt"]["base_url"] = proxy.url + "/lilt"

    _edit_config(s, edit)


def _times(s: Setup, op: str) -> list[tuple[float, int]]:
    return [(e["time"], e["status"]) for e in s.emulator.requests() if e["op"] == op]


def _log_times(s: Setup, needle: str) -> list[float]:
    """Epoch seconds of the daemon's log lines that contain ``needle``."""
    out = []
    for line in s.log_text().splitlines():
        m = STAMP.match(line)
        if m and needle in line:
            stamp = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
            out.append(stamp.timestamp())
    return out


# -- F17 ----------------------------------------------------------------------------------


@pytest.mark.process
def test_f17_retry_after_seconds_and_http_date_are_waited_out(setup: Any) -> None:
    s = setup(
        folders=[{"name": "in", "settle_seconds": 0.1}],
        daemon={"retry_base_seconds": 0.2, "retry_max_seconds": 10},
    )
    s.emulator.set_faults(
        script=[
            {"op": "lilt.initiate", "kind": "429", "retry_after": 2},
            {"op": "lilt.initiate", "kind": "429", "retry_after": "date"},  # 1-2 s ahead
            {"op": "lilt.initiate", "status": 503},  # no hint: the daemon's own backoff
        ]
    )
    s.drop("a.txt", b"rate limited three times")
    s.start()
    wait_until(lambda: s.all_done(1), 30, what="the upload after 429, 429, 503")
    hits = _times(s, "lilt.initiate")
    assert [status for _, status in hits] == [429, 429, 503, 200]
    (t0, _), (t1, _), (t2, _), (t3, _) = hits
    assert t1 - t0 >= 0.9 * 2, f"Retry-After: 2 not honoured ({t1 - t0:.2f}s)"
    until = int(t1) + 2  # the HTTP-date the emulator sent, at the earliest
    assert t2 >= until - 0.1 * (until - t1), f"Retry-After date not honoured ({t2 - t1:.2f}s)"
    assert t3 > t2
    assert "HTTP 429" in s.log_text() and "HTTP 503" in s.log_text()
    s.invariants()


@pytest.mark.process
def test_f17_a_429_holds_back_every_worker(setup: Any) -> None:
    """Back-pressure is shared: after one 429, no worker starts a new upload to that
    service until its Retry-After is over (uploads already in flight may finish)."""
    s = setup(
        folders=[{"name": "in", "settle_seconds": 0.1}],
        daemon={"workers": 4, "retry_base_seconds": 0.2, "retry_max_seconds": 10},
    )
    for i in range(16):
        s.drop(f"f{i:02d}.txt", os.urandom(2000))
    s.emulator.set_faults(
        script=[
            {"op": "lilt.put", "kind": "slow", "delay": 0.2, "count": 16},  # keep workers busy
            {"op": "lilt.initiate", "kind": "429", "retry_after": 2},
        ]
    )
    s.start()
    wait_until(lambda: s.all_done(), 60, what="all files after the 429")
    entries = [e for e in s.emulator.requests() if e["op"] == "lilt.initiate"]
    limited = [e for e in entries if e["status"] == 429]
    assert len(limited) == 1
    answered = limited[0]["time"] + limited[0]["duration"]
    started_during_wait = [e for e in entries if answered + 0.5 < e["time"] < answered + 1.8]
    assert started_during_wait == [], "workers kept starting uploads during the Retry-After"
    assert "is rate limiting" in s.log_text()
    s.invariants()


@pytest.mark.process
def test_f17_huge_retry_after_is_capped_and_attempts_are_bounded(setup: Any) -> None:
    """A 429 is the account's, not the file's: it spends no attempt. 408 (the server
    timed out waiting for this request) does: three of them and the file has failed."""
    cap = 1.5
    s = setup(
        folders=[{"name": "in", "settle_seconds": 0.1, "max_attempts": 3}],
        daemon={"retry_base_seconds": 0.2, "retry_max_seconds": cap},
    )
    s.emulator.set_faults(
        script=[
            {"op": "lilt.initiate", "kind": "429", "retry_after": 99999},
            {"op": "lilt.initiate", "status": 408, "count": 20},
        ]
    )
    s.drop("a.txt", b"never accepted")
    s.start()
    wait_until(lambda: s.counts().get("failed") == 1, 30, what="giving up")
    time.sleep(1.0)  # no late extra attempt
    hits = _times(s, "lilt.initiate")
    assert [status for _, status in hits] == [429, 408, 408, 408], (
        "attempts <= max_attempts (3), the 429 not counted"
    )
    gap = hits[1][0] - hits[0][0]
    assert 0.9 * cap <= gap <= cap + 2.0, f"Retry-After: 99999 should wait the cap, waited {gap:.1f}s"
    row = s.rows()[0]
    assert row.state == "failed" and row.attempts == 3
    assert "gave up after 3 attempts" in (row.last_error or "")
    assert (s.failed() / "a.txt").read_bytes() == b"never accepted"
    s.invariants(allow_failed=True)


# -- F18 ----------------------------------------------------------------------------------


@pytest.mark.process
def test_f18_stalled_server_is_abandoned_after_io_timeout_and_retried(setup: Any) -> None:
    io_timeout, retry_max = 1.0, 0.5
    s = setup(
        folders=[{"name": "in", "settle_seconds": 0.1, "max_attempts": 50}],
        daemon={
            "io_timeout": io_timeout,
            "connect_timeout": 1.0,
            "retry_base_seconds": 0.2,
            "retry_max_seconds": retry_max,
        },
    )
    with FaultProxy(_upstream(s)) as proxy:
        _proxied(s, proxy)
        proxy.set(stall_after=256 * 1024)  # API calls pass; a body larger than this hangs
        s.start()
        s.wait_started()
        big = os.urandom(3 * MIB)
        s.drop("big.bin", big)
        wait_until(lambda: len(_log_times(s, "big.bin' in")) >= 1, 15, what="a first timeout")
        first = time.monotonic()
        beat0 = s.status()["daemon"]["heartbeat"]
        s.drop("small.txt", b"small enough to pass the stalling proxy")  # the pool is not stuck
        wait_until(lambda: s.counts().get("done") == 1, 10, what="a small file during the stall")
        time.sleep(max(0.0, 6.0 - (time.monotonic() - first)))  # > the 5 s heartbeat
        beat1 = s.status()["daemon"]["heartbeat"]
        assert beat1 > beat0, "the heartbeat stopped while uploads were stalled"
        retries = _log_times(s, "big.bin' in")
        assert len(retries) >= 3
        for a, b in zip(retries, retries[1:], strict=False):  # each attempt ends at the timeout
            assert b - a <= io_timeout + retry_max + 2.5, f"an attempt took {b - a:.1f}s"
        proxy.clear()  # the server recovers
        wait_until(lambda: s.all_done(2), 20, what="the big file once the stall is over")
    log = s.log_text()
    assert "Timeout" in log  # httpx's WriteTimeout or ReadTimeout, mapped to a retry
    (up,) = [u for u in s.emulator.uploads() if u["filename"] == "big.bin"]
    assert up["sha256"] == sha(big) and up["times_received"] == 1
    s.invariants()
    assert s.proc is not None and s.proc.poll() is None
    s.assert_no_secret()


# -- F19 ----------------------------------------------------------------------------------


@pytest.mark.process
@pytest.mark.parametrize("how", ["reset_after", "close_after"])
def test_f19_connection_cut_mid_part_resends_only_that_part(setup: Any, how: str) -> None:
    """One worker, one keep-alive connection: 5 MiB parts, the connection is cut at 7 MiB,
    i.e. 2 MiB into part 2. The retry (a new connection, cut again at 7 MiB, which the
    rest of the file stays under) must sign and send part 2 again, and part 1 never."""
    s = setup(
        folders=[{"name": "in", "settle_seconds": 0.1}],
        daemon={"workers": 1, "retry_base_seconds": 0.1, "retry_max_seconds": 0.3},
        lilt={"multipart_threshold": 5 * MIB, "part_size": 5 * MIB},
    )
    data = os.urandom(2 * 5 * MIB + MIB)  # parts of 5, 5 and 1 MiB
    s.drop("big.bin", data)
    with FaultProxy(_upstream(s)) as proxy:
        _proxied(s, proxy)
        proxy.set(**{how: 7 * MIB})
        s.start()
        wait_until(lambda: s.all_done(1), 40, what="the multipart upload")
        assert proxy.stats["resets"] == 1
    log = s.emulator.requests()
    signed = [int(e["path"].rsplit("/", 1)[1]) for e in log if e["op"] == "lilt.sign_part"]
    assert signed == [1, 2, 2, 3], f"parts signed: {signed}"
    assert sum(1 for e in log if e["op"] == "lilt.put_part" and e["status"] == 200) == 3
    assert sum(1 for e in log if e["op"] == "lilt.initiate_multipart") == 1  # session kept
    (up,) = s.emulator.uploads()
    assert up["sha256"] == sha(data) and up["times_received"] == 1
    assert "retrying" in s.log_text()
    s.invariants()


# -- Outage: the service is unreachable for a while ---------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _destination(s: Setup, name: str = "lilt") -> dict[str, Any]:
    entries: list[dict[str, Any]] = [d for d in s.status()["destinations"] if d["name"] == name]
    (entry,) = entries
    return entry


def _metric(port: int, name: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("destination") == "lilt":
                return float(sample.value)
    raise AssertionError(f"no {name} in the metrics")


@pytest.mark.process
def test_after_an_outage_a_large_file_is_not_the_probe(setup: Any) -> None:
    """The file waiting when the service comes back is 9 MiB: the probe is
    ``Destination.probe()`` (Lilt: GET /v2/upload), not its upload, which would hold
    back every other file until it ended (for a file of gigabytes, for many minutes).
    Small files are probes as before (tests/unit/test_uploader.py)."""
    s = setup(
        folders=[{"name": "in", "settle_seconds": 0.1}],
        daemon={"retry_base_seconds": 0.2, "retry_max_seconds": 0.5},
        lilt={"multipart_threshold": 64 * MIB},  # one PUT: the whole file in one request
    )
    proxy = FaultProxy(_upstream(s)).start()
    try:
        proxy.set(down=True)
        _proxied(s, proxy)
        s.start()
        s.wait_started()
        s.drop("big.bin", os.urandom(9 * MIB))
        wait_until(lambda: _destination(s)["state"] == "down", 15, what="the destination down")
        s.emulator.reset_log()
        proxy.clear()  # the service is back
        wait_until(lambda: s.all_done(1), 30, what="big.bin after the outage")
        s.drop("small.txt", b"small")
        wait_until(lambda: s.all_done(2), 15, what="a file after it")
    finally:
        proxy.stop()
    ops = [e["op"] for e in s.emulator.requests()]
    assert ops[0] == "lilt.list", ops[:5]  # the probe: the service itself
    assert ops.count("lilt.initiate") == 2 and ops.count("lilt.put") == 2
    row = next(r for r in s.rows() if r.relpath == "big.bin")
    assert row.attempts == 1  # the tries during the outage were not its own
    s.invariants()


@pytest.mark.process
@pytest.mark.timeout(150)
def test_outage_waits_and_then_delivers_everything(setup: Any) -> None:
    """A service outage is not a file failure. ``max_attempts`` is 2 and
    ``retry_max_seconds`` 1: before the destination circuit, every file that arrived
    during the outage was in failed_dir within seconds. The service is unreachable for
    ~24 s (first nothing listens at all: connection refused; then every connection is
    reset at once, the fault proxy's ``down``) while files keep arriving; `syncd status
    --json` and the metrics say the destination is down, since when and why; then it
    is back and everything is delivered, nothing failed."""
    metrics = _free_port()
    s = setup(
        folders=[{"name": "in", "settle_seconds": 0.1, "max_attempts": 2}],
        daemon={
            "retry_base_seconds": 0.2,
            "retry_max_seconds": 1.0,
            "metrics_listen": f"127.0.0.1:{metrics}",
        },
    )
    proxy = FaultProxy(_upstream(s)).start()
    port = proxy.port
    dropped = 0

    def keep_dropping(seconds: float) -> None:
        nonlocal dropped
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            s.drop(f"during-{dropped:03d}.bin", os.urandom(1000 + dropped))
            dropped += 1
            time.sleep(0.5)

    try:
        _proxied(s, proxy)
        s.start()
        s.wait_started()
        s.drop("before.txt", b"the service works")
        wait_until(lambda: s.all_done(1), 15, what="an upload before the outage")
        assert _destination(s)["state"] == "up"

        proxy.stop()  # connections cut, nothing listens on the port: connection refused
        went_down = time.time()
        keep_dropping(3)
        down = wait_until(
            lambda: (d := _destination(s))["state"] == "down" and d,
            10,
            what="`syncd status --json` saying the destination is down",
        )
        assert down["up"] is False and went_down - 1 <= down["since"] <= time.time()
        assert "lilt" in down["reason"] and "RetryableError" in down["reason"]  # why
        assert _metric(metrics, "syncd_destination_up") == 0
        assert _metric(metrics, "syncd_destination_down_since_seconds") == pytest.approx(down["since"])
        keep_dropping(9)

        proxy = FaultProxy(_upstream(s), port=port)
        proxy.set(down=True)  # listening again, but every connection is reset at once
        proxy.start()
        keep_dropping(12)
        during = _destination(s)
        assert during["state"] == "down" and during["since"] == down["since"]
        text = s.cli("status").stdout
        assert "destination lilt down since" in text and "lilt (lilt): DOWN since" in text
        counts = s.counts()
        assert not counts.get("failed") and not s.failed().exists(), counts
        assert counts.get("done") == 1  # nothing got through

        proxy.clear()  # the service is back
        wait_until(lambda: s.all_done(dropped + 1), 30, what="everything after the outage")
        wait_until(lambda: _destination(s)["state"] == "up", 10, what="status saying it is up")
        assert _metric(metrics, "syncd_destination_up") == 1
    finally:
        proxy.stop()
    rows = s.rows()
    assert len(rows) == dropped + 1 and {r.state for r in rows} == {"done"}
    assert all(r.attempts <= 2 for r in rows)
    assert not s.failed().exists() or not any(s.failed().iterdir())
    log = s.log_text()
    assert "destination 'lilt' is down" in log and "destination 'lilt' is back" in log
    assert "gave up" not in log
    s.invariants()
    assert s.stop() == 0


# -- F21 ----------------------------------------------------------------------------------


def _sparse_dir(tmp: Path, size: int) -> Path | None:
    """A directory (tmp, else /dev/shm) whose filesystem holds a sparse file of ``size``."""
    for parent in (tmp, Path("/dev/shm")):
        if not parent.is_dir():
            continue
        base = Path(tempfile.mkdtemp(prefix="f21-", dir=parent))
        probe = base / "probe"
        try:
            with open(probe, "wb"):
                pass
            os.truncate(probe, size)
            if os.stat(probe).st_blocks * 512 < 1 * MIB:
                return base
        except OSError:
            pass
        finally:
            probe.unlink(missing_ok=True)
        shutil.rmtree(base, ignore_errors=True)
    return None


def _read_bytes(pid: int) -> int:
    text = Path(f"/proc/{pid}/io").read_text()
    return int(re.findall(r"^rchar: (\d+)$", text, re.MULTILINE)[0])


@pytest.mark.process
@pytest.mark.parametrize(
    "service,size,reason",
    [
        ("lilt", 49 * TIB, "need more than 10000 parts of at most 8388608 bytes"),  # Lilt's 8 MiB
        ("apivideo", 13 * TIB, "need more than 100000 parts of at most 134217728 bytes"),
    ],
    ids=["s3-rules", "apivideo-rules"],
)
def test_f21_file_too_large_for_the_part_rules_is_refused_unread(
    setup: Any, tmp_path: Path, service: str, size: int, reason: str
) -> None:
    base = _sparse_dir(tmp_path, size)
    if base is None:
        pytest.skip(
            f"no filesystem here holds a sparse {size / TIB:.0f} TiB file "
            "(ext4 stops at 16 TiB; /dev/shm is not tmpfs or is missing)"
        )
    try:
        folder = {
            "name": "in",
            "settle_seconds": 0.1,
            "path": f"{base}/inbox",
            "archive_dir": f"{base}/archive",
            "failed_dir": f"{base}/failed",
        }
        dest = (
            None
            if service == "lilt"
            else {"type": "apivideo", "base_url": "{url}/apivideo", "upload_token": "env:TEST_APIVIDEO_TOKEN"}
        )
        s = setup(folders=[folder], destination=dest)
        huge = base / "inbox" / "huge.mov"
        with open(huge, "wb"):
            pass
        os.truncate(huge, size)
        proc = s.start()
        wait_until(lambda: s.counts().get("failed") == 1, 20, what="the refusal")
        read = _read_bytes(proc.pid)
        row = s.rows()[0]
        error = row.last_error or ""
        assert "the file is too large" in error and reason in error
        assert row.attempts == 1  # permanent: not retried
        moved = base / "failed" / "huge.mov"
        assert moved.stat().st_size == size and os.stat(moved).st_blocks == 0
        sidecar = json.loads((base / "failed" / "huge.mov.error.json").read_text())
        assert "too large" in sidecar["reason"]
        assert not s.emulator.requests(), "a request was sent for a file that cannot fit"
        assert read < 512 * MIB, f"the daemon read {read} bytes: it must not read the file"
        s.wait_logged("the file is too large")  # logged after the commit waited for
        assert s.stop() == 0
    finally:
        shutil.rmtree(base, ignore_errors=True)


# -- F22 ----------------------------------------------------------------------------------


@pytest.mark.process
@pytest.mark.parametrize("skew", [20 * 60, -20 * 60], ids=["server-ahead", "server-behind"])
def test_f22_server_clock_twenty_minutes_off(setup: Any, monkeypatch: pytest.MonkeyPatch, skew: int) -> None:
    """The emulator (in this process) runs on a clock ``skew`` seconds off: its ``Date``
    headers, its Retry-After dates and its URL expiry. The daemon's clock is right."""
    real = email.utils.formatdate

    def skewed(timeval: float | None = None, localtime: bool = False, usegmt: bool = False) -> str:
        return real((time.time() if timeval is None else timeval) + skew, localtime, usegmt)

    monkeypatch.setattr(email.utils, "formatdate", skewed)
    s = setup(
        folders=[{"name": "in", "settle_seconds": 0.1}],
        daemon={"retry_base_seconds": 0.2, "retry_max_seconds": 30},
        emulator={"clock": lambda: time.time() + skew, "url_ttl": 60},
        lilt={"multipart_threshold": 5 * MIB, "part_size": 5 * MIB},
    )
    s.emulator.set_faults(script=[{"op": "lilt.initiate", "kind": "429", "retry_after": "date"}])
    small, big = b"after a rate limit", os.urandom(6 * MIB)
    s.drop("small.txt", small)
    s.drop("big.bin", big)  # presigned parts, expiring on the server's clock
    s.start()
    wait_until(lambda: s.all_done(2), 40, what="uploads against a skewed server")
    hits = _times(s, "lilt.initiate")
    assert [st for _, st in hits] == [429, 200]
    gap = hits[1][0] - hits[0][0]
    # The server asked for 1-2 s (its own clock); read against the local clock the date
    # would mean 20 minutes (capped to retry_max_seconds) or nothing at all.
    assert 0.9 <= gap <= 5.0, f"waited {gap:.1f}s for a 1-2 s Retry-After date"
    assert not [e for e in s.emulator.requests() if e["status"] == 403], "a URL 'expired'"
    s.invariants()


def test_f22_backoff_reads_no_clock_and_retry_after_uses_the_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    """backoff() is a pure function of the attempt (no wall clock); a Retry-After date is
    measured against the response's Date, whatever the local clock says."""
    expected = [backoff(n, 0.5, 60.0, random.Random(7)) for n in range(1, 10)]
    jumps = iter([1e9, 0.0, -5e8, 4e9] * 20)
    monkeypatch.setattr(time, "time", lambda: next(jumps))  # a wildly jumping wall clock
    assert [backoff(n, 0.5, 60.0, random.Random(7)) for n in range(1, 10)] == expected
    assert backoff(3, 0.5, 60.0, random.Random(), retry_after=7.0) == 7.0
    monkeypatch.undo()
    server_now = time.time() + 1200  # 20 minutes ahead of us
    date = email.utils.formatdate(server_now, usegmt=True)
    later = email.utils.formatdate(int(server_now) + 3, usegmt=True)
    for local in (0.0, time.time(), time.time() + 1e6):
        wait = parse_retry_after(later, date=date, now=lambda local=local: local)
        assert wait is not None and 2.0 <= wait <= 3.0


def test_f22_wriftai_rate_limit_reset_ignores_clock_skew() -> None:
    from syncd.destinations.wriftai import rate_limit_wait

    server_now = time.time() + 1200
    response = httpx.Response(
        429,
        headers={
            "x-ratelimit-reset": str(int(server_now) + 2),
            "Date": email.utils.formatdate(server_now, usegmt=True),
        },
    )
    wait = rate_limit_wait(response)
    assert wait is not None and wait <= 5.0


# -- F29 ----------------------------------------------------------------------------------


class TlsFront:
    """A loopback TLS-terminating proxy: HTTPS outside, the emulator's plain HTTP inside.

    Each connection is served by one thread that does the handshake and then
    shuttles bytes both ways with select(), so the SSL object is only ever
    used from one thread. Failed handshakes are recorded (the client refusing
    the certificate shows up here as an alert).
    """

    def __init__(self, upstream: tuple[str, int], context: ssl.SSLContext) -> None:
        self.upstream = upstream
        self.context = context
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.handshake_errors: list[str] = []
        self.connections = 0
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(10)
        try:
            tls = self.context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            self.handshake_errors.append(str(exc))
            raw.close()
            return
        self.connections += 1
        up = socket.create_connection(self.upstream, timeout=10)
        try:
            self._pump(tls, up)
        except OSError:
            pass
        finally:
            for sock in (tls, up):
                try:
                    sock.close()
                except OSError:
                    pass

    def _pump(self, tls: ssl.SSLSocket, up: socket.socket) -> None:
        while not self._stop.is_set():
            ready = [tls] if tls.pending() else select.select([tls, up], [], [], 1.0)[0]
            for sock in ready:
                data = sock.recv(65536)
                if not data:
                    return
                (up if sock is tls else tls).sendall(data)


@pytest.fixture
def tls(setup: Any, tmp_path: Path) -> Iterator[tuple[Any, Path]]:
    """A factory of Setups whose api.video destination is reached over HTTPS, and the CA file."""
    trustme = pytest.importorskip("trustme", reason="trustme (the test extra) makes the CA")
    ca = trustme.CA()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    ca_file = tmp_path / "test-ca.pem"
    ca.cert_pem.write_to_path(os.fspath(ca_file))
    fronts: list[TlsFront] = []

    def make(daemon: dict[str, Any] | None = None) -> tuple[Setup, TlsFront]:
        s = setup(
            folders=[{"name": "in", "settle_seconds": 0.1, "max_attempts": 3}],
            daemon={"retry_base_seconds": 0.2, "retry_max_seconds": 0.5, **(daemon or {})},
            destination={
                "type": "apivideo",
                "base_url": "{url}/apivideo",
                "upload_token": "env:TEST_APIVIDEO_TOKEN",
            },
        )
        front = TlsFront(_upstream(s), context)
        fronts.append(front)

        def edit(doc: dict[str, Any]) -> None:
            doc["destinations"]["lilt"]["base_url"] = f"https://127.0.0.1:{front.port}/apivideo"

        _edit_config(s, edit)
        return s, front

    yield make, ca_file
    for front in fronts:
        front.stop()


@pytest.mark.process
def test_f29_self_signed_server_is_refused_by_default(tls: tuple[Any, Path]) -> None:
    make, _ = tls
    s, front = make()
    s.drop("clip.mp4", b"must not leave over an unverified connection")
    s.start()
    wait_until(lambda: "refuses uploads" in s.log_text(), 20, what="the refusal")
    time.sleep(1.0)
    log = s.log_text()
    assert "certificate verify failed" in log
    assert "pausing it" in log  # every file would fail alike: the destination pauses
    assert front.handshake_errors and front.connections == 0  # no byte of HTTP got through
    assert not s.emulator.requests() and not s.emulator.uploads()
    (row,) = s.rows()
    assert row.state in ("queued", "retrying") and row.attempts <= 1  # attempts kept
    assert "certificate verify failed" in (row.last_error or "")
    assert (s.inbox() / "clip.mp4").exists() and not s.failed().exists()
    wait_until(
        lambda: "paused" in (s.status()["daemon"].get("status") or ""), 10, what="the pause in syncd status"
    )
    outputs = [s.cli("status").stdout, s.cli("status", "--json").stdout, s.cli("files", "--json").stdout]
    assert "certificate verify failed" in outputs[2]
    assert s.stop() == 0
    s.assert_no_secret(*outputs)


@pytest.mark.process
@pytest.mark.parametrize("trust", ["ca_bundle", "tls_verify_off"])
def test_f29_uploads_with_the_ca_bundle_or_with_verification_off(tls: tuple[Any, Path], trust: str) -> None:
    make, ca_file = tls
    daemon = {"ca_bundle": os.fspath(ca_file)} if trust == "ca_bundle" else {"tls_verify": False}
    s, front = make(daemon)
    data = os.urandom(100_000)
    s.drop("clip.mp4", data)
    check = s.cli("check")
    warning = "TLS certificate verification is OFF"
    if trust == "tls_verify_off":
        assert check.returncode == 0 and warning in check.stderr and "warning" in check.stderr
    else:
        assert check.returncode == 0 and warning not in check.stderr + check.stdout
    s.start()
    wait_until(lambda: s.all_done(1), 20, what="the upload over HTTPS")
    (up,) = s.emulator.uploads()
    assert up["sha256"] == sha(data) and up["times_received"] == 1
    assert front.connections >= 1 and not front.handshake_errors
    assert (s.archive() / "clip.mp4").read_bytes() == data
    if trust == "tls_verify_off":
        assert warning in s.log_text()  # the daemon says it at every start, too
    assert s.stop() == 0
    s.assert_no_secret(check.stdout, check.stderr)


# -- T8: secrets, every destination type --------------------------------------------------

PIPELINE = "5f3a9c0e7b1d4a2c8e6f0a1b"


@pytest.mark.process
def test_secrets_never_leak_with_every_destination_type(setup: Any) -> None:
    folders = [
        {
            "name": name,
            "destination": name,
            "labels": ["canary-run"],
            "category": "SOURCE",
            "settle_seconds": 0.1,
            "max_attempts": 20,
        }
        for name in ("lilt", "wriftai", "xvid", "apivideo")
    ]
    s = setup(
        folders=folders,
        daemon={"log_level": "debug", "retry_base_seconds": 0.1, "retry_max_seconds": 0.5},
        emulator={"wriftai_part_size": 64 * 1024},
    )  # several WriftAI parts, quickly
    url = s.emulator.url

    def edit(doc: dict[str, Any]) -> None:
        doc["destinations"].update(
            {
                "lilt": {**doc["destinations"]["lilt"], "multipart_threshold": 5 * MIB, "part_size": 5 * MIB},
                "wriftai": {
                    "type": "wriftai",
                    "base_url": f"{url}/wriftai/v1",
                    "token": "env:TEST_WRIFTAI_TOKEN",
                    "protocol": "uploads",
                },
                "xvid": {
                    "type": "xvid",
                    "base_url": f"{url}/xvid/v1",
                    "client_id": "canary-client",
                    "client_secret": "env:TEST_XVID_SECRET",
                    "pipeline_id": PIPELINE,
                    "chunk_size": 5 * MIB,
                    "object_key": "t8/{uuid}/{relpath}",
                },
                "apivideo": {
                    "type": "apivideo",
                    "base_url": f"{url}/apivideo",
                    "upload_token": "env:TEST_APIVIDEO_TOKEN",
                    "api_key": "env:TEST_APIVIDEO_KEY",
                    "chunk_size": 5 * MIB,
                },
            }
        )

    _edit_config(s, edit)
    s.emulator.set_faults(
        script=[  # error paths carry URLs and bodies: redaction under load
            {"op": "lilt.initiate", "status": 400},  # one file fails for good, with its reason
            {"op": "lilt.put_part", "status": 503},
            {"op": "lilt.put", "kind": "expire"},
            {"op": "wriftai.put_part", "kind": "reset"},
            {"op": "wriftai.initiate_multipart", "kind": "429", "retry_after": "date"},
            {"op": "xvid.post_chunk", "status": 500},
            {"op": "xvid.open", "kind": "429"},
            {"op": "apivideo.upload_source", "kind": "reset"},  # with api_key: /videos/{id}/source
            {"op": "apivideo.upload_source", "status": 502},
        ]
    )
    sizes = {"lilt": 6 * MIB, "wriftai": 200 * 1024, "xvid": 6 * MIB, "apivideo": 6 * MIB}
    for name, size in sizes.items():
        s.drop("small-1.bin", os.urandom(1000), name)
        s.drop("small-2.bin", os.urandom(2000), name)
        s.drop("large.bin", os.urandom(size), name)
    s.start()
    wait_until(
        lambda: s.all_done(11) and s.counts().get("failed") == 1,
        60,
        0.3,
        "every file done but the one refused",
    )
    outputs = []
    for args in (
        ("status",),
        ("status", "--json"),
        ("files", "--json"),
        ("check",),
        ("check", "--online"),
        ("explain", os.fspath(s.inbox("lilt") / "x")),
    ):
        out = s.cli(*args)
        # explain of a path that does not exist (and never did) exits 2, still saying why
        assert out.returncode == (2 if args[0] == "explain" else 0), (args, out.stderr)
        outputs += [out.stdout, out.stderr]
    assert s.stop() == 0
    done = [r for r in s.rows() if r.state == "done"]
    assert {r.destination for r in done} == {"lilt", "wriftai", "xvid", "apivideo"}
    hashes = {u["sha256"] for u in s.emulator.uploads()}
    for (folder, rel), data in s.dropped.items():
        rows = [r for r in s.rows() if r.relpath == rel and Path(r.folder).name == folder]
        if rows[-1].state == "done":
            assert sha(data) in hashes, (folder, rel)
    faults = [e for e in s.emulator.requests() if e.get("fault")]
    assert len(faults) >= 8, "the injected faults did not all fire"
    assert "HTTP Request:" in s.log_text()  # debug level really logged the requests
    s.assert_no_secret(*outputs)
    raw = b"".join(p.read_bytes() for p in s.ledger_path.parent.glob("ledger.sqlite3*"))
    for name, canary in CANARIES.items():
        assert canary.encode() not in raw, f"the {name} canary is in the ledger files"
    assert b"X-Emu-Signature" not in raw and b"Signature=" not in raw
