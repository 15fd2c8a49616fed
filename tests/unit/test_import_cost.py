"""The read-only commands import only what they need.

`syncd status` is run by scripts and monitoring every few seconds, and on a
large ledger its queries take well under a millisecond: what it costs is
Python starting and importing. So the commands that read the config and the
ledger (`status`, `files`, `explain`) must not import the HTTP client (nor the
standard library's TLS, e-mail and urllib.request that it brings), the
cryptography, the file watcher, the metrics library or the service modules:
each check runs in a fresh interpreter and lists what got imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from syncd.destinations import REGISTRY
from syncd.destinations.options import OPTIONS

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("httpx", "cryptography", "watchdog", "prometheus_client", "ssl", "email")
MODULES = (
    "http.client",
    "urllib.request",
    "syncd.daemon",
    "syncd.uploader",
    "syncd.http",
    "syncd.seal",
    "syncd.metrics",
    "syncd.watcher",
    "syncd.webhook",
    "syncd.destinations.lilt",
    "syncd.destinations.wriftai",
    "syncd.destinations.xvid",
    "syncd.destinations.apivideo",
    "syncd.destinations._api",
)

REPORT = f"""
import json, sys
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r} or m in {MODULES!r})
print(json.dumps(heavy))
"""


def imported(code: str, cwd: Path = ROOT) -> list[str]:
    """The heavy modules in ``sys.modules`` after running ``code`` in a new interpreter."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", code + REPORT],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result: list[str] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.process
def test_cli_and_status_import_nothing_heavy() -> None:
    assert imported("import syncd.cli, syncd.commands.status, syncd.commands.explain") == []


@pytest.mark.process
def test_status_files_and_explain_import_nothing_heavy(tmp_path: Path) -> None:
    (tmp_path / "inbox").mkdir()
    (tmp_path / "inbox" / "a.pdf").write_bytes(b"%PDF")
    config = tmp_path / "syncd.toml"
    config.write_text("""
[daemon]
state_dir = "state"

[destinations.l]
type = "lilt"
base_url = "http://127.0.0.1:9/lilt"
api_key = "import-test-key"

[destinations.w]
type = "wriftai"
token = "import-test-token"

[destinations.x]
type = "xvid"
client_id = "id"
client_secret = "import-test-secret"
pipeline_id = "p"

[destinations.a]
type = "apivideo"
upload_token = "import-test-token"

[[folders]]
path = "inbox"
destination = "l"

[[folders]]
path = "w"
destination = "w"

[[folders]]
path = "x"
destination = "x"

[[folders]]
path = "a"
destination = "a"
""")
    config.chmod(0o600)
    code = f"""
import contextlib, io
from syncd.cli import main
from syncd.ledger import Ledger
Ledger.open({str(tmp_path / "state" / "ledger.sqlite3")!r}).close()
with contextlib.redirect_stdout(io.StringIO()):
    for argv in (["status", "--json"], ["status"], ["files", "--json"], ["explain", "inbox/a.pdf"]):
        assert main(["-c", {str(config)!r}, *argv]) == 0, argv
"""
    assert imported(code, cwd=tmp_path) == []


def test_options_table_matches_the_registry() -> None:
    assert {name: cls.Options for name, cls in REGISTRY.items()} == OPTIONS
