"""Xvid MediaHub uploads (protocols.md §2): an OAuth token, an upload session, S3 form posts.

::

    POST   {base}/oauth2/token/   form: grant_type=client_credential, client_id, client_secret, scope
                                  -> {"access_token", "expires_in": "7200"}
    POST   {base}/files/uploads/?object_key=K&pipeline_id=P[&expires_at=E]
                                  -> {"upload": {id, file: {id}, form_post_url, form_post_params, ...}}
    POST   form_post_url          multipart/form-data: every form_post_params field, with
                                  chunk=i and chunks=N, then the bytes as ``file``, last -> 201 XML
    PUT    {base}/files/uploads/{id}   {"upload": {"nb_chunks": N}}          -> COMPLETING
    GET    {base}/files/uploads/{id}   polled until neither UPLOADING nor COMPLETING
    GET    {base}/files/{file_id}      confirms the file;  DELETE it to abort

The open uses the curl example's path, with its trailing slash. API calls
follow redirects to the same scheme, host and port (a trailing-slash 301,
say), with the same method and body; a redirect elsewhere is not followed
(the token would go with it) and is a permanent error.

**One form post per file, up to 5 GiB.** ``chunk_size`` defaults to S3's
POST limit, so a file is chunked only when it must be: one post with
``chunk=0``, ``chunks=1`` under the form's ``key`` is the only documented
path. A file above ``chunk_size`` is sent as N posts, each under its own
key, ``<key>.chunkNNNNN`` (``NNNNN`` = the form's 0-based ``chunk``, five
digits): S3 keeps one object per key, so chunks posted under one key would
replace each other. That naming is an assumption: Xvid documents none
(protocols.md §2.4); the policy admits any key under ``tmp/<pipeline_id>/``.

The access token is cached per destination until 60 s before it expires,
registered with :mod:`syncd.redact`, and replaced once when a call answers
403 ``0x0000003`` (the call is then repeated once). Storage gets no token.

The API client and the chunk loop are the shared kit's (:mod:`._api`,
:mod:`._chunked`). The session kept in the resume state::

    {"upload_id", "file_id", "object_key", "pipeline_id",
     "sealed": "<form_post_url + form_post_params, encrypted>", "finished": true?}

``form_post_params`` hold the policy's signature, a credential, so they are
checkpointed only *sealed*: encrypted and authenticated with keys derived
from the client secret (AES-GCM, see :mod:`syncd.seal`). The
ledger thus holds nothing that the client secret does not already grant,
and a restarted daemon (same secret) can post the missing chunks of the
same session while its policy is valid. Xvid cannot re-issue the form of an
existing upload (GET answers without it), so when the policy has expired
(storage answers 403) or the seal cannot be opened (the secret changed),
the session is deleted and a new one opened: all chunks are sent again.
``finished`` is set once the PUT was answered: a resume then only polls.

After the PUT, only ``UPLOADING`` and ``COMPLETING`` are documented. Any
other status is not read as success or failure: ``GET /files/{file_id}``
decides. A file there is uploaded (the status goes into the receipt); no
file there is an unknown outcome, retryable (the next attempt only polls),
reported with the status Xvid gave once the file's attempts run out. A PUT
is sent once per session: a resumed upload first asks the status, and a
session past ``UPLOADING`` had its PUT (whose answer was lost).

Errors: any 4xx from the token endpoint, and an API 403 that a new token
does not cure, are :class:`~syncd.errors.FatalError`; a storage 403 is an
expired policy (a new session, as above); a 404 for the upload starts a new
session once per call (:class:`~._chunked.SessionLost`); a 400 to the PUT
is permanent (Xvid refuses ``nb_chunks`` for what was posted: never read as
"already finished"). The rest is mapped by :mod:`syncd.http`.
docs/destinations/xvid.md has the table.

``expires_at``: unset, Xvid deletes an object that no Job used 7 days after
upload (its default); ``syncd check`` warns about it per folder
(:meth:`XvidDestination.check_warnings`), since the local file is archived
or deleted; ``0`` keeps objects, an epoch is that moment.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar
from urllib.parse import quote
from xml.sax.saxutils import unescape

import httpx

from syncd import redact
from syncd.destinations import _chunked
from syncd.destinations._api import EXPIRED, STORAGE_OK, Api
from syncd.destinations._chunked import Opened, Part, PartRules, SessionLost, Spec
from syncd.destinations.base import (
    Capabilities,
    Checkpoint,
    Receipt,
    Source,
    UploadItem,
    wire_name,
)
from syncd.destinations.options import (
    DEFAULT_OBJECT_KEY,
    DOT_SEGMENTS,
    PLACEHOLDERS,
    S3_POST_LIMIT,
    XvidOptions,
    check_template,
)
from syncd.errors import ExpiredError, FatalError, PermanentError, RetryableError, describe
from syncd.http import check, json_body, require, send
from syncd.seal import Sealer

log = logging.getLogger(__name__)

MiB = 1024 * 1024
GiB = 1024 * MiB
GRANT_TYPE = "client_credential"  # singular: that is what Xvid documents
TOKEN_REFUSED = "0x0000003"
TOKEN_MARGIN = 60.0  # seconds before expiry that a token is replaced
FALLBACK_TTL = 300.0  # when the token answer has no usable expires_in
BUSY = frozenset({"UPLOADING", "COMPLETING"})  # the only documented statuses
REDIRECTS = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5
DEFAULT_EXPIRY_DAYS = 7  # Xvid deletes an object no Job used after this, unless expires_at
POLL_FIRST_DELAY = 0.5
POLL_MAX_DELAY = 10.0
POLL_TIMEOUT = 300.0  # then retryable: the next attempt only polls again

# -- the object_key template ------------------------------------------------------------

EMPTY = "none"  # what {labels} and {category} become when the folder sets none
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DOTS = DOT_SEGMENTS  # segments a key must not have (no climbing, no '//')


def _segment(text: str) -> str:
    """One path segment: no control characters, no '/', never empty, '.' or '..'."""
    text = _CONTROL.sub("_", text).replace("/", "_")
    return text.replace(".", "_") if text in _DOTS else text


def render_object_key(template: str, item: UploadItem, mtime_ns: int) -> str:
    """The object key of ``item``: see docs/destinations/xvid.md for each placeholder.

    Deterministic for one file version (``{date}`` is the file's modification
    date, UTC), so every attempt and every new session use the same key.
    Every value is one safe segment (``{relpath}`` one per directory): never
    empty, ``.`` or ``..``. ValueError for a key that would still have such
    a segment.
    """
    values = {
        "relpath": "/".join(_segment(s) for s in item.relpath.split("/")),
        "name": _segment(item.name),
        "labels": ",".join(_segment(x).replace(",", "_") for x in item.labels) or EMPTY,
        "category": _segment(item.category) if item.category else EMPTY,
        "uuid": item.uuid,
        "date": time.strftime("%Y-%m-%d", time.gmtime(mtime_ns // 1_000_000_000)),
    }
    key = template.format_map(values)
    if any(segment in _DOTS for segment in key.split("/")):  # e.g. ".{category}" with "."
        raise ValueError(f"the object key {key!r} has an empty, '.' or '..' segment")
    return key


def chunk_key(key: str, index: int) -> str:
    """The S3 key of chunk ``index`` (0-based, the form's ``chunk``) of a chunked upload.

    An assumption: Xvid documents no naming (module docstring). Only files above
    ``chunk_size`` (default 5 GiB, S3's POST limit) are chunked at all.
    """
    return f"{key}.chunk{index:05d}"


def _expiry_text(expires_at: int | None, uploaded: float | None = None) -> str:
    """What ``expires_at`` means for an object (uploaded at ``uploaded``, when known)."""
    stamp = "%Y-%m-%dT%H:%M:%SZ unless a Job uses it"
    if expires_at == 0:
        return "never"
    if expires_at is not None:
        return time.strftime(stamp, time.gmtime(expires_at))
    if uploaded is None:
        return f"{DEFAULT_EXPIRY_DAYS} days after upload unless a Job uses it (Xvid's default)"
    return (time.strftime(stamp, time.gmtime(uploaded + DEFAULT_EXPIRY_DAYS * 86400))
            + f" (Xvid's default: {DEFAULT_EXPIRY_DAYS} days)")


# -- the token and the API ------------------------------------------------------------------


def _ttl(value: Any) -> float:
    """Seconds from ``expires_in`` (documented as a string, "7200")."""
    try:
        seconds = float(value) if isinstance(value, str | int) and not isinstance(value, bool) \
            else math.nan
    except ValueError:
        seconds = math.nan
    return seconds if 0 < seconds < math.inf else FALLBACK_TTL


def _send(client: httpx.Client, method: str, url: str, *, what: str,
          **kwargs: Any) -> httpx.Response:
    """:func:`syncd.http.send`, following redirects to the same scheme, host and port.

    The method and body are kept (an API call redirected to its trailing-slash
    form must stay a POST), except after 303 (then GET, no body). A redirect
    to anywhere else is a PermanentError: the Bearer token or the client
    secret would go with it. A query the target lacks is kept.
    """
    for _ in range(MAX_REDIRECTS + 1):
        response = send(client, method, url, what=what, **kwargs)
        location = response.headers.get("Location")
        if response.status_code not in REDIRECTS or not location:
            return response
        here = response.request.url
        try:
            target = here.join(location)
        except httpx.InvalidURL:
            target = None
        if target is None or (target.scheme, target.host, target.port) != \
                (here.scheme, here.host, here.port):
            raise PermanentError(f"{what}: HTTP {response.status_code}: redirected to another "
                                 "host; not followed (credentials would go with it)",
                                 status=response.status_code)
        if target.query:
            kwargs["params"] = None  # the Location carries the query
        if response.status_code == 303:
            method = "GET"
            kwargs = {k: v for k, v in kwargs.items() if k not in ("json", "data", "content")}
        log.debug("xvid: %s: HTTP %d, following it to %s", what, response.status_code,
                  target.path)
        url = str(target)
    raise RetryableError(f"{what}: more than {MAX_REDIRECTS} redirects")


class _Auth:
    """The OAuth access token, cached for every upload of one destination."""

    def __init__(self, options: XvidOptions, client: httpx.Client,
                 clock: Callable[[], float]) -> None:
        self.options = options
        self.client = client
        self.clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._renew_at = 0.0

    def token(self) -> str:
        """A token valid for a while yet (fetched when there is none or it nears expiry)."""
        with self._lock:
            if self._token is None or self.clock() >= self._renew_at:
                self._store(*self._fetch())
            assert self._token is not None
            return self._token

    def refresh(self) -> float:
        """Fetch a new token now; its lifetime in seconds."""
        with self._lock:
            token, ttl = self._fetch()
            self._store(token, ttl)
            return ttl

    def forget(self, token: str | None = None) -> None:
        """Drop the cached token (only if it is still ``token``, when given)."""
        with self._lock:
            if token is None or token == self._token:
                self._token = None

    def _store(self, token: str, ttl: float) -> None:
        self._token = token
        self._renew_at = self.clock() + max(ttl - TOKEN_MARGIN, ttl / 2)

    def _fetch(self) -> tuple[str, float]:
        what = "xvid: get an access token"
        form = {"grant_type": GRANT_TYPE, "client_id": self.options.client_id,
                "client_secret": self.options.client_secret.reveal(), "scope": self.options.scope}
        response = _send(self.client, "POST", self.options.base_url.rstrip("/") + "/oauth2/token/",
                         what=what, data=form, headers={"Accept": "application/json"})
        try:
            check(response, what=what)
        except PermanentError as exc:  # the client id, grant or scope is refused: every file alike
            raise FatalError(str(exc), status=exc.status) from None
        data = json_body(response, what=what)
        token = require(data, "access_token", what=what)
        redact.register(token)
        return token, _ttl(data.get("expires_in"))


def _error_code(response: httpx.Response) -> str | None:
    try:
        return str(response.json()["error"]["error_code"])
    except (ValueError, KeyError, TypeError):
        return None


class _Api(Api):
    """The Xvid API: a Bearer token from :class:`_Auth`, same-host redirects followed,
    a 404 for an upload means it is gone; no rate-limit header of its own."""

    def __init__(self, options: XvidOptions, client: httpx.Client, auth: _Auth) -> None:
        super().__init__("xvid", options.base_url, client, lost=(404,))
        self.oauth = auth

    def request(self, method: str, path: str, *, what: str, **kwargs: Any) -> httpx.Response:
        """One API request with the cached token, following same-host redirects.

        A 403 ``0x0000003`` (token expired or revoked) gets a new token and
        one repeat; a second refusal is a FatalError (:meth:`check`).
        """
        token = self.oauth.token()
        response = self._request(method, path, token, what, kwargs)
        if response.status_code == 403 and _error_code(response) == TOKEN_REFUSED:
            log.info("xvid: the access token was refused (%s); getting a new one", what)
            self.oauth.forget(token)
            response = self._request(method, path, self.oauth.token(), what, kwargs)
        return response

    def _request(self, method: str, path: str, token: str, what: str,
                 kwargs: dict[str, Any]) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        return _send(self.client, method, self.base + path, what=what, headers=headers, **kwargs)


# -- the sealed form ------------------------------------------------------------------------

def seal(secret: str, upload_id: str, form: dict[str, Any]) -> str:
    """``form`` encrypted and authenticated for ``upload_id`` (see :mod:`syncd.seal`)."""
    return Sealer(secret, "xvid form").seal(upload_id, form)


def unseal(secret: str, upload_id: str, text: str) -> dict[str, Any] | None:
    """The form sealed by :func:`seal`, or None (another secret or upload, damaged, garbage)."""
    form = Sealer(secret, "xvid form").unseal(upload_id, text)
    return form if _valid_form(form) else None


def _valid_form(form: Any) -> bool:
    """``{"url": "http(s)://...", "fields": {str: str}}`` with a key, policy and signature."""
    if not isinstance(form, dict) or not isinstance(form.get("url"), str):
        return False
    fields = form.get("fields")
    if not (form["url"].startswith(("http://", "https://")) and isinstance(fields, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in fields.items())
            and all(fields.get(k) for k in ("key", "policy", "signature"))):
        return False
    try:  # JSON may carry lone surrogates, which no form can
        json.dumps(form, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return False
    return True


# -- one upload through the chunk driver --------------------------------------------------


class _Saver:
    """The checkpoint callback of one ``upload()`` call; remembers the last state saved."""

    def __init__(self, checkpoint: Checkpoint, resume: dict[str, Any] | None) -> None:
        self._checkpoint = checkpoint
        self.last = resume

    def __call__(self, state: dict[str, Any]) -> None:
        self._checkpoint(state)
        self.last = state

    def finished(self, session: dict[str, Any]) -> None:
        """Record that the PUT was answered: a resume from here only polls."""
        assert self.last is not None  # the driver saved the session, or resumed from one
        public = {k: v for k, v in session.items() if not k.startswith("_") and k != "sealed"}
        self({**self.last, "session": {**public, "finished": True}})


def _etag(response: httpx.Response) -> str | None:
    etag = response.headers.get("ETag")
    if not etag:
        found = re.search(r"<ETag>(.*?)</ETag>", response.text, re.S)
        etag = unescape(found.group(1), {"&quot;": '"', "&apos;": "'"}) if found else None
    return etag or None


class _Upload:
    """Xvid's chunked form posts as a :class:`~._chunked.ChunkedService`, for one call."""

    kind = "form"
    session_fields: Mapping[str, Spec] = {
        "upload_id": str, "file_id": str, "object_key": str, "pipeline_id": str,
        "sealed": (str, None), "finished": (bool, None)}

    def __init__(self, dest: XvidDestination, saver: _Saver | None) -> None:
        self.api = dest.api
        self.options = dest.options
        self.sleep = dest.sleep
        self.clock = dest.clock
        self.saver = saver
        # Xvid documents no chunk limits [?]: S3 POST takes at most 5 GB per request; the
        # 5 MiB minimum and 10,000 chunks are syncd's own, S3-like, bounds.
        self.rules = PartRules(part_size=self.options.chunk_size, min_size=5 * MiB,
                               max_size=5 * GiB, max_parts=10_000, empty_parts=1)

    def open(self, item: UploadItem, source: Source, part_size: int) -> Opened:
        what = "xvid: open an upload session"
        try:
            key = render_object_key(self.options.object_key, item, source.mtime_ns)
        except ValueError as exc:
            raise PermanentError(f"{what}: {exc}") from None
        params = {"object_key": key, "pipeline_id": self.options.pipeline_id}
        if self.options.expires_at is not None:
            params["expires_at"] = str(self.options.expires_at)
        # The curl example's path, trailing slash included (redirects are followed anyway).
        data = self.api.call("POST", "/files/uploads/", what=what, params=params)
        upload = require(data, "upload", what=what, kind=dict)
        upload_id = require(upload, "id", what=what)
        file = upload.get("file")
        file_id = file.get("id") if isinstance(file, dict) else None
        form = {"url": upload.get("form_post_url"), "fields": upload.get("form_post_params")}
        if not _valid_form(form):
            raise RetryableError(f"{what}: the answer lacks a valid form_post_url or form_post_params")
        if not isinstance(file_id, str) or not file_id:
            file_id = upload_id  # the same value in every documented example
        server_key = upload.get("object_key")
        if isinstance(server_key, str) and server_key:
            key = server_key
        log.debug("xvid: opened upload %s for object key %r", upload_id, key)
        sealed = seal(self.options.client_secret.reveal(), upload_id, form)
        return Opened({"upload_id": upload_id, "file_id": file_id, "object_key": key,
                       "pipeline_id": self.options.pipeline_id, "sealed": sealed, "_form": form,
                       "_fresh": True})

    def _form(self, session: dict[str, Any]) -> dict[str, Any]:
        form = session.get("_form")
        if form is None:
            sealed = session.get("sealed")
            secret = self.options.client_secret.reveal()
            form = unseal(secret, session["upload_id"], sealed) if sealed else None
            if form is None:
                self._release(session, "its form cannot be unsealed")
                raise SessionLost(f"xvid: upload {session['upload_id']}: the saved form cannot be "
                                  "opened (was the client secret changed?)")
            session["_form"] = form
        return form

    def send_part(self, session: dict[str, Any], part: Part) -> str:
        form = self._form(session)
        fields = dict(form["fields"])  # the server's order; chunk and chunks keep their place
        fields["chunk"], fields["chunks"] = str(part.number - 1), str(part.count)
        if part.count > 1:  # one S3 object per chunk: a key posted twice keeps only the last
            fields["key"] = chunk_key(fields["key"], part.number - 1)
        what = f"xvid: post chunk {part.number - 1} of {part.count} to storage"
        name = wire_name(fields.get("name") or "blob")
        # httpx writes data= fields before files=, so ``file`` is the last field, as S3 demands.
        response = send(self.api.client, "POST", form["url"], what=what, data=fields,
                        files={"file": (name, part.file(), "application/octet-stream")})
        try:
            self.api.check(response, what=what, ok=STORAGE_OK, expired=EXPIRED, api=False)
        except ExpiredError:
            # Xvid cannot re-sign the form of an existing upload: start a new one.
            self._release(session, "its form post policy expired")
            raise SessionLost(f"xvid: upload {session['upload_id']}: storage refused the form "
                              "(policy expired)") from None
        etag = _etag(response)
        if etag is None:
            raise RetryableError(f"{what}: storage answered without an ETag")
        return etag

    def finish(self, session: dict[str, Any], parts: list[tuple[int, str]]) -> Receipt:
        path = f"/files/uploads/{quote(session['upload_id'], safe='')}"
        if not session.get("finished"):
            # A PUT goes once per session: after a crash or an error its answer may have been
            # lost, and whether Xvid takes a second one is undocumented. A session past
            # UPLOADING had it.
            if session.get("_fresh") or self._status(path) == "UPLOADING":
                self._put(session, path, len(parts))
            session["finished"] = True
            if self.saver is not None:
                self.saver.finished(session)
        status = self._wait(path)
        file_path = f"/files/{quote(session['file_id'], safe='')}"
        try:
            self.api.call("GET", file_path, what="xvid: confirm the file")
        except PermanentError as exc:
            if exc.status != 404:
                raise
            raise RetryableError(  # _wait returns only statuses Xvid does not document
                f"xvid: upload {session['upload_id']} ended with status {status!r}, which Xvid "
                f"does not document, and GET /files/{session['file_id']} finds no file: the "
                "outcome is unknown; syncd asks again later", status=404) from None
        return Receipt(remote_id=session["object_key"], details={
            "upload_id": session["upload_id"], "file_id": session["file_id"],
            "pipeline_id": session["pipeline_id"], "status": status, "chunks": len(parts),
            "expires": _expiry_text(self.options.expires_at, time.time())})

    def _put(self, session: dict[str, Any], path: str, chunks: int) -> None:
        what = "xvid: finish upload"
        try:
            self.api.call("PUT", path, what=what, body={"upload": {"nb_chunks": chunks}},
                          session=True)
        except SessionLost:  # Xvid forgot the upload: a new session
            self._release(session, "Xvid no longer knows it")
            raise
        except PermanentError as exc:
            if exc.status == 400:  # never "already finished": Xvid refused what was posted
                raise PermanentError(
                    f"{exc} (Xvid refused nb_chunks={chunks} for the chunks posted"
                    + (": see 'chunk keys' in docs/destinations/xvid.md" if chunks > 1 else "")
                    + ")", status=400) from None
            raise

    def _status(self, path: str) -> str:
        what = "xvid: upload status"
        data = self.api.call("GET", path, what=what, session=True)
        return str(require(require(data, "upload", what=what, kind=dict), "status", what=what))

    def _wait(self, path: str) -> str:
        """Poll until the status is terminal; RetryableError after POLL_TIMEOUT."""
        deadline = self.clock() + POLL_TIMEOUT
        delay = POLL_FIRST_DELAY
        while True:
            status = self._status(path)
            if status not in BUSY:
                return status
            if self.clock() + delay > deadline:
                raise RetryableError(f"xvid: the upload is still {status} after {POLL_TIMEOUT:.0f}s")
            self.sleep(delay)
            delay = min(delay * 2, POLL_MAX_DELAY)

    def _release(self, session: dict[str, Any], why: str) -> None:
        """Best effort: delete an upload that is being given up, logging what fails."""
        log.info("xvid: giving up upload %s (%s); opening a new one", session["upload_id"], why)
        try:
            self.abort(session)
        except Exception as exc:  # best effort: the new session does not depend on it
            log.warning("xvid: could not delete upload %s: %s", session["upload_id"], describe(exc))

    def abort(self, session: dict[str, Any]) -> None:
        if session.get("finished"):  # the file exists (or is being made): never delete it
            return
        with contextlib.suppress(SessionLost):  # already gone: nothing to release
            self.api.call("DELETE", f"/files/{quote(session['file_id'], safe='')}",
                          what="xvid: delete the upload", session=True)


class XvidDestination:
    """Uploads to Xvid MediaHub; see the module docstring for the protocol and resume state."""

    TYPE: ClassVar[str] = "xvid"
    CAPABILITIES: ClassVar[Capabilities] = Capabilities(
        labels="{labels} in the object_key template, if it has one",
        category="{category} in the object_key template, if it has one",
    )
    Options: ClassVar[type] = XvidOptions

    def __init__(self, name: str, options: XvidOptions, client: httpx.Client, *,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.options = options
        self.sleep = sleep
        self.clock = clock
        redact.register(options.client_secret.reveal())
        self.auth = _Auth(options, client, clock)
        self.api = _Api(options, client, self.auth)

    def upload(self, item: UploadItem, source: Source, resume: dict[str, Any] | None,
               checkpoint: Checkpoint) -> Receipt:
        saver = _Saver(checkpoint, resume)
        return _chunked.run(_Upload(self, saver), item, source, resume, saver)

    def abort(self, resume: dict[str, Any]) -> None:
        """Delete an unfinished upload; a finished one (PUT sent) is left alone."""
        _chunked.abort(_Upload(self, None), resume)

    @classmethod
    def check_warnings(cls, options: XvidOptions, folder: Any) -> list[str]:
        """``syncd check``: objects of ``folder`` that Xvid will delete (``expires_at``)."""
        if options.expires_at == 0:
            return []
        local = {"archive": "syncd moves each local file to the archive folder",
                 "delete": "syncd deletes each local file after upload",
                 "keep": "the local files stay where they are"}.get(
                     getattr(folder, "after_upload", ""), "")
        when = _expiry_text(options.expires_at)
        if options.expires_at is not None and options.expires_at <= time.time():
            when += ", which has passed: objects go at once"
        return [f"xvid deletes the objects uploaded from this folder {when}"
                + (f", while {local}" if local else "")
                + "; set expires_at = 0 to keep them (expires_at in docs/destinations/xvid.md)"]

    def probe(self) -> str:
        ttl = self.auth.refresh()
        return f"ok, access token for scope {self.options.scope!r} valid for {ttl:.0f}s"

    def close(self) -> None:
        self.auth.forget()


__all__ = ["DEFAULT_OBJECT_KEY", "PLACEHOLDERS", "S3_POST_LIMIT", "XvidDestination", "XvidOptions",
           "check_template", "render_object_key", "seal", "unseal"]
