"""The one place where HTTP outcomes become syncd errors.

Destinations send requests with :func:`send` and judge responses with
:func:`check`. Transport failures (connect, read, write and pool timeouts,
resets, truncated bodies) are :class:`~syncd.errors.RetryableError`, except
a failed TLS certificate verification, which is :class:`~syncd.errors.FatalError`
(no file can succeed until an operator acts); 408, 425, 429 and 5xx are
retryable with the server's ``Retry-After`` (delay-seconds, or an HTTP-date
read against the response's ``Date``) as the hint, else the caller's
fallback (a service's own rate-limit header, read with
:func:`parse_retry_after` or :func:`parse_reset`); 401/403 are
:class:`~syncd.errors.FatalError` unless the caller says otherwise; other
4xx are :class:`~syncd.errors.PermanentError`, and any 4xx that comes as an
HTML page (a proxy's, a WAF's) is a garbled answer, retryable. Every message is redacted, and
server text in it (:func:`error_text`) has its control characters escaped.
"""

from __future__ import annotations

import email.utils
import encodings.idna  # noqa: F401  (getaddrinfo's codec: imported lazily, an import out of descriptors fails)
import logging
import math
import os
import ssl
import time
from collections.abc import Callable
from typing import Any

import httpx
import idna

from syncd import __version__, head_deadline
from syncd.errors import ExpiredError, FatalError, PermanentError, RetryableError, UploadError
from syncd.limits import keepalive
from syncd.logs import printable
from syncd.redact import redact, strip_query

log = logging.getLogger(__name__)

RETRY_AFTER_CAP = 900.0  # never wait longer than 15 minutes on a server's word
MAX_BODY = 32 << 20  # bytes of an answer read at most (API answers are kilobytes)
BODY_SECONDS = 300.0  # an answer's body must have arrived within this, once its headers did
# Retried, never a file's failure for good: these, and every 5xx (a CDN's or load
# balancer's 520-526, 507, 511...: the service's trouble, which its circuit counts)
RETRYABLE_STATUS = frozenset({408, 425, 429})
_S3_CUT_SHORT = ("RequestTimeout", "IncompleteBody")  # S3's 400s for a body the network failed
_PROXY_VARIABLES = ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY")


class _NoCookies(httpx.Cookies):
    """A cookie jar that keeps nothing it is sent."""

    def extract_cookies(self, response: httpx.Response) -> None:
        pass


class Client(httpx.Client):
    """httpx's client without cookies.

    No service syncd speaks to uses them (each request carries its own
    credentials or a presigned URL), and a jar shared by every destination
    would only carry state from one service's responses into later requests.
    Reading ``Set-Cookie`` on every response was also a tenth of a small
    file's CPU time.
    """

    @property
    def cookies(self) -> httpx.Cookies:
        return _NO_COOKIES

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        if cookies:
            raise TypeError("syncd's HTTP client keeps no cookies")


_NO_COOKIES = _NoCookies()


def make_client(
    *,
    connect: float = 10.0,
    read: float = 60.0,
    write: float = 60.0,
    pool: float = 30.0,
    max_connections: int = 16,
    verify: bool | ssl.SSLContext = True,
    transport: httpx.BaseTransport | None = None,
) -> Client:
    """The shared client: explicit timeouts (httpx's 5 s default is too short
    for an 8 MiB part on a slow link), bounded connections, no redirects
    carrying credentials to other hosts (httpx strips Authorization there).

    ``transport`` replaces the network (and with it ``verify`` and the
    connection limits): tests pass an in-process emulator
    (``syncd_emulator.EmulatorTransport``) and keep everything else as the
    daemon has it."""
    try:
        client = Client(
            timeout=httpx.Timeout(connect=connect, read=read, write=write, pool=pool),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=keepalive(max_connections)
            ),
            headers={"User-Agent": f"syncd/{__version__}"},
            follow_redirects=False,
            verify=verify,
            transport=transport,
        )
    except (ValueError, ImportError) as exc:  # a proxy from the environment httpx cannot use
        from syncd.errors import ConfigError, Problem

        names = ", ".join(n for n in _PROXY_VARIABLES if os.environ.get(n)) or "a proxy variable"
        message = f"{redact(str(exc)).rstrip('.')}; unset it for syncd, or name an http:// or https:// proxy"
        raise ConfigError([Problem(f"environment {names}", message)], "the environment") from None
    head_deadline.install(client)
    return client


def http_date(value: str | None) -> float | None:
    """Epoch seconds of an HTTP-date, or None if it is not one."""
    if not value:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    return None if when is None else when.timestamp()


def parse_retry_after(
    value: str | None, *, now: Callable[[], float] = time.time, date: str | None = None
) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delay-seconds or HTTP-date), capped.

    An HTTP-date is measured against ``date``, the response's own ``Date``
    header, when it has one: both are the server's clock, so a local clock
    that is off by minutes neither stretches the wait nor cancels it.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        when = http_date(value)
        if when is None:
            return None
        sent = http_date(date)
        seconds = when - (sent if sent is not None else now())
    if seconds != seconds:  # NaN
        return None
    return max(0.0, min(seconds, RETRY_AFTER_CAP))


