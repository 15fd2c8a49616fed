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
a video, and which video a chunk without ``videoId`` goes to, live in
:mod:`syncd_emulator.apivideo_chunks`; the credentials in
:mod:`syncd_emulator.apivideo_auth`; a video's record, attributes, listing,
JSON and private tokens in :mod:`syncd_emulator.apivideo_videos`; errors and
rate-limit headers in :mod:`syncd_emulator.apivideo_problems`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

from syncd_emulator.apivideo_auth import Credentials, token_json
from syncd_emulator.apivideo_auth import UploadToken as UploadToken
from syncd_emulator.apivideo_chunks import (
    Range,
    apply_chunk,
    check_upload,
    chunk_target,
    parse_form,
    read_chunk,
)
from syncd_emulator.apivideo_problems import RateWindow, bad, problem, render
from syncd_emulator.apivideo_videos import (
    ASSET_TYPES,
    PrivateTokens,
    attributes,
    matches,
    new_record,
    now_iso,
    page,
    status_json,
    stored_fields,
    video_json,
)
from syncd_emulator.apivideo_videos import UUID_KEY as UUID_KEY
from syncd_emulator.forms import FilePart
from syncd_emulator.messages import ApiError, Request, Response
from syncd_emulator.service import Route, Service, ServiceContext
from syncd_emulator.store import Session


