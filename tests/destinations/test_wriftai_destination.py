"""WriftAI: the emulator's strictness (protocols.md §3), the destination's edge
cases, and the conformance scenarios once more for protocol ``"uploads"``.

The shared conformance target runs ``protocol = "urls"`` (it carries the file
name the metadata scenario checks); the default ``"uploads"`` protocol has no
name field, so its run of the same scenarios lives here, with its own target.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from conformance import test_destination_conformance as suite
from conformance.targets import Target

from syncd.config import loads
from syncd.destinations.base import Source, UploadItem
from syncd.destinations.wriftai import WriftAIDestination, WriftAIOptions, rate_limit_wait
from syncd.errors import ConfigError, FatalError, RetryableError
from syncd.http import make_client
from syncd.seal import Sealer
from syncd.secrets import Secret
from syncd_emulator import Emulator, build_parser
from syncd_emulator.wriftai import DEFAULT_PART_SIZE, MAX_PARTS, find, split_parts

pytestmark = pytest.mark.timeout(60)

TOKEN = "test-wriftai-token-5e1f"
PART = 64 * 1024
TTL = 600.0
KiB, MiB = 1024, 1024 * 1024


class Clock:
    """The emulator's wall clock, movable for URL expiry."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def emulator(tmp_path: Path, clock: Clock, request: pytest.FixtureRequest) -> Iterator[Emulator]:
    """Parts of PART bytes; more Emulator options by indirect parametrization (``rules``)."""
    options = getattr(request, "param", {})
    emu = Emulator(tmp_path / "emu", wriftai_token=TOKEN, url_ttl=TTL, clock=clock,
                   wriftai_part_size=PART, **options).start()
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture
def http_client() -> Iterator[httpx.Client]:
    with make_client(read=30.0, write=30.0) as client:
        yield client


