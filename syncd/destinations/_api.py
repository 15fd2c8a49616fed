"""The API client every destination shares, and presigned PUTs to storage.

A service talks to its **API** (JSON, with its credentials) and to
**storage** (presigned URLs, no credentials; api.video's API takes the
chunks itself). :class:`Api` is the client for both, written once and
parametrised by data:

``name``
    The service, for log lines.
``base_url``
    The API root.
``auth``
    The credential headers of every API call (:func:`basic`, :func:`bearer`),
    or none.
``ok``
    The statuses that mean success where a call names none.
``rate_limit``
    :class:`RateLimit`: which response headers carry the wait after a 429
    besides ``Retry-After``, and the service's documented wait when none
    does (API answers only).
``lost``
    The statuses that mean "the upload session is gone" for a call made with
    ``session=True``: they raise :class:`~._chunked.SessionLost`, which makes
    the chunk driver open a new session.

A service whose API needs more (Xvid: an OAuth token replaced when refused,
same-host redirects) overrides :meth:`Api.request`.

Storage: :meth:`Api.put` sends bytes to a presigned URL with an exact
``Content-Length`` and no credentials; a 403 there (not an HTML page) is an
expired signature (:class:`~syncd.errors.ExpiredError`). :func:`put_signed` is the single-PUT
flow (Lilt ``single``, WriftAI ``urls``): ask the API for a URL, PUT the
whole file, and ask again when the URL expired. Multi-part uploads are
:mod:`._chunked`'s. Every status is mapped by :func:`syncd.http.check`.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from syncd import redact
from syncd.destinations._chunked import SessionLost
from syncd.destinations.base import READ_BLOCK, Source
from syncd.errors import ExpiredError, FatalError, PermanentError
from syncd.http import check, json_body, parse_reset, parse_retry_after, send

log = logging.getLogger(__name__)

STORAGE_OK = (200, 201, 204)
EXPIRED = (403,)  # from storage: the signature or the policy expired
SINGLE_RENEWALS = 2  # fresh URLs for one single PUT after a storage 403, per call
DELAY = "delay"  # a rate-limit header in Retry-After's form: seconds, or an HTTP-date
RESET = "reset"  # a rate-limit header naming the epoch second at which the limit resets

T = TypeVar("T")


@dataclass(frozen=True)
class RateLimit:
    """Where a service names the wait after a 429, after ``Retry-After``.

    :func:`syncd.http.check` reads ``Retry-After`` itself; this is its
    fallback: ``headers`` in order, each ``(name, DELAY or RESET)``, then
    ``default``, the wait the service documents for its API. That documented
    wait is also a floor (:meth:`floor`): ``retry_max_seconds`` caps the
    waits servers name, not the one the service's documentation demands.
    """

    headers: tuple[tuple[str, str], ...] = ()
    default: float | None = None

    def wait(
        self, response: httpx.Response, now: Callable[[], float] = time.time, *, api: bool = True
    ) -> float | None:
        """Seconds to wait after ``response`` if it is a 429 (``default`` only when ``api``)."""
        if response.status_code != 429:
            return None
        date = response.headers.get("Date")
        for name, form in self.headers:
            value = response.headers.get(name)
            parse = parse_reset if form == RESET else parse_retry_after
            hint = parse(value, now=now, date=date)
            if hint is not None:
                return hint
        return self.default if api else None

    def floor(
        self, response: httpx.Response, now: Callable[[], float] = time.time, *, api: bool = True
    ) -> float:
        """The documented wait when it is the one that applies (an API 429 naming no
        wait of its own), else 0: the least time to hold back, whatever the cap."""
        if self.default is None or not api or response.status_code != 429:
            return 0.0
        named = parse_retry_after(response.headers.get("Retry-After"), date=response.headers.get("Date"))
        if named is not None:
            return 0.0
        return self.default if self.wait(response, now, api=api) == self.default else 0.0


def basic(user: str, password: str) -> dict[str, str]:
    """``Authorization: Basic base64(user:password)``; each secret form is registered for redaction."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    for secret in (user, password, token):
        redact.register(secret)
    return {"Authorization": f"Basic {token}"}


def bearer(token: str) -> dict[str, str]:
    """``Authorization: Bearer token``; the token is registered for redaction."""
    redact.register(token)
    return {"Authorization": f"Bearer {token}"}


