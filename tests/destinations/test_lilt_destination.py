"""Lilt destination: request shapes, error mapping, resume, ETags, expiry.

Every test talks to the real Lilt emulator in process (``EmulatorTransport``:
no socket), which is strict about what protocols.md §1 says a client must
send (Basic auth on the API, no credentials to storage, s3Key, numeric part
numbers, PascalCase parts, signed lengths and types), so a shape regression
fails here, fast. :class:`Wire` keeps what was sent for the assertions, and
lets a test change an answer on its way back, for what the emulator never
answers (garbage, a lost ETag). Faults the emulator can inject (status
codes, expiry, resets) are injected by the emulator.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from syncd.destinations import _chunked
from syncd.destinations.base import READ_BLOCK
from syncd.destinations.lilt import LiltDestination, LiltOptions
from syncd.errors import (
    ExpiredError,
    FatalError,
    PermanentError,
    RetryableError,
    UploadError,
)
from syncd.http import make_client
from syncd.secrets import Secret
from syncd_emulator import Emulator, EmulatorTransport
from tests.destinations.lilt_wire import (
    BASE,
    KEY,
    PART,
    Crash,
    MiB,
    Recorder,
    Wire,
    all_pending,
    assert_no_secrets,
    make_dest,
    reply,
    sha,
    stored,
    unquoted_etag,
    upload,
    without_etag,
    write,
)

# -- single flow ------------------------------------------------------------------


def test_single_request_shapes(wire: Wire, emu: Emulator, client: httpx.Client, tmp_path: Path) -> None:
    path = write(tmp_path, 1000)
    cps = Recorder()
    receipt = upload(make_dest(client), path, checkpoint=cps)

    assert wire.ops() == ["lilt.initiate", "lilt.put"]
    init, put = wire.sent
    assert init.request.method == "POST" and init.request.url.path == "/lilt/v2/upload/s3/params"
    assert init.request.url.query == b""  # never key= in the query
    assert json.loads(init.body) == {
        "filename": "doc.pdf",
        "type": "application/pdf",
        "metadata": {
            "size": 1000,
            "category": "SOURCE",
            "labels": ["legal", "review-needed"],
            "uuid": "123e4567-e89b-12d3-a456-426614174000",
        },
    }
    assert init.request.headers["Accept"] == "application/json"
    assert init.request.headers["Content-Type"] == "application/json"
    assert (
        init.request.headers["Authorization"] == "Basic " + base64.b64encode(f"{KEY}:{KEY}".encode()).decode()
    )

    assert put.request.method == "PUT"
    assert "Authorization" not in put.request.headers and "key" not in put.request.url.params
    assert put.request.headers["Content-Type"] == "application/pdf"
    assert put.request.headers["Content-Length"] == "1000"
    assert "Transfer-Encoding" not in put.request.headers
    assert put.body == path.read_bytes()

    assert init.response is not None
    key, url = init.response.json()["key"], init.response.json()["url"]
    assert cps.states == []  # one PUT: nothing to resume from
    assert receipt.remote_id == key
    assert receipt.url == url.partition("?")[0]
    assert receipt.details["method"] == "single"
    (row,) = emu.uploads()
    assert (row["key"], row["sha256"], row["labels"], row["category"]) == (
        key,
        sha(path),
        ["legal", "review-needed"],
        "SOURCE",
    )


def test_single_streams_the_body(wire: Wire, emu: Emulator, client: httpx.Client, tmp_path: Path) -> None:
    """A body larger than one read block is an iterator read from the Source, not bytes
    loaded up front; one block or less goes as bytes (no iteration in httpx)."""
    large = write(tmp_path, READ_BLOCK + 600 * 1024)
    receipt = upload(make_dest(client), large)
    (put,) = wire.requests("lilt.put")
    assert not issubclass(put.stream, httpx.ByteStream)
    assert stored(emu) == {receipt.remote_id: sha(large)}
    small = tmp_path / "small.bin"
    small.write_bytes(os.urandom(600 * 1024))
    receipt = upload(make_dest(client), small)
    assert issubclass(wire.requests("lilt.put")[-1].stream, httpx.ByteStream)
    assert stored(emu)[receipt.remote_id] == sha(small)


def test_single_omits_category_when_none(wire: Wire, client: httpx.Client, tmp_path: Path) -> None:
    path = write(tmp_path, 10)
    upload(make_dest(client), path, category=None, labels=())
    (init,) = wire.requests("lilt.initiate")
    assert json.loads(init.body)["metadata"] == {
        "size": 10,
        "labels": [],
        "uuid": "123e4567-e89b-12d3-a456-426614174000",
    }


def test_empty_file_goes_single(wire: Wire, emu: Emulator, client: httpx.Client, tmp_path: Path) -> None:
    path = write(tmp_path, 0)
    receipt = upload(make_dest(client), path)
    (put,) = wire.requests("lilt.put")
    assert put.body == b"" and put.request.headers["Content-Length"] == "0"
    assert stored(emu) == {receipt.remote_id: sha(path)}


def test_single_resume_reinitiates(wire: Wire, client: httpx.Client, tmp_path: Path) -> None:
    path = write(tmp_path, 100)
    receipt = upload(make_dest(client), path, resume={"v": 1, "kind": "single", "key": "old"})
    assert wire.ops() == ["lilt.initiate", "lilt.put"]
    assert wire.sent[0].response is not None
    assert receipt.remote_id == wire.sent[0].response.json()["key"]


def test_single_expired_url_is_renewed(
    wire: Wire, emu: Emulator, client: httpx.Client, tmp_path: Path
) -> None:
    path = write(tmp_path, 100)
    emu.set_faults(script=[{"op": "lilt.put", "kind": "expire"}])
    receipt = upload(make_dest(client), path)
    assert wire.ops() == ["lilt.initiate", "lilt.put", "lilt.initiate", "lilt.put"]
    second = wire.sent[2].response
    assert second is not None and receipt.remote_id == second.json()["key"]
    assert stored(emu) == {receipt.remote_id: sha(path)}


def test_single_expiry_is_bounded(wire: Wire, emu: Emulator, client: httpx.Client, tmp_path: Path) -> None:
    path = write(tmp_path, 100)
    emu.set_faults(script=[{"op": "lilt.put", "kind": "expire", "count": 10}])
    with pytest.raises(ExpiredError) as info:
        upload(make_dest(client), path)
    assert wire.ops().count("lilt.put") == 3
    assert_no_secrets(str(info.value))


def test_a_storage_403_html_page_is_no_expiry(
    wire: Wire, emu: Emulator, client: httpx.Client, tmp_path: Path
) -> None:
    """nginx's or a WAF's 403 page in front of storage was an expired URL: signed and sent
    twice more at once, then charged to the file. It is the service's trouble now."""
    from syncd.circuit import is_outage

    page = "<html><head><title>403 Forbidden</title></head><body>nginx</body></html>"
    wire.edit("lilt.put", *[reply(403, {"Content-Type": "text/html"}, text=page)] * 3)
    with pytest.raises(RetryableError) as info:
        upload(make_dest(client), write(tmp_path, 100))
    assert not isinstance(info.value, ExpiredError) and is_outage(info.value)
    assert wire.ops() == ["lilt.initiate", "lilt.put"]
    assert_no_secrets(str(info.value))


