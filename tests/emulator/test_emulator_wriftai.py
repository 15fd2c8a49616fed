"""The WriftAI emulation (protocols.md §3) over real loopback HTTP: auth, the
FastAPI-style validation, the part split, signed storage URLs and their expiry,
the /uploads flow and its complete rules, rate limits, a restart.

The destination against it is in tests/destinations/test_wriftai_destination.py."""

from __future__ import annotations

import email.utils
import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from syncd_emulator import Emulator, build_parser
from syncd_emulator.wriftai import DEFAULT_PART_SIZE, MAX_PARTS, find, split_parts
from tests.support.wriftai import PART, TOKEN, TTL, Clock, clock, emulator, rules  # noqa: F401 (fixtures)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def api(emulator: Emulator) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=emulator.url + "/wriftai/v1", timeout=20, headers={"Authorization": f"Bearer {TOKEN}"}
    ) as client:
        yield client


# -- emulator: auth and request validation -------------------------------------------------


def test_api_needs_the_bearer_token(emulator: Emulator) -> None:
    base = emulator.url + "/wriftai/v1"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        r = httpx.post(base + "/uploads", json={"size": 1, "mime_type": "text/plain"}, headers=headers)
        assert r.status_code == 401 and isinstance(r.json()["detail"], str)
        assert r.headers["WWW-Authenticate"] == "Bearer"
    r = httpx.get(base + "/user", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200 and r.json()["name"] == "emulator"


def test_create_urls_validates_like_fastapi(api: httpx.Client) -> None:
    r = api.post("/files/urls", json={})
    assert r.status_code == 422
    assert [(d["type"], d["loc"]) for d in r.json()["detail"]] == [
        ("missing", ["body", "name"]),
        ("missing", ["body", "size"]),
        ("missing", ["body", "resource"]),
        ("missing", ["body", "mime_type"]),
    ]
    r = api.post("/files/urls", json={"name": "", "size": "3", "resource": "model", "mime_type": 7})
    assert [(d["type"], d["loc"][-1]) for d in r.json()["detail"]] == [
        ("string_too_short", "name"),
        ("int_type", "size"),
        ("literal_error", "resource"),
        ("string_type", "mime_type"),
    ]
    r = api.post(
        "/files/urls", json={"name": "a", "size": -1, "resource": "prediction", "mime_type": "text/plain"}
    )
    assert r.json()["detail"][0]["type"] == "greater_than_equal"
    r = api.post("/files/urls", content=b"{nope", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "json_invalid"
    r = api.post("/uploads", json={"size": True})
    assert [d["loc"][-1] for d in r.json()["detail"]] == ["size", "mime_type"]


def test_part_split() -> None:
    assert split_parts(0) == (0, 1)  # one empty part: the SDK's sync upload needs a URL
    assert split_parts(1) == (1, 1)
    assert split_parts(DEFAULT_PART_SIZE) == (DEFAULT_PART_SIZE, 1)
    assert split_parts(DEFAULT_PART_SIZE + 1) == (DEFAULT_PART_SIZE, 2)
    size = 100 * 1024**3
    part, count = split_parts(size)
    assert part % DEFAULT_PART_SIZE == 0 and count <= MAX_PARTS
    assert -(-size // (part - DEFAULT_PART_SIZE)) > MAX_PARTS  # the smallest that fits
    assert split_parts(10, 4) == (4, 3)


def test_part_size_knob_is_an_option(tmp_path: Path) -> None:
    assert find(Emulator(tmp_path / "a", wriftai_part_size=12345).services).min_part_size == 12345
    assert find(Emulator(tmp_path / "b").services).min_part_size == DEFAULT_PART_SIZE
    assert build_parser().parse_args(["--wriftai-part-size", "12345"]).wriftai_part_size == 12345
    assert build_parser().parse_args([]).wriftai_part_size == DEFAULT_PART_SIZE
    for junk in ("0", "-5", "junk"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["--wriftai-part-size", junk])


# -- emulator: signed storage ---------------------------------------------------------------


def create_urls(
    api: httpx.Client, size: int, mime: str = "text/plain", name: str = "a.txt"
) -> dict[str, str]:
    r = api.post(
        "/files/urls", json={"name": name, "size": size, "resource": "prediction", "mime_type": mime}
    )
    assert r.status_code == 200, r.text
    urls: dict[str, str] = r.json()
    return urls


def s3_code(r: httpx.Response) -> str:
    assert r.headers["Content-Type"] == "application/xml", r.text
    return r.text.split("<Code>")[1].split("</Code>")[0]


def test_storage_put_is_strict(emulator: Emulator, api: httpx.Client) -> None:
    url = create_urls(api, 5)["upload_url"]
    ok = {"Content-Type": "text/plain"}
    refusals = [
        (url, {**ok, "Authorization": f"Bearer {TOKEN}"}, b"hello", 403, "AccessDenied"),
        (url, ok, b"hello!", 403, "SignatureDoesNotMatch"),  # Content-Length != size
        (url, {"Content-Type": "text/html"}, b"hello", 403, "SignatureDoesNotMatch"),
        (url.split("?")[0], ok, b"hello", 403, "AccessDenied"),
        (url[:-3] + "000", ok, b"hello", 403, "SignatureDoesNotMatch"),
    ]
    for target, headers, body, status, code in refusals:
        r = httpx.put(target, content=body, headers=headers)
        assert (r.status_code, s3_code(r)) == (status, code)
    r = httpx.put(url, content=iter([b"hel", b"lo"]), headers=ok)  # chunked: no length
    assert (r.status_code, s3_code(r)) == (411, "MissingContentLength")
    assert emulator.uploads() == []
    r = httpx.put(url, content=b"hello", headers=ok)
    assert r.status_code == 200 and r.headers["ETag"] == f'"{hashlib.md5(b"hello").hexdigest()}"'
    (row,) = emulator.uploads()
    assert (row["service"], row["filename"], row["size"], row["protocol"]) == ("wriftai", "a.txt", 5, "urls")


def test_signed_urls_expire(api: httpx.Client, clock: Clock) -> None:
    single = create_urls(api, 1)["upload_url"]
    part = api.post("/uploads", json={"size": 1, "mime_type": "text/plain"}).json()["urls"][0]
    clock.now += TTL + 1
    for url in (single, part):
        r = httpx.put(url, content=b"x", headers={"Content-Type": "text/plain"})
        assert r.status_code == 403 and "Request has expired" in r.text


def put_parts(upload: dict[str, Any], data: bytes, mime: str = "text/plain") -> list[str]:
    etags = []
    for i, url in enumerate(upload["urls"]):
        chunk = data[i * upload["part_size"] : (i + 1) * upload["part_size"]]
        r = httpx.put(url, content=chunk, headers={"Content-Type": mime})
        assert r.status_code == 200, r.text
        etags.append(r.headers["etag"])
    return etags


def test_uploads_flow_and_complete_rules(emulator: Emulator, api: httpx.Client) -> None:
    data = os.urandom(2 * PART + PART // 2)
    upload = api.post("/uploads", json={"size": len(data), "mime_type": "text/plain"}).json()
    assert upload["part_size"] == PART and len(upload["urls"]) == 3
    r = httpx.put(upload["urls"][2], content=data[:PART], headers={"Content-Type": "text/plain"})
    assert (r.status_code, s3_code(r)) == (403, "SignatureDoesNotMatch")  # not its length
    etags = put_parts(upload, data)
    done = f"/uploads/{upload['id']}/complete"
    for bad in (etags[:2], etags[::-1], [*etags[:2], '"0"']):
        r = api.post(done, json={"etags": bad})
        assert r.status_code == 400 and isinstance(r.json()["detail"], str)
    assert api.post(done, json={"etags": "x"}).status_code == 422
    assert emulator.uploads() == []
    r = api.post(done, json={"etags": [e.strip('"') for e in etags]})  # quotes are optional
    assert r.status_code == 200
    download = r.json()["download_url"]
    assert httpx.get(download).content == data
    assert httpx.get(download.split("?")[0]).status_code == 403
    assert api.post(done, json={"etags": etags}).status_code == 200  # a repeat stores nothing
    (row,) = emulator.uploads()
    assert row["times_received"] == 1 and row["parts"] == 3
    assert row["sha256"] == hashlib.sha256(data).hexdigest()
    assert row["url"] == download.split("?")[0]
    r = httpx.put(upload["urls"][0], content=data[:PART], headers={"Content-Type": "text/plain"})
    assert (r.status_code, s3_code(r)) == (404, "NoSuchUpload")
    r = api.post("/uploads/nope/complete", json={"etags": []})
    assert r.status_code == 404 and r.json() == {"detail": "Upload not found"}
    listed = httpx.get(emulator.url + "/_emulator/uploads?service=wriftai").json()["uploads"]
    assert [u["key"] for u in listed] == [row["key"]]


def test_empty_upload_is_one_empty_part(api: httpx.Client, emulator: Emulator) -> None:
    upload = api.post("/uploads", json={"size": 0, "mime_type": "text/plain"}).json()
    assert upload["part_size"] == 0 and len(upload["urls"]) == 1
    etags = put_parts(upload, b"")
    assert api.post(f"/uploads/{upload['id']}/complete", json={"etags": etags}).status_code == 200
    assert emulator.uploads()[0]["size"] == 0


@rules(wriftai_empty_without_parts=True)
def test_empty_upload_without_parts(api: httpx.Client, emulator: Emulator) -> None:
    """``urls: []``: the SDK's async_upload sends nothing and completes with ``etags: []``."""
    upload = api.post("/uploads", json={"size": 0, "mime_type": "text/plain"}).json()
    assert upload["part_size"] == 0 and upload["urls"] == []
    bad = api.post(f"/uploads/{upload['id']}/complete", json={"etags": ['"x"']})
    assert bad.status_code == 400
    assert api.post(f"/uploads/{upload['id']}/complete", json={"etags": []}).status_code == 200
    assert emulator.uploads()[0]["size"] == 0


def test_parts_answered_without_etag_are_left_out_of_complete(api: httpx.Client, emulator: Emulator) -> None:
    """As the SDK does: it filters missing etags out before completing."""
    data = os.urandom(2 * PART + 7)
    upload = api.post("/uploads", json={"size": len(data), "mime_type": "text/plain"}).json()
    urls = upload["urls"]
    first = httpx.put(urls[0], content=data[:PART], headers={"Content-Type": "text/plain"})
    find(emulator.services).omit_etags = True
    second = httpx.put(urls[1], content=data[PART : 2 * PART], headers={"Content-Type": "text/plain"})
    find(emulator.services).omit_etags = False
    third = httpx.put(urls[2], content=data[2 * PART :], headers={"Content-Type": "text/plain"})
    assert "etag" not in second.headers
    etags = [first.headers["etag"], third.headers["etag"]]
    complete = f"/uploads/{upload['id']}/complete"
    assert api.post(complete, json={"etags": [*etags, '"x"']}).status_code == 400
    assert api.post(complete, json={"etags": etags}).status_code == 200
    assert emulator.uploads()[0]["sha256"] == hashlib.sha256(data).hexdigest()


def test_every_429_carries_x_ratelimit_reset(emulator: Emulator, api: httpx.Client) -> None:
    emulator.set_faults(
        script=[
            {"op": "wriftai.initiate_multipart", "kind": "429", "retry_after": 3},
            {"op": "wriftai.initiate", "kind": "429", "retry_after": "date"},
            {"op": "wriftai.put", "kind": "429"},
        ]
    )
    before = time.time()
    r = api.post("/uploads", json={"size": 1, "mime_type": "text/plain"})
    assert r.status_code == 429 and "detail" in r.json()
    assert before + 3 <= int(r.headers["x-ratelimit-reset"]) <= time.time() + 4
    r = api.post(
        "/files/urls", json={"name": "a", "size": 1, "resource": "prediction", "mime_type": "text/plain"}
    )
    date = email.utils.parsedate_to_datetime(r.headers["Retry-After"]).timestamp()
    assert int(r.headers["x-ratelimit-reset"]) == int(date)
    r = httpx.put(create_urls(api, 1)["upload_url"], content=b"x", headers={"Content-Type": "text/plain"})
    assert r.status_code == 429 and s3_code(r) == "SlowDown"
    assert int(r.headers["x-ratelimit-reset"]) >= before + 1


def test_restart_keeps_uploads_but_not_their_urls(tmp_path: Path) -> None:
    data = os.urandom(2 * PART)
    with Emulator(tmp_path / "emu", wriftai_token=TOKEN, wriftai_part_size=PART) as emu:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        base = emu.url + "/wriftai/v1"
        upload = httpx.post(
            base + "/uploads", json={"size": len(data), "mime_type": "text/plain"}, headers=headers
        ).json()
        first = put_parts({**upload, "urls": upload["urls"][:1]}, data)
        old_root = emu.url
    with Emulator(tmp_path / "emu", wriftai_token=TOKEN) as emu:
        base = emu.url + "/wriftai/v1"
        second = upload["urls"][1].replace(old_root, emu.url)  # same URL, new port
        r = httpx.put(second, content=data[PART:], headers={"Content-Type": "text/plain"})
        assert r.status_code == 403  # a new signing key: old URLs are dead
        r = httpx.post(f"{base}/uploads/{upload['id']}/complete", json={"etags": first * 2}, headers=headers)
        assert r.status_code == 400 and "Part 2" in r.json()["detail"]
