"""Lilt v2 uploads (protocols.md §1): a presigned PUT, or S3-style multipart.

Files up to ``multipart_threshold`` bytes take the *single* flow::

    POST {base}/v2/upload/s3/params  {"filename", "type", "metadata": {...}}  -> {url, key, method}
    PUT  url  (the bytes; Content-Type and Content-Length; no credentials)

Larger files take the *multipart* flow, driven by :mod:`._chunked`::

    POST   {base}/v2/upload/s3/multipart                 (same body)  -> {uploadId, key}
    GET    {base}/v2/upload/s3/multipart/{uploadId}/{n}?s3Key=..&size=..  -> {url, method}
    PUT    url  (part n)                                           -> ETag header
    POST   {base}/v2/upload/s3/multipart/{uploadId}/complete?s3Key=..  {"parts": [...]}
    DELETE {base}/v2/upload/s3/multipart/{uploadId}?s3Key=..          (abort)

Credentials go only to the API, as ``Authorization: Basic base64(KEY:KEY)``;
never as ``key=`` in a query (the curl examples reuse ``key`` for the storage
key, see protocols.md §1.4). Nothing sent to storage carries them.

Resume state (no URLs: they carry signatures)::

    multipart: {"v": 1, "kind": "multipart", "session": {"upload_id", "key"},
                "part_size": P, "size": N, "parts": {"1": "\\"etag\\"", ...}}

A single upload has none: it is one PUT, sent again whole after a crash (a
fresh URL and key; resume state from an older syncd, ``{"kind": "single"}``,
is ignored). A multipart upload sends only the parts missing from ``parts``,
re-signing each one, then completes.

Parts are ``part_size`` bytes, every one but the last: Lilt's rule is
8 MiB ("Make sure to set the part size to 8MB (8388608 bytes)", the
sign_upload_part description), so parts never grow; a file that would need
more than 10,000 parts (above 78.125 GiB at 8 MiB) is refused (permanent).

The API client, the single PUT and the part loop are the shared kit's
(:mod:`._api`, :mod:`._chunked`); this module holds Lilt's data and requests.

Errors: API 401/403 are :class:`~syncd.errors.FatalError`; a storage 403 is
an expired signature (re-sign and retry at once, bounded); a 404 for a
multipart session means Lilt forgot it (start a new one); a complete that
answers 200 without ``"success": true`` is retryable (S3 can report errors
with a 200). An API 429 is retryable after ``Retry-After``, or after
Lilt's documented 60 s when the answer has none (:data:`QUOTA_WAIT`).
Everything else is mapped by :mod:`syncd.http`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar
from urllib.parse import quote

import httpx

from syncd import redact
from syncd.destinations import _chunked
from syncd.destinations._api import Api, RateLimit, basic, put_signed
from syncd.destinations._chunked import Opened, Parallel, Part, PartRules, SessionLost, Spec
from syncd.destinations.base import Capabilities, Checkpoint, Receipt, Source, UploadItem
from syncd.destinations.options import PART_SIZE, GiB, LiltOptions, MiB
from syncd.errors import PermanentError, RetryableError, UploadError, describe
from syncd.http import require

log = logging.getLogger(__name__)

SCAN_TIMEOUT = 300.0  # seconds wait_for_scan polls before giving up (the upload stands)
SCAN_FIRST_DELAY = 1.0
SCAN_MAX_DELAY = 15.0
QUOTA_WAIT = 60.0  # "Once over [the quota], the client must wait 60 s" (lilt-python README)


def _api(options: LiltOptions, client: httpx.Client) -> Api:
    """The Lilt API: ``Basic base64(KEY:KEY)``; over the quota, Retry-After when Lilt
    sends one, else its documented 60 s; a 404 for a multipart session means it is gone."""
    key = options.api_key.reveal()
    return Api(
        "lilt",
        options.base_url,
        client,
        auth=basic(key, key),
        ok=(200, 201),
        rate_limit=RateLimit(default=QUOTA_WAIT),
        lost=(404,),
    )


def _initiate_body(item: UploadItem, size: int) -> dict[str, Any]:
    metadata: dict[str, Any] = {"size": size, "labels": list(item.labels), "uuid": item.uuid}
    if item.category is not None:
        metadata["category"] = item.category
    return {"filename": item.name, "type": item.content_type, "metadata": metadata}


def _put_url(data: Any, *, what: str) -> str:
    """The presigned URL of a params/sign answer, insisting on method PUT."""
    url = require(data, "url", what=what)
    method = data.get("method") or "PUT"
    if not isinstance(method, str) or method.upper() != "PUT":
        raise PermanentError(f"{what}: the server asks for method {method!r}; syncd only PUTs")
    return str(url)


class _Multipart:
    """Lilt's multipart protocol as a :class:`~._chunked.ChunkedService`."""

    kind = "multipart"
    session_fields: Mapping[str, Spec] = {"upload_id": str, "key": str}

    def __init__(self, api: Api, options: LiltOptions) -> None:
        self.api = api
        # Exactly part_size (Lilt's 8 MiB) for every part but the last, never grown:
        # a file beyond 10,000 parts is refused rather than sent in parts Lilt did not ask for.
        self.rules = PartRules(
            part_size=options.part_size,
            min_size=options.part_size,
            max_size=options.part_size,
            max_parts=10_000,
            empty_parts=1,
        )
        # an upload begun before part_size changed goes on in its own size (any S3 allows)
        self.resume_rules = PartRules(min_size=5 * MiB, max_size=5 * GiB, max_parts=10_000, empty_parts=1)

    def open(self, item: UploadItem, source: Source, part_size: int) -> Opened:
        what = "lilt: initiate multipart upload"
        data = self.api.call(
            "POST", "/v2/upload/s3/multipart", what=what, body=_initiate_body(item, source.size)
        )
        upload_id = require(data, "uploadId", what=what)
        key = require(data, "key", what=what)
        return Opened({"upload_id": upload_id, "key": key})

    def _path(self, session: dict[str, Any], suffix: str = "") -> str:
        return f"/v2/upload/s3/multipart/{quote(session['upload_id'], safe='')}{suffix}"

    def send_part(self, session: dict[str, Any], part: Part) -> str:
        what = f"lilt: sign part {part.number}"
        # Signed afresh on every attempt, so an expired URL is simply sent again.
        # The numeric path segment: lilt-python 3.1.0 sends a literal "partNumber" (§1.4.2).
        data = self.api.call(
            "GET",
            self._path(session, f"/{part.number}"),
            what=what,
            params={"s3Key": session["key"], "size": part.size},
            session=True,
        )
        url = _put_url(data, what=what)
        what = f"lilt: PUT part {part.number} to storage"
        response = self.api.put(url, part.stream(), size=part.size, what=what, session=True)
        etag = response.headers.get("ETag")
        if not etag:
            raise RetryableError(f"{what}: storage answered without an ETag", garbled=True)
        return str(etag)  # exactly as returned, quotes included: complete wants it back verbatim

    def finish(self, session: dict[str, Any], parts: list[tuple[int, str]]) -> Receipt:
        what = "lilt: complete multipart upload"
        body = {"parts": [{"ETag": etag, "PartNumber": n} for n, etag in parts]}
        data = self.api.call(
            "POST",
            self._path(session, "/complete"),
            what=what,
            params={"s3Key": session["key"]},
            body=body,
            session=True,
        )
        if not isinstance(data, dict) or data.get("success") is not True:
            raise RetryableError(f"{what}: the server did not confirm success", garbled=True)
        location = data.get("location")
        return Receipt(
            remote_id=session["key"],
            url=redact.strip_query(location) if isinstance(location, str) and location else None,
            details={"method": "multipart", "upload_id": session["upload_id"], "parts": len(parts)},
        )

    def abort(self, session: dict[str, Any]) -> None:
        with contextlib.suppress(SessionLost):  # already gone (completed or cancelled)
            self.api.call(
                "DELETE",
                self._path(session),
                what="lilt: cancel multipart upload",
                params={"s3Key": session["key"]},
                session=True,
            )