def test_single_method_must_be_put(wire: Wire, client: httpx.Client, tmp_path: Path) -> None:
    wire.edit(
        "lilt.initiate",
        lambda request, response: httpx.Response(200, json={**response.json(), "method": "POST"}),
    )
    with pytest.raises(PermanentError):
        upload(make_dest(client), write(tmp_path, 5))
    assert wire.ops() == ["lilt.initiate"]


# -- error mapping ----------------------------------------------------------------


@pytest.mark.parametrize(
    "code, error",
    [
        (401, FatalError),
        (403, FatalError),
        (400, PermanentError),
        (413, PermanentError),
        (500, RetryableError),
        (503, RetryableError),
        (429, RetryableError),
    ],
)
def test_api_status_mapping(
    emu: Emulator, client: httpx.Client, tmp_path: Path, code: int, error: type[UploadError]
) -> None:
    emu.set_faults(script=[{"op": "lilt.initiate", "status": code, "message": f"no ({KEY})"}])
    with pytest.raises(error) as info:
        upload(make_dest(client), write(tmp_path, 5))
    assert type(info.value) is error
    assert info.value.status == code
    assert_no_secrets(str(info.value))


def test_retry_after_is_passed_on(emu: Emulator, client: httpx.Client, tmp_path: Path) -> None:
    emu.set_faults(script=[{"op": "lilt.initiate", "kind": "429", "retry_after": 7}])
    with pytest.raises(RetryableError) as info:
        upload(make_dest(client), write(tmp_path, 5))
    assert info.value.retry_after == 7.0


