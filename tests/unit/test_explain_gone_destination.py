"""`syncd explain` on a file queued for a destination a reload renamed or removed: it
waits for that name for as long as nothing configures it (operations.md, Reload); the
answer said "it goes to 'old'" as if it would be sent."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.unit.test_cli_operator import add_row, cfg, ledger_of, run

__all__ = ["cfg"]  # fixture


def test_explain_says_the_destination_a_file_waits_for_is_no_longer_configured(
    cfg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inbox = cfg.parent / "inbox"
    (inbox / "w.txt").write_bytes(b"w")
    ledger = ledger_of(cfg)
    row = add_row(ledger, inbox, "w.txt")
    ledger.mark_retry(row.id, error="ConnectError", at=time.time() + 60, count=False)
    ledger._conn.execute("UPDATE files SET destination = 'old-lilt' WHERE id = ?", (row.id,))
    ledger.close()
    code, out, _ = run(capsys, "-c", str(cfg), "explain", str(inbox / "w.txt"))
    assert code == 0
    assert "it waits for destination 'old-lilt', which the configuration no longer has" in out, out
    assert "`replaces`" in out and "it goes to 'old-lilt'" not in out, out
