"""Bandwidth limits per destination (syncd/bandwidth.py): config, bucket, schedule, uploads."""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from syncd.bandwidth import (
    MIN_BLOCK,
    Bandwidth,
    BandwidthOptions,
    Limit,
    TokenBucket,
    parse_entry,
    parse_rate,
)
from syncd.config import loads
from syncd.destinations import REGISTRY
from syncd.destinations.base import READ_BLOCK
from syncd.errors import ConfigError
from syncd.ledger import Ledger
from syncd.uploader import Uploader
from tests.conftest import FakeClock, make_folder, queue_file
from tests.harness import wait_until
from tests.unit.test_uploader import FakeDestination

KiB, MiB = 1024, 1024 * 1024
ROOT = Path(__file__).resolve().parents[2]


def at(hour: int, minute: int, second: int = 0) -> float:
    """A Unix time at this local time of day (the schedule is in local time)."""
    return time.mktime((2026, 3, 2, hour, minute, second, 0, 0, -1))


# -- parsing and config ------------------------------------------------------------------------


def test_rates_and_entries() -> None:
    assert parse_rate("512 KiB") == 512 * KiB and parse_rate("10MB") == 10_000_000
    assert parse_rate("off") == parse_rate("0") == parse_rate("OFF") == 0
    assert parse_entry("08:00,512 KiB") == (480, 512 * KiB)
    assert parse_entry(" 8:05 , off ") == (485, 0)
    for bad, why in (
        ("25:00,1", "not a time of day"),
        ("08:60,1", "not a time of day"),
        ("08:00", "expected"),
        ("08:00,fast", "rate 'fast'"),
        ("08:00,1.3 B", "whole number"),
    ):
        with pytest.raises(ValueError, match=why):
            parse_entry(bad)


def test_schedule_wraps_around_midnight() -> None:
    limit = Limit(schedule=((8 * 60, 512 * KiB), (12 * 60, 10 * MiB), (18 * 60, 0)))
    assert limit.rate_at(0) == 0  # before 08:00: 18:00's "off" of the day before
    assert limit.rate_at(7 * 60 + 59) == 0
    assert limit.rate_at(8 * 60) == 512 * KiB
    assert limit.rate_at(11 * 60 + 59) == 512 * KiB
    assert limit.rate_at(12 * 60) == 10 * MiB
    assert limit.rate_at(18 * 60) == 0 and limit.rate_at(23 * 60 + 59) == 0
    assert limit.describe() == "08:00 512 KiB/s, 12:00 10 MiB/s, 18:00 off"
    assert Limit(3 * MiB).describe() == "3 MiB/s" and not Limit().active


def _load(tmp_path: Path, dest: str, kind: str = "lilt") -> Any:
    keys = {
        "lilt": 'api_key = "k-0123456789"',
        "wriftai": 'token = "t-0123456789"',
        "apivideo": 'upload_token = "to0123456789"',
        "xvid": 'client_id = "c"\nclient_secret = "s-0123456789"\npipeline_id = "p"',
    }
    text = (
        f'[destinations.d]\ntype = "{kind}"\n{keys[kind]}\n{dest}\n'
        '[[folders]]\npath = "in"\ndestination = "d"\n'
    )
    return loads(text, base_dir=tmp_path)


@pytest.mark.parametrize("kind", sorted(REGISTRY))
def test_every_destination_type_takes_the_keys(tmp_path: Path, kind: str) -> None:
    cfg = _load(tmp_path, 'bwlimit = "10 MiB"', kind)
    assert cfg.destinations["d"].bandwidth == Limit(10 * MiB)
    cfg = _load(tmp_path, 'bwlimit_schedule = ["18:00,off", "08:00,512 KiB"]', kind)
    assert cfg.destinations["d"].bandwidth == Limit(schedule=((480, 512 * KiB), (1080, 0)))
    assert _load(tmp_path, "", kind).destinations["d"].bandwidth == Limit()


