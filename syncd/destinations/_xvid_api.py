"""The Xvid API: the OAuth access token, and requests that carry it.

:class:`XvidAuth` caches one token per destination until ``TOKEN_MARGIN``
seconds before it expires (registered with :mod:`syncd.redact`);
:class:`XvidApi` sends every call with it, replaces it once when a call
answers 403 ``0x0000003`` and repeats that call once. Both follow redirects
to the same scheme, host and port only (:func:`send_following`): a redirect
elsewhere would take the token or the client secret with it, and is judged
by :func:`syncd.http.check` instead, as every other service's redirect is.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from typing import Any

import httpx

from syncd import redact
from syncd.destinations._api import Api
from syncd.destinations.options import XvidOptions
from syncd.errors import FatalError, PermanentError, RetryableError
from syncd.http import check, json_body, require, send

log = logging.getLogger("syncd.destinations.xvid")  # the destination's lines keep one logger name

GRANT_TYPE = "client_credential"  # singular: that is what Xvid documents
TOKEN_REFUSED = "0x0000003"
TOKEN_MARGIN = 60.0  # seconds before expiry that a token is replaced
FALLBACK_TTL = 300.0  # when the token answer has no usable expires_in
REDIRECTS = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5


def _ttl(value: Any) -> float:
    """Seconds from ``expires_in`` (documented as a string, "7200")."""
    try:
        seconds = float(value) if isinstance(value, str | int) and not isinstance(value, bool) else math.nan
    except ValueError:
        seconds = math.nan
    return seconds if 0 < seconds < math.inf else FALLBACK_TTL


def send_following(
    client: httpx.Client, method: str, url: str, *, what: str, **kwargs: Any
) -> httpx.Response:
    """:func:`syncd.http.send`, following redirects to the same scheme, host and port.

    The method and body are kept (an API call redirected to its trailing-slash
    form must stay a POST), except after 303 (then GET, no body). A redirect
    to anywhere else is not followed, since the Bearer token or the client
    secret would go with it: it is returned for :func:`syncd.http.check`,
    which makes a temporary one (a captive portal's 302 to its login page)
    the service's trouble, retried and counted by its circuit, and a
    permanent one (301, 308: ``base_url`` moved) a FatalError. It says nothing
    about the file, so it is never the file's failure. A query the target
    lacks is kept.
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
        if target is None or (target.scheme, target.host, target.port) != (here.scheme, here.host, here.port):
            log.debug("xvid: %s: HTTP %d to another host; not followed", what, response.status_code)
            return response
        if target.query:
            kwargs["params"] = None  # the Location carries the query
        if response.status_code == 303:
            method = "GET"
            kwargs = {k: v for k, v in kwargs.items() if k not in ("json", "data", "content")}
        log.debug("xvid: %s: HTTP %d, following it to %s", what, response.status_code, target.path)
        url = str(target)
    raise RetryableError(f"{what}: more than {MAX_REDIRECTS} redirects")


class XvidAuth:
    """The OAuth access token, cached for every upload of one destination."""

    def __init__(self, options: XvidOptions, client: httpx.Client, clock: Callable[[], float]) -> None:
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
        form = {
            "grant_type": GRANT_TYPE,
            "client_id": self.options.client_id,
            "client_secret": self.options.client_secret.reveal(),
            "scope": self.options.scope,
        }
        url = self.options.base_url.rstrip("/") + "/oauth2/token/"
        response = send_following(
            self.client, "POST", url, what=what, data=form, headers={"Accept": "application/json"}
        )
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


class XvidApi(Api):
    """The Xvid API: a Bearer token from :class:`XvidAuth`, same-host redirects followed,
    a 404 for an upload means it is gone; no rate-limit header of its own."""

    def __init__(self, options: XvidOptions, client: httpx.Client, auth: XvidAuth) -> None:
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

    def _request(
        self, method: str, path: str, token: str, what: str, kwargs: dict[str, Any]
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        return send_following(self.client, method, self.base + path, what=what, headers=headers, **kwargs)


__all__ = ["XvidApi", "XvidAuth", "send_following"]