def parse_reset(
    value: str | None, *, now: Callable[[], float] = time.time, date: str | None = None
) -> float | None:
    """Seconds until ``value``, the epoch second at which a rate limit resets, capped.

    The reset time is the server's clock, so it is measured against ``date``
    (the response's own ``Date``) when there is one: a local clock minutes
    off must neither stretch the wait nor cancel it. A reset in the past or
    a malformed value gives None (the uploader's jittered backoff applies).
    """
    try:
        reset = float((value or "").strip())
    except ValueError:
        return None
    sent = http_date(date)
    current = sent if sent is not None else now()
    if not math.isfinite(reset) or reset < current:
        return None
    return min(reset - current, RETRY_AFTER_CAP)


def send(client: httpx.Client, method: str, url: str, *, what: str, **kwargs: Any) -> httpx.Response:
    """Send one request; transport failures become RetryableError (redacted).

    The answer's body is read here, at most :data:`MAX_BODY` bytes (decoded: a small
    gzip body may expand to gigabytes) within :data:`BODY_SECONDS`: the client's read
    timeout is per socket read, so a server dripping a byte a second held a worker for
    good, and a huge error body was read whole into memory. Either is retryable, and so is
    a body that does not decode as its ``Content-Encoding`` says (a proxy labelling a plain
    page ``gzip``): a garbled answer, the service's trouble rather than the file's.
    """
    try:
        with head_deadline.head_phase():
            response = client.send(client.build_request(method, url, **kwargs), stream=True)
        try:
            response._content = _bounded_body(response, what)  # what Response.read() sets
        finally:
            response.close()
        return response
    except httpx.UnsupportedProtocol:
        # A URL the service handed out (a storage URL) that is relative, or file:, ftp:...:
        # a malformed answer about this file, not a network that is down.
        raise RetryableError(
            f"{what}: the service gave a URL that is not http(s): {strip_query(url)!r}"
        ) from None
    except httpx.TransportError as exc:
        if head_deadline.ran_out(exc):
            # a service sending its status line and headers a byte at a time: a garbled
            # answer (the service's trouble, its circuit counts it), never the file's
            raise RetryableError(f"{what}: {exc}", garbled=True) from None
        detail = redact(str(exc)) or "connection failed"
        if _certificate_rejected(exc):
            # The same for every file until an operator acts (ca_bundle, the server's
            # certificate): pause the destination rather than use up each file's attempts.
            raise FatalError(f"{what}: TLS: {detail}") from None
        raise RetryableError(f"{what}: {type(exc).__name__}: {detail}", transport=True) from None
    except (httpx.InvalidURL, idna.IDNAError) as exc:
        # base_url is checked when the config is loaded: this is a URL the service gave
        # (a storage URL), a malformed answer as above, never a refusal of the file
        raise RetryableError(
            f"{what}: the service gave a URL that is not valid: {strip_query(url)!r}: {strip_query(str(exc))}"
        ) from None


def _bounded_body(response: httpx.Response, what: str) -> bytes:
    deadline = time.monotonic() + BODY_SECONDS
    chunks: list[bytes] = []
    size = 0
    try:
        for chunk in response.iter_bytes():
            size += len(chunk)
            # no service answers with that much, or that slowly: a garbled answer, the
            # service's trouble (its circuit counts it), never an attempt of the file's
            if size > MAX_BODY:
                raise RetryableError(
                    f"{what}: HTTP {response.status_code} with an answer over {MAX_BODY >> 20} MiB",
                    status=response.status_code,
                    garbled=True,
                )
            if time.monotonic() > deadline:
                raise RetryableError(
                    f"{what}: HTTP {response.status_code}, its answer still coming after {BODY_SECONDS:g}s",
                    status=response.status_code,
                    garbled=True,
                )
            chunks.append(chunk)
    except httpx.DecodingError:
        # a body that is not what its Content-Encoding names: httpx's DecodingError is no
        # TransportError, and nothing the file did
        encoding = printable(response.headers.get("Content-Encoding", ""))[:40]
        raise RetryableError(
            f"{what}: HTTP {response.status_code} with an answer that is not the "
            f"{encoding!r} its Content-Encoding says",
            garbled=True,
        ) from None
    return b"".join(chunks)


def _certificate_rejected(exc: BaseException) -> bool:
    """Whether a transport error is a failed TLS certificate verification."""
    seen: BaseException | None = exc
    for _ in range(8):  # httpx wraps httpcore wraps ssl
        if seen is None:
            break
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return "CERTIFICATE_VERIFY_FAILED" in str(exc)


def error_text(response: httpx.Response, limit: int = 300) -> str:
    """A short, redacted, printable excerpt of an error response body.

    This is where server text enters syncd's error messages: secrets are masked
    before the cut (a cut must not leave half a secret unrecognised), and
    control characters (ESC, BEL, CR, C1) and bidi overrides are escaped.
    """
    try:
        body = response.text
    except Exception:
        body = ""
    body = redact(" ".join(body.split()))
    if len(body) > limit:
        body = body[:limit] + "..."
    return printable(body)


