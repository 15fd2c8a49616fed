"""The emulator core: server, keep-alive, streaming, store, faults, log, CLI.

Everything runs against a real loopback server (``Emulator(tmp).start()``);
the Lilt single-PUT flow is the vehicle where a service is needed.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from syncd_emulator import Emulator, build_parser, main
from syncd_emulator.faults import FaultInjector
from syncd_emulator.store import Store

KEY = "demo-lilt-key"
REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def emu(tmp_path: Path) -> Iterator[Emulator]:
    with Emulator(tmp_path / "data") as emulator:
        yield emulator


@pytest.fixture
def api(emu: Emulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emu.url + "/lilt", auth=(KEY, KEY), timeout=10) as client:
        yield client


def initiate(api: httpx.Client, name: str = "a.txt", size: int | None = 5) -> dict[str, Any]:
    meta = {} if size is None else {"size": size}
    r = api.post("/v2/upload/s3/params", json={"filename": name, "type": "text/plain", "metadata": meta})
    assert r.status_code == 200, r.text
    params: dict[str, Any] = r.json()
    return params


def put(url: str, body: bytes = b"hello") -> httpx.Response:
    return httpx.put(url, content=body, headers={"Content-Type": "text/plain"}, timeout=10)


def upload(api: httpx.Client, body: bytes = b"hello") -> httpx.Response:
    return put(initiate(api, size=len(body))["url"], body)


# -- server ------------------------------------------------------------------


def test_start_sets_url_and_health_lists_services(emu: Emulator) -> None:
    assert emu.url.startswith("http://127.0.0.1:") and emu.port > 0
    r = httpx.get(emu.url + "/_emulator/health")
    assert r.json() == {
        "ok": True,
        "services": {
            "lilt": emu.url + "/lilt",
            "wriftai": emu.url + "/wriftai/v1",
            "apivideo": emu.url + "/apivideo",
            "xvid": emu.url + "/xvid/v1",
        },
    }


def test_unknown_paths_and_methods(emu: Emulator) -> None:
    r = httpx.get(emu.url + "/nope")
    assert r.status_code == 404 and "message" in r.json()
    r = httpx.get(emu.url + "/lilt/v3/whatever", auth=(KEY, KEY))
    assert r.status_code == 404 and "message" in r.json()
    r = httpx.patch(emu.url + "/lilt/v2/upload/s3/params", auth=(KEY, KEY))
    assert r.status_code == 405


def test_keep_alive_survives_early_rejection_of_a_body(emu: Emulator) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", emu.port, timeout=10)
    conn.request("GET", "/_emulator/health")
    assert conn.getresponse().read()
    sock = conn.sock
    # Rejected before the body is read (no signature): the body is drained, not left on the wire.
    conn.request("PUT", "/lilt/_storage/some/key", body=b"x" * 300_000)
    response = conn.getresponse()
    assert response.status == 403 and b"<Error>" in response.read()
    conn.request("GET", "/_emulator/health")
    assert json.loads(conn.getresponse().read())["ok"] is True
    assert conn.sock is sock  # the same connection all along
    conn.close()


def test_chunked_body_is_read_and_refused_without_content_length(emu: Emulator, api: httpx.Client) -> None:
    url = initiate(api, size=None)["url"]
    r = httpx.put(url, content=iter([b"hel", b"lo"]), headers={"Content-Type": "text/plain"})
    assert r.status_code == 403 and "<Code>MissingContentLength</Code>" in r.text
    assert emu.uploads() == []


def test_large_body_is_streamed_not_buffered(emu: Emulator, api: httpx.Client, tmp_path: Path) -> None:
    size = 48 * 1024 * 1024
    src = tmp_path / "big.bin"
    with open(src, "wb") as f:
        f.truncate(size)
    url = initiate(api, "big.bin", size)["url"]
    tracemalloc.start()
    try:
        with open(src, "rb") as f:
            r = httpx.put(url, content=f, headers={"Content-Type": "text/plain"}, timeout=30)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert r.status_code == 200
    assert peak < 12 * 1024 * 1024, f"peak {peak} bytes: the body was held in memory"
    (row,) = emu.uploads()
    assert row["size"] == size and os.path.getsize(row["path"]) == size


def test_stop_closes_open_connections_and_threads(tmp_path: Path) -> None:
    emulator = Emulator(tmp_path).start()
    client = httpx.Client(base_url=emulator.url)
    assert client.get("/_emulator/health").status_code == 200  # a kept-alive connection
    emulator.stop()
    deadline = time.monotonic() + 5
    while any(t.name == "emulator-conn" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(t.name in ("emulator", "emulator-conn") for t in threading.enumerate())
    with pytest.raises(httpx.TransportError):
        client.get("/_emulator/health")
    client.close()
    emulator.stop()  # idempotent


def test_stop_cuts_a_slow_fault_short(tmp_path: Path) -> None:
    emulator = Emulator(tmp_path).start()
    emulator.set_faults(script=[{"op": "*", "kind": "slow", "delay": 60}])

    def request() -> None:
        with httpx.Client(base_url=emulator.url + "/lilt", auth=(KEY, KEY), timeout=30) as api:
            try:
                api.post("/v2/upload/s3/params", json={"filename": "a.txt", "type": "text/plain"})
            except httpx.TransportError:
                pass  # the connection closed under it: the emulator stopped

    caller = threading.Thread(target=request, name="slow-caller")
    caller.start()
    deadline = time.monotonic() + 10
    while emulator.faults.snapshot()["script"] and time.monotonic() < deadline:
        time.sleep(0.02)  # until the fault is taken: the request is in its pause
    started = time.monotonic()
    emulator.stop()
    caller.join(10)
    assert time.monotonic() - started < 4, "stop() waited for the slow fault"
    assert not caller.is_alive()
    assert not any(t.name == "emulator-conn" for t in threading.enumerate())


# -- store ---------------------------------------------------------------------


def test_store_put_counts_repeats_and_reloads(tmp_path: Path) -> None:
    store = Store(tmp_path)
    for body in (b"one", b"two!"):
        src = store.temp_path()
        src.write_bytes(body)
        meta = store.put(
            "svc",
            "k/1",
            src,
            size=len(body),
            sha256="x",
            filename="f.txt",
            labels=["a"],
            category="SOURCE",
            extra={"upload_id": 7, "size": "ignored"},
        )
    assert meta["times_received"] == 2 and meta["size"] == 4 and meta["upload_id"] == 7
    assert Path(meta["path"]).read_bytes() == b"two!"
    (tmp_path / "tmp" / "leftover").write_bytes(b"half a body")
    again = Store(tmp_path)
    assert again.uploads() == store.uploads()
    assert list((tmp_path / "tmp").iterdir()) == []


def test_listing_and_persistence_across_restart(tmp_path: Path) -> None:
    with (
        Emulator(tmp_path) as first,
        httpx.Client(base_url=first.url + "/lilt", auth=(KEY, KEY)) as api,
    ):
        assert upload(api, b"persist me").status_code == 200
        listed = httpx.get(first.url + "/_emulator/uploads").json()["uploads"]
    assert len(listed) == 1
    row = listed[0]
    for field in (
        "service",
        "filename",
        "key",
        "size",
        "sha256",
        "labels",
        "category",
        "uuid",
        "content_type",
        "times_received",
        "created_at",
    ):
        assert field in row
    assert (row["service"], row["filename"], row["size"], row["times_received"]) == (
        "lilt",
        "a.txt",
        10,
        1,
    )
    with Emulator(tmp_path) as second:
        again = httpx.get(second.url + "/_emulator/uploads").json()["uploads"]
        assert again == second.uploads() == listed
        with httpx.Client(base_url=second.url + "/lilt", auth=(KEY, KEY)) as api:
            record = api.get(f"/v2/upload/{row['upload_id']}").json()
    assert record["filename"] == "a.txt" and record["status"] == "complete"


# -- faults --------------------------------------------------------------------


def test_scripted_faults_are_consumed_in_order(emu: Emulator, api: httpx.Client) -> None:
    emu.set_faults(
        script=[
            {"op": "lilt.put", "status": 503, "count": 2},
            {"op": "lilt.initiate", "status": 500},
        ]
    )
    r = api.post("/v2/upload/s3/params", json={"filename": "a.txt", "type": "text/plain"})
    assert r.status_code == 500 and "message" in r.json()
    url = initiate(api, size=None)["url"]
    first, second, third = put(url), put(url), put(url)
    assert (first.status_code, second.status_code, third.status_code) == (503, 503, 200)
    assert "<Error><Code>SlowDown</Code>" in first.text  # storage errors are S3 XML
    faults = [(e["op"], e.get("fault"), e["status"]) for e in emu.requests()]
    assert faults == [
        ("lilt.initiate", "500", 500),
        ("lilt.initiate", None, 200),
        ("lilt.put", "503", 503),
        ("lilt.put", "503", 503),
        ("lilt.put", None, 200),
    ]
    (row,) = emu.uploads()
    assert row["times_received"] == 1  # the faulted PUTs did not happen


def test_faults_over_http_and_clear(emu: Emulator, api: httpx.Client) -> None:
    r = httpx.post(
        emu.url + "/_emulator/faults",
        json={"fail_rate": 1.0, "kinds": ["503"], "script": [{"op": "lilt.list", "status": 429}]},
    )
    assert r.status_code == 200 and r.json()["fail_rate"] == 1.0
    assert api.get("/v2/upload").status_code == 429
    assert api.get("/v2/upload").status_code == 503
    assert httpx.get(emu.url + "/_emulator/uploads").status_code == 200  # never faulted
    assert httpx.delete(emu.url + "/_emulator/faults").json()["fail_rate"] == 0.0
    assert api.get("/v2/upload").status_code == 200
    bad = httpx.post(emu.url + "/_emulator/faults", json={"kinds": ["teapot"]})
    assert bad.status_code == 400 and "teapot" in bad.json()["message"]
    assert httpx.post(emu.url + "/_emulator/faults", json={"fail_rate": 2}).status_code == 400


def test_random_faults_are_reproducible_with_a_seed(emu: Emulator, api: httpx.Client) -> None:
    def run() -> list[int]:
        emu.set_faults(fail_rate=0.5, kinds=["500", "503", "429"], seed=42)
        return [api.get("/v2/upload").status_code for _ in range(30)]

    first, second = run(), run()
    assert first == second
    assert {500, 503, 429, 200} <= set(first)


def test_reset_is_a_transport_error_and_stores_nothing(emu: Emulator, api: httpx.Client) -> None:
    emu.set_faults(script=[{"op": "lilt.put", "kind": "reset"}])
    url = initiate(api, size=200_000)["url"]
    with pytest.raises(httpx.TransportError):
        put(url, b"z" * 200_000)
    assert emu.uploads() == []
    assert put(url, b"z" * 200_000).status_code == 200  # the URL still works afterwards
    entry = [e for e in emu.requests() if e["op"] == "lilt.put"][0]
    assert entry["fault"] == "reset" and entry["status"] == 0


def test_429_retry_after_seconds_and_date(emu: Emulator, api: httpx.Client) -> None:
    emu.set_faults(
        script=[
            {"op": "lilt.list", "status": 429},
            {"op": "lilt.list", "status": 429, "retry_after": 7},
            {"op": "lilt.list", "status": 429, "retry_after": "date"},
        ]
    )
    assert api.get("/v2/upload").headers["Retry-After"] == "1"
    assert api.get("/v2/upload").headers["Retry-After"] == "7"
    value = api.get("/v2/upload").headers["Retry-After"]
    ahead = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
    assert 0.0 < ahead <= 2.0


def test_expire_and_slow_faults(emu: Emulator, api: httpx.Client) -> None:
    emu.set_faults(
        script=[
            {"op": "lilt.put", "kind": "expire"},
            {"op": "lilt.put", "kind": "slow", "delay": 0.3},
        ]
    )
    url = initiate(api, size=None)["url"]
    r = put(url)
    assert r.status_code == 403 and "Request has expired" in r.text
    started = time.monotonic()
    assert put(url).status_code == 200
    assert time.monotonic() - started >= 0.3
    assert [e.get("fault") for e in emu.requests() if e["op"] == "lilt.put"] == ["expire", "slow"]


def test_fault_script_validation() -> None:
    faults = FaultInjector()
    for bad in (
        [{"status": 200}],
        [{"op": "x"}],
        [{"kind": "melt"}],
        [{"status": 429, "retry_after": "soon"}],
        [{"kind": "500", "count": 0}],
        "not a list",
    ):
        with pytest.raises(ValueError):
            faults.configure(script=bad)
    faults.configure(script=[{"status": 502}])
    fault = faults.decide("anything")
    assert fault is not None and fault.status == 502 and faults.decide("anything") is None


# -- request log -----------------------------------------------------------------


def test_request_log_fields_counts_and_reset(emu: Emulator, api: httpx.Client) -> None:
    assert upload(api).status_code == 200
    log = httpx.get(emu.url + "/_emulator/requests").json()["requests"]
    assert [e["op"] for e in log] == ["lilt.initiate", "lilt.put"]
    put_entry = log[1]
    assert set(put_entry) >= {"service", "op", "method", "path", "status", "time", "bytes"}
    assert (put_entry["method"], put_entry["status"], put_entry["bytes"]) == ("PUT", 200, 5)
    assert "?" not in put_entry["path"] and "Signature" not in put_entry["path"]
    assert httpx.post(emu.url + "/_emulator/reset-log").status_code == 200
    assert emu.requests() == []
    assert upload(api).status_code == 200
    emu.reset_log()
    assert emu.requests() == []


# -- command line ------------------------------------------------------------------


def test_parser_defaults() -> None:
    args = build_parser().parse_args([])
    assert args.listen == ("127.0.0.1", 8790) and args.data == "./emulator-data"
    assert (args.lilt_key, args.xvid_client) == ("demo-lilt-key", "demo-client:demo-secret")
    assert args.quiet is True and args.fail_rate == 0.0 and args.url_ttl == 900.0
    with pytest.raises(SystemExit):
        main(["--fail-rate", "3"])


@pytest.mark.process
def test_main_serves_in_a_subprocess_and_masks_secrets(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "syncd_emulator",
            "--listen",
            "127.0.0.1:0",
            "--data",
            str(tmp_path),
            "--verbose",
            "--lilt-key",
            "sekret-key-123",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        base = first.split(" on ")[1].split()[0]
        lines = [proc.stdout.readline() for _ in range(2)]
        assert f"base_url = {base}/lilt" in lines[0]
        r = httpx.post(
            base + "/lilt/v2/upload/s3/params?key=sekret-key-123",
            json={"filename": "a.txt", "type": "text/plain"},
        )
        assert r.status_code == 200
        assert put(r.json()["url"]).status_code == 200
        assert httpx.get(base + "/_emulator/uploads").json()["uploads"][0]["filename"] == "a.txt"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0
    signature = r.json()["url"].split("X-Emu-Signature=")[1]
    assert "lilt.initiate" in err and "lilt.put" in err
    assert "sekret-key-123" not in err + out and signature not in err + out
