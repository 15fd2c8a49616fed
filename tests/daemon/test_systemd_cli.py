"""`syncd unit` (the shipped systemd files) and `syncd reload` (the unit's ExecReload=).

The reload tests run the real daemon (tests/harness.py) and the real command
as subprocesses: `syncd reload` must return only once the daemon has applied
the new config (exit 0) or refused it (exit 2), which is what makes
``systemctl reload syncd`` wait and fail. tests/daemon/test_systemd_live.py runs the
same through a real systemd.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from syncd import systemd
from syncd.cli import EXIT_CONFIG, EXIT_FAILED, EXIT_OK
from tests.harness import ROOT, Setup, wait_until

SHIPPED_FROM = {
    "syncd.service": ROOT / "systemd" / "syncd.service",
    "syncd.sysusers.conf": ROOT / "systemd" / "syncd.sysusers.conf",
    "syncd.tmpfiles.conf": ROOT / "systemd" / "syncd.tmpfiles.conf",
    "config.example.toml": ROOT / "config.example.toml",
    "syncd-dashboard.json": ROOT / "contrib" / "grafana" / "syncd-dashboard.json",
    "syncd-alerts.yml": ROOT / "contrib" / "prometheus" / "syncd-alerts.yml",
}


def syncd(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "syncd", *args], capture_output=True, text=True, timeout=60, env=env, cwd=cwd
    )


# -- syncd unit ----------------------------------------------------------------


def test_package_data_is_the_checkouts_files() -> None:
    """syncd/data holds (links to) the files in systemd/, config.example.toml and the
    monitoring files in contrib/."""
    assert set(SHIPPED_FROM) == {
        *systemd.SHIPPED,
        systemd.EXAMPLE_CONFIG,
        systemd.GRAFANA_DASHBOARD,
        systemd.PROMETHEUS_ALERTS,
    }
    for name, source in SHIPPED_FROM.items():
        assert systemd.shipped(name) == source.read_text(), name
    for link in (ROOT / "syncd" / "data").iterdir():  # links, so the two never differ
        assert link.is_symlink() and link.resolve() == SHIPPED_FROM[link.name].resolve(), link
    assert 'syncd = ["data/*"]' in (ROOT / "pyproject.toml").read_text()  # into the wheel


@pytest.mark.process
@pytest.mark.parametrize(
    ("flag", "name"),
    [
        ((), "syncd.service"),
        (("--sysusers",), "syncd.sysusers.conf"),
        (("--tmpfiles",), "syncd.tmpfiles.conf"),
        (("--config-example",), "config.example.toml"),
        (("--grafana-dashboard",), "syncd-dashboard.json"),
        (("--prometheus-alerts",), "syncd-alerts.yml"),
    ],
)
def test_unit_prints_each_shipped_file(flag: tuple[str, ...], name: str) -> None:
    out = syncd("unit", *flag)
    assert out.returncode == 0, out.stderr
    assert out.stdout == SHIPPED_FROM[name].read_text()


@pytest.mark.process
def test_unit_install_writes_the_three_files_under_a_root(tmp_path: Path) -> None:
    out = syncd("unit", "--install", "--root", str(tmp_path))
    assert out.returncode == 0, out.stderr
    for name, rel in systemd.SHIPPED.items():
        target = tmp_path / rel
        assert target.read_text() == SHIPPED_FROM[name].read_text()
        assert stat.S_IMODE(target.stat().st_mode) == 0o644
        assert f"wrote {target}" in out.stdout
    assert "systemd-sysusers" in out.stdout  # what to run next
    again = syncd("unit", "--install", "--root", str(tmp_path))
    assert again.returncode == 0 and again.stdout.count(": unchanged") == 3, again.stdout
    (tmp_path / "etc/systemd/system/syncd.service").write_text("[Unit]\n")  # an old version
    upgrade = syncd("unit", "--install", "--root", str(tmp_path))
    assert "wrote " + str(tmp_path / "etc/systemd/system/syncd.service") in upgrade.stdout
    assert not list(tmp_path.rglob("*.partial"))
    unit = tmp_path / "etc/systemd/system/syncd.service"
    unit.unlink()
    unit.symlink_to("/dev/null")  # `systemctl mask syncd`
    masked = syncd("unit", "--install", "--root", str(tmp_path))
    assert masked.returncode != 0 and "is masked" in masked.stderr
    assert unit.is_symlink() and os.readlink(unit) == "/dev/null"


@pytest.mark.process
def test_unit_credentials_lists_every_credential_the_config_names(tmp_path: Path) -> None:
    config = tmp_path / "syncd.toml"
    config.write_text("""
