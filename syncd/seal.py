"""Sealed resume state: credentials-like session details, encrypted for the ledger.

Some services hand out, once per upload session, details that are
credentials in their own right and cannot be obtained again after a crash:
WriftAI's presigned part URLs, Xvid's form-post policy and signature. To
resume such an upload the ledger must keep them, and the ledger must never
hold a secret in the clear (design invariant 7). So a destination seals them
with a key derived from its own configured secret (the API token, the client
secret), which never enters the ledger.

AES-256-GCM from the ``cryptography`` package; the key is HKDF-SHA256 of the
secret with a per-use ``purpose``; the upload id is authenticated associated
data, so a sealed value only opens for the upload it was made for. Anyone
who can open a seal already holds the secret, which grants more than the
seal does. :meth:`Sealer.unseal` returns ``None`` for anything it did not
seal with this secret, purpose and upload id (secret rotated, damaged row,
another upload): the caller then opens a new session.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import zlib
from typing import Any

# cryptography is imported by the first Sealer, not with this module: about 10 ms that
# every start of syncd (each `syncd once`, each CLI command) would pay otherwise, whether
# or not a configured destination seals anything.

VERSION = "s1"
_NONCE = 12


class Sealer:
    def __init__(self, secret: str, purpose: str) -> None:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=f"syncd seal {VERSION}: {purpose}".encode()
        ).derive(secret.encode())
        self._aead = AESGCM(key)

    def seal(self, bind: str, value: Any) -> str:
        """``value`` (JSON-serialisable) encrypted and bound to ``bind`` (an upload id)."""
        plain = zlib.compress(json.dumps(value, separators=(",", ":")).encode(), 9)
        nonce = os.urandom(_NONCE)
        sealed = self._aead.encrypt(nonce, plain, bind.encode())
        return f"{VERSION}.{base64.urlsafe_b64encode(nonce + sealed).decode().rstrip('=')}"

    def unseal(self, bind: str, text: Any) -> Any | None:
        """The value sealed for ``bind``, or None if it cannot be opened."""
        from cryptography.exceptions import InvalidTag

        if not isinstance(text, str):
            return None
        version, _, body = text.partition(".")
        if version != VERSION:
            return None
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            plain = self._aead.decrypt(raw[:_NONCE], raw[_NONCE:], bind.encode())
            return json.loads(zlib.decompress(plain))
        except (ValueError, binascii.Error, InvalidTag, zlib.error):
            return None
