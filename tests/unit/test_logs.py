"""Log formats (text, journald, json) and redaction, with real streams and a real HTTP server.

The journald format is chosen when ``$JOURNAL_STREAM`` names the device and
inode of the stream syncd writes to, as systemd sets it; the tests point it
at a real file. httpx's own request lines and exception texts go through
the same redacting handler: a loopback server answers, and the canary
secrets in the URLs must never reach the output.
"""

from __future__ import annotations

import http.server
import json
import logging
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from syncd import logs, redact
from tests.harness import CANARY_KEY, Setup

CANARY_SIG = "CANARYSIG0a1b2c3d4e5f"
CANARY_TOKEN = "canary-token-99ab"


@pytest.fixture
def server() -> Iterator[str]:
    """A loopback HTTP server: 200 for /ok, 403 for anything else."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            status = 200 if self.path.startswith("/ok") else 403
            body = b"fine" if status == 200 else b"denied"
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _journal_env(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    st = os.stat(path)
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")


def test_journald_stream_gets_priorities_and_no_timestamps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_logging: None
) -> None:
    out = tmp_path / "journal.log"
    with open(out, "w") as stream:
        _journal_env(monkeypatch, out)
        logs.setup("debug", "text", stream)
        log = logging.getLogger("syncd.test")
        log.debug("debug line")
        log.info("info line")
        log.warning("warning line")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed here")
    lines = out.read_text().splitlines()
    assert lines[:3] == [
        "<7>syncd.test: debug line",
        "<6>syncd.test: info line",
        "<4>syncd.test: warning line",
    ]
    assert lines[3] == "<3>syncd.test: failed here"
    tail = lines[4:]
    assert tail and all(line.startswith("<3>    ") for line in tail), tail  # one priority per line
    assert any("ValueError: boom" in line for line in tail)


def test_journal_stream_of_another_file_means_plain_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_logging: None
) -> None:
    other = tmp_path / "other"
    other.write_text("")
    _journal_env(monkeypatch, other)  # inherited from a parent; our stderr is elsewhere
    out = tmp_path / "plain.log"
    with open(out, "w") as stream:
        logs.setup("info", "text", stream)
        logging.getLogger("syncd.test").info("hello")
    assert re.fullmatch(r"20\d\d-\d\d-\d\d [\d:,]+ INFO    syncd\.test: hello\n", out.read_text())


def test_json_lines_with_exception_and_redaction(tmp_path: Path, restore_logging: None) -> None:
    redact.register(CANARY_KEY)
    out = tmp_path / "json.log"
    with open(out, "w") as stream:
        logs.setup("info", "json", stream)
        log = logging.getLogger("syncd.test")
        log.info("uploaded %s with key %s", "a\nb.txt", CANARY_KEY)
        try:
            raise RuntimeError(f"GET https://x/y?token={CANARY_TOKEN} failed")
        except RuntimeError:
            log.exception("request failed")
        log.info("name %s", logs.quoted_path(os.fsdecode(b"bad-\xff")))
    text = out.read_text()
    records = [json.loads(line) for line in text.splitlines()]
    assert [r["level"] for r in records] == ["info", "error", "info"]
    assert records[0]["message"] == "uploaded a\nb.txt with key ***"
    assert records[0]["logger"] == "syncd.test" and records[0]["time"].endswith("Z")
    assert "RuntimeError" in records[1]["exception"]
    assert "'bad-\\\\xff'" in records[2]["message"]
    assert CANARY_KEY not in text and CANARY_TOKEN not in text


def test_httpx_request_lines_and_errors_are_redacted(
    tmp_path: Path, server: str, restore_logging: None
) -> None:
    out = tmp_path / "debug.log"
    with open(out, "w") as stream:
        logs.setup("debug", "text", stream, journal=False)
        log = logging.getLogger("syncd.test")
        with httpx.Client() as client:
            client.get(f"{server}/ok?X-Amz-Signature={CANARY_SIG}&key={CANARY_KEY}")
            response = client.get(f"{server}/denied?token={CANARY_TOKEN}&sig={CANARY_SIG}")
            try:
                response.raise_for_status()
            except httpx.HTTPStatusError as exc:
                log.error("upload refused: %s", exc)
                log.exception("with traceback")
    text = out.read_text()
    assert "httpx: HTTP Request: GET" in text  # httpx's own line is there at debug ...
    assert "X-Amz-Signature=***" in text and "token=***" in text
    for canary in (CANARY_SIG, CANARY_KEY, CANARY_TOKEN):  # ... and leaks nothing
        assert canary not in text
    assert "403 Forbidden" in text


def test_httpx_request_lines_are_quiet_at_info(tmp_path: Path, server: str, restore_logging: None) -> None:
    out = tmp_path / "info.log"
    with open(out, "w") as stream:
        logs.setup("info", "text", stream, journal=False)
        with httpx.Client() as client:
            client.get(f"{server}/ok?key={CANARY_KEY}")
    assert "HTTP Request" not in out.read_text()


@pytest.mark.process
def test_daemon_under_journald_prefixes_every_line(tmp_path: Path) -> None:
    """The real `syncd once`, its stderr a file that JOURNAL_STREAM names."""
    s = Setup(tmp_path, folders=[{"name": "in"}])
    try:
        s.drop("a.txt", b"a")
        out = tmp_path / "journal.log"
        with open(out, "wb") as stream:
            st = os.fstat(stream.fileno())
            env = {**s.env(), "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
            rc = subprocess.run(
                [sys.executable, "-m", "syncd", "-c", str(s.config), "once"],
                stdout=subprocess.DEVNULL,
                stderr=stream,
                env=env,
                cwd=tmp_path,
                timeout=60,
            ).returncode
        assert rc == 0
        lines = out.read_text().splitlines()
        assert any(
            re.match(r"<6>syncd\.uploader: uploaded '.*a\.txt' to lilt \(1 bytes", line) for line in lines
        ), lines
        assert lines and all(re.match(r"<[0-7]>", line) for line in lines), lines
        assert CANARY_KEY not in out.read_text()
    finally:
        s.close()