def test_wrong_key_is_fatal(emu: Emulator, client: httpx.Client, tmp_path: Path) -> None:
    opts = LiltOptions(api_key=Secret("wrong-key-value"), base_url=BASE)
    with pytest.raises(FatalError) as info:
        upload(LiltDestination("x", opts, client), write(tmp_path, 5))
    assert "wrong-key-value" not in str(info.value)
    assert emu.uploads() == []


def test_transport_error_is_retryable(tmp_path: Path) -> None:
    def boom(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"connection refused for {request.url}")

    with httpx.Client(transport=httpx.MockTransport(boom)) as c, pytest.raises(RetryableError) as info:
        upload(make_dest(c), write(tmp_path, 5))
    assert_no_secrets(str(info.value))


def test_reset_mid_upload_is_retryable(emu: Emulator, client: httpx.Client, tmp_path: Path) -> None:
    emu.set_faults(script=[{"op": "lilt.put", "kind": "reset"}])
    with pytest.raises(RetryableError) as info:
        upload(make_dest(client), write(tmp_path, 300 * 1024))
    assert info.value.transport and info.value.status is None
    assert_no_secrets(str(info.value))
    assert emu.uploads() == []


def test_storage_error_message_hides_signature(wire: Wire, client: httpx.Client, tmp_path: Path) -> None:
    wire.edit("lilt.put", lambda request, response: httpx.Response(503, text=f"overloaded at {request.url}"))
    with pytest.raises(RetryableError) as info:
        upload(make_dest(client), write(tmp_path, 5))
    assert_no_secrets(str(info.value))


def test_garbage_answer_is_retryable(wire: Wire, client: httpx.Client, tmp_path: Path) -> None:
    wire.edit("lilt.initiate", reply(200, text="<html>gateway</html>"), reply(200, json={"url": 5}))
    for _ in range(2):
        with pytest.raises(RetryableError):
            upload(make_dest(client), write(tmp_path, 5))


# -- multipart --------------------------------------------------------------------


def session_of(wire: Wire) -> tuple[str, str]:
    """(uploadId, key) the emulator opened for the first multipart upload."""
    opened = wire.requests("lilt.initiate_multipart")[0].response
    assert opened is not None
    return opened.json()["uploadId"], opened.json()["key"]


def test_multipart_request_shapes(wire: Wire, emu: Emulator, client: httpx.Client, tmp_path: Path) -> None:
    size = 11 * MiB + 123
    path = write(tmp_path, size, "big.zip")
    cps = Recorder()
    receipt = upload(make_dest(client), path, checkpoint=cps, content_type="application/zip")

    assert wire.ops() == [
        "lilt.initiate_multipart",
        "lilt.sign_part",
        "lilt.put_part",
        "lilt.sign_part",
        "lilt.put_part",
        "lilt.sign_part",
        "lilt.put_part",
        "lilt.complete",
    ]
    (init,) = wire.requests("lilt.initiate_multipart")
    assert init.request.url.path == "/lilt/v2/upload/s3/multipart"
    assert json.loads(init.body)["metadata"]["size"] == size
    assert json.loads(init.body)["type"] == "application/zip"
    upload_id, key = session_of(wire)

    signs = [s.request for s in wire.requests("lilt.sign_part")]
    assert [r.url.path for r in signs] == [f"/lilt/v2/upload/s3/multipart/{upload_id}/{n}" for n in (1, 2, 3)]
    assert [dict(r.url.params) for r in signs] == [
        {"s3Key": key, "size": str(s)} for s in (PART, PART, MiB + 123)
    ]
    for r in signs:
        assert r.headers["Authorization"].startswith("Basic ")
    for put in wire.requests("lilt.put_part"):
        assert "Authorization" not in put.request.headers
        assert put.request.headers["Content-Length"] == str(len(put.body))
        assert "Transfer-Encoding" not in put.request.headers

    (done,) = wire.requests("lilt.complete")
    assert done.request.url.path == f"/lilt/v2/upload/s3/multipart/{upload_id}/complete"
    assert dict(done.request.url.params) == {"s3Key": key}
    parts = json.loads(done.body)["parts"]
    assert [p["PartNumber"] for p in parts] == [1, 2, 3]
    assert all(p["ETag"].startswith('"') and p["ETag"].endswith('"') for p in parts)

    # open, then one checkpoint per confirmed part; never a URL
    assert [sorted(s["parts"]) for s in cps.states] == [[], ["1"], ["1", "2"], ["1", "2", "3"]]
    for s in cps.states:
        assert s["v"] == 1 and s["kind"] == "multipart" and s["size"] == size
        assert s["part_size"] == PART
        assert s["session"] == {"upload_id": upload_id, "key": key}
        assert "http" not in json.dumps(s)
    assert cps.last["parts"]["1"] == parts[0]["ETag"]

    assert done.response is not None
    assert receipt.remote_id == key
    assert receipt.url == done.response.json()["location"]
    assert receipt.details["method"] == "multipart"
    assert stored(emu) == {key: sha(path)}