def test_config_errors_name_the_key_and_value(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, 'bwlimit = "10 Mbit"\nbwlimt = 5')
    assert sorted(str(p) for p in err.value.problems) == [
        "destinations.d.bwlimit: unknown unit 'Mbit' (valid: B, KB, MB, GB, TB, KiB, MiB, GiB, "
        "TiB), got '10 Mbit'",
        "destinations.d.bwlimt: unknown key (did you mean 'bwlimit'?)",
    ]
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, "bwlimit = -1")
    assert [str(p) for p in err.value.problems] == ["destinations.d.bwlimit: must be >= 0 bytes, got -1"]
    with pytest.raises(ConfigError) as err:
        _load(
            tmp_path,
            'bwlimit = "1 MiB"\nbwlimit_schedule = ["08:00,1 MiB", "8:00,off", "24:00,1", "noon,1", ""]',
        )
    assert [str(p) for p in err.value.problems] == [
        "destinations.d.bwlimit_schedule[4]: must not be empty, got ''",
    ]
    with pytest.raises(ConfigError) as err:
        _load(
            tmp_path, 'bwlimit = "1 MiB"\nbwlimit_schedule = ["08:00,1 MiB", "8:00,off", "24:00,1", "noon,1"]'
        )
    assert [str(p) for p in err.value.problems] == [
        "destinations.d.bwlimit_schedule[1]: 8:00 appears twice in the schedule, got '8:00,off'",
        "destinations.d.bwlimit_schedule[2]: 24:00 is not a time of day (00:00 to 23:59), got '24:00,1'",
        'destinations.d.bwlimit_schedule[3]: expected "HH:MM,RATE" like "08:00,512 KiB" or '
        "\"18:00,off\", got 'noon,1'",
        "destinations.d.bwlimit: set either bwlimit or bwlimit_schedule, not both "
        "(bwlimit_schedule decides the rate at every time of day), got '1 MiB'",
    ]


def test_the_keys_are_documented() -> None:
    from syncd._options import field_docs

    example = (ROOT / "config.example.toml").read_text()
    docs = (ROOT / "docs" / "configuration.md").read_text()
    for d in field_docs(BandwidthOptions):
        assert f"`{d.key}`" in docs
        assert f"\n{d.key} = " in example or f"\n# {d.key} = " in example


# -- the bucket ---------------------------------------------------------------------------------


def test_bucket_spends_the_saved_second_then_paces(clock: FakeClock) -> None:
    bucket = TokenBucket(100 * KiB, clock=clock)
    t0 = clock()
    assert bucket.reserve(100 * KiB) == t0  # one second's worth saved up
    assert bucket.reserve(50 * KiB) == pytest.approx(t0 + 0.5)
    # several callers at once queue up behind each other
    assert bucket.reserve(50 * KiB) == pytest.approx(t0 + 1.0)
    assert bucket.reserve(100 * KiB) == pytest.approx(t0 + 2.0)
    clock.advance(2.0)
    assert bucket.reserve(10 * KiB) == pytest.approx(clock() + 0.1, abs=1e-3)
    clock.advance(60)  # idle: at most one second is saved, not a minute
    assert bucket.reserve(100 * KiB) == clock()
    assert bucket.reserve(100 * KiB) == pytest.approx(clock() + 1.0, abs=1e-3)


def test_bucket_rate_changes(clock: FakeClock) -> None:
    bucket = TokenBucket(100 * KiB, clock=clock)
    bucket.reserve(300 * KiB)  # 2 s in debt
    bucket.set_rate(0)  # off: the debt is forgiven
    assert bucket.reserve(10 * MiB) == clock()
    bucket.set_rate(200 * KiB)  # on again, starting empty
    assert bucket.reserve(100 * KiB) == pytest.approx(clock() + 0.5, abs=1e-3)


def test_a_lower_rate_does_not_charge_the_old_rates_debt_at_the_new_one(clock: FakeClock) -> None:
    """8 MiB sent ahead at 10 MiB/s (0.8 s of debt), then a schedule switches to 64 KiB/s:
    the next block waited 128 s, every upload of the destination idle meanwhile."""
    bucket = TokenBucket(10 * MiB, clock=clock)
    bucket.reserve(18 * MiB)  # 1 s of burst, then 0.8 s of debt
    bucket.set_rate(64 * KiB)
    assert bucket.reserve(16 * KiB) == pytest.approx(clock() + 0.8 + 0.25, abs=1e-3)


def test_schedule_switches_at_the_given_time() -> None:
    wall = [at(7, 59, 59)]
    mono = [1000.0]
    bw = Bandwidth(clock=lambda: mono[0], wall=lambda: wall[0])
    bw.configure({"d": Limit(schedule=((480, 64 * KiB), (1080, 0)))})
    throttle = bw.throttle("d")
    assert throttle is not None
    assert bw.rate("d") == 0 and throttle.block == READ_BLOCK
    throttle(10 * MiB)  # off: returns at once
    wall[0] = at(8, 0)
    assert bw.rate("d") == 64 * KiB
    assert throttle.block == MIN_BLOCK  # 64 KiB / 8, at least 16 KiB
    wall[0] = at(17, 59, 59)
    assert bw.rate("d") == 64 * KiB
    wall[0] = at(18, 0)
    assert bw.rate("d") == 0
    # reload: the same bucket, a new limit
    bw.configure({"d": Limit(8 * MiB)})
    assert bw.rate("d") == 8 * MiB and throttle.block == READ_BLOCK
    bw.configure({})
    assert bw.throttle("d") is None and bw.rate("d") == 0


