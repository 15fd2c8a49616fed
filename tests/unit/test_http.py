from __future__ import annotations

from pathlib import Path

import pytest

from syncd.http import parse_retry_after
from syncd.trust import tls_context


def test_ca_bundle_is_added_to_the_default_trust_store(tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme", reason="trustme is in the test extra")
    ca = trustme.CA()
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    default = len(tls_context(None).get_ca_certs())
    extended = tls_context(str(bundle)).get_ca_certs()
    assert len(extended) == default + 1
    assert default > 0, "the public roots stay trusted"


def test_retry_after_both_forms_and_cap() -> None:
    assert parse_retry_after("3") == 3
    assert parse_retry_after("999999") == 900
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:05 GMT", date="Wed, 21 Oct 2015 07:28:00 GMT") == 5
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_the_client_keeps_no_cookies() -> None:
    """A Set-Cookie from one service never goes along with a later request (to it or another)."""
    import httpx

    from syncd.http import make_client

    seen: list[str | None] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("cookie"))
        return httpx.Response(200, headers={"Set-Cookie": "session=abc; Path=/"})

    with make_client(transport=httpx.MockTransport(answer)) as client:
        client.get("http://service.example/a")
        client.get("http://service.example/b")
        assert not client.cookies
        with pytest.raises(TypeError):
            client.cookies = {"session": "abc"}  # type: ignore[assignment]
        client.cookies = None  # type: ignore[assignment]  # nothing to keep: allowed
    assert seen == [None, None]


