"""Receipt URLs that are credentials: kept sealed, shown on request.

Some services answer a finished upload with URLs that only work with their
signature or token: WriftAI's ``download_url`` (a signed, time-limited URL
that its SDK hands on whole) and the asset URLs of a private api.video video
(a one-time private token in the query or in the path). A receipt keeps
such a URL twice:

* in clear, with the credential removed (:func:`syncd.redact.strip_query`,
  and ``/token/<t>/`` path segments masked), for ``syncd files`` and logs;
* whole, *sealed* (:class:`syncd.seal.Sealer`, keyed from the destination's
  own secret and bound to the receipt's ``remote_id``) under
  :data:`SEALED_KEY`, so the ledger holds no credential in clear
  (design invariant 7) and ``syncd files --receipt ID`` can show the usable
  URL to whoever holds the config's secret.

When a URL says when it expires (``X-Amz-Date`` + ``X-Amz-Expires``,
``X-Goog-Date`` + ``X-Goog-Expires``, an epoch ``Expires``, the emulator's
``X-Emu-Expires``), the receipt also records :data:`EXPIRES_KEY` (UTC,
ISO 8601): the expiry is not a secret.
"""

from __future__ import annotations

import calendar
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from syncd import redact
from syncd.seal import Sealer

SEALED_KEY = "sealed_urls"  # receipt detail: {name: whole URL}, sealed
EXPIRES_KEY = "url_expires_at"  # receipt detail: when the sealed URLs stop working, if known
_PATH_TOKEN = re.compile(r"(/token/)[^/?#]+")


def plain(url: str) -> str:
    """``url`` without what makes it a credential: its query, fragment and user-info,
    and the token of a ``/token/<t>/`` path segment (api.video's private assets)."""
    return _PATH_TOKEN.sub(rf"\g<1>{redact.MASK}", redact.strip_query(url))


def has_credential(url: str) -> bool:
    """Whether :func:`plain` takes something away from ``url``."""
    return plain(url) != url


def expires_at(url: str) -> float | None:
    """Epoch seconds at which a signed ``url`` stops working, when it says so."""
    try:
        query = {k.lower(): v for k, v in parse_qsl(urlsplit(url).query)}
    except ValueError:
        return None
    for date_key, ttl_key in (("x-amz-date", "x-amz-expires"), ("x-goog-date", "x-goog-expires")):
        if date_key in query and ttl_key in query:
            try:
                start = calendar.timegm(time.strptime(query[date_key], "%Y%m%dT%H%M%SZ"))
                return start + int(query[ttl_key])
            except ValueError:
                return None
    for key in ("x-emu-expires", "expires"):
        if query.get(key, "").isdigit():
            return float(query[key])
    return None


def iso(epoch: float) -> str | None:
    """``epoch`` as an ISO time; None for one no calendar holds (a server's garbage)."""
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
    except (OverflowError, OSError, ValueError):
        return None


def seal(secret: str, purpose: str, remote_id: str, urls: Mapping[str, str]) -> dict[str, Any]:
    """Receipt details for ``urls`` ({detail name: whole URL}): each in its plain form,
    the credential-bearing ones also whole and sealed, and the earliest known expiry."""
    details: dict[str, Any] = {name: plain(url) for name, url in urls.items()}
    secret_urls = {name: url for name, url in urls.items() if has_credential(url)}
    if secret_urls:
        details[SEALED_KEY] = Sealer(secret, purpose).seal(remote_id, secret_urls)
        known = [t for t in map(expires_at, secret_urls.values()) if t is not None]
        when = iso(min(known)) if known else None
        if when is not None:  # unknown otherwise: the upload stands (the service has the file)
            details[EXPIRES_KEY] = when
    return details


def reveal(receipt: Mapping[str, Any], secrets: Iterable[str], purpose: str) -> dict[str, Any]:
    """``receipt`` (as stored in the ledger) with its sealed URLs put back whole.

    Tries each of ``secrets`` (the destination's current ones); raises
    ValueError when none opens the seal (the secret was changed since).
    A receipt without sealed URLs is returned as it is.
    """
    out = dict(receipt)
    sealed = out.pop(SEALED_KEY, None)
    if sealed is None:
        return out
    remote_id = str(out.get("remote_id") or "")
    for secret in secrets:
        urls = Sealer(secret, purpose).unseal(remote_id, sealed)
        if isinstance(urls, dict):
            out.update({k: v for k, v in urls.items() if isinstance(v, str)})
            return out
    raise ValueError(
        "the receipt's URLs were sealed with another secret than the one configured now (was it changed?)"
    )


__all__ = ["EXPIRES_KEY", "SEALED_KEY", "expires_at", "has_credential", "plain", "reveal", "seal"]
