"""The Lilt emulation (protocols.md §1) over real loopback HTTP: every
strictness rule has its own test, and every refusal leaves nothing stored."""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from syncd_emulator import Emulator
from tests.conftest import FakeClock as Clock  # its `clock` fixture serves these tests

KEY = "demo-lilt-key"
MIB = 1024 * 1024
MP = "/v2/upload/s3/multipart"

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def emu(tmp_path: Path, clock: Clock) -> Iterator[Emulator]:
    # lilt_part_size=0: S3's own part rules, which most tests here are about; Lilt's 8 MiB
    # rule (the default) has its own tests below.
    with Emulator(tmp_path / "data", url_ttl=60, clock=clock, lilt_part_size=0) as emulator:
        yield emulator


@pytest.fixture
def api(emu: Emulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emu.url + "/lilt", auth=(KEY, KEY), timeout=20) as client:
        yield client


def initiate(
    api: httpx.Client, *, filename: str = "doc.txt", type: str = "text/plain", **metadata: Any
) -> dict[str, Any]:
    r = api.post("/v2/upload/s3/params", json={"filename": filename, "type": type, "metadata": metadata})
    assert r.status_code == 200, r.text
    params: dict[str, Any] = r.json()
    return params


def put(url: str, body: bytes, content_type: str | None = "text/plain", **kw: Any) -> httpx.Response:
    headers = {"Content-Type": content_type} if content_type else {}
    headers.update(kw.pop("headers", {}))
    return httpx.put(url, content=body, headers=headers, timeout=20, **kw)


def assert_s3_error(r: httpx.Response, status: int, code: str, text: str = "") -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/xml"
    assert f"<Error><Code>{code}</Code><Message>" in r.text and text in r.text


def md5q(data: bytes) -> str:
    return f'"{hashlib.md5(data).hexdigest()}"'


# -- single PUT ------------------------------------------------------------------


def test_single_put_stores_bytes_and_metadata(emu: Emulator, api: httpx.Client) -> None:
    body = b"hello lilt"
    params = initiate(
        api,
        filename="report final.pdf",
        type="application/pdf",
        size=len(body),
        labels=["legal", "review-needed"],
        category="SOURCE",
        uuid="u-1",
    )
    assert params["method"] == "PUT" and params["url"].startswith(emu.url + "/lilt/_storage/")
    assert params["key"].endswith("report final.pdf")
    r = put(params["url"], body, "application/pdf")
    assert r.status_code == 200 and r.headers["ETag"] == md5q(body)
    (row,) = emu.uploads()
    assert row["service"] == "lilt" and row["key"] == params["key"]
    assert (row["filename"], row["size"], row["sha256"]) == (
        "report final.pdf",
        len(body),
        hashlib.sha256(body).hexdigest(),
    )
    assert (row["labels"], row["category"], row["uuid"]) == (
        ["legal", "review-needed"],
        "SOURCE",
        "u-1",
    )
    assert row["content_type"] == "application/pdf" and row["times_received"] == 1
    assert Path(row["path"]).read_bytes() == body


def test_get_params_variant_and_empty_file(emu: Emulator, api: httpx.Client) -> None:
    r = api.get(
        "/v2/upload/s3/params",
        params={
            "filename": "e.json",
            "type": "application/json",
            "metadata.size": "0",
            "metadata.labels": "a,b",
            "metadata.category": "REFERENCE",
        },
    )
    assert r.status_code == 200
    assert put(r.json()["url"], b"", "application/json").status_code == 200
    (row,) = emu.uploads()
    assert (row["size"], row["labels"], row["category"]) == (0, ["a", "b"], "REFERENCE")


def test_repeated_put_counts_times_received(emu: Emulator, api: httpx.Client) -> None:
    url = initiate(api, size=3)["url"]
    assert put(url, b"abc").status_code == 200
    assert put(url, b"abc").status_code == 200
    (row,) = emu.uploads()
    assert row["times_received"] == 2
    assert len(api.get("/v2/upload").json()) == 1  # still one upload record


def test_bulk_initiate(api: httpx.Client) -> None:
    items = [{"filename": f"f{i}.txt", "type": "text/plain"} for i in range(3)]
    r = api.post("/v2/upload/s3/params", json=items)
    assert r.status_code == 200 and [x["key"].rsplit("/", 1)[1] for x in r.json()] == [
        "f0.txt",
        "f1.txt",
        "f2.txt",
    ]
    r = api.post(MP, json=items[:2])
    assert r.status_code == 200 and all(set(x) == {"uploadId", "key"} for x in r.json())
    assert api.post("/v2/upload/s3/params", json=items * 34).status_code == 400  # 102 > 100
    assert api.post("/v2/upload/s3/params", json=[]).status_code == 400