[destinations.contracts]
type = "lilt"
api_key = "credential:lilt-api-key"
[destinations.media]
type = "xvid"
client_id = "me"
client_secret = "credential:xvid-secret"
pipeline_id = "p1"
[destinations.videos]
type = "apivideo"
upload_token = "env:APIVIDEO_TOKEN"
api_key = "credential:apivideo-key"
[destinations.more]
type = "lilt"
api_key = "credential:lilt-api-key"
[daemon]
webhook_url = "credential:webhook-url"
webhook_secret = "credential:webhook-secret"
[[folders]]
path = "inbox"
destination = "contracts"
labels = ["credential:not-a-secret"]  # a label, whatever it reads like
""")
    out = syncd("-c", str(config), "unit", "--credentials")
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if not line.startswith("#")]
    assert lines == [
        "[Service]",
        "LoadCredential=apivideo-key:/etc/syncd/credentials/apivideo-key",
        "LoadCredential=lilt-api-key:/etc/syncd/credentials/lilt-api-key",
        "LoadCredential=webhook-secret:/etc/syncd/credentials/webhook-secret",
        "LoadCredential=webhook-url:/etc/syncd/credentials/webhook-url",
        "LoadCredential=xvid-secret:/etc/syncd/credentials/xvid-secret",
    ]
    config.write_text("not [ toml")
    bad = syncd("-c", str(config), "unit", "--credentials")
    assert bad.returncode == EXIT_CONFIG and "invalid TOML" in bad.stderr
    # a newline in a name would have started a directive of its own (ExecStartPre=+...)
    config.write_text(
        '[destinations.d]\ntype = "lilt"\napi_key = "credential:x\\nExecStartPre=+/bin/sh"\n'
        '[[folders]]\npath = "inbox"\ndestination = "d"\n'
    )
    bad = syncd("-c", str(config), "unit", "--credentials")
    assert bad.returncode == EXIT_CONFIG and "ExecStartPre" not in bad.stdout


def test_constraints_pin_every_runtime_dependency_within_its_range() -> None:
    """constraints.txt (the pinned server install, docs/operations.md section 1) covers
    [project] dependencies with versions they accept, and nothing from the extras."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for spec in project["dependencies"]:
        req = Requirement(spec)
        pinned = pins.get(canonicalize_name(req.name))
        assert pinned is not None, f"{req.name} is not pinned in constraints.txt (make constraints)"
        assert req.specifier.contains(pinned, prereleases=True), (spec, pinned)
    extras = {
        canonicalize_name(Requirement(s).name)
        for group in project["optional-dependencies"].values()
        for s in group
    }
    assert not extras & set(pins), extras & set(pins)


# -- syncd reload ----------------------------------------------------------------


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Setup]:
    s = Setup(tmp_path, folders=[{"name": "a"}])
    s.start()
    s.wait_started()
    yield s
    if s.proc is not None and s.proc.poll() is None:
        os.kill(s.proc.pid, signal.SIGCONT)
    s.close()


def reload(s: Setup, *args: str) -> subprocess.CompletedProcess[str]:
    return s.cli("reload", *args)


def rewrite(s: Setup, folders: list[dict[str, Any]]) -> None:
    s.folders = folders
    s._write_config({}, {})


@pytest.mark.process
def test_reload_returns_once_the_new_config_is_applied(daemon: Setup) -> None:
    s = daemon
    rewrite(s, [{"name": "a"}, {"name": "b"}])
    started = time.monotonic()
    out = reload(s)
    assert out.returncode == EXIT_OK, out.stderr
    assert s.proc is not None
    assert out.stdout.strip() == f"syncd (pid {s.proc.pid}) reloaded its configuration"
    assert time.monotonic() - started < 10
    # No race: folder b is watched the moment the command returns.
    assert "configuration reloaded: 2 folder(s)" in s.log_text()
    s.drop("first.txt", b"dropped right after the reload returned", "b")
    wait_until(lambda: s.all_done(1), 20, what="the file in the folder the reload added")
    # The pid may be given (the unit passes $MAINPID); several reloads in a row each answer.
    for _ in range(3):
        again = reload(s, "--pid", str(s.proc.pid))
        assert again.returncode == EXIT_OK, again.stderr
    s.invariants()


