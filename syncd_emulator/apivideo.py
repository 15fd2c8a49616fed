"""api.video delegated and chunked upload (protocols.md §4), emulated strictly, under ``/apivideo``.

Credentials
    ``POST /upload?token=T`` takes only the upload token: the emulator's
    ``apivideo_token`` or one minted with ``POST /upload-tokens`` (minted
    tokens live in memory and honour their ``ttl``). An unknown, deleted or
    expired token is 404 ``resource-not-found`` with ``name: token``.
    Everything else needs the API key: ``Authorization: Basic
    base64(KEY:)`` (empty password) or ``Bearer <access_token>`` from
    ``POST /auth/api-key`` (``/auth/refresh`` renews it); otherwise 401.

Uploads (``POST /upload`` and ``POST /videos/{id}/source``)
    multipart/form-data with exactly one ``file`` (none:
    ``uploaded-file-no-file``, several: ``uploaded-file-multiple-files``, an
    empty one: ``uploaded-file-no-file`` too) and, for ``/upload``, an
    optional ``videoId``. ``Content-Range`` is ``bytes FROM-TO/TOTAL``
    (inclusive; TOTAL may be ``*``) or ``part N/M`` / ``part N/*``; anything
    else is ``video-content-range-malformed``, and so is a range whose length
    differs from the file's. One video uses one grammar. Every chunk but the
    last must be at least 5 MiB. A byte chunk must start exactly where the
    held bytes end. Parts may come in any order. A chunk sent again (its 201
    was lost, say) is refused as api.video documents it, and changes
    nothing: a byte range that overlaps held bytes is 400
    ``video-content-range-by-bytes-range-overlap`` ("You send a chunk that
    you've already sent"), a part number already received is 400
    ``video-content-range-by-part-part-already-sent``; the body's ``detail``
    says what is held. The chunk that completes the source returns the full
    Video with ``assets``; other chunks return the Video without them. A
    video whose source is complete answers ``video-source-already-uploaded``
    to any further bytes. Without ``Content-Range`` the file is the whole
    source.

    ``videoId`` is required on every ``/upload`` chunk but the first. The
    one exception is api.video-python 1.4.7's ``upload_with_upload_token``,
    which sends ``part N/M`` chunks without it (protocols.md §4.3): a
    ``part`` chunk with N > 1 and no ``videoId`` goes to the one unfinished
    part-form upload opened with the same token (none or several: 400).

Videos (API key)
    ``POST /videos`` (201), ``GET /videos`` (filters ``metadata[KEY]=VALUE``,
    ``tags[]``, ``title``; paged), ``GET|PATCH|DELETE /videos/{id}``,
    ``GET /videos/{id}/status`` (``ingest.receivedBytes`` lists every byte
    chunk received; part-form uploads list ``receivedParts``, and their byte
    ranges once complete), ``POST|GET /upload-tokens``, ``GET|DELETE
    /upload-tokens/{t}``.

Private videos
    ``public: false`` (``POST``/``PATCH /videos``;
    ``Emulator(apivideo_private_videos=True)``, a knob for tests, makes every
    new video private). Each answer that
    shows a private video's ``assets`` mints a new private token, as
    api.video does: the player URL carries it as ``?token=``, the others in
    the path (``/vod/{id}/token/{t}/hls/manifest.m3u8``, ``.../mp4/source.mp4``,
    ``.../thumbnail.jpg``). ``GET`` on an asset URL serves it (the mp4 is the
    stored bytes); a private video's asset needs a token minted for it, which
    works for 24 hours from its first use (api.video: one-time tokens, then a
    24-hour session in that page; the emulator has no page, so the window is
    per token), else 403 ``forbidden``.

Every response, errors and injected faults included, carries
``X-RateLimit-Limit``, ``X-RateLimit-Remaining`` and
``X-RateLimit-Retry-After`` (not enforced; an injected 429's
``Retry-After`` is mirrored into ``X-RateLimit-Retry-After``). Errors are
problem+json: ``{"type": "https://docs.api.video/reference/<slug>",
"title", "name", "status"}``.

A completed video is stored as object ``(apivideo, <videoId>)`` with its
file name, ``labels`` = tags, ``category`` = the metadata entry
``category``, ``uuid`` = the metadata entry ``syncd-uuid``, and extras
``video_id``, ``title``, ``chunks``, ``content_range``. Tags and metadata
changed after completion are visible in ``GET /videos/{id}`` but not in the
listing (the store has no metadata update). Video records and received
chunks live under ``sessions/apivideo/<session>/`` and survive a restart.

The request log's ``bytes`` for an upload is the size of its ``file`` field
(the chunk), not of the whole multipart body, so chunk sizes read directly.

The upload form, the ``Content-Range`` grammar and how a chunk is applied to
a video live in :mod:`syncd_emulator.apivideo_chunks`.
"""

