"""Xvid MediaHub uploads (protocols.md §2), emulated strictly, under ``/xvid/v1``.

The API answers JSON only; every API error, injected faults included, is
``{"error": {"error_code": "0x...", "error_message": "..."}}`` with the
documented codes (400 ``0x0230001``, 403 ``0x0000003``, 404 ``0x0230002``,
500 ``0x0000001``).

``POST /oauth2/token/``
    form-encoded ``grant_type=client_credential`` (singular; the plural is a
    400), ``client_id``, ``client_secret``, ``scope`` (comma list of known
    scopes) and optional ``expires_in`` -> ``{"access_token", "expires_in":
    "7200"}`` (a string, as documented). Wrong client credentials: 403.
``Authorization: Bearer``
    required on every other API call; missing, unknown or expired: 403
    ``0x0000003`` "Invalid access token". Writes need the ``mediahub`` or
    ``mediahub_write`` scope, reads also accept ``mediahub_read``.
``POST /files/uploads`` (no trailing slash)
    301 to ``/files/uploads/`` with the same query, as a Django-style API
    whose canonical paths end in ``/`` answers (the curl example and
    ``/oauth2/token/`` have the slash; the redirect itself is an assumption).
``POST /files/uploads/?object_key=&pipeline_id=[&expires_at=&ip=]``
    opens a session: ``{"upload": {id, file, pipeline, object_key, status:
    "UPLOADING", nb_chunks: 0, storage_type: "S3", form_post_url,
    form_post_params}}``; an ``object_key`` with an empty, ``.`` or ``..``
    segment is a 400 (keys stay under the pipeline root). The policy (base64 JSON: expiration ``url_ttl``
    ahead, the 2017 conditions) is signed like AWS signature v2 (base64
    HMAC-SHA1) with a per-process secret.
``POST /_s3/<bucket>/`` (the ``form_post_url``)
    an S3 browser POST: ``multipart/form-data`` with every form field, then
    ``file`` as the **last** field, no ``Authorization``. 201 with an XML
    ``PostResponse`` (and ``ETag``/``Location`` headers), or an S3 XML
    ``<Error>``: 400 for a missing field, a repeated field, a field after
    ``file``, a bad ``chunk``/``chunks`` or an ``Authorization`` header; 403
    for a wrong access key id or signature, an expired policy, a failed
    policy condition (the key must start with ``tmp/<pipeline_id>/``), an
    extra field, or a session that no longer takes chunks; 412 if the body is
    not multipart; 411 without ``Content-Length``; 400 ``EntityTooLarge`` for
    a file over S3's POST limit of 5 GiB. A post belongs to the session whose
    policy it carries. Like S3, the bucket keeps one object per key: a second
    post to a key replaces the first, whatever its ``chunk``.
``PUT /files/uploads/{id}``  ``{"upload": {"nb_chunks": N}}``
    needs, among the objects posted for the session, chunks ``0..N-1``, each
    once and posted with ``chunks=N`` (else 400 ``0x0230001``): for N = 1 the
    object at the form's ``key``; for N > 1 objects under that key as a
    prefix (syncd names them ``<key>.chunkNNNNN``; Xvid documents no naming,
    so the emulator takes any key that starts with the form's). It
    assembles them in chunk order, stores the object and answers
    ``COMPLETING``. A repeated PUT with the same N answers again.
``GET /files/uploads/{id}``
    the session without ``form_post_params``. After the PUT the status is
    ``COMPLETING`` for at most one poll within ``COMPLETE_SECONDS`` and
    ``COMPLETED`` from then on (the terminal name is a guess: protocols.md
    §2.4 documents only UPLOADING and COMPLETING). ``failure_status`` (a
    knob for tests) replaces ``COMPLETED`` with that status and makes
    ``GET /files/{id}`` answer 404: an outcome no document explains.
``GET /files/{id}``, ``DELETE /files/{id}``
    a completed file (404 before); delete aborts an unfinished session (its
    chunks are dropped) or forgets a completed file (its bytes stay in the
    emulator's listing).

Stored objects: ``service "xvid"``, ``key "<pipeline_id>/<object_key>"``,
``filename`` the object key's last segment, no labels, category or uuid (the
API has no field for them: they can only be part of ``object_key``), plus
``object_key``, ``pipeline_id``, ``upload_id``, ``chunks`` and ``etag``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import posixpath
import re
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode
from xml.sax.saxutils import escape

from syncd_emulator.forms import FormError, FormReader, boundary
from syncd_emulator.messages import ApiError, Request, Response, parse_uint, quote_key
from syncd_emulator.service import Route, Service, ServiceContext
from syncd_emulator.store import Session

BUCKET = "xvid-emulator"
ACCESS_KEY_ID = "AKIAXVIDEMULATOR0000"
TOKEN_TTL = 7200  # seconds, Xvid's documented default
MAX_TOKEN_TTL = 30 * 86400
COMPLETE_SECONDS = 1.0
SCOPES = frozenset({"me", "mediahub", "mediahub_read", "mediahub_write", "mediahub_submit_jobs",
                    "mediahub_download_files", "autograph"})
WRITE = frozenset({"mediahub", "mediahub_write"})
READ = WRITE | {"mediahub_read"}
FORM_FIELDS = ("key", "acl", "success_action_status", "name", "filename", "chunk", "chunks",
               "policy", "signature", "AWSAccessKeyId")
UNSIGNED_FIELDS = frozenset({"policy", "signature", "AWSAccessKeyId", "file"})
FIELDS_LIMIT = 20 * 1024  # S3: the form fields (without the file) are at most 20 KB
MAX_POST = 5 * 1024**3  # S3: one POST takes a file of at most 5 GB
S3_OPS = frozenset({"xvid.post_chunk"})
INVALID_INPUT, INVALID_TOKEN, NO_FILE, INTERNAL = "0x0230001", "0x0000003", "0x0230002", "0x0000001"
_CODES = {400: INVALID_INPUT, 403: INVALID_TOKEN, 404: NO_FILE}
_S3_CODES = {400: "InvalidArgument", 403: "AccessDenied", 404: "NoSuchKey", 411: "MissingContentLength",
             412: "PreconditionFailed", 429: "SlowDown", 500: "InternalError", 503: "SlowDown"}
_PIPELINE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _invalid(message: str) -> ApiError:
    return ApiError(400, f"Invalid Input: {message}", INVALID_INPUT)


def _s3(status: int, code: str, message: str) -> ApiError:
    return ApiError(status, message, code)


def _iso(epoch: float) -> str:
    moment = datetime.fromtimestamp(epoch, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _parse_iso(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


class XvidService(Service):
    """The Xvid API and its S3 form-post storage; see the module docstring."""

    name = "xvid"
    prefix = "/xvid/v1"

    def __init__(self, context: ServiceContext) -> None:
        super().__init__(context)
        self.token_ttl = TOKEN_TTL  # default lifetime of new tokens; tests may shorten it
        self._aws_secret = context.signer.sign("xvid", "aws-secret-access-key").encode()
        self._tokens: dict[str, tuple[float, frozenset[str]]] = {}  # token -> (expiry, scopes)
        self._policies: dict[str, str] = {}  # signature -> upload id (a post's session)
        self._last_expiry = 0.0
        self._polled: set[str] = set()  # uploads already reported COMPLETING once
        self.failure_status: str | None = None  # a finished upload's status instead (tests)

    def routes(self) -> list[Route]:
        return [
            Route("POST", "/oauth2/token/", "xvid.token", self.token),
            Route("POST", "/files/uploads", "xvid.redirect", self.add_slash),
            Route("POST", "/files/uploads/", "xvid.open", self.open_upload),  # the curl example's form
            Route("GET", "/files/uploads/{id}", "xvid.status", self.get_upload),
            Route("PUT", "/files/uploads/{id}", "xvid.finish", self.finish),
            Route("GET", "/files/{id}", "xvid.file", self.get_file),
            Route("DELETE", "/files/{id}", "xvid.delete", self.delete_file),
            Route("POST", "/_s3/{bucket}/", "xvid.post_chunk", self.form_post),
            Route("POST", "/_s3/{bucket}", "xvid.post_chunk", self.form_post),
        ]

    def error(self, op: str, status: int, message: str, code: str = "") -> Response:
        if op in S3_OPS:
            code = code or _S3_CODES.get(status, "InternalError")
            xml = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{escape(code)}</Code>'
                   f"<Message>{escape(message)}</Message></Error>")
            return Response.xml(xml, status)
        if not code.startswith("0x"):  # an injected fault carries an S3 code: use Xvid's
            code = _CODES.get(status, INTERNAL if status >= 500 else INVALID_INPUT)
        return Response.json({"error": {"error_code": code, "error_message": message}}, status)

    # -- tokens -------------------------------------------------------------------

    def expire_tokens(self) -> None:
        """Forget every access token, as if all had expired (for tests)."""
        with self._lock:
            self._tokens.clear()

    def token(self, request: Request) -> Response:
        ctype = (request.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "application/x-www-form-urlencoded":
            raise _invalid("the token request must be application/x-www-form-urlencoded")
        try:
            form = parse_qs(request.read_all(64 * 1024).decode(), keep_blank_values=True,
                            strict_parsing=True)
        except (UnicodeDecodeError, ValueError):
            raise _invalid("the token request body is not form-encoded") from None

        def one(name: str, required: bool = True) -> str | None:
            values = form.get(name)
            if values is None and not required:
                return None
            if values is None or len(values) != 1 or not values[0]:
                raise _invalid(f"{name} is required (once)")
            return values[0]

        grant = one("grant_type")
        if grant != "client_credential":
            raise _invalid(f"grant_type must be client_credential, not {grant!r}")
        client_id, client_secret = one("client_id"), one("client_secret")
        scopes = frozenset(s.strip() for s in (one("scope") or "").split(","))
        if not scopes <= SCOPES:
            raise _invalid(f"unknown scope(s) {sorted(scopes - SCOPES)}")
        ttl_text = one("expires_in", required=False)
        ttl = self.token_ttl if ttl_text is None else parse_uint(ttl_text)
        if ttl is None or not 1 <= ttl <= MAX_TOKEN_TTL:
            raise _invalid(f"expires_in must be 1 to {MAX_TOKEN_TTL} seconds")
        want_id, _, want_secret = self.settings.xvid_client.partition(":")
        if not (hmac.compare_digest((client_id or "").encode(), want_id.encode())
                and hmac.compare_digest((client_secret or "").encode(), want_secret.encode())):
            raise ApiError(403, "Invalid client credentials", INVALID_TOKEN)
        token, now = secrets.token_hex(20), self.settings.clock()
        with self._lock:
            self._tokens = {t: e for t, e in self._tokens.items() if e[0] > now}
            self._tokens[token] = (now + ttl, scopes)
        return Response.json({"access_token": token, "expires_in": str(ttl)})

    def _auth(self, request: Request, allowed: frozenset[str]) -> None:
        scheme, _, token = (request.headers.get("Authorization") or "").partition(" ")
        with self._lock:
            entry = self._tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if entry is None or self.settings.clock() >= entry[0]:
            raise ApiError(403, "Invalid access token", INVALID_TOKEN)
        if not entry[1] & allowed:
            raise ApiError(403, f"Invalid access token: the scope needs one of {sorted(allowed)}",
                           INVALID_TOKEN)
        if request.arg("format") not in (None, "json"):
            raise _invalid("the emulator answers JSON only (format=xml is not emulated)")

    # -- sessions -----------------------------------------------------------------

    def open_upload(self, request: Request) -> Response:
        self._auth(request, WRITE)
        object_key, pipeline_id = request.arg("object_key"), request.arg("pipeline_id")
        if not object_key or object_key.startswith("/") or _CONTROL.search(object_key):
            raise _invalid("object_key is required: a key relative to the pipeline root")
        if any(segment in ("", ".", "..") for segment in object_key.split("/")):
            raise _invalid("object_key must not have empty, '.' or '..' segments: it stays "
                           "under the pipeline root")
        if not pipeline_id or not _PIPELINE.fullmatch(pipeline_id):
            raise _invalid("pipeline_id is required")
        key = f"tmp/{pipeline_id}/{object_key}"
        if len(key.encode()) > 1024:
            raise _invalid("object_key is too long (S3 keys are at most 1024 bytes)")
        info: dict[str, Any] = {"object_key": object_key, "pipeline_id": pipeline_id,
                                "nb_chunks": 0}
        for name in ("expires_at", "ip"):
            text = request.arg(name)
            if text is not None and parse_uint(text) is None:
                raise _invalid(f"{name} must be an integer")
            info[name] = parse_uint(text) if text is not None else None
        session = self.sessions.create(key, info)
        policy, signature = self._sign_policy(pipeline_id)
        with self._lock:
            self._policies[signature] = session.id
        params = {"key": key, "acl": "private", "success_action_status": "201",
                  "name": posixpath.basename(object_key), "filename": "", "chunk": "0",
                  "chunks": "1", "policy": policy, "signature": signature,
                  "AWSAccessKeyId": ACCESS_KEY_ID}
        url = f"{self.base_url(request)}/_s3/{BUCKET}/"
        body = {**self._view(session, "UPLOADING"), "form_post_url": url,
                "form_post_params": params}
        return Response.json({"upload": body})

    def add_slash(self, request: Request) -> Response:
        """301 to the same path with a trailing slash, query kept (APPEND_SLASH style)."""
        query = urlencode(request.query, doseq=True)
        location = f"{self.base_url(request)}{request.service_path}/" + (f"?{query}" if query else "")
        return Response(301, b"", {"Location": location})

    def _sign_policy(self, pipeline_id: str) -> tuple[str, str]:
        with self._lock:  # unique expirations make unique policies, so a signature names one session
            expires = max(self.settings.clock() + self.settings.url_ttl, self._last_expiry + 0.001)
            self._last_expiry = expires
        document = {"expiration": _iso(expires), "conditions": [
            {"bucket": BUCKET}, ["starts-with", "$name", ""],
            ["starts-with", "$key", f"tmp/{pipeline_id}/"], ["starts-with", "$filename", ""],
            ["starts-with", "$chunk", ""], ["starts-with", "$chunks", ""], {"acl": "private"},
            {"success_action_status": "201"}]}
        policy = base64.b64encode(json.dumps(document).encode()).decode()
        return policy, self._signature(policy)

    def _signature(self, policy: str) -> str:
        digest = hmac.new(self._aws_secret, policy.encode(), hashlib.sha1).digest()
        return base64.b64encode(digest).decode()

    def _session(self, request: Request) -> Session:
        session = self.sessions.get(request.params["id"])
        if session is None or session.state == "aborted" or session.info.get("deleted"):
            raise ApiError(404, "Requested file does not exist", NO_FILE)
        return session

    def _status(self, session: Session, *, poll: bool) -> str:
        if session.state == "active":
            return "UPLOADING"
        fresh = self.settings.clock() - session.info["completing_at"] < COMPLETE_SECONDS
        with self._lock:
            if fresh and session.id not in self._polled:
                if poll:
                    self._polled.add(session.id)
                return "COMPLETING"
        return self.failure_status or "COMPLETED"

    def _view(self, session: Session, status: str) -> dict[str, Any]:
        info = session.info
        return {"id": session.id, "file": {"id": session.id},
                "pipeline": {"id": info["pipeline_id"]}, "object_key": info["object_key"],
                "status": status, "nb_chunks": info["nb_chunks"], "storage_type": "S3"}

    def get_upload(self, request: Request) -> Response:
        self._auth(request, READ)
        session = self._session(request)
        return Response.json({"upload": self._view(session, self._status(session, poll=True))})

    def finish(self, request: Request) -> Response:
        self._auth(request, WRITE)
        session = self._session(request)
        ctype = (request.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise _invalid("the body must be JSON with Content-Type: application/json")
        body = request.json()
        upload = body.get("upload") if isinstance(body, dict) else None
        nb = upload.get("nb_chunks") if isinstance(upload, dict) else None
        if not isinstance(nb, int) or isinstance(nb, bool) or nb < 1:
            raise _invalid('the body must be {"upload": {"nb_chunks": N}} with N >= 1')
        with session.lock:
            if session.state == "completed":  # a repeated finish: answer again, store nothing
                if session.info["nb_chunks"] != nb:
                    raise _invalid(f"the upload was finished with nb_chunks={session.info['nb_chunks']}")
                return Response.json({"upload": self._view(session, self._status(session, poll=False))})
            if session.state != "active":
                raise ApiError(404, "Requested file does not exist", NO_FILE)
            numbers = self._chunk_objects(session, nb)
            path, size, sha256, etag = self.sessions.assemble(session, numbers)
            self._store(session, path, size, sha256, etag, nb)
            session.info.update(nb_chunks=nb, completing_at=self.settings.clock(), size=size)
            self.sessions.close(session, "completed")
            with self._lock:
                self._policies = {s: u for s, u in self._policies.items() if u != session.id}
        return Response.json({"upload": self._view(session, "COMPLETING")})

    @staticmethod
    def _chunk_objects(session: Session, nb: int) -> list[int]:
        """The stored objects (part slots) that make chunks ``0..nb-1``, in chunk order;
        400 when they do not (PUT's rules in the module docstring)."""
        def wanted(key: str) -> bool:
            return key == session.key if nb == 1 else key.startswith(session.key)

        by_chunk: dict[int, list[tuple[int, dict[str, Any]]]] = {}
        for slot, part in sorted(session.parts.items()):
            if wanted(part.get("key", session.key)):
                by_chunk.setdefault(part.get("chunk", slot - 1), []).append((slot, part))
        got = sorted(by_chunk)
        twice = {c: [p.get("key") for _, p in found] for c, found in by_chunk.items()
                 if len(found) > 1}
        wrong = sorted(c for c, found in by_chunk.items()
                       if any(p.get("chunks") != nb for _, p in found))
        if got != list(range(nb)) or twice or wrong:
            raise _invalid(
                f"nb_chunks is {nb} but the objects posted for this upload hold chunks {got}"
                + (f" (chunks posted under more than one key: {twice})" if twice else "")
                + (f" (chunks {wrong} were posted with another chunks count)" if wrong else "")
                + (" (one object per key: chunks posted under one key replace each other)"
                   if nb > 1 and len(got) < nb else ""))
        return [by_chunk[c][0][0] for c in range(nb)]

    def _store(self, session: Session, path: Path, size: int, sha256: str, etag: str,
               chunks: int) -> None:
        info = session.info
        self.store.put(
            self.name, f"{info['pipeline_id']}/{info['object_key']}", path, size=size,
            sha256=sha256, filename=posixpath.basename(info["object_key"]),
            extra={"object_key": info["object_key"], "pipeline_id": info["pipeline_id"],
                   "upload_id": session.id, "chunks": chunks, "etag": etag,
                   "expires_at": info.get("expires_at")})

    def get_file(self, request: Request) -> Response:
        self._auth(request, READ)
        session = self._session(request)
        if session.state != "completed" or self.failure_status:
            raise ApiError(404, "Requested file does not exist", NO_FILE)
        info = session.info
        return Response.json({"file": {
            "id": session.id, "object_key": info["object_key"],
            "pipeline": {"id": info["pipeline_id"]}, "size": info["size"],
            "created_at": session.created_at}})

    def delete_file(self, request: Request) -> Response:
        self._auth(request, WRITE)
        session = self._session(request)
        with session.lock:
            if session.state == "active":
                self.sessions.close(session, "aborted")
            else:
                session.info["deleted"] = True
                session.save()
        with self._lock:
            self._policies = {s: u for s, u in self._policies.items() if u != session.id}
        return Response.json({"result": {"status": "SUCCESS"}})

    # -- S3 browser POST ------------------------------------------------------------

    def form_post(self, request: Request) -> Response:
        if request.params["bucket"] != BUCKET:
            raise _s3(404, "NoSuchBucket", "The specified bucket does not exist")
        if request.headers.get("Authorization") is not None:
            raise _s3(400, "InvalidArgument", "POST requires exactly one form of authentication: "
                      "the policy; do not send an Authorization header")
        bound = boundary(request.headers.get("Content-Type") or "")
        if bound is None:
            raise _s3(412, "PreconditionFailed",
                      "Bucket POST must be of the enclosure-type multipart/form-data")
        if request.content_length is None:
            raise _s3(411, "MissingContentLength", "You must provide the Content-Length HTTP header")
        if request.content_length > MAX_POST + FIELDS_LIMIT + 64 * 1024:
            raise _s3(400, "EntityTooLarge", f"Your proposed upload exceeds the maximum allowed "
                      f"size of {MAX_POST} bytes for a POST")
        try:
            fields, size, md5, sha256, path = self._read_post(request, bound)
        except FormError as exc:
            code = {"too_large": "MaxPostPreDataLengthExceeded",
                    "encoding": "InvalidArgument"}.get(exc.kind, "MalformedPOSTRequest")
            raise _s3(400, code, f"The body of your POST request is not acceptable: {exc}") from None
        try:
            session, chunk, chunks = self._check_form(request.params["bucket"], fields)
            etag = f'"{md5}"'
            if size > MAX_POST:
                raise _s3(400, "EntityTooLarge", f"Your proposed upload exceeds the maximum "
                          f"allowed size of {MAX_POST} bytes for a POST")
            with session.lock:
                if session.state != "active":
                    raise _s3(403, "AccessDenied", "This upload no longer accepts chunks")
                # One object per key, as in S3: a second post to a key replaces the first.
                slots: dict[str, int] = session.info.setdefault("objects", {})
                slot = slots.get(fields["key"])
                if slot is None:
                    slot = slots[fields["key"]] = len(slots) + 1
                self.sessions.add_part(session, slot, path, size, etag)
                session.parts[slot].update(chunk=chunk, chunks=chunks, key=fields["key"])
                session.save()
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        # The request log's "bytes" counts the chunk (the file field), not the form around
        # it, so a chunk's size reads the same as a part's for every other service.
        request.body.consumed = size
        location = f"{self.base_url(request)}/_s3/{BUCKET}/{quote_key(fields['key'])}"
        xml = (f'<?xml version="1.0" encoding="UTF-8"?>\n<PostResponse>'
               f"<Location>{escape(location)}</Location><Bucket>{BUCKET}</Bucket>"
               f"<Key>{escape(fields['key'])}</Key><ETag>{escape(etag)}</ETag></PostResponse>")
        return Response.xml(xml, 201, {"ETag": etag, "Location": location})

    def _read_post(self, request: Request,
                   bound: bytes) -> tuple[dict[str, str], int, str, str, Path]:
        """The form's text fields and its file (streamed to a temp file), S3's way:
        every field before ``file``, none after it, no field twice."""
        reader = FormReader(request.body, bound)
        fields: dict[str, str] = {}
        part = reader.next_part()
        while part is not None and part[0] != "file":
            if part[0] in fields:
                raise _s3(400, "InvalidArgument", f"The form field {part[0]!r} appears twice")
            fields[part[0]] = reader.read_value(FIELDS_LIMIT - sum(map(len, fields.values())))
            part = reader.next_part()
        if part is None:
            raise _s3(400, "InvalidArgument", "POST requires a field named 'file'")
        path = self.store.temp_path()
        try:
            size, md5, sha256 = reader.read_file(path)
            after = reader.next_part()
            if after is not None:
                raise _s3(400, "InvalidArgument", f"The file must be the last field of the form "
                          f"(found {after[0]!r} after it; S3 ignores fields after the file)")
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return fields, size, md5, sha256, path

    def _check_form(self, bucket: str, fields: dict[str, str]) -> tuple[Session, int, int]:
        """Check the fields like S3 checks a POST policy; the session, chunk and chunk count."""
        missing = [f for f in FORM_FIELDS if f not in fields]
        if missing:
            raise _s3(400, "InvalidArgument", f"Bucket POST must contain the field(s) {missing} "
                      "(send every form_post_params entry)")
        if fields["AWSAccessKeyId"] != ACCESS_KEY_ID:
            raise _s3(403, "InvalidAccessKeyId", "The AWS Access Key Id does not exist in our records")
        if not hmac.compare_digest(fields["signature"].encode(),
                                   self._signature(fields["policy"]).encode()):
            raise _s3(403, "SignatureDoesNotMatch",
                      "The request signature we calculated does not match the signature you provided")
        document = json.loads(base64.b64decode(fields["policy"]))  # signed by us: well-formed
        if self.settings.clock() > _parse_iso(document["expiration"]):
            raise _s3(403, "AccessDenied", "Invalid according to Policy: Policy expired.")
        covered = set()
        for condition in document["conditions"]:
            name, ok = _condition(condition, {**fields, "bucket": bucket})
            covered.add(name)
            if not ok:
                raise _s3(403, "AccessDenied", "Invalid according to Policy: Policy Condition "
                          f"failed: {json.dumps(condition)}")
        extra = sorted(set(fields) - covered - UNSIGNED_FIELDS)
        extra = [f for f in extra if not f.lower().startswith("x-ignore-")]
        if extra:
            raise _s3(403, "AccessDenied", f"Invalid according to Policy: Extra input fields: {extra}")
        chunk, chunks = parse_uint(fields["chunk"]), parse_uint(fields["chunks"])
        if chunk is None or chunks is None or not 0 <= chunk < chunks:
            raise _s3(400, "InvalidArgument", "chunk and chunks must be integers with "
                      "0 <= chunk < chunks")
        with self._lock:
            upload_id = self._policies.get(fields["signature"])
        session = self.sessions.get(upload_id) if upload_id else None
        if session is None:
            raise _s3(403, "AccessDenied", "This upload no longer accepts chunks")
        return session, chunk, chunks


def _condition(condition: Any, fields: dict[str, str]) -> tuple[str, bool]:
    """(field name, satisfied) for one POST policy condition."""
    if isinstance(condition, dict) and len(condition) == 1:
        ((name, value),) = condition.items()
        return name, fields.get(name) == value
    if not (isinstance(condition, list) and len(condition) == 3 and isinstance(condition[1], str)):
        return "", False  # e.g. content-length-range: never in an Xvid policy
    op, name, value = condition
    name = name.lstrip("$")
    if op == "eq":
        return name, fields.get(name) == value
    if op == "starts-with":
        return name, name in fields and fields[name].startswith(value)
    return name, False


__all__ = ["BUCKET", "COMPLETE_SECONDS", "TOKEN_TTL", "XvidService"]
