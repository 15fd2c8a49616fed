"""The emulator's dispatcher and its two shells: the in-process httpx transport and the socket.

The same requests, faults and log entries through both: what a test sees in
process is what a client sees on the wire.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from syncd.http import make_client
from syncd_emulator import IN_PROCESS_URL, Emulator, EmulatorTransport, Request, Reset, Response
from syncd_emulator.messages import BytesBody, headers_of

KEY = "demo-lilt-key"
REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def emu(tmp_path: Path) -> Emulator:
    return Emulator(tmp_path / "data")


@pytest.fixture
def client(emu: Emulator) -> Iterator[httpx.Client]:
    with httpx.Client(transport=EmulatorTransport(emu)) as c:
        yield c


def initiate(client: httpx.Client, base: str, size: int | None = 5) -> str:
    meta = {} if size is None else {"size": size}
    r = client.post(
        base + "/lilt/v2/upload/s3/params",
        auth=(KEY, KEY),
        json={"filename": "a.txt", "type": "text/plain", "metadata": meta},
    )
    assert r.status_code == 200, r.text
    return str(r.json()["url"])


def put(client: httpx.Client, url: str, content: Any, **headers: str) -> httpx.Response:
    return client.put(url, content=content, headers={"Content-Type": "text/plain", **headers})


def test_an_unstarted_emulator_answers_in_process_only(emu: Emulator, client: httpx.Client) -> None:
    assert emu.url == IN_PROCESS_URL and emu.port == 0
    health = client.get(emu.url + "/_emulator/health").json()
    assert health["services"]["lilt"] == IN_PROCESS_URL + "/lilt"
    with pytest.raises(httpx.ConnectError):  # .invalid never resolves: no socket by mistake
        httpx.get(emu.url + "/_emulator/health", timeout=5)


def test_urls_handed_out_come_back_to_the_emulator_whatever_the_host(
    emu: Emulator, client: httpx.Client
) -> None:
    url = initiate(client, "http://lilt.example:8443")
    assert url.startswith("http://lilt.example:8443/lilt/_storage/")
    r = put(client, url, b"hello")
    assert r.status_code == 200 and r.headers["ETag"].startswith('"')
    assert r.headers["Server"] == "syncd-emulator" and r.headers["Content-Length"] == "0"
    (row,) = emu.uploads()
    assert row["size"] == 5


def test_a_body_is_streamed_to_the_handler(emu: Emulator, client: httpx.Client) -> None:
    pulled: list[int] = []

    def chunks() -> Iterator[bytes]:
        for i in range(8):
            pulled.append(i)
            yield bytes([i]) * (256 * 1024)

    url = initiate(client, emu.url, size=8 * 256 * 1024)
    r = put(client, url, chunks(), **{"Content-Length": str(8 * 256 * 1024)})
    assert r.status_code == 200 and pulled == list(range(8))
    assert emu.requests()[-1]["bytes"] == 8 * 256 * 1024


def test_a_chunked_body_without_length_is_refused_as_on_the_wire(emu: Emulator, client: httpx.Client) -> None:
    url = initiate(client, emu.url, size=None)
    r = put(client, url, iter([b"he", b"llo"]))
    assert r.status_code == 403 and b"MissingContentLength" in r.content


def test_reset_raises_what_a_dropped_connection_raises(emu: Emulator, client: httpx.Client) -> None:
    url = initiate(client, emu.url, size=200_000)
    emu.set_faults(script=[{"op": "lilt.put", "kind": "reset"}])
    with pytest.raises(httpx.ReadError):
        put(client, url, b"z" * 200_000)
    entry = emu.requests()[-1]
    assert (entry["fault"], entry["status"], entry["bytes"]) == ("reset", 0, 100_000)
    assert emu.uploads() == []
    assert put(client, url, b"z" * 200_000).status_code == 200  # the URL still works


def test_reset_over_the_socket_is_a_transport_error_too(emu: Emulator) -> None:
    with emu, httpx.Client() as c:
        url = initiate(c, emu.url, size=200_000)
        emu.set_faults(script=[{"op": "lilt.put", "kind": "reset"}])
        with pytest.raises(httpx.TransportError):
            put(c, url, b"z" * 200_000)
    assert emu.requests()[-1]["fault"] == "reset"


def test_the_clients_own_stream_error_propagates_and_leaves_nothing(
    emu: Emulator, client: httpx.Client
) -> None:
    class Changed(Exception):
        pass

    def chunks() -> Iterator[bytes]:
        yield b"he"
        raise Changed("the file changed under the upload")

    url = initiate(client, emu.url)
    with pytest.raises(Changed):
        put(client, url, chunks(), **{"Content-Length": "5"})
    assert emu.uploads() == []
    assert list((emu.store.root / "tmp").iterdir()) == []
    assert emu.requests()[-1]["status"] == 0


def test_a_short_body_is_a_local_protocol_error(emu: Emulator, client: httpx.Client) -> None:
    url = initiate(client, emu.url)
    with pytest.raises(httpx.LocalProtocolError):
        put(client, url, iter([b"he"]), **{"Content-Length": "5"})
    assert emu.uploads() == []


def test_status_faults_and_slow_faults_in_process(emu: Emulator, client: httpx.Client) -> None:
    emu.set_faults(
        script=[
            {"op": "lilt.list", "status": 429, "retry_after": 3},
            {"op": "lilt.list", "status": 503, "message": "down for a bit"},
            {"op": "lilt.list", "kind": "slow", "delay": 0.2},
        ]
    )
    r = client.get(emu.url + "/lilt/v2/upload", auth=(KEY, KEY))
    assert r.status_code == 429 and r.headers["Retry-After"] == "3"
    r = client.get(emu.url + "/lilt/v2/upload", auth=(KEY, KEY))
    assert r.status_code == 503 and r.json() == {"message": "down for a bit"}
    r = client.get(emu.url + "/lilt/v2/upload", auth=(KEY, KEY))
    assert r.status_code == 200 and r.elapsed.total_seconds() >= 0.0
    assert [e.get("fault") for e in emu.requests()] == ["429", "503", "slow"]
    assert emu.requests()[-1]["duration"] >= 0.2


def test_head_has_no_body(emu: Emulator, client: httpx.Client) -> None:
    r = client.head(emu.url + "/nope")
    assert r.status_code == 404 and r.content == b"" and int(r.headers["Content-Length"]) > 0


def test_same_answers_and_log_through_both_shells(tmp_path: Path) -> None:
    def session(emulator: Emulator, c: httpx.Client) -> list[tuple[str, int]]:
        emulator.set_faults(script=[{"op": "lilt.put", "status": 500}])
        url = initiate(c, emulator.url)
        statuses = [
            put(c, url, b"hello").status_code,
            put(c, url, b"hello").status_code,
            c.get(emulator.url + "/lilt/v2/nope", auth=(KEY, KEY)).status_code,
        ]
        assert statuses == [500, 200, 404]
        return [(e["op"] or "", e["status"]) for e in emulator.requests()]

    in_process = Emulator(tmp_path / "a")
    with httpx.Client(transport=EmulatorTransport(in_process)) as c:
        one = session(in_process, c)
    with Emulator(tmp_path / "b") as on_socket, httpx.Client() as c:
        other = session(on_socket, c)
    assert one == other == [("lilt.initiate", 200), ("lilt.put", 500), ("lilt.put", 200), ("", 404)]


def test_syncds_own_client_takes_the_transport(emu: Emulator) -> None:
    with make_client(transport=EmulatorTransport(emu)) as c:
        r = c.get(emu.url + "/_emulator/health")
    assert r.status_code == 200 and r.request.headers["User-Agent"].startswith("syncd/")


def test_the_dispatcher_alone(emu: Emulator) -> None:
    """respond() is the one entry: a Request in, a Response or a Reset out."""

    def request(method: str, path: str, body: bytes = b"", **headers: str) -> Request:
        return Request(
            method, path, {}, headers_of({"Host": "x.test", **headers}), BytesBody(body), host="x.test"
        )

    answer = emu.respond(request("GET", "/_emulator/health"))
    assert isinstance(answer, Response) and answer.status == 200
    assert b'"lilt":"http://emulator.invalid/lilt"' in answer.body
    emu.set_faults(script=[{"op": "lilt.list", "kind": "reset"}])
    assert emu.respond(request("GET", "/lilt/v2/upload")) == Reset(injected=True)
    answer = emu.respond(request("POST", "/lilt/v2/upload/s3/params", b"{}", **{"Content-Length": "2"}))
    assert isinstance(answer, Response) and answer.status == 401  # no credentials


@pytest.mark.process
def test_syncd_emulate_still_starts_it(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "syncd",
            "emulate",
            "--listen",
            "127.0.0.1:0",
            "--data",
            str(tmp_path),
            "--wriftai-part-size",
            "65536",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        base = proc.stdout.readline().split(" on ")[1].split()[0]
        assert httpx.get(base + "/_emulator/health").json()["ok"] is True
        r = httpx.post(
            base + "/wriftai/v1/uploads",
            json={"size": 200_000, "mime_type": "x/y"},
            headers={"Authorization": "Bearer demo-wriftai-token"},
        )
        assert r.json()["part_size"] == 65536
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)
    assert proc.returncode == 0
