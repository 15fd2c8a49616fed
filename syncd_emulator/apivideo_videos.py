"""api.video's video records, apart from the service (:mod:`syncd_emulator.apivideo`).

What a video's record holds (:func:`new_record`), the attributes a
``POST``/``PATCH /videos`` body may set (:func:`attributes`), the filters
of ``GET /videos`` (:func:`matches`), paged lists (:func:`page`), and how a
video (:func:`video_json`, with its asset URLs once complete) and its
ingest status (:func:`status_json`) are shown; the one-time tokens of a
private video's assets (:class:`PrivateTokens`). Which videos exist is the
service's.
"""

from __future__ import annotations

import hashlib
import math
import mimetypes
import secrets
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from syncd_emulator.apivideo_problems import bad
from syncd_emulator.messages import Request, parse_uint
from syncd_emulator.store import Session

UUID_KEY = "syncd-uuid"
ASSET_TYPES = {
    "player": "text/html",
    "hls/manifest.m3u8": "application/vnd.apple.mpegurl",
    "mp4/source.mp4": "video/mp4",
    "thumbnail.jpg": "image/jpeg",
}
PRIVATE_SESSION = 24 * 3600  # seconds a private token works after its first use
_CODEC_FIELDS = (
    "width",
    "height",
    "bitrate",
    "duration",
    "framerate",
    "samplerate",
    "videoCodec",
    "audioCodec",
    "aspectRatio",
)