# -- auth --------------------------------------------------------------------------


@pytest.mark.parametrize("auth_kind", ["none", "wrong-key", "bearer", "basic-user-only", "query-wrong"])
def test_bad_credentials_are_401(emu: Emulator, auth_kind: str) -> None:
    url = emu.url + "/lilt/v2/upload"
    headers = {
        "none": {},
        "wrong-key": {"Authorization": "Basic " + base64.b64encode(b"nope:nope").decode()},
        "bearer": {"Authorization": f"Bearer {KEY}"},
        "basic-user-only": {"Authorization": "Basic " + base64.b64encode(f"{KEY}:".encode()).decode()},
        "query-wrong": {},
    }[auth_kind]
    params = {"key": "nope"} if auth_kind == "query-wrong" else {}
    r = httpx.get(url, headers=headers, params=params)
    assert r.status_code == 401 and isinstance(r.json()["message"], str)


def test_query_key_auth(emu: Emulator) -> None:
    r = httpx.get(emu.url + "/lilt/v2/upload", params={"key": KEY})
    assert r.status_code == 200 and r.json() == []


# -- initiate validation --------------------------------------------------------------


@pytest.mark.parametrize(
    "body, field",
    [
        ({"type": "text/plain"}, "filename"),
        ({"filename": "a.txt"}, "type"),
        ({"filename": "", "type": "text/plain"}, "filename"),
        ({"filename": "a.txt", "type": "text/plain", "metadata": {"size": "12"}}, "metadata.size"),
        ({"filename": "a.txt", "type": "text/plain", "metadata": {"size": -1}}, "metadata.size"),
        ({"filename": "a.txt", "type": "text/plain", "metadata": {"size": True}}, "metadata.size"),
        (
            {"filename": "a.txt", "type": "text/plain", "metadata": {"labels": "a,b"}},
            "metadata.labels",
        ),
        (
            {"filename": "a.txt", "type": "text/plain", "metadata": {"labels": [1]}},
            "metadata.labels",
        ),
        (
            {"filename": "a.txt", "type": "text/plain", "metadata": {"category": 3}},
            "metadata.category",
        ),
        ({"filename": "a.txt", "type": "text/plain", "metadata": {"uuid": 3}}, "metadata.uuid"),
        ({"filename": "a.txt", "type": "text/plain", "metadata": []}, "metadata"),
    ],
)
def test_initiate_rejects_bad_fields(api: httpx.Client, body: dict[str, Any], field: str) -> None:
    for path in ("/v2/upload/s3/params", MP):
        r = api.post(path, json=body)
        assert r.status_code == 400 and field in r.json()["message"]


