"""WriftAI file uploads (protocols.md §3): one signed PUT, or server-split multipart.

``protocol = "uploads"`` (the default; what the vendor's SDK 0.30–0.34 does),
driven by :mod:`._chunked`::

    POST {base}/uploads  {"size", "mime_type"}       -> {"id", "urls": [...], "part_size": P}
    PUT  urls[i]         (part i+1; Content-Length, Content-Type; no credentials) -> etag header
    POST {base}/uploads/{id}/complete  {"etags": [...]}  (in URL order)  -> {"download_url"}

``protocol = "urls"`` (the documented Files API of SDK 0.28–0.29)::

    POST {base}/files/urls  {"name", "size", "resource", "mime_type"} -> {"upload_url", "download_url"}
    PUT  upload_url  (the whole file; exact Content-Length and Content-Type; no credentials)

The token goes only to the API, as ``Authorization: Bearer``; nothing sent
to storage carries it. WriftAI carries no labels, category or client id, so
``CAPABILITIES`` is ``(None, None)`` and ``item.uuid`` is not sent.

Receipt: ``url`` is the ``download_url`` without its query (the signature),
``remote_id`` the upload id (``uploads``) or the download URL's path (``urls``).
The whole ``download_url`` is a signed, time-limited URL that the SDK hands
on as it is, so the receipt also keeps it sealed (:mod:`._receipts`, keyed
from ``token``), with ``url_expires_at`` when the URL says when it expires;
``syncd files --receipt ID`` shows it (:meth:`WriftAIDestination.reveal_receipt`).

Like the SDK (0.30+): an empty file may be answered with ``urls: []`` and is
then completed with ``etags: []``; a part that storage confirms without an
``etag`` header counts as sent and is left out of the complete call's
``etags`` (the SDK filters out missing ones).

Resume state (no URL in clear text)::

    urls:    {"v": 1, "kind": "urls", "object": "<download URL path>"}
    uploads: {"v": 1, "kind": "uploads", "session": {"id", "mime", "count", "sealed"},
              "part_size": P, "size": N, "parts": {"1": "\\"etag\\"", ...}}

WriftAI has no endpoint that lists an upload's parts or signs its URLs again,
so the part URLs from ``POST /uploads`` are the only way to finish an upload.
They are signed, so they never go into the ledger in clear text: ``sealed``
is the URL list encrypted and authenticated (:class:`syncd.seal.Sealer`) under a key
derived from the configured token, bound to the upload id. After a crash the
driver unseals them and sends **only the parts missing from** ``parts``. If
they cannot be unsealed (the token changed, ``resume_parts = false``), have
expired (storage 403) or the upload is gone (404), syncd opens a new upload
and sends every part again; the abandoned upload cannot be cancelled (there
is no such endpoint) and is left to the service. A ``urls`` upload is one PUT
and restarts with fresh URLs; ``object`` is only for diagnosis.

The API client, the single PUT and the part loop are the shared kit's
(:mod:`._api`, :mod:`._chunked`); this module holds WriftAI's data and requests.

Errors: API 401/403 are :class:`~syncd.errors.FatalError`; a 429 waits for
``Retry-After`` if present, else for ``x-ratelimit-reset`` (epoch seconds,
WriftAI's own header, :data:`RATE_LIMIT`); a storage 403 is an expired URL
(``urls``: ask for new URLs, twice at most; ``uploads``: a new upload).
Everything else is mapped by :mod:`syncd.http`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar
from urllib.parse import quote, urlsplit

import httpx

from syncd import redact
from syncd.destinations import _chunked, _receipts
from syncd.destinations._api import RESET, Api, RateLimit, bearer, put_signed
from syncd.destinations._chunked import Opened, Parallel, Part, PartRules, SessionLost, Spec
from syncd.destinations.base import Capabilities, Checkpoint, Receipt, Source, UploadItem
from syncd.destinations.options import WriftAIOptions
from syncd.errors import ExpiredError, RetryableError
from syncd.http import require
from syncd.seal import Sealer

log = logging.getLogger(__name__)

MAX_PARTS = 100_000  # the server splits; this only bounds what a resume may claim
NO_ETAG = "(none)"  # a part storage confirmed without an etag (never a real, quoted, etag)
RECEIPT_SEAL = "wriftai receipt"


#: On a 429 without ``Retry-After``: until ``x-ratelimit-reset`` (epoch seconds, measured
#: against the response's ``Date``; a reset in the past leaves it to the uploader's backoff).
RATE_LIMIT = RateLimit(headers=(("x-ratelimit-reset", RESET),))
rate_limit_wait = RATE_LIMIT.wait


def _receipt(secret: str, remote_id: str, download_url: str, details: dict[str, Any]) -> Receipt:
    """The receipt: ``url`` is the download URL without its signature; the whole URL
    is kept sealed for ``syncd files --receipt`` (module docstring)."""
    kept = _receipts.seal(secret, RECEIPT_SEAL, remote_id, {"url": download_url})
    return Receipt(remote_id=remote_id, url=kept.pop("url"), details={**details, **kept})


def _api(options: WriftAIOptions, client: httpx.Client, now: Callable[[], float]) -> Api:
    """The WriftAI API: ``Bearer`` token, :data:`RATE_LIMIT`, a 404 for an upload means it is gone."""
    return Api(
        "wriftai",
        options.base_url,
        client,
        auth=bearer(options.token.reveal()),
        ok=(200, 201),
        rate_limit=RATE_LIMIT,
        lost=(404,),
        now=now,
    )


class _Uploads:
    """``POST /uploads`` as a :class:`~._chunked.ChunkedService` (server-dictated parts)."""

    kind = "uploads"
    # The server dictates the part size (open() returns it). An empty file has no part: the
    # SDK accepts ``urls: []`` for it (open() also takes one URL for an empty part, and
    # finish() sends that part).
    rules = PartRules(min_size=1, max_parts=MAX_PARTS, empty_parts=0)
    session_fields: Mapping[str, Spec] = {"id": str, "mime": str, "count": int, "sealed": (str, None)}

    def __init__(self, api: Api, options: WriftAIOptions, sealer: Sealer) -> None:
        self.api = api
        self.options = options
        self.sealer = sealer
        self.sealer_secret = options.token.reveal()  # for the receipt's sealed download URL

    def open(self, item: UploadItem, source: Source, part_size: int) -> Opened:
        what = "wriftai: create upload"
        data = self.api.call(
            "POST", "/uploads", what=what, body={"size": source.size, "mime_type": item.content_type}
        )
        upload_id = require(data, "id", what=what)
        urls = require(data, "urls", what=what, kind=list)
        server_part = data.get("part_size")
        if (
            not isinstance(server_part, int)
            or isinstance(server_part, bool)
            or server_part < 0
            or (server_part == 0 and source.size > 0)
        ):
            raise RetryableError(f"{what}: the server's answer lacks a valid 'part_size'", garbled=True)
        count = _chunked.part_count(source.size, max(server_part, 1))
        if source.size == 0 and len(urls) in (0, 1):
            count = len(urls)  # no part (what the SDK expects), or one empty part
        if len(urls) != count or not all(isinstance(u, str) and u for u in urls):
            raise RetryableError(
                f"{what}: the server gave {len(urls)} part URLs for {count} parts of {server_part} bytes",
                garbled=True,
            )
        session: dict[str, Any] = {"id": upload_id, "mime": item.content_type, "count": count, "_urls": urls}
        if self.options.resume_parts:
            session["sealed"] = self.sealer.seal(upload_id, urls)
        return Opened(session, part_size=server_part)

    def _urls(self, session: dict[str, Any]) -> list[str]:
        """The part URLs: from this call, or unsealed from the checkpoint."""
        urls = session.get("_urls")
        if isinstance(urls, list):
            return urls
        sealed = session.get("sealed")
        if not isinstance(sealed, str):
            raise SessionLost(
                "wriftai: the part URLs of the unfinished upload were not kept "
                "(resume_parts = false); starting a new upload"
            )
        urls = self.sealer.unseal(session["id"], sealed)
        if (
            not isinstance(urls, list)
            or len(urls) != session["count"]
            or not all(isinstance(u, str) and u for u in urls)
        ):
            raise SessionLost(
                "wriftai: the saved part URLs cannot be opened (was the token "
                "changed?); starting a new upload"
            )
        session["_urls"] = urls
        return urls

    def send_part(self, session: dict[str, Any], part: Part) -> str:
        urls = self._urls(session)
        if part.count != len(urls):
            raise SessionLost(
                f"wriftai: the upload has {len(urls)} parts, the file {part.count}; starting a new upload"
            )
        what = f"wriftai: PUT part {part.number}/{part.count}"
        try:
            response = self.api.put(
                urls[part.number - 1],
                part.stream(),
                size=part.size,
                content_type=session["mime"],
                what=what,
                session=True,
            )
        except ExpiredError:
            raise SessionLost(
                f"wriftai: the URL of part {part.number} expired and WriftAI "
                "cannot sign it again; starting a new upload"
            ) from None
        etag = response.headers.get("etag")
        if not etag:  # the SDK goes on, and leaves the part out of complete's etags
            log.info("%s: storage confirmed the part without an etag; going on as the SDK does", what)
            return NO_ETAG
        return str(etag)  # as returned, quotes included: complete wants it back

    def finish(self, session: dict[str, Any], parts: list[tuple[int, str]]) -> Receipt:
        what = "wriftai: complete upload"
        path = f"/uploads/{quote(session['id'], safe='')}/complete"
        if session["count"] == 1 and not parts:  # an empty file given one (empty) part URL
            parts = [(1, self._send_empty(session))]
        etags = [etag for _, etag in parts if etag != NO_ETAG]
        data = self.api.call("POST", path, what=what, body={"etags": etags}, session=True)
        download = require(data, "download_url", what=what)
        return _receipt(
            self.sealer_secret, session["id"], download, {"protocol": "uploads", "parts": len(parts)}
        )

    def _send_empty(self, session: dict[str, Any]) -> str:
        try:
            response = self.api.put(
                self._urls(session)[0],
                b"",
                size=0,
                content_type=session["mime"],
                what="wriftai: PUT the empty part",
                session=True,
            )
        except ExpiredError as exc:  # like any part URL: a new upload, not a refused destination
            raise SessionLost(f"wriftai: the empty part's URL expired ({exc})") from None
        return str(response.headers.get("etag") or NO_ETAG)

    def abort(self, session: dict[str, Any]) -> None:
        return None  # WriftAI has no endpoint to cancel an upload


class WriftAIDestination:
    """Uploads to WriftAI; see the module docstring for the protocols and resume state."""

    TYPE: ClassVar[str] = "wriftai"
    CAPABILITIES: ClassVar[Capabilities] = Capabilities(labels=None, category=None)
    Options: ClassVar[type] = WriftAIOptions

    def __init__(
        self,
        name: str,
        options: WriftAIOptions,
        client: httpx.Client,
        *,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.options = options
        self.client = client
        self._api = _api(options, client, now)
        self._uploads = _Uploads(self._api, options, Sealer(options.token.reveal(), "wriftai part urls"))
        self._parallel = Parallel.of(options)

    def upload(
        self, item: UploadItem, source: Source, resume: dict[str, Any] | None, checkpoint: Checkpoint
    ) -> Receipt:
        # The configured protocol wins: a resume of the other kind starts over.
        if self.options.protocol == "uploads":
            return _chunked.run(self._uploads, item, source, resume, checkpoint, parallel=self._parallel)
        return self._upload_urls(item, source, checkpoint)

    def _upload_urls(self, item: UploadItem, source: Source, checkpoint: Checkpoint) -> Receipt:
        body = {
            "name": item.name,
            "size": source.size,
            "resource": self.options.resource,
            "mime_type": item.content_type,
        }

        def sign() -> tuple[str, str]:
            what = "wriftai: create file URLs"
            data = self._api.call("POST", "/files/urls", what=what, body=body)
            upload_url = require(data, "upload_url", what=what)
            download_url = require(data, "download_url", what=what)
            checkpoint({"v": 1, "kind": "urls", "object": urlsplit(download_url).path})
            return upload_url, download_url

        _, download_url = put_signed(
            self._api, sign, source, content_type=item.content_type, what="wriftai: PUT to storage"
        )
        path = urlsplit(download_url).path
        return _receipt(
            self.options.token.reveal(),
            path or redact.strip_query(download_url),
            download_url,
            {"protocol": "urls", "resource": self.options.resource},
        )

    def abort(self, resume: dict[str, Any]) -> None:
        """Nothing to release: WriftAI has no endpoint to cancel an upload."""
        return None

    @classmethod
    def reveal_receipt(cls, options: WriftAIOptions, receipt: dict[str, Any]) -> dict[str, Any]:
        """``receipt`` with its signed ``download_url`` whole (``syncd files --receipt``)."""
        return _receipts.reveal(receipt, [options.token.reveal()], RECEIPT_SEAL)

    def probe(self) -> str:
        """``GET /user`` (the SDK's ``authenticated_user.get()``): token check, no upload."""
        data = self._api.call("GET", "/user", what="wriftai: get the authenticated user")
        name = data.get("name") if isinstance(data, dict) else None
        return f"ok, authenticated as {name}" if isinstance(name, str) and name else "ok"

    def close(self) -> None:
        return None


__all__ = ["WriftAIDestination", "WriftAIOptions"]
