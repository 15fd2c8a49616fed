"""The certificates HTTPS connections are verified with, the public roots read when first needed.

The trust store is httpx's default, certifi's bundle (or the operator's
``SSL_CERT_FILE`` / ``SSL_CERT_DIR``), plus ``daemon.ca_bundle``. Parsing
certifi's 150-odd roots into an ``SSLContext`` is 25 to 35 ms of CPU for
every HTTP client syncd builds (the daemon's at each start, each upload
helper's), and many never make a TLS connection: ``syncd once`` with nothing
to send, a destination on ``http://``. So certifi's bundle is
loaded just before the context's first handshake (``wrap_socket``,
``wrap_bio``) or first look at its roots, once, under a lock; until then
the context trusts only what was added to it, so nothing is ever verified
against less. What an operator names (``ca_bundle``, ``SSL_CERT_FILE``,
``SSL_CERT_DIR``) is read at once, so a bad path is still refused when the
configuration is applied.
"""

from __future__ import annotations

import os
import ssl
import sys
import threading
from typing import Any

import certifi
import httpx


def tls_context(ca_bundle: str | None) -> ssl.SSLContext:
    """The default trust store (certifi, as httpx uses) plus ``ca_bundle`` if given."""
    if os.environ.get("SSL_CERT_FILE") or os.environ.get("SSL_CERT_DIR"):
        context = httpx.create_ssl_context()  # the operator's store: read now
    else:
        context = _PublicRootsOnFirstUse(ssl.PROTOCOL_TLS_CLIENT)
    if ca_bundle:
        context.load_verify_locations(cafile=ca_bundle)
    return context


class _PublicRootsOnFirstUse(ssl.SSLContext):
    """``ssl.create_default_context(cafile=certifi.where())`` (what httpx builds), with
    certifi's bundle loaded before the first handshake or look at the roots."""

    def __init__(self, protocol: int) -> None:
        # PROTOCOL_TLS_CLIENT already requires a certificate and checks the host name
        self._pending = True
        self._loading = threading.Lock()
        keylog = os.environ.get("SSLKEYLOGFILE")  # as create_default_context honours it
        if keylog and not sys.flags.ignore_environment:
            self.keylog_filename = keylog

    def _load_roots(self) -> None:
        if self._pending:
            with self._loading:
                if self._pending:
                    self.load_verify_locations(cafile=certifi.where())
                    self._pending = False

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        self._load_roots()
        return super().wrap_socket(*args, **kwargs)

    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:
        self._load_roots()
        return super().wrap_bio(*args, **kwargs)

    def get_ca_certs(self, binary_form: bool = False) -> Any:
        self._load_roots()
        return super().get_ca_certs(binary_form)

    def cert_store_stats(self) -> dict[str, int]:
        self._load_roots()
        return super().cert_store_stats()