def test_etag_kept_verbatim_without_quotes(wire: Wire, client: httpx.Client, tmp_path: Path) -> None:
    """A store that answers bare ETags gets them back as they came: no quotes added.
    (The emulator itself holds the quoted ones and compares byte for byte, as it says.)"""
    wire.edit("lilt.put_part", *[unquoted_etag] * 3)
    path = write(tmp_path, 11 * MiB, "big.bin")
    with pytest.raises(PermanentError, match="InvalidPart"):
        upload(make_dest(client), path)
    (done,) = wire.requests("lilt.complete")
    sent = [p["ETag"] for p in json.loads(done.body)["parts"]]
    answered = [s.response.headers["ETag"] for s in wire.requests("lilt.put_part") if s.response]
    assert sent == answered and not any(e.startswith('"') for e in sent)


def test_resume_sends_only_missing_parts(
    wire: Wire, emu: Emulator, client: httpx.Client, tmp_path: Path
) -> None:
    path = write(tmp_path, 11 * MiB, "big.bin")
    dest = make_dest(client)
    crashing = Recorder(crash_after=3)  # open + parts 1 and 2
    with pytest.raises(Crash):
        upload(dest, path, checkpoint=crashing)
    saved = crashing.last
    assert sorted(saved["parts"]) == ["1", "2"]
    upload_id, _ = session_of(wire)

    wire.sent.clear()
    cps = Recorder()
    receipt = upload(dest, path, resume=saved, checkpoint=cps)
    assert wire.ops() == ["lilt.sign_part", "lilt.put_part", "lilt.complete"]
    assert wire.sent[0].request.url.path.endswith(f"/{upload_id}/3")
    assert sorted(cps.last["parts"]) == ["1", "2", "3"]
    assert stored(emu) == {receipt.remote_id: sha(path)}


def test_resume_with_all_parts_only_completes(
    wire: Wire, emu: Emulator, client: httpx.Client, tmp_path: Path
) -> None:
    """The complete's answer is S3's 200-with-error; the repeat is answered (and stores once)."""
    path = write(tmp_path, 11 * MiB, "big.bin")
    dest = make_dest(client)
    wire.edit("lilt.complete", reply(200, json={"success": False, "message": "InternalError"}))
    cps = Recorder()
    with pytest.raises(RetryableError):  # 200 without success: S3's 200-with-error
        upload(dest, path, checkpoint=cps)
    wire.sent.clear()
    receipt = upload(dest, path, resume=cps.last)
    assert wire.ops() == ["lilt.complete"]
    assert stored(emu) == {receipt.remote_id: sha(path)}
    assert emu.uploads()[0]["times_received"] == 1