@pytest.fixture
def api(emulator: Emulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emulator.url + "/wriftai/v1", timeout=20,
                      headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield client


def options(emulator: Emulator, **kw: Any) -> WriftAIOptions:
    kw.setdefault("token", Secret(TOKEN))
    return WriftAIOptions(base_url=emulator.url + "/wriftai/v1", **kw)


def held_parts(emulator: Emulator) -> list[str]:
    """Unfinished uploads that hold part bytes on the emulator (WriftAI cannot cancel them)."""
    found = []
    for meta in sorted((emulator.store.root / "sessions" / "wriftai").glob("*/session.json")):
        data = json.loads(meta.read_text())
        if data["state"] != "completed" and list(meta.parent.glob("part-*")):
            found.append(f"upload {data['id']} ({len(data['parts'])} parts)")
    return found


def uploads_target(emulator: Emulator, client: httpx.Client, bad: bool = False) -> Target:
    opts = options(emulator, token=Secret("not-the-key" if bad else TOKEN), protocol="uploads")
    return Target(
        type="wriftai", dest=WriftAIDestination("test-wriftai", opts, client),
        emulator=emulator, service="wriftai", part_size=PART,
        first_op="wriftai.initiate_multipart", part_op="wriftai.put_part",
        leftovers=lambda: held_parts(emulator),
        supports=frozenset({"empty", "multipart", "resume"}),
    )


@pytest.fixture
def target(emulator: Emulator, http_client: httpx.Client) -> Target:
    return uploads_target(emulator, http_client)


@pytest.fixture
def make_target(emulator: Emulator, http_client: httpx.Client) -> Callable[..., Target]:
    def make(*, bad_credentials: bool = False) -> Target:
        return uploads_target(emulator, http_client, bad_credentials)
    return make


# -- the conformance scenarios, protocol "uploads" --------------------------------------
# (test_metadata_delivered is replaced below: /uploads carries no file name.)

test_uploads_empty_file = suite.test_empty_file
test_uploads_one_byte = suite.test_one_byte
test_uploads_exactly_one_part = suite.test_exactly_one_part
test_uploads_one_part_and_one_byte = suite.test_one_part_and_one_byte
test_uploads_several_parts = suite.test_several_parts_with_short_last_part
test_uploads_resume_after_crash_at_part_2 = suite.test_resume_after_crash_at_part_2
test_uploads_checkpoints_carry_no_secrets_or_urls = suite.test_checkpoints_carry_no_secrets_or_urls
test_uploads_abort_tolerates_any_resume = suite.test_abort_tolerates_any_resume
test_uploads_503_then_success = suite.test_503_then_success
test_uploads_429_with_retry_after = suite.test_429_with_retry_after
test_uploads_429_with_http_date = suite.test_429_with_http_date
test_uploads_permanent_4xx = suite.test_permanent_4xx
test_uploads_bad_credentials_are_fatal = suite.test_bad_credentials_are_fatal
test_uploads_probe = suite.test_probe
test_uploads_connection_reset_is_retryable = suite.test_connection_reset_is_retryable
test_uploads_expired_url_is_renewed_within_the_call = suite.test_expired_url_is_renewed_within_the_call
test_uploads_metadata_on_multipart = suite.test_metadata_on_multipart


def test_uploads_metadata_is_what_wriftai_keeps(target: Target, tmp_path: Path) -> None:
    path = suite.make_file(tmp_path, 321, "contract.pdf")
    receipt, sha, _ = suite.upload_with_retries(target, path)
    row = suite.assert_stored_once(target, path, sha)
    assert row["filename"] == "" and row["labels"] == [] and row["category"] is None
    assert row["uuid"] is None  # WriftAI has no field for it
    assert row["content_type"] == "application/octet-stream" and row["protocol"] == "uploads"
    assert receipt.url == row["url"] and receipt.remote_id == row["upload_id"]


def test_capabilities_say_no_metadata() -> None:
    caps = WriftAIDestination.CAPABILITIES
    assert caps.labels is None and caps.category is None


# -- emulator: auth and request validation -------------------------------------------------


def test_api_needs_the_bearer_token(emulator: Emulator) -> None:
    base = emulator.url + "/wriftai/v1"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        r = httpx.post(base + "/uploads", json={"size": 1, "mime_type": "text/plain"},
                       headers=headers)
        assert r.status_code == 401 and isinstance(r.json()["detail"], str)
        assert r.headers["WWW-Authenticate"] == "Bearer"
    r = httpx.get(base + "/user", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200 and r.json()["name"] == "emulator"


def test_create_urls_validates_like_fastapi(api: httpx.Client) -> None:
    r = api.post("/files/urls", json={})
    assert r.status_code == 422
    assert [(d["type"], d["loc"]) for d in r.json()["detail"]] == [
        ("missing", ["body", "name"]), ("missing", ["body", "size"]),
        ("missing", ["body", "resource"]), ("missing", ["body", "mime_type"])]
    r = api.post("/files/urls", json={"name": "", "size": "3", "resource": "model",
                                      "mime_type": 7})
    assert [(d["type"], d["loc"][-1]) for d in r.json()["detail"]] == [
        ("string_too_short", "name"), ("int_type", "size"), ("literal_error", "resource"),
        ("string_type", "mime_type")]
    r = api.post("/files/urls", json={"name": "a", "size": -1, "resource": "prediction",
                                      "mime_type": "text/plain"})
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


def rules(**options: Any) -> pytest.MarkDecorator:
    """The ``emulator`` fixture built with these Emulator options."""
    return pytest.mark.parametrize("emulator", [options], indirect=True, ids=list(options))


# -- emulator: signed storage ---------------------------------------------------------------


def create_urls(api: httpx.Client, size: int, mime: str = "text/plain",
                name: str = "a.txt") -> dict[str, str]:
    r = api.post("/files/urls", json={"name": name, "size": size, "resource": "prediction",
                                      "mime_type": mime})
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
    assert (row["service"], row["filename"], row["size"], row["protocol"]) == (
        "wriftai", "a.txt", 5, "urls")


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
        chunk = data[i * upload["part_size"]:(i + 1) * upload["part_size"]]
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


def test_parts_answered_without_etag_are_left_out_of_complete(
        api: httpx.Client, emulator: Emulator) -> None:
    """As the SDK does: it filters missing etags out before completing."""
    data = os.urandom(2 * PART + 7)
    upload = api.post("/uploads", json={"size": len(data), "mime_type": "text/plain"}).json()
    urls = upload["urls"]
    first = httpx.put(urls[0], content=data[:PART], headers={"Content-Type": "text/plain"})
    find(emulator.services).omit_etags = True
    second = httpx.put(urls[1], content=data[PART:2 * PART], headers={"Content-Type": "text/plain"})
    find(emulator.services).omit_etags = False
    third = httpx.put(urls[2], content=data[2 * PART:], headers={"Content-Type": "text/plain"})
    assert "etag" not in second.headers
    etags = [first.headers["etag"], third.headers["etag"]]
    complete = f"/uploads/{upload['id']}/complete"
    assert api.post(complete, json={"etags": [*etags, '"x"']}).status_code == 400
    assert api.post(complete, json={"etags": etags}).status_code == 200
    assert emulator.uploads()[0]["sha256"] == hashlib.sha256(data).hexdigest()


def test_every_429_carries_x_ratelimit_reset(emulator: Emulator, api: httpx.Client) -> None:
    emulator.set_faults(script=[{"op": "wriftai.initiate_multipart", "kind": "429",
                                 "retry_after": 3},
                                {"op": "wriftai.initiate", "kind": "429", "retry_after": "date"},
                                {"op": "wriftai.put", "kind": "429"}])
    before = time.time()
    r = api.post("/uploads", json={"size": 1, "mime_type": "text/plain"})
    assert r.status_code == 429 and "detail" in r.json()
    assert before + 3 <= int(r.headers["x-ratelimit-reset"]) <= time.time() + 4
    r = api.post("/files/urls", json={"name": "a", "size": 1, "resource": "prediction",
                                      "mime_type": "text/plain"})
    date = email.utils.parsedate_to_datetime(r.headers["Retry-After"]).timestamp()
    assert int(r.headers["x-ratelimit-reset"]) == int(date)
    r = httpx.put(create_urls(api, 1)["upload_url"], content=b"x",
                  headers={"Content-Type": "text/plain"})
    assert r.status_code == 429 and s3_code(r) == "SlowDown"
    assert int(r.headers["x-ratelimit-reset"]) >= before + 1


def test_restart_keeps_uploads_but_not_their_urls(tmp_path: Path) -> None:
    data = os.urandom(2 * PART)
    with Emulator(tmp_path / "emu", wriftai_token=TOKEN, wriftai_part_size=PART) as emu:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        base = emu.url + "/wriftai/v1"
        upload = httpx.post(base + "/uploads", json={"size": len(data),
                                                     "mime_type": "text/plain"},
                            headers=headers).json()
        first = put_parts({**upload, "urls": upload["urls"][:1]}, data)
        old_root = emu.url
    with Emulator(tmp_path / "emu", wriftai_token=TOKEN) as emu:
        base = emu.url + "/wriftai/v1"
        second = upload["urls"][1].replace(old_root, emu.url)  # same URL, new port
        r = httpx.put(second, content=data[PART:], headers={"Content-Type": "text/plain"})
        assert r.status_code == 403  # a new signing key: old URLs are dead
        r = httpx.post(f"{base}/uploads/{upload['id']}/complete", json={"etags": first * 2},
                       headers=headers)
        assert r.status_code == 400 and "Part 2" in r.json()["detail"]


# -- destination: resume and renewal against the emulator ----------------------------------


def crash_after(target: Target, path: Path, parts: int) -> dict[str, Any]:
    crashing = suite.Checkpoints(crash_when=lambda s: suite.parts_done(s) >= parts)
    with pytest.raises(suite.Crash):
        suite.attempt(target, path, None, crashing)
    assert crashing.last is not None
    return crashing.last


def part_puts(target: Target) -> list[str]:
    return [e["path"].rsplit("/", 3)[1] + "#" + e["path"].rsplit("/", 1)[1]
            for e in target.log("wriftai.put_part") if 200 <= e["status"] < 300]


def test_checkpoint_keeps_the_part_urls_sealed(target: Target, tmp_path: Path) -> None:
    path = suite.make_file(tmp_path, 3 * PART)
    saved = crash_after(target, path, 1)
    session = saved["session"]
    assert set(session) == {"id", "mime", "count", "sealed"} and session["count"] == 3
    text = json.dumps(saved)
    assert "http" not in text and "Signature" not in text and TOKEN not in text
    urls = Sealer(TOKEN, "wriftai part urls").unseal(session["id"], session["sealed"])
    assert urls is not None and len(urls) == 3 and all(f"/{session['id']}/parts/" in u
                                                       for u in urls)


def test_a_resume_that_cannot_be_unsealed_starts_a_new_upload(
        target: Target, tmp_path: Path) -> None:
    path = suite.make_file(tmp_path, 3 * PART)
    saved = crash_after(target, path, 2)
    target.dest._uploads.sealer = Sealer("a-rotated-token", "wriftai part urls")
    target.emulator.reset_log()
    receipt, sha = suite.attempt(target, path, saved, suite.Checkpoints())
    assert len(target.log("wriftai.initiate_multipart")) == 1
    assert len(part_puts(target)) == 3  # every part of the new upload
    assert receipt.remote_id != saved["session"]["id"]
    assert [u["sha256"] for u in target.stored()] == [sha]


def test_resume_parts_false_keeps_no_urls(emulator: Emulator, http_client: httpx.Client,
                                          tmp_path: Path) -> None:
    target = uploads_target(emulator, http_client)
    target.dest = WriftAIDestination("w", options(emulator, resume_parts=False), http_client)
    path = suite.make_file(tmp_path, 3 * PART)
    saved = crash_after(target, path, 2)
    assert "sealed" not in saved["session"]
    emulator.reset_log()
    _, sha = suite.attempt(target, path, saved, suite.Checkpoints())
    assert len(part_puts(target)) == 3 and [u["sha256"] for u in target.stored()] == [sha]


def test_expired_part_urls_open_a_new_upload_in_the_same_call(
        target: Target, tmp_path: Path, clock: Clock) -> None:
    path = suite.make_file(tmp_path, 3 * PART)
    saved = crash_after(target, path, 1)
    clock.now += TTL + 1  # real expiry: the emulator refuses the saved URLs
    target.emulator.reset_log()
    checkpoint = suite.Checkpoints()
    receipt, sha = suite.attempt(target, path, saved, checkpoint)
    assert [e["status"] for e in target.log("wriftai.put_part")][:1] == [403]
    assert len(part_puts(target)) == 3 and receipt.remote_id != saved["session"]["id"]
    assert checkpoint.last is not None and checkpoint.last["session"]["id"] == receipt.remote_id
    assert [u["sha256"] for u in target.stored()] == [sha]
    assert target.leftovers() == [f"upload {saved['session']['id']} (1 parts)"]  # cannot cancel


def test_an_expired_empty_part_url_opens_a_new_upload(target: Target, tmp_path: Path) -> None:
    """The one empty part of an empty file: its expired URL (storage 403) opens a new
    upload, as for any part, instead of pausing the destination as a refusal."""
    path = suite.make_file(tmp_path, 0)
    target.emulator.set_faults(script=[{"op": "wriftai.put_part", "kind": "expire", "count": 1}])
    receipt, sha = suite.attempt(target, path, None, suite.Checkpoints())
    assert [e["status"] for e in target.log("wriftai.put_part")] == [403, 200]
    assert [u["sha256"] for u in target.stored()] == [sha]
    assert receipt.remote_id


def test_urls_protocol_renews_an_expired_url_and_keeps_the_name(
        emulator: Emulator, http_client: httpx.Client, tmp_path: Path) -> None:
    dest = WriftAIDestination("w", options(emulator, protocol="urls"), http_client)
    emulator.set_faults(script=[{"op": "wriftai.put", "kind": "expire", "count": 2}])
    path = suite.make_file(tmp_path, 1000, "ünï code.pdf")
    st = path.stat()
    item = UploadItem(uuid="u", name=path.name, relpath=path.name, size=st.st_size,
                      content_type="application/pdf")
    seen: list[dict[str, Any]] = []
    with Source(path, size=st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino) as source:
        receipt = dest.upload(item, source, {"v": 1, "kind": "uploads"}, seen.append)
    (row,) = emulator.uploads()
    assert (row["filename"], row["content_type"], row["resource"]) == (
        "ünï code.pdf", "application/pdf", "prediction")
    assert receipt.url == row["url"] and "?" not in receipt.url
    assert receipt.remote_id.endswith(quote(row["key"]))
    assert [s["kind"] for s in seen] == ["urls"] * 3


def test_urls_protocol_gives_up_after_two_renewals(
        emulator: Emulator, http_client: httpx.Client, tmp_path: Path) -> None:
    dest = WriftAIDestination("w", options(emulator, protocol="urls"), http_client)
    emulator.set_faults(script=[{"op": "wriftai.put", "kind": "expire", "count": 3}])
    path = suite.make_file(tmp_path, 10)
    st = path.stat()
    with Source(path, size=st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino) as source, \
            pytest.raises(RetryableError) as info:
        dest.upload(suite.item_for(path), source, None, lambda s: None)
    assert info.value.status == 403


def test_probe_names_the_user(emulator: Emulator, http_client: httpx.Client) -> None:
    assert WriftAIDestination("w", options(emulator), http_client).probe() == \
        "ok, authenticated as emulator"
    bad = WriftAIDestination("w", options(emulator, token=Secret("wrong-token-9")), http_client)
    with pytest.raises(FatalError) as info:
        bad.probe()
    assert "wrong-token-9" not in str(info.value)


# -- destination: wire details with a mock transport ----------------------------------------


class Mock:
    """A scripted WriftAI for httpx.MockTransport: records requests, answers by route."""

    def __init__(self, size: int, part_size: int, *, etag: bool = True,
                 extra_urls: int = 0) -> None:
        self.requests: list[httpx.Request] = []
        self.answers: dict[str, list[httpx.Response]] = {}
        self.size, self.part_size, self.etag, self.extra = size, part_size, etag, extra_urls
        self.opened = 0

    def queue(self, route: str, *responses: httpx.Response) -> None:
        self.answers.setdefault(route, []).extend(responses)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        route = f"{request.method} {request.url.path}"
        if self.answers.get(route):
            return self.answers[route].pop(0)
        if route == "POST /v1/uploads":
            self.opened += 1
            count = max(1, -(-self.size // self.part_size)) + self.extra
            urls = [f"https://store.example/u{self.opened}/{n}?X-Amz-Signature=s{n}"
                    for n in range(1, count + 1)]
            return httpx.Response(200, json={"id": f"up{self.opened}", "urls": urls,
                                             "part_size": self.part_size})
        if request.method == "PUT":
            return httpx.Response(200, headers={"etag": f'"e{request.url.path[-1]}"'}
                                  if self.etag else {})
        if route.endswith("/complete"):
            return httpx.Response(200, json={"download_url": "https://cdn.example/f/x?sig=abc"})
        return httpx.Response(404, json={"detail": "Not Found"})


def mock_upload(mock: Mock, tmp_path: Path, resume: dict[str, Any] | None = None,
                now: Callable[[], float] = time.time, **kw: Any) -> Any:
    path = suite.make_file(tmp_path, mock.size)
    opts = WriftAIOptions(token=Secret(TOKEN), base_url="https://api.example/v1", **kw)
    with httpx.Client(transport=httpx.MockTransport(mock)) as client:
        dest = WriftAIDestination("w", opts, client, now=now)
        st = path.stat()
        with Source(path, size=st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino) as source:
            return dest.upload(suite.item_for(path), source, resume, lambda s: None)


def test_wire_shape_of_uploads(tmp_path: Path) -> None:
    mock = Mock(size=25, part_size=10)
    receipt = mock_upload(mock, tmp_path)
    create, *puts, done = mock.requests
    assert create.headers["Authorization"] == f"Bearer {TOKEN}"
    assert json.loads(create.content) == {"size": 25, "mime_type": "application/octet-stream"}
    assert [(p.headers["Content-Length"], p.headers["Content-Type"]) for p in puts] == [
        ("10", "application/octet-stream"), ("10", "application/octet-stream"),
        ("5", "application/octet-stream")]
    assert all("Authorization" not in p.headers for p in puts)
    assert json.loads(done.content) == {"etags": ['"e1"', '"e2"', '"e3"']}
    assert done.url.path == "/v1/uploads/up1/complete"
    assert (receipt.remote_id, receipt.url) == ("up1", "https://cdn.example/f/x")


def test_wire_shape_of_urls(tmp_path: Path) -> None:
    mock = Mock(size=7, part_size=7)
    mock.queue("POST /v1/files/urls", httpx.Response(200, json={
        "upload_url": "https://store.example/put?X-Amz-Signature=s",
        "download_url": "https://cdn.example/files/a/report.bin?X-Amz-Signature=t"}))
    receipt = mock_upload(mock, tmp_path, protocol="urls")
    create, put = mock.requests
    assert json.loads(create.content) == {"name": "report.bin", "size": 7,
                                          "resource": "prediction",
                                          "mime_type": "application/octet-stream"}
    assert put.headers["Content-Length"] == "7" and "Authorization" not in put.headers
    assert (receipt.remote_id, receipt.url) == ("/files/a/report.bin",
                                                "https://cdn.example/files/a/report.bin")


def test_a_part_without_etag_goes_on_like_the_sdk(tmp_path: Path) -> None:
    mock = Mock(size=25, part_size=10, etag=False)
    mock_upload(mock, tmp_path)
    *_, done = mock.requests
    assert [r.method for r in mock.requests].count("PUT") == 3  # each part sent once
    assert json.loads(done.content) == {"etags": []}  # missing etags left out, as the SDK does


def test_a_url_count_that_does_not_fit_is_retryable(tmp_path: Path) -> None:
    with pytest.raises(RetryableError, match="4 part URLs for 3 parts"):
        mock_upload(Mock(size=25, part_size=10, extra_urls=1), tmp_path)


def test_complete_404_opens_a_new_upload(tmp_path: Path) -> None:
    mock = Mock(size=25, part_size=10)
    mock.queue("POST /v1/uploads/up1/complete", httpx.Response(404, json={"detail": "gone"}))
    receipt = mock_upload(mock, tmp_path)
    assert receipt.remote_id == "up2" and mock.opened == 2


def rate_limited(headers: dict[str, str]) -> httpx.Response:
    return httpx.Response(429, json={"detail": "Too many requests"}, headers=headers)


def test_x_ratelimit_reset_becomes_retry_after(tmp_path: Path) -> None:
    now = 1_900_000_000.25
    mock = Mock(size=5, part_size=5)
    mock.queue("POST /v1/uploads", rate_limited({"x-ratelimit-reset": str(int(now) + 7)}))
    with pytest.raises(RetryableError) as info:
        mock_upload(mock, tmp_path, now=lambda: now)
    assert info.value.status == 429 and info.value.retry_after == pytest.approx(6.75)


def test_rate_limit_wait() -> None:
    both = rate_limited({"Retry-After": "2", "x-ratelimit-reset": "1900000100"})
    assert rate_limit_wait(both, lambda: 1_900_000_000.0) == 100.0  # check() prefers Retry-After
    past = rate_limited({"x-ratelimit-reset": "1899999990"})
    assert rate_limit_wait(past, lambda: 1_900_000_000.0) is None
    assert rate_limit_wait(rate_limited({"x-ratelimit-reset": "soon"})) is None
    assert rate_limit_wait(httpx.Response(200, headers={"x-ratelimit-reset": "1"})) is None


def test_retry_after_header_wins_over_reset(tmp_path: Path) -> None:
    mock = Mock(size=5, part_size=5)
    mock.queue("POST /v1/uploads", rate_limited({"Retry-After": "2",
                                                 "x-ratelimit-reset": str(int(time.time()) + 60)}))
    with pytest.raises(RetryableError) as info:
        mock_upload(mock, tmp_path)
    assert info.value.retry_after == 2.0


# -- the seal and the options ------------------------------------------------------------


def test_sealer_round_trip_and_refusals() -> None:
    urls = [f"https://s.example/p/{n}?X-Amz-Signature={'ab' * 32}" for n in range(50)]
    sealer = Sealer(TOKEN, "wriftai part urls")
    sealed = sealer.seal("up1", urls)
    assert sealed.startswith("s1.") and "Signature" not in sealed and "https" not in sealed
    assert sealer.unseal("up1", sealed) == urls
    assert sealer.seal("up1", urls) != sealed  # a fresh nonce each time
    assert Sealer("another-token", "wriftai part urls").unseal("up1", sealed) is None
    assert sealer.unseal("up2", sealed) is None
    flipped = sealed[:-5] + ("A" if sealed[-5] != "A" else "B") + sealed[-4:]
    for bad in (flipped, "s2" + sealed[2:], "s1.!!", "s1.", "", sealed[:40]):
        assert sealer.unseal("up1", bad) is None


def test_options_in_a_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WRIFTAI_TEST_TOKEN", TOKEN)
    folder = '[[folders]]\npath = "in"\ndestination = "w"\n'
    cfg = loads('[destinations.w]\ntype = "wriftai"\ntoken = "env:WRIFTAI_TEST_TOKEN"\n' + folder,
                base_dir=tmp_path)
    opts = cfg.destinations["w"].options
    assert (opts.base_url, opts.protocol, opts.resource, opts.resume_parts) == (
        "https://api.wrift.ai/v1", "uploads", "prediction", True)
    assert opts.token.reveal() == TOKEN
    bad = ('[destinations.w]\ntype = "wriftai"\ntoken = "env:WRIFTAI_TEST_TOKEN"\n'
           'protocol = "multipart"\nresource = "model"\n' + folder)
    with pytest.raises(ConfigError) as info:
        loads(bad, base_dir=tmp_path)
    keys = [p.key for p in info.value.problems]
    assert keys == ["destinations.w.protocol", "destinations.w.resource"]
    with pytest.raises(ConfigError) as info:
        loads('[destinations.w]\ntype = "wriftai"\ntoken = "x-literal-token"\n'
              'base_url = "api.wrift.ai/v1"\n' + folder, base_dir=tmp_path)
    assert "https://" in str(info.value) and "x-literal-token" not in str(info.value)


# -- issue 10: like the SDK, and receipts that keep working -----------------------------------


@rules(wriftai_empty_without_parts=True)  # urls: []
def test_an_empty_file_completes_with_no_part_like_the_sdk(
        target: Target, emulator: Emulator, tmp_path: Path) -> None:
    path = suite.make_file(tmp_path, 0)
    receipt, sha = suite.attempt(target, path, None, suite.Checkpoints())
    assert target.log("wriftai.put_part") == []
    assert [e["status"] for e in target.log("wriftai.complete")] == [200]
    assert [(u["size"], u["sha256"]) for u in target.stored()] == [(0, sha)]
    assert receipt.details["parts"] == 0


@rules(wriftai_omit_etags=True)
def test_parts_answered_without_an_etag_go_on_like_the_sdk(
        target: Target, emulator: Emulator, tmp_path: Path) -> None:
    path = suite.make_file(tmp_path, 2 * PART + 1)
    receipt, sha = suite.attempt(target, path, None, suite.Checkpoints())
    assert len(part_puts(target)) == 3  # each part once: none is sent again
    assert [u["sha256"] for u in target.stored()] == [sha]


@pytest.mark.parametrize("protocol", ["uploads", "urls"])
def test_the_receipt_keeps_the_signed_download_url_sealed(
        emulator: Emulator, http_client: httpx.Client, tmp_path: Path, clock: Clock,
        protocol: str) -> None:
    dest = WriftAIDestination("w", options(emulator, protocol=protocol), http_client)
    path = suite.make_file(tmp_path, 2 * PART + 1)
    receipt, sha = suite.attempt(Target("wriftai", dest, emulator, "wriftai", PART, "", "",
                                        lambda: [], frozenset()), path, None,
                                 suite.Checkpoints())
    stored = json.loads(json.dumps(receipt.to_json()))  # as the ledger keeps it
    assert "Signature" not in json.dumps(stored) and "?" not in stored["url"]
    assert httpx.get(stored["url"]).status_code == 403  # without its signature it is useless
    assert stored["url_expires_at"] == time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                     time.gmtime(math.ceil(clock.now + TTL)))
    whole = WriftAIDestination.reveal_receipt(options(emulator), stored)
    assert "sealed_urls" not in whole and whole["url"].startswith(stored["url"] + "?")
    r = httpx.get(whole["url"])
    assert r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == sha
    with pytest.raises(ValueError, match="another secret"):
        WriftAIDestination.reveal_receipt(options(emulator, token=Secret("rotated-token")),
                                          stored)
