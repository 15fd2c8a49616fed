"""A 2xx that is an HTML page is no storage's confirmation.

``check`` took any status in ``ok`` as the service's answer. A proxy or portal in
front of storage answering a PUT with ``200`` and its HTML page (a TLS-inspecting
proxy's notice, a plain-HTTP LAN proxy's login page) confirmed the upload: the file
was recorded uploaded and archived or deleted, though storage never had it. Storage
and the APIs answer with an empty body, XML or JSON, never HTML (``http.html_page``).
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from syncd import http
from syncd.circuit import is_outage
from syncd.errors import RetryableError
from tests.destinations.lilt_wire import (
    Recorder,
    Wire,
    make_dest,
    reply,
    upload,
    write,
)

PAGE = "<html><body>Please accept the terms of use to continue.</body></html>"


def test_check_refuses_a_success_that_is_an_html_page() -> None:
    response = httpx.Response(
        200,
        headers={"Content-Type": "text/html; charset=utf-8"},
        text=PAGE,
        request=httpx.Request("PUT", "http://store/k"),
    )
    with pytest.raises(RetryableError) as caught:
        http.check(response, what="t", ok=(200, 201, 204))
    assert is_outage(caught.value)


def test_an_empty_success_labelled_html_is_storages_as_gcs_sends_it() -> None:
    """GCS's XML API answers a PUT with an empty body labelled ``text/html``."""
    response = httpx.Response(
        200,
        headers={"Content-Type": "text/html; charset=UTF-8", "ETag": '"abc"'},
        content=b"",
        request=httpx.Request("PUT", "https://storage.googleapis.com/b/k"),
    )
    assert http.check(response, what="t", ok=(200,)) is response


def test_a_single_put_answered_by_a_portals_page_is_not_uploaded(
    wire: Wire,
    client: httpx.Client,
    tmp_path: Path,
) -> None:
    path = write(tmp_path, 1024, "doc.pdf")
    wire.edit("lilt.put", reply(200, {"Content-Type": "text/html"}, text=PAGE))
    # (the harness's storage got the bytes; the answer the page replaced is what counts)
    with pytest.raises(RetryableError):
        upload(make_dest(client), path, checkpoint=Recorder())