def test_a_waiting_reader_stops_when_cancelled_or_when_the_limit_goes() -> None:
    bw = Bandwidth()
    bw.configure({"d": Limit(KiB)})
    stop = threading.Event()
    throttle = bw.throttle("d", stop)
    assert throttle is not None
    throttle(KiB)  # the saved second
    threading.Timer(0.3, stop.set).start()
    t0 = time.monotonic()
    throttle(100 * KiB)  # would take 100 s
    assert time.monotonic() - t0 < 2
    other = bw.throttle("d")
    assert other is not None
    threading.Timer(0.3, lambda: bw.configure({"d": Limit()})).start()
    t0 = time.monotonic()
    other(100 * KiB)
    assert time.monotonic() - t0 < 2


@pytest.mark.slow
def test_one_bucket_for_all_threads() -> None:
    bw = Bandwidth()
    rate = 512 * KiB
    bw.configure({"d": Limit(rate)})
    total = 0
    lock = threading.Lock()

    def reader() -> None:
        nonlocal total
        throttle = bw.throttle("d")
        assert throttle is not None
        for _ in range(16):
            throttle(16 * KiB)
            with lock:
                total += 16 * KiB

    threads = [threading.Thread(target=reader) for _ in range(4)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    assert total == 1 * MiB
    assert elapsed >= 0.9 * (total - rate) / rate  # all but the saved second paced


# -- uploads ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_uploader_paces_the_reads_and_cancels_promptly(tmp_path: Path, clock: FakeClock) -> None:
    ledger = Ledger.open(tmp_path / "state" / "ledger.sqlite3", clock=clock)
    folder = make_folder(tmp_path)
    dest = FakeDestination()
    up = Uploader(
        ledger,
        lambda: {"dest": dest},
        lambda: {os.fspath(folder.path): folder},
        clock=clock,
        rng=random.Random(1),
    )
    up.bandwidth.configure({"dest": Limit(128 * KiB)})

    def drop(rel: str, size: int) -> Any:
        queue_file(ledger, folder, rel, os.urandom(size))
        claimed = ledger.claim_next(["dest"])
        assert claimed is not None
        return claimed

    row = drop("a.bin", 384 * KiB)
    t0 = time.monotonic()
    assert up.process(row) == "done"
    elapsed = time.monotonic() - t0
    assert elapsed >= 0.9 * (384 - 128) / 128  # 2 s: all but the saved second paced
    assert dest.received[0][1] == (tmp_path / "archive" / "inbox" / "a.bin").read_bytes()

    row = drop("b.bin", 10 * MiB)  # 80 s at this rate
    threading.Timer(0.5, up.cancel).start()
    t0 = time.monotonic()
    assert up.process(row) == "queued"
    assert time.monotonic() - t0 < 3
    ledger.close()


@pytest.mark.process
def test_daemon_upload_rate_stays_under_the_limit(make_setup: Any) -> None:
    """Real daemon, real emulator: a multipart file sent in parallel parts and two
    single-request files on another worker share one limit."""
    rate = 4 * MiB
    s = make_setup(
        daemon={"workers": 2},
        lilt={"bwlimit": "4 MiB", "multipart_threshold": "5 MiB", "part_size": "5 MiB", "parallel_parts": 3},
    )
    sizes = {"big.bin": 12 * MiB, "a.bin": MiB, "b.bin": MiB}
    for name, size in sizes.items():
        s.drop(name, os.urandom(size))
    s.start()
    wait_until(lambda: s.all_done(3), 60, 0.1, "uploads")
    rows = s.rows()
    began = min(r.queued_at for r in rows if r.queued_at is not None)
    ended = max(r.uploaded_at for r in rows if r.uploaded_at is not None)
    total = sum(sizes.values())
    elapsed = ended - began
    # all but the saved second goes at the rate, whatever the parallelism
    assert elapsed >= 0.9 * (total - rate) / rate, f"{total / elapsed / MiB:.1f} MiB/s"
    assert elapsed < total / rate + 15  # and the limit does not stall it
    assert "destination 'lilt': bandwidth limit 4 MiB/s" in s.log_text()
    # `syncd status` shows the limit in force (from the daemon's heartbeat)
    wait_until(
        lambda: (s.status()["destinations"][0]["bwlimit"] or {}).get("rate") == rate, 15, what="status"
    )
    assert "  lilt (lilt): up; bwlimit 4 MiB/s (now 4 MiB/s)" in s.cli("status", check=True).stdout
    assert s.stop() == 0
    s.invariants()
