"""Lilt destination: request shapes, error mapping, resume, ETags, expiry (MockTransport).

The fake below is deliberately strict about what protocols.md §1 says a
client must send (Basic auth on the API, no credentials to storage, s3Key,
numeric part numbers, PascalCase parts) so that a shape regression fails
here, fast and without a network. End-to-end behaviour against the real
emulator is covered by the conformance suite.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from syncd.destinations import _chunked
from syncd.destinations.base import Source, UploadItem
from syncd.destinations.lilt import LiltDestination, LiltOptions
from syncd.errors import (
    ExpiredError,
    FatalError,
    PermanentError,
    RetryableError,
    UploadError,
)
from syncd.secrets import Secret

KEY = "lilt-test-key-0123456789"
BASE = "https://api.lilt.test/lilt"
STORAGE = "https://storage.lilt.test"
MiB = 1024 * 1024

Reply = Callable[[httpx.Request], httpx.Response]


class FakeLilt:
    """An in-memory Lilt + storage behind httpx.MockTransport.

    ``faults[op]`` is a list of replies returned (and consumed) before the
    real handler runs for that op; ops: initiate, put, mp_initiate, sign,
    put_part, complete, cancel, list.
    """

    def __init__(self) -> None:
        self.log: list[tuple[str, httpx.Request, bytes]] = []
        self.objects: dict[str, bytes] = {}
        self.sessions: dict[str, dict[str, Any]] = {}
        self.cancelled: list[str] = []
        self.initiated: list[dict[str, Any]] = []
        self.faults: dict[str, list[Reply]] = {}
        self.list_replies: list[list[dict[str, Any]]] = []
        self.etag_quotes = True
        self._n = 0

    # helpers for tests
    def ops(self, name: str | None = None) -> list[str]:
        return [op for op, _, _ in self.log if name is None or op == name]

    def requests(self, name: str) -> list[tuple[httpx.Request, bytes]]:
        return [(r, b) for op, r, b in self.log if op == name]

    def fault(self, op: str, *replies: Reply) -> None:
        self.faults.setdefault(op, []).extend(replies)

    # the transport
    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = request.read()
        op = self._op(request)
        self.log.append((op, request, body))
        pending = self.faults.get(op)
        if pending:
            return pending.pop(0)(request)
        if request.url.host == urlsplit(BASE).hostname:
            expected = "Basic " + base64.b64encode(f"{KEY}:{KEY}".encode()).decode()
            if request.headers.get("Authorization") != expected:
                return httpx.Response(401, json={"message": "bad credentials"})
            if "key" in request.url.params:
                return httpx.Response(400, json={"message": "ambiguous key= parameter"})
        else:
            assert "Authorization" not in request.headers, "credentials sent to storage"
        return getattr(self, "_" + op)(request, body)

    def _op(self, request: httpx.Request) -> str:
        path, method = request.url.path, request.method
        if request.url.host != urlsplit(BASE).hostname:
            return "put_part" if "partNumber" in request.url.params else "put"
        rel = path[len("/lilt"):]
        if rel == "/v2/upload/s3/params":
            return "initiate"
        if rel == "/v2/upload/s3/multipart":
            return "mp_initiate"
        if rel == "/v2/upload":
            return "list"
        if rel.endswith("/complete"):
            return "complete"
        if method == "DELETE":
            return "cancel"
        return "sign"

    def _new_key(self, filename: str) -> str:
        self._n += 1
        return f"uploads/u1/{self._n}-{filename}"

    def _initiate(self, request: httpx.Request, body: bytes) -> httpx.Response:
        data = json.loads(body)
        self.initiated.append(data)
        key = self._new_key(data["filename"])
        url = f"{STORAGE}/bucket/{key}?X-Amz-Signature=SIGNATURE-{self._n}&X-Amz-Expires=900"
        return httpx.Response(200, json={"url": url, "key": key, "method": "PUT"})

    def _put(self, request: httpx.Request, body: bytes) -> httpx.Response:
        key = request.url.path[len("/bucket/"):]
        self.objects[key] = body
        return httpx.Response(200, headers={"ETag": f'"{hashlib.md5(body).hexdigest()}"'})

    def _mp_initiate(self, request: httpx.Request, body: bytes) -> httpx.Response:
        data = json.loads(body)
        self.initiated.append(data)
        key = self._new_key(data["filename"])
        upload_id = f"mpu-{self._n}"
        self.sessions[upload_id] = {"key": key, "parts": {}}
        return httpx.Response(200, json={"uploadId": upload_id, "key": key})

    def _session(self, request: httpx.Request) -> tuple[str, dict[str, Any]] | None:
        upload_id = request.url.path.split("/")[6]
        session = self.sessions.get(upload_id)
        if session is None or request.url.params.get("s3Key") != session["key"]:
            return None
        return upload_id, session

    def _sign(self, request: httpx.Request, body: bytes) -> httpx.Response:
        found = self._session(request)
        if found is None:
            return httpx.Response(404, json={"message": "no such upload"})
        upload_id, session = found
        number = request.url.path.split("/")[7]
        if not number.isdigit():
            return httpx.Response(400, json={"message": "bad part number"})
        size = request.url.params["size"]
        url = (f"{STORAGE}/bucket/{session['key']}?partNumber={number}&uploadId={upload_id}"
               f"&size={size}&X-Amz-Signature=PARTSIG-{number}")
        return httpx.Response(200, json={"url": url, "method": "PUT"})

    def _put_part(self, request: httpx.Request, body: bytes) -> httpx.Response:
        upload_id = request.url.params["uploadId"]
        session = self.sessions.get(upload_id)
        if session is None:
            return httpx.Response(404, text="<Error><Code>NoSuchUpload</Code></Error>")
        if int(request.url.params["size"]) != len(body):
            return httpx.Response(403, text="<Error><Code>SignatureDoesNotMatch</Code></Error>")
        number = int(request.url.params["partNumber"])
        etag = hashlib.md5(body).hexdigest()
        session["parts"][number] = (f'"{etag}"' if self.etag_quotes else etag, body)
        return httpx.Response(200, headers={"ETag": session["parts"][number][0]})

    def _complete(self, request: httpx.Request, body: bytes) -> httpx.Response:
        found = self._session(request)
        if found is None:
            return httpx.Response(404, json={"message": "no such upload"})
        upload_id, session = found
        parts = json.loads(body)["parts"]
        numbers = [p["PartNumber"] for p in parts]
        assert numbers == sorted(numbers), "parts must be ascending"
        for p in parts:
            if session["parts"].get(p["PartNumber"], ("",))[0] != p["ETag"]:
                return httpx.Response(400, json={"message": "InvalidPart"})
        self.objects[session["key"]] = b"".join(session["parts"][n][1] for n in numbers)
        del self.sessions[upload_id]
        location = f"{STORAGE}/bucket/{session['key']}"
        return httpx.Response(200, json={"success": True, "location": location})

    def _cancel(self, request: httpx.Request, body: bytes) -> httpx.Response:
        found = self._session(request)
        if found is None:
            return httpx.Response(404, json={"message": "no such upload"})
        self.cancelled.append(found[0])
        del self.sessions[found[0]]
        return httpx.Response(200, json={"success": True, "message": "cancelled"})

    def _list(self, request: httpx.Request, body: bytes) -> httpx.Response:
        entries = self.list_replies.pop(0) if self.list_replies else []
        return httpx.Response(200, json=entries)


def status(code: int, headers: dict[str, str] | None = None, **kw: Any) -> Reply:
    return lambda request: httpx.Response(code, headers=headers, **kw)


# -- fixtures -------------------------------------------------------------------


@pytest.fixture
def fake() -> FakeLilt:
    return FakeLilt()


@pytest.fixture
def client(fake: FakeLilt) -> httpx.Client:
    with httpx.Client(transport=httpx.MockTransport(fake)) as c:
        yield c  # type: ignore[misc]


def make_dest(client: httpx.Client, *, threshold: int = 8 * MiB, part_size: int = 5 * MiB,
              wait_for_scan: bool = False, **kw: Any) -> LiltDestination:
    opts = LiltOptions(api_key=Secret(KEY), base_url=BASE + "/", multipart_threshold=threshold,
                       part_size=part_size, wait_for_scan=wait_for_scan)
    return LiltDestination("contracts", opts, client, **kw)


def write(tmp_path: Path, size: int, name: str = "doc.pdf") -> Path:
    path = tmp_path / name
    path.write_bytes(os.urandom(size))
    return path


def open_source(path: Path) -> Source:
    st = path.stat()
    return Source(path, size=st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino)


def item_for(path: Path, *, labels: tuple[str, ...] = ("legal", "review-needed"),
             category: str | None = "SOURCE", content_type: str = "application/pdf") -> UploadItem:
    return UploadItem(uuid="123e4567-e89b-12d3-a456-426614174000", name=path.name,
                      relpath=f"sub/{path.name}", size=path.stat().st_size,
                      content_type=content_type, labels=labels, category=category)


class Recorder:
    """A checkpoint callback that keeps deep copies, optionally failing after N calls."""

    def __init__(self, crash_after: int | None = None) -> None:
        self.states: list[dict[str, Any]] = []
        self.crash_after = crash_after

    def __call__(self, state: dict[str, Any]) -> None:
        json.dumps(state)  # must be JSON-serialisable
        self.states.append(copy.deepcopy(state))
        if self.crash_after is not None and len(self.states) >= self.crash_after:
            raise Crash()

    @property
    def last(self) -> dict[str, Any]:
        return self.states[-1]


class Crash(Exception):
    """Stands for a process crash right after a durable checkpoint."""


def upload(dest: LiltDestination, path: Path, resume: dict[str, Any] | None = None,
           checkpoint: Recorder | None = None, **item_kw: Any) -> Any:
    with open_source(path) as source:
        return dest.upload(item_for(path, **item_kw), source, resume, checkpoint or Recorder())


def assert_no_secrets(text: str) -> None:
    assert KEY not in text
    assert base64.b64encode(f"{KEY}:{KEY}".encode()).decode() not in text
    assert "SIGNATURE" not in text and "PARTSIG" not in text


# -- single flow ------------------------------------------------------------------


def test_single_request_shapes(fake: FakeLilt, client: httpx.Client, tmp_path: Path) -> None:
    path = write(tmp_path, 1000)
    cps = Recorder()
    receipt = upload(make_dest(client), path, checkpoint=cps)

    assert fake.ops() == ["initiate", "put"]
    (init, init_body), = fake.requests("initiate")
    assert init.method == "POST" and init.url.path == "/lilt/v2/upload/s3/params"
    assert init.url.query == b""  # never key= in the query
    assert json.loads(init_body) == {
        "filename": "doc.pdf", "type": "application/pdf",
        "metadata": {"size": 1000, "category": "SOURCE", "labels": ["legal", "review-needed"],
                     "uuid": "123e4567-e89b-12d3-a456-426614174000"},
    }
    assert init.headers["Accept"] == "application/json"
    assert init.headers["Content-Type"] == "application/json"
    assert init.headers["Authorization"] == "Basic " + base64.b64encode(
        f"{KEY}:{KEY}".encode()).decode()

    (put, put_body), = fake.requests("put")
    assert put.method == "PUT"
    assert "Authorization" not in put.headers and "key" not in put.url.params
    assert put.headers["Content-Type"] == "application/pdf"
    assert put.headers["Content-Length"] == "1000"
    assert "Transfer-Encoding" not in put.headers
    assert put_body == path.read_bytes()

    key = fake.initiated and "uploads/u1/1-doc.pdf"
    assert cps.states == [{"v": 1, "kind": "single", "key": key}]
    assert receipt.remote_id == key
    assert receipt.url == f"{STORAGE}/bucket/{key}"
    assert receipt.details["method"] == "single"
    assert fake.objects[key] == path.read_bytes()


def test_single_streams_the_body(fake: FakeLilt, tmp_path: Path) -> None:
    """The PUT body is an iterator read from the Source, not bytes loaded up front."""
    seen: list[object] = []
    mock = httpx.MockTransport(fake)

    class Spy(httpx.BaseTransport):  # MockTransport reads the body before its handler runs
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            if request.method == "PUT":
                seen.append(request.stream)
            return mock.handle_request(request)

    path = write(tmp_path, 600 * 1024)
    with httpx.Client(transport=Spy()) as c:
        upload(make_dest(c), path)
    assert seen and not isinstance(seen[0], httpx.ByteStream)
    assert fake.objects["uploads/u1/1-doc.pdf"] == path.read_bytes()


def test_single_omits_category_when_none(fake: FakeLilt, client: httpx.Client,
                                         tmp_path: Path) -> None:
    path = write(tmp_path, 10)
    upload(make_dest(client), path, category=None, labels=())
    assert fake.initiated[0]["metadata"] == {
        "size": 10, "labels": [], "uuid": "123e4567-e89b-12d3-a456-426614174000"}


def test_empty_file_goes_single(fake: FakeLilt, client: httpx.Client, tmp_path: Path) -> None:
    path = write(tmp_path, 0)
    receipt = upload(make_dest(client), path)
    (put, body), = fake.requests("put")
    assert body == b"" and put.headers["Content-Length"] == "0"
    assert fake.objects[receipt.remote_id] == b""


def test_single_resume_reinitiates(fake: FakeLilt, client: httpx.Client, tmp_path: Path) -> None:
    path = write(tmp_path, 100)
    receipt = upload(make_dest(client), path, resume={"v": 1, "kind": "single", "key": "old"})
    assert fake.ops() == ["initiate", "put"]
    assert receipt.remote_id == "uploads/u1/1-doc.pdf"


def test_single_expired_url_is_renewed(fake: FakeLilt, client: httpx.Client,
                                       tmp_path: Path) -> None:
    path = write(tmp_path, 100)
    fake.fault("put", status(403, text="<Error><Code>AccessDenied</Code>"
                                      "<Message>Request has expired</Message></Error>"))
    receipt = upload(make_dest(client), path)
    assert fake.ops() == ["initiate", "put", "initiate", "put"]
    assert receipt.remote_id == "uploads/u1/2-doc.pdf"


def test_single_expiry_is_bounded(fake: FakeLilt, client: httpx.Client, tmp_path: Path) -> None:
    path = write(tmp_path, 100)
    fake.fault("put", *[status(403)] * 10)
    with pytest.raises(ExpiredError) as info:
        upload(make_dest(client), path)
    assert fake.ops("put") == ["put"] * 3
    assert_no_secrets(str(info.value))


def test_single_method_must_be_put(fake: FakeLilt, client: httpx.Client, tmp_path: Path) -> None:
    fake.fault("initiate", lambda r: httpx.Response(
        200, json={"url": f"{STORAGE}/x", "key": "k", "method": "POST"}))
    with pytest.raises(PermanentError):
        upload(make_dest(client), write(tmp_path, 5))
    assert fake.ops() == ["initiate"]


# -- error mapping ----------------------------------------------------------------


@pytest.mark.parametrize("code, error", [
    (401, FatalError), (403, FatalError), (400, PermanentError), (413, PermanentError),
    (500, RetryableError), (503, RetryableError), (429, RetryableError),
])
def test_api_status_mapping(fake: FakeLilt, client: httpx.Client, tmp_path: Path,
                            code: int, error: type[UploadError]) -> None:
    fake.fault("initiate", status(code, json={"message": f"no ({KEY})"}))
    with pytest.raises(error) as info:
        upload(make_dest(client), write(tmp_path, 5))
    assert type(info.value) is error
    assert info.value.status == code
    assert_no_secrets(str(info.value))


def test_retry_after_is_passed_on(fake: FakeLilt, client: httpx.Client, tmp_path: Path) -> None:
    fake.fault("initiate", status(429, {"Retry-After": "7"}, json={"message": "slow down"}))
    with pytest.raises(RetryableError) as info:
        upload(make_dest(client), write(tmp_path, 5))
    assert info.value.retry_after == 7.0


def test_wrong_key_is_fatal(fake: FakeLilt, tmp_path: Path) -> None:
    with httpx.Client(transport=httpx.MockTransport(fake)) as c:
        opts = LiltOptions(api_key=Secret("wrong-key-value"), base_url=BASE)
        with pytest.raises(FatalError) as info:
            upload(LiltDestination("x", opts, c), write(tmp_path, 5))
    assert "wrong-key-value" not in str(info.value)


def test_transport_error_is_retryable(tmp_path: Path) -> None:
    def boom(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"connection refused for {request.url}")

    with httpx.Client(transport=httpx.MockTransport(boom)) as c, \
            pytest.raises(RetryableError) as info:
        upload(make_dest(c), write(tmp_path, 5))
    assert_no_secrets(str(info.value))


def test_storage_error_message_hides_signature(fake: FakeLilt, client: httpx.Client,
                                               tmp_path: Path) -> None:
    fake.fault("put", lambda r: httpx.Response(503, text=f"overloaded at {r.url}"))
    with pytest.raises(RetryableError) as info:
        upload(make_dest(client), write(tmp_path, 5))
    assert_no_secrets(str(info.value))


def test_garbage_answer_is_retryable(fake: FakeLilt, client: httpx.Client,
                                     tmp_path: Path) -> None:
    fake.fault("initiate", status(200, text="<html>gateway</html>"))
    fake.fault("initiate", status(200, json={"url": 5}))
    for _ in range(2):
        with pytest.raises(RetryableError):
            upload(make_dest(client), write(tmp_path, 5))


# -- multipart --------------------------------------------------------------------


def test_multipart_request_shapes(fake: FakeLilt, client: httpx.Client, tmp_path: Path) -> None:
    size = 11 * MiB + 123
    path = write(tmp_path, size, "big.zip")
    cps = Recorder()
    receipt = upload(make_dest(client), path, checkpoint=cps, content_type="application/zip")

    assert fake.ops() == ["mp_initiate", "sign", "put_part", "sign", "put_part",
                          "sign", "put_part", "complete"]
    (init, init_body), = fake.requests("mp_initiate")
    assert init.url.path == "/lilt/v2/upload/s3/multipart"
    assert json.loads(init_body)["metadata"]["size"] == size
    assert json.loads(init_body)["type"] == "application/zip"

    signs = [r for r, _ in fake.requests("sign")]
    assert [r.url.path for r in signs] == [f"/lilt/v2/upload/s3/multipart/mpu-1/{n}"
                                            for n in (1, 2, 3)]
    assert [dict(r.url.params) for r in signs] == [
        {"s3Key": "uploads/u1/1-big.zip", "size": str(s)} for s in (5 * MiB, 5 * MiB, MiB + 123)]
    for r in signs:
        assert r.headers["Authorization"].startswith("Basic ")
    for put, body in fake.requests("put_part"):
        assert "Authorization" not in put.headers
        assert put.headers["Content-Length"] == str(len(body))
        assert "Transfer-Encoding" not in put.headers

    (done, done_body), = fake.requests("complete")
    assert done.url.path == "/lilt/v2/upload/s3/multipart/mpu-1/complete"
    assert dict(done.url.params) == {"s3Key": "uploads/u1/1-big.zip"}
    parts = json.loads(done_body)["parts"]
    assert [p["PartNumber"] for p in parts] == [1, 2, 3]
    assert all(p["ETag"].startswith('"') and p["ETag"].endswith('"') for p in parts)

    # open, then one checkpoint per confirmed part; never a URL
    assert [sorted(s["parts"]) for s in cps.states] == [[], ["1"], ["1", "2"], ["1", "2", "3"]]
    for s in cps.states:
        assert s["v"] == 1 and s["kind"] == "multipart" and s["size"] == size
        assert s["part_size"] == 5 * MiB
        assert s["session"] == {"upload_id": "mpu-1", "key": "uploads/u1/1-big.zip"}
        assert "http" not in json.dumps(s)
    assert cps.last["parts"]["1"] == parts[0]["ETag"]

    assert receipt.remote_id == "uploads/u1/1-big.zip"
    assert receipt.url == f"{STORAGE}/bucket/uploads/u1/1-big.zip"
    assert receipt.details["method"] == "multipart"
    assert fake.objects["uploads/u1/1-big.zip"] == path.read_bytes()


def test_etag_kept_verbatim_without_quotes(fake: FakeLilt, client: httpx.Client,
                                           tmp_path: Path) -> None:
    fake.etag_quotes = False
    path = write(tmp_path, 11 * MiB, "big.bin")
    upload(make_dest(client), path)
    (_, body), = fake.requests("complete")
    assert not json.loads(body)["parts"][0]["ETag"].startswith('"')


def test_resume_sends_only_missing_parts(fake: FakeLilt, client: httpx.Client,
                                         tmp_path: Path) -> None:
    path = write(tmp_path, 11 * MiB, "big.bin")
    dest = make_dest(client)
    crashing = Recorder(crash_after=3)  # open + parts 1 and 2
    with pytest.raises(Crash):
        upload(dest, path, checkpoint=crashing)
    saved = crashing.last
    assert sorted(saved["parts"]) == ["1", "2"]

    fake.log.clear()
    cps = Recorder()
    receipt = upload(dest, path, resume=saved, checkpoint=cps)
    assert fake.ops() == ["sign", "put_part", "complete"]
    assert fake.requests("sign")[0][0].url.path.endswith("/mpu-1/3")
    assert sorted(cps.last["parts"]) == ["1", "2", "3"]
    assert fake.objects[receipt.remote_id] == path.read_bytes()


def test_resume_with_all_parts_only_completes(fake: FakeLilt, client: httpx.Client,
                                              tmp_path: Path) -> None:
    path = write(tmp_path, 11 * MiB, "big.bin")
    dest = make_dest(client)
    fake.fault("complete", status(200, json={"success": False, "message": "InternalError"}))
    cps = Recorder()
    with pytest.raises(RetryableError):  # 200 without success: S3's 200-with-error
        upload(dest, path, checkpoint=cps)
    fake.log.clear()
    receipt = upload(dest, path, resume=cps.last)
    assert fake.ops() == ["complete"]
    assert fake.objects[receipt.remote_id] == path.read_bytes()


def test_missing_etag_is_retryable_and_not_recorded(fake: FakeLilt, client: httpx.Client,
                                                    tmp_path: Path) -> None:
    path = write(tmp_path, 11 * MiB, "big.bin")
    fake.fault("put_part", lambda r: fake._put_part(r, r.read()), status(200))
    cps = Recorder()
    with pytest.raises(RetryableError, match="ETag"):
        upload(make_dest(client), path, checkpoint=cps)
    assert sorted(cps.last["parts"]) == ["1"]
    fake.log.clear()
    upload(make_dest(client), path, resume=cps.last)
    assert fake.ops() == ["sign", "put_part", "sign", "put_part", "complete"]


def test_expired_part_url_is_resigned(fake: FakeLilt, client: httpx.Client,
                                      tmp_path: Path) -> None:
    path = write(tmp_path, 11 * MiB, "big.bin")
    fake.fault("put_part", lambda r: fake._put_part(r, r.read()),
               status(403, text="<Error><Code>AccessDenied</Code>Request has expired</Error>"))
    receipt = upload(make_dest(client), path)
    assert fake.ops() == ["mp_initiate", "sign", "put_part", "sign", "put_part", "sign",
                          "put_part", "sign", "put_part", "complete"]
    assert fake.objects[receipt.remote_id] == path.read_bytes()


def test_part_expiry_is_bounded(fake: FakeLilt, client: httpx.Client, tmp_path: Path) -> None:
    fake.fault("put_part", *[status(403)] * 10)
    with pytest.raises(ExpiredError):
        upload(make_dest(client), write(tmp_path, 11 * MiB, "big.bin"))
    assert len(fake.ops("put_part")) == _chunked.MAX_RENEWALS + 1


def test_api_403_on_sign_is_fatal_not_expiry(fake: FakeLilt, client: httpx.Client,
                                             tmp_path: Path) -> None:
    fake.fault("sign", status(403, json={"message": "forbidden"}))
    with pytest.raises(FatalError):
        upload(make_dest(client), write(tmp_path, 11 * MiB, "big.bin"))
    assert fake.ops("sign") == ["sign"]


def test_resume_for_other_size_aborts_and_restarts(fake: FakeLilt, client: httpx.Client,
                                                   tmp_path: Path) -> None:
    path = write(tmp_path, 11 * MiB, "big.bin")
    dest = make_dest(client)
    cps = Recorder(crash_after=2)
    with pytest.raises(Crash):
        upload(dest, path, checkpoint=cps)
    stale = dict(cps.last, size=cps.last["size"] + 1)
    fake.log.clear()
    upload(dest, path, resume=stale)
    assert fake.ops()[:2] == ["cancel", "mp_initiate"]
    assert fake.cancelled == ["mpu-1"]


def test_lost_session_restarts_once(fake: FakeLilt, client: httpx.Client, tmp_path: Path) -> None:
    path = write(tmp_path, 11 * MiB, "big.bin")
    dest = make_dest(client)
    cps = Recorder(crash_after=2)
    with pytest.raises(Crash):
        upload(dest, path, checkpoint=cps)
    fake.sessions.clear()  # Lilt forgot the upload
    fake.log.clear()
    receipt = upload(dest, path, resume=cps.last)
    assert fake.ops()[:2] == ["sign", "mp_initiate"]
    assert fake.objects[receipt.remote_id] == path.read_bytes()


def test_multipart_resume_survives_threshold_change(fake: FakeLilt, client: httpx.Client,
                                                    tmp_path: Path) -> None:
    path = write(tmp_path, 11 * MiB, "big.bin")
    cps = Recorder(crash_after=2)
    with pytest.raises(Crash):
        upload(make_dest(client), path, checkpoint=cps)
    fake.log.clear()
    upload(make_dest(client, threshold=64 * MiB), path, resume=cps.last)
    assert "initiate" not in fake.ops() and "mp_initiate" not in fake.ops()


def test_abort_cancels_multipart(fake: FakeLilt, client: httpx.Client, tmp_path: Path) -> None:
    path = write(tmp_path, 11 * MiB, "big.bin")
    dest = make_dest(client)
    cps = Recorder(crash_after=2)
    with pytest.raises(Crash):
        upload(dest, path, checkpoint=cps)
    fake.log.clear()
    dest.abort(cps.last)
    (req, _), = fake.requests("cancel")
    assert req.method == "DELETE"
    assert req.url.path == "/lilt/v2/upload/s3/multipart/mpu-1"
    assert dict(req.url.params) == {"s3Key": "uploads/u1/1-big.bin"}
    assert fake.sessions == {}
    dest.abort(cps.last)  # again: 404, swallowed


def test_abort_is_best_effort(fake: FakeLilt, client: httpx.Client) -> None:
    dest = make_dest(client)
    dest.abort({"v": 1, "kind": "single", "key": "k"})
    dest.abort({"garbage": True})
    dest.abort({"v": 99, "kind": "multipart", "session": {"upload_id": "x", "key": "y"}})
    assert fake.ops() == []
    fake.sessions["x"] = {"key": "y", "parts": {}}
    fake.fault("cancel", status(500))
    dest.abort({"v": 1, "kind": "multipart", "session": {"upload_id": "x", "key": "y"},
                "part_size": 5 * MiB, "size": 1, "parts": {}})
    assert fake.ops() == ["cancel"]


# -- scan status and probe --------------------------------------------------------


def test_wait_for_scan_polls_until_not_pending(fake: FakeLilt, client: httpx.Client,
                                               tmp_path: Path) -> None:
    naps: list[float] = []
    now = [0.0]

    def sleep(s: float) -> None:
        naps.append(s)
        now[0] += s

    old = {"id": 1, "filename": "doc.pdf", "status": "complete",
           "created_at": "2020-01-01T00:00:00Z"}
    mine = {"id": 2, "filename": "doc.pdf", "created_at": "2026-01-01T00:00:00Z"}
    fake.list_replies = [[old, dict(mine, status="pending")], [old, dict(mine, status="pending")],
                         [old, dict(mine, status="scanning")]]
    dest = make_dest(client, wait_for_scan=True, sleep=sleep, clock=lambda: now[0])
    receipt = upload(dest, write(tmp_path, 10))
    assert receipt.details["scan_status"] == "scanning"
    assert naps == [1.0, 2.0]
    lists = fake.requests("list")
    assert len(lists) == 3 and lists[0][0].headers["Authorization"].startswith("Basic ")


def test_wait_for_scan_gives_up_without_failing(fake: FakeLilt, client: httpx.Client,
                                                tmp_path: Path) -> None:
    now = [0.0]
    pending = [{"id": 1, "filename": "doc.pdf", "status": "pending"}]
    fake.list_replies = [pending] * 1000

    def sleep(s: float) -> None:
        now[0] += s

    dest = make_dest(client, wait_for_scan=True, sleep=sleep, clock=lambda: now[0])
    receipt = upload(dest, write(tmp_path, 10))
    assert receipt.details["scan_status"] == "pending"
    assert len(fake.ops("list")) < 40


def test_probe(fake: FakeLilt, client: httpx.Client) -> None:
    fake.list_replies = [[{"id": 1, "filename": "a", "status": "pending"}]]
    assert make_dest(client).probe() == "ok, 1 pending uploads"
    (req, _), = fake.requests("list")
    assert req.method == "GET" and req.url.path == "/lilt/v2/upload"
    assert req.url.query == b""


def test_probe_bad_key(fake: FakeLilt) -> None:
    with httpx.Client(transport=httpx.MockTransport(fake)) as c:
        dest = LiltDestination("x", LiltOptions(api_key=Secret("nope-nope"), base_url=BASE), c)
        with pytest.raises(FatalError):
            dest.probe()


def test_keeps_no_per_file_state(client: httpx.Client) -> None:
    """Many threads share one destination: nothing per-file may live on it."""
    dest = make_dest(client)
    before = dict(vars(dest))
    assert set(before) == {"name", "options", "client", "_api", "_multipart", "_sleep", "_clock",
                           "_slots"}  # the destination-wide connection bound, not per file
    assert set(vars(dest._multipart)) == {"api", "options", "rules"}  # from the options


def test_query_of_storage_url_never_reaches_receipt(fake: FakeLilt, client: httpx.Client,
                                                    tmp_path: Path) -> None:
    receipt = upload(make_dest(client), write(tmp_path, 3))
    assert parse_qs(urlsplit(receipt.url).query) == {}
    assert_no_secrets(json.dumps(receipt.to_json()))


# -- against the real emulator (Lilt-specific; the shared scenarios are in conformance/) ---


def test_wait_for_scan_against_emulator(tmp_path: Path) -> None:
    from syncd.emulator import Emulator

    path = write(tmp_path, 100)
    with Emulator(tmp_path / "emu", lilt_key=KEY) as emu, httpx.Client() as c:
        opts = LiltOptions(api_key=Secret(KEY), base_url=emu.url + "/lilt", wait_for_scan=True)
        dest = LiltDestination("x", opts, c, sleep=lambda s: None)
        receipt = upload(dest, path)
        assert receipt.details["scan_status"] == "complete"
        assert [e["op"] for e in emu.requests()][-2:] == ["lilt.list", "lilt.list"]


def test_resume_across_emulator_restart_on_another_port(tmp_path: Path) -> None:
    """The resume holds no URL, so it survives the server moving (and a new process)."""
    from syncd.emulator import Emulator

    path = write(tmp_path, 11 * MiB, "big.bin")
    crashing = Recorder(crash_after=3)
    with Emulator(tmp_path / "emu", lilt_key=KEY, lilt_part_size=5 * MiB) as emu, \
            httpx.Client() as c:
        opts = LiltOptions(api_key=Secret(KEY), base_url=emu.url + "/lilt",
                           multipart_threshold=5 * MiB, part_size=5 * MiB)
        with pytest.raises(Crash):
            upload(LiltDestination("x", opts, c), path, checkpoint=crashing)
    with Emulator(tmp_path / "emu", lilt_key=KEY, lilt_part_size=5 * MiB) as emu, \
            httpx.Client() as c:
        opts = LiltOptions(api_key=Secret(KEY), base_url=emu.url + "/lilt",
                           multipart_threshold=5 * MiB, part_size=5 * MiB)
        upload(LiltDestination("x", opts, c), path, resume=crashing.last)
        assert [e["op"] for e in emu.requests()] == [
            "lilt.sign_part", "lilt.put_part", "lilt.complete"]
        (row,) = emu.uploads()
        assert row["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def _max_overlap(entries: list[dict[str, Any]]) -> int:
    """Most requests in flight at once, from the emulator's log (start time, duration)."""
    edges = []
    for e in entries:
        edges += [(e["time"], 1), (e["time"] + e["duration"], -1)]  # time = start
    most = now = 0
    for _, step in sorted(edges, key=lambda x: (x[0], x[1])):
        now += step
        most = max(most, now)
    return most