def now_iso(clock: Callable[[], float]) -> str:
    """``clock()`` as api.video writes a time: ``2024-01-01T00:00:00+00:00``."""
    return datetime.fromtimestamp(clock(), UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")


def token_tag(token: str) -> str:
    """What a video records of the upload token that made it (never the token itself)."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def new_record(
    title: str,
    *,
    now: str,
    public: bool,
    tags: list[str] | None = None,
    metadata: list[dict[str, str]] | None = None,
    token: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The record of a new video, before any chunk (the session's ``info``)."""
    return {
        "title": title,
        "description": "",
        "public": public,
        "tags": tags or [],
        "metadata": metadata or [],
        "createdAt": now,
        "updatedAt": now,
        "token": token_tag(token) if token else None,
        "mode": None,
        "total": None,
        "filename": None,
        "filesize": None,
        "ranges": [],
        "part_sizes": {},
        **extra,
    }


def attributes(body: Any, *, creating: bool) -> dict[str, Any]:
    """The validated video attributes of a POST/PATCH body."""
    if not isinstance(body, dict):
        raise bad("invalid-attribute", "The body must be a JSON object", "")
    out: dict[str, Any] = {}
    title = body.get("title")
    if creating and (not isinstance(title, str) or not title.strip()):
        raise bad("attribute-required", "This attribute is required.", "title")
    if title is not None:
        if not isinstance(title, str) or not title.strip():
            raise bad("invalid-attribute", "This attribute must be a string.", "title")
        out["title"] = title
    if "description" in body:
        if not isinstance(body["description"], str):
            raise bad("invalid-attribute", "This attribute must be a string.", "description")
        out["description"] = body["description"]
    if "public" in body:
        if not isinstance(body["public"], bool):
            raise bad("invalid-attribute", "This attribute must be a boolean.", "public")
        out["public"] = body["public"]
    if "tags" in body:
        tags = body["tags"]
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise bad("invalid-attribute", "This attribute must be an array.", "tags")
        out["tags"] = list(dict.fromkeys(tags))
    if "metadata" in body:
        meta = body["metadata"]
        if not isinstance(meta, list) or not all(
            isinstance(m, dict)
            and isinstance(m.get("key"), str)
            and m["key"]
            and isinstance(m.get("value"), str)
            for m in meta
        ):
            raise bad(
                "invalid-attribute", "This attribute must be an array of {key, value} strings.", "metadata"
            )
        out["metadata"] = [{"key": m["key"], "value": m["value"]} for m in meta]
    return out


def matches(info: dict[str, Any], request: Request) -> bool:
    """Whether a video passes the filters of ``GET /videos``: ``metadata[KEY]=VALUE``,
    ``tags[]`` (all of them) and ``title`` (a substring)."""
    wanted_meta = {
        k[len("metadata[") : -1]: v[0]
        for k, v in request.query.items()
        if k.startswith("metadata[") and k.endswith("]")
    }
    meta = {m["key"]: m["value"] for m in info["metadata"]}
    if any(meta.get(k) != v for k, v in wanted_meta.items()):
        return False
    title = request.arg("title")
    return set(request.query.get("tags[]", [])) <= set(info["tags"]) and not (
        title and title not in info["title"]
    )


def page(request: Request, items: list[dict[str, Any]]) -> dict[str, Any]:
    """One page of ``items`` (``currentPage``, ``pageSize`` 1-100) with its pagination."""
    number, size = parse_uint(request.arg("currentPage") or "1"), parse_uint(request.arg("pageSize") or "25")
    if number is None or number < 1:
        raise bad("invalid-attribute", "currentPage must be an integer >= 1", "currentPage")
    if size is None or not 1 <= size <= 100:
        raise bad("invalid-attribute", "pageSize must be an integer from 1 to 100", "pageSize")
    pages = max(1, math.ceil(len(items) / size))
    shown = items[(number - 1) * size : number * size]
    return {
        "data": shown,
        "pagination": {
            "currentPage": number,
            "pageSize": size,
            "pagesTotal": pages,
            "itemsTotal": len(items),
            "currentPageItems": len(shown),
            "links": [],
        },
    }


def video_json(session: Session, base_url: str, private_token: str | None) -> dict[str, Any]:
    """The Video; once complete with its ``assets`` under ``base_url``, a private video's
    carrying ``private_token`` (in the player's query, in the path of the others)."""
    info, vid = session.info, "vi" + session.id
    video: dict[str, Any] = {
        "videoId": vid,
        "title": info["title"],
        "description": info["description"],
        "public": info["public"],
        "panoramic": False,
        "mp4Support": True,
        "tags": list(info["tags"]),
        "metadata": [dict(m) for m in info["metadata"]],
        "createdAt": info["createdAt"],
        "updatedAt": info["updatedAt"],
        "publishedAt": info["createdAt"],
        "discarded": False,
        "discardedAt": None,
        "deletesAt": None,
        "language": "en",
        "languageOrigin": None,
        "source": {"uri": f"/videos/{vid}/source", "type": "upload"},
    }
    if session.state == "completed":
        base = f"{base_url}/vod/{vid}"
        player, files = f"{base}/player", base
        if private_token is not None:
            player, files = f"{player}?token={private_token}", f"{base}/token/{private_token}"
        video["assets"] = {
            "hls": f"{files}/hls/manifest.m3u8",
            "player": player,
            "thumbnail": f"{files}/thumbnail.jpg",
            "mp4": f"{files}/mp4/source.mp4",
            "iframe": f'<iframe src="{player}" width="100%" height="100%" '
            'frameborder="0" scrolling="no" allowfullscreen=""></iframe>',
        }
    return video


def stored_fields(session: Session, size: int, sha256: str) -> dict[str, Any]:
    """The store's fields for a completed video: file name, tags, category, uuid and extras."""
    info, vid = session.info, "vi" + session.id
    meta = {m["key"]: m["value"] for m in info["metadata"]}
    filename = info["filename"]
    return {
        "size": size,
        "sha256": sha256,
        "filename": filename,
        "content_type": mimetypes.guess_type(filename)[0] or "application/octet-stream",
        "labels": info["tags"],
        "category": meta.get("category"),
        "uuid": meta.get(UUID_KEY),
        "extra": {
            "video_id": vid,
            "title": info["title"],
            "chunks": len(session.parts),
            "content_range": info["mode"] or "none",
        },
    }


def status_json(session: Session) -> dict[str, Any]:
    """``GET /videos/{id}/status``: what the video holds (``ingest``); never playable."""
    info, done = session.info, session.state == "completed"
    part_form = info["mode"] == "part"
    sizes = sorted(int(n) for n in info["part_sizes"])
    filesize = info["filesize"]
    if filesize is None and info["mode"] == "bytes":
        filesize = info["total"]
    # Byte ranges of part-form chunks are known for sure only once all parts are in.
    ranges = [] if part_form and not done else list(info["ranges"])
    ingest = {
        "status": "uploaded" if done else "uploading",
        "filesize": filesize,
        "receivedBytes": [
            {"from": a, "to": b, "total": filesize if filesize is not None else b + 1} for a, b in ranges
        ],
        "receivedParts": {"parts": sizes if part_form else [], "total": info["total"] if part_form else None},
    }
    metadata = dict.fromkeys(_CODEC_FIELDS)
    return {"ingest": ingest, "encoding": {"playable": False, "qualities": [], "metadata": metadata}}


class PrivateTokens:
    """The private tokens of private videos' assets: a new one with every answer that
    shows the assets; each opens its own video's assets for ``PRIVATE_SESSION`` seconds
    from its first use (api.video: one-time tokens, then a 24-hour session)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens: dict[str, tuple[str, float | None]] = {}  # token -> (video, first use)

    def mint(self, video_id: str) -> str:
        token = secrets.token_hex(16)
        with self._lock:
            self._tokens[token] = (video_id, None)
        return token

    def admit(self, token: str | None, video_id: str) -> bool:
        """Whether ``token`` opens an asset of ``video_id`` now (its first use starts its window)."""
        now = self._clock()
        with self._lock:
            owner, first = self._tokens.get(token or "", ("", None))
            ok = owner == video_id and (first is None or now - first < PRIVATE_SESSION)
            if ok and first is None:
                self._tokens[token or ""] = (video_id, now)
        return ok
