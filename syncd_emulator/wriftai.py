"""WriftAI file uploads (protocols.md §3), emulated strictly, under ``/wriftai/v1``.

Both generations of the vendor's Python SDK are served:

* **``/files/urls``** (SDK 0.28–0.29): ``POST /files/urls`` with
  ``{"name", "size", "resource": "prediction", "mime_type"}`` answers
  ``{"upload_url", "download_url"}``; the client PUTs the whole file to
  ``upload_url``.
* **``/uploads``** (SDK ≥ 0.30): ``POST /uploads`` with ``{"size",
  "mime_type"}`` answers ``{"id", "urls": [...], "part_size": P}``; the client
  PUTs part *i* (bytes ``[i*P, min((i+1)*P, size))``) to ``urls[i]``, keeps
  each answer's ``etag`` header, and ``POST /uploads/{id}/complete`` with
  ``{"etags": [...]}`` in URL order answers ``{"download_url"}``.

The API takes ``Authorization: Bearer <token>`` (the emulator's
``wriftai_token``); a missing or wrong token, or another scheme, is 401
``{"detail": "..."}``. Schema violations are FastAPI's 422
``{"detail": [{"type", "loc", "msg", "input"}, ...]}`` listing every bad
field; other API errors are ``{"detail": "..."}``. ``GET /user`` (the SDK's
``authenticated_user.get()``) answers a fixed user, for probes.

**Part size.** The server splits: ``P`` is the smallest multiple of
``min_part_size`` (5 MiB; see below) that keeps the upload within 10,000
parts. A file of at most ``P`` bytes is one part and then ``P`` equals the
file size. An empty file is one empty part (``part_size: 0``): the SDK's
synchronous ``upload`` needs at least one URL (it sizes a thread pool by the
part count, and a pool of 0 workers is an error). With ``empty_without_parts``
(``Emulator(wriftai_empty_without_parts=True)``, for tests) an empty file gets
``urls: []`` instead and is completed with ``etags: []``, which the SDK's
``async_upload`` (and syncd) handle. ``min_part_size`` is a knob for tests
and demos: ``Emulator(wriftai_part_size=)`` or ``syncd emulate
--wriftai-part-size``. The vendor SDK follows whatever ``part_size`` it is given.

**Signed storage** lives on the same port. Upload URLs are
``/wriftai/v1/_storage/files/<hex>/<name>`` (single) and
``/wriftai/v1/_storage/uploads/<id>/parts/<n>`` (parts), download URLs
``/wriftai/v1/_files/<key>``; each carries ``X-Emu-Expires`` (epoch seconds,
now + ``url_ttl``) and ``X-Emu-Signature`` (HMAC over method, key or upload
id and part, the declared type and size, and the expiry). Storage answers
like S3: 200 with a quoted-MD5 ``ETag``, or an XML ``<Error>``: 403
``AccessDenied`` for any ``Authorization`` header, a missing signature or an
expired URL (``Request has expired``); 403 ``SignatureDoesNotMatch`` for a
wrong signature, a ``Content-Type`` other than the declared ``mime_type``,
or a ``Content-Length`` other than the declared size (or the part's
length); 411 ``MissingContentLength`` for a chunked body; 404
``NoSuchUpload``/``NoSuchKey`` for an unknown or finished upload or object.

**Complete** needs exactly one etag per part, in order, each equal to what
that part's PUT answered (surrounding quotes optional, as on S3): 400
``{"detail"}`` otherwise; an unknown id is 404. A part whose PUT was answered
without an ``etag`` (``omit_etags``, a knob for tests, set by
``Emulator(wriftai_omit_etags=True)`` or on the service at run time: storage
then sends none, as a store that hides the header would) is left out of that list,
as the SDK leaves it out (it filters missing etags before completing). A repeated complete answers a
fresh download URL and stores nothing again. There is no cancel endpoint:
abandoned uploads stay open (as the real service documents none).

**Metadata.** WriftAI carries no labels, category or client id. A stored
object records ``filename`` (the ``name`` of ``/files/urls``; empty for
``/uploads``, which has no name), ``size``, ``sha256`` and ``content_type``,
plus ``protocol`` (``urls``/``uploads``), ``resource``, ``upload_id``,
``parts``, ``etag`` and ``url`` (its download URL without the query). The
object key is ``files/<hex>/<name>`` or ``uploads/<hex>``.

**Rate limits.** Every 429 (injected faults included) carries
``x-ratelimit-reset``: the epoch second when the client may try again,
consistent with the ``Retry-After`` the fault injector adds.

The checks of what a client sends (the API bodies, the etags of a complete,
signed storage requests) and how a file is split into parts live in
:mod:`syncd_emulator.wriftai_rules`.
"""

