"""`syncd ledger forget` against the real daemon (subprocess), the real emulator and real
folders: a folder removed from the config for good stops waiting, while syncd runs."""

from __future__ import annotations

import time
import tomllib
from collections.abc import Callable

import pytest
import tomli_w

from tests.harness import Setup, wait_until

pytestmark = pytest.mark.process


def test_a_removed_folders_files_are_forgotten_while_syncd_runs_and_go_when_it_is_back(
    make_setup: Callable[..., Setup],
) -> None:
    """Three files wait for a destination that is down; a reload removes their folder. They
    waited for it for ever (`syncd status`: "not in the configuration"). `ledger forget`
    retires them while the daemon runs: the files stay in the folder, the daemon does not
    take them up again once the destination is back, and status stops listing the folder.
    The folder put back in the config: its files are uploaded as new files and archived."""
    s = make_setup(
        folders=[{"name": name, "settle_seconds": 0} for name in ("in", "other")],
        daemon={"retry_base_seconds": 0.5, "retry_max_seconds": 1},
    )
    s.emulator.set_faults(script=[{"op": "lilt.initiate", "status": 503, "count": 100_000}])
    s.start()
    s.wait_started()
    for i in range(3):
        s.drop(f"f{i}.txt", f"waiting {i}".encode())
    wait_until(lambda: s.counts().get("retrying", 0) == 3, 30, what="3 files waiting")
    original = s.config.read_text()
    doc = tomllib.loads(original)
    doc["folders"] = [f for f in doc["folders"] if not f["path"].endswith("/in")]
    s.config.write_text(tomli_w.dumps(doc))
    assert s.cli("reload").returncode == 0
    wait_until(
        lambda: all("no longer configured" in (r.last_error or "") for r in s.rows()),
        30,
        what="the files put off for their folder",
    )
    inbox = str(s.inbox())
    assert any(f["path"] == inbox for f in s.status()["folders"])

    out = s.cli("ledger", "forget", "--folder", inbox)
    assert out.returncode == 0, out.stderr
    assert f"forgot 3 file(s) of '{inbox}'" in out.stdout and "left where they are" in out.stdout
    s.emulator.set_faults(script=[])  # the destination is back: nothing of "in" may go now
    time.sleep(4)
    assert [r.state for r in s.rows()] == ["forgotten"] * 3
    assert not s.emulator.uploads()
    assert sorted(p.name for p in s.inbox().iterdir()) == ["f0.txt", "f1.txt", "f2.txt"]
    status = s.status()
    assert status["states"]["forgotten"] == 3
    assert inbox not in [f["path"] for f in status["folders"]]
    assert "no longer has" not in s.cli("status").stdout

    s.config.write_text(original)  # configured again
    assert s.cli("reload").returncode == 0
    wait_until(lambda: s.all_done(3), 30, 0.2, "the folder's files, uploaded as new files")
    rows = s.rows()
    assert sorted(r.state for r in rows) == ["done"] * 3 + ["forgotten"] * 3
    assert len({r.uuid for r in rows}) == 6 and len(s.emulator.uploads()) == 3
    assert not any(s.inbox().iterdir())
    s.invariants()
    assert s.stop() == 0
    s.assert_no_secret(out.stdout, out.stderr)
