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
:mod:`._chunked`); Xvid's token and redirects are :mod:`._xvid_api`, its
object keys :mod:`._xvid_keys`, one upload's form posts
:mod:`._xvid_upload`. The session kept in the resume state::

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

import time
from collections.abc import Callable
from typing import Any, ClassVar

import httpx

from syncd import redact
from syncd.destinations import _chunked
from syncd.destinations._xvid_api import XvidApi, XvidAuth
from syncd.destinations._xvid_keys import chunk_key, expiry_text, render_object_key
from syncd.destinations._xvid_upload import POLL_TIMEOUT, FormUpload, Saver, seal, unseal
from syncd.destinations.base import Capabilities, Checkpoint, Receipt, Source, UploadItem
from syncd.destinations.options import (
    DEFAULT_OBJECT_KEY,
    PLACEHOLDERS,
    S3_POST_LIMIT,
    XvidOptions,
    check_template,
)


class XvidDestination:
    """Uploads to Xvid MediaHub; see the module docstring for the protocol and resume state."""

    TYPE: ClassVar[str] = "xvid"
    CAPABILITIES: ClassVar[Capabilities] = Capabilities(
        labels="{labels} in the object_key template, if it has one",
        category="{category} in the object_key template, if it has one",
    )
    Options: ClassVar[type] = XvidOptions

    def __init__(
        self,
        name: str,
        options: XvidOptions,
        client: httpx.Client,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.options = options
        self.sleep = sleep
        self.clock = clock
        redact.register(options.client_secret.reveal())
        self.auth = XvidAuth(options, client, clock)
        self.api = XvidApi(options, client, self.auth)

    def upload(
        self, item: UploadItem, source: Source, resume: dict[str, Any] | None, checkpoint: Checkpoint
    ) -> Receipt:
        saver = Saver(checkpoint, resume)
        return _chunked.run(self._upload(saver), item, source, resume, saver)

    def abort(self, resume: dict[str, Any]) -> None:
        """Delete an unfinished upload; a finished one (PUT sent) is left alone."""
        _chunked.abort(self._upload(None), resume)

    def _upload(self, saver: Saver | None) -> FormUpload:
        return FormUpload(self.api, self.options, saver, sleep=self.sleep, clock=self.clock)

    @classmethod
    def check_warnings(cls, options: XvidOptions, folder: Any) -> list[str]:
        """``syncd check``: objects of ``folder`` that Xvid will delete (``expires_at``)."""
        if options.expires_at == 0:
            return []
        local = {
            "archive": "syncd moves each local file to the archive folder",
            "delete": "syncd deletes each local file after upload",
            "keep": "the local files stay where they are",
        }.get(getattr(folder, "after_upload", ""), "")
        when = expiry_text(options.expires_at)
        if options.expires_at is not None and options.expires_at <= time.time():
            when += ", which has passed: objects go at once"
        return [
            f"xvid deletes the objects uploaded from this folder {when}"
            + (f", while {local}" if local else "")
            + "; set expires_at = 0 to keep them (expires_at in docs/destinations/xvid.md)"
        ]

    def probe(self) -> str:
        ttl = self.auth.refresh()
        return f"ok, access token for scope {self.options.scope!r} valid for {ttl:.0f}s"

    def close(self) -> None:
        self.auth.forget()


__all__ = [
    "DEFAULT_OBJECT_KEY",
    "PLACEHOLDERS",
    "POLL_TIMEOUT",
    "S3_POST_LIMIT",
    "XvidDestination",
    "XvidOptions",
    "check_template",
    "chunk_key",
    "render_object_key",
    "seal",
    "unseal",
]
