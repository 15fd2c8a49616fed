"""The api.video emulation (protocols.md §4) over real loopback HTTP: uploads by
byte range and by part, the file field, rate-limit headers, problem+json
errors, API key and upload tokens, the videos API, a restart.

The destination against it is in tests/destinations/test_apivideo_destination.py."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

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


@pytest.fixture
def http(emu: Emulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emu.url + "/apivideo", timeout=30) as client:
        yield client


def post_chunk(
    http: httpx.Client,
    data: bytes,
    content_range: str | None = None,
    *,
    video_id: str | None = None,
    token: str = TOKEN,
    filename: str = "clip.mp4",
    path: str = "/upload",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    form = {"videoId": video_id} if video_id else None
    hdrs = dict(headers or {})
    if content_range is not None:
        hdrs["Content-Range"] = content_range
    params = {"token": token} if path == "/upload" else None
    return http.post(path, params=params, data=form, files={"file": (filename, data)}, headers=hdrs)


def problem(response: httpx.Response) -> tuple[int, str, str]:
    body = response.json()
    return response.status_code, body["type"].rpartition("/")[2], body.get("name", "")


# == the emulator ===================================================================


def test_single_upload_and_listing(emu: Emulator, http: httpx.Client) -> None:
    data = os.urandom(1000)
    r = post_chunk(http, data, "bytes 0-999/1000", filename="talk.mp4")
    assert r.status_code == 201, r.text
    video = r.json()
    assert video["videoId"].startswith("vi") and video["title"] == "talk.mp4"
    assert set(video["assets"]) >= {"hls", "player", "mp4", "thumbnail", "iframe"}
    (row,) = stored(emu)
    assert row["key"] == row["video_id"] == video["videoId"]
    assert row["filename"] == "talk.mp4" and row["size"] == 1000
    assert row["sha256"] == hashlib.sha256(data).hexdigest()
    assert row["content_type"] == "video/mp4" and row["times_received"] == 1
    assert uploads_logged(emu) == [1000]  # the log counts the chunk, not the form


def test_whole_file_without_content_range(emu: Emulator, http: httpx.Client) -> None:
    r = post_chunk(http, b"abc")
    assert r.status_code == 201 and "assets" in r.json()
    assert stored(emu)[0]["content_range"] == "none"


def test_every_response_has_rate_limit_headers(emu: Emulator, http: httpx.Client) -> None:
    ok = post_chunk(http, b"x", "bytes 0-0/1")
    bad = post_chunk(http, b"x", "bytes 0-0/1", token="to-nope")
    nothing = http.get("/nowhere")
    emu.set_faults(script=[{"op": "apivideo.upload", "kind": "429", "retry_after": 7}])
    limited = post_chunk(http, b"x", "bytes 0-0/1")
    for r in (ok, bad, nothing, limited):
        assert all(
            h in r.headers for h in ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Retry-After")
        ), r.headers
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == limited.headers["X-RateLimit-Retry-After"] == "7"
    assert limited.json() == {
        "type": "https://docs.api.video/reference/too-many-requests",
        "title": "Too many requests.",
        "status": 429,
    }
    assert limited.headers["Content-Type"] == "application/problem+json"


def test_injected_5xx_is_problem_json(emu: Emulator, http: httpx.Client) -> None:
    emu.set_faults(script=[{"op": "apivideo.upload", "status": 503}])
    r = post_chunk(http, b"x", "bytes 0-0/1")
    assert r.status_code == 503 and r.json()["status"] == 503
    assert r.json()["type"].startswith("https://docs.api.video/reference/")
    assert stored(emu) == []


def test_unknown_token_is_404_and_stores_nothing(emu: Emulator, http: httpx.Client) -> None:
    assert problem(post_chunk(http, b"x", "bytes 0-0/1", token="to-wrong")) == (
        404,
        "resource-not-found",
        "token",
    )
    r = http.post("/upload", files={"file": ("a.mp4", b"x")})  # no token at all
    assert r.status_code == 404
    assert stored(emu) == [] and service(emu).unfinished() == []


@pytest.mark.parametrize(
    "files, slug",
    [
        ({"other": (None, "x")}, "uploaded-file-no-file"),  # a form without a file field
        ({"file": ("a.mp4", b"")}, "uploaded-file-no-file"),
        ([("file", ("a.mp4", b"1")), ("file", ("b.mp4", b"2"))], "uploaded-file-multiple-files"),
    ],
)
def test_file_field_rules(emu: Emulator, http: httpx.Client, files: Any, slug: str) -> None:
    r = http.post("/upload", params={"token": TOKEN}, files=files)
    assert problem(r)[:2] == (400, slug)
    assert stored(emu) == [] and service(emu).unfinished() == []


def test_not_multipart_is_refused(http: httpx.Client) -> None:
    r = http.post(
        "/upload",
        params={"token": TOKEN},
        content=b"raw bytes",
        headers={"Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 400


@pytest.mark.parametrize(
    "header",
    ["bytes 0-9/5", "bytes 5-2/10", "bytes=0-9/10", "part 0/3", "part 4/3", "parts 1/2", "bytes 0-8/10"],
)
def test_malformed_content_range(emu: Emulator, http: httpx.Client, header: str) -> None:
    r = post_chunk(http, os.urandom(10), header)
    assert problem(r)[:2] == (400, "video-content-range-malformed"), header
    assert service(emu).unfinished() == []


def test_byte_chunks_rules(emu: Emulator, http: httpx.Client) -> None:
    data = os.urandom(2 * C + 100)
    small = post_chunk(http, data[:100], f"bytes 0-99/{len(data)}")
    assert problem(small)[:2] == (400, "invalid-attribute")  # a non-final chunk under 5 MiB
    assert service(emu).unfinished() == []  # a refused first chunk makes no video
    first = post_chunk(http, data[:C], f"bytes 0-{C - 1}/{len(data)}")
    assert first.status_code == 201 and "assets" not in first.json()
    vid = first.json()["videoId"]
    # Without videoId a later chunk cannot be placed.
    assert problem(post_chunk(http, data[C : 2 * C], f"bytes {C}-{2 * C - 1}/{len(data)}"))[1:] == (
        "attribute-required",
        "videoId",
    )
    # A gap is refused; the held range sent again is the documented "range overlap" error
    # (docs.api.video reference/video-content-range-by-bytes-range-overlap), storing nothing.
    gap = post_chunk(http, data[C + 1 : 2 * C + 1], f"bytes {C + 1}-{2 * C}/{len(data)}", video_id=vid)
    assert problem(gap)[:2] == (400, "video-content-range-malformed")
    again = post_chunk(http, data[:C], f"bytes 0-{C - 1}/{len(data)}", video_id=vid)
    assert problem(again) == (400, "video-content-range-by-bytes-range-overlap", "Content-Range")
    assert again.json()["detail"] == f"bytes 0-{C - 1} are held; the next chunk starts at byte {C}"
    other_total = post_chunk(http, data[C : 2 * C], f"bytes {C}-{2 * C - 1}/{len(data) + 1}", video_id=vid)
    assert problem(other_total)[:2] == (400, "video-content-range-malformed")
    mixed = post_chunk(http, data[C : 2 * C], "part 2/3", video_id=vid)
    assert problem(mixed)[:2] == (400, "video-content-range-malformed")
    assert (
        post_chunk(http, data[C : 2 * C], f"bytes {C}-{2 * C - 1}/{len(data)}", video_id=vid).status_code
        == 201
    )
    last = post_chunk(http, data[2 * C :], f"bytes {2 * C}-{len(data) - 1}/{len(data)}", video_id=vid)
    assert last.status_code == 201 and "assets" in last.json()
    (row,) = stored(emu)
    assert row["sha256"] == hashlib.sha256(data).hexdigest() and row["chunks"] == 3
    assert problem(
        post_chunk(http, data[2 * C :], f"bytes {2 * C}-{len(data) - 1}/{len(data)}", video_id=vid)
    ) == (400, "video-source-already-uploaded", "file")
    assert stored(emu)[0]["times_received"] == 1


def test_part_chunks_any_order_and_progressive(emu: Emulator, http: httpx.Client) -> None:
    a, b, c = os.urandom(C), os.urandom(C), os.urandom(10)
    vid = post_chunk(http, a, "part 1/3").json()["videoId"]
    assert post_chunk(http, c, "part 3/3", video_id=vid).status_code == 201
    again = post_chunk(http, a, "part 1/3", video_id=vid)  # sent again: documented error
    assert problem(again) == (400, "video-content-range-by-part-part-already-sent", "Content-Range")
    assert stored(emu) == []
    done = post_chunk(http, b, "part 2/3", video_id=vid)
    assert "assets" in done.json()
    assert stored(emu)[0]["sha256"] == hashlib.sha256(a + b + c).hexdigest()
    # Progressive: the total is unknown until the last part.
    vid2 = post_chunk(http, a, "part 1/*").json()["videoId"]
    assert problem(post_chunk(http, c, "part 2/*", video_id=vid2))[:2] == (400, "invalid-attribute")
    assert post_chunk(http, c, "part 2/2", video_id=vid2).status_code == 201
    assert stored(emu)[1]["sha256"] == hashlib.sha256(a + c).hexdigest()


def test_part_chunks_without_video_id_follow_the_open_upload(emu: Emulator, http: httpx.Client) -> None:
    """api.video-python 1.4.7's upload_with_upload_token never sends videoId."""
    a, b = os.urandom(C), os.urandom(3)
    assert post_chunk(http, a, "part 1/2").status_code == 201
    r = post_chunk(http, b, "part 2/2")
    assert r.status_code == 201 and "assets" in r.json()
    assert stored(emu)[0]["sha256"] == hashlib.sha256(a + b).hexdigest()
    # Two open part-form uploads for the token: ambiguous.
    post_chunk(http, a, "part 1/2")
    post_chunk(http, a, "part 1/2")
    assert problem(post_chunk(http, b, "part 2/2"))[1:] == ("attribute-required", "videoId")
    # Another token never picks up this token's uploads.
    r = http.post("/upload-tokens", json={"ttl": 0}, headers=basic())
    other = r.json()["token"]
    assert problem(post_chunk(http, b, "part 2/2", token=other))[1:] == ("attribute-required", "videoId")


