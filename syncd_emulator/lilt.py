"""Lilt API v2 uploads (protocols.md §1), emulated strictly, under ``/lilt``.

The API (``/lilt/v2/...``) takes Basic ``base64(KEY:KEY)`` or ``key=KEY``;
anything else is 401. Every API error is ``{"message": "..."}``.

The presigned "cloud storage" lives at ``/lilt/_storage/<key>``. Its URLs
carry ``X-Emu-Expires`` (epoch seconds) and ``X-Emu-Signature`` (HMAC over
method, key, content type and expiry; for parts also upload id, part number
and ``X-Emu-Size``). A storage PUT is answered like S3: 200 with a quoted-MD5
``ETag``, or 403/404 with an XML ``<Error>``. It is refused (403) when the
signature is missing or wrong, the URL has expired (``Request has expired``),
API credentials are sent along (an ``Authorization`` header or ``key=``), the
``Content-Type`` differs from the ``type`` given at initiate, there is no
``Content-Length``, or the length differs from ``metadata.size`` (single PUT)
or from the signed part size.

Multipart follows S3: parts 1..10000, ETags compared byte for byte (quotes
included), parts listed in ascending order, and their total equal to
``metadata.size`` when that was given. On top of S3, Lilt's own rule: every
part but the last is ``part_size`` bytes, 8 MiB by default ("Make sure to
set the part size to 8MB (8388608 bytes)", the sign_upload_part
description), and the last one at most that. Signing a part of another size
is a 400 (checked against ``metadata.size`` when it was given), and so is a
complete that lists one. ``part_size`` is set by ``Emulator(lilt_part_size=)``
or ``syncd emulate --lilt-part-size``; 0 accepts any size S3 accepts (every
part but the last at least 5 MiB, all of the same size). A repeated
complete answers 200 again without storing twice; a cancelled or unknown
upload id is 404.

Upload records (``GET /v2/upload[/{id}]``): each stored object gets a numeric
id. Its status is ``pending`` for the first poll that sees it within
``SCAN_SECONDS`` of the upload and ``complete`` from then on (a later poll, or
any poll after ``SCAN_SECONDS``), so a poller sees ``pending`` at most once.

The checks of what a client sends (the API key, initiate bodies, part sizes,
complete bodies and their parts, presigned storage requests) live in
:mod:`syncd_emulator.lilt_rules`.
"""

from __future__ import annotations

import math
import uuid
from collections import OrderedDict
from dataclasses import asdict
from pathlib import Path
from typing import Any

from syncd_emulator.lilt_rules import (
    Spec,
    bad,
    check_api_key,
    check_part_size,
    check_parts,
    check_presigned,
    parse_complete,
    parse_spec,
    spec_from_query,
)
from syncd_emulator.messages import ApiError, Request, Response, parse_uint, quote_key
from syncd_emulator.service import Route, Service, ServiceContext

MIB = 1024 * 1024
PART_SIZE = 8 * MIB  # Lilt's documented part size
MAX_PARTS = 10_000
MAX_BULK = 100
SCAN_SECONDS = 1.0
STORAGE_OPS = ("lilt.put", "lilt.put_part")
BAD_SIGNATURE = "The request signature we calculated does not match the signature you provided"
NO_LENGTH = "You must provide the Content-Length HTTP header"
NO_SUCH_UPLOAD = "The specified multipart upload does not exist"
_S3_CODES = {
    400: "InvalidRequest",
    403: "AccessDenied",
    404: "NoSuchUpload",
    429: "SlowDown",
    500: "InternalError",
    503: "SlowDown",
}


def _new_key(filename: str) -> str:
    safe = filename.replace("/", "_").replace("\\", "_")
    return f"uploads/emulator/{uuid.uuid4().hex[:16]}/{safe}"


