"""api.video's Content-Range chunks as a :class:`~._chunked.ChunkedService`.

:class:`VideoChunks` opens a video (with ``api_key``: ``POST /videos`` with
its title, tags and metadata, or an earlier attempt's video found by the
row's uuid; with a token alone the first chunk makes it), sends each chunk
by the route the credentials allow, reads "already sent" and "already
uploaded" answers as confirmations, and builds the receipt (asset URLs
without credentials, a private video's sealed by :mod:`._receipts`). The
protocol and the resume state are described in :mod:`syncd.destinations.apivideo`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from syncd.destinations import _chunked, _receipts
from syncd.destinations._apivideo_api import ApiVideoApi, problem
from syncd.destinations._chunked import Opened, Part, PartRules, SessionLost, Spec
from syncd.destinations.base import Receipt, Source, UploadItem
from syncd.destinations.options import ApiVideoOptions
from syncd.errors import ExpiredError, FatalError, PermanentError
from syncd.http import error_text, html_page, json_body, require

log = logging.getLogger("syncd.destinations.apivideo")  # the destination's lines keep one logger name

MiB = 1024 * 1024
UUID_KEY = "syncd-uuid"
ALREADY_UPLOADED = "video-source-already-uploaded"
# A chunk the server holds already, sent again (its 201 was lost): documented errors.
ALREADY_SENT = frozenset(
    {"video-content-range-by-bytes-range-overlap", "video-content-range-by-part-part-already-sent"}
)
RECEIPT_SEAL = "apivideo receipt"
ASSETS = ("player", "hls", "mp4", "thumbnail")
COMPLETE = ("uploaded", "ingesting", "ingested")  # ingest states with the whole source


def video_metadata(item: UploadItem) -> dict[str, Any]:
    """Tags and metadata for the video: labels, category, and the ledger row's uuid."""
    meta = [{"key": "category", "value": item.category}] if item.category is not None else []
    meta.append({"key": UUID_KEY, "value": item.uuid})
    return {"tags": list(item.labels), "metadata": meta}


def held_parts(ingest: dict[str, Any], size: int, part_size: int) -> set[int]:
    """Numbers of the parts the server says it holds: ``receivedParts.parts`` (part
    chunks), and the parts wholly inside the ``receivedBytes`` ranges (byte chunks)."""
    count = _chunked.part_count(size, part_size)
    received = ingest.get("receivedParts")
    numbers = received.get("parts") if isinstance(received, dict) else None
    numbers = numbers if isinstance(numbers, list) else []  # a server's garbage: none held
    held = {n for n in numbers if type(n) is int and 1 <= n <= count}
    ranges = []
    received_bytes = ingest.get("receivedBytes")
    for r in received_bytes if isinstance(received_bytes, list) else []:
        if isinstance(r, dict) and isinstance(r.get("from"), int) and isinstance(r.get("to"), int):
            ranges.append((r["from"], r["to"]))
    for n in range(1, count + 1):
        first, last = (n - 1) * part_size, min(n * part_size, size) - 1
        if any(a <= first and last <= b for a, b in ranges):
            held.add(n)
    return held


