"""api.video's credentials, apart from the service (:mod:`syncd_emulator.apivideo`).

:class:`Credentials` holds what the emulator accepts: upload tokens (the
emulator's ``apivideo_token``, and tokens minted with ``POST /upload-tokens``,
which live in memory and honour their ``ttl``), the API key (``Basic
base64(KEY:)``, empty password) and the access tokens ``POST /auth/api-key``
exchanges it for (``Bearer``; ``/auth/refresh`` renews one, once per refresh
token). Refusals are api.video problems (:mod:`syncd_emulator.apivideo_problems`),
as the service's module docstring describes.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
import threading
from dataclasses import dataclass
from typing import Any

from syncd_emulator.apivideo_problems import bad, problem
from syncd_emulator.apivideo_videos import now_iso
from syncd_emulator.messages import Request
from syncd_emulator.service import Settings

TOKEN_TTL_MAX = 2_147_483_647
ACCESS_TTL = 3600
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


@dataclass
class UploadToken:
    """One upload token; ``expires`` is None for one that never expires (``ttl`` 0)."""

    token: str
    ttl: int
    created: float
    expires: float | None


def token_json(t: UploadToken) -> dict[str, Any]:
    """An upload token as ``/upload-tokens`` answers it."""

    def iso(ts: float) -> str:
        return now_iso(lambda: ts)

    return {
        "token": t.token,
        "ttl": t.ttl,
        "createdAt": iso(t.created),
        "expiresAt": iso(t.expires) if t.expires is not None else None,
    }


class Credentials:
    """The upload tokens, the API key and its access tokens (thread-safe)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        token = settings.apivideo_token
        self._tokens = {token: UploadToken(token, 0, settings.clock(), None)}
        self._access: dict[str, float] = {}  # access token -> expiry
        self._refresh: dict[str, str] = {}  # refresh token -> api key it came from

    # -- upload tokens ------------------------------------------------------------------

    def upload_token(self, value: str | None) -> UploadToken:
        """The live upload token ``value``; 404 ``name: token`` when unknown or expired."""
        with self._lock:
            token = self._tokens.get(value or "")
            if token is not None and token.expires is not None and self.settings.clock() >= token.expires:
                del self._tokens[token.token]
                token = None
        if token is None:
            raise problem(404, "resource-not-found", "The upload token is unknown or expired.", "token")
        return token

    def mint(self, body: Any) -> UploadToken:
        """A new upload token from a ``POST /upload-tokens`` body (``{"ttl": seconds}``)."""
        ttl = body.get("ttl", 0) if isinstance(body, dict) else None
        if not isinstance(ttl, int) or isinstance(ttl, bool) or not 0 <= ttl <= TOKEN_TTL_MAX:
            raise bad("invalid-attribute", f"ttl must be an integer from 0 to {TOKEN_TTL_MAX}", "ttl")
        now = self.settings.clock()
        token = UploadToken(
            "to" + "".join(secrets.choice(_ALPHABET) for _ in range(22)), ttl, now, now + ttl if ttl else None
        )
        with self._lock:
            self._tokens[token.token] = token
        return token

    def live(self) -> list[UploadToken]:
        """Every upload token that has not expired."""
        with self._lock:
            tokens = list(self._tokens.values())
        now = self.settings.clock()
        return [t for t in tokens if t.expires is None or t.expires > now]

    def revoke(self, value: str | None) -> None:
        """Delete the upload token ``value``; 404 when unknown or expired."""
        token = self.upload_token(value)
        with self._lock:
            self._tokens.pop(token.token, None)

    # -- the API key ----------------------------------------------------------------------

    def require_key(self, request: Request) -> None:
        """401 unless the request carries the API key (Basic) or a live access token (Bearer)."""
        header = request.headers.get("Authorization") or ""
        scheme, _, value = header.partition(" ")
        key = self.settings.apivideo_key.encode()
        ok = False
        if scheme.lower() == "basic":
            try:
                user, sep, password = base64.b64decode(value.strip(), validate=True).partition(b":")
            except (binascii.Error, ValueError):
                user, sep, password = b"", b"", b"x"
            ok = bool(sep) and not password and hmac.compare_digest(user, key)
        elif scheme.lower() == "bearer":
            with self._lock:
                expiry = self._access.get(value.strip())
            ok = expiry is not None and self.settings.clock() < expiry
        if not ok:
            raise problem(
                401,
                "authentication-invalid-user-credentials",
                "Unauthorized: send Basic base64(apiKey:) or a Bearer access token.",
            )

    def login(self, body: Any) -> dict[str, Any]:
        """``POST /auth/api-key``: ``{"apiKey"}`` -> a new access and refresh token."""
        key = body.get("apiKey") if isinstance(body, dict) else None
        if not isinstance(key, str) or not hmac.compare_digest(
            key.encode(), self.settings.apivideo_key.encode()
        ):
            raise bad("authentication-invalid-user-credentials", "The user credentials were incorrect.", "")
        return self._issue()

    def refresh(self, body: Any) -> dict[str, Any]:
        """``POST /auth/refresh``: ``{"refreshToken"}`` (each works once) -> new tokens."""
        value = body.get("refreshToken") if isinstance(body, dict) else None
        with self._lock:
            known = isinstance(value, str) and self._refresh.pop(value, None) is not None
        if not known:
            raise bad(
                "authentication-invalid-user-credentials", "The refresh token is invalid.", "refreshToken"
            )
        return self._issue()

    def _issue(self) -> dict[str, Any]:
        access, refresh = secrets.token_urlsafe(32), "def" + secrets.token_hex(32)
        with self._lock:
            now = self.settings.clock()
            self._access = {k: v for k, v in self._access.items() if v > now}
            self._access[access] = now + ACCESS_TTL
            self._refresh[refresh] = self.settings.apivideo_key
        return {
            "token_type": "Bearer",
            "expires_in": ACCESS_TTL,
            "access_token": access,
            "refresh_token": refresh,
        }
