"""Progress of uploads in flight: bytes sent, rate and ETA, from the uploader to `syncd status`.

Units: the rate/ETA meter, the resumed-parts arithmetic, the text; the
uploader's own accounting (a destination that reads the file in steps); the
metrics gauges. End to end: a 30 MiB upload through a bandwidth-limited proxy
shows its progress in `syncd status`, `syncd files` and the metrics while it
runs, and nothing once it is done.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import tomllib
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
import tomli_w

from syncd import progress
from syncd.destinations.base import Capabilities, Receipt, Source, UploadItem
from syncd.ledger import Ledger
from syncd.metrics import Metrics
from syncd.uploader import Uploader
from tests.conftest import note_stat
from tests.faultproxy import FaultProxy
from tests.harness import Setup, wait_until

MiB = 1024 * 1024


# -- units -------------------------------------------------------------------------------------


def test_resumed_bytes_counts_confirmed_parts() -> None:
    resume = {"v": 1, "part_size": 8 * MiB, "size": 30 * MiB, "parts": {"1": "a", "2": "b"}}
    assert progress.resumed_bytes(resume, 30 * MiB) == 16 * MiB
    last = {**resume, "parts": {"4": "d"}}  # the short last part
    assert progress.resumed_bytes(last, 30 * MiB) == 6 * MiB
    assert progress.resumed_bytes(None, 10) == 0
    assert progress.resumed_bytes({"parts": {"1": "x"}}, 10) == 0  # no part size: unknown
    assert progress.resumed_bytes({"parts": ["1"], "part_size": 4}, 10) == 0
    assert progress.resumed_bytes({"parts": {"1": 1, "x": 2, "9": 3}, "part_size": 4}, 10) == 4


def test_meter_rate_eta_and_forgetting() -> None:
    meter = progress.ProgressMeter(window=10.0)
    f = {
        "id": 7,
        "path": "/in/a",
        "destination": "d",
        "total": 100 * MiB,
        "sent": 0,
        "resumed": 0,
        "started_at": 1000.0,
    }
    (first,) = meter.update([f], 1000.0)
    assert first["rate"] is None and first["eta_seconds"] is None and first["percent"] == 0.0
    (later,) = meter.update([{**f, "sent": 20 * MiB}], 1002.0)
    assert later["rate"] == pytest.approx(10 * MiB) and later["eta_seconds"] == pytest.approx(8.0)
    for t in range(1003, 1020):  # the window slides: the rate follows the last 10 s
        (later,) = meter.update([{**f, "sent": 20 * MiB + (t - 1002) * MiB}], float(t))
    assert later["rate"] == pytest.approx(MiB)
    (again,) = meter.update([{**f, "sent": MiB}], 1021.0)  # a new attempt starts over
    assert again["rate"] is not None  # from started_at, not from a negative difference
    assert meter.update([], 1022.0) == [] and meter._samples == {}


def test_progress_text() -> None:
    assert progress.size_text(512) == "512 B" and progress.size_text(30 * MiB) == "30.0 MiB"
    assert progress.duration_text(9.4) == "9s" and progress.duration_text(185) == "3m05s"
    assert progress.duration_text(7800) == "2h10m"
    p = {"sent": 12 * MiB, "total": 30 * MiB, "percent": 40.0, "rate": 3 * MiB, "eta_seconds": 6}
    assert progress.line(p) == "12.0 MiB of 30.0 MiB (40%), 3.0 MiB/s, ETA 6s"
    assert progress.line({**p, "rate": None}) == "12.0 MiB of 30.0 MiB (40%)"


class _SteppedDestination:
    """Reads the file one block per step, waiting for the test between steps."""

    TYPE: ClassVar[str] = "stepped"
    CAPABILITIES: ClassVar[Capabilities] = Capabilities(labels=None, category=None)
    Options: ClassVar[type] = object

    def __init__(self) -> None:
        self.name = "d"
        self.step = threading.Semaphore(0)
        self.read = threading.Event()

    def upload(self, item: UploadItem, source: Source, resume: Any, checkpoint: Any) -> Receipt:
        for _ in source.iter_range(0, source.size, block=MiB):
            self.read.set()
            self.step.acquire(timeout=10)
        return Receipt(remote_id="r-1")

    def abort(self, resume: Any) -> None:
        pass

    def probe(self) -> str:
        return "ok"

    def close(self) -> None:
        pass


def test_uploader_reports_bytes_read_per_file(tmp_path: Path) -> None:
    from syncd import config as configmod

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "f.bin").write_bytes(os.urandom(3 * MiB))
    cfg = configmod.loads(
        f'[destinations.d]\ntype = "lilt"\napi_key = "k"\n[[folders]]\n'
        f'path = "{inbox}"\ndestination = "d"\nafter_upload = "keep"\n',
        base_dir=tmp_path,
    )
    folder = cfg.folders[0]
    ledger = Ledger.open(tmp_path / "state" / "ledger.sqlite3")
    ledger.observe(os.fspath(inbox), ["f.bin"], destination="d")
    row = ledger.active_for_path(os.fspath(inbox), "f.bin")
    assert row is not None
    st = os.stat(inbox / "f.bin")
    note_stat(ledger, row.id, size=st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino)
    ledger.promote(row.id)
    dest = _SteppedDestination()
    metrics = Metrics()
    up = Uploader(ledger, lambda: {"d": dest}, lambda: {os.fspath(inbox): folder}, metrics=metrics)
    metrics.track_progress(up.progress)
    up.resize(1)
    try:
        assert dest.read.wait(10)
        (p,) = wait_until(up.progress, 10)
        assert (p["id"], p["total"], p["sent"], p["resumed"]) == (row.id, 3 * MiB, MiB, 0)
        text = _scrape(metrics)
        assert _value(text, "syncd_upload_bytes_in_flight") == 3 * MiB
        assert _value(text, "syncd_upload_sent_bytes_in_flight") == MiB
        dest.step.release()
        wait_until(lambda: up.progress() and up.progress()[0]["sent"] == 2 * MiB, 10)
        dest.step.release()
        dest.step.release()
        wait_until(lambda: up.progress() == [], 10, what="the upload to end")
        assert _value(_scrape(metrics), "syncd_upload_bytes_in_flight") == 0
    finally:
        up.stop_claiming()
        up.join(5)
        ledger.close()


def _scrape(metrics: Metrics) -> str:
    from prometheus_client.exposition import generate_latest

    return generate_latest(metrics.registry).decode()


def _value(text: str, name: str) -> float:
    m = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert m, f"{name} not in the metrics"
    return float(m.group(1))


# -- end to end ---------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.process
@pytest.mark.timeout(120)
def test_a_30_mib_upload_shows_its_progress(tmp_path: Path) -> None:
    port = _free_port()
    s = Setup(tmp_path, daemon={"workers": 1, "metrics_listen": f"127.0.0.1:{port}"})
    upstream = ("127.0.0.1", int(s.emulator.url.rsplit(":", 1)[1]))
    try:
        with FaultProxy(upstream) as proxy:
            doc = tomllib.loads(s.config.read_text())
            doc["destinations"]["lilt"]["base_url"] = proxy.url + "/lilt"
            s.config.write_text(tomli_w.dumps(doc))
            proxy.set(bandwidth=4_000_000)  # ~8 s for 30 MiB: time to look at it twice
            (s.inbox() / ".foo.swp").write_bytes(b"an editor's swap file")
            s.start()
            s.wait_started()
            s.drop("big.bin", os.urandom(30 * MiB))

            def moving(after: int = 0) -> tuple[dict[str, Any], dict[str, Any]] | None:
                data = s.status()
                for u in data["uploading"]:
                    p = u["progress"]
                    if p and after < p["sent"] < p["total"] and p["rate"]:
                        return data, u
                return None

            data, u = wait_until(moving, 30, 0.1, "progress of the upload in `syncd status`")
            p = u["progress"]
            assert u["size"] == p["total"] == 30 * MiB and u["path"].endswith("/big.bin")
            assert p["eta_seconds"] is not None and p["eta_seconds"] > 0
            data, u = wait_until(lambda: moving(p["sent"]), 30, 0.1, "more bytes sent")
            text = s.cli("status").stdout
            assert re.search(
                r"#\d+ '.*big\.bin' -> lilt: [\d.]+ MiB of 30\.0 MiB \(\d+%\), "
                r"[\d.]+ [KM]iB/s, ETA \w+",
                text,
            ), text
            files = s.cli("files", "--state", "uploading").stdout
            assert "of 30.0 MiB" in files
            metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
            if "syncd_uploads_in_flight 1.0" in metrics:  # still sending when scraped
                assert _value(metrics, "syncd_upload_bytes_in_flight") == 30 * MiB
                assert 0 < _value(metrics, "syncd_upload_sent_bytes_in_flight") <= 30 * MiB
            (folder,) = data["folders"]
            assert folder["ignored"]["count"] == 1
            assert folder["ignored"]["examples"] == [".foo.swp"]
            wait_until(lambda: s.all_done(1), 60, what="the upload to finish")
            assert wait_until(lambda: s.status()["uploading"] == [], 10)
            # the config on disk breaks: status still answers, from what the daemon applied
            good = s.config.read_text()
            s.config.write_text(good.replace("workers = 1", "workers = 0"))
            broken = s.cli("status")
            assert broken.returncode == 0, broken.stderr
            assert "daemon.workers: must be >= 1" in broken.stderr and "last applied" in broken.stderr
            assert f"'{s.inbox()}' -> lilt: 1 done" in broken.stdout
            s.config.write_text(good)
            assert s.stop() == 0
        s.invariants()
        s.assert_no_secret()
    finally:
        s.close()
