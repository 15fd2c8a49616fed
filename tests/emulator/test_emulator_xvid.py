"""The Xvid MediaHub emulation (protocols.md §2) over real loopback HTTP: the
OAuth token and auth, the S3 form post and its refusals, policy expiry, chunk
assembly (one key per chunk), finishing, aborting and injected faults.

The destination against it is in tests/destinations/test_xvid_destination.py."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from syncd.destinations.xvid import chunk_key
from syncd_emulator import Emulator
from syncd_emulator.xvid import XvidService
from tests.support.xvid import (  # noqa: F401 (fixtures)
    CLIENT,
    PIPELINE,
    SECRET,
    Clock,
    bearer,
    clock,
    emu,
    finish,
    get_token,
    http,
    leftovers,
    ops,
    service,
    stored,
)

pytestmark = pytest.mark.timeout(60)

TOKEN_ERROR = {"error": {"error_code": "0x0000003", "error_message": "Invalid access token"}}


def open_upload(
    http: httpx.Client, emu: Emulator, auth: dict[str, str], object_key: str = "uploads/test.mp4"
) -> dict[str, Any]:
    r = http.post(
        emu.url + "/xvid/v1/files/uploads/",
        headers=auth,
        params={"object_key": object_key, "pipeline_id": PIPELINE},
    )
    assert r.status_code == 200, r.text
    upload: dict[str, Any] = r.json()["upload"]
    return upload


def multipart(
    fields: list[tuple[str, str]], data: bytes, *, file_at: int | None = None
) -> tuple[bytes, dict[str, str]]:
    """A form body built by hand, so that the field order is the test's choice."""
    boundary = "xvid-test-boundary"
    parts: list[tuple[str, bytes, str | None]] = [(n, v.encode(), None) for n, v in fields]
    parts.insert(len(parts) if file_at is None else file_at, ("file", data, "chunk.bin"))
    body = b""
    for name, value, filename in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value
        body += b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def post_chunk(
    http: httpx.Client,
    upload: dict[str, Any],
    data: bytes,
    chunk: int = 0,
    chunks: int = 1,
    *,
    change: dict[str, str | None] | None = None,
    file_at: int | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    fields = dict(upload["form_post_params"], chunk=str(chunk), chunks=str(chunks))
    for name, value in (change or {}).items():
        if value is None:
            fields.pop(name)
        else:
            fields[name] = value
    body, form_headers = multipart(list(fields.items()), data, file_at=file_at)
    return http.post(upload["form_post_url"], content=body, headers={**form_headers, **(headers or {})})


# -- emulator: token and auth -----------------------------------------------------------------


def test_token_is_form_encoded_client_credential_with_string_expiry(
    http: httpx.Client, emu: Emulator, clock: Clock
) -> None:
    r = get_token(http, emu)
    assert r.status_code == 200
    assert r.json()["expires_in"] == "7200" and r.json()["access_token"]
    plural = get_token(http, emu, grant_type="client_credentials")
    assert plural.status_code == 400
    assert plural.json()["error"]["error_code"] == "0x0230001"
    as_json = http.post(
        emu.url + "/xvid/v1/oauth2/token/",
        json={
            "grant_type": "client_credential",
            "client_id": CLIENT,
            "client_secret": SECRET,
            "scope": "mediahub",
        },
    )
    assert as_json.status_code == 400
    assert get_token(http, emu, scope="mediahubb").status_code == 400
    wrong = get_token(http, emu, client_secret="nope")
    assert wrong.status_code == 403 and wrong.json()["error"]["error_code"] == "0x0000003"

    short = get_token(http, emu, expires_in="5")
    assert short.json()["expires_in"] == "5"
    auth = {"Authorization": f"Bearer {short.json()['access_token']}"}
    assert http.get(emu.url + "/xvid/v1/files/uploads/nothing", headers=auth).status_code == 404
    clock.advance(6)
    expired = http.get(emu.url + "/xvid/v1/files/uploads/nothing", headers=auth)
    assert (expired.status_code, expired.json()) == (403, TOKEN_ERROR)


def test_every_api_call_needs_a_bearer_token(http: httpx.Client, emu: Emulator) -> None:
    base = emu.url + "/xvid/v1"
    for method, path in (
        ("POST", "/files/uploads/?object_key=a&pipeline_id=p"),
        ("GET", "/files/uploads/x"),
        ("PUT", "/files/uploads/x"),
        ("GET", "/files/x"),
        ("DELETE", "/files/x"),
    ):
        r = http.request(method, base + path)
        assert (r.status_code, r.json()) == (403, TOKEN_ERROR), (method, path)
    basic = http.get(base + "/files/x", auth=(CLIENT, SECRET))
    assert basic.status_code == 403
    read_only = get_token(http, emu, scope="mediahub_read").json()["access_token"]
    r = http.post(
        base + "/files/uploads/",
        params={"object_key": "a", "pipeline_id": PIPELINE},
        headers={"Authorization": f"Bearer {read_only}"},
    )
    assert r.status_code == 403


def test_open_answers_the_documented_session(http: httpx.Client, emu: Emulator, clock: Clock) -> None:
    upload = open_upload(http, emu, bearer(http, emu))
    assert upload["status"] == "UPLOADING" and upload["nb_chunks"] == 0
    assert upload["file"]["id"] == upload["id"] and upload["pipeline"]["id"] == PIPELINE
    assert upload["object_key"] == "uploads/test.mp4" and upload["storage_type"] == "S3"
    assert upload["form_post_url"].startswith(emu.url + "/xvid/v1/_s3/")
    params = upload["form_post_params"]
    assert list(params) == [
        "key",
        "acl",
        "success_action_status",
        "name",
        "filename",
        "chunk",
        "chunks",
        "policy",
        "signature",
        "AWSAccessKeyId",
    ]
    assert all(isinstance(v, str) for v in params.values())
    assert params["key"] == f"tmp/{PIPELINE}/uploads/test.mp4" and params["name"] == "test.mp4"
    policy = json.loads(base64.b64decode(params["policy"]))
    assert ["starts-with", "$key", f"tmp/{PIPELINE}/"] in policy["conditions"]
    assert {"success_action_status": "201"} in policy["conditions"]
    expires = datetime.strptime(policy["expiration"], "%Y-%m-%dT%H:%M:%S.%fZ")
    assert abs(expires.replace(tzinfo=UTC).timestamp() - (clock() + 60)) < 2
    assert len(base64.b64decode(params["signature"])) == 20  # HMAC-SHA1, as AWS signature v2
    bad = http.post(
        emu.url + "/xvid/v1/files/uploads/", headers=bearer(http, emu), params={"pipeline_id": PIPELINE}
    )
    assert bad.status_code == 400 and bad.json()["error"]["error_code"] == "0x0230001"


# -- emulator: the S3 form post ------------------------------------------------------------------


def test_form_post_stores_a_chunk_and_answers_201_xml(http: httpx.Client, emu: Emulator) -> None:
    upload = open_upload(http, emu, bearer(http, emu))
    r = post_chunk(http, upload, b"hello")
    assert r.status_code == 201, r.text
    assert "<PostResponse>" in r.text and f"<Key>tmp/{PIPELINE}/uploads/test.mp4</Key>" in r.text
    assert r.headers["ETag"] == f'"{hashlib.md5(b"hello").hexdigest()}"'
    assert ops(emu, "xvid.post_chunk")[-1]["bytes"] == 5  # the chunk, not the form around it


@pytest.mark.parametrize(
    ("change", "file_at", "headers", "status", "code"),
    [
        ({}, 0, {}, 400, "InvalidArgument"),  # file first
        ({}, 3, {}, 400, "InvalidArgument"),  # file in the middle
        ({"acl": None}, None, {}, 400, "InvalidArgument"),  # a field missing
        ({"x-extra": "1"}, None, {}, 403, "AccessDenied"),  # a field not in the policy
        ({"signature": base64.b64encode(b"x" * 20).decode()}, None, {}, 403, "SignatureDoesNotMatch"),
        ({"AWSAccessKeyId": "AKIAOTHER"}, None, {}, 403, "InvalidAccessKeyId"),
        ({"key": "tmp/other-pipeline/x.mp4"}, None, {}, 403, "AccessDenied"),  # outside tmp/<pipeline>/
        ({"acl": "public-read"}, None, {}, 403, "AccessDenied"),
        ({"chunk": "3", "chunks": "2"}, None, {}, 400, "InvalidArgument"),
        ({}, None, {"Authorization": "Bearer abc"}, 400, "InvalidArgument"),  # no Bearer to storage
    ],
)
def test_form_post_refusals_store_nothing(
    http: httpx.Client,
    emu: Emulator,
    service: XvidService,
    change: dict[str, str | None],
    file_at: int | None,
    headers: dict[str, str],
    status: int,
    code: str,
) -> None:
    upload = open_upload(http, emu, bearer(http, emu))
    r = post_chunk(http, upload, b"data", change=change, file_at=file_at, headers=headers)
    assert r.status_code == status, r.text
    assert f"<Code>{code}</Code>" in r.text
    session = service.sessions.get(upload["id"])
    assert session is not None and session.parts == {}


def test_form_post_after_the_policy_expired_is_403(http: httpx.Client, emu: Emulator, clock: Clock) -> None:
    upload = open_upload(http, emu, bearer(http, emu))
    clock.advance(61)
    r = post_chunk(http, upload, b"late")
    assert r.status_code == 403 and "Policy expired" in r.text


def test_form_post_must_be_multipart(http: httpx.Client, emu: Emulator) -> None:
    upload = open_upload(http, emu, bearer(http, emu))
    r = http.post(upload["form_post_url"], data=upload["form_post_params"])
    assert r.status_code == 412 and "<Code>PreconditionFailed</Code>" in r.text


# -- emulator: finishing -----------------------------------------------------------------------


def test_chunks_are_assembled_in_chunk_order(http: httpx.Client, emu: Emulator, clock: Clock) -> None:
    auth = bearer(http, emu)
    upload = open_upload(http, emu, auth, "media/big.bin")
    key = upload["form_post_params"]["key"]
    chunks = [os.urandom(1000), os.urandom(1000), os.urandom(10)]
    for i in (2, 0, 1):  # any order, each chunk under its own key below the form's
        assert post_chunk(http, upload, chunks[i], i, 3, change={"key": chunk_key(key, i)}).status_code == 201
    # Posting to a key again replaces that object, as S3 does.
    assert post_chunk(http, upload, os.urandom(7), 0, 3, change={"key": chunk_key(key, 0)}).status_code == 201
    assert post_chunk(http, upload, chunks[0], 0, 3, change={"key": chunk_key(key, 0)}).status_code == 201
    r = finish(http, emu, auth, upload["id"], 3)
    assert r.status_code == 200 and r.json()["upload"]["status"] == "COMPLETING"
    status_url = f"{emu.url}/xvid/v1/files/uploads/{upload['id']}"
    assert "form_post_params" not in http.get(status_url, headers=auth).json()["upload"]
    assert http.get(status_url, headers=auth).json()["upload"]["status"] == "COMPLETED"
    (row,) = stored(emu)
    assert Path(row["path"]).read_bytes() == b"".join(chunks)
    assert row["key"] == f"{PIPELINE}/media/big.bin" and row["object_key"] == "media/big.bin"
    assert row["filename"] == "big.bin" and row["chunks"] == 3
    assert row["labels"] == [] and row["category"] is None and row["uuid"] is None
    again = finish(http, emu, auth, upload["id"], 3)  # a repeated finish stores nothing again
    assert again.status_code == 200 and stored(emu)[0]["times_received"] == 1
    file = http.get(f"{emu.url}/xvid/v1/files/{upload['file']['id']}", headers=auth)
    assert file.status_code == 200 and file.json()["file"]["size"] == 2010
    assert post_chunk(http, upload, b"more", 0, 3).status_code == 403  # finished: no more chunks


def test_nb_chunks_must_match_the_chunks_received(http: httpx.Client, emu: Emulator) -> None:
    auth = bearer(http, emu)
    upload = open_upload(http, emu, auth)
    post_chunk(http, upload, b"a", 0, 3)
    post_chunk(http, upload, b"b", 1, 3)
    for nb in (2, 3, 4):
        r = finish(http, emu, auth, upload["id"], nb)
        assert r.status_code == 400 and r.json()["error"]["error_code"] == "0x0230001", nb
    bad_json = http.put(
        f"{emu.url}/xvid/v1/files/uploads/{upload['id']}",
        headers=auth,
        content=b'{"upload": {"nb_chunks": 2,}}',
    )  # the docs' own example
    assert bad_json.status_code == 400
    assert stored(emu) == []


def test_delete_aborts_an_unfinished_upload(http: httpx.Client, emu: Emulator) -> None:
    auth = bearer(http, emu)
    upload = open_upload(http, emu, auth)
    post_chunk(http, upload, b"part", 0, 2)
    r = http.delete(f"{emu.url}/xvid/v1/files/{upload['file']['id']}", headers=auth)
    assert (r.status_code, r.json()) == (200, {"result": {"status": "SUCCESS"}})
    gone = http.get(f"{emu.url}/xvid/v1/files/uploads/{upload['id']}", headers=auth)
    assert gone.status_code == 404 and gone.json()["error"]["error_code"] == "0x0230002"
    assert post_chunk(http, upload, b"late", 1, 2).status_code == 403
    assert leftovers(emu) == []


def test_injected_faults_speak_each_part_of_the_service(http: httpx.Client, emu: Emulator) -> None:
    auth = bearer(http, emu)
    emu.set_faults(script=[{"op": "xvid.open", "status": 503}, {"op": "xvid.post_chunk", "status": 503}])
    r = http.post(
        emu.url + "/xvid/v1/files/uploads/", headers=auth, params={"object_key": "a", "pipeline_id": PIPELINE}
    )
    assert r.status_code == 503 and r.json()["error"]["error_code"] == "0x0000001"
    r = post_chunk(http, open_upload(http, emu, auth), b"x")
    assert r.status_code == 503 and r.text.startswith("<?xml") and "<Error>" in r.text


# -- emulator: chunk keys --------------------------------------------------------------------


def test_chunks_posted_under_one_key_replace_each_other(http: httpx.Client, emu: Emulator) -> None:
    """S3 keeps one object per key: the form's key reused for every chunk leaves only the last."""
    auth = bearer(http, emu)
    upload = open_upload(http, emu, auth)
    for i in range(3):
        assert post_chunk(http, upload, os.urandom(100), i, 3).status_code == 201
    r = finish(http, emu, auth, upload["id"], 3)
    assert r.status_code == 400 and "hold chunks [2]" in r.json()["error"]["error_message"]
    assert "replace each other" in r.json()["error"]["error_message"]
    # The same chunk under two keys is ambiguous, and refused too.
    key = upload["form_post_params"]["key"]
    for i, suffix in ((0, ".a"), (0, ".b"), (1, ".c")):
        post_chunk(http, upload, b"x", i, 2, change={"key": key + suffix})
    r = finish(http, emu, auth, upload["id"], 2)
    assert r.status_code == 400 and "more than one key" in r.json()["error"]["error_message"]
    assert stored(emu) == []
