"""The head's deadline through an HTTPS proxy from the environment (CONNECT, then TLS).

The tunnel's ``CONNECT`` answer is read inside the head phase of the request that opens
the connection: a deadline started there ran through the TLS handshake and the whole
request body, so an upload whose body took longer than the read timeout to send had no
time left for its answer's head and failed as a garbled answer, every time.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest


class _Connect:
    """A minimal CONNECT proxy on loopback: one tunnel per connection."""

    def __init__(self, drip: bool = False) -> None:
        self.drip = drip  # the CONNECT answer a byte every 0.1 s, for ever
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.tunnels = 0
        self.open: list[socket.socket] = []
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            self.open.append(client)
            self.threads.append(threading.Thread(target=self._tunnel, args=(client,), daemon=True))
            self.threads[-1].start()

    def _tunnel(self, client: socket.socket) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            data = client.recv(4096)
            if not data:
                return
            head += data
        target = head.split(b" ")[1].decode()
        host, port = target.rsplit(":", 1)
        upstream = socket.create_connection((host, int(port)))
        self.open.append(upstream)
        self.tunnels += 1
        if self.drip:
            try:
                client.sendall(b"HTTP/1.1 200 ")
                for _ in range(100):
                    client.sendall(b"x")
                    time.sleep(0.1)
            except OSError:
                pass
            return
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")

        def pump(src: socket.socket, dst: socket.socket) -> None:
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        self.threads.append(threading.Thread(target=pump, args=(upstream, client), daemon=True))
        self.threads[-1].start()
        pump(client, upstream)

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)  # wakes accept()
        self.sock.close()
        for s in self.open:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in list(self.threads):
            thread.join(5)
        for s in self.open:
            s.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_PUT(self) -> None:  # noqa: N802 - http.server's naming
        length = int(self.headers["Content-Length"])
        got = 0
        while got < length:
            got += len(self.rfile.read(min(65536, length - got)))
        body = str(got).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[str, ssl.SSLContext]]:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.socket = server_context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/part", client_context
    finally:
        server.shutdown()
        server.server_close()


def test_an_upload_through_an_https_proxy_that_sends_for_longer_than_the_read_timeout(
    tls_server: tuple[str, ssl.SSLContext], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A body that takes 2.5 s to send with a read timeout of 1 s, through a CONNECT
    proxy from HTTPS_PROXY: the server answers at once, and the answer is taken."""
    from syncd import http

    url, context = tls_server
    proxy = _Connect()
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.port}")
    client = http.make_client(connect=2, read=1, write=2, verify=context)

    def body() -> Iterator[bytes]:
        for _ in range(5):
            time.sleep(0.5)
            yield b"x" * 1024

    try:
        response = http.send(
            client, "PUT", url, what="t", content=body(), headers={"Content-Length": str(5 * 1024)}
        )
        assert response.status_code == 200 and response.content == b"5120"
        assert proxy.tunnels == 1, "the request did not go through the proxy"
    finally:
        client.close()
        proxy.close()


def test_a_proxy_that_drips_its_connect_answer_is_cut_at_the_read_timeout(
    tls_server: tuple[str, ssl.SSLContext], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tunnel's answer is part of the head: a proxy dripping it is a garbled answer
    within the read timeout, not a worker held while it drips."""
    from syncd import http
    from syncd.circuit import is_outage
    from syncd.errors import RetryableError

    url, context = tls_server
    proxy = _Connect(drip=True)
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.port}")
    client = http.make_client(connect=2, read=1, write=2, verify=context)
    started = time.monotonic()
    try:
        with pytest.raises(RetryableError, match="head still coming") as caught:
            http.send(client, "GET", url, what="t")
        assert time.monotonic() - started < 3 and is_outage(caught.value)
    finally:
        client.close()
        proxy.close()