def test_parallel_parts_bounded_by_max_connections(tmp_path: Path) -> None:
    """Two files with 3 parts in flight each, but at most 2 part PUTs at once per destination."""
    import threading

    from syncd.emulator import Emulator

    paths = [write(tmp_path, 4 * 5 * MiB + 10, f"big{i}.bin") for i in range(2)]
    with Emulator(tmp_path / "emu", lilt_key=KEY, lilt_part_size=5 * MiB) as emu, \
            httpx.Client() as c:
        emu.set_faults(script=[{"op": "lilt.put_part", "kind": "slow", "delay": 0.3,
                                "count": 10}])
        opts = LiltOptions(api_key=Secret(KEY), base_url=emu.url + "/lilt",
                           multipart_threshold=5 * MiB, part_size=5 * MiB, parallel_parts=3,
                           max_connections=2)
        dest = LiltDestination("x", opts, c)
        threads = [threading.Thread(target=upload, args=(dest, p)) for p in paths]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        puts = [e for e in emu.requests() if e["op"] == "lilt.put_part"]
        assert len(puts) == 10 and all(e["status"] == 200 for e in puts)
        assert _max_overlap(puts) == 2
        stored = {u["filename"]: u["sha256"] for u in emu.uploads()}
        for p in paths:
            assert stored[p.name] == hashlib.sha256(p.read_bytes()).hexdigest()