@pytest.mark.process
def test_reload_of_a_broken_config_fails_and_the_daemon_keeps_running(daemon: Setup) -> None:
    s = daemon
    assert s.proc is not None
    good = s.config.read_text()
    s.config.write_text(good.replace("settle_seconds = 0.3", "settle_seconds = -1", 1))
    out = reload(s)
    assert out.returncode == EXIT_CONFIG, (out.stdout, out.stderr)
    assert (
        "reload refused, still running the previous configuration: "
        "folders[0].settle_seconds: must be >= 0, got -1" in out.stderr
    )
    # Not TOML at all: the config cannot name the daemon, its pid can (the unit's way).
    s.config.write_text("this is [ not TOML")
    nameless = reload(s)
    assert nameless.returncode == EXIT_FAILED and "give the daemon's --pid" in nameless.stderr
    by_pid = reload(s, "--pid", str(s.proc.pid))
    assert by_pid.returncode == EXIT_CONFIG and "invalid TOML" in by_pid.stderr, by_pid.stderr
    assert s.proc.poll() is None
    s.drop("still.txt", b"uploaded on the previous config")
    wait_until(lambda: s.all_done(1), 20, what="an upload after two refused reloads")
    s.config.write_text(good)
    assert reload(s).returncode == EXIT_OK
    assert "reload failed" not in (s.status()["daemon"].get("status") or "")


@pytest.mark.process
def test_reload_gives_up_on_a_wedged_daemon_and_on_none(daemon: Setup) -> None:
    s = daemon
    assert s.proc is not None
    os.kill(s.proc.pid, signal.SIGSTOP)
    try:
        out = reload(s, "--timeout", "1")
    finally:
        os.kill(s.proc.pid, signal.SIGCONT)
    assert out.returncode == EXIT_FAILED and "no answer from the daemon" in out.stderr
    # The signal was not lost: the daemon reloads once it runs again.
    wait_until(lambda: "configuration reloaded" in s.log_text(), 20, what="the late reload")
    sent = reload(s, "--no-wait")
    assert sent.returncode == EXIT_OK and "sent SIGHUP" in sent.stdout
    assert s.stop() == 0
    gone = reload(s)
    assert gone.returncode == EXIT_FAILED and "no daemon is running on" in gone.stderr
    # A pid that is no syncd daemon is never signalled.
    bystander = subprocess.Popen(["sleep", "30"])
    try:
        stray = reload(s, "--pid", str(bystander.pid))
        assert stray.returncode == EXIT_FAILED and "holds no syncd lock" in stray.stderr
        assert bystander.poll() is None  # SIGHUP would have killed it
    finally:
        bystander.kill()
        bystander.wait()


def test_lock_dir_of_finds_the_state_dir_a_process_holds(tmp_path: Path) -> None:
    from syncd.lock import StateLock

    assert systemd.lock_dir_of(os.getpid()) is None
    with StateLock(tmp_path / "state"):
        assert systemd.lock_dir_of(os.getpid()) == tmp_path / "state"
    assert systemd.lock_dir_of(2**22 + 12345) is None  # no such process


def test_reload_record_is_written_for_applied_and_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record `syncd reload` reads, from the daemon in process."""
    from syncd import config as configmod
    from syncd.ledger import Ledger
    from syncd.metrics import Metrics
    from syncd.runtime import RELOAD_KEY, Runtime
    from syncd.watcher import Intake, Watcher

    (tmp_path / "in").mkdir()
    config = tmp_path / "syncd.toml"
    good = (
        '[daemon]\nstate_dir = "state"\n[destinations.d]\ntype = "lilt"\n'
        'api_key = "literal-key-1234"\n[[folders]]\npath = "in"\ndestination = "d"\n'
    )
    config.write_text(good)
    config.chmod(0o600)
    ledger = Ledger.open(tmp_path / "ledger.sqlite3")
    runtime = Runtime(
        configmod.load(config), ledger, watcher=Watcher(Intake()), metrics=Metrics(), watch=False
    )
    monkeypatch.setattr(runtime, "apply", lambda cfg: None)
    before = time.monotonic()
    assert runtime.reload()
    applied = ledger.get_meta(RELOAD_KEY)
    assert applied["ok"] is True and applied["pid"] == os.getpid()
    assert applied["began"] >= before and applied["problem"] is None
    config.write_text(good.replace('path = "in"', "path = 5"))
    assert not runtime.reload()
    refused = ledger.get_meta(RELOAD_KEY)
    assert refused["ok"] is False and refused["began"] > applied["began"]
    assert refused["problem"].startswith("folders[0].path")
    runtime.close()
    ledger.close()