def test_missing_etag_is_retryable_and_not_recorded(wire: Wire, client: httpx.Client, tmp_path: Path) -> None:
    path = write(tmp_path, 11 * MiB, "big.bin")
    wire.edit("lilt.put_part", None, without_etag)
    cps = Recorder()
    with pytest.raises(RetryableError, match="ETag"):
        upload(make_dest(client), path, checkpoint=cps)
    assert sorted(cps.last["parts"]) == ["1"]
    wire.sent.clear()
    upload(make_dest(client), path, resume=cps.last)
    assert wire.ops() == [
        "lilt.sign_part",
        "lilt.put_part",
        "lilt.sign_part",
        "lilt.put_part",
        "lilt.complete",
    ]


def test_expired_part_url_is_resigned(
    wire: Wire, emu: Emulator, client: httpx.Client, tmp_path: Path
) -> None:
    path = write(tmp_path, 11 * MiB, "big.bin")

    def expire_the_next_part(state: dict[str, Any]) -> None:
        if len(state["parts"]) == 1:  # part 1 is in: part 2's URL expires before its PUT
            emu.set_faults(script=[{"op": "lilt.put_part", "kind": "expire"}])

    receipt = upload(make_dest(client), path, checkpoint=Recorder(then=expire_the_next_part))
    assert wire.ops() == [
        "lilt.initiate_multipart",
        "lilt.sign_part",
        "lilt.put_part",
        "lilt.sign_part",
        "lilt.put_part",
        "lilt.sign_part",
        "lilt.put_part",
        "lilt.sign_part",
        "lilt.put_part",
        "lilt.complete",
    ]
    assert [s.response.status_code for s in wire.requests("lilt.put_part") if s.response] == [
        200,
        403,
        200,
        200,
    ]
    assert stored(emu) == {receipt.remote_id: sha(path)}


def test_part_expiry_is_bounded(wire: Wire, emu: Emulator, client: httpx.Client, tmp_path: Path) -> None:
    emu.set_faults(script=[{"op": "lilt.put_part", "kind": "expire", "count": 10}])
    with pytest.raises(ExpiredError):
        upload(make_dest(client), write(tmp_path, 11 * MiB, "big.bin"))
    assert wire.ops().count("lilt.put_part") == _chunked.MAX_RENEWALS + 1


def test_api_403_on_sign_is_fatal_not_expiry(
    wire: Wire, emu: Emulator, client: httpx.Client, tmp_path: Path
) -> None:
    emu.set_faults(script=[{"op": "lilt.sign_part", "status": 403, "message": "forbidden"}])
    with pytest.raises(FatalError):
        upload(make_dest(client), write(tmp_path, 11 * MiB, "big.bin"))
    assert wire.ops().count("lilt.sign_part") == 1


def test_resume_for_other_size_aborts_and_restarts(wire: Wire, client: httpx.Client, tmp_path: Path) -> None:
    path = write(tmp_path, 11 * MiB, "big.bin")
    dest = make_dest(client)
    cps = Recorder(crash_after=2)
    with pytest.raises(Crash):
        upload(dest, path, checkpoint=cps)
    upload_id, _ = session_of(wire)
    stale = dict(cps.last, size=cps.last["size"] + 1)
    wire.sent.clear()
    upload(dest, path, resume=stale)
    assert wire.ops()[:2] == ["lilt.cancel", "lilt.initiate_multipart"]
    (cancel,) = wire.requests("lilt.cancel")
    assert cancel.request.url.path.endswith(f"/{upload_id}") and cancel.response is not None
    assert cancel.response.status_code == 200


def test_lost_session_restarts_once(wire: Wire, emu: Emulator, client: httpx.Client, tmp_path: Path) -> None:
    path = write(tmp_path, 11 * MiB, "big.bin")
    dest = make_dest(client)
    cps = Recorder(crash_after=2)
    with pytest.raises(Crash):
        upload(dest, path, checkpoint=cps)
    upload_id, key = session_of(wire)
    gone = client.delete(
        f"{BASE}/v2/upload/s3/multipart/{upload_id}", params={"s3Key": key}, auth=(KEY, KEY)
    )  # Lilt forgot the upload
    assert gone.status_code == 200
    wire.sent.clear()
    receipt = upload(dest, path, resume=cps.last)
    assert wire.ops()[:2] == ["lilt.sign_part", "lilt.initiate_multipart"]
    assert wire.sent[0].response is not None and wire.sent[0].response.status_code == 404
    assert stored(emu) == {receipt.remote_id: sha(path)}