class ApiVideoService(Service):
    """api.video upload endpoints; see the module docstring for the rules."""

    name = "apivideo"
    prefix = "/apivideo"

    def __init__(self, context: ServiceContext) -> None:
        super().__init__(context)
        self.credentials = Credentials(self.settings)
        self._rates = RateWindow(self.settings.clock)
        self._videos: list[str] = []  # session ids of live videos, oldest first
        self.private_videos = self.settings.apivideo_private_videos  # new videos: public: false
        self._private = PrivateTokens(self.settings.clock)
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

    def _stamped(self, handler: Callable[[Request], Response]) -> Callable[[Request], Response]:
        def wrapped(request: Request) -> Response:
            response = handler(request)
            headers = self._rates.headers()
            headers.update(response.headers)
            response.headers = headers
            return response

        return wrapped

    def error(self, op: str, status: int, message: str, code: str = "") -> Response:
        return render(status, message, code, self._rates.headers())

    # -- credentials: access tokens and upload tokens --------------------------------

    def auth(self, request: Request) -> Response:
        return Response.json(self.credentials.login(request.json()))

    def refresh(self, request: Request) -> Response:
        return Response.json(self.credentials.refresh(request.json()))

    _token_json = staticmethod(token_json)

    def create_token(self, request: Request) -> Response:
        self.credentials.require_key(request)
        body = request.json() if request.content_length else {}
        return Response.json(self._token_json(self.credentials.mint(body)))

    def list_tokens(self, request: Request) -> Response:
        self.credentials.require_key(request)
        live = [self._token_json(t) for t in self.credentials.live()]
        return Response.json(page(request, live))

    def get_token(self, request: Request) -> Response:
        self.credentials.require_key(request)
        return Response.json(self._token_json(self.credentials.upload_token(request.params["t"])))

    def delete_token(self, request: Request) -> Response:
        self.credentials.require_key(request)
        self.credentials.revoke(request.params["t"])
        return Response(204)

    # -- videos -----------------------------------------------------------------------

    def _video(self, video_id: str) -> Session:
        session = self.sessions.get(video_id[2:]) if video_id.startswith("vi") else None
        if session is None or session.state == "aborted":
            raise problem(404, "resource-not-found", "The requested resource was not found.", "videoId")
        return session

    def _new_video(
        self,
        title: str,
        *,
        tags: list[str] | None = None,
        metadata: list[dict[str, str]] | None = None,
        token: str | None = None,
        **extra: Any,
    ) -> Session:
        info = new_record(
            title,
            now=now_iso(self.settings.clock),
            public=not self.private_videos,
            tags=tags,
            metadata=metadata,
            token=token,
            **extra,
        )
        session = self.sessions.create("", info)
        with self._lock:
            self._videos.append(session.id)
        return session

    def _video_json(self, request: Request, session: Session) -> dict[str, Any]:
        token = None
        if session.state == "completed" and not session.info["public"]:
            token = self._private.mint("vi" + session.id)  # a new one with every answer
        return video_json(session, self.base_url(request), token)

    def asset(self, request: Request) -> Response:
        """``GET`` an asset URL of a complete video; a private one needs its token."""
        vid, rest = request.params["videoId"], request.params["asset"]
        token = request.arg("token")
        if rest.startswith("token/") and rest.count("/") >= 2:
            _, token, rest = rest.split("/", 2)
        session = self._video(vid)
        if rest not in ASSET_TYPES or session.state != "completed":
            raise problem(404, "resource-not-found", "The requested resource was not found.")
        if not session.info["public"] and not self._private.admit(token, vid):
            raise problem(
                403, "forbidden", "This video is private: its asset URLs need a valid private token."
            )
        if rest == "mp4/source.mp4":
            meta = self.store.get(self.name, vid)
            if meta is None:
                raise problem(404, "resource-not-found", "The requested resource was not found.")
            body = Path(meta["path"]).read_bytes()
        else:
            body = f"{rest} of {vid}\n".encode()
        return Response(200, body, {"Content-Type": ASSET_TYPES[rest]})

    def create_video(self, request: Request) -> Response:
        self.credentials.require_key(request)
        attrs = attributes(request.json(), creating=True)
        session = self._new_video(attrs.pop("title"), **attrs)
        return Response.json(self._video_json(request, session), 201)

    def list_videos(self, request: Request) -> Response:
        self.credentials.require_key(request)
        with self._lock:
            ids = list(self._videos)
        found = [
            self._video_json(request, session)
            for session in filter(None, map(self.sessions.get, ids))
            if matches(session.info, request)
        ]
        return Response.json(page(request, found))

    def get_video(self, request: Request) -> Response:
        self.credentials.require_key(request)
        return Response.json(self._video_json(request, self._video(request.params["videoId"])))

    def update_video(self, request: Request) -> Response:
        self.credentials.require_key(request)
        session = self._video(request.params["videoId"])
        attrs = attributes(request.json(), creating=False)
        with session.lock:
            session.info.update(attrs, updatedAt=now_iso(self.settings.clock))
            session.save()
        return Response.json(self._video_json(request, session))

    def delete_video(self, request: Request) -> Response:
        self.credentials.require_key(request)
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
        self.credentials.require_key(request)
        session = self._video(request.params["videoId"])
        with session.lock:
            body = status_json(session)
        return Response.json(body)

    # -- the bytes --------------------------------------------------------------------

    def upload(self, request: Request) -> Response:
        token = self.credentials.upload_token(request.arg("token"))
        return self._receive(request, token=token.token, video_id=None)

    def upload_source(self, request: Request) -> Response:
        self.credentials.require_key(request)
        video_id = request.params["videoId"]
        self._video(video_id)
        return self._receive(request, token=None, video_id=video_id)

    def _receive(self, request: Request, *, token: str | None, video_id: str | None) -> Response:
        """Parse one chunk, find its video, apply it; the 201 Video answer."""
        check_upload(request)
        form = parse_form(request, self.store.temp_path)
        try:
            # The request log shows the chunk's size, not the form's (module docstring).
            request.body.consumed = sum(f.size for f in form.files if f.name == "file")
            chunk, rng, video_id = read_chunk(form, request.headers.get("Content-Range"), video_id)
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

    def _target(self, token: str | None, video_id: str | None, rng: Range | None) -> Session | None:
        """The video a chunk belongs to; None for a first chunk without videoId (a new video)."""
        if video_id:
            return self._video(video_id)
        assert token is not None
        return chunk_target(token, rng, self._live_sessions)

    def _live_sessions(self) -> list[Session]:
        with self._lock:
            ids = list(self._videos)
        return [s for s in map(self.sessions.get, ids) if s is not None]

    def _apply(self, request: Request, session: Session, rng: Range | None, chunk: FilePart) -> Response:
        with session.lock:
            if session.state == "aborted":
                raise problem(404, "resource-not-found", "The requested resource was not found.", "videoId")
            if session.state == "completed":
                raise bad("video-source-already-uploaded", "The source of the video is already uploaded.")
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
        self.store.put(self.name, vid, path, **stored_fields(session, size, sha256))
        info["updatedAt"] = now_iso(self.settings.clock)
        self.sessions.close(session, "completed")

    # -- for tests --------------------------------------------------------------------

    def unfinished(self) -> list[str]:
        """Videos whose source is not complete: ``"vi… (mode, N chunk(s) held)"``."""
        with self._lock:
            ids = list(self._videos)
        return [
            f"vi{s.id} ({s.info['mode'] or 'empty'}, {len(s.parts)} chunk(s) held)"
            for s in filter(None, map(self.sessions.get, ids))
            if s.state == "active"
        ]