class LiltService(Service):
    """The Lilt API and its presigned storage; see the module docstring for the rules."""

    name = "lilt"
    prefix = "/lilt"

    def __init__(self, context: ServiceContext) -> None:
        super().__init__(context)
        self._intents: OrderedDict[str, tuple[Spec, int]] = OrderedDict()  # key -> (spec, expires)
        self._by_id = {
            m["upload_id"]: m["key"]
            for m in self.store.uploads(self.name)
            if isinstance(m.get("upload_id"), int)
        }
        self._next_id = max(self._by_id, default=0) + 1
        self._stored_at: dict[int, float] = {}  # upload id -> clock() when (re)stored
        self._polled: set[int] = set()  # ids already reported as pending once
        self.part_size = self.settings.lilt_part_size  # the one size accepted; 0: any

    def routes(self) -> list[Route]:
        mp = "/v2/upload/s3/multipart"
        return [
            Route("POST", "/v2/upload/s3/params", "lilt.initiate", self.initiate),
            Route("GET", "/v2/upload/s3/params", "lilt.initiate_get", self.initiate_get),
            Route("POST", mp, "lilt.initiate_multipart", self.initiate_multipart),
            Route("POST", mp + "/{uploadId}/complete", "lilt.complete", self.complete),
            Route("GET", mp + "/{uploadId}/{partNumber}", "lilt.sign_part", self.sign_part),
            Route("DELETE", mp + "/{uploadId}", "lilt.cancel", self.cancel),
            Route("GET", "/v2/upload", "lilt.list", self.list_uploads),
            Route("GET", "/v2/upload/{uploadId}", "lilt.get", self.get_upload),
            Route(
                "PUT",
                "/_storage/{key:path}",
                lambda r: "lilt.put_part" if "partNumber" in r.query else "lilt.put",
                self.storage_put,
            ),
        ]

    def error(self, op: str, status: int, message: str, code: str = "") -> Response:
        if op in STORAGE_OPS:
            code = code or _S3_CODES.get(status, "InternalError")
            return Response.s3_error(code, message, status)
        return Response.json({"message": message}, status)

    # -- API: auth and initiate ---------------------------------------------------

    def _auth(self, request: Request) -> list[str]:
        """Check the API key; return the ``key=`` values left for the s3 key (curl form)."""
        return check_api_key(request, self.settings.lilt_key)

    def _expiry(self) -> int:
        return math.ceil(self.settings.clock() + self.settings.url_ttl)

    def _presign(self, request: Request, spec: Spec) -> dict[str, str]:
        key, expires = _new_key(spec.filename), self._expiry()
        now = self.settings.clock()
        with self._lock:
            while self._intents and next(iter(self._intents.values()))[1] < now:
                self._intents.popitem(last=False)  # forget intents whose URL has expired
            self._intents[key] = (spec, expires)
        sig = self.signer.sign("PUT", key, spec.type, expires)
        url = (
            f"{self.base_url(request)}/_storage/{quote_key(key)}"
            f"?X-Emu-Expires={expires}&X-Emu-Signature={sig}"
        )
        return {"url": url, "key": key, "method": "PUT"}

    def _bulk(self, request: Request, make: Any) -> Response:
        self._auth(request)
        body = request.json()
        if isinstance(body, list):
            if not 1 <= len(body) <= MAX_BULK:
                raise bad(f"a bulk request takes 1 to {MAX_BULK} items, got {len(body)}")
            specs = [parse_spec(item, f"[{i}].") for i, item in enumerate(body)]
            return Response.json([make(request, spec) for spec in specs])
        return Response.json(make(request, parse_spec(body)))

    def initiate(self, request: Request) -> Response:
        return self._bulk(request, self._presign)

    def initiate_get(self, request: Request) -> Response:
        self._auth(request)
        return Response.json(self._presign(request, spec_from_query(request)))

    def initiate_multipart(self, request: Request) -> Response:
        def make(_: Request, spec: Spec) -> dict[str, str]:
            key = _new_key(spec.filename)
            session = self.sessions.create(key, asdict(spec))
            return {"uploadId": session.id, "key": key}

        return self._bulk(request, make)

    # -- API: multipart ---------------------------------------------------------

    def _session(self, request: Request, leftover: list[str]) -> Any:
        """The active-or-completed session named in the path, its s3 key checked."""
        session = self.sessions.get(request.params["uploadId"])
        if session is None or session.state == "aborted":
            raise ApiError(404, "NoSuchUpload: the multipart upload does not exist or was cancelled")
        s3_key = request.arg("s3Key") or (leftover[0] if leftover else None)
        if not s3_key:
            raise bad("s3Key is required")
        if s3_key != session.key:
            raise bad("s3Key does not match this uploadId")
        return session

    def sign_part(self, request: Request) -> Response:
        session = self._session(request, self._auth(request))
        if session.state != "active":
            raise ApiError(404, "NoSuchUpload: the multipart upload is already complete")
        number, size = parse_uint(request.params["partNumber"]), parse_uint(request.arg("size"))
        if number is None or not 1 <= number <= MAX_PARTS:
            raise bad(f"partNumber must be an integer from 1 to {MAX_PARTS}")
        if size is None:
            raise bad("size is required and must be an integer >= 0")
        check_part_size(self.part_size, session, number, size)
        expires = self._expiry()
        sig = self.signer.sign("PUT", session.key, "", expires, session.id, number, size)
        url = (
            f"{self.base_url(request)}/_storage/{quote_key(session.key)}?partNumber={number}"
            f"&uploadId={session.id}&X-Emu-Size={size}&X-Emu-Expires={expires}"
            f"&X-Emu-Signature={sig}"
        )
        return Response.json({"url": url, "method": "PUT"})

    def complete(self, request: Request) -> Response:
        session = self._session(request, self._auth(request))
        parts = parse_complete(request.json())
        with session.lock:
            if session.state == "completed":
                return Response.json(session.result)  # idempotent repeat: nothing stored again
            if session.state != "active":
                raise ApiError(404, "NoSuchUpload: the multipart upload was cancelled")
            numbers = check_parts(self.part_size, session, parts)
            path, size, sha256, etag = self.sessions.assemble(session, numbers)
            location = f"{self.base_url(request)}/_storage/{quote_key(session.key)}"
            extra = {"etag": etag, "location": location, "parts": len(numbers)}
            self._store(session.key, path, size, sha256, session.info, extra)
            result = {"success": True, "location": location}
            self.sessions.close(session, "completed", result)
        return Response.json(result)

    def cancel(self, request: Request) -> Response:
        session = self._session(request, self._auth(request))
        with session.lock:
            if session.state != "active":
                raise ApiError(404, f"NoSuchUpload: the multipart upload is already {session.state}")
            self.sessions.close(session, "aborted")
        return Response.json({"success": True, "message": "Multipart upload cancelled successfully"})

    # -- API: upload records ----------------------------------------------------

    def _record(self, upload_id: int) -> dict[str, Any] | None:
        key = self._by_id.get(upload_id)
        meta = self.store.get(self.name, key) if key is not None else None
        if meta is None:
            return None
        with self._lock:
            stored_at = self._stored_at.get(upload_id)
            fresh = stored_at is not None and self.settings.clock() - stored_at < SCAN_SECONDS
            status = "pending" if fresh and upload_id not in self._polled else "complete"
            if status == "pending":
                self._polled.add(upload_id)
        return {
            "id": upload_id,
            "filename": meta["filename"],
            "status": status,
            "created_at": meta["created_at"][:19] + "Z",
        }

    def list_uploads(self, request: Request) -> Response:
        self._auth(request)
        ids_text, statuses = request.arg("ids"), request.arg("statuses")
        wanted = [parse_uint(x.strip()) for x in (ids_text or "").split(",") if x.strip()]
        if None in wanted:
            raise bad("ids must be a comma-separated list of integers")
        ids = [x for x in wanted if x is not None] if wanted else sorted(self._by_id)
        records = [r for r in map(self._record, ids) if r is not None]
        if statuses:
            allowed = {x.strip() for x in statuses.split(",")}
            records = [r for r in records if r["status"] in allowed]
        return Response.json(records)

    def get_upload(self, request: Request) -> Response:
        self._auth(request)
        upload_id = parse_uint(request.params["uploadId"])
        if upload_id is None:
            raise bad("uploadId must be an integer")
        record = self._record(upload_id)
        if record is None:
            raise ApiError(404, f"upload {upload_id} not found")
        return Response.json(record)

    # -- storage --------------------------------------------------------------

    def storage_put(self, request: Request) -> Response:
        key = request.params["key"]
        expires = check_presigned(request, self.settings.clock())
        if "partNumber" in request.query:
            return self._put_part(request, key, expires)
        return self._put_object(request, key, expires)

    def _verify(self, request: Request, *fields: object) -> int:
        """Check the signature over ``fields``; return the Content-Length."""
        if not self.signer.verify(request.arg("X-Emu-Signature") or "", *fields):
            raise ApiError(403, BAD_SIGNATURE, "SignatureDoesNotMatch")
        length = request.content_length
        if length is None:
            raise ApiError(403, NO_LENGTH, "MissingContentLength")
        return length

    def _put_object(self, request: Request, key: str, expires: int) -> Response:
        with self._lock:
            intent = self._intents.get(key)
        if intent is None:  # intents outlive their URLs: no intent, no valid signature
            raise ApiError(403, BAD_SIGNATURE, "SignatureDoesNotMatch")
        spec = intent[0]
        length = self._verify(request, "PUT", key, spec.type, expires)
        sent_type = request.headers.get("Content-Type")
        if sent_type != spec.type:
            message = f"Content-Type {sent_type!r} does not match the signed type {spec.type!r}"
            raise ApiError(403, message, "SignatureDoesNotMatch")
        if spec.size is not None and length != spec.size:
            message = f"Content-Length {length} does not match the declared metadata.size {spec.size}"
            raise ApiError(403, message, "SignatureDoesNotMatch")
        path = self.store.temp_path()
        digest = request.save_to(path)
        etag = f'"{digest.md5}"'
        self._store(key, path, digest.size, digest.sha256, asdict(spec), {"etag": etag})
        return Response(200, b"", {"ETag": etag})

    def _put_part(self, request: Request, key: str, expires: int) -> Response:
        upload_id, number, size = (request.arg(n) or "" for n in ("uploadId", "partNumber", "X-Emu-Size"))
        length = self._verify(request, "PUT", key, "", expires, upload_id, number, size)
        session = self.sessions.get(upload_id)
        if session is None or session.state != "active" or session.key != key:
            raise ApiError(404, NO_SUCH_UPLOAD, "NoSuchUpload")
        if str(length) != size:
            message = f"Content-Length {length} does not match the signed part size {size}"
            raise ApiError(403, message, "SignatureDoesNotMatch")
        path = self.store.temp_path()
        digest = request.save_to(path)
        etag = f'"{digest.md5}"'
        with session.lock:
            if session.state != "active":  # cancelled or completed while the body arrived
                path.unlink(missing_ok=True)
                raise ApiError(404, NO_SUCH_UPLOAD, "NoSuchUpload")
            self.sessions.add_part(session, int(number), path, digest.size, etag)
        return Response(200, b"", {"ETag": etag})

    def _store(
        self,
        key: str,
        path: Path,
        size: int,
        sha256: str,
        info: dict[str, Any],
        extra: dict[str, Any],
    ) -> None:
        """Store the object (``info`` is the initiate Spec as a dict) and give it an
        upload id, kept when the same key is stored again."""
        with self._lock:
            old = self.store.get(self.name, key)
            upload_id = old["upload_id"] if old and "upload_id" in old else self._next_id
            if upload_id == self._next_id:
                self._next_id += 1
            self.store.put(
                self.name, key, path, size=size, sha256=sha256, filename=info["filename"],
                content_type=info["type"], labels=info.get("labels") or (),
                category=info.get("category"), uuid=info.get("uuid"),
                extra={**extra, "upload_id": upload_id},
            )  # fmt: skip
            self._by_id[upload_id] = key
            self._stored_at[upload_id] = self.settings.clock()
            self._polled.discard(upload_id)