class _Hostile:
    """A loopback server whose answers are the kind a broken or hostile service gives."""

    def __init__(self, kind: str) -> None:
        import gzip
        import threading
        import time
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        bomb = gzip.compress(b"\0" * (16 << 20)) if kind == "bomb" else b""

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if kind == "drip-head":  # the answer's head, a byte every 0.1 s
                    self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                    for _ in range(60):
                        self.wfile.write(b"X")
                        self.wfile.flush()
                        time.sleep(0.1)
                    return
                if kind == "slow":  # thinks 1.5 s, then a whole head, then a body in 3 s
                    time.sleep(1.5)
                    self.send_response(200)
                    self.send_header("Content-Length", "3")
                    self.end_headers()
                    self.wfile.flush()
                    for _ in range(3):
                        time.sleep(1)
                        self.wfile.write(b"x")
                        self.wfile.flush()
                    return
                if kind == "drip":  # a long body, a byte a second
                    self.send_response(200)
                    self.send_header("Content-Length", str(1 << 30))
                    self.end_headers()
                    for _ in range(60):
                        self.wfile.write(b"x")
                        self.wfile.flush()
                        time.sleep(0.1)
                else:  # a gzip bomb: 16 KiB on the wire, 16 MiB decoded
                    body = bomb
                    self.send_response(503)
                    self.send_header("Content-Encoding", "gzip")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/x"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_an_answer_that_never_ends_or_expands_without_bound_is_retryable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The read timeout is per socket read: a server dripping a byte at a time held a
    worker for good; a gzip bomb of 255 KB took 827 MB. The body has a size cap (decoded
    bytes) and a deadline."""
    import time

    from syncd import http
    from syncd.circuit import is_outage
    from syncd.errors import RetryableError

    monkeypatch.setattr(http, "BODY_SECONDS", 1.0)
    monkeypatch.setattr(http, "MAX_BODY", 4 << 20)
    client = http.make_client(connect=2, read=2)
    drip, bomb = _Hostile("drip"), _Hostile("bomb")
    try:
        started = time.monotonic()
        with pytest.raises(RetryableError, match="still coming after 1s") as slow:
            http.send(client, "GET", drip.url, what="t")
        assert time.monotonic() - started < 5
        with pytest.raises(RetryableError, match="HTTP 503 with an answer over 4 MiB") as huge:
            http.send(client, "GET", bomb.url, what="t")
        # the service's trouble, counted by its circuit, never an attempt of the file's
        assert is_outage(slow.value) and is_outage(huge.value)
        assert (slow.value.status, huge.value.status) == (200, 503)
    finally:
        client.close()
        drip.close()
        bomb.close()


def test_an_answer_whose_head_never_ends_is_retryable_in_time() -> None:
    """The read timeout is per socket read, and the body's deadline starts after the head:
    a server dripping its head a byte at a time held a worker until h11's 16 KiB limit
    for the head, hours at a byte per read timeout. The head now has the read timeout as
    its deadline; a garbled answer, the service's trouble (its circuit), not the file's."""
    import threading
    import time

    from syncd import http
    from syncd.circuit import is_outage
    from syncd.errors import RetryableError

    client = http.make_client(connect=2, read=2)
    server = _Hostile("drip-head")
    outcome: list[BaseException | None] = []

    def call() -> None:
        try:
            http.send(client, "GET", server.url, what="t")
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - reported to the test's thread
            outcome.append(exc)

    try:
        started = time.monotonic()
        worker = threading.Thread(target=call, daemon=True)
        worker.start()
        worker.join(10)
        assert time.monotonic() - started < 3, "the head's drip held the request"
        assert outcome and isinstance(outcome[0], RetryableError)
        assert "head still coming after 2s" in str(outcome[0]) and is_outage(outcome[0])
    finally:
        client.close()
        server.close()


def test_a_slow_server_that_sends_its_head_whole_is_not_cut_by_the_head_deadline() -> None:
    """The head's deadline starts at its first read and bounds only the head: a server
    that thinks for most of the read timeout and then sends a body slowly is answered."""
    from syncd import http

    client = http.make_client(connect=2, read=2)
    server = _Hostile("slow")
    try:
        assert http.send(client, "GET", server.url, what="t").content == b"xxx"
        # and again on the kept-alive connection: each request has a deadline of its own
        assert http.send(client, "GET", server.url, what="t").content == b"xxx"
    finally:
        client.close()
        server.close()


@pytest.mark.parametrize("url", ["/lilt/_storage/k1?X-Sig=abc", "file:///etc/passwd", "ftp://h/x"])
def test_a_url_that_is_not_http_is_a_malformed_answer_not_an_outage(url: str) -> None:
    """A storage URL the service hands out that syncd cannot use opened the destination's
    circuit ("down", probed for good) and never counted an attempt."""
    from syncd import http
    from syncd.circuit import is_outage
    from syncd.errors import RetryableError

    client = http.make_client()
    try:
        with pytest.raises(RetryableError) as info:
            http.send(client, "PUT", url, what="lilt: PUT to storage", content=b"x")
    finally:
        client.close()
    assert not info.value.transport and not is_outage(info.value)
    assert "abc" not in str(info.value)


@pytest.mark.parametrize(
    ("status", "headers", "kind"),
    [
        (204, {}, "RetryableError"),  # Xvid's PUT answered 204: not a failure for good (no abort)
        (301, {"Location": "https://api.example/v2/"}, "FatalError"),  # http base_url: pause
        (308, {"Location": "https://api.example/v2/"}, "FatalError"),
        (307, {"Location": "https://bucket.s3-eu.example/x?X-Amz-Signature=s"}, "RetryableError"),
        (301, {}, "RetryableError"),  # S3's PermanentRedirect names no Location: not base_url's
        # a CDN or load balancer in front of the service in trouble: every waiting file
        # went to failed_dir at once, the circuit never opened
        (522, {}, "RetryableError"),
        (520, {}, "RetryableError"),
        (507, {}, "RetryableError"),
        (501, {}, "RetryableError"),
    ],
)
def test_unexpected_successes_and_redirects_are_not_failures_of_the_file(
    status: int, headers: dict[str, str], kind: str
) -> None:
    """Each of these failed files for good, one by one: a 2xx the protocol does not name
    (and the abort that followed deleted what the service had kept), a base_url that
    redirects (every file alike: the destination pauses), S3's temporary redirect."""
    import httpx

    from syncd import errors, http

    response = httpx.Response(status, headers=headers, request=httpx.Request("PUT", "http://x/y"))
    with pytest.raises(errors.UploadError) as info:
        http.check(response, what="t", ok=(200,))
    assert type(info.value).__name__ == kind
    assert "X-Amz-Signature=s" not in str(info.value)