class VideoChunks:
    """api.video's Content-Range chunks as a :class:`~._chunked.ChunkedService`."""

    kind = "apivideo-chunks"
    session_fields: Mapping[str, Spec] = {
        "via": ("token", "api"),
        "filename": str,
        "range": ("bytes", "part", None),
        "video_id": (str, None),
    }

    def __init__(self, api: ApiVideoApi, options: ApiVideoOptions) -> None:
        self.api = api
        # 5 MiB .. 128 MiB: what api.video's own clients allow (protocols.md §4.3).
        self.rules = PartRules(
            part_size=options.chunk_size,
            min_size=5 * MiB,
            max_size=128 * MiB,
            max_parts=100_000,
            empty_parts=1,
        )
        # The receipt's private URLs are sealed with the steadier secret: the API key
        # (an upload token may have a ttl).
        secret = options.api_key or options.upload_token
        assert secret is not None  # ApiVideoOptions requires one of them
        self.seal_secret = secret.reveal()

    def open(self, item: UploadItem, source: Source, part_size: int) -> Opened:
        if not self.api.has_key:
            # The first chunk creates the video.
            return Opened({"video_id": None, "via": "token", "filename": item.name})
        found = self._find(item.uuid)
        if found is not None:
            return Opened({**found, "filename": item.name})
        what = "apivideo: create video"
        video = self.api.call(
            "POST", "/videos", what=what, ok=(201, 202), body={"title": item.name, **video_metadata(item)}
        )
        return Opened(
            {
                "video_id": require(video, "videoId", what=what),
                "via": "api",
                "filename": item.name,
                "range": "part",
            }
        )

    def _find(self, uuid: str) -> dict[str, Any] | None:
        """A session for a video an earlier attempt made for this row, when it can be reused.

        Reusable: an empty video (its checkpoint was lost before any chunk)
        or a complete one (nothing left to send). A partly uploaded one is
        deleted: its chunk layout is unknown, so it is cheaper to start over.
        """
        what = "apivideo: find video by uuid"
        data = self.api.call(
            "GET", "/videos", what=what, params={f"metadata[{UUID_KEY}]": uuid, "pageSize": 25}
        )
        videos = data.get("data") if isinstance(data, dict) else None
        for video in videos if isinstance(videos, list) else []:
            meta = video.get("metadata") if isinstance(video, dict) else None
            if not isinstance(meta, list) or {"key": UUID_KEY, "value": uuid} not in meta:
                continue  # a server that ignored the filter
            video_id = video.get("videoId")
            ingest = self.api.status(video_id) if isinstance(video_id, str) else None
            if ingest is None:
                continue
            if ingest.get("status") in COMPLETE:
                log.info("apivideo: video %s already holds this file; not sending it again", video_id)
                return {"video_id": video_id, "via": "api", "range": "part", "_complete": True}
            parts = ingest.get("receivedParts")
            if not ingest.get("receivedBytes") and not (
                parts.get("parts") if isinstance(parts, dict) else parts
            ):
                return {"video_id": video_id, "via": "api", "range": "part"}
            log.info("apivideo: deleting the partial video %s of an earlier attempt", video_id)
            self.abort({"video_id": video_id})
        return None

    def send_part(self, session: dict[str, Any], part: Part) -> str:
        video_id = session.get("video_id")
        if session.get("_complete"):
            return str(video_id)  # the server holds the whole file already
        what = f"apivideo: chunk {part.number}"
        # The documented route for an existing video whenever the API key allows it;
        # the delegated /upload?token= route only without one.
        by_source = self.api.has_key and video_id is not None
        if by_source:
            assert video_id is not None
            response = self.api.post_source(
                video_id, session["filename"], part, by_part=session.get("range") == "part"
            )
        else:
            response = self.api.post_chunk(video_id, session["filename"], part)
        status = response.status_code
        if status in (400, 403, 404) and not html_page(response):  # a proxy's page: check()'s
            slug, name = problem(response)
            if status == 400 and slug == ALREADY_UPLOADED and video_id:
                log.info("apivideo: video %s already has its whole source; done", video_id)
                session["_complete"] = True
                return str(video_id)
            if status == 400 and slug in ALREADY_SENT and video_id:
                # api.video holds this chunk: an earlier send whose 201 was lost.
                log.info(
                    "apivideo: video %s already holds chunk %d (%s); going on", video_id, part.number, slug
                )
                return str(video_id)
            detail = error_text(response)
            if status == 404 and (by_source or name == "videoId"):
                raise SessionLost(f"{what}: video {video_id} no longer exists", status=404)
            if status == 404:  # the only other thing /upload can miss is the token
                raise FatalError(
                    f"{what}: HTTP 404: api.video does not know the upload token "
                    f"(unknown, deleted or expired): {detail}",
                    status=404,
                )
            if status == 403:  # documented on neither route: retried at once, bounded
                raise ExpiredError(f"{what}: HTTP 403: {detail}", status=403)
        self.api.check(response, what=what, ok=(200, 201))
        video = json_body(response, what=what)
        returned = require(video, "videoId", what=what)
        if video_id is None:
            session["video_id"] = video_id = returned  # the first chunk made the video
        elif returned != video_id:
            raise PermanentError(f"{what}: the server answered for video {returned}, not {video_id}")
        if part.last:
            session["_video"] = video
        return str(video_id)

    def finish(self, session: dict[str, Any], parts: list[tuple[int, str]]) -> Receipt:
        video_id = session["video_id"]
        video = session.get("_video")
        if not isinstance(video, dict) and self.api.has_key:
            video = self.api.call("GET", self.api.video_path(video_id), what="apivideo: get video")
        return video_receipt(video_id, video if isinstance(video, dict) else {}, len(parts), self.seal_secret)

    def abort(self, session: dict[str, Any]) -> None:
        video_id = session.get("video_id")
        if not video_id or not self.api.has_key:
            return None  # an upload token cannot delete anything
        ingest = self.api.status(video_id)
        if ingest is None or ingest.get("status") in COMPLETE:
            return None  # gone already, or finished: a complete video is never deleted here
        with contextlib.suppress(SessionLost):  # gone since
            self.api.call(
                "DELETE",
                self.api.video_path(video_id),
                what="apivideo: delete video",
                ok=(200, 202, 204),
                session=True,
            )


def video_receipt(video_id: str, video: dict[str, Any], chunks: int, secret: str) -> Receipt:
    """The receipt: the video id, and its asset URLs without credentials; a private
    video's URLs (with their private token) also whole and sealed (:mod:`._receipts`)."""
    raw = video.get("assets")
    assets: dict[str, Any] = raw if isinstance(raw, dict) else {}
    urls = {k: v for k, v in assets.items() if k in ASSETS and isinstance(v, str) and v}
    details: dict[str, Any] = {
        "video_id": video_id,
        "chunks": chunks,
        **_receipts.seal(secret, RECEIPT_SEAL, video_id, urls),
    }
    if isinstance(video.get("title"), str):
        details["title"] = video["title"]
    if video.get("public") is False:
        details["public"] = False
    return Receipt(remote_id=video_id, url=details.get("player"), details=details)


__all__ = [
    "COMPLETE",
    "RECEIPT_SEAL",
    "UUID_KEY",
    "VideoChunks",
    "held_parts",
    "video_metadata",
    "video_receipt",
]
