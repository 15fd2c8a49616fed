"""Requests to api.video: the upload token for ``/upload``, the API key for the rest.

:class:`ApiVideoApi` is the shared API client (:mod:`._api`) with api.video's
Basic auth (``base64(KEY:)``) and its ``X-RateLimit-Retry-After`` header; a
chunk goes out as a streamed form with its ``Content-Range`` (byte ranges to
``/upload?token=``, ``part n/M`` or byte ranges to ``/videos/{id}/source``);
:func:`problem` reads the slug of a problem+json error.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from syncd import redact
from syncd.destinations._api import DELAY, Api, RateLimit, basic
from syncd.destinations._chunked import Part, SessionLost
from syncd.destinations.options import ApiVideoOptions

RATE_LIMIT = RateLimit(headers=(("X-RateLimit-Retry-After", DELAY),))  # after Retry-After


def problem(response: httpx.Response) -> tuple[str, str]:
    """(slug, name) of a problem+json error body; empty strings when there is none."""
    try:
        data = response.json()
    except ValueError:
        return "", ""
    if not isinstance(data, dict):
        return "", ""
    slug = str(data.get("type") or "").rstrip("/").rpartition("/")[2]
    return slug, str(data.get("name") or "")


class ApiVideoApi(Api):
    """Requests to api.video: the upload token for /upload, the API key for the rest."""

    def __init__(self, options: ApiVideoOptions, client: httpx.Client) -> None:
        key = options.api_key
        super().__init__(
            "apivideo",
            options.base_url,
            client,
            auth=None if key is None else basic(key.reveal(), ""),
            rate_limit=RATE_LIMIT,
            lost=(404,),
        )
        self.token = None if options.upload_token is None else options.upload_token.reveal()
        if self.token is not None:
            redact.register(self.token)

    @property
    def has_key(self) -> bool:
        return self.auth is not None

    def request(self, method: str, path: str, *, what: str, **kwargs: Any) -> httpx.Response:
        assert self.has_key, "API calls need api_key"
        return super().request(method, path, what=what, **kwargs)

    def video_path(self, video_id: str, suffix: str = "") -> str:
        return f"/videos/{quote(video_id, safe='')}{suffix}"

    def status(self, video_id: str) -> dict[str, Any] | None:
        """``GET /videos/{id}/status`` -> its ``ingest`` object; None if the video is gone."""
        try:
            data = self.call(
                "GET", self.video_path(video_id, "/status"), what="apivideo: video status", session=True
            )
        except SessionLost:
            return None
        ingest = data.get("ingest") if isinstance(data, dict) else None
        return ingest if isinstance(ingest, dict) else {}

    def post_chunk(self, video_id: str | None, filename: str, part: Part) -> httpx.Response:
        """Send one chunk to ``POST /upload?token=…`` (byte ranges)."""
        assert self.token is not None, "the /upload route needs upload_token"
        return self.send(
            "POST",
            self.base + "/upload",
            what=f"apivideo: chunk {part.number}",
            params={"token": self.token},
            **_chunk(video_id, filename, part),
        )

    def post_source(self, video_id: str, filename: str, part: Part, by_part: bool) -> httpx.Response:
        """Send one chunk to ``POST /videos/{id}/source`` (API key): ``part n/M`` chunks, or
        byte ranges for a video that a token upload started with them."""
        assert self.auth is not None, "/videos/{id}/source needs api_key"
        return self.send(
            "POST",
            self.base + self.video_path(video_id, "/source"),
            what=f"apivideo: chunk {part.number}",
            **_chunk(None, filename, part, by_part=by_part, auth=self.auth),
        )


def _chunk(
    video_id: str | None,
    filename: str,
    part: Part,
    *,
    by_part: bool = False,
    auth: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The request of one chunk: a streamed form (httpx ``files=``), ``videoId`` first (as
    api.video's uploader does) when given, then ``file``; the chunk's ``Content-Range``."""
    content_range = (
        f"part {part.number}/{part.count}"
        if by_part
        else f"bytes {part.offset}-{part.end - 1}/{part.file_size}"
    )
    return {
        "headers": {**(auth or {}), "Content-Range": content_range, "Accept": "application/json"},
        "data": {"videoId": video_id} if video_id else {},
        "files": {"file": (filename, part.file(), "application/octet-stream")},
    }


__all__ = ["RATE_LIMIT", "ApiVideoApi", "problem"]
