"""Keep secrets out of every line of text syncd produces.

Two mechanisms, applied together by :func:`redact`:

* Known secret values. Every secret resolved from the config (API keys,
  tokens, client secrets) and every credential a destination obtains at run
  time (OAuth access tokens, upload tokens) is registered with
  :func:`register`; any occurrence of it is replaced by ``***``.
* Shapes. Query parameters that carry credentials or signatures
  (``key=``, ``token=``, ``X-Amz-Signature=``, ``signature=`` ...) and
  ``Authorization``/``Bearer``/``Basic`` values are masked wherever they
  appear, so a presigned URL in an exception text leaks nothing either.

:class:`RedactingFilter` applies this to every log record, including the
ones httpx and httpcore emit, and :func:`strip_query` is used when a URL is
stored in the ledger as part of a receipt.
"""

from __future__ import annotations

import logging
import re
import threading
from urllib.parse import urlsplit, urlunsplit

MASK = "***"
_MIN_SECRET_LEN = 4  # shorter values would mask ordinary words

_lock = threading.Lock()
_secrets: set[str] = set()
_pattern: re.Pattern[str] | None = None

_SENSITIVE_PARAMS = (
    r"key|api_?key|apikey|token|access_token|refresh_token|upload_token|client_secret|"
    r"secret|password|signature|sig|x-amz-signature|x-amz-credential|x-amz-security-token|"
    r"x-goog-signature|x-goog-credential|awsaccesskeyid|policy"
)
_QUERY_RE = re.compile(rf"(?i)([?&;](?:{_SENSITIVE_PARAMS})=)[^&#\s'\"<>]*")
_AUTH_RE = re.compile(r"(?i)\b(authorization[\"']?\s*[:=]\s*[\"']?)(?:(basic|bearer)\s+)?[^\s,'\"}]+")
_SCHEME_RE = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}")
_JSON_RE = re.compile(
    rf"(?i)([\"'](?:{_SENSITIVE_PARAMS}|apiKey|refreshToken|accessToken)[\"']\s*:\s*[\"'])[^\"']*"
)


def register(secret: str | None) -> None:
    """Mask every future occurrence of ``secret`` (no-op for empty/short values)."""
    global _pattern
    if not secret or len(secret) < _MIN_SECRET_LEN:
        return
    with _lock:
        if secret in _secrets:
            return
        _secrets.add(secret)
        ordered = sorted(_secrets, key=len, reverse=True)
        _pattern = re.compile("|".join(re.escape(s) for s in ordered))


def redact(text: str) -> str:
    """Return ``text`` with every registered secret and secret-shaped value masked."""
    pattern = _pattern
    if pattern is not None:
        text = pattern.sub(MASK, text)
    text = _QUERY_RE.sub(rf"\1{MASK}", text)
    text = _AUTH_RE.sub(lambda m: f"{m.group(1)}{(m.group(2) + ' ') if m.group(2) else ''}{MASK}", text)
    text = _SCHEME_RE.sub(lambda m: f"{m.group(1)} {MASK}", text)
    text = _JSON_RE.sub(rf"\1{MASK}", text)
    return text


def strip_query(url: str) -> str:
    """The URL without query string and fragment (where presigned signatures live)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


class RedactingFilter(logging.Filter):
    """A logging filter that renders the message once and masks secrets in it.

    Installed on the root handlers, so it also sees httpx's
    ``HTTP Request: PUT https://...?X-Amz-Signature=...`` lines.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken %-format must not kill logging
            message = str(record.msg)
        record.msg = redact(message)
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redact(
                logging.Formatter().formatException(record.exc_info)
            )
            record.exc_info = None
        return True
