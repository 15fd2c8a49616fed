"""The commands, and the upload helper processes, import only what they need.

`syncd status` is run by scripts and monitoring every few seconds, and on a
large ledger its queries take well under a millisecond: what it costs is
Python starting and importing. So the commands that read the config and the
ledger (`status`, `files`, `explain`) must not import the HTTP client (nor the
standard library's TLS, e-mail and urllib.request that it brings), the
cryptography, the file watcher, the metrics library or the service modules:
each check runs in a fresh interpreter and lists what got imported.

`syncd once` (run by cron or a timer, often with nothing to do) and every
upload helper process pay their imports at each start too: `once` imports
neither the metrics library (its metrics are never served), the file watcher
(it watches nothing), the webhook, the other commands, nor the modules of
destination types its config does not use; a helper none of the config
loader, the ledger or the daemon either (it unpickles a configuration and sends
files). Each is run for real and its imports listed; what they cost in CPU is
bench/startup.py's to measure, not a test's.
"""

from __future__ import annotations

import json
import os
import pickle
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
    proc = _run(code + REPORT, cwd)
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
    assert all(name == cls.TYPE for name, cls in REGISTRY.items())


# `syncd once` and the upload helpers -----------------------------------------------------

ONE_LILT = """
[daemon]
state_dir = "state"
upload_processes = 1

[destinations.l]
type = "lilt"
base_url = "http://127.0.0.1:9/lilt"
api_key = "import-test-key"

[[folders]]
path = "inbox"
destination = "l"
"""
NOT_FOR_ONCE = (
    "prometheus_client",  # its metrics are never served
    "syncd.metrics.collectors",
    "syncd.metrics.endpoint",
    "watchdog",  # it watches nothing
    "syncd.event_handler",
    "syncd.safe_watch",
    "syncd.webhook",  # no webhook_url
    "syncd.destinations.apivideo",  # types the config does not use
    "syncd.destinations.wriftai",
    "syncd.destinations.xvid",
    "syncd.seal",
    "cryptography",
    "syncd_emulator",
    "syncd.commands.configure",  # the other commands
    "syncd.commands.explain",
    "syncd.commands.files",
    "syncd.commands.ledger",
    "syncd.commands.retry",
    "syncd.commands.status",
    "http.server",  # the standard library's, which none of them needs
    "xml",
    "difflib",  # (a config with a mistake)
    "decimal",  # (a size written as text)
)
NOT_FOR_A_HELPER = NOT_FOR_ONCE + (
    "syncd.config.loader",  # it unpickles a configuration and reads no file
    "syncd._options",
    "tomllib",
    "syncd.ledger",  # the worker keeps the ledger
    "sqlite3",
    "syncd.daemon",
    "syncd.uploader",
    "syncd.cli",
    "argparse",
)


def test_once_counts_nothing_with_every_hook_of_the_metrics() -> None:
    """`syncd once` counts with Unserved, which has no series: every public method of
    Metrics is its own (an inherited one would reach for a series), stop aside."""
    from syncd.metrics import Metrics
    from syncd.metrics.unserved import Unserved

    public = {name for name, value in vars(Metrics).items() if callable(value) and not name.startswith("_")}
    assert public - {"stop"} <= set(vars(Unserved))
    metrics = Unserved()
    metrics.observe_upload("d", 1, 0.1, 0.0)
    metrics.set_folders({"/x": True})
    metrics.serve("")
    metrics.stop()
    with pytest.raises(RuntimeError):
        metrics.serve("127.0.0.1:9")


def _among(modules: list[str], unwanted: tuple[str, ...]) -> list[str]:
    """The modules of ``modules`` that are, or are inside, one of ``unwanted``."""
    return sorted(m for m in modules if any(m == u or m.startswith(u + ".") for u in unwanted))


def _config(tmp_path: Path) -> Path:
    (tmp_path / "inbox").mkdir()
    config = tmp_path / "syncd.toml"
    config.write_text(ONE_LILT)
    config.chmod(0o600)
    return config


def _run(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``code`` run by a new interpreter that imports this checkout; it must succeed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.mark.process
def test_once_imports_only_what_it_runs(tmp_path: Path) -> None:
    config = _config(tmp_path)
    code = f"""
import json, sys
from syncd.cli import main
assert main(["-c", {str(config)!r}, "once", "--no-progress"]) == 0
print(json.dumps(sorted(sys.modules)))
"""
    modules = json.loads(_run(code, tmp_path).stdout.strip().splitlines()[-1])
    assert "syncd.destinations.lilt" in modules and "syncd.daemon" in modules  # it did run
    assert _among(modules, NOT_FOR_ONCE) == []


# written as sitecustomize.py on the helper's path: what it imported, when it exits
MODULES_AT_EXIT = """
import atexit, os, sys

def _write():
    with open(os.environ["SYNCD_TEST_MODULES"], "w") as out:
        out.write("\\n".join(sorted(sys.modules)))

atexit.register(_write)
"""


@pytest.mark.process
def test_an_upload_helper_imports_only_what_it_sends_with(tmp_path: Path) -> None:
    """A real helper, started as the daemon starts one, configured, ready, then stopped."""
    from syncd import config as configmod

    cfg = configmod.load(_config(tmp_path))
    message = pickle.dumps((cfg.daemon, dict(cfg.destinations)), protocol=pickle.HIGHEST_PROTOCOL)
    (tmp_path / "shim").mkdir()
    (tmp_path / "shim" / "sitecustomize.py").write_text(MODULES_AT_EXIT)
    listed = tmp_path / "modules.txt"
    code = f"""
import os
os.environ["PYTHONPATH"] = {str(tmp_path / "shim")!r} + ":" + os.environ["PYTHONPATH"]  # the helper's
os.environ["SYNCD_TEST_MODULES"] = {str(listed)!r}
from syncd import offload_start
helper = offload_start.start({message!r}, 0)
assert helper is not None, "the helper did not start"
helper.stop()
"""
    _run(code, tmp_path)
    modules = listed.read_text().split()
    assert "syncd.destinations.lilt" in modules and "httpx" in modules  # it built its destination
    assert _among(modules, NOT_FOR_A_HELPER) == []