# -- Lilt's rules from its docs (issue 10) ------------------------------------------------------


def test_parts_are_8_mib_and_never_grow(tmp_path: Path) -> None:
    """Lilt asks for 8 MiB parts: the default, sent as such to an emulator that refuses any
    other size; a file that would need more than 10,000 of them is refused before any
    request, instead of being sent in larger parts."""
    from syncd.emulator import Emulator

    assert LiltOptions(api_key=Secret(KEY)).part_size == 8 * MiB
    path = write(tmp_path, 2 * 8 * MiB + 3, "big.bin")
    huge = tmp_path / "huge.bin"
    with open(huge, "wb") as f:  # sparse: 10,000 parts of 8 MiB plus one byte
        f.truncate(10_000 * 8 * MiB + 1)
    with Emulator(tmp_path / "emu", lilt_key=KEY) as emu, httpx.Client() as c:
        dest = LiltDestination("x", LiltOptions(api_key=Secret(KEY), base_url=emu.url + "/lilt"),
                               c)
        upload(dest, path)
        parts = [e["bytes"] for e in emu.requests() if e["op"] == "lilt.put_part"]
        assert parts == [8 * MiB, 8 * MiB, 3]
        emu.reset_log()
        with pytest.raises(PermanentError, match="10000 parts of at most 8388608 bytes"):
            upload(dest, huge)
        assert emu.requests() == []
        # Another size is refused by a server that keeps Lilt's rule (the emulator's default).
        five = LiltDestination("x", LiltOptions(api_key=Secret(KEY), base_url=emu.url + "/lilt",
                                                part_size=5 * MiB), c)
        with pytest.raises(PermanentError, match="InvalidPartSize"):
            upload(five, path)


def test_429_without_retry_after_waits_lilts_60_seconds(tmp_path: Path) -> None:
    """Lilt documents a 60 s wait once over its quota, and no rate-limit headers."""
    from syncd.emulator import Emulator

    path = write(tmp_path, 10)
    with Emulator(tmp_path / "emu", lilt_key=KEY) as emu, httpx.Client() as c:
        dest = LiltDestination("x", LiltOptions(api_key=Secret(KEY), base_url=emu.url + "/lilt"),
                               c)
        emu.set_faults(script=[{"op": "lilt.initiate", "kind": "429", "retry_after": "none"}])
        with pytest.raises(RetryableError) as info:
            upload(dest, path)
        assert info.value.status == 429 and info.value.retry_after == 60.0
        emu.set_faults(script=[{"op": "lilt.initiate", "kind": "429", "retry_after": 7}])
        with pytest.raises(RetryableError) as info:
            upload(dest, path)
        assert info.value.retry_after == 7.0  # the server's own word wins when it gives one
        emu.set_faults(script=[{"op": "lilt.initiate", "status": 503}])
        with pytest.raises(RetryableError) as info:
            upload(dest, path)
        assert info.value.retry_after is None  # not a quota: the uploader's backoff