class Api:
    """One service's API and storage requests; see the module docstring for the data."""

    def __init__(
        self,
        name: str,
        base_url: str,
        client: httpx.Client,
        *,
        auth: Mapping[str, str] | None = None,
        ok: tuple[int, ...] = (200,),
        rate_limit: RateLimit = RateLimit(),
        lost: tuple[int, ...] = (404,),
        now: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.base = base_url.rstrip("/")
        self.client = client
        self.auth = None if auth is None else dict(auth)
        self.ok = ok
        self.rate_limit = rate_limit
        self.lost = lost
        self.now = now

    def send(self, method: str, url: str, *, what: str, **kwargs: Any) -> httpx.Response:
        """One request, unchecked (:func:`syncd.http.send`: transport failures mapped)."""
        return send(self.client, method, url, what=what, **kwargs)

    def request(self, method: str, path: str, *, what: str, **kwargs: Any) -> httpx.Response:
        """One API request with the credentials, unchecked."""
        headers = {**(self.auth or {}), "Accept": "application/json"}
        return self.send(method, self.base + path, what=what, headers=headers, **kwargs)

    def call(
        self,
        method: str,
        path: str,
        *,
        what: str,
        ok: tuple[int, ...] | None = None,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        session: bool = False,
    ) -> Any:
        """One API request: its decoded JSON answer (None for 204), or a mapped error.

        ``session``: the request is about an upload session, and the
        service's ``lost`` statuses raise :class:`~._chunked.SessionLost`.
        """
        kwargs: dict[str, Any] = {"params": params}
        if body is not None:
            kwargs["json"] = body
        response = self.request(method, path, what=what, **kwargs)
        self.check(response, what=what, ok=ok, session=session)
        return None if response.status_code == 204 else json_body(response, what=what)

    def check(
        self,
        response: httpx.Response,
        *,
        what: str,
        ok: tuple[int, ...] | None = None,
        expired: tuple[int, ...] = (),
        session: bool = False,
        api: bool = True,
    ) -> httpx.Response:
        """:func:`syncd.http.check` with this service's ``ok``, 429 wait and lost statuses.

        ``api=False`` for a storage answer: the service's documented default
        wait is for its API, so only the rate-limit headers count there.
        """
        try:
            return check(
                response,
                what=what,
                ok=self.ok if ok is None else ok,
                expired=expired,
                retry_after=self.rate_limit.wait(response, self.now, api=api),
                min_wait=self.rate_limit.floor(response, self.now, api=api),
            )
        except (PermanentError, FatalError) as exc:
            if session and exc.status in self.lost:
                raise SessionLost(str(exc), status=exc.status) from None
            raise

    def put(
        self,
        url: str,
        content: Any,
        *,
        size: int,
        what: str,
        content_type: str | None = None,
        session: bool = False,
        expired: tuple[int, ...] = EXPIRED,
    ) -> httpx.Response:
        """PUT ``content`` to a presigned storage URL and check the answer.

        Exactly ``size`` bytes (``Content-Length`` set, so httpx streams a
        generator without chunking), ``Content-Type`` when given, and no
        credentials. ``expired`` statuses raise ExpiredError; with
        ``session``, a lost status raises SessionLost.
        """
        headers = {"Content-Length": str(size)}
        if content_type is not None:
            headers["Content-Type"] = content_type
        response = self.send("PUT", url, what=what, content=content, headers=headers)
        return self.check(response, what=what, ok=STORAGE_OK, expired=expired, session=session, api=False)


def put_signed(
    api: Api, sign: Callable[[], tuple[str, T]], source: Source, *, content_type: str, what: str
) -> tuple[str, T]:
    """Upload ``source`` in one PUT to a presigned URL; ``(url, signed)`` once storage confirmed it.

    ``sign()`` asks the API for a URL, checkpoints what a resume needs, and
    returns the URL with whatever the receipt needs (``signed``). A URL that
    expired on the way (storage 403) is signed again at once, at most
    :data:`SINGLE_RENEWALS` times; then the ExpiredError propagates.
    """
    renewals = 0
    while True:
        url, signed = sign()
        body = source.iter_range(0, source.size)
        try:
            # a body of one block goes as bytes: httpx sends it without iterating
            api.put(
                url,
                b"".join(body) if source.size <= READ_BLOCK else body,
                size=source.size,
                content_type=content_type,
                what=what,
            )
        except ExpiredError:
            if renewals >= SINGLE_RENEWALS:
                raise
            renewals += 1
            log.info(
                "%s: the upload URL expired; asking for a new one (%d/%d)",
                api.name,
                renewals,
                SINGLE_RENEWALS,
            )
            continue
        return url, signed


__all__ = ["DELAY", "EXPIRED", "RESET", "STORAGE_OK", "Api", "RateLimit", "basic", "bearer", "put_signed"]