def test_multipart_resume_survives_threshold_change(wire: Wire, client: httpx.Client, tmp_path: Path) -> None:
    path = write(tmp_path, 11 * MiB, "big.bin")
    cps = Recorder(crash_after=2)
    with pytest.raises(Crash):
        upload(make_dest(client), path, checkpoint=cps)
    wire.sent.clear()
    upload(make_dest(client, threshold=64 * MiB), path, resume=cps.last)
    assert "lilt.initiate" not in wire.ops() and "lilt.initiate_multipart" not in wire.ops()


def test_multipart_resume_survives_part_size_change(
    wire: Wire, emu: Emulator, client: httpx.Client, tmp_path: Path
) -> None:
    """The operator changes part_size while an upload is half done: the session goes on
    in the size it began with (the parts sent are the server's), not from the start."""
    path = write(tmp_path, 11 * MiB, "big.bin")
    cps = Recorder(crash_after=3)  # open + parts 1 and 2
    with pytest.raises(Crash):
        upload(make_dest(client), path, checkpoint=cps)
    wire.sent.clear()
    receipt = upload(make_dest(client, part_size=PART + MiB), path, resume=cps.last)
    assert wire.ops() == ["lilt.sign_part", "lilt.put_part", "lilt.complete"]
    assert stored(emu) == {receipt.remote_id: sha(path)}


def test_abort_cancels_multipart(wire: Wire, client: httpx.Client, tmp_path: Path) -> None:
    path = write(tmp_path, 11 * MiB, "big.bin")
    dest = make_dest(client)
    cps = Recorder(crash_after=2)
    with pytest.raises(Crash):
        upload(dest, path, checkpoint=cps)
    upload_id, key = session_of(wire)
    wire.sent.clear()
    dest.abort(cps.last)
    (cancel,) = wire.requests("lilt.cancel")
    assert cancel.request.method == "DELETE"
    assert cancel.request.url.path == f"/lilt/v2/upload/s3/multipart/{upload_id}"
    assert dict(cancel.request.url.params) == {"s3Key": key}
    assert cancel.response is not None and cancel.response.status_code == 200
    dest.abort(cps.last)  # again: 404, swallowed
    again = wire.requests("lilt.cancel")[1].response
    assert again is not None and again.status_code == 404


def test_abort_is_best_effort(wire: Wire, emu: Emulator, client: httpx.Client) -> None:
    dest = make_dest(client)
    dest.abort({"v": 1, "kind": "single", "key": "k"})
    dest.abort({"garbage": True})
    dest.abort({"v": 99, "kind": "multipart", "session": {"upload_id": "x", "key": "y"}})
    assert wire.ops() == []
    emu.set_faults(script=[{"op": "lilt.cancel", "status": 500}])
    dest.abort(
        {
            "v": 1,
            "kind": "multipart",
            "session": {"upload_id": "x", "key": "y"},
            "part_size": PART,
            "size": 1,
            "parts": {},
        }
    )
    assert wire.ops() == ["lilt.cancel"]


# -- scan status and probe --------------------------------------------------------


def test_wait_for_scan_polls_until_not_pending(wire: Wire, client: httpx.Client, tmp_path: Path) -> None:
    """The newest upload of that name is followed (an older one is complete), with a
    doubling wait; the emulator reports a fresh upload pending once, and the second
    poll's answer is made pending again."""
    naps: list[float] = []
    upload(make_dest(client), write(tmp_path, 10))
    assert make_dest(client).probe()  # the older doc.pdf has been seen: complete from now on
    wire.sent.clear()
    wire.edit("lilt.list", None, all_pending)
    dest = make_dest(client, wait_for_scan=True, sleep=naps.append)
    receipt = upload(dest, write(tmp_path, 10))
    assert receipt.details["scan_status"] == "complete"
    assert naps == [1.0, 2.0]
    lists = wire.requests("lilt.list")
    assert len(lists) == 3 and lists[0].request.headers["Authorization"].startswith("Basic ")
    first = lists[0].response
    assert first is not None and [e["status"] for e in first.json()] == ["complete", "pending"]


