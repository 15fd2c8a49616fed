from __future__ import annotations

from pathlib import Path

import pytest

from syncd.http import parse_retry_after, tls_context


def test_ca_bundle_is_added_to_the_default_trust_store(tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme", reason="trustme is in the test extra")
    ca = trustme.CA()
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    default = len(tls_context(None).get_ca_certs())
    extended = tls_context(str(bundle)).get_ca_certs()
    assert len(extended) == default + 1
    assert default > 0, "the public roots stay trusted"


def test_retry_after_both_forms_and_cap() -> None:
    assert parse_retry_after("3") == 3
    assert parse_retry_after("999999") == 900
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:05 GMT", date="Wed, 21 Oct 2015 07:28:00 GMT") == 5
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_the_client_keeps_no_cookies() -> None:
    """A Set-Cookie from one service never goes along with a later request (to it or another)."""
    import httpx

    from syncd.http import make_client

    seen: list[str | None] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("cookie"))
        return httpx.Response(200, headers={"Set-Cookie": "session=abc; Path=/"})

    with make_client(transport=httpx.MockTransport(answer)) as client:
        client.get("http://service.example/a")
        client.get("http://service.example/b")
        assert not client.cookies
        with pytest.raises(TypeError):
            client.cookies = {"session": "abc"}  # type: ignore[assignment]
        client.cookies = None  # type: ignore[assignment]  # nothing to keep: allowed
    assert seen == [None, None]
