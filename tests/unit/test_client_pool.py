"""The shared HTTP client's connection pool and the part requests a configuration allows.

Every destination's ``max_connections`` bounds its part requests in flight, but the
one client all destinations share had ``max(8, workers * 2)`` connections whatever they
said: with ``parallel_parts = 16`` and ``max_connections = 16``, eight part requests
waited for a connection, and one that waited longer than the pool timeout (30 s: a
slow link, parts of 8 MiB) failed with ``PoolTimeout``, a transport error, charged to
the service's circuit: the destination was called down for syncd's own queue.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from syncd import config as configmod
from syncd import http
from syncd.destinations.build import build_client


class _Slow(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        time.sleep(1.5)  # a part on a slow link
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


def test_every_part_request_a_configuration_allows_gets_a_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "inbox").mkdir()
    cfg = configmod.loads(
        "[daemon]\nworkers = 1\n"
        '[destinations.d]\ntype = "lilt"\napi_key = "k"\nparallel_parts = 16\nmax_connections = 16\n'
        f'[[folders]]\npath = "{tmp_path / "inbox"}"\ndestination = "d"\n',
        base_dir=tmp_path,
    )
    defaults = dict(http.make_client.__kwdefaults__ or {})
    monkeypatch.setattr(http.make_client, "__kwdefaults__", {**defaults, "pool": 0.5})
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Slow)
    server.daemon_threads = True
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    client = build_client(cfg)
    url = f"http://127.0.0.1:{server.server_address[1]}/part"
    errors: list[BaseException] = []

    def part() -> None:
        try:
            http.send(client, "GET", url, what="part")
        except BaseException as exc:  # noqa: BLE001 - reported to the test's thread
            errors.append(exc)

    try:
        # the destination's 16 part requests, and the one worker's API call beside them
        threads = [threading.Thread(target=part) for _ in range(16 + 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        client.close()
        server.shutdown()
        server.server_close()
    assert not errors, f"{len(errors)} request(s) failed: {errors[0]}"
