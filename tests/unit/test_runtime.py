"""The runtime a config builds (syncd/runtime.py): what it says about files left behind."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from syncd import config as configmod
from syncd.events import Intake
from syncd.ledger import Ledger
from syncd.metrics import Metrics
from syncd.runtime import Runtime
from syncd.watcher import Watcher

CONFIG = """
[daemon]
state_dir = "state"

[destinations.{name}]
type = "lilt"
base_url = "http://127.0.0.1:9/lilt"
api_key = "env:TEST_KEY"

[[folders]]
path = "inbox"
destination = "{name}"
"""


def _queued(ledger: Ledger, root: Path, rel: str, destination: str) -> None:
    ledger.observe(os.fspath(root), [rel], destination=destination)
    row = ledger.active_for_path(os.fspath(root), rel)
    assert row is not None
    ledger.promote(row.id)


def test_files_waiting_for_a_destination_the_config_lost_are_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("TEST_KEY", "runtime-test-key")
    (tmp_path / "inbox").mkdir()
    path = tmp_path / "syncd.toml"
    path.write_text(CONFIG.format(name="new-lilt"))
    path.chmod(0o600)
    ledger = Ledger.open(tmp_path / "state" / "ledger.sqlite3")
    for i in range(3):
        _queued(ledger, tmp_path / "inbox", f"a{i}.txt", "old-lilt")
    _queued(ledger, tmp_path / "inbox", "b.txt", "new-lilt")
    assert ledger.waiting_elsewhere(["new-lilt"]) == {"old-lilt": 3}
    for name, expected in [
        (
            "new-lilt",
            [
                "3 file(s) wait for destination 'old-lilt', which the configuration no longer has;"
                " they stay queued until it is configured again (docs/operations.md, Reload)"
            ],
        ),
        (
            "old-lilt",
            [
                "1 file(s) wait for destination 'new-lilt', which the configuration no longer has;"
                " they stay queued until it is configured again (docs/operations.md, Reload)"
            ],
        ),
    ]:
        path.write_text(CONFIG.format(name=name))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="syncd.runtime"):
            # at start; a reload applies the same (Runtime._configure)
            runtime = Runtime(
                configmod.load(path),
                ledger,
                watcher=Watcher(Intake()),
                metrics=Metrics(),
                once=True,
                watch=False,
            )
        runtime.close()
        assert [r.getMessage() for r in caplog.records if "no longer has" in r.getMessage()] == expected
    ledger.close()