def test_api_key_auth(emu: Emulator, http: httpx.Client) -> None:
    assert http.get("/videos").status_code == 401
    assert http.get("/videos", headers=basic(password="x")).status_code == 401  # not KEY:KEY
    assert http.get("/videos", headers=basic("wrong")).status_code == 401
    assert http.get("/videos", headers=basic()).status_code == 200
    assert problem(http.post("/auth/api-key", json={"apiKey": "wrong"}))[:2] == (
        400,
        "authentication-invalid-user-credentials",
    )
    tokens = http.post("/auth/api-key", json={"apiKey": KEY}).json()
    assert tokens["token_type"] == "Bearer" and tokens["expires_in"] == 3600
    bearer = {"Authorization": "Bearer " + tokens["access_token"]}
    assert http.get("/videos", headers=bearer).status_code == 200
    again = http.post("/auth/refresh", json={"refreshToken": tokens["refresh_token"]})
    assert again.status_code == 200
    assert (
        http.post("/auth/refresh", json={"refreshToken": tokens["refresh_token"]}).status_code == 400
    )  # a refresh token is used once


def test_access_tokens_expire(emu: Emulator, http: httpx.Client, clock: Clock) -> None:
    access = http.post("/auth/api-key", json={"apiKey": KEY}).json()["access_token"]
    clock.now += 3601
    assert http.get("/videos", headers={"Authorization": f"Bearer {access}"}).status_code == 401


