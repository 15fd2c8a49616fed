"""The api.video emulation driven by api.video's own published client, api.video==1.4.7.

An independent check of the emulator (protocols.md §4.9): if the vendor's
client cannot upload to it, the emulator is wrong, not the client. Every
upload is checked byte for byte against what the emulator stored.

Where the client disagrees with api.video's documentation, the emulator
accepts what the client does and this file says so: 1.4.7's
``upload_with_upload_token`` sends ``Content-Range: part N/M`` chunks and
never the ``videoId`` the documentation requires from the second chunk on
(docs/destinations/apivideo.md, "The vendor client").
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

apivideo = pytest.importorskip("apivideo")

from apivideo.api.upload_tokens_api import UploadTokensApi  # noqa: E402
from apivideo.api.videos_api import VideosApi  # noqa: E402
from apivideo.api_client import ApiClient  # noqa: E402
from apivideo.configuration import Configuration  # noqa: E402
from apivideo.model.metadata import Metadata  # noqa: E402
from apivideo.model.token_creation_payload import TokenCreationPayload  # noqa: E402
from apivideo.model.video_creation_payload import VideoCreationPayload  # noqa: E402
from apivideo.model.video_update_payload import VideoUpdatePayload  # noqa: E402

from syncd_emulator import Emulator  # noqa: E402

TOKEN = "to-vendor-check-token"
KEY = "vendor-check-api-key"
MIB = 1024 * 1024

pytestmark = pytest.mark.timeout(60)


def test_pinned_version() -> None:
    # The quirks below are 1.4.7's; another version needs this file re-checked.
    assert apivideo.__version__ == "1.4.7"


@pytest.fixture
def emu(tmp_path: Path) -> Iterator[Emulator]:
    with Emulator(tmp_path / "data", apivideo_token=TOKEN, apivideo_key=KEY) as emulator:
        yield emulator


def configuration(emu: Emulator) -> Configuration:
    return Configuration(host=emu.url + "/apivideo", chunk_size=5 * MIB)


@pytest.fixture
def videos(emu: Emulator) -> Iterator[VideosApi]:
    with ApiClient(configuration(emu)) as client:
        yield VideosApi(client)


def stored_bytes(emu: Emulator, video_id: str) -> bytes:
    (row,) = [u for u in emu.uploads() if u["service"] == "apivideo" and u["key"] == video_id]
    data = Path(row["path"]).read_bytes()
    assert row["sha256"] == hashlib.sha256(data).hexdigest() and row["size"] == len(data)
    return data


def chunk_log(emu: Emulator) -> list[tuple[int, int]]:
    return [
        (e["status"], e["bytes"])
        for e in emu.requests()
        if e["op"] in ("apivideo.upload", "apivideo.upload_source")
    ]


def file_of(tmp_path: Path, size: int, name: str = "clip.mp4") -> tuple[Path, bytes]:
    data = os.urandom(size)
    path = tmp_path / name
    path.write_bytes(data)
    return path, data


def test_token_upload_of_a_small_file(emu: Emulator, videos: VideosApi, tmp_path: Path) -> None:
    path, data = file_of(tmp_path, 12_345)
    with open(path, "rb") as f:
        video = videos.upload_with_upload_token(TOKEN, f)
    assert video.video_id.startswith("vi") and video.assets.player
    assert stored_bytes(emu, video.video_id) == data
    assert chunk_log(emu) == [(201, 12_345)]  # one "part 1/1" request


def test_token_upload_in_chunks(emu: Emulator, videos: VideosApi, tmp_path: Path) -> None:
    """Three ``part N/3`` chunks, none with videoId (the 1.4.7 quirk the emulator accepts)."""
    size = 11 * MIB + 17
    path, data = file_of(tmp_path, size)
    with open(path, "rb") as f:
        video = videos.upload_with_upload_token(TOKEN, f)
    assert stored_bytes(emu, video.video_id) == data
    assert chunk_log(emu) == [(201, 5 * MIB), (201, 5 * MIB), (201, MIB + 17)]


def test_the_client_sends_nothing_for_an_empty_file(emu: Emulator, videos: VideosApi, tmp_path: Path) -> None:
    path, _ = file_of(tmp_path, 0)
    with open(path, "rb") as f:
        assert videos.upload_with_upload_token(TOKEN, f) is None
    assert emu.requests() == []


def test_progressive_session(emu: Emulator, videos: VideosApi) -> None:
    """``part N/*`` then ``part N/N``; this session does send videoId from part 2 on."""
    parts = [os.urandom(5 * MIB), os.urandom(5 * MIB + 3), os.urandom(999)]
    session = videos.create_upload_with_upload_token_progressive_session(TOKEN)
    ids = []
    for i, data in enumerate(parts):
        f = io.BytesIO(data)
        f.name = f"part{i}.mp4"
        last = i == len(parts) - 1
        result = session.uploadLastPart(f) if last else session.uploadPart(f)
        ids.append(result.video_id)
    assert len(set(ids)) == 1
    assert stored_bytes(emu, ids[0]) == b"".join(parts)


def test_authenticated_client(emu: Emulator, tmp_path: Path) -> None:
    """AuthenticatedApiClient: /auth/api-key, upload tokens, videos, /source, status, update."""
    client = apivideo.AuthenticatedApiClient(KEY, configuration=configuration(emu))
    client.configuration.host = emu.url + "/apivideo"  # its __init__ forces production
    with client:
        tokens = UploadTokensApi(client)
        minted = tokens.create_token(TokenCreationPayload(ttl=120))
        assert minted.token.startswith("to") and minted.ttl == 120
        assert tokens.get_token(minted.token).token == minted.token

        videos = VideosApi(client)
        created = videos.create(
            VideoCreationPayload(
                title="Keynote", tags=["talks"], metadata=[Metadata(key="category", value="SOURCE")]
            )
        )
        path, data = file_of(tmp_path, 6 * MIB + 1)
        with open(path, "rb") as f:  # POST /videos/{id}/source in part N/M chunks
            uploaded = videos.upload(created.video_id, f)
        assert uploaded.video_id == created.video_id
        assert stored_bytes(emu, created.video_id) == data
        status = videos.get_status(created.video_id)
        assert status.ingest.status == "uploaded" and status.ingest.filesize == len(data)
        assert status.ingest.received_parts.parts == [1, 2]
        updated = videos.update(created.video_id, VideoUpdatePayload(tags=["talks", "2026"]))
        assert updated.tags == ["talks", "2026"]
        assert videos.get(created.video_id).title == "Keynote"

        client.refresh_token()  # POST /auth/refresh
        tokens.delete_token(minted.token)
        with pytest.raises(apivideo.ApiException) as info:
            tokens.get_token(minted.token)
        assert info.value.status == 404
    row: dict[str, Any] = [u for u in emu.uploads() if u["key"] == created.video_id][0]
    assert row["labels"] == ["talks"] and row["category"] == "SOURCE"


def test_minted_token_uploads_into_an_existing_video(
    emu: Emulator, videos: VideosApi, tmp_path: Path
) -> None:
    """The delegated flow syncd uses with api_key: the video first, then the token upload
    with its videoId (api.video's own uploaders offer it: protocols.md §4.3)."""
    import httpx

    r = httpx.post(emu.url + "/apivideo/videos", json={"title": "pre-made"}, auth=(KEY, ""))
    video_id = r.json()["videoId"]
    session = videos.create_upload_with_upload_token_progressive_session(TOKEN, video_id)
    f = io.BytesIO(b"tiny video")
    f.name = "tiny.mp4"
    assert session.uploadLastPart(f).video_id == video_id
    assert stored_bytes(emu, video_id) == b"tiny video"


def test_vendor_errors_are_problem_json(emu: Emulator, videos: VideosApi, tmp_path: Path) -> None:
    path, _ = file_of(tmp_path, 10)
    with open(path, "rb") as f, pytest.raises(apivideo.ApiException) as info:
        videos.upload_with_upload_token("to-not-a-token", f)
    assert info.value.status == 404
    assert "resource-not-found" in info.value.body