from __future__ import annotations

import email.utils
import hmac
import json
import math
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from syncd_emulator.messages import ApiError, Request, Response, quote_key
from syncd_emulator.service import Route, Service, ServiceContext
from syncd_emulator.store import Session
from syncd_emulator.wriftai_rules import (
    DEFAULT_PART_SIZE,
    MAX_PARTS,
    check_body,
    check_etags,
    check_signed,
    etags_request,
    parse_body,
    problem,
    split_parts,
    upload_request,
    urls_request,
)

STORAGE_OPS = ("wriftai.put", "wriftai.put_part", "wriftai.download")
BAD_SIGNATURE = "The request signature we calculated does not match the signature you provided"
_S3_CODES = {
    403: "AccessDenied",
    404: "NoSuchKey",
    411: "MissingContentLength",
    429: "SlowDown",
    500: "InternalError",
    503: "SlowDown",
}


def _reset_epoch(retry_after: str) -> int:
    """The epoch second a ``Retry-After`` value (seconds or HTTP-date) points at."""
    value = retry_after.strip()
    if value.isdigit():
        return math.ceil(time.time() + int(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return math.ceil(time.time() + 1)
    return math.ceil(when.timestamp())


class _RateLimitHeaders(dict[str, str]):
    """Response headers that keep ``x-ratelimit-reset`` in step with ``Retry-After``.

    The fault injector adds ``Retry-After`` to an injected 429 *after*
    :meth:`WriftAIService.error` built the response; WriftAI's clients read
    ``x-ratelimit-reset`` instead, so it follows whatever ``Retry-After`` says.
    """

    def __setitem__(self, key: str, value: str) -> None:
        super().__setitem__(key, value)
        if key.lower() == "retry-after":
            super().__setitem__("x-ratelimit-reset", str(_reset_epoch(value)))

    def update(self, *args: Any, **kwargs: str) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value


@dataclass(frozen=True)
class _Intent:
    """What a ``/files/urls`` call declared; the signed PUT must match it."""

    name: str
    size: int
    mime_type: str
    resource: str
    expires: int


class WriftAIService(Service):
    """The WriftAI API and its signed storage; see the module docstring for the rules."""

    name = "wriftai"
    prefix = "/wriftai/v1"

    def __init__(self, context: ServiceContext) -> None:
        super().__init__(context)
        self.min_part_size = self.settings.wriftai_part_size
        self.omit_etags = self.settings.wriftai_omit_etags  # part PUTs answered without an etag
        self.empty_without_parts = self.settings.wriftai_empty_without_parts  # urls: [] for 0 B
        self._intents: OrderedDict[str, _Intent] = OrderedDict()  # storage key -> declaration

    def routes(self) -> list[Route]:
        return [
            Route("GET", "/user", "wriftai.user", self.user),
            Route("POST", "/files/urls", "wriftai.initiate", self.create_urls),
            Route("POST", "/uploads", "wriftai.initiate_multipart", self.create_upload),
            Route("POST", "/uploads/{upload_id}/complete", "wriftai.complete", self.complete),
            Route(
                "PUT", "/_storage/uploads/{upload_id}/parts/{number:int}", "wriftai.put_part", self.put_part
            ),
            Route("PUT", "/_storage/{key:path}", "wriftai.put", self.put_file),
            Route("GET", "/_files/{key:path}", "wriftai.download", self.download),
        ]

    def error(self, op: str, status: int, message: str, code: str = "") -> Response:
        if op in STORAGE_OPS:
            code = code or _S3_CODES.get(status, "InvalidRequest")
            response = Response.s3_error(code, message, status)
        elif status == 422:
            try:
                detail = json.loads(code)
            except ValueError:
                detail = [problem(None, "value_error", message)]
            response = Response.json({"detail": detail}, status)
        else:
            response = Response.json({"detail": message}, status)
        if status == 429:  # an injected fault's Retry-After moves the reset along
            response.headers = _RateLimitHeaders(response.headers)
            response.headers["x-ratelimit-reset"] = str(math.ceil(time.time() + 1))
        return response

    # -- API ------------------------------------------------------------------------

    def _auth(self, request: Request) -> None:
        header = request.headers.get("Authorization")
        challenge = {"WWW-Authenticate": "Bearer"}
        if header is None:
            raise ApiError(401, "Not authenticated", headers=challenge)
        scheme, _, value = header.partition(" ")
        expected = self.settings.wriftai_token.encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), expected):
            raise ApiError(401, "Invalid authentication credentials", headers=challenge)

    def _expiry(self) -> int:
        return math.ceil(self.settings.clock() + self.settings.url_ttl)

    def _download_url(self, request: Request, key: str) -> str:
        expires = self._expiry()
        sig = self.signer.sign("GET", key, expires)
        return (
            f"{self.base_url(request)}/_files/{quote_key(key)}?X-Emu-Expires={expires}&X-Emu-Signature={sig}"
        )

    def user(self, request: Request) -> Response:
        self._auth(request)
        return Response.json(
            {
                "account_id": "emulator",
                "name": "emulator",
                "avatar_url": "",
                "display_name": "syncd emulator",
                "bio": None,
                "location": None,
                "company": None,
                "created_at": "2026-01-01T00:00:00Z",
                "updated_at": None,
                "urls": None,
            }
        )

    def create_urls(self, request: Request) -> Response:
        self._auth(request)
        name, size, resource, mime = urls_request(parse_body(request))
        safe = name.replace("/", "_").replace("\\", "_")
        key = f"files/{uuid.uuid4().hex[:16]}/{safe}"
        intent = _Intent(name, size, mime, resource, self._expiry())
        now = self.settings.clock()
        with self._lock:
            while self._intents and next(iter(self._intents.values())).expires < now:
                self._intents.popitem(last=False)  # its URL has expired: nothing can use it
            self._intents[key] = intent
        sig = self.signer.sign("PUT", key, mime, size, intent.expires)
        upload_url = (
            f"{self.base_url(request)}/_storage/{quote_key(key)}"
            f"?X-Emu-Expires={intent.expires}&X-Emu-Signature={sig}"
        )
        return Response.json({"upload_url": upload_url, "download_url": self._download_url(request, key)})

    def create_upload(self, request: Request) -> Response:
        self._auth(request)
        size, mime = upload_request(parse_body(request))
        part_size, count = split_parts(size, self.min_part_size)
        if size == 0 and self.empty_without_parts:
            count = 0
        key = f"uploads/{uuid.uuid4().hex}"
        session = self.sessions.create(
            key, {"size": size, "mime_type": mime, "part_size": part_size, "count": count}
        )
        expires = self._expiry()
        base = f"{self.base_url(request)}/_storage/uploads/{session.id}/parts"
        urls = []
        for number in range(1, count + 1):
            length = min(part_size, size - (number - 1) * part_size)
            sig = self.signer.sign("PUT", session.id, number, mime, length, expires)
            urls.append(f"{base}/{number}?X-Emu-Size={length}&X-Emu-Expires={expires}&X-Emu-Signature={sig}")
        return Response.json({"id": session.id, "urls": urls, "part_size": part_size})

    def complete(self, request: Request) -> Response:
        self._auth(request)
        session = self.sessions.get(request.params["upload_id"])
        if session is None or session.state == "aborted":
            raise ApiError(404, "Upload not found")
        etags = etags_request(parse_body(request))
        with session.lock:
            if session.state != "completed":
                self._finish(session, etags, request)
        return Response.json({"download_url": self._download_url(request, session.key)})

    def _finish(self, session: Session, etags: list[str], request: Request) -> None:
        """Check the etags, assemble the parts into the object, close the session."""
        check_etags(session, etags)
        count = int(session.info["count"])
        path, size, sha256, etag = self.sessions.assemble(session, list(range(1, count + 1)))
        if size != session.info["size"]:  # the signed part lengths make this impossible
            path.unlink(missing_ok=True)
            raise ApiError(400, f"The parts add up to {size} bytes, not the declared {session.info['size']}")
        url = self._download_url(request, session.key).partition("?")[0]
        self.store.put(
            self.name, session.key, path, size=size, sha256=sha256, filename="",
            content_type=session.info["mime_type"],
            extra={"protocol": "uploads", "upload_id": session.id, "parts": count,
                   "etag": etag, "url": url},
        )  # fmt: skip
        self.sessions.close(session, "completed", {"key": session.key})

    # -- signed storage ---------------------------------------------------------------

    def _verify(self, request: Request, *fields: object) -> None:
        if not self.signer.verify(request.arg("X-Emu-Signature") or "", *fields):
            raise ApiError(403, BAD_SIGNATURE, "SignatureDoesNotMatch")

    def put_file(self, request: Request) -> Response:
        key = request.params["key"]
        expires = check_signed(request, self.settings.clock())
        with self._lock:
            intent = self._intents.get(key)
        if intent is None:  # intents outlive their URLs: no intent, no valid signature
            raise ApiError(403, BAD_SIGNATURE, "SignatureDoesNotMatch")
        self._verify(request, "PUT", key, intent.mime_type, intent.size, expires)
        check_body(request, intent.mime_type, intent.size, "declared size")
        path = self.store.temp_path()
        digest = request.save_to(path)
        etag = f'"{digest.md5}"'
        url = self._download_url(request, key).partition("?")[0]
        self.store.put(
            self.name, key, path, size=digest.size, sha256=digest.sha256, filename=intent.name,
            content_type=intent.mime_type,
            extra={"protocol": "urls", "resource": intent.resource, "etag": etag, "url": url},
        )  # fmt: skip
        return Response(200, b"", {"ETag": etag})

    def put_part(self, request: Request) -> Response:
        upload_id, number = request.params["upload_id"], int(request.params["number"])
        expires = check_signed(request, self.settings.clock())
        session = self.sessions.get(upload_id)
        if session is None:
            raise ApiError(404, "The specified upload does not exist", "NoSuchUpload")
        size_text = request.arg("X-Emu-Size") or ""
        mime = session.info["mime_type"]
        self._verify(request, "PUT", upload_id, number, mime, size_text, expires)
        if session.state != "active" or not 1 <= number <= session.info["count"]:
            raise ApiError(404, f"The upload is {session.state}", "NoSuchUpload")
        check_body(request, mime, int(size_text), "part length")
        path = self.store.temp_path()
        digest = request.save_to(path)
        etag = f'"{digest.md5}"'
        with session.lock:
            if session.state != "active":  # completed while the body arrived
                path.unlink(missing_ok=True)
                raise ApiError(404, f"The upload is {session.state}", "NoSuchUpload")
            self.sessions.add_part(session, number, path, digest.size, etag)
            if self.omit_etags:
                session.parts[number]["answered"] = False
                session.save()
                return Response(200, b"")
        return Response(200, b"", {"ETag": etag})

    def download(self, request: Request) -> Response:
        key = request.params["key"]
        expires = check_signed(request, self.settings.clock())
        self._verify(request, "GET", key, expires)
        meta = self.store.get(self.name, key)
        if meta is None:
            raise ApiError(404, "The specified key does not exist", "NoSuchKey")
        data = Path(meta["path"]).read_bytes()
        return Response(
            200,
            data,
            {
                "Content-Type": meta["content_type"] or "application/octet-stream",
                "ETag": str(meta.get("etag", "")),
            },
        )


def find(services: Iterable[Service]) -> WriftAIService:
    """The WriftAI service among ``services`` (``Emulator.services``), for tests."""
    for service in services:
        if isinstance(service, WriftAIService):
            return service
    raise LookupError("the emulator serves no WriftAI")


__all__ = ["DEFAULT_PART_SIZE", "MAX_PARTS", "WriftAIService", "find", "split_parts"]