def test_upload_tokens(emu: Emulator, http: httpx.Client, clock: Clock) -> None:
    r = http.post("/upload-tokens", json={"ttl": 60}, headers=basic())
    assert r.status_code == 200
    minted = r.json()
    assert minted["token"].startswith("to") and minted["ttl"] == 60 and minted["expiresAt"]
    assert http.get(f"/upload-tokens/{minted['token']}", headers=basic()).status_code == 200
    assert post_chunk(http, b"x", "bytes 0-0/1", token=minted["token"]).status_code == 201
    assert len(http.get("/upload-tokens", headers=basic()).json()["data"]) == 2
    clock.now += 61
    assert post_chunk(http, b"x", "bytes 0-0/1", token=minted["token"]).status_code == 404
    assert http.get(f"/upload-tokens/{minted['token']}", headers=basic()).status_code == 404
    forever = http.post("/upload-tokens", headers=basic()).json()  # no body: ttl 0
    assert forever["ttl"] == 0 and forever["expiresAt"] is None
    assert http.delete(f"/upload-tokens/{forever['token']}", headers=basic()).status_code == 204
    assert post_chunk(http, b"x", "bytes 0-0/1", token=forever["token"]).status_code == 404
    assert problem(http.post("/upload-tokens", json={"ttl": -1}, headers=basic()))[1:] == (
        "invalid-attribute",
        "ttl",
    )


