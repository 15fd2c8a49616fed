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
are the shared kit's (:mod:`._api`, :mod:`._chunked`); api.video's requests
are :mod:`._apivideo_api`, its chunks as a chunked service
:mod:`._apivideo_chunks`.

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

import logging
import threading
from typing import Any, ClassVar
from urllib.parse import quote

import httpx

from syncd.destinations import _chunked, _receipts
from syncd.destinations._apivideo_api import ApiVideoApi
from syncd.destinations._apivideo_chunks import (
    COMPLETE,
    RECEIPT_SEAL,
    VideoChunks,
    held_parts,
    video_metadata,
)
from syncd.destinations.base import Capabilities, Checkpoint, Receipt, Source, UploadItem
from syncd.destinations.options import ApiVideoOptions
from syncd.errors import FatalError, PermanentError, RetryableError, describe
from syncd.http import html_page

log = logging.getLogger(__name__)

NO_KEY_NOTE = "without api_key (an upload token alone sets no tags or metadata: set api_key)"


class ApiVideoDestination:
    """Uploads to api.video; see the module docstring for the protocol and resume state."""

    TYPE: ClassVar[str] = "apivideo"
    #: With ``api_key``; without one nothing but the bytes arrives (:meth:`capabilities_for`).
    CAPABILITIES: ClassVar[Capabilities] = Capabilities(
        labels="video tags", category="video metadata entry 'category'"
    )
    Options: ClassVar[type] = ApiVideoOptions

    def __init__(self, name: str, options: ApiVideoOptions, client: httpx.Client) -> None:
        self.name = name
        self.options = options
        self._api = ApiVideoApi(options, client)
        self._chunks = VideoChunks(self._api, options)
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

    def upload(
        self, item: UploadItem, source: Source, resume: dict[str, Any] | None, checkpoint: Checkpoint
    ) -> Receipt:
        if source.size == 0:
            raise PermanentError(
                "apivideo: the file is empty (0 bytes); api.video cannot hold "
                "an empty video, so nothing was sent"
            )
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
        log.warning(
            "apivideo destination %r has no api_key: %s will not reach api.video "
            "(an upload token alone sets no tags or metadata); set api_key to "
            "deliver them",
            self.name,
            " and ".join(what),
        )

    def _reconcile(
        self, item: UploadItem, source: Source, resume: dict[str, Any]
    ) -> dict[str, Any] | Receipt | None:
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
        if (
            resume.get("size") != source.size
            or not isinstance(part_size, int)
            or part_size < 1
            or not _chunked.read_from(resume, source.ctime_ns)
        ):
            return resume  # not for this file (as it is now): the driver discards it and starts over
        try:
            ingest = self._api.status(video_id)
        except RetryableError as exc:
            log.info(
                "apivideo: cannot ask what video %s holds (%s); resuming from the checkpoint",
                video_id,
                describe(exc),
            )
            return resume
        if ingest is None:
            log.warning("apivideo: video %s no longer exists; starting the upload over", video_id)
            return None
        complete = ingest.get("status") in COMPLETE
        filesize = ingest.get("filesize")
        if complete and isinstance(filesize, int) and filesize != source.size:
            raise PermanentError(
                f"apivideo: video {video_id} already holds a source of "
                f"{filesize} bytes, not this file's {source.size}"
            )
        if session.get("via") == "token":  # made by a token upload: give it its metadata now
            self._api.call(
                "PATCH",
                self._api.video_path(video_id),
                what="apivideo: update video",
                body=video_metadata(item),
            )
        if complete:
            count = _chunked.part_count(source.size, part_size)
            return self._chunks.finish(dict(session), [(n, video_id) for n in range(1, count + 1)])
        held = held_parts(ingest, source.size, part_size)
        return {**resume, "parts": {str(n): video_id for n in sorted(held)}}

    def abort(self, resume: dict[str, Any]) -> None:
        """Delete the incomplete video in ``resume`` (needs api_key; never a complete one)."""
        _chunked.abort(self._chunks, resume)

    def probe(self) -> str:
        if not self._api.has_key:
            what = "apivideo: reach the API"
            response = self._api.send("GET", self._api.base + "/videos", what=what)
            status = response.status_code
            if status >= 500 or status == 429 or 300 <= status < 400 or html_page(response):
                self._api.check(response, what=what, ok=())  # not api.video's answer, or trouble
            return (
                f"reachable (HTTP {response.status_code}); the upload token cannot be "
                "checked without api_key: the first upload checks it"
            )
        if self._api.token is None:
            self._api.call("GET", "/videos", what="apivideo: check api_key", params={"pageSize": 1})
            return "ok: api_key accepted (no upload_token: every upload goes through the API)"
        what = "apivideo: check upload token"
        try:
            data = self._api.call("GET", f"/upload-tokens/{quote(self._api.token, safe='')}", what=what)
        except PermanentError as exc:
            if exc.status == 404:
                raise FatalError(
                    f"{what}: api.video does not know the upload token (unknown, deleted or expired)",
                    status=404,
                ) from None
            raise
        if not isinstance(data, dict):
            raise RetryableError("apivideo: check upload token: the answer is not an object", garbled=True)
        expires = data.get("expiresAt")
        return "ok: api_key accepted, upload token valid" + (
            f" until {expires}" if isinstance(expires, str) and expires else ", never expires"
        )

    def close(self) -> None:
        return None


__all__ = ["ApiVideoDestination", "ApiVideoOptions"]
