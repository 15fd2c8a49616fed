"""The trust store: certifi's roots read at the first handshake, never verified against less.

Building an HTTP client parses no certificates (``syncd once`` with nothing to
send, an upload helper, a destination on http:// paid 30 ms for them); the
first TLS handshake, or a look at the roots, reads them, once however many
threads connect at the same time; a server the store does not trust is refused
before and after; what an operator names (``ca_bundle``, ``SSL_CERT_FILE``) is
read at once, so a bad path fails when the configuration is applied.
"""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from syncd import trust
from syncd.trust import tls_context

trustme = pytest.importorskip("trustme", reason="trustme is in the test extra")


@pytest.fixture
def certifi_store(monkeypatch: pytest.MonkeyPatch) -> None:
    """httpx's default store, certifi's bundle: no SSL_CERT_FILE or SSL_CERT_DIR names another."""
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)


def _roots(context: ssl.SSLContext) -> int:
    """The CA certificates in ``context`` now, without making it read certifi's."""
    return ssl.SSLContext.cert_store_stats(context)["x509_ca"]


def _handshake(client: ssl.SSLContext, ca: Any) -> None:
    """A TLS handshake of ``client`` with a server whose certificate ``ca`` issued."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("syncd.test").configure_cert(server)
    ours, theirs = socket.socketpair()

    def serve() -> None:
        try:
            server.wrap_socket(theirs, server_side=True).close()
        except (ssl.SSLError, OSError):
            pass  # the client refused the certificate

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        client.wrap_socket(ours, server_hostname="syncd.test").close()
    finally:
        ours.close()
        thread.join(10)
        theirs.close()


def test_the_public_roots_are_read_at_the_first_handshake(tmp_path: Path, certifi_store: None) -> None:
    ca = trustme.CA()
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    context = tls_context(str(bundle))
    assert _roots(context) == 1  # the operator's bundle, read at once; certifi's not yet
    _handshake(context, ca)
    assert _roots(context) == len(httpx.create_ssl_context().get_ca_certs()) + 1


@pytest.mark.parametrize("store", ["certifi", "SSL_CERT_FILE"])
def test_a_server_the_store_does_not_trust_is_refused(store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    if store == "certifi":
        monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    else:
        monkeypatch.setenv("SSL_CERT_FILE", trust.certifi.where())
    context = tls_context(None)
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(context, trustme.CA())
    assert _roots(context) > 0  # read for that handshake
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(context, trustme.CA())


def test_the_roots_are_what_httpx_trusts_and_are_read_once(
    monkeypatch: pytest.MonkeyPatch, certifi_store: None
) -> None:
    public = len(httpx.create_ssl_context().get_ca_certs())
    reads = []
    where = trust.certifi.where
    monkeypatch.setattr(trust.certifi, "where", lambda: reads.append(1) or where())
    context = tls_context(None)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    seen: list[int] = []
    threads = [threading.Thread(target=lambda: seen.append(len(context.get_ca_certs()))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == [public] * 8
    assert reads == [1]


def test_what_an_operator_names_is_read_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, certifi_store: None
) -> None:
    with pytest.raises(OSError):
        tls_context(str(tmp_path / "missing.pem"))
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "missing.pem"))
    with pytest.raises(OSError):
        tls_context(None)