@pytest.mark.parametrize("status", [400, 404, 407])
def test_a_4xx_html_page_is_a_proxys_not_the_services_refusal_of_the_file(status: int) -> None:
    """An ingress with no backend (404), a proxy asking for its login (407), HTTP sent to
    an HTTPS port (400): every waiting file failed for good at once on its first try."""
    import httpx

    from syncd import circuit, errors, http

    page = httpx.Response(
        status,
        headers={"Content-Type": "text/html"},
        text="<html>nginx</html>",
        request=httpx.Request("POST", "http://x/y"),
    )
    with pytest.raises(errors.RetryableError) as info:
        http.check(page, what="t", ok=(200,))
    assert circuit.is_outage(info.value)
    answer = httpx.Response(
        status, json={"error": "bad category"}, request=httpx.Request("POST", "http://x/y")
    )
    with pytest.raises(errors.PermanentError):  # the service's own answer: the file's
        http.check(answer, what="t", ok=(200,))


@pytest.mark.parametrize(("status", "auth_fatal"), [(403, True), (403, False), (401, True)])
def test_a_403_html_page_from_storage_is_no_expiry_and_no_refusal(status: int, auth_fatal: bool) -> None:
    """A WAF's or nginx's block page on a storage PUT was an expired signature (re-signed
    at once, then charged to the file, which failed), on an API call a refusal of the
    credentials. Storage's own expiry (S3's XML AccessDenied) is still one."""
    import httpx

    from syncd import circuit, errors, http

    def answer(content_type: str, body: str) -> httpx.Response:
        return httpx.Response(
            status,
            headers={"Content-Type": content_type},
            text=body,
            request=httpx.Request("PUT", "http://storage.example/k?X-Emu-Signature=s"),
        )

    page = answer("text/html; charset=utf-8", "<html><h1>403 Forbidden</h1>nginx</html>")
    with pytest.raises(errors.RetryableError) as info:
        http.check(page, what="t", ok=(200,), expired=(status,), auth_fatal=auth_fatal)
    assert not isinstance(info.value, errors.ExpiredError)
    assert info.value.garbled and circuit.is_outage(info.value)
    expiry = answer(
        "application/xml",
        "<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>",
    )
    with pytest.raises(errors.ExpiredError):
        http.check(expiry, what="t", ok=(200,), expired=(status,), auth_fatal=auth_fatal)
    refused = answer("application/json", '{"message": "bad key"}')
    if auth_fatal:
        with pytest.raises(errors.FatalError):
            http.check(refused, what="t", ok=(200,), auth_fatal=auth_fatal)


def test_a_429_or_5xx_html_page_keeps_its_wait() -> None:
    """A rate limit or an outage answered with a page keeps its status and Retry-After."""
    import httpx

    from syncd import errors, http

    page = httpx.Response(
        429,
        headers={"Content-Type": "text/html", "Retry-After": "7"},
        text="<html>slow down</html>",
        request=httpx.Request("PUT", "http://x/y"),
    )
    with pytest.raises(errors.RetryableError) as info:
        http.check(page, what="t", ok=(200,), expired=(403,))
    assert info.value.status == 429 and info.value.retry_after == 7 and not info.value.garbled


def test_odd_values_from_a_server_are_malformed_answers_not_internal_errors() -> None:
    """An expiry no calendar holds came after the service had the file (each retry
    uploaded it again); "[[[[..." past the recursion limit; parts that are not a list."""
    import httpx

    from syncd import http
    from syncd.destinations._apivideo_chunks import held_parts
    from syncd.destinations._receipts import seal
    from syncd.errors import RetryableError

    details = seal(
        "s" * 32, "p", "r", {"download_url": "https://x/f?Expires=99999999999999999999&Signature=a"}
    )
    assert "download_url" in details and "url_expires_at" not in details
    deep = httpx.Response(200, content=b"[" * 200_000, request=httpx.Request("GET", "http://x/"))
    with pytest.raises(RetryableError, match="not JSON"):
        http.json_body(deep, what="t")
    assert held_parts({"receivedParts": {"parts": 5}, "receivedBytes": "x"}, 10, 5) == set()
    assert held_parts({"receivedParts": [1, 2]}, 10, 5) == set()