def test_wait_for_scan_gives_up_without_failing(wire: Wire, client: httpx.Client, tmp_path: Path) -> None:
    now = [0.0]
    wire.edit("lilt.list", *[all_pending] * 1000)

    def sleep(s: float) -> None:
        now[0] += s

    dest = make_dest(client, wait_for_scan=True, sleep=sleep, clock=lambda: now[0])
    receipt = upload(dest, write(tmp_path, 10))
    assert receipt.details["scan_status"] == "pending"
    assert len(wire.requests("lilt.list")) < 40


def test_probe(wire: Wire, client: httpx.Client, tmp_path: Path) -> None:
    upload(make_dest(client), write(tmp_path, 10))
    wire.sent.clear()
    assert make_dest(client).probe() == "ok, 1 pending uploads"
    (probe,) = wire.requests("lilt.list")
    assert probe.request.method == "GET" and probe.request.url.path == "/lilt/v2/upload"
    assert probe.request.url.query == b""


def test_probe_bad_key(client: httpx.Client) -> None:
    dest = LiltDestination("x", LiltOptions(api_key=Secret("nope-nope"), base_url=BASE), client)
    with pytest.raises(FatalError):
        dest.probe()


def test_keeps_no_per_file_state(client: httpx.Client) -> None:
    """Many threads share one destination: nothing per-file may live on it."""
    dest = make_dest(client)
    before = dict(vars(dest))
    assert set(before) == {
        "name",
        "options",
        "client",
        "_api",
        "_multipart",
        "_sleep",
        "_clock",
        "_parallel",
    }  # the destination-wide connection bound, not per file
    assert set(vars(dest._multipart)) == {"api", "rules", "resume_rules"}  # from the options


def test_query_of_storage_url_never_reaches_receipt(client: httpx.Client, tmp_path: Path) -> None:
    receipt = upload(make_dest(client), write(tmp_path, 3))
    assert parse_qs(urlsplit(receipt.url).query) == {}
    assert_no_secrets(json.dumps(receipt.to_json()))


# -- the emulator's own behaviour over time (the shared scenarios are in conformance/) ---


def test_wait_for_scan_follows_the_emulators_scan(
    emu: Emulator, client: httpx.Client, tmp_path: Path
) -> None:
    dest = make_dest(client, wait_for_scan=True, sleep=lambda s: None)
    receipt = upload(dest, write(tmp_path, 100))
    assert receipt.details["scan_status"] == "complete"
    assert [e["op"] for e in emu.requests()][-2:] == ["lilt.list", "lilt.list"]


def test_resume_across_emulator_restart_at_another_address(tmp_path: Path) -> None:
    """The resume holds no URL, so it survives the server moving (and a new process)."""
    path = write(tmp_path, 11 * MiB, "big.bin")
    crashing = Recorder(crash_after=3)
    emu = Emulator(tmp_path / "emu", lilt_key=KEY, lilt_part_size=PART)
    with make_client(transport=EmulatorTransport(emu)) as c:
        opts = LiltOptions(api_key=Secret(KEY), base_url=BASE, multipart_threshold=PART, part_size=PART)
        with pytest.raises(Crash):
            upload(LiltDestination("x", opts, c), path, checkpoint=crashing)
    emu = Emulator(tmp_path / "emu", lilt_key=KEY, lilt_part_size=PART)  # same data, new process
    with make_client(transport=EmulatorTransport(emu)) as c:
        opts = LiltOptions(
            api_key=Secret(KEY),
            base_url="http://elsewhere.invalid/lilt",
            multipart_threshold=PART,
            part_size=PART,
        )
        upload(LiltDestination("x", opts, c), path, resume=crashing.last)
        assert [e["op"] for e in emu.requests()] == ["lilt.sign_part", "lilt.put_part", "lilt.complete"]
        (row,) = emu.uploads()
        assert row["sha256"] == sha(path)


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


