"""Keep secrets out of every line of text syncd produces.

Two mechanisms, applied together by :func:`redact`:

* Known secret values. Every secret resolved from the config (API keys,
  tokens, client secrets) and every credential a destination obtains at run
  time (OAuth access tokens, upload tokens) is registered with
  :func:`register`; any occurrence of it is replaced by ``***``, and so is
  any occurrence of its percent-encoded forms (``quote``, ``quote_plus``,
  upper- or lower-case hex), as it appears inside a URL or a form body.
* Shapes. Query parameters that carry credentials or signatures
  (``key=``, ``token=``, ``X-Amz-Signature=``, ``signature=``, and any
  ``...-Signature``/``..._token``/``...-Credential`` name such as the
  emulator's ``X-Emu-Signature=`` ...), also in a URL percent-encoded inside
  other text (``%26X-Amz-Signature%3D...``) or in JSON that escapes ``&``
  (``\\u0026X-Amz-Signature=...``), the password of a URL's user-info
  (``https://user:***@host/``), the token in an ``/upload-tokens/<token>``
  or ``/token/<token>/`` path (api.video's private video assets), and
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
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, quote_plus, urlsplit, urlunsplit

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
# Any name that ends in one of these after a separator is a credential too:
# X-Emu-Signature, X-Goog-Signature, X-Amz-Security-Token, csrf_token, db.password.
# (X-Emu-Expires, X-Emu-Size, s3Key are not, and stay readable.)
_CREDENTIAL_SUFFIX = r"[\w.-]*?[-_.](?:signature|sig|token|secret|password|passwd|credential)"
_PARAM = rf"(?:{_SENSITIVE_PARAMS}|{_CREDENTIAL_SUFFIX})"


class _Lazy:
    """A regex compiled on its first use. :func:`redact` looks for each shape only in
    text that holds its literal, and most processes (``syncd once`` of a few files, an
    upload helper) never meet most of them: compiling them all was milliseconds of CPU
    at every start."""

    def __init__(self, source: str) -> None:
        self._source = source
        self._compiled: re.Pattern[str] | None = None

    @property
    def compiled(self) -> re.Pattern[str]:
        compiled = self._compiled
        if compiled is None:  # two threads may both compile it: the same pattern either way
            compiled = self._compiled = re.compile(self._source)
        return compiled

    def sub(self, repl: str | Callable[[re.Match[str]], str], text: str) -> str:
        return self.compiled.sub(repl, text)


_QUERY_RE = _Lazy(rf"(?i)([?&;]{_PARAM}=)[^&#\s'\"<>]*")
# The same parameters in a URL that is percent-encoded (once or twice) inside other text, a
# login page's ``?next=...%26X-Amz-Signature%3D...``: the value runs to the next encoded & or #.
_ENCODED_QUERY_RE = _Lazy(
    rf"(?i)(%(?:25)?(?:26|3F|3B){_PARAM}(?:%(?:25)?3D|=))(?:[^&#\s'\"<>%]|%(?!(?:25)?2[36]))*"
)
# ... and in JSON whose encoder escapes & as \u0026 (Go's encoding/json): the value runs to
# the next such escape of &, <, >, or a quote (a \/ inside it is part of it).
_ESCAPED_QUERY_RE = _Lazy(
    rf"(?i)(\\u00(?:26|3F|3B){_PARAM}(?:=|\\u003D))(?:[^&#\s'\"<>\\]|\\(?!u00(?:26|3C|3E|22|27)))*"
)
# scheme://user:password@ or scheme://user@ (a lone user-info is often a token).
_USERINFO_RE = _Lazy(r"(?i)\b([a-z][a-z0-9+.-]*://)([^/?#@\s:'\"<>]*)(:[^/?#\s'\"<>]*)?@")
# api.video's GET/DELETE /upload-tokens/{token} and a private video's asset URLs
# (/vod/{id}/token/{token}/...): the token is a path segment.
_PATH_RE = _Lazy(r"(?i)(/upload-tokens/|/token/)[^/?#\s'\"<>]+")
_AUTH_RE = _Lazy(r"(?i)\b(authorization[\"']?\s*[:=]\s*[\"']?)(?:(basic|bearer)\s+)?[^\s,'\"}]+")
_SCHEME_RE = _Lazy(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}")
_JSON_RE = _Lazy(rf"(?i)([\"'](?:{_PARAM}|apiKey|refreshToken|accessToken)[\"']\s*:\s*[\"'])[^\"']*")


def _encoded_forms(secret: str) -> set[str]:
    """``secret`` as it may appear in a URL or form: raw, ``quote`` (with and
    without ``/`` safe), and ``quote_plus`` (with and without ``/`` safe)."""
    return {secret, quote(secret, safe=""), quote(secret), quote_plus(secret), quote_plus(secret, safe="/")}


def _form_regex(form: str) -> str:
    """``re.escape(form)`` whose ``%2F`` escapes also match ``%2f``."""
    pieces = re.split(r"(%[0-9A-F]{2})", form)
    return "".join(
        "%" + "".join(f"[{c}{c.lower()}]" if c.isalpha() else c for c in piece[1:])
        if i % 2
        else re.escape(piece)
        for i, piece in enumerate(pieces)
    )


def register(secret: str | None) -> None:
    """Mask every future occurrence of ``secret`` and of its percent-encoded
    forms (no-op for empty/short values)."""
    global _pattern
    if not secret or len(secret) < _MIN_SECRET_LEN:
        return
    with _lock:
        if secret in _secrets:
            return
        _secrets.add(secret)
        forms = {form for s in _secrets for form in _encoded_forms(s)}
        ordered = sorted(forms, key=len, reverse=True)
        _pattern = re.compile("|".join(_form_regex(f) for f in ordered))


def redact(text: str) -> str:
    """Return ``text`` with every registered secret and secret-shaped value masked.

    Each shape is looked for only where the text holds a literal it cannot match
    without (every log line passes here: most hold none of them)."""
    pattern = _pattern
    if pattern is not None:
        text = pattern.sub(MASK, text)
    if "?" in text or "&" in text or ";" in text:
        text = _QUERY_RE.sub(rf"\1{MASK}", text)
    if "%" in text:
        text = _ENCODED_QUERY_RE.sub(rf"\1{MASK}", text)
    lower = text.lower()  # the masks put in add none of the literals looked for
    if "\\u00" in lower:
        text = _ESCAPED_QUERY_RE.sub(rf"\1{MASK}", text)
    if "://" in text and "@" in text:
        text = _USERINFO_RE.sub(_mask_userinfo, text)
    if "/upload-tokens/" in lower or "/token/" in lower:
        text = _PATH_RE.sub(rf"\1{MASK}", text)
    if "authorization" in lower:
        text = _AUTH_RE.sub(lambda m: f"{m.group(1)}{(m.group(2) + ' ') if m.group(2) else ''}{MASK}", text)
    if "bearer" in lower or "basic" in lower:
        text = _SCHEME_RE.sub(lambda m: f"{m.group(1)} {MASK}", text)
    if ":" in text:
        text = _JSON_RE.sub(rf"\1{MASK}", text)
    return text


def redact_json(value: Any) -> Any:
    """``value`` (JSON data: a receipt, a recorded error) with every string redacted."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [redact_json(v) for v in value]
    if isinstance(value, dict):
        return {k: redact_json(v) for k, v in value.items()}
    return value


def _mask_userinfo(m: re.Match[str]) -> str:
    scheme, user, password = m.group(1), m.group(2), m.group(3)
    if password is None:  # scheme://user@host: a lone user-info may be the token itself
        return f"{scheme}{MASK}@" if user else m.group()
    return f"{scheme}{user}:{MASK}@"


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
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True