from __future__ import annotations

import base64
import binascii
import copy
import email.utils
import hashlib
import hmac
import math
import mimetypes
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from syncd_emulator.apivideo_chunks import (
    Range,
    apply_chunk,
    bad,
    check_header,
    check_min_size,
    parse_form,
    parse_range,
    problem,
)
from syncd_emulator.forms import FilePart
from syncd_emulator.messages import ApiError, Request, Response, parse_uint
from syncd_emulator.service import Route, Service, ServiceContext
from syncd_emulator.store import Session

MIB = 1024 * 1024
MAX_BODY = 200 * MIB + 64 * 1024  # api.video's 200 MiB request cap, plus room for the form
RATE_LIMIT = 600  # per minute, reported only
TOKEN_TTL_MAX = 2_147_483_647
ACCESS_TTL = 3600
DOCS = "https://docs.api.video/reference/"
UUID_KEY = "syncd-uuid"
PRIVATE_SESSION = 24 * 3600  # seconds a private token works after its first use
ASSET_TYPES = {"player": "text/html", "hls/manifest.m3u8": "application/vnd.apple.mpegurl",
               "mp4/source.mp4": "video/mp4", "thumbnail.jpg": "image/jpeg"}
_SLUGS = {400: "bad-request", 401: "authentication-invalid-user-credentials",
          403: "forbidden", 404: "resource-not-found", 405: "method-not-allowed",
          413: "request-too-large", 429: "too-many-requests"}


def _now_iso(clock: Callable[[], float]) -> str:
    return datetime.fromtimestamp(clock(), UTC).strftime("%Y-%m-%dT%H:%M:%S+00:00")


class _Headers(dict[str, str]):
    """Response headers that keep ``X-RateLimit-Retry-After`` in step with a
    ``Retry-After`` the dispatcher adds to an injected 429 after ``error()``."""

    def __setitem__(self, key: str, value: str) -> None:
        super().__setitem__(key, value)
        if key.lower() == "retry-after":
            try:
                seconds = float(value)
            except ValueError:
                try:
                    seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
                except (TypeError, ValueError, IndexError):
                    seconds = 1.0
            super().__setitem__("X-RateLimit-Retry-After", str(max(0, math.ceil(seconds))))


# -- the service ------------------------------------------------------------------------


@dataclass
class _Token:
    token: str
    ttl: int
    created: float
    expires: float | None


