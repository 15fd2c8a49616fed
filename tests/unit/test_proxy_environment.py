"""A proxy in the environment that httpx cannot use.

``ALL_PROXY=socks://host:1080`` (what desktop proxy settings export) or a
``socks5://`` proxy without httpx's SOCKS extra made building the HTTP client raise
``ValueError``/``ImportError``: ``syncd run`` and ``syncd check --online`` ended in a
traceback, exit 1, which systemd restarts for ever. It is now a configuration error
that names the variable (exit 2, not restarted).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from syncd.errors import ConfigError

PROXY_NAMES = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy", "http_proxy", "all_proxy")


@pytest.mark.parametrize("url", ["socks://127.0.0.1:1080", "socks5://u:secret@127.0.0.1:1080"])
def test_an_unusable_proxy_in_the_environment_is_a_configuration_error(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from syncd import http

    for name in (*PROXY_NAMES, "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ALL_PROXY", url)
    with pytest.raises(ConfigError, match="ALL_PROXY") as caught:
        http.make_client()
    assert "secret" not in str(caught.value)


def test_the_daemon_says_it_and_exits_with_the_configuration_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from syncd import cli

    for name in (*PROXY_NAMES, "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("all_proxy", "socks://127.0.0.1:1080")
    (tmp_path / "inbox").mkdir()
    config = tmp_path / "config.toml"
    config.write_text(
        f'[daemon]\nstate_dir = "{tmp_path / "state"}"\n'
        '[destinations.d]\ntype = "lilt"\napi_key = "k"\nbase_url = "http://127.0.0.1:9"\n'
        f'[[folders]]\npath = "{tmp_path / "inbox"}"\ndestination = "d"\n'
    )
    config.chmod(0o600)
    assert cli.main(["-c", str(config), "check", "--online"]) == 2
    assert "all_proxy" in capsys.readouterr().err