@pytest.mark.slow
def test_parallel_parts_bounded_by_max_connections(
    emu: Emulator, client: httpx.Client, tmp_path: Path
) -> None:
    """Two files with 3 parts in flight each, but at most 2 part PUTs at once per destination."""
    import threading

    paths = [write(tmp_path, 4 * PART + 10, f"big{i}.bin") for i in range(2)]
    emu.set_faults(script=[{"op": "lilt.put_part", "kind": "slow", "delay": 0.3, "count": 10}])
    opts = LiltOptions(
        api_key=Secret(KEY),
        base_url=BASE,
        multipart_threshold=PART,
        part_size=PART,
        parallel_parts=3,
        max_connections=2,
    )
    dest = LiltDestination("x", opts, client)
    threads = [threading.Thread(target=upload, args=(dest, p)) for p in paths]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    puts = [e for e in emu.requests() if e["op"] == "lilt.put_part"]
    assert len(puts) == 10 and all(e["status"] == 200 for e in puts)
    assert _max_overlap(puts) == 2
    stored_sha = {u["filename"]: u["sha256"] for u in emu.uploads()}
    for p in paths:
        assert stored_sha[p.name] == sha(p)


# -- Lilt's rules from its docs (issue 10) ------------------------------------------------------


@pytest.fixture
def lilt_rules(tmp_path: Path) -> Iterator[tuple[Emulator, httpx.Client]]:
    """An emulator that keeps Lilt's own 8 MiB part rule (its default), in process."""
    emu = Emulator(tmp_path / "lilt-rules", lilt_key=KEY)
    with make_client(transport=EmulatorTransport(emu)) as c:
        yield emu, c


def test_parts_are_8_mib_and_never_grow(lilt_rules: tuple[Emulator, httpx.Client], tmp_path: Path) -> None:
    """Lilt asks for 8 MiB parts: the default, sent as such to an emulator that refuses any
    other size; a file that would need more than 10,000 of them is refused before any
    request, instead of being sent in larger parts."""
    emu, c = lilt_rules
    assert LiltOptions(api_key=Secret(KEY)).part_size == 8 * MiB
    path = write(tmp_path, 2 * 8 * MiB + 3, "big.bin")
    huge = tmp_path / "huge.bin"
    with open(huge, "wb") as f:  # sparse: 10,000 parts of 8 MiB plus one byte
        f.truncate(10_000 * 8 * MiB + 1)
    dest = LiltDestination("x", LiltOptions(api_key=Secret(KEY), base_url=BASE), c)
    upload(dest, path)
    parts = [e["bytes"] for e in emu.requests() if e["op"] == "lilt.put_part"]
    assert parts == [8 * MiB, 8 * MiB, 3]
    emu.reset_log()
    with pytest.raises(PermanentError, match="10000 parts of at most 8388608 bytes"):
        upload(dest, huge)
    assert emu.requests() == []
    # Another size is refused by a server that keeps Lilt's rule (the emulator's default).
    five = LiltDestination("x", LiltOptions(api_key=Secret(KEY), base_url=BASE, part_size=5 * MiB), c)
    with pytest.raises(PermanentError, match="InvalidPartSize"):
        upload(five, path)


def test_429_without_retry_after_waits_lilts_60_seconds(
    lilt_rules: tuple[Emulator, httpx.Client], tmp_path: Path
) -> None:
    """Lilt documents a 60 s wait once over its quota, and no rate-limit headers."""
    emu, c = lilt_rules
    path = write(tmp_path, 10)
    dest = LiltDestination("x", LiltOptions(api_key=Secret(KEY), base_url=BASE), c)
    emu.set_faults(script=[{"op": "lilt.initiate", "kind": "429", "retry_after": "none"}])
    with pytest.raises(RetryableError) as info:
        upload(dest, path)
    assert info.value.status == 429 and info.value.retry_after == 60.0
    assert info.value.min_wait == 60.0  # documented: retry_max_seconds does not shorten it
    emu.set_faults(script=[{"op": "lilt.initiate", "kind": "429", "retry_after": 7}])
    with pytest.raises(RetryableError) as info:
        upload(dest, path)
    assert info.value.retry_after == 7.0  # the server's own word wins when it gives one
    assert info.value.min_wait == 0.0
    emu.set_faults(script=[{"op": "lilt.initiate", "status": 503}])
    with pytest.raises(RetryableError) as info:
        upload(dest, path)
    assert info.value.retry_after is None  # not a quota: the uploader's backoff
