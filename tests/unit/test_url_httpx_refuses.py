"""URLs that pass urllib but that httpx refuses.

A ``base_url`` with a character pasted along from a web page (a zero-width space in
the host) was accepted by the configuration check; httpx then refused every request
with ``InvalidURL``, which syncd took as a refusal of each file: every file went to
failed_dir at its first attempt. A storage URL the service gave with a malformed
IDNA label (``xn--``) raised ``IDNAError`` out of the HTTP layer, an internal error.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from syncd import config as configmod
from syncd.errors import ConfigError, PermanentError, RetryableError


@pytest.mark.parametrize("url", ["https://api.li\u200blt.com", "https://xn--/v2"])
def test_a_base_url_httpx_cannot_use_is_a_configuration_error(url: str, tmp_path: Path) -> None:
    (tmp_path / "inbox").mkdir()
    with pytest.raises(ConfigError, match="base_url"):
        configmod.loads(
            f'[destinations.d]\ntype = "lilt"\napi_key = "k"\nbase_url = "{url}"\n'
            f'[[folders]]\npath = "{tmp_path / "inbox"}"\ndestination = "d"\n',
            base_dir=tmp_path,
        )


@pytest.mark.parametrize("url", ["https://xn--/part?sig=1", "https://st\u200borage.example/part"])
def test_a_storage_url_httpx_cannot_use_is_a_malformed_answer(url: str) -> None:
    from syncd import http

    client = http.make_client(transport=httpx.MockTransport(lambda r: httpx.Response(200)))
    with pytest.raises(RetryableError) as caught:
        http.send(client, "PUT", url, what="t")
    assert not isinstance(caught.value, PermanentError)
    assert "sig=1" not in str(caught.value)
