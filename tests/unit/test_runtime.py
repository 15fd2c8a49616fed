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


def _config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> tuple[Path, Path]:
    """The inbox (created) and a config file of ``text`` (0600), its key in the environment."""
    monkeypatch.setenv("TEST_KEY", "runtime-test-key")
    root = tmp_path / "inbox"
    root.mkdir()
    path = tmp_path / "syncd.toml"
    path.write_text(text)
    path.chmod(0o600)
    return root, path


def _runtime(path: Path, ledger: Ledger) -> Runtime:
    return Runtime(
        configmod.load(path), ledger, watcher=Watcher(Intake()), metrics=Metrics(), once=True, watch=False
    )


def _queued(ledger: Ledger, root: Path, rel: str, destination: str) -> None:
    ledger.observe(os.fspath(root), [rel], destination=destination)
    row = ledger.active_for_path(os.fspath(root), rel)
    assert row is not None
    ledger.promote(row.id)


def test_files_waiting_for_a_destination_the_config_lost_are_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _, path = _config(tmp_path, monkeypatch, CONFIG.format(name="new-lilt"))
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
                " they stay queued until it is configured again, or a destination's `replaces`"
                " names it (docs/operations.md, Reload)"
            ],
        ),
        (
            "old-lilt",
            [
                "1 file(s) wait for destination 'new-lilt', which the configuration no longer has;"
                " they stay queued until it is configured again, or a destination's `replaces`"
                " names it (docs/operations.md, Reload)"
            ],
        ),
    ]:
        path.write_text(CONFIG.format(name=name))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="syncd.runtime"):
            runtime = _runtime(path, ledger)
            runtime.reroute()  # at start, after recovery; every reload does the same
        runtime.close()
        assert [r.getMessage() for r in caplog.records if "no longer has" in r.getMessage()] == expected
    ledger.close()


def _replacing_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """The inbox and a config whose destination new-lilt says `replaces = ["old-lilt"]`."""
    text = CONFIG.format(name="new-lilt").replace('type = "lilt"', 'type = "lilt"\nreplaces = ["old-lilt"]')
    return _config(tmp_path, monkeypatch, text)


def test_a_destination_that_replaces_a_removed_one_takes_its_waiting_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """`replaces = ["old-lilt"]`: settling, queued and retrying rows of old-lilt go to
    new-lilt, due now and without old-lilt's resume state; what old-lilt already has
    (uploaded, done) stays its own."""
    root, path = _replacing_config(tmp_path, monkeypatch)
    ledger = Ledger.open(tmp_path / "state" / "ledger.sqlite3")
    for rel in ("queued.txt", "retrying.txt", "uploaded.txt", "done.txt"):
        _queued(ledger, root, rel, "old-lilt")
    ledger.observe(os.fspath(root), ["settling.txt"], destination="old-lilt")
    rows = {r.relpath: r for r in ledger.rows()}
    retrying = ledger.claim_next(["old-lilt"])
    assert retrying is not None and retrying.relpath == "queued.txt"
    ledger.requeue_now(retrying.id)
    for rel, then in (("retrying.txt", "retry"), ("uploaded.txt", "uploaded"), ("done.txt", "done")):
        row = rows[rel]
        claimed = ledger.claim_next(["old-lilt"])
        assert claimed is not None
        while claimed.id != row.id:  # claim in id order: give the others back
            ledger.requeue_now(claimed.id)
            claimed = ledger.claim_next(["old-lilt"])
            assert claimed is not None
        if then == "retry":
            ledger.checkpoint(row.id, {"session": "of old-lilt"})
            ledger.mark_retry(row.id, error="destination 'old-lilt' is no longer configured", at=9e9)
        else:
            ledger.mark_uploaded(row.id, sha256="0" * 64, receipt={"id": "r"})
            if then == "done":
                ledger.mark_done(row.id)
    with caplog.at_level(logging.INFO, logger="syncd.daemon"):
        runtime = _runtime(path, ledger)
        runtime.reroute()
    runtime.close()
    said = [r.getMessage() for r in caplog.records]
    after = {r.relpath: r for r in ledger.rows()}
    moved = {rel: (r.destination, r.state) for rel, r in after.items()}
    assert moved == {
        "queued.txt": ("new-lilt", "queued"),
        "retrying.txt": ("new-lilt", "queued"),
        "settling.txt": ("new-lilt", "settling"),
        "uploaded.txt": ("old-lilt", "uploaded"),
        "done.txt": ("old-lilt", "done"),
    }
    assert after["retrying.txt"].resume is None and after["retrying.txt"].last_error is None
    assert (after["retrying.txt"].next_attempt_at or 0) < 9e9  # due now
    assert (
        "3 file(s) queued for destination 'old-lilt' now go to 'new-lilt'"
        " (destinations.new-lilt.replaces)" in said
    ), said
    assert not [m for m in said if "no longer has" in m]
    ledger.close()