def check(
    response: httpx.Response,
    *,
    what: str,
    ok: tuple[int, ...] = (200,),
    auth_fatal: bool = True,
    retry_after: float | None = None,
    expired: tuple[int, ...] = (),
    min_wait: float = 0.0,
) -> httpx.Response:
    """Return ``response`` if its status is in ``ok``, else raise the mapped error.

    ``expired`` lists statuses that mean "the presigned URL, policy or token
    has expired" for this request (typically ``(403,)`` for a PUT to cloud
    storage); they raise :class:`~syncd.errors.ExpiredError`, which the
    destination handles by re-signing. ``retry_after`` (when the answer has
    no ``Retry-After``) and ``min_wait`` go to the
    :class:`~syncd.errors.RetryableError` of a retryable status.

    Any other 4xx that comes as an HTML page (:func:`html_page`) is a garbled
    answer, whatever ``expired`` and ``auth_fatal`` say: storage and APIs
    answer in XML or JSON, and a WAF's or proxy's block page says nothing of
    the file, the signature or the credentials.
    """
    status = response.status_code
    if status in ok:
        if html_page(response) and response.content.strip():  # a portal's page (GCS labels
            # its empty 200s text/html): nothing was confirmed
            raise RetryableError(f"{what}: HTTP {status}, an HTML page, not the service's", garbled=True)
        return response
    detail = error_text(response)
    message = f"{what}: HTTP {status}" + (f": {detail}" if detail else "")
    if status in RETRYABLE_STATUS or 500 <= status <= 599:
        hint = parse_retry_after(response.headers.get("Retry-After"), date=response.headers.get("Date"))
        raise RetryableError(
            message, status=status, retry_after=hint if hint is not None else retry_after, min_wait=min_wait
        )
    if 400 <= status <= 499 and html_page(response):
        # a proxy's, an ingress's with no backend, a WAF's or a captive portal's page: every
        # file got it, and each failed for good at once (or, a 403 from storage, was
        # charged as an expired signature); it counts for the destination's circuit instead
        raise RetryableError(
            f"{message} (an HTML page, not the service's answer)", status=status, garbled=True
        )
    if status == 400 and any(f"<Code>{c}</Code>" in response.text[:4096] for c in _S3_CUT_SHORT):
        # S3: the body stalled or came short (AWS S3 "Error responses"): the network's trouble
        raise RetryableError(f"{message} (the connection stalled or was cut)", transport=True)
    if status in expired:
        raise ExpiredError(message, status=status)
    if status in (401, 403) and auth_fatal:
        raise FatalError(message, status=status)
    if not 200 <= status < 500:  # a 1xx handed on, 600-999 (a WAF's 999): no service's answer
        raise RetryableError(f"{what}: HTTP {status}, not a status of HTTP's", status=status, garbled=True)
    if 200 <= status < 300:
        # a success the protocol does not name says nothing of the file, either way: never
        # a failure for good (an abort would then delete what the service may have kept)
        raise RetryableError(f"{what}: unexpected HTTP {status}", status=status, garbled=True)
    if 300 <= status < 400:  # not followed (syncd/destinations follow their own)
        location = response.headers.get("Location")
        moved = (
            f"{what}: HTTP {status}, a redirect to {strip_query(location or '')!r} that syncd does not follow"
        )
        if status in (301, 308) and location:  # for every file alike until the URL is fixed: pause
            raise FatalError(
                f"{moved}; if the address configured is an old one, set the new one", status=status
            )
        # a temporary one (S3's 307 while DNS settles), or one that says not where to (or a
        # captive portal's 302 to its login page)
        raise RetryableError(moved, status=status, garbled=True)
    raise PermanentError(message, status=status)


def html_page(response: httpx.Response) -> bool:
    """Whether an answer is an HTML page (``Content-Type: text/html``...), which no
    service syncd speaks to sends: a proxy, a WAF or a captive portal answered."""
    return "html" in response.headers.get("Content-Type", "").lower()


def json_body(response: httpx.Response, *, what: str) -> Any:
    """Decode a JSON body; garbage from the server is retryable, never a crash."""
    try:
        return response.json()
    except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested past the limit
        excerpt = error_text(response, 120)
        raise RetryableError(
            f"{what}: the server returned a body that is not JSON: {excerpt!r}", garbled=True
        ) from None


def require(data: Any, key: str, *, what: str, kind: type = str) -> Any:
    """``data[key]`` checked for presence and type; a malformed answer is retryable."""
    if not isinstance(data, dict) or not isinstance(data.get(key), kind):
        raise RetryableError(f"{what}: the server's answer lacks a valid {key!r}", garbled=True)
    return data[key]


__all__ = [
    "UploadError",
    "check",
    "error_text",
    "html_page",
    "json_body",
    "make_client",
    "parse_reset",
    "parse_retry_after",
    "require",
    "send",
]