@pytest.mark.parametrize("key", ["01", "¹", "+1", " 1"])
def test_a_resume_state_with_odd_part_numbers_starts_over(key: str) -> None:
    """A hand-edited (or another syncd's) resume state: "01" passed and made part 1 be
    sent twice (the service refused the part list: failed for good); "¹" raised."""
    from dataclasses import dataclass, field

    from syncd.destinations._chunked_parts import PartRules
    from syncd.destinations._chunked_resume import RESUME_VERSION, usable
    from syncd.progress import resumed_bytes

    @dataclass
    class Service:
        kind: str = "multipart"
        rules: PartRules = field(default_factory=lambda: PartRules(part_size=5))
        session_fields: dict[str, object] = field(default_factory=dict)

    good = {"v": RESUME_VERSION, "kind": "multipart", "session": {}, "size": 10, "part_size": 5}
    assert usable(Service(), {**good, "parts": {"1": "etag"}}, 10) is not None
    assert usable(Service(), {**good, "parts": {key: "etag"}}, 10) is None
    assert resumed_bytes([1], 10) == 0  # type: ignore[arg-type]  # a list, as hand-edited


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_body_that_is_not_its_content_encoding_is_a_garbled_answer(encoding: str) -> None:
    """A proxy labelling a plain page ``gzip``: httpx's DecodingError escaped send(), so
    every attempt was an internal error (a traceback, an attempt charged) although
    storage had kept the file; now the service's garbled answer, counted by its circuit."""
    import httpx

    from syncd import circuit, http
    from syncd.errors import RetryableError

    def answer(request: httpx.Request) -> httpx.Response:
        stream = httpx.ByteStream(b"plain text, not it")
        return httpx.Response(200, headers={"Content-Encoding": encoding}, stream=stream)

    expected = f"not the '{encoding}' its Content-Encoding says"
    with (
        http.make_client(transport=httpx.MockTransport(answer)) as client,
        pytest.raises(RetryableError, match=expected) as info,
    ):
        http.send(client, "PUT", "http://storage.example/k?X-Emu-Signature=abc", what="t", content=b"x")
    assert circuit.is_outage(info.value) and info.value.status is None
    assert "abc" not in str(info.value)


def test_an_upload_through_a_proxy_tunnel_slower_than_the_read_timeout_is_answered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Through an HTTP proxy an https request first reads the proxy's answer to CONNECT:
    the head's deadline is the read timeout from the first read of the answer to the
    request itself, not from the CONNECT's, or every upload through a proxy that takes
    longer than the read timeout to send ends as a garbled answer."""
    import socket
    import ssl
    import threading
    import time

    from syncd import http

    trustme = pytest.importorskip("trustme", reason="trustme is in the test extra")
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("service.example").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    body = b"\0" * (24 << 20)

    def serve(conn: socket.socket) -> None:  # the proxy, and the service behind it
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(4096)
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += tls.recv(65536)
                got = len(data.split(b"\r\n\r\n", 1)[1])
                while got < len(body):  # read the body at about 8 MiB/s
                    chunk = tls.recv(1 << 20)
                    if not chunk:
                        return
                    got += len(chunk)
                    time.sleep(len(chunk) / (8 << 20))
                tls.sendall(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok")
                tls.recv(1)

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def accept() -> None:
        conn, _ = listener.accept()
        serve(conn)

    threading.Thread(target=accept, daemon=True).start()
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{port}")
    client = http.make_client(connect=2, read=1, write=5, verify=client_ctx)
    try:
        started = time.monotonic()
        response = http.send(client, "PUT", "https://service.example/x", what="t", content=body)
        assert time.monotonic() - started > 1.5, "the upload took longer than the read timeout"
        assert response.status_code == 201 and response.content == b"ok"
    finally:
        client.close()
        listener.close()