def test_the_sweep_repoints_late_files_and_keeps_the_lost_count_true(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between reloads: a file that lands on a replaced destination after the reload (an
    upload in flight to it then failed) is re-pointed by the sweep; the count of files
    waiting for a lost destination drops when they vanish."""
    root, path = _replacing_config(tmp_path, monkeypatch)
    ledger = Ledger.open(tmp_path / "state" / "ledger.sqlite3")
    _queued(ledger, root, "gone.txt", "gone-lilt")
    runtime = _runtime(path, ledger)
    runtime.reroute()
    assert runtime.lost == {"gone-lilt": 1}
    _queued(ledger, root, "late.txt", "old-lilt")  # after the reload
    gone = ledger.active_for_path(os.fspath(root), "gone.txt")
    assert gone is not None
    ledger.mark_vanished(gone.id, reason="deleted by its producer")
    runtime.sweep()
    late = ledger.active_for_path(os.fspath(root), "late.txt")
    assert late is not None and late.destination == "new-lilt"
    assert runtime.lost == {}
    runtime.close()
    ledger.close()


def test_files_still_settling_take_their_folders_destination_and_labels_as_now_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reload renamed the folder's destination (no `replaces`) and changed its labels:
    a file still settling was never queued for the old ones. It kept them, was queued for
    a destination no worker takes, and waited for good without a word."""
    root, path = _config(
        tmp_path, monkeypatch, CONFIG.format(name="new-lilt") + 'labels = ["legal"]\ncategory = "SOURCE"\n'
    )
    ledger = Ledger.open(tmp_path / "state" / "ledger.sqlite3")
    ledger.observe(os.fspath(root), ["settling.txt"], destination="old-lilt", labels=["old"])
    _queued(ledger, root, "queued.txt", "old-lilt")
    runtime = _runtime(path, ledger)
    runtime.reroute()  # at start and after every reload
    runtime.close()
    settling = ledger.active_for_path(os.fspath(root), "settling.txt")
    assert settling is not None
    assert (settling.destination, settling.labels, settling.category) == ("new-lilt", ("legal",), "SOURCE")
    queued = ledger.active_for_path(os.fspath(root), "queued.txt")
    assert queued is not None and queued.destination == "old-lilt"  # queued for it: it keeps it
    assert ledger.waiting_elsewhere(["new-lilt"]) == {"old-lilt": 1}
    ledger.close()


def test_a_replaced_client_outlives_the_uploads_and_the_probes_that_may_use_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reload's old HTTP client is closed once no upload in flight uses it and not before
    2 x io_timeout: an idle probe of a circuit (no row in flight) may still be sending on
    it, and failed "Bad file descriptor" (an outage for the circuit, its next probe later)."""
    import time as timemod

    _, path = _config(tmp_path, monkeypatch, CONFIG.format(name="lilt"))
    ledger = Ledger.open(tmp_path / "state" / "ledger.sqlite3")
    runtime = _runtime(path, ledger)
    old = runtime.client
    runtime.apply(configmod.load(path))  # a reload: a new client
    runtime.close_retired()
    assert not old.is_closed  # an idle probe may be using it
    later = timemod.monotonic() + 2 * runtime.cfg.daemon.io_timeout + 1
    monkeypatch.setattr(timemod, "monotonic", lambda: later)
    runtime.close_retired()
    assert old.is_closed and not runtime.client.is_closed
    runtime.uploader.stop_claiming()  # apply() started the pool's workers
    runtime.uploader.join(10)
    runtime.close()
    ledger.close()


def test_files_waiting_for_a_folder_the_config_lost_are_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A reload that removes a folder with files on their way said nothing of them (it did
    of a removed destination's): they wait until the folder is configured again."""
    _, path = _config(tmp_path, monkeypatch, CONFIG.format(name="lilt"))
    ledger = Ledger.open(tmp_path / "state" / "ledger.sqlite3")
    gone = tmp_path / "gone"
    for i in range(2):
        _queued(ledger, gone, f"g{i}.txt", "lilt")
    with caplog.at_level(logging.WARNING, logger="syncd.runtime"):
        runtime = _runtime(path, ledger)
        runtime.reroute()
    runtime.close()
    said = [
        r.getMessage() for r in caplog.records if "folder the configuration no longer has" in r.getMessage()
    ]
    assert said == [
        f"2 file(s) of '{gone}', a folder the configuration no longer has, wait for it to be again"
    ]
    ledger.close()