class LiltDestination:
    """Uploads to Lilt; see the module docstring for the protocol and resume state."""

    TYPE: ClassVar[str] = "lilt"
    CAPABILITIES: ClassVar[Capabilities] = Capabilities(
        labels="metadata.labels", category="metadata.category"
    )
    Options: ClassVar[type] = LiltOptions

    def __init__(
        self,
        name: str,
        options: LiltOptions,
        client: httpx.Client,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.options = options
        self.client = client
        self._api = _api(options, client)
        self._multipart = _Multipart(self._api, options)
        self._parallel = Parallel.of(options)
        self._sleep = sleep
        self._clock = clock

    def upload(
        self,
        item: UploadItem,
        source: Source,
        resume: dict[str, Any] | None,
        checkpoint: Checkpoint,
    ) -> Receipt:
        # A multipart upload in flight stays multipart even if the threshold changed since.
        in_flight = _chunked.is_resume_for(self._multipart, resume)
        if source.size > self.options.multipart_threshold or in_flight:
            receipt = _chunked.run(self._multipart, item, source, resume, checkpoint, parallel=self._parallel)
        else:
            receipt = self._upload_single(item, source)
        if self.options.wait_for_scan:
            status = self._wait_for_scan(item.name)
            details = {**receipt.details, "scan_status": status}
            receipt = Receipt(receipt.remote_id, receipt.url, details)
        return receipt

    def _upload_single(self, item: UploadItem, source: Source) -> Receipt:
        body = _initiate_body(item, source.size)

        def sign() -> tuple[str, str]:
            what = "lilt: initiate upload"
            data = self._api.call("POST", "/v2/upload/s3/params", what=what, body=body)
            key = require(data, "key", what=what)
            return _put_url(data, what=what), key

        url, key = put_signed(
            self._api, sign, source, content_type=item.content_type, what="lilt: PUT to storage"
        )
        return Receipt(remote_id=key, url=redact.strip_query(url), details={"method": "single"})

    def _wait_for_scan(self, filename: str) -> str:
        """Poll ``GET /v2/upload`` until this file's status leaves ``pending``.

        Never fails the upload (the bytes are confirmed already): a timeout
        returns ``"pending"``, a file no longer listed ``"unlisted"`` and a
        polling error ``"unknown"``.
        """
        deadline = self._clock() + SCAN_TIMEOUT
        delay = SCAN_FIRST_DELAY
        while True:
            try:
                entries = self._api.call("GET", "/v2/upload", what="lilt: list uploads")
            except UploadError as exc:
                log.warning("lilt: cannot poll the scan status of %r: %s", filename, describe(exc))
                return "unknown"
            mine = (
                [e for e in entries if isinstance(e, dict) and e.get("filename") == filename]
                if isinstance(entries, list)
                else []
            )
            if not mine:
                return "unlisted"
            newest = max(mine, key=lambda e: (str(e.get("created_at") or ""), str(e.get("id") or "")))
            status = str(newest.get("status") or "unknown")
            if status != "pending":
                return status
            if self._clock() + delay > deadline:
                log.warning("lilt: %r is still pending its scan after %.0fs", filename, SCAN_TIMEOUT)
                return "pending"
            self._sleep(delay)
            delay = min(delay * 2, SCAN_MAX_DELAY)

    def abort(self, resume: dict[str, Any]) -> None:
        """Cancel a multipart upload in ``resume``; single uploads hold nothing to release."""
        _chunked.abort(self._multipart, resume)

    def probe(self) -> str:
        data = self._api.call("GET", "/v2/upload", what="lilt: list uploads")
        if not isinstance(data, list):
            raise RetryableError("lilt: list uploads: the answer is not a list", garbled=True)
        return f"ok, {len(data)} pending uploads"

    def close(self) -> None:
        return None


__all__ = ["PART_SIZE", "LiltDestination", "LiltOptions"]
