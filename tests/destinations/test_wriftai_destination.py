"""WriftAI destination: its edge cases against the emulator and with a mock
transport, the seal and the options, and the conformance scenarios once more
for protocol ``"uploads"``.

The shared conformance target runs ``protocol = "urls"`` (it carries the file
name the metadata scenario checks); the default ``"uploads"`` protocol has no
name field, so its run of the same scenarios lives here, with its own target.
The emulation's own rules are in tests/emulator/test_emulator_wriftai.py.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from syncd.config import loads
from syncd.destinations.base import Source, UploadItem
from syncd.destinations.wriftai import WriftAIDestination, WriftAIOptions, rate_limit_wait
from syncd.errors import ConfigError, FatalError, RetryableError
from syncd.http import make_client
from syncd.seal import Sealer
from syncd.secrets import Secret
from syncd_emulator import Emulator
from tests.destinations.conformance import test_destination_conformance as suite
from tests.destinations.conformance.targets import Target
from tests.support.wriftai import PART, TOKEN, TTL, Clock, clock, emulator, rules  # noqa: F401 (fixtures)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def http_client() -> Iterator[httpx.Client]:
    with make_client(read=30.0, write=30.0) as client:
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
        type="wriftai",
        dest=WriftAIDestination("test-wriftai", opts, client),
        emulator=emulator,
        service="wriftai",
        part_size=PART,
        first_op="wriftai.initiate_multipart",
        part_op="wriftai.put_part",
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


# -- destination: resume and renewal against the emulator ----------------------------------


def crash_after(target: Target, path: Path, parts: int) -> dict[str, Any]:
    crashing = suite.Checkpoints(crash_when=lambda s: suite.parts_done(s) >= parts)
    with pytest.raises(suite.Crash):
        suite.attempt(target, path, None, crashing)
    assert crashing.last is not None
    return crashing.last


def part_puts(target: Target) -> list[str]:
    return [
        e["path"].rsplit("/", 3)[1] + "#" + e["path"].rsplit("/", 1)[1]
        for e in target.log("wriftai.put_part")
        if 200 <= e["status"] < 300
    ]


def test_checkpoint_keeps_the_part_urls_sealed(target: Target, tmp_path: Path) -> None:
    path = suite.make_file(tmp_path, 3 * PART)
    saved = crash_after(target, path, 1)
    session = saved["session"]
    assert set(session) == {"id", "mime", "count", "sealed"} and session["count"] == 3
    text = json.dumps(saved)
    assert "http" not in text and "Signature" not in text and TOKEN not in text
    urls = Sealer(TOKEN, "wriftai part urls").unseal(session["id"], session["sealed"])
    assert urls is not None and len(urls) == 3 and all(f"/{session['id']}/parts/" in u for u in urls)


def test_a_resume_that_cannot_be_unsealed_starts_a_new_upload(target: Target, tmp_path: Path) -> None:
    path = suite.make_file(tmp_path, 3 * PART)
    saved = crash_after(target, path, 2)
    target.dest._uploads.sealer = Sealer("a-rotated-token", "wriftai part urls")
    target.emulator.reset_log()
    receipt, sha = suite.attempt(target, path, saved, suite.Checkpoints())
    assert len(target.log("wriftai.initiate_multipart")) == 1
    assert len(part_puts(target)) == 3  # every part of the new upload
    assert receipt.remote_id != saved["session"]["id"]
    assert [u["sha256"] for u in target.stored()] == [sha]


def test_resume_parts_false_keeps_no_urls(
    emulator: Emulator, http_client: httpx.Client, tmp_path: Path
) -> None:
    target = uploads_target(emulator, http_client)
    target.dest = WriftAIDestination("w", options(emulator, resume_parts=False), http_client)
    path = suite.make_file(tmp_path, 3 * PART)
    saved = crash_after(target, path, 2)
    assert "sealed" not in saved["session"]
    emulator.reset_log()
    _, sha = suite.attempt(target, path, saved, suite.Checkpoints())
    assert len(part_puts(target)) == 3 and [u["sha256"] for u in target.stored()] == [sha]


def test_expired_part_urls_open_a_new_upload_in_the_same_call(
    target: Target, tmp_path: Path, clock: Clock
) -> None:
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
    emulator: Emulator, http_client: httpx.Client, tmp_path: Path
) -> None:
    dest = WriftAIDestination("w", options(emulator, protocol="urls"), http_client)
    emulator.set_faults(script=[{"op": "wriftai.put", "kind": "expire", "count": 2}])
    path = suite.make_file(tmp_path, 1000, "ünï code.pdf")
    st = path.stat()
    item = UploadItem(
        uuid="u", name=path.name, relpath=path.name, size=st.st_size, content_type="application/pdf"
    )
    seen: list[dict[str, Any]] = []
    with Source(path, size=st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino) as source:
        receipt = dest.upload(item, source, {"v": 1, "kind": "uploads"}, seen.append)
    (row,) = emulator.uploads()
    assert (row["filename"], row["content_type"], row["resource"]) == (
        "ünï code.pdf",
        "application/pdf",
        "prediction",
    )
    assert receipt.url == row["url"] and "?" not in receipt.url
    assert receipt.remote_id.endswith(quote(row["key"]))
    assert [s["kind"] for s in seen] == ["urls"] * 3


def test_urls_protocol_gives_up_after_two_renewals(
    emulator: Emulator, http_client: httpx.Client, tmp_path: Path
) -> None:
    dest = WriftAIDestination("w", options(emulator, protocol="urls"), http_client)
    emulator.set_faults(script=[{"op": "wriftai.put", "kind": "expire", "count": 3}])
    path = suite.make_file(tmp_path, 10)
    st = path.stat()
    with (
        Source(path, size=st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino) as source,
        pytest.raises(RetryableError) as info,
    ):
        dest.upload(suite.item_for(path), source, None, lambda s: None)
    assert info.value.status == 403


def test_probe_names_the_user(emulator: Emulator, http_client: httpx.Client) -> None:
    assert WriftAIDestination("w", options(emulator), http_client).probe() == "ok, authenticated as emulator"
    bad = WriftAIDestination("w", options(emulator, token=Secret("wrong-token-9")), http_client)
    with pytest.raises(FatalError) as info:
        bad.probe()
    assert "wrong-token-9" not in str(info.value)


# -- destination: wire details with a mock transport ----------------------------------------


class Mock:
    """A scripted WriftAI for httpx.MockTransport: records requests, answers by route."""

    def __init__(self, size: int, part_size: int, *, etag: bool = True, extra_urls: int = 0) -> None:
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
            urls = [
                f"https://store.example/u{self.opened}/{n}?X-Amz-Signature=s{n}" for n in range(1, count + 1)
            ]
            return httpx.Response(
                200, json={"id": f"up{self.opened}", "urls": urls, "part_size": self.part_size}
            )
        if request.method == "PUT":
            return httpx.Response(200, headers={"etag": f'"e{request.url.path[-1]}"'} if self.etag else {})
        if route.endswith("/complete"):
            return httpx.Response(200, json={"download_url": "https://cdn.example/f/x?sig=abc"})
        return httpx.Response(404, json={"detail": "Not Found"})


def mock_upload(
    mock: Mock,
    tmp_path: Path,
    resume: dict[str, Any] | None = None,
    now: Callable[[], float] = time.time,
    **kw: Any,
) -> Any:
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
        ("10", "application/octet-stream"),
        ("10", "application/octet-stream"),
        ("5", "application/octet-stream"),
    ]
    assert all("Authorization" not in p.headers for p in puts)
    assert json.loads(done.content) == {"etags": ['"e1"', '"e2"', '"e3"']}
    assert done.url.path == "/v1/uploads/up1/complete"
    assert (receipt.remote_id, receipt.url) == ("up1", "https://cdn.example/f/x")


def test_wire_shape_of_urls(tmp_path: Path) -> None:
    mock = Mock(size=7, part_size=7)
    mock.queue(
        "POST /v1/files/urls",
        httpx.Response(
            200,
            json={
                "upload_url": "https://store.example/put?X-Amz-Signature=s",
                "download_url": "https://cdn.example/files/a/report.bin?X-Amz-Signature=t",
            },
        ),
    )
    receipt = mock_upload(mock, tmp_path, protocol="urls")
    create, put = mock.requests
    assert json.loads(create.content) == {
        "name": "report.bin",
        "size": 7,
        "resource": "prediction",
        "mime_type": "application/octet-stream",
    }
    assert put.headers["Content-Length"] == "7" and "Authorization" not in put.headers
    assert (receipt.remote_id, receipt.url) == (
        "/files/a/report.bin",
        "https://cdn.example/files/a/report.bin",
    )


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
    mock.queue(
        "POST /v1/uploads",
        rate_limited({"Retry-After": "2", "x-ratelimit-reset": str(int(time.time()) + 60)}),
    )
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
    cfg = loads(
        '[destinations.w]\ntype = "wriftai"\ntoken = "env:WRIFTAI_TEST_TOKEN"\n' + folder, base_dir=tmp_path
    )
    opts = cfg.destinations["w"].options
    assert (opts.base_url, opts.protocol, opts.resource, opts.resume_parts) == (
        "https://api.wrift.ai/v1",
        "uploads",
        "prediction",
        True,
    )
    assert opts.token.reveal() == TOKEN
    bad = (
        '[destinations.w]\ntype = "wriftai"\ntoken = "env:WRIFTAI_TEST_TOKEN"\n'
        'protocol = "multipart"\nresource = "model"\n' + folder
    )
    with pytest.raises(ConfigError) as info:
        loads(bad, base_dir=tmp_path)
    keys = [p.key for p in info.value.problems]
    assert keys == ["destinations.w.protocol", "destinations.w.resource"]
    with pytest.raises(ConfigError) as info:
        loads(
            '[destinations.w]\ntype = "wriftai"\ntoken = "x-literal-token"\n'
            'base_url = "api.wrift.ai/v1"\n' + folder,
            base_dir=tmp_path,
        )
    assert "https://" in str(info.value) and "x-literal-token" not in str(info.value)


# -- issue 10: like the SDK, and receipts that keep working -----------------------------------


@rules(wriftai_empty_without_parts=True)  # urls: []
def test_an_empty_file_completes_with_no_part_like_the_sdk(
    target: Target, emulator: Emulator, tmp_path: Path
) -> None:
    path = suite.make_file(tmp_path, 0)
    receipt, sha = suite.attempt(target, path, None, suite.Checkpoints())
    assert target.log("wriftai.put_part") == []
    assert [e["status"] for e in target.log("wriftai.complete")] == [200]
    assert [(u["size"], u["sha256"]) for u in target.stored()] == [(0, sha)]
    assert receipt.details["parts"] == 0


@rules(wriftai_omit_etags=True)
def test_parts_answered_without_an_etag_go_on_like_the_sdk(
    target: Target, emulator: Emulator, tmp_path: Path
) -> None:
    path = suite.make_file(tmp_path, 2 * PART + 1)
    receipt, sha = suite.attempt(target, path, None, suite.Checkpoints())
    assert len(part_puts(target)) == 3  # each part once: none is sent again
    assert [u["sha256"] for u in target.stored()] == [sha]


@pytest.mark.parametrize("protocol", ["uploads", "urls"])
def test_the_receipt_keeps_the_signed_download_url_sealed(
    emulator: Emulator, http_client: httpx.Client, tmp_path: Path, clock: Clock, protocol: str
) -> None:
    dest = WriftAIDestination("w", options(emulator, protocol=protocol), http_client)
    path = suite.make_file(tmp_path, 2 * PART + 1)
    receipt, sha = suite.attempt(
        Target("wriftai", dest, emulator, "wriftai", PART, "", "", lambda: [], frozenset()),
        path,
        None,
        suite.Checkpoints(),
    )
    stored = json.loads(json.dumps(receipt.to_json()))  # as the ledger keeps it
    assert "Signature" not in json.dumps(stored) and "?" not in stored["url"]
    assert httpx.get(stored["url"]).status_code == 403  # without its signature it is useless
    assert stored["url_expires_at"] == time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime(math.ceil(clock.now + TTL))
    )
    whole = WriftAIDestination.reveal_receipt(options(emulator), stored)
    assert "sealed_urls" not in whole and whole["url"].startswith(stored["url"] + "?")
    r = httpx.get(whole["url"])
    assert r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == sha
    with pytest.raises(ValueError, match="another secret"):
        WriftAIDestination.reveal_receipt(options(emulator, token=Secret("rotated-token")), stored)
