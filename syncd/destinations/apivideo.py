"""api.video: Content-Range chunk uploads (protocols.md §4).

Every file goes through the chunk driver (:mod:`._chunked`), one part per
chunk of ``chunk_size`` bytes (5–128 MiB; a file up to ``chunk_size`` is
one chunk). Two routes, both documented:

**With ``api_key``** (``Authorization: Basic base64(KEY:)``): the video is
created first, with its title, tags and metadata, and its source is then
sent to the documented route for an existing video, in ``part N/M`` chunks::

    GET  {base}/videos?metadata[syncd-uuid]=U    an earlier attempt's video for this file?
    POST {base}/videos  {"title", "tags", "metadata": [{key, value}, ...]}   -> 201 Video
    POST {base}/videos/{id}/source   multipart: file   Content-Range: part n/M   -> 201 Video
    GET  {base}/videos/{id}/status                on resume: ``receivedParts`` (what is held)
    DELETE {base}/videos/{id}                     abort (only a video whose source is incomplete)

so the video id is checkpointed before any byte is sent, and the ledger
row's uuid (metadata ``syncd-uuid``) finds it again if that checkpoint was
lost: one ledger row never makes two videos.

**Token only** (no ``api_key``): api.video's delegated upload, the only
route an upload token opens::

    POST {base}/upload?token=T   multipart: [videoId,] file   Content-Range: bytes a-b/N  -> 201 Video

The first chunk carries no ``videoId`` and creates the video; every later
chunk carries the ``videoId`` it returned, as a form field placed before
``file``. A video a token upload started is finished through
``/videos/{id}/source`` (same byte ranges) once an ``api_key`` is configured.

The chunk that completes the file answers with the full Video (``assets``).
The receipt keeps the asset URLs (player, hls, mp4, thumbnail) without their
credentials; a private video's URLs carry a one-time private token (in the
player URL's query, in the path of the others), so they are also kept whole
and sealed (:mod:`._receipts`, keyed from ``api_key``, else the upload
token), shown by ``syncd files --receipt ID``.

Resume state (the upload token is a secret and never stored)::

    {"v": 1, "kind": "apivideo-chunks", "session": {"video_id": "vi…" | null,
     "via": "token" | "api", "filename": "…"}, "part_size": P, "size": N,
     "parts": {"1": "vi…", ...}}

Token only: the chunks without a recorded 201 are sent again, with the same
``videoId``. api.video answers a chunk it already holds (its 201 was lost)
with 400 ``video-content-range-by-bytes-range-overlap`` (``...-by-part-part-
already-sent`` for part chunks), documented as "you send a chunk that you've
already sent": that chunk counts as confirmed and the upload goes on. With
``api_key``: ``/status`` says which chunks the server holds, and only the
rest is sent. ``video-source-already-uploaded`` means the video is complete:
the upload is done.

A folder with labels or a category and no ``api_key``: an upload token can
set neither, so ``syncd check`` warns (:meth:`ApiVideoDestination.capabilities_for`)
and the first upload of each such set of labels and category logs a warning.

The API client, the multipart form (httpx ``files=``) and the chunk loop
are the shared kit's (:mod:`._api`, :mod:`._chunked`).

Errors: 401 is :class:`~syncd.errors.FatalError`, and so is a 404 for the
upload token (unknown, deleted or expired); a 404 for the video means it
was deleted (a new one is started, once); 403 on an upload is retried at
once a few times (:class:`~syncd.errors.ExpiredError`: api.video documents
no 403 there); 429 waits ``Retry-After`` or ``X-RateLimit-Retry-After``;
other 4xx are permanent; 5xx and transport errors are retryable. A 0-byte
file is refused (permanent) without a request: api.video cannot hold an
empty video, and a byte range cannot describe one.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import quote

import httpx

from syncd import redact
from syncd.destinations import _chunked, _receipts
from syncd.destinations._api import DELAY, Api, RateLimit, basic
from syncd.destinations._chunked import Opened, Part, PartRules, SessionLost, Spec
from syncd.destinations.base import Capabilities, Checkpoint, Receipt, Source, UploadItem
from syncd.destinations.options import ApiVideoOptions
from syncd.errors import ExpiredError, FatalError, PermanentError, RetryableError, describe
from syncd.http import error_text, json_body, require

log = logging.getLogger(__name__)

MiB = 1024 * 1024
UUID_KEY = "syncd-uuid"
ALREADY_UPLOADED = "video-source-already-uploaded"
# A chunk the server holds already, sent again (its 201 was lost): documented errors.
ALREADY_SENT = frozenset({"video-content-range-by-bytes-range-overlap",
                          "video-content-range-by-part-part-already-sent"})
RECEIPT_SEAL = "apivideo receipt"
ASSETS = ("player", "hls", "mp4", "thumbnail")
NO_KEY_NOTE = "without api_key (an upload token alone sets no tags or metadata: set api_key)"
COMPLETE = ("uploaded", "ingesting", "ingested")  # ingest states with the whole source
RATE_LIMIT = RateLimit(headers=(("X-RateLimit-Retry-After", DELAY),))  # after Retry-After


def _problem(response: httpx.Response) -> tuple[str, str]:
    """(slug, name) of a problem+json error body; empty strings when there is none."""
    try:
        data = response.json()
    except ValueError:
        return "", ""
    if not isinstance(data, dict):
        return "", ""
    slug = str(data.get("type") or "").rstrip("/").rpartition("/")[2]
    return slug, str(data.get("name") or "")


class _Api(Api):
    """Requests to api.video: the upload token for /upload, the API key for the rest."""

    def __init__(self, options: ApiVideoOptions, client: httpx.Client) -> None:
        key = options.api_key
        super().__init__("apivideo", options.base_url, client,
                         auth=None if key is None else basic(key.reveal(), ""),
                         rate_limit=RATE_LIMIT, lost=(404,))
        self.token = options.upload_token.reveal()
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
            data = self.call("GET", self.video_path(video_id, "/status"),
                             what="apivideo: video status", session=True)
        except SessionLost:
            return None
        ingest = data.get("ingest") if isinstance(data, dict) else None
        return ingest if isinstance(ingest, dict) else {}

    def post_chunk(self, video_id: str | None, filename: str, part: Part) -> httpx.Response:
        """Send one chunk to ``POST /upload?token=…`` (byte ranges)."""
        return self.send("POST", self.base + "/upload", what=f"apivideo: chunk {part.number}",
                         params={"token": self.token}, **_chunk(video_id, filename, part))

    def post_source(self, video_id: str, filename: str, part: Part,
                    by_part: bool) -> httpx.Response:
        """Send one chunk to ``POST /videos/{id}/source`` (API key): ``part n/M`` chunks, or
        byte ranges for a video that a token upload started with them."""
        assert self.auth is not None, "/videos/{id}/source needs api_key"
        return self.send("POST", self.base + self.video_path(video_id, "/source"),
                         what=f"apivideo: chunk {part.number}",
                         **_chunk(None, filename, part, by_part=by_part, auth=self.auth))


def _chunk(video_id: str | None, filename: str, part: Part, *, by_part: bool = False,
           auth: dict[str, str] | None = None) -> dict[str, Any]:
    """The request of one chunk: a streamed form (httpx ``files=``), ``videoId`` first (as
    api.video's uploader does) when given, then ``file``; the chunk's ``Content-Range``."""
    content_range = (f"part {part.number}/{part.count}" if by_part
                     else f"bytes {part.offset}-{part.end - 1}/{part.file_size}")
    return {"headers": {**(auth or {}), "Content-Range": content_range,
                        "Accept": "application/json"},
            "data": {"videoId": video_id} if video_id else {},
            "files": {"file": (filename, part.file(), "application/octet-stream")}}


def _metadata(item: UploadItem) -> dict[str, Any]:
    """Tags and metadata for the video: labels, category, and the ledger row's uuid."""
    meta = [{"key": "category", "value": item.category}] if item.category is not None else []
    meta.append({"key": UUID_KEY, "value": item.uuid})
    return {"tags": list(item.labels), "metadata": meta}


def _held_parts(ingest: dict[str, Any], size: int, part_size: int) -> set[int]:
    """Numbers of the parts the server says it holds: ``receivedParts.parts`` (part
    chunks), and the parts wholly inside the ``receivedBytes`` ranges (byte chunks)."""
    count = _chunked.part_count(size, part_size)
    received = ingest.get("receivedParts")
    numbers = received.get("parts") if isinstance(received, dict) else None
    held = {n for n in numbers or [] if type(n) is int and 1 <= n <= count}
    ranges = []
    for r in ingest.get("receivedBytes") or []:
        if isinstance(r, dict) and isinstance(r.get("from"), int) and isinstance(r.get("to"), int):
            ranges.append((r["from"], r["to"]))
    for n in range(1, count + 1):
        first, last = (n - 1) * part_size, min(n * part_size, size) - 1
        if any(a <= first and last <= b for a, b in ranges):
            held.add(n)
    return held


class _Chunks:
    """api.video's Content-Range chunks as a :class:`~._chunked.ChunkedService`."""

    kind = "apivideo-chunks"
    session_fields: Mapping[str, Spec] = {"via": ("token", "api"), "filename": str,
                                          "range": ("bytes", "part", None), "video_id": (str, None)}

    def __init__(self, api: _Api, options: ApiVideoOptions) -> None:
        self.api = api
        # 5 MiB .. 128 MiB: what api.video's own clients allow (protocols.md §4.3).
        self.rules = PartRules(part_size=options.chunk_size, min_size=5 * MiB,
                               max_size=128 * MiB, max_parts=100_000, empty_parts=1)
        # The receipt's private URLs are sealed with the steadier secret: the API key
        # (an upload token may have a ttl).
        self.seal_secret = (options.api_key or options.upload_token).reveal()

    def open(self, item: UploadItem, source: Source, part_size: int) -> Opened:
        if not self.api.has_key:
            # The first chunk creates the video.
            return Opened({"video_id": None, "via": "token", "filename": item.name})
        found = self._find(item.uuid)
        if found is not None:
            return Opened({**found, "filename": item.name})
        what = "apivideo: create video"
        video = self.api.call("POST", "/videos", what=what, ok=(201, 202),
                              body={"title": item.name, **_metadata(item)})
        return Opened({"video_id": require(video, "videoId", what=what), "via": "api",
                       "filename": item.name, "range": "part"})

    def _find(self, uuid: str) -> dict[str, Any] | None:
        """A session for a video an earlier attempt made for this row, when it can be reused.

        Reusable: an empty video (its checkpoint was lost before any chunk)
        or a complete one (nothing left to send). A partly uploaded one is
        deleted: its chunk layout is unknown, so it is cheaper to start over.
        """
        what = "apivideo: find video by uuid"
        data = self.api.call("GET", "/videos", what=what,
                             params={f"metadata[{UUID_KEY}]": uuid, "pageSize": 25})
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
                log.info("apivideo: video %s already holds this file; not sending it again",
                         video_id)
                return {"video_id": video_id, "via": "api", "range": "part", "_complete": True}
            if not ingest.get("receivedBytes") and not (ingest.get("receivedParts") or {}).get(
                    "parts"):
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
            response = self.api.post_source(video_id, session["filename"], part,
                                            by_part=session.get("range") == "part")
        else:
            response = self.api.post_chunk(video_id, session["filename"], part)
        status = response.status_code
        if status in (400, 403, 404):
            slug, name = _problem(response)
            if status == 400 and slug == ALREADY_UPLOADED and video_id:
                log.info("apivideo: video %s already has its whole source; done", video_id)
                session["_complete"] = True
                return str(video_id)
            if status == 400 and slug in ALREADY_SENT and video_id:
                # api.video holds this chunk: an earlier send whose 201 was lost.
                log.info("apivideo: video %s already holds chunk %d (%s); going on", video_id,
                         part.number, slug)
                return str(video_id)
            detail = error_text(response)
            if status == 404 and (by_source or name == "videoId"):
                raise SessionLost(f"{what}: video {video_id} no longer exists", status=404)
            if status == 404:  # the only other thing /upload can miss is the token
                raise FatalError(f"{what}: HTTP 404: api.video does not know the upload token "
                                 f"(unknown, deleted or expired): {detail}", status=404)
            if status == 403:  # documented on neither route: retried at once, bounded
                raise ExpiredError(f"{what}: HTTP 403: {detail}", status=403)
        self.api.check(response, what=what, ok=(200, 201))
        video = json_body(response, what=what)
        returned = require(video, "videoId", what=what)
        if video_id is None:
            session["video_id"] = video_id = returned  # the first chunk made the video
        elif returned != video_id:
            raise PermanentError(f"{what}: the server answered for video {returned}, "
                                 f"not {video_id}")
        if part.last:
            session["_video"] = video
        return str(video_id)

    def finish(self, session: dict[str, Any], parts: list[tuple[int, str]]) -> Receipt:
        video_id = session["video_id"]
        video = session.get("_video")
        if not isinstance(video, dict) and self.api.has_key:
            video = self.api.call("GET", self.api.video_path(video_id),
                                  what="apivideo: get video")
        return _receipt(video_id, video if isinstance(video, dict) else {}, len(parts),
                        self.seal_secret)

    def abort(self, session: dict[str, Any]) -> None:
        video_id = session.get("video_id")
        if not video_id or not self.api.has_key:
            return None  # an upload token cannot delete anything
        ingest = self.api.status(video_id)
        if ingest is None or ingest.get("status") in COMPLETE:
            return None  # gone already, or finished: a complete video is never deleted here
        with contextlib.suppress(SessionLost):  # gone since
            self.api.call("DELETE", self.api.video_path(video_id), what="apivideo: delete video",
                          ok=(200, 202, 204), session=True)


def _receipt(video_id: str, video: dict[str, Any], chunks: int, secret: str) -> Receipt:
    """The receipt: the video id, and its asset URLs without credentials; a private
    video's URLs (with their private token) also whole and sealed (:mod:`._receipts`)."""
    raw = video.get("assets")
    assets: dict[str, Any] = raw if isinstance(raw, dict) else {}
    urls = {k: v for k, v in assets.items() if k in ASSETS and isinstance(v, str) and v}
    details: dict[str, Any] = {"video_id": video_id, "chunks": chunks,
                               **_receipts.seal(secret, RECEIPT_SEAL, video_id, urls)}
    if isinstance(video.get("title"), str):
        details["title"] = video["title"]
    if video.get("public") is False:
        details["public"] = False
    return Receipt(remote_id=video_id, url=details.get("player"), details=details)


class ApiVideoDestination:
    """Uploads to api.video; see the module docstring for the protocol and resume state."""

    TYPE: ClassVar[str] = "apivideo"
    #: With ``api_key``; without one nothing but the bytes arrives (:meth:`capabilities_for`).
    CAPABILITIES: ClassVar[Capabilities] = Capabilities(
        labels="video tags", category="video metadata entry 'category'")
    Options: ClassVar[type] = ApiVideoOptions

    def __init__(self, name: str, options: ApiVideoOptions, client: httpx.Client) -> None:
        self.name = name
        self.options = options
        self._api = _Api(options, client)
        self._chunks = _Chunks(self._api, options)
        self._warned: set[tuple[tuple[str, ...], str | None]] = set()
        self._warned_lock = threading.Lock()

    @classmethod
    def capabilities_for(cls, options: ApiVideoOptions) -> Capabilities:
        """What these options can deliver: nothing but the bytes without ``api_key``."""
        if options.api_key is None:
            return Capabilities(labels=None, category=None, note=NO_KEY_NOTE)
        return cls.CAPABILITIES

    @classmethod
    def reveal_receipt(cls, options: ApiVideoOptions, receipt: dict[str, Any]) -> dict[str, Any]:
        """``receipt`` with a private video's asset URLs whole (``syncd files --receipt``)."""
        secrets_ = [s.reveal() for s in (options.api_key, options.upload_token) if s is not None]
        whole = _receipts.reveal(receipt, secrets_, RECEIPT_SEAL)
        if "player" in whole:
            whole["url"] = whole["player"]  # the receipt's url is the player's
        return whole

    def upload(self, item: UploadItem, source: Source, resume: dict[str, Any] | None,
               checkpoint: Checkpoint) -> Receipt:
        if source.size == 0:
            raise PermanentError("apivideo: the file is empty (0 bytes); api.video cannot hold "
                                 "an empty video, so nothing was sent")
        if not self._api.has_key and (item.labels or item.category is not None):
            self._warn_undeliverable(item)
        if self._api.has_key and _chunked.is_resume_for(self._chunks, resume):
            assert resume is not None
            outcome = self._reconcile(item, source, resume)
            if isinstance(outcome, Receipt):
                return outcome
            resume = outcome
        return _chunked.run(self._chunks, item, source, resume, checkpoint)

    def _warn_undeliverable(self, item: UploadItem) -> None:
        """Once per set of labels and category: they cannot reach api.video (module docstring)."""
        seen = (item.labels, item.category)
        with self._warned_lock:
            if seen in self._warned:
                return
            self._warned.add(seen)
        what = [f"labels {list(item.labels)}"] if item.labels else []
        what += [f"category {item.category!r}"] if item.category is not None else []
        log.warning("apivideo destination %r has no api_key: %s will not reach api.video "
                    "(an upload token alone sets no tags or metadata); set api_key to "
                    "deliver them", self.name, " and ".join(what))

    def _reconcile(self, item: UploadItem, source: Source,
                   resume: dict[str, Any]) -> dict[str, Any] | Receipt | None:
        """With api_key: align ``resume`` with what the server holds (module docstring).

        Returns the receipt when the video is already complete, None to start
        over (the video is gone, or none was made yet), else the resume with
        ``parts`` set to the chunks the server holds. A failing status call
        keeps ``resume`` as is.
        """
        session = resume["session"]
        video_id = session.get("video_id")
        part_size = resume.get("part_size")
        if video_id is None:
            return None  # no video yet: start over, through POST /videos now that there is a key
        if resume.get("size") != source.size or not isinstance(part_size, int) or part_size < 1:
            return resume  # not for this file: the driver discards it and starts over
        try:
            ingest = self._api.status(video_id)
        except RetryableError as exc:
            log.info("apivideo: cannot ask what video %s holds (%s); resuming from the "
                     "checkpoint", video_id, describe(exc))
            return resume
        if ingest is None:
            log.warning("apivideo: video %s no longer exists; starting the upload over", video_id)
            return None
        complete = ingest.get("status") in COMPLETE
        filesize = ingest.get("filesize")
        if complete and isinstance(filesize, int) and filesize != source.size:
            raise PermanentError(f"apivideo: video {video_id} already holds a source of "
                                 f"{filesize} bytes, not this file's {source.size}")
        if session.get("via") == "token":  # made by a token upload: give it its metadata now
            self._api.call("PATCH", self._api.video_path(video_id), what="apivideo: update video",
                           body=_metadata(item))
        if complete:
            count = _chunked.part_count(source.size, part_size)
            return self._chunks.finish(dict(session), [(n, video_id) for n in range(1, count + 1)])
        held = _held_parts(ingest, source.size, part_size)
        return {**resume, "parts": {str(n): video_id for n in sorted(held)}}

    def abort(self, resume: dict[str, Any]) -> None:
        """Delete the incomplete video in ``resume`` (needs api_key; never a complete one)."""
        _chunked.abort(self._chunks, resume)

    def probe(self) -> str:
        if not self._api.has_key:
            what = "apivideo: reach the API"
            response = self._api.send("GET", self._api.base + "/videos", what=what)
            if response.status_code >= 500 or response.status_code == 429:
                self._api.check(response, what=what, ok=())
            return (f"reachable (HTTP {response.status_code}); the upload token cannot be "
                    "checked without api_key: the first upload checks it")
        what = "apivideo: check upload token"
        try:
            data = self._api.call("GET", f"/upload-tokens/{quote(self._api.token, safe='')}",
                                  what=what)
        except PermanentError as exc:
            if exc.status == 404:
                raise FatalError(f"{what}: api.video does not know the upload token (unknown, "
                                 "deleted or expired)", status=404) from None
            raise
        if not isinstance(data, dict):
            raise RetryableError("apivideo: check upload token: the answer is not an object")
        expires = data.get("expiresAt")
        return ("ok: api_key accepted, upload token valid"
                + (f" until {expires}" if isinstance(expires, str) and expires else
                   ", never expires"))

    def close(self) -> None:
        return None


__all__ = ["ApiVideoDestination", "ApiVideoOptions"]