def test_initiate_get_variant_validation_and_bad_json(api: httpx.Client) -> None:
    r = api.get("/v2/upload/s3/params", params={"filename": "a.txt"})
    assert r.status_code == 400 and "type" in r.json()["message"]
    r = api.get("/v2/upload/s3/params", params={"filename": "a", "type": "t", "metadata.size": "1.5"})
    assert r.status_code == 400 and "metadata.size" in r.json()["message"]
    r = api.post("/v2/upload/s3/params", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["message"]


# -- storage PUT strictness -------------------------------------------------------------


def test_put_refuses_missing_or_bad_signature(emu: Emulator, api: httpx.Client) -> None:
    url = initiate(api, size=5)["url"]
    assert_s3_error(put(url.split("?")[0], b"hello"), 403, "AccessDenied", "X-Emu-Signature")
    sig = url.split("X-Emu-Signature=")[1]
    tampered = url.replace(sig, ("0" if sig[0] != "0" else "1") + sig[1:])
    assert_s3_error(put(tampered, b"hello"), 403, "SignatureDoesNotMatch")
    other_key = url.replace("doc.txt", "other.txt")
    assert_s3_error(put(other_key, b"hello"), 403, "SignatureDoesNotMatch")
    assert emu.uploads() == []


def test_put_refuses_an_expired_url(emu: Emulator, api: httpx.Client, clock: Clock) -> None:
    url = initiate(api, size=5)["url"]
    clock.now += 61  # url_ttl is 60
    assert_s3_error(put(url, b"hello"), 403, "AccessDenied", "Request has expired")
    assert emu.uploads() == []


@pytest.mark.slow
def test_put_refuses_an_expired_url_in_real_time(tmp_path: Path) -> None:
    import time

    with Emulator(tmp_path, url_ttl=0.01) as emu:
        url = httpx.post(
            emu.url + "/lilt/v2/upload/s3/params",
            auth=(KEY, KEY),
            json={"filename": "a", "type": "t"},
        ).json()["url"]
        time.sleep(1.1)  # expiry is whole epoch seconds, rounded up
        assert_s3_error(put(url, b"x", "t"), 403, "AccessDenied", "Request has expired")


def test_put_refuses_an_authorization_header(emu: Emulator, api: httpx.Client) -> None:
    url = initiate(api, size=5)["url"]
    assert_s3_error(put(url, b"hello", auth=(KEY, KEY)), 403, "AccessDenied", "credentials")
    assert emu.uploads() == []


def test_put_refuses_an_api_key_in_the_query(emu: Emulator, api: httpx.Client) -> None:
    url = initiate(api, size=5)["url"]
    assert_s3_error(put(url + f"&key={KEY}", b"hello"), 403, "AccessDenied", "credentials")
    assert emu.uploads() == []


def test_put_refuses_another_content_type(emu: Emulator, api: httpx.Client) -> None:
    url = initiate(api, size=5)["url"]
    assert_s3_error(
        put(url, b"hello", "application/octet-stream"), 403, "SignatureDoesNotMatch", "Content-Type"
    )
    assert_s3_error(put(url, b"hello", None), 403, "SignatureDoesNotMatch", "Content-Type")
    assert emu.uploads() == []


def test_put_refuses_a_missing_content_length(emu: Emulator, api: httpx.Client) -> None:
    url = initiate(api, size=5)["url"]
    r = httpx.put(url, content=iter([b"hel", b"lo"]), headers={"Content-Type": "text/plain"})
    assert_s3_error(r, 403, "MissingContentLength")
    assert emu.uploads() == []


def test_put_refuses_a_size_other_than_declared(emu: Emulator, api: httpx.Client) -> None:
    url = initiate(api, size=5)["url"]
    assert_s3_error(put(url, b"hello!"), 403, "SignatureDoesNotMatch", "metadata.size")
    assert emu.uploads() == []
    assert put(url, b"hello").status_code == 200


def test_urls_do_not_survive_a_restart(tmp_path: Path) -> None:
    with Emulator(tmp_path) as first:
        url = httpx.post(
            first.url + "/lilt/v2/upload/s3/params",
            auth=(KEY, KEY),
            json={"filename": "a", "type": "t"},
        ).json()["url"]
    with Emulator(tmp_path, port=first.port) as second:
        assert_s3_error(put(url, b"x", "t"), 403, "SignatureDoesNotMatch")
        assert second.uploads() == []


# -- multipart ------------------------------------------------------------------------


def start_multipart(api: httpx.Client, size: int | None, **extra: Any) -> dict[str, Any]:
    meta = {"size": size, **extra} if size is not None else extra
    r = api.post(MP, json={"filename": "big.bin", "type": "application/zip", "metadata": meta})
    assert r.status_code == 200, r.text
    mp: dict[str, Any] = r.json()
    return mp


def sign(api: httpx.Client, mp: dict[str, Any], number: int | str, size: int) -> httpx.Response:
    return api.get(f"{MP}/{mp['uploadId']}/{number}", params={"s3Key": mp["key"], "size": size})


def send_part(api: httpx.Client, mp: dict[str, Any], number: int, data: bytes) -> str:
    r = sign(api, mp, number, len(data))
    assert r.status_code == 200, r.text
    assert r.json()["method"] == "PUT"
    pr = httpx.put(r.json()["url"], content=data, timeout=20)
    assert pr.status_code == 200, pr.text
    return pr.headers["ETag"]


def complete(api: httpx.Client, mp: dict[str, Any], parts: list[dict[str, Any]]) -> httpx.Response:
    return api.post(f"{MP}/{mp['uploadId']}/complete", params={"s3Key": mp["key"]}, json={"parts": parts})


@pytest.fixture(scope="module")
def data() -> bytes:
    return os.urandom(11 * MIB)  # two 5 MiB parts and a 1 MiB last part


def test_multipart_happy_path_three_parts(emu: Emulator, api: httpx.Client, data: bytes) -> None:
    mp = start_multipart(api, len(data), labels=["x"], category="SOURCE")
    chunks = [data[: 5 * MIB], data[5 * MIB : 10 * MIB], data[10 * MIB :]]
    etags = [send_part(api, mp, i, c) for i, c in enumerate(chunks, 1)]
    assert etags == [md5q(c) for c in chunks]
    parts = [{"ETag": e, "PartNumber": i} for i, e in enumerate(etags, 1)]
    r = complete(api, mp, parts)
    assert (
        r.status_code == 200
        and r.json()["success"] is True
        and mp["key"] in r.json()["location"].replace("%20", " ")
    )
    (row,) = emu.uploads()
    assert (row["filename"], row["size"], row["labels"], row["category"]) == (
        "big.bin",
        len(data),
        ["x"],
        "SOURCE",
    )
    assert row["sha256"] == hashlib.sha256(data).hexdigest() and Path(row["path"]).read_bytes() == data
    assert row["content_type"] == "application/zip"
    ops = [e["op"] for e in emu.requests()]
    assert ops.count("lilt.put_part") == 3 and ops.count("lilt.sign_part") == 3
    again = complete(api, mp, parts)  # a repeat is answered the same, nothing stored twice
    assert again.status_code == 200 and again.json() == r.json()
    assert emu.uploads()[0]["times_received"] == 1
    assert not list((emu.store.root / "sessions" / "lilt" / mp["uploadId"]).glob("part-*"))


def test_multipart_curl_form_with_two_key_params(emu: Emulator, data: bytes) -> None:
    with httpx.Client(base_url=emu.url + "/lilt") as anon:
        r = anon.post(MP, params={"key": KEY}, json={"filename": "c.bin", "type": "t"})
        mp = r.json()
        s = anon.get(f"{MP}/{mp['uploadId']}/1", params=[("key", KEY), ("key", mp["key"]), ("size", "3")])
        assert s.status_code == 200, s.text
        etag = httpx.put(s.json()["url"], content=b"abc").headers["ETag"]
        c = anon.post(
            f"{MP}/{mp['uploadId']}/complete",
            params=[("key", KEY), ("key", mp["key"])],
            json={"parts": [{"ETag": etag, "PartNumber": 1}]},
        )
        assert c.status_code == 200, c.text
    assert emu.uploads()[0]["size"] == 3


@pytest.mark.parametrize("number", ["0", "10001", "partNumber", "-1"])
def test_sign_part_rejects_bad_part_numbers(api: httpx.Client, number: str) -> None:
    mp = start_multipart(api, None)
    r = sign(api, mp, number, 10)
    assert r.status_code == 400 and "partNumber" in r.json()["message"]


def test_sign_part_needs_size_and_the_right_s3_key(api: httpx.Client) -> None:
    mp = start_multipart(api, None)
    r = api.get(f"{MP}/{mp['uploadId']}/1", params={"s3Key": mp["key"]})
    assert r.status_code == 400 and "size" in r.json()["message"]
    r = api.get(f"{MP}/{mp['uploadId']}/1", params={"size": 5})
    assert r.status_code == 400 and "s3Key" in r.json()["message"]
    r = api.get(f"{MP}/{mp['uploadId']}/1", params={"s3Key": "uploads/other", "size": 5})
    assert r.status_code == 400 and "s3Key" in r.json()["message"]
    assert sign(api, mp, 10000, 5).status_code == 200


def test_part_put_must_match_the_signed_size(emu: Emulator, api: httpx.Client) -> None:
    mp = start_multipart(api, None)
    url = sign(api, mp, 1, 10).json()["url"]
    assert_s3_error(httpx.put(url, content=b"x" * 11), 403, "SignatureDoesNotMatch", "signed part size")
    assert_s3_error(
        httpx.put(url.replace("X-Emu-Size=10", "X-Emu-Size=11"), content=b"x" * 11),
        403,
        "SignatureDoesNotMatch",
    )
    assert httpx.put(url, content=b"x" * 10).status_code == 200


def test_small_non_last_part_is_entity_too_small(emu: Emulator, api: httpx.Client) -> None:
    mp = start_multipart(api, None)
    parts = [{"ETag": send_part(api, mp, i, b"a" * 1000), "PartNumber": i} for i in (1, 2)]
    r = complete(api, mp, parts)
    assert r.status_code == 400 and "EntityTooSmall" in r.json()["message"]
    assert emu.uploads() == []


def test_non_last_parts_must_have_the_same_size(emu: Emulator, api: httpx.Client, data: bytes) -> None:
    mp = start_multipart(api, None)
    sizes = [6 * MIB, 5 * MIB, 10]
    offsets = [0, 6 * MIB, 11 * MIB]
    parts = [
        {
            "ETag": send_part(api, mp, i, data[o : o + s] if o + s <= len(data) else b"z" * s),
            "PartNumber": i,
        }
        for i, (o, s) in enumerate(zip(offsets, sizes, strict=True), 1)
    ]
    r = complete(api, mp, parts)
    assert r.status_code == 400 and "InvalidPart" in r.json()["message"]
    assert emu.uploads() == []


def test_complete_rejects_wrong_etags_missing_parts_order_and_case(emu: Emulator, api: httpx.Client) -> None:
    mp = start_multipart(api, None)
    etag = send_part(api, mp, 1, b"abc")
    for parts, word in [
        (
            [{"ETag": etag.strip('"'), "PartNumber": 1}],
            "InvalidPart",
        ),  # quotes are part of the ETag
        ([{"ETag": '"' + "0" * 32 + '"', "PartNumber": 1}], "InvalidPart"),
        ([{"ETag": etag, "PartNumber": 2}], "InvalidPart"),  # never uploaded
        ([{"ETag": etag, "PartNumber": 1}, {"ETag": etag, "PartNumber": 1}], "InvalidPartOrder"),
        ([{"etag": etag, "partNumber": 1}], "ETag"),  # PascalCase on the wire
        ([{"ETag": etag, "PartNumber": "1"}], "PartNumber"),
        ([], "parts"),
    ]:
        r = complete(api, mp, parts)
        assert r.status_code == 400 and word in r.json()["message"], (parts, r.text)
    assert emu.uploads() == []
    assert complete(api, mp, [{"ETag": etag, "PartNumber": 1}]).status_code == 200


def test_complete_checks_the_declared_total_size(emu: Emulator, api: httpx.Client) -> None:
    mp = start_multipart(api, 10)
    r = complete(api, mp, [{"ETag": send_part(api, mp, 1, b"abc"), "PartNumber": 1}])
    assert r.status_code == 400 and "metadata.size" in r.json()["message"]
    assert emu.uploads() == []


def test_a_part_can_be_sent_again(emu: Emulator, api: httpx.Client) -> None:
    mp = start_multipart(api, None)
    send_part(api, mp, 1, b"first")
    etag = send_part(api, mp, 1, b"again")
    assert complete(api, mp, [{"ETag": etag, "PartNumber": 1}]).status_code == 200
    assert Path(emu.uploads()[0]["path"]).read_bytes() == b"again"


def test_cancel_removes_parts_and_then_everything_is_404(emu: Emulator, api: httpx.Client) -> None:
    mp = start_multipart(api, None)
    url = sign(api, mp, 2, 3).json()["url"]
    etag = send_part(api, mp, 1, b"abc")
    session_dir = emu.store.root / "sessions" / "lilt" / mp["uploadId"]
    assert list(session_dir.glob("part-*"))
    r = api.delete(f"{MP}/{mp['uploadId']}", params={"s3Key": mp["key"]})
    assert r.status_code == 200 and r.json()["success"] is True and r.json()["message"]
    assert not list(session_dir.glob("part-*"))
    assert sign(api, mp, 1, 3).status_code == 404
    assert_s3_error(httpx.put(url, content=b"abc"), 404, "NoSuchUpload")
    assert complete(api, mp, [{"ETag": etag, "PartNumber": 1}]).status_code == 404
    assert api.delete(f"{MP}/{mp['uploadId']}", params={"s3Key": mp["key"]}).status_code == 404
    assert emu.uploads() == []


def test_unknown_upload_id_is_404(api: httpx.Client) -> None:
    fake = {"uploadId": "0123456789abcdef", "key": "uploads/x"}
    assert sign(api, fake, 1, 3).status_code == 404
    assert complete(api, fake, [{"ETag": '"x"', "PartNumber": 1}]).status_code == 404
    assert api.delete(f"{MP}/../etc", params={"s3Key": "k"}).status_code in (404, 405)
    r = api.delete(f"{MP}/nope", params={"s3Key": "k"})
    assert r.status_code == 404 and "message" in r.json()


def test_multipart_session_survives_a_restart(tmp_path: Path) -> None:
    with (
        Emulator(tmp_path, lilt_part_size=0) as first,
        httpx.Client(base_url=first.url + "/lilt", auth=(KEY, KEY)) as api,
    ):
        mp = start_multipart(api, None)
        etag1 = send_part(api, mp, 1, b"a" * (5 * MIB))
    with (
        Emulator(tmp_path, lilt_part_size=0) as second,
        httpx.Client(base_url=second.url + "/lilt", auth=(KEY, KEY)) as api,
    ):
        etag2 = send_part(api, mp, 2, b"tail")
        r = complete(api, mp, [{"ETag": etag1, "PartNumber": 1}, {"ETag": etag2, "PartNumber": 2}])
        assert r.status_code == 200, r.text
        assert second.uploads()[0]["size"] == 5 * MIB + 4


# -- upload records -------------------------------------------------------------------


def test_upload_records_turn_complete_on_the_next_poll(emu: Emulator, api: httpx.Client) -> None:
    assert put(initiate(api, filename="one.txt")["url"], b"1").status_code == 200
    (record,) = api.get("/v2/upload").json()
    assert set(record) == {"id", "filename", "status", "created_at"}
    assert record["status"] == "pending" and record["filename"] == "one.txt"
    assert record["created_at"].endswith("Z") and len(record["created_at"]) == 20
    assert api.get(f"/v2/upload/{record['id']}").json()["status"] == "complete"


def test_upload_records_turn_complete_after_a_second(api: httpx.Client, clock: Clock) -> None:
    assert put(initiate(api)["url"], b"1").status_code == 200
    clock.now += 1.0
    assert api.get("/v2/upload").json()[0]["status"] == "complete"


def test_upload_record_filters_and_errors(api: httpx.Client) -> None:
    for name in ("a.txt", "b.txt"):
        assert put(initiate(api, filename=name)["url"], b"1").status_code == 200
    ids = [r["id"] for r in api.get("/v2/upload", params={"statuses": "pending"}).json()]
    assert len(ids) == 2
    assert api.get("/v2/upload", params={"statuses": "pending"}).json() == []
    only = api.get("/v2/upload", params={"ids": str(ids[1])}).json()
    assert [r["filename"] for r in only] == ["b.txt"]
    assert api.get("/v2/upload", params={"ids": "x"}).status_code == 400
    assert api.get("/v2/upload/abc").status_code == 400
    r = api.get("/v2/upload/999")
    assert r.status_code == 404 and "message" in r.json()


# -- Lilt's own part size (issue 10) ----------------------------------------------------------


def test_parts_are_8_mib_by_lilts_rule(tmp_path: Path) -> None:
    """ "Make sure to set the part size to 8MB (8388608 bytes)" (sign_upload_part): other sizes
    are refused at signing (against metadata.size when given) and at complete."""
    data = os.urandom(17 * MIB)
    with (
        Emulator(tmp_path) as emu,
        httpx.Client(base_url=emu.url + "/lilt", auth=(KEY, KEY), timeout=20) as api,
    ):
        mp = start_multipart(api, len(data))
        for number, size in ((1, 5 * MIB), (1, 9 * MIB), (3, 8 * MIB), (4, 1)):
            r = sign(api, mp, number, size)
            assert r.status_code == 400 and "InvalidPartSize" in r.json()["message"], (number, size)
        parts = [
            {"ETag": send_part(api, mp, n, data[(n - 1) * 8 * MIB : n * 8 * MIB]), "PartNumber": n}
            for n in (1, 2, 3)
        ]
        assert complete(api, mp, parts).status_code == 200
        assert emu.uploads()[0]["sha256"] == hashlib.sha256(data).hexdigest()
        # Without metadata.size a smaller part can be signed (it may be the last one), but
        # complete refuses it anywhere else.
        loose = start_multipart(api, None)
        small = [{"ETag": send_part(api, loose, n, b"x" * (5 * MIB)), "PartNumber": n} for n in (1, 2)]
        r = complete(api, loose, small)
        assert r.status_code == 400 and "InvalidPartSize" in r.json()["message"]


def test_another_part_size_only_when_configured(tmp_path: Path) -> None:
    with (
        Emulator(tmp_path, lilt_part_size=5 * MIB) as emu,
        httpx.Client(base_url=emu.url + "/lilt", auth=(KEY, KEY), timeout=20) as api,
    ):
        mp = start_multipart(api, 11 * MIB)
        assert sign(api, mp, 1, 8 * MIB).status_code == 400
        assert sign(api, mp, 1, 5 * MIB).status_code == 200
        assert sign(api, mp, 3, MIB).status_code == 200
    from syncd_emulator import build_parser

    assert build_parser().parse_args([]).lilt_part_size == 8 * MIB
    assert build_parser().parse_args(["--lilt-part-size", "0"]).lilt_part_size == 0
