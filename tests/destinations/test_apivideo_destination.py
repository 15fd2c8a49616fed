"""api.video destination (protocols.md §4): its flows, resume and error mapping
against the emulator over real loopback HTTP (plus a few exact wire checks
through httpx.MockTransport). Scenarios every destination shares are in
tests/destinations/conformance; the emulation's own rules are in
tests/emulator/test_emulator_apivideo.py; the vendor client's view is in
test_vendor_apivideo.py."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from syncd.destinations.apivideo import ApiVideoDestination, ApiVideoOptions
from syncd.destinations.base import Receipt, Source, UploadItem
from syncd.errors import ExpiredError, FatalError, PermanentError, Problem, RetryableError
from syncd.secrets import Secret
from syncd_emulator import Emulator
from tests.support.apivideo import (  # noqa: F401 (fixtures)
    KEY,
    MIB,
    TOKEN,
    UPLOAD_OPS,
    UUID,
    C,
    Clock,
    basic,
    client,
    emu,
    service,
    stored,
    uploads_logged,
)

pytestmark = pytest.mark.timeout(60)


# == the destination ==============================================================


class Crash(Exception):
    """The process dying right after a checkpoint was written."""


class Checkpoints:
    def __init__(self, crash_when: Callable[[dict[str, Any]], bool] | None = None) -> None:
        self.states: list[dict[str, Any]] = []
        self.crash_when = crash_when

    @property
    def last(self) -> dict[str, Any] | None:
        return copy.deepcopy(self.states[-1]) if self.states else None

    def __call__(self, state: dict[str, Any]) -> None:
        self.states.append(json.loads(json.dumps(state)))
        if self.crash_when is not None and self.crash_when(state):
            raise Crash()


def parts_in(state: dict[str, Any]) -> int:
    return len(state.get("parts") or {})


def make_dest(
    emu: Emulator,
    client: httpx.Client,
    *,
    key: bool = True,
    token: str | None = TOKEN,
    api_key: str = KEY,
    chunk: int = C,
) -> ApiVideoDestination:
    options = ApiVideoOptions(
        upload_token=Secret(token) if token is not None else None,
        api_key=Secret(api_key) if key else None,
        base_url=emu.url + "/apivideo",
        chunk_size=chunk,
    )
    return ApiVideoDestination("videos", options, client)


def write(tmp_path: Path, size: int, name: str = "talk.mp4") -> Path:
    path = tmp_path / "inbox" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(os.urandom(size))
    return path


def run(
    dest: ApiVideoDestination,
    path: Path,
    resume: dict[str, Any] | None = None,
    checkpoint: Callable[[dict[str, Any]], None] | None = None,
    *,
    labels: tuple[str, ...] = ("talks", "2026"),
    category: str | None = "SOURCE",
) -> Receipt:
    st = path.stat()
    item = UploadItem(
        uuid=UUID,
        name=path.name,
        relpath=path.name,
        size=st.st_size,
        content_type="video/mp4",
        labels=labels,
        category=category,
    )
    with Source(path, size=st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino) as source:
        return dest.upload(item, source, resume, checkpoint or Checkpoints())


def assert_stored(emu: Emulator, path: Path) -> dict[str, Any]:
    (row,) = stored(emu)
    assert row["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert row["times_received"] == 1 and row["filename"] == path.name
    assert service(emu).unfinished() == []
    return row


def test_options_validation(tmp_path: Path) -> None:
    from syncd._options import parse_options

    def parse(table: dict[str, Any]) -> tuple[Any, list[Problem]]:
        problems: list[Problem] = []
        opts = parse_options(
            ApiVideoOptions, table, prefix="destinations.v", base_dir=tmp_path, problems=problems
        )
        return opts, problems

    opts, problems = parse({"upload_token": "to-x"})
    assert problems == [] and opts.chunk_size == 50 * MIB and opts.api_key is None
    assert opts.base_url == "https://ws.api.video"
    for bad in ("4 MiB", "129 MiB"):
        _, problems = parse({"upload_token": "to-x", "chunk_size": bad})
        assert [p.key for p in problems] == ["destinations.v.chunk_size"]
    _, problems = parse({})  # neither credential
    assert len(problems) == 1 and "api_key" in problems[0].message and "upload_token" in problems[0].message
    key_only, problems = parse({"api_key": "k-x"})
    assert problems == [] and key_only.upload_token is None
    # syncd check: tags and metadata with api_key; without it, nothing and the reason why.
    with_key, _ = parse({"upload_token": "to-x", "api_key": "k-x"})
    caps = ApiVideoDestination.capabilities_for(with_key)
    assert caps.labels == "video tags" and caps.category and not caps.note
    caps = ApiVideoDestination.capabilities_for(opts)
    assert caps.labels is None and caps.category is None and "without api_key" in caps.note


def test_api_key_alone_uploads_through_the_api(emu: Emulator, client: httpx.Client, tmp_path: Path) -> None:
    """No upload token: the video is created and filled through /videos (its tags set),
    and `check --online` checks the key alone."""
    path = write(tmp_path, 2 * C + 7)
    dest = make_dest(emu, client, token=None)
    assert "api_key accepted" in dest.probe()
    receipt = run(dest, path)
    row = assert_stored(emu, path)
    ops = [e["op"] for e in emu.requests()]
    assert "apivideo.upload" not in ops and row["labels"] == ["talks", "2026"]
    assert receipt.remote_id == row["video_id"]


def test_a_token_upload_without_its_token_starts_again_with_the_key(
    emu: Emulator, client: httpx.Client, tmp_path: Path
) -> None:
    """A resume state of a token upload whose first chunk never arrived, after the config
    dropped upload_token for api_key: a new upload through the API (the /upload route is
    never asked for), not an error."""
    path = write(tmp_path, C + 1)
    begun = {
        "v": 1,
        "kind": "apivideo-chunks",
        "part_size": C,
        "size": C + 1,
        "parts": {},
        "session": {"video_id": None, "via": "token", "filename": path.name},
    }
    receipt = run(make_dest(emu, client, token=None), path, resume=begun)
    row = assert_stored(emu, path)
    assert receipt.remote_id == row["video_id"]
    assert "apivideo.upload" not in [e["op"] for e in emu.requests()]


def test_token_only_small_file_is_one_request(emu: Emulator, client: httpx.Client, tmp_path: Path) -> None:
    path = write(tmp_path, 1)
    receipt = run(make_dest(emu, client, key=False), path)
    row = assert_stored(emu, path)
    assert [e["op"] for e in emu.requests()] == ["apivideo.upload"]
    assert row["labels"] == [] and row["category"] is None  # a token cannot carry them
    assert receipt.remote_id == row["video_id"] and receipt.url and "?" not in receipt.url
    assert receipt.details["hls"].endswith("/hls/manifest.m3u8")


def test_token_only_chunks_carry_the_first_video_id(
    emu: Emulator, client: httpx.Client, tmp_path: Path
) -> None:
    path = write(tmp_path, 3 * C + 1)
    checkpoints = Checkpoints()
    receipt = run(make_dest(emu, client, key=False), path, checkpoint=checkpoints)
    assert_stored(emu, path)
    assert uploads_logged(emu) == [C, C, C, 1]
    assert checkpoints.states[0]["session"] == {"video_id": None, "via": "token", "filename": "talk.mp4"}
    assert {s["session"]["video_id"] for s in checkpoints.states[1:]} == {receipt.remote_id}
    for state in checkpoints.states:  # the upload token never reaches the ledger
        assert TOKEN not in json.dumps(state) and KEY not in json.dumps(state)


@pytest.mark.parametrize("key", [False, True], ids=["token-only", "api-key"])
def test_resume_after_a_lost_checkpoint(
    emu: Emulator, client: httpx.Client, tmp_path: Path, key: bool
) -> None:
    """The server confirmed chunk 2 but the process died before checkpointing it."""
    path = write(tmp_path, 2 * C + 9)
    crashing = Checkpoints(crash_when=lambda s: parts_in(s) >= 2)
    with pytest.raises(Crash):
        run(make_dest(emu, client, key=key), path, checkpoint=crashing)
    lagging = crashing.states[-2]  # the checkpoint after chunk 1 only
    assert parts_in(lagging) == 1
    emu.reset_log()
    run(make_dest(emu, client, key=key), path, lagging)
    assert_stored(emu, path)
    # Token only: chunk 2 goes again and api.video refuses it as documented ("range
    # overlap": it holds it), which counts as confirmed; with api_key /status says the
    # server holds it, so only chunk 3 is sent.
    sent = [(e["status"], e["bytes"]) for e in emu.requests() if e["op"] in UPLOAD_OPS]
    assert sent == ([(400, C), (201, 9)] if not key else [(201, 9)])


@pytest.mark.parametrize("key", [False, True], ids=["token-only", "api-key"])
def test_resume_after_the_last_chunk_was_confirmed(
    emu: Emulator, client: httpx.Client, tmp_path: Path, key: bool
) -> None:
    path = write(tmp_path, C + 9)
    crashing = Checkpoints(crash_when=lambda s: parts_in(s) >= 2)
    with pytest.raises(Crash):
        run(make_dest(emu, client, key=key), path, checkpoint=crashing)
    emu.reset_log()
    receipt = run(make_dest(emu, client, key=key), path, crashing.states[-2])
    row = assert_stored(emu, path)
    assert receipt.remote_id == row["video_id"]
    if key:  # /status: complete; nothing is sent, the receipt comes from GET /videos/{id}
        assert uploads_logged(emu, ok_only=False) == []
        assert receipt.url and receipt.details["hls"]
    else:  # the last chunk again: video-source-already-uploaded means done
        assert [e["status"] for e in emu.requests() if e["op"] == "apivideo.upload"] == [400]


def test_api_key_flow_sets_metadata_before_the_bytes(
    emu: Emulator, client: httpx.Client, tmp_path: Path
) -> None:
    path = write(tmp_path, 2 * C + 1, "keynote.mov")
    checkpoints = Checkpoints()
    receipt = run(make_dest(emu, client), path, checkpoint=checkpoints)
    row = assert_stored(emu, path)
    assert row["labels"] == ["talks", "2026"] and row["category"] == "SOURCE"
    assert row["uuid"] == UUID and row["title"] == "keynote.mov"
    ops = [e["op"] for e in emu.requests()]
    # The documented route for an existing video, in part chunks (not /upload?token=).
    assert ops == [
        "apivideo.list_videos",
        "apivideo.create_video",
        "apivideo.upload_source",
        "apivideo.upload_source",
        "apivideo.upload_source",
    ]
    assert checkpoints.states[0]["session"]["video_id"] == receipt.remote_id  # before any byte
    assert receipt.details["chunks"] == 3 and receipt.details["title"] == "keynote.mov"


def test_no_category_means_only_the_uuid_entry(emu: Emulator, client: httpx.Client, tmp_path: Path) -> None:
    path = write(tmp_path, 10)
    run(make_dest(emu, client), path, labels=(), category=None)
    row = assert_stored(emu, path)
    assert row["labels"] == [] and row["category"] is None and row["uuid"] == UUID


def test_lost_create_checkpoint_reuses_the_empty_video(
    emu: Emulator, client: httpx.Client, tmp_path: Path
) -> None:
    path = write(tmp_path, 100)

    def fail_first(state: dict[str, Any]) -> None:
        raise Crash()  # the ledger write after POST /videos never happened

    with pytest.raises(Crash):
        run(make_dest(emu, client), path, checkpoint=fail_first)
    assert len(service(emu).unfinished()) == 1
    run(make_dest(emu, client), path)  # a fresh attempt: resume None
    assert_stored(emu, path)
    ops = [e["op"] for e in emu.requests()]
    assert ops.count("apivideo.create_video") == 1  # one ledger row, one video


def test_a_deleted_video_starts_over(emu: Emulator, client: httpx.Client, tmp_path: Path) -> None:
    path = write(tmp_path, C + 1)
    crashing = Checkpoints(crash_when=lambda s: parts_in(s) >= 1)
    with pytest.raises(Crash):
        run(make_dest(emu, client), path, checkpoint=crashing)
    saved = crashing.last
    assert saved is not None
    httpx.delete(f"{emu.url}/apivideo/videos/{saved['session']['video_id']}", headers=basic())
    receipt = run(make_dest(emu, client), path, saved)
    assert receipt.remote_id != saved["session"]["video_id"]
    assert_stored(emu, path)


def test_token_video_gets_its_metadata_when_api_key_appears(
    emu: Emulator, client: httpx.Client, tmp_path: Path
) -> None:
    path = write(tmp_path, C + 1)
    crashing = Checkpoints(crash_when=lambda s: parts_in(s) >= 1)
    with pytest.raises(Crash):
        run(make_dest(emu, client, key=False), path, checkpoint=crashing)
    run(make_dest(emu, client, key=True), path, crashing.last)  # api_key added to the config
    row = assert_stored(emu, path)
    assert (row["labels"], row["category"], row["uuid"]) == (["talks", "2026"], "SOURCE", UUID)


def test_token_session_without_a_video_restarts_through_the_api(
    emu: Emulator, client: httpx.Client, tmp_path: Path
) -> None:
    path = write(tmp_path, C + 1)
    crashing = Checkpoints(crash_when=lambda s: True)  # dies at the first checkpoint
    with pytest.raises(Crash):
        run(make_dest(emu, client, key=False), path, checkpoint=crashing)
    assert crashing.last is not None and crashing.last["session"]["video_id"] is None
    run(make_dest(emu, client, key=True), path, crashing.last)
    row = assert_stored(emu, path)
    assert row["uuid"] == UUID and row["labels"] == ["talks", "2026"]


@pytest.mark.parametrize(
    "name", ['say "hi".mp4', "back\\slash.mp4", "été 🎬.mov", "semi;colon=1.mp4", "a\u201bFE.mp4"]
)
def test_file_names_round_trip(emu: Emulator, client: httpx.Client, tmp_path: Path, name: str) -> None:
    path = write(tmp_path, 10, name)
    run(make_dest(emu, client, key=False), path)
    assert stored(emu)[0]["filename"] == name


def test_empty_file_is_refused_without_a_request(emu: Emulator, client: httpx.Client, tmp_path: Path) -> None:
    path = write(tmp_path, 0)
    with pytest.raises(PermanentError, match="empty"):
        run(make_dest(emu, client), path)
    assert emu.requests() == []


def test_bad_upload_token_is_fatal_and_secret(emu: Emulator, client: httpx.Client, tmp_path: Path) -> None:
    wrong = "to-wrong-token-8e2a"
    with pytest.raises(FatalError) as info:
        run(make_dest(emu, client, key=False, token=wrong), write(tmp_path, 10))
    assert info.value.status == 404 and wrong not in str(info.value)
    assert "upload token" in str(info.value)
    # With api_key the upload goes through /videos/{id}/source: the token is not used.
    path = write(tmp_path, 10, "b.mp4")
    run(make_dest(emu, client, token=wrong), path)
    assert_stored(emu, path)


def test_bad_api_key_is_fatal(emu: Emulator, client: httpx.Client, tmp_path: Path) -> None:
    with pytest.raises(FatalError) as info:
        run(make_dest(emu, client, api_key="wrong-key-3a9d"), write(tmp_path, 10))
    assert info.value.status == 401 and "wrong-key-3a9d" not in str(info.value)


def test_other_4xx_is_permanent_and_5xx_retryable(
    emu: Emulator, client: httpx.Client, tmp_path: Path
) -> None:
    path = write(tmp_path, 10)
    dest = make_dest(emu, client, key=False)
    emu.set_faults(script=[{"op": "apivideo.upload", "status": 400}])
    with pytest.raises(PermanentError):
        run(dest, path)
    emu.set_faults(script=[{"op": "apivideo.upload", "status": 502}])
    with pytest.raises(RetryableError) as info:
        run(dest, path)
    assert info.value.status == 502


def test_403_is_retried_at_once_but_bounded(emu: Emulator, client: httpx.Client, tmp_path: Path) -> None:
    emu.set_faults(script=[{"op": "apivideo.upload", "kind": "expire", "count": 10}])
    with pytest.raises(ExpiredError):
        run(make_dest(emu, client, key=False), write(tmp_path, 10))
    assert len(uploads_logged(emu, ok_only=False)) == 4  # the first try and 3 renewals


def test_abort(emu: Emulator, client: httpx.Client, tmp_path: Path) -> None:
    path = write(tmp_path, 2 * C + 1)
    crashing = Checkpoints(crash_when=lambda s: parts_in(s) >= 1)
    with pytest.raises(Crash):
        run(make_dest(emu, client, key=False), path, checkpoint=crashing)
    saved = crashing.last
    assert saved is not None
    emu.reset_log()
    make_dest(emu, client, key=False).abort(saved)  # a token deletes nothing
    assert emu.requests() == [] and len(service(emu).unfinished()) == 1
    make_dest(emu, client).abort(saved)
    assert service(emu).unfinished() == []
    # A complete video is never deleted by abort.
    done = Checkpoints()
    run(make_dest(emu, client), write(tmp_path, 10, "b.mp4"), checkpoint=done)
    assert done.last is not None
    make_dest(emu, client).abort(done.last)
    assert len(stored(emu)) == 1
    assert (
        httpx.get(
            f"{emu.url}/apivideo/videos/{done.last['session']['video_id']}", headers=basic()
        ).status_code
        == 200
    )


def test_probe(emu: Emulator, client: httpx.Client) -> None:
    assert "cannot be checked without api_key" in make_dest(emu, client, key=False).probe()
    assert make_dest(emu, client).probe().startswith("ok")
    with pytest.raises(FatalError):
        make_dest(emu, client, token="to-unknown-1234").probe()
    with pytest.raises(FatalError):
        make_dest(emu, client, api_key="nope-nope").probe()


# == exact wire details (MockTransport) ==============================================


def mock_dest(
    handler: Callable[[httpx.Request], httpx.Response], *, key: bool = False, chunk: int = C
) -> ApiVideoDestination:
    client = httpx.Client(transport=httpx.MockTransport(handler))
    options = ApiVideoOptions(
        upload_token=Secret(TOKEN),
        api_key=Secret(KEY) if key else None,
        base_url="https://av.example/",
        chunk_size=chunk,
    )
    return ApiVideoDestination("videos", options, client)


def test_wire_format_of_chunks(tmp_path: Path) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        request.read()
        seen.append(request)
        video: dict[str, Any] = {"videoId": "vi123"}
        if request.headers["Content-Range"].endswith(f"-{C}/{C + 1}"):
            video["assets"] = {
                "player": "https://embed.example/vod/vi123?token=priv-secret",
                "hls": "https://cdn.example/vi123/manifest.m3u8?token=priv",
            }
        return httpx.Response(201, json=video)

    path = write(tmp_path, C + 1, 'odd "name".mp4')
    with Source(path, size=C + 1, mtime_ns=path.stat().st_mtime_ns, inode=path.stat().st_ino) as source:
        receipt = mock_dest(handler).upload(
            UploadItem(UUID, path.name, path.name, C + 1, "video/mp4"), source, None, Checkpoints()
        )
    first, second = seen
    for r in seen:
        assert r.url.path == "/upload" and r.url.params["token"] == TOKEN
        assert "Authorization" not in r.headers
        assert r.headers["Content-Length"] == str(len(r.content))
    assert first.headers["Content-Range"] == f"bytes 0-{C - 1}/{C + 1}"
    assert second.headers["Content-Range"] == f"bytes {C}-{C}/{C + 1}"
    assert b'name="videoId"' not in first.content
    body = second.content
    assert body.index(b'name="videoId"\r\n\r\nvi123\r\n') < body.index(b'name="file"')
    assert b'filename="odd %22name%22.mp4"' in body
    assert receipt.url == "https://embed.example/vod/vi123"
    assert receipt.details["hls"] == "https://cdn.example/vi123/manifest.m3u8"
    assert "priv" not in json.dumps(receipt.to_json())


def test_429_without_retry_after_uses_the_rate_limit_header(tmp_path: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, json={"status": 429}, headers={"X-RateLimit-Retry-After": "12"})

    path = write(tmp_path, 5)
    with (
        Source(path, size=5, mtime_ns=path.stat().st_mtime_ns, inode=path.stat().st_ino) as source,
        pytest.raises(RetryableError) as info,
    ):
        mock_dest(handler).upload(
            UploadItem(UUID, path.name, path.name, 5, "video/mp4"), source, None, Checkpoints()
        )
    assert info.value.status == 429 and info.value.retry_after == 12.0


def test_transport_errors_are_retryable_and_hide_the_token(tmp_path: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"cannot reach {request.url}")

    path = write(tmp_path, 5)
    with (
        Source(path, size=5, mtime_ns=path.stat().st_mtime_ns, inode=path.stat().st_ino) as source,
        pytest.raises(RetryableError) as info,
    ):
        mock_dest(handler).upload(
            UploadItem(UUID, path.name, path.name, 5, "video/mp4"), source, None, Checkpoints()
        )
    assert TOKEN not in str(info.value) and "token=***" in str(info.value)


@pytest.mark.parametrize("key", [False, True], ids=["token", "api-key"])
@pytest.mark.parametrize("status", [403, 404])
def test_a_chunk_answered_with_an_html_page_is_the_services_trouble(
    tmp_path: Path, key: bool, status: int
) -> None:
    """A WAF's block page in front of api.video: each chunk's 403 was read as an expiry,
    sent again at once three times and then charged to the file, which failed; a 404 page
    on the token route paused the destination as an unknown token."""
    from syncd.circuit import is_outage

    HTML = "<html><head><title>Forbidden</title></head><body><h1>Forbidden</h1>nginx</body></html>"
    chunks: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        request.read()
        if request.method == "GET" and request.url.path == "/videos":
            return httpx.Response(200, json={"data": []})
        if request.url.path == "/videos":
            return httpx.Response(201, json={"videoId": "vi9"})
        chunks.append(request)
        return httpx.Response(status, headers={"Content-Type": "text/html"}, text=HTML)

    path = write(tmp_path, 5)
    with (
        Source(path, size=5, mtime_ns=path.stat().st_mtime_ns, inode=path.stat().st_ino) as source,
        pytest.raises(RetryableError) as info,
    ):
        mock_dest(handler, key=key).upload(
            UploadItem(UUID, path.name, path.name, 5, "video/mp4"), source, None, Checkpoints()
        )
    assert not isinstance(info.value, ExpiredError) and is_outage(info.value)
    assert len(chunks) == 1 and "HTML page" in str(info.value)


# == issue 10: the documented route with an API key, re-sent chunks, receipts, warnings =====


def test_api_key_chunks_go_to_the_documented_source_route(tmp_path: Path) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        request.read()
        seen.append(request)
        if request.method == "GET" and request.url.path == "/videos":
            return httpx.Response(200, json={"data": []})
        if request.url.path == "/videos":
            return httpx.Response(201, json={"videoId": "vi9"})
        return httpx.Response(201, json={"videoId": "vi9"})

    path = write(tmp_path, C + 1)
    with Source(path, size=C + 1, mtime_ns=path.stat().st_mtime_ns, inode=path.stat().st_ino) as source:
        mock_dest(handler, key=True).upload(
            UploadItem(UUID, path.name, path.name, C + 1, "video/mp4"), source, None, Checkpoints()
        )
    chunks = [r for r in seen if r.url.path.endswith("/source")]
    assert [r.url.path for r in chunks] == ["/videos/vi9/source"] * 2
    assert [r.headers["Content-Range"] for r in chunks] == ["part 1/2", "part 2/2"]
    for r in chunks:
        assert r.headers["Authorization"] == basic()["Authorization"]
        assert "token" not in r.url.params and b'name="videoId"' not in r.content
    assert not [r for r in seen if r.url.path == "/upload"]


def test_the_source_route_resumes_from_received_parts(
    emu: Emulator, client: httpx.Client, tmp_path: Path
) -> None:
    path = write(tmp_path, 3 * C + 5)
    crashing = Checkpoints(crash_when=lambda s: parts_in(s) >= 2)
    with pytest.raises(Crash):
        run(make_dest(emu, client), path, checkpoint=crashing)
    lagging = crashing.states[-2]  # the checkpoint after chunk 1: chunk 2's 201 was "lost"
    assert parts_in(lagging) == 1
    video = lagging["session"]["video_id"]
    status = httpx.get(f"{emu.url}/apivideo/videos/{video}/status", headers=basic()).json()
    assert status["ingest"]["receivedParts"] == {"parts": [1, 2], "total": 4}
    emu.reset_log()
    run(make_dest(emu, client), path, lagging)
    assert_stored(emu, path)
    assert [(e["op"], e["bytes"]) for e in emu.requests() if e["op"] in UPLOAD_OPS] == [
        ("apivideo.upload_source", C),
        ("apivideo.upload_source", 5),
    ]  # parts 3 and 4 only


@pytest.mark.parametrize("emu", [{"apivideo_private_videos": True}], indirect=True, ids=["private_videos"])
def test_a_private_videos_asset_urls_are_sealed_and_shown_on_request(
    emu: Emulator, client: httpx.Client, tmp_path: Path
) -> None:
    path = write(tmp_path, C + 9)
    receipt = run(make_dest(emu, client), path)
    stored_json = json.loads(json.dumps(receipt.to_json()))  # as the ledger keeps it
    assert stored_json["public"] is False and "sealed_urls" in stored_json
    assert "?" not in stored_json["url"] and "/token/***/" in stored_json["mp4"]
    for name in ("url", "hls", "mp4", "thumbnail"):
        assert httpx.get(stored_json[name]).status_code in (403, 404), name  # no token, no asset
    options = make_dest(emu, client).options
    whole = ApiVideoDestination.reveal_receipt(options, stored_json)
    assert "?token=" in whole["url"] and "/token/***/" not in whole["mp4"]
    assert httpx.get(whole["url"]).status_code == 200
    mp4 = httpx.get(whole["mp4"])
    assert mp4.status_code == 200 and mp4.content == path.read_bytes()
    # Sealed with the API key: a configuration without it cannot open them.
    token_only = make_dest(emu, client, key=False)
    with pytest.raises(ValueError, match="another secret"):
        ApiVideoDestination.reveal_receipt(token_only.options, stored_json)


def test_public_videos_need_no_seal(emu: Emulator, client: httpx.Client, tmp_path: Path) -> None:
    receipt = run(make_dest(emu, client), write(tmp_path, 10))
    assert "sealed_urls" not in receipt.details
    assert httpx.get(receipt.details["mp4"]).status_code == 200


def test_labels_without_api_key_warn_once_at_run_time(
    emu: Emulator, client: httpx.Client, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "syncd.destinations.apivideo")
    dest = make_dest(emu, client, key=False)
    for i in range(3):
        run(dest, write(tmp_path, 10, f"a{i}.mp4"))
    run(dest, write(tmp_path, 10, "other.mp4"), labels=("x",), category=None)
    run(dest, write(tmp_path, 10, "bare.mp4"), labels=(), category=None)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2, warnings  # once per set of labels and category, none without
    assert (
        "labels ['talks', '2026'] and category 'SOURCE' will not reach api.video" in warnings[0]
        and "set api_key" in warnings[0]
    )
    caplog.clear()
    run(make_dest(emu, client), write(tmp_path, 10, "keyed.mp4"))
    assert caplog.records == []


def test_check_warns_about_labels_only_without_api_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from syncd import cli

    monkeypatch.setenv("AV_TEST_TOKEN", TOKEN)
    monkeypatch.setenv("AV_TEST_KEY", KEY)
    (tmp_path / "inbox").mkdir()

    def check(key_line: str) -> str:
        config = tmp_path / "syncd.toml"
        config.write_text(f"""
[destinations.videos]
type = "apivideo"
upload_token = "env:AV_TEST_TOKEN"
{key_line}

[[folders]]
path = "inbox"
destination = "videos"
labels = ["talks"]
category = "SOURCE"
""")
        capsys.readouterr()
        assert cli.main(["-c", str(config), "check"]) == 0
        return capsys.readouterr().out

    with_key = check('api_key = "env:AV_TEST_KEY"')
    assert "labels ['talks'] are delivered as video tags" in with_key
    assert "warning" not in with_key and "requires api_key" not in with_key
    without = check("")
    assert "warning: apivideo cannot carry labels without api_key" in without
    assert "warning: apivideo cannot carry a category without api_key" in without
    assert "delivered" not in without