def test_videos_crud_status_and_source(emu: Emulator, http: httpx.Client) -> None:
    assert problem(http.post("/videos", json={}, headers=basic()))[1:] == ("attribute-required", "title")
    assert problem(http.post("/videos", json={"title": "t", "tags": "x"}, headers=basic()))[1:] == (
        "invalid-attribute",
        "tags",
    )
    meta = [{"key": "category", "value": "SOURCE"}, {"key": "syncd-uuid", "value": UUID}]
    r = http.post("/videos", json={"title": "Talk", "tags": ["a", "b"], "metadata": meta}, headers=basic())
    assert r.status_code == 201
    vid = r.json()["videoId"]
    empty = http.get(f"/videos/{vid}/status", headers=basic()).json()["ingest"]
    assert empty["receivedBytes"] == [] and empty["status"] == "uploading"
    found = http.get("/videos", params={"metadata[syncd-uuid]": UUID}, headers=basic()).json()
    assert [v["videoId"] for v in found["data"]] == [vid]
    assert http.get("/videos", params={"metadata[syncd-uuid]": "other"}, headers=basic()).json()["data"] == []
    assert http.patch(f"/videos/{vid}", json={"tags": ["c"]}, headers=basic()).json()["tags"] == ["c"]
    data = os.urandom(C + 7)
    # The API-key source endpoint: chunks in the byte form, the id in the path.
    src = f"/videos/{vid}/source"
    assert post_chunk(http, data[:C], f"bytes 0-{C - 1}/{C + 7}", path=src).status_code == 401
    assert (
        post_chunk(http, data[:C], f"bytes 0-{C - 1}/{C + 7}", path=src, headers=basic()).status_code == 201
    )
    status = http.get(f"/videos/{vid}/status", headers=basic()).json()["ingest"]
    assert status == {
        "status": "uploading",
        "filesize": C + 7,
        "receivedBytes": [{"from": 0, "to": C - 1, "total": C + 7}],
        "receivedParts": {"parts": [], "total": None},
    }
    post_chunk(http, data[C:], f"bytes {C}-{C + 6}/{C + 7}", path=src, headers=basic())
    status = http.get(f"/videos/{vid}/status", headers=basic()).json()["ingest"]
    assert status["status"] == "uploaded" and len(status["receivedBytes"]) == 2
    (row,) = stored(emu)
    assert (row["labels"], row["category"], row["uuid"]) == (["c"], "SOURCE", UUID)
    assert http.delete(f"/videos/{vid}", headers=basic()).status_code == 204
    assert http.get(f"/videos/{vid}", headers=basic()).status_code == 404
    assert problem(http.get("/videos/vi-nope/status", headers=basic())) == (
        404,
        "resource-not-found",
        "videoId",
    )


def test_part_form_status(emu: Emulator, http: httpx.Client) -> None:
    vid = post_chunk(http, os.urandom(C), "part 1/*").json()["videoId"]
    ingest = http.get(f"/videos/{vid}/status", headers=basic()).json()["ingest"]
    assert ingest["receivedParts"] == {"parts": [1], "total": None}
    assert ingest["receivedBytes"] == [] and ingest["filesize"] is None


def test_partial_uploads_survive_an_emulator_restart(tmp_path: Path) -> None:
    data = os.urandom(C + 5)
    with (
        Emulator(tmp_path / "d", apivideo_token=TOKEN, apivideo_key=KEY) as emu,
        httpx.Client(base_url=emu.url + "/apivideo") as http,
    ):
        vid = post_chunk(http, data[:C], f"bytes 0-{C - 1}/{C + 5}").json()["videoId"]
    with (
        Emulator(tmp_path / "d", apivideo_token=TOKEN, apivideo_key=KEY) as emu,
        httpx.Client(base_url=emu.url + "/apivideo") as http,
    ):
        assert service(emu).unfinished() == [f"{vid} (bytes, 1 chunk(s) held)"]
        r = post_chunk(http, data[C:], f"bytes {C}-{C + 4}/{C + 5}", video_id=vid)
        assert r.status_code == 201
        assert stored(emu)[0]["sha256"] == hashlib.sha256(data).hexdigest()
