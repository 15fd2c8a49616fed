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

The checks of what a client sends (the token request, the object key, the
S3 POST form and its policy, the chunks a PUT names) live in
:mod:`syncd_emulator.xvid_rules`; the S3 POST's envelope (bucket, headers,
size) and its ``PostResponse`` in :mod:`syncd_emulator.xvid_s3`.
"""

from __future__ import annotations

import hmac
import posixpath
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from syncd_emulator.messages import ApiError, Request, Response, parse_uint, quote_key
from syncd_emulator.service import Route, Service, ServiceContext
from syncd_emulator.store import Session
from syncd_emulator.xvid_rules import (
    ACCESS_KEY_ID,
    BUCKET,
    INVALID_INPUT,
    MAX_POST,
    check_form,
    chunk_objects,
    invalid,
    parse_token_request,
    policy_document,
    s3_error,
    sign,
    storage_key,
)
from syncd_emulator.xvid_s3 import S3_CODES as _S3_CODES
from syncd_emulator.xvid_s3 import post_response, read_form_post, too_large

TOKEN_TTL = 7200  # seconds, Xvid's documented default
COMPLETE_SECONDS = 1.0
WRITE = frozenset({"mediahub", "mediahub_write"})
READ = WRITE | {"mediahub_read"}
S3_OPS = frozenset({"xvid.post_chunk"})
INVALID_TOKEN, NO_FILE, INTERNAL = "0x0000003", "0x0230002", "0x0000001"
_CODES = {400: INVALID_INPUT, 403: INVALID_TOKEN, 404: NO_FILE}


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
        self.reported_size: int | None = None  # the size GET /files/{id} gives instead (tests)

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
            return Response.s3_error(code, message, status)
        if not code.startswith("0x"):  # an injected fault carries an S3 code: use Xvid's
            code = _CODES.get(status, INTERNAL if status >= 500 else INVALID_INPUT)
        return Response.json({"error": {"error_code": code, "error_message": message}}, status)

    # -- tokens -------------------------------------------------------------------

    def expire_tokens(self) -> None:
        """Forget every access token, as if all had expired (for tests)."""
        with self._lock:
            self._tokens.clear()

    def token(self, request: Request) -> Response:
        asked = parse_token_request(request, self.token_ttl)
        want_id, _, want_secret = self.settings.xvid_client.partition(":")
        if not (
            hmac.compare_digest(asked.client_id.encode(), want_id.encode())
            and hmac.compare_digest(asked.client_secret.encode(), want_secret.encode())
        ):
            raise ApiError(403, "Invalid client credentials", INVALID_TOKEN)
        token, now = secrets.token_hex(20), self.settings.clock()
        with self._lock:
            self._tokens = {t: e for t, e in self._tokens.items() if e[0] > now}
            self._tokens[token] = (now + asked.ttl, asked.scopes)
        return Response.json({"access_token": token, "expires_in": str(asked.ttl)})

    def _auth(self, request: Request, allowed: frozenset[str]) -> None:
        scheme, _, token = (request.headers.get("Authorization") or "").partition(" ")
        with self._lock:
            entry = self._tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if entry is None or self.settings.clock() >= entry[0]:
            raise ApiError(403, "Invalid access token", INVALID_TOKEN)
        if not entry[1] & allowed:
            raise ApiError(
                403, f"Invalid access token: the scope needs one of {sorted(allowed)}", INVALID_TOKEN
            )
        if request.arg("format") not in (None, "json"):
            raise invalid("the emulator answers JSON only (format=xml is not emulated)")

    # -- sessions -----------------------------------------------------------------

    def open_upload(self, request: Request) -> Response:
        self._auth(request, WRITE)
        object_key, pipeline_id = request.arg("object_key"), request.arg("pipeline_id")
        key = storage_key(object_key, pipeline_id)
        assert object_key is not None and pipeline_id is not None  # storage_key checked them
        info: dict[str, Any] = {"object_key": object_key, "pipeline_id": pipeline_id, "nb_chunks": 0}
        for name in ("expires_at", "ip"):
            text = request.arg(name)
            if text is not None and parse_uint(text) is None:
                raise invalid(f"{name} must be an integer")
            info[name] = parse_uint(text) if text is not None else None
        session = self.sessions.create(key, info)
        policy, signature = self._sign_policy(pipeline_id)
        with self._lock:
            self._policies[signature] = session.id
        params = {
            "key": key,
            "acl": "private",
            "success_action_status": "201",
            "name": posixpath.basename(object_key),
            "filename": "",
            "chunk": "0",
            "chunks": "1",
            "policy": policy,
            "signature": signature,
            "AWSAccessKeyId": ACCESS_KEY_ID,
        }
        url = f"{self.base_url(request)}/_s3/{BUCKET}/"
        body = {**self._view(session, "UPLOADING"), "form_post_url": url, "form_post_params": params}
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
        policy = policy_document(pipeline_id, expires)
        return policy, sign(self._aws_secret, policy)

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
        return {
            "id": session.id,
            "file": {"id": session.id},
            "pipeline": {"id": info["pipeline_id"]},
            "object_key": info["object_key"],
            "status": status,
            "nb_chunks": info["nb_chunks"],
            "storage_type": "S3",
        }

    def get_upload(self, request: Request) -> Response:
        self._auth(request, READ)
        session = self._session(request)
        return Response.json({"upload": self._view(session, self._status(session, poll=True))})

    def finish(self, request: Request) -> Response:
        self._auth(request, WRITE)
        session = self._session(request)
        ctype = (request.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise invalid("the body must be JSON with Content-Type: application/json")
        body = request.json()
        upload = body.get("upload") if isinstance(body, dict) else None
        nb = upload.get("nb_chunks") if isinstance(upload, dict) else None
        if not isinstance(nb, int) or isinstance(nb, bool) or nb < 1:
            raise invalid('the body must be {"upload": {"nb_chunks": N}} with N >= 1')
        with session.lock:
            if session.state == "completed":  # a repeated finish: answer again, store nothing
                if session.info["nb_chunks"] != nb:
                    raise invalid(f"the upload was finished with nb_chunks={session.info['nb_chunks']}")
                return Response.json({"upload": self._view(session, self._status(session, poll=False))})
            if session.state != "active":
                raise ApiError(404, "Requested file does not exist", NO_FILE)
            numbers = chunk_objects(session, nb)
            path, size, sha256, etag = self.sessions.assemble(session, numbers)
            self._store(session, path, size, sha256, etag, nb)
            session.info.update(nb_chunks=nb, completing_at=self.settings.clock(), size=size)
            self.sessions.close(session, "completed")
            with self._lock:
                self._policies = {s: u for s, u in self._policies.items() if u != session.id}
        return Response.json({"upload": self._view(session, "COMPLETING")})

    def _store(self, session: Session, path: Path, size: int, sha256: str, etag: str, chunks: int) -> None:
        info = session.info
        self.store.put(
            self.name,
            f"{info['pipeline_id']}/{info['object_key']}",
            path,
            size=size,
            sha256=sha256,
            filename=posixpath.basename(info["object_key"]),
            extra={
                "object_key": info["object_key"],
                "pipeline_id": info["pipeline_id"],
                "upload_id": session.id,
                "chunks": chunks,
                "etag": etag,
                "expires_at": info.get("expires_at"),
            },
        )

    def get_file(self, request: Request) -> Response:
        self._auth(request, READ)
        session = self._session(request)
        if session.state != "completed" or self.failure_status:
            raise ApiError(404, "Requested file does not exist", NO_FILE)
        info = session.info
        return Response.json(
            {
                "file": {
                    "id": session.id,
                    "object_key": info["object_key"],
                    "pipeline": {"id": info["pipeline_id"]},
                    "size": info["size"] if self.reported_size is None else self.reported_size,
                    "created_at": session.created_at,
                }
            }
        )

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
        fields, size, md5, sha256, path = read_form_post(request, self.store.temp_path)
        try:
            session, chunk, chunks = self._check_form(request.params["bucket"], fields)
            etag = f'"{md5}"'
            if size > MAX_POST:
                raise too_large()
            with session.lock:
                if session.state != "active":
                    raise s3_error(403, "AccessDenied", "This upload no longer accepts chunks")
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
        return post_response(location, fields["key"], etag)

    def _check_form(self, bucket: str, fields: dict[str, str]) -> tuple[Session, int, int]:
        """The session whose policy the form carries, and its chunk and chunk count."""
        chunk, chunks = check_form(bucket, fields, self._aws_secret, self.settings.clock())
        with self._lock:
            upload_id = self._policies.get(fields["signature"])
        session = self.sessions.get(upload_id) if upload_id else None
        if session is None:
            raise s3_error(403, "AccessDenied", "This upload no longer accepts chunks")
        return session, chunk, chunks


__all__ = ["BUCKET", "COMPLETE_SECONDS", "TOKEN_TTL", "XvidService"]