class ApiVideoService(Service):
    """api.video upload endpoints; see the module docstring for the rules."""

    name = "apivideo"
    prefix = "/apivideo"

    def __init__(self, context: ServiceContext) -> None:
        super().__init__(context)
        started = self.settings.clock()
        self._tokens = {self.settings.apivideo_token:
                        _Token(self.settings.apivideo_token, 0, started, None)}
        self._access: dict[str, float] = {}  # access token -> expiry
        self._refresh: dict[str, str] = {}  # refresh token -> api key it came from
        self._window = (0, 0)  # (minute, requests counted in it)
        self._videos: list[str] = []  # session ids of live videos, oldest first
        self.private_videos = self.settings.apivideo_private_videos  # new videos: public: false
        self._private: dict[str, tuple[str, float | None]] = {}  # token -> (video, first use)
        loaded = [s for s in map(self.sessions.get, self._session_dirs()) if s is not None]
        for session in sorted(loaded, key=lambda s: s.created_at):
            if session.state != "aborted":
                self._videos.append(session.id)

    def _session_dirs(self) -> list[str]:
        return [p.name for p in self.sessions.root.iterdir() if p.is_dir()]

    def routes(self) -> list[Route]:
        table = [
            ("POST", "/upload", "apivideo.upload", self.upload),
            ("POST", "/auth/api-key", "apivideo.auth", self.auth),
            ("POST", "/auth/refresh", "apivideo.refresh", self.refresh),
            ("POST", "/upload-tokens", "apivideo.create_token", self.create_token),
            ("GET", "/upload-tokens", "apivideo.list_tokens", self.list_tokens),
            ("GET", "/upload-tokens/{t}", "apivideo.get_token", self.get_token),
            ("DELETE", "/upload-tokens/{t}", "apivideo.delete_token", self.delete_token),
            ("POST", "/videos", "apivideo.create_video", self.create_video),
            ("GET", "/videos", "apivideo.list_videos", self.list_videos),
            ("GET", "/videos/{videoId}", "apivideo.get_video", self.get_video),
            ("PATCH", "/videos/{videoId}", "apivideo.update_video", self.update_video),
            ("DELETE", "/videos/{videoId}", "apivideo.delete_video", self.delete_video),
            ("GET", "/videos/{videoId}/status", "apivideo.status", self.status),
            ("POST", "/videos/{videoId}/source", "apivideo.upload_source", self.upload_source),
            ("GET", "/vod/{videoId}/{asset:path}", "apivideo.asset", self.asset),
        ]
        return [Route(m, p, op, self._stamped(h)) for m, p, op, h in table]

    # -- rate-limit headers and errors ------------------------------------------------

    def _rate_headers(self) -> _Headers:
        now = self.settings.clock()
        minute = int(now // 60)
        with self._lock:
            count = self._window[1] + 1 if self._window[0] == minute else 1
            self._window = (minute, count)
        return _Headers({"X-RateLimit-Limit": str(RATE_LIMIT),
                         "X-RateLimit-Remaining": str(max(0, RATE_LIMIT - count)),
                         "X-RateLimit-Retry-After": str(max(1, math.ceil((minute + 1) * 60 - now)))})

    def _stamped(self, handler: Callable[[Request], Response]) -> Callable[[Request], Response]:
        def wrapped(request: Request) -> Response:
            response = handler(request)
            headers = self._rate_headers()
            headers.update(response.headers)
            response.headers = headers
            return response
        return wrapped

    def error(self, op: str, status: int, message: str, code: str = "") -> Response:
        code, _, detail = code.partition("\x1f")
        if code.startswith("av:"):
            _, slug, name = code.split(":", 2)
        else:  # the core's errors (no route, bad JSON) and injected faults
            slug = _SLUGS.get(status, "internal-error" if status >= 500 else "bad-request")
            name = ""
            message = "Too many requests." if status == 429 else message
        body: dict[str, Any] = {"type": DOCS + slug, "title": message, "status": status}
        if name or status in (400, 404):
            body["name"] = name
        if detail:
            body["detail"] = detail
        headers = self._rate_headers()
        headers["Content-Type"] = "application/problem+json"
        if status == 429:
            headers["X-RateLimit-Remaining"] = "0"
        return Response(status, Response.json(body).body, headers)

    # -- credentials ----------------------------------------------------------------

    def _token(self, value: str | None) -> _Token:
        with self._lock:
            token = self._tokens.get(value or "")
            if token is not None and token.expires is not None \
                    and self.settings.clock() >= token.expires:
                del self._tokens[token.token]
                token = None
        if token is None:
            raise problem(404, "resource-not-found", "The upload token is unknown or expired.",
                          "token")
        return token

    def _require_key(self, request: Request) -> None:
        header = request.headers.get("Authorization") or ""
        scheme, _, value = header.partition(" ")
        key = self.settings.apivideo_key.encode()
        ok = False
        if scheme.lower() == "basic":
            try:
                user, sep, password = base64.b64decode(value.strip(), validate=True).partition(b":")
            except (binascii.Error, ValueError):
                user, sep, password = b"", b"", b"x"
            ok = bool(sep) and not password and hmac.compare_digest(user, key)
        elif scheme.lower() == "bearer":
            with self._lock:
                expiry = self._access.get(value.strip())
            ok = expiry is not None and self.settings.clock() < expiry
        if not ok:
            raise problem(401, "authentication-invalid-user-credentials",
                          "Unauthorized: send Basic base64(apiKey:) or a Bearer access token.")

    def _issue(self) -> Response:
        access, refresh = secrets.token_urlsafe(32), "def" + secrets.token_hex(32)
        with self._lock:
            now = self.settings.clock()
            self._access = {k: v for k, v in self._access.items() if v > now}
            self._access[access] = now + ACCESS_TTL
            self._refresh[refresh] = self.settings.apivideo_key
        return Response.json({"token_type": "Bearer", "expires_in": ACCESS_TTL,
                              "access_token": access, "refresh_token": refresh})

    def auth(self, request: Request) -> Response:
        body = request.json()
        key = body.get("apiKey") if isinstance(body, dict) else None
        if not isinstance(key, str) or not hmac.compare_digest(
                key.encode(), self.settings.apivideo_key.encode()):
            raise bad("authentication-invalid-user-credentials",
                      "The user credentials were incorrect.", "")
        return self._issue()

    def refresh(self, request: Request) -> Response:
        body = request.json()
        value = body.get("refreshToken") if isinstance(body, dict) else None
        with self._lock:
            known = isinstance(value, str) and self._refresh.pop(value, None) is not None
        if not known:
            raise bad("authentication-invalid-user-credentials",
                      "The refresh token is invalid.", "refreshToken")
        return self._issue()

    # -- upload tokens ----------------------------------------------------------------

    def _token_json(self, t: _Token) -> dict[str, Any]:
        def iso(ts: float) -> str:
            return _now_iso(lambda: ts)
        return {"token": t.token, "ttl": t.ttl, "createdAt": iso(t.created),
                "expiresAt": iso(t.expires) if t.expires is not None else None}

    def create_token(self, request: Request) -> Response:
        self._require_key(request)
        body = request.json() if request.content_length else {}
        ttl = body.get("ttl", 0) if isinstance(body, dict) else None
        if not isinstance(ttl, int) or isinstance(ttl, bool) or not 0 <= ttl <= TOKEN_TTL_MAX:
            raise bad("invalid-attribute", f"ttl must be an integer from 0 to {TOKEN_TTL_MAX}",
                      "ttl")
        now = self.settings.clock()
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
        token = _Token("to" + "".join(secrets.choice(alphabet) for _ in range(22)), ttl, now,
                       now + ttl if ttl else None)
        with self._lock:
            self._tokens[token.token] = token
        return Response.json(self._token_json(token))

    def list_tokens(self, request: Request) -> Response:
        self._require_key(request)
        with self._lock:
            tokens = list(self._tokens.values())
        now = self.settings.clock()
        live = [self._token_json(t) for t in tokens if t.expires is None or t.expires > now]
        return Response.json(self._page(request, live))

    def get_token(self, request: Request) -> Response:
        self._require_key(request)
        return Response.json(self._token_json(self._token(request.params["t"])))

    def delete_token(self, request: Request) -> Response:
        self._require_key(request)
        token = self._token(request.params["t"])
        with self._lock:
            self._tokens.pop(token.token, None)
        return Response(204)

    def _page(self, request: Request, items: list[dict[str, Any]]) -> dict[str, Any]:
        page, size = parse_uint(request.arg("currentPage") or "1"), \
            parse_uint(request.arg("pageSize") or "25")
        if page is None or page < 1:
            raise bad("invalid-attribute", "currentPage must be an integer >= 1", "currentPage")
        if size is None or not 1 <= size <= 100:
            raise bad("invalid-attribute", "pageSize must be an integer from 1 to 100", "pageSize")
        pages = max(1, math.ceil(len(items) / size))
        return {"data": items[(page - 1) * size: page * size],
                "pagination": {"currentPage": page, "pageSize": size, "pagesTotal": pages,
                               "itemsTotal": len(items), "currentPageItems":
                               len(items[(page - 1) * size: page * size]), "links": []}}

    # -- videos -----------------------------------------------------------------------

    def _video(self, video_id: str) -> Session:
        session = self.sessions.get(video_id[2:]) if video_id.startswith("vi") else None
        if session is None or session.state == "aborted":
            raise problem(404, "resource-not-found", "The requested resource was not found.",
                          "videoId")
        return session

    def _new_video(self, title: str, *, tags: list[str] | None = None,
                   metadata: list[dict[str, str]] | None = None, token: str | None = None,
                   **extra: Any) -> Session:
        now = _now_iso(self.settings.clock)
        info = {"title": title, "description": "", "public": not self.private_videos,
                "tags": tags or [],
                "metadata": metadata or [], "createdAt": now, "updatedAt": now,
                "token": hashlib.sha256(token.encode()).hexdigest()[:16] if token else None,
                "mode": None, "total": None, "filename": None, "filesize": None,
                "ranges": [], "part_sizes": {}, **extra}
        session = self.sessions.create("", info)
        with self._lock:
            self._videos.append(session.id)
        return session

    def _video_json(self, request: Request, session: Session) -> dict[str, Any]:
        info, vid = session.info, "vi" + session.id
        video: dict[str, Any] = {
            "videoId": vid, "title": info["title"], "description": info["description"],
            "public": info["public"], "panoramic": False, "mp4Support": True,
            "tags": list(info["tags"]), "metadata": [dict(m) for m in info["metadata"]],
            "createdAt": info["createdAt"], "updatedAt": info["updatedAt"],
            "publishedAt": info["createdAt"], "discarded": False, "discardedAt": None,
            "deletesAt": None, "language": "en", "languageOrigin": None,
            "source": {"uri": f"/videos/{vid}/source", "type": "upload"},
        }
        if session.state == "completed":
            base = f"{self.base_url(request)}/vod/{vid}"
            player, files = f"{base}/player", base
            if not info["public"]:  # a new one-time private token with every answer
                token = secrets.token_hex(16)
                with self._lock:
                    self._private[token] = (vid, None)
                player, files = f"{player}?token={token}", f"{base}/token/{token}"
            video["assets"] = {
                "hls": f"{files}/hls/manifest.m3u8", "player": player,
                "thumbnail": f"{files}/thumbnail.jpg", "mp4": f"{files}/mp4/source.mp4",
                "iframe": f'<iframe src="{player}" width="100%" height="100%" '
                          'frameborder="0" scrolling="no" allowfullscreen=""></iframe>',
            }
        return video

    def asset(self, request: Request) -> Response:
        """``GET`` an asset URL of a complete video; a private one needs its token."""
        vid, rest = request.params["videoId"], request.params["asset"]
        token = request.arg("token")
        if rest.startswith("token/") and rest.count("/") >= 2:
            _, token, rest = rest.split("/", 2)
        session = self._video(vid)
        if rest not in ASSET_TYPES or session.state != "completed":
            raise problem(404, "resource-not-found", "The requested resource was not found.")
        if not session.info["public"]:
            now = self.settings.clock()
            with self._lock:
                owner, first = self._private.get(token or "", ("", None))
                ok = owner == vid and (first is None or now - first < PRIVATE_SESSION)
                if ok and first is None:
                    self._private[token or ""] = (vid, now)
            if not ok:
                raise problem(403, "forbidden", "This video is private: its asset URLs need "
                              "a valid private token.")
        if rest == "mp4/source.mp4":
            meta = self.store.get(self.name, vid)
            if meta is None:
                raise problem(404, "resource-not-found", "The requested resource was not found.")
            body = Path(meta["path"]).read_bytes()
        else:
            body = f"{rest} of {vid}\n".encode()
        return Response(200, body, {"Content-Type": ASSET_TYPES[rest]})

    @staticmethod
    def _attributes(body: Any, *, creating: bool) -> dict[str, Any]:
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
                    isinstance(m, dict) and isinstance(m.get("key"), str) and m["key"]
                    and isinstance(m.get("value"), str) for m in meta):
                raise bad("invalid-attribute",
                          "This attribute must be an array of {key, value} strings.", "metadata")
            out["metadata"] = [{"key": m["key"], "value": m["value"]} for m in meta]
        return out

    def create_video(self, request: Request) -> Response:
        self._require_key(request)
        attrs = self._attributes(request.json(), creating=True)
        session = self._new_video(attrs.pop("title"), **attrs)
        return Response.json(self._video_json(request, session), 201)

    def list_videos(self, request: Request) -> Response:
        self._require_key(request)
        wanted_meta = {k[len("metadata["):-1]: v[0] for k, v in request.query.items()
                       if k.startswith("metadata[") and k.endswith("]")}
        wanted_tags = set(request.query.get("tags[]", []))
        title = request.arg("title")
        with self._lock:
            ids = list(self._videos)
        found = []
        for session in filter(None, map(self.sessions.get, ids)):
            info = session.info
            meta = {m["key"]: m["value"] for m in info["metadata"]}
            if any(meta.get(k) != v for k, v in wanted_meta.items()):
                continue
            if not wanted_tags <= set(info["tags"]) or (title and title not in info["title"]):
                continue
            found.append(self._video_json(request, session))
        return Response.json(self._page(request, found))

    def get_video(self, request: Request) -> Response:
        self._require_key(request)
        return Response.json(self._video_json(request, self._video(request.params["videoId"])))

    def update_video(self, request: Request) -> Response:
        self._require_key(request)
        session = self._video(request.params["videoId"])
        attrs = self._attributes(request.json(), creating=False)
        with session.lock:
            session.info.update(attrs, updatedAt=_now_iso(self.settings.clock))
            session.save()
        return Response.json(self._video_json(request, session))

    def delete_video(self, request: Request) -> Response:
        self._require_key(request)
        self._drop(self._video(request.params["videoId"]))
        return Response(204)

    def _drop(self, session: Session) -> None:
        """Delete a video: its chunks, and its place in the listing."""
        with session.lock:
            self.sessions.close(session, "aborted")
        with self._lock:
            if session.id in self._videos:
                self._videos.remove(session.id)

    def status(self, request: Request) -> Response:
        self._require_key(request)
        session = self._video(request.params["videoId"])
        with session.lock:
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
                "receivedBytes": [{"from": a, "to": b, "total": filesize if filesize is not None
                                   else b + 1} for a, b in ranges],
                "receivedParts": {"parts": sizes if part_form else [],
                                  "total": info["total"] if part_form else None},
            }
        metadata = {k: None for k in ("width", "height", "bitrate", "duration", "framerate",
                                      "samplerate", "videoCodec", "audioCodec", "aspectRatio")}
        return Response.json({"ingest": ingest, "encoding": {"playable": False, "qualities": [],
                                                             "metadata": metadata}})

    # -- the bytes --------------------------------------------------------------------

    def upload(self, request: Request) -> Response:
        token = self._token(request.arg("token"))
        return self._receive(request, token=token.token, video_id=None)

    def upload_source(self, request: Request) -> Response:
        self._require_key(request)
        video_id = request.params["videoId"]
        self._video(video_id)
        return self._receive(request, token=None, video_id=video_id)

    def _receive(self, request: Request, *, token: str | None, video_id: str | None) -> Response:
        """Parse one chunk, find its video, apply it; the 201 Video answer."""
        length = request.content_length
        if length is not None and length > MAX_BODY:
            raise problem(413, "request-too-large", f"A request may carry at most {MAX_BODY} "
                          "bytes; send larger files in chunks", "file")
        header = request.headers.get("Content-Range")
        check_header(header)
        form = parse_form(request, self.store.temp_path)
        try:
            files = [f for f in form.files if f.name == "file"]
            # The request log shows the chunk's size, not the form's (module docstring).
            request.body.consumed = sum(f.size for f in files)
            if not files:
                raise bad("uploaded-file-no-file", "There is no uploaded file in the request.")
            if len(files) > 1:
                raise bad("uploaded-file-multiple-files",
                          "There is more than one uploaded file in the request.")
            (chunk,) = files
            if chunk.size == 0:
                raise bad("uploaded-file-no-file", "The uploaded file is empty.")
            rng = parse_range(header, chunk.size)
            check_min_size(rng, chunk.size)
            ids = form.fields.get("videoId", [])
            if video_id is None:
                if len(ids) > 1:
                    raise bad("invalid-attribute", "videoId must be given once.", "videoId")
                video_id = ids[0] if ids else None
            session = self._target(token, video_id, rng)
            if session is not None:
                return self._apply(request, session, rng, chunk)
            session = self._new_video(chunk.filename or "untitled", token=token)
            try:
                return self._apply(request, session, rng, chunk)
            except ApiError:  # a refused first chunk leaves no video behind
                self._drop(session)
                raise
        finally:
            form.discard()

    def _target(self, token: str | None, video_id: str | None,
                rng: Range | None) -> Session | None:
        """The video a chunk belongs to; None for a first chunk without videoId (a new video)."""
        if video_id:
            return self._video(video_id)
        assert token is not None
        if rng is not None and rng.mode == "bytes" and rng.first > 0:
            raise bad("attribute-required", "videoId is required for every chunk after the "
                      "first (send the videoId the first chunk returned).", "videoId")
        if rng is not None and rng.mode == "part" and rng.first > 1:
            # api.video-python 1.4.7 quirk: its chunks never carry videoId (module docstring).
            tag = hashlib.sha256(token.encode()).hexdigest()[:16]
            with self._lock:
                ids = list(self._videos)
            open_ = [s for s in filter(None, map(self.sessions.get, ids))
                     if s.state == "active" and s.info["token"] == tag
                     and s.info["mode"] == "part"]
            if len(open_) != 1:
                raise bad("attribute-required", f"videoId is required: {len(open_)} unfinished "
                          "part-form uploads are open for this token.", "videoId")
            return open_[0]
        return None

    def _apply(self, request: Request, session: Session, rng: Range | None,
               chunk: FilePart) -> Response:
        with session.lock:
            if session.state == "aborted":
                raise problem(404, "resource-not-found", "The requested resource was not found.",
                              "videoId")
            if session.state == "completed":
                raise bad("video-source-already-uploaded",
                          "The source of the video is already uploaded.")
            saved = copy.deepcopy(session.info)
            try:
                complete = apply_chunk(self.sessions, session, rng, chunk)
            except ApiError:
                session.info = saved  # a rejected chunk changes nothing
                raise
            if complete:
                self._complete(session)
            else:
                session.save()
            return Response.json(self._video_json(request, session), 201)

    def _complete(self, session: Session) -> None:
        """Assemble the chunks into the stored object; the session keeps only its record."""
        info, vid = session.info, "vi" + session.id
        path, size, sha256, _ = self.sessions.assemble(session, sorted(session.parts))
        meta = {m["key"]: m["value"] for m in info["metadata"]}
        filename = info["filename"]
        self.store.put(
            self.name, vid, path, size=size, sha256=sha256, filename=filename,
            content_type=mimetypes.guess_type(filename)[0] or "application/octet-stream",
            labels=info["tags"], category=meta.get("category"), uuid=meta.get(UUID_KEY),
            extra={"video_id": vid, "title": info["title"], "chunks": len(session.parts),
                   "content_range": info["mode"] or "none"},
        )
        info["updatedAt"] = _now_iso(self.settings.clock)
        self.sessions.close(session, "completed")

    # -- for tests --------------------------------------------------------------------

    def unfinished(self) -> list[str]:
        """Videos whose source is not complete: ``"vi… (mode, N chunk(s) held)"``."""
        with self._lock:
            ids = list(self._videos)
        return [f"vi{s.id} ({s.info['mode'] or 'empty'}, {len(s.parts)} chunk(s) held)"
                for s in filter(None, map(self.sessions.get, ids)) if s.state == "active"]
