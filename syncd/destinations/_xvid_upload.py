"""One Xvid upload as chunked S3 form posts, driven by :mod:`._chunked`.

:class:`FormUpload` opens an upload session (its ``object_key`` from
:mod:`._xvid_keys`), posts every chunk to the session's ``form_post_url``
with its ``form_post_params``, sends the PUT with ``nb_chunks`` once per
session, then polls until Xvid is done and confirms the file. The form is
checkpointed only sealed (:func:`seal`: its policy signature is a
credential); :class:`Saver` records when the PUT was answered, so that a
resume only polls. The protocol and the resume state are described in
:mod:`syncd.destinations.xvid`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import unescape

import httpx

from syncd.destinations._api import EXPIRED, STORAGE_OK
from syncd.destinations._chunked import Opened, Part, PartRules, SessionLost, Spec
from syncd.destinations._xvid_api import XvidApi
from syncd.destinations._xvid_keys import chunk_key, expiry_text, render_object_key
from syncd.destinations.base import Checkpoint, Receipt, Source, UploadItem, wire_name
from syncd.destinations.options import XvidOptions
from syncd.errors import ExpiredError, PermanentError, RetryableError, describe
from syncd.http import require, send
from syncd.seal import Sealer

log = logging.getLogger("syncd.destinations.xvid")  # the destination's lines keep one logger name

MiB = 1024 * 1024
GiB = 1024 * MiB
BUSY = frozenset({"UPLOADING", "COMPLETING"})  # the only documented statuses
POLL_FIRST_DELAY = 0.5
POLL_MAX_DELAY = 10.0
POLL_TIMEOUT = 300.0  # then retryable: the next attempt only polls again


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
    if not (
        form["url"].startswith(("http://", "https://"))
        and isinstance(fields, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in fields.items())
        and all(fields.get(k) for k in ("key", "policy", "signature"))
    ):
        return False
    try:  # JSON may carry lone surrogates, which no form can
        json.dumps(form, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return False
    return True


# -- one upload through the chunk driver --------------------------------------------------


class Saver:
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


class FormUpload:
    """Xvid's chunked form posts as a :class:`~._chunked.ChunkedService`, for one call."""

    kind = "form"
    session_fields: Mapping[str, Spec] = {
        "upload_id": str,
        "file_id": str,
        "object_key": str,
        "pipeline_id": str,
        "sealed": (str, None),
        "finished": (bool, None),
    }

    def __init__(
        self,
        api: XvidApi,
        options: XvidOptions,
        saver: Saver | None,
        *,
        sleep: Callable[[float], None],
        clock: Callable[[], float],
    ) -> None:
        self.api = api
        self.options = options
        self.sleep = sleep
        self.clock = clock
        self.saver = saver
        # Xvid documents no chunk limits [?]: S3 POST takes at most 5 GB per request; the
        # 5 MiB minimum and 10,000 chunks are syncd's own, S3-like, bounds.
        self.rules = PartRules(
            part_size=self.options.chunk_size,
            min_size=5 * MiB,
            max_size=5 * GiB,
            max_parts=10_000,
            empty_parts=1,
        )

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
            raise RetryableError(
                f"{what}: the answer lacks a valid form_post_url or form_post_params", garbled=True
            )
        if not isinstance(file_id, str) or not file_id:
            file_id = upload_id  # the same value in every documented example
        server_key = upload.get("object_key")
        if isinstance(server_key, str) and server_key:
            key = server_key
        log.debug("xvid: opened upload %s for object key %r", upload_id, key)
        sealed = seal(self.options.client_secret.reveal(), upload_id, form)
        return Opened(
            {
                "upload_id": upload_id,
                "file_id": file_id,
                "object_key": key,
                "pipeline_id": self.options.pipeline_id,
                "size": source.size,  # what the file record must say once it is done
                "sealed": sealed,
                "_form": form,
                "_fresh": True,
            }
        )

    def _form(self, session: dict[str, Any]) -> dict[str, Any]:
        form = session.get("_form")
        if form is None:
            sealed = session.get("sealed")
            secret = self.options.client_secret.reveal()
            form = unseal(secret, session["upload_id"], sealed) if sealed else None
            if form is None:
                self._release(session, "its form cannot be unsealed")
                raise SessionLost(
                    f"xvid: upload {session['upload_id']}: the saved form cannot be "
                    "opened (was the client secret changed?)"
                )
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
        response = send(
            self.api.client,
            "POST",
            form["url"],
            what=what,
            data=fields,
            files={"file": (name, part.file(), "application/octet-stream")},
        )
        try:
            self.api.check(response, what=what, ok=STORAGE_OK, expired=EXPIRED, api=False)
        except ExpiredError:
            # Xvid cannot re-sign the form of an existing upload: start a new one.
            self._release(session, "its form post policy expired")
            raise SessionLost(
                f"xvid: upload {session['upload_id']}: storage refused the form (policy expired)"
            ) from None
        etag = _etag(response)
        if etag is None:
            raise RetryableError(f"{what}: storage answered without an ETag", garbled=True)
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
            record = self.api.call("GET", file_path, what="xvid: confirm the file")
        except PermanentError as exc:
            if exc.status != 404:
                raise
            raise RetryableError(  # _wait returns only statuses Xvid does not document
                f"xvid: upload {session['upload_id']} ended with status {status!r}, which Xvid "
                f"does not document, and GET /files/{session['file_id']} finds no file: the "
                "outcome is unknown; syncd asks again later",
                status=404,
            ) from None
        held = (
            record.get("file", {}).get("size")
            if isinstance(record, dict) and isinstance(record.get("file"), dict)
            else None
        )
        if type(held) is int and type(session.get("size")) is int and held != session["size"]:
            # Xvid has a file record from the session's start (syncd's abort deletes it):
            # a 200 alone proves nothing, a size that is not the file's proves it is not it
            raise RetryableError(
                f"xvid: upload {session['upload_id']} ended with status {status!r} and a file of "
                f"{held} bytes, not {session['size']}: not uploaded; syncd asks again later"
            )
        return Receipt(
            remote_id=session["object_key"],
            details={
                "upload_id": session["upload_id"],
                "file_id": session["file_id"],
                "pipeline_id": session["pipeline_id"],
                "status": status,
                "chunks": len(parts),
                "expires": expiry_text(self.options.expires_at, time.time()),
            },
        )

    def _put(self, session: dict[str, Any], path: str, chunks: int) -> None:
        what = "xvid: finish upload"
        try:
            self.api.call("PUT", path, what=what, body={"upload": {"nb_chunks": chunks}}, session=True)
        except SessionLost:  # Xvid forgot the upload: a new session
            self._release(session, "Xvid no longer knows it")
            raise
        except PermanentError as exc:
            if exc.status == 400:  # never "already finished": Xvid refused what was posted
                raise PermanentError(
                    f"{exc} (Xvid refused nb_chunks={chunks} for the chunks posted"
                    + (": see 'chunk keys' in docs/destinations/xvid.md" if chunks > 1 else "")
                    + ")",
                    status=400,
                ) from None
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
            self.api.call(
                "DELETE",
                f"/files/{quote(session['file_id'], safe='')}",
                what="xvid: delete the upload",
                session=True,
            )


__all__ = ["POLL_TIMEOUT", "FormUpload", "Saver", "seal", "unseal"]
