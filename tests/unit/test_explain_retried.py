"""`syncd explain` on the failed-folder path an operator was shown, after `syncd retry`
sent that file again: it left the failed folder, and the answer must say where it went,
not that the ledger never saw it (exit 2, "most likely a typo")."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_cli_operator import add_row, cfg, ledger_of, run

__all__ = ["cfg"]  # fixture


def test_explain_a_failed_path_after_its_retry_names_the_row(
    cfg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inbox, archive = cfg.parent / "inbox", cfg.parent / "archive"
    failed_dir = cfg.parent / "state" / "failed" / "inbox"
    ledger = ledger_of(cfg)
    row = add_row(ledger, inbox, "b.txt")
    failed_dir.mkdir(parents=True)
    (failed_dir / "b.txt").write_bytes(b"y")
    ledger.mark_failed(row.id, error="gave up after 8 attempts: HTTP 503", location=str(failed_dir / "b.txt"))
    assert [r.id for r in ledger.requeue_failed([row.id])] == [row.id]
    claimed = ledger.claim_next()
    assert claimed is not None and claimed.id == row.id
    ledger.mark_uploaded(row.id, sha256="ab" * 32, receipt={"remote_id": "remote-9"})
    archive.mkdir()
    (failed_dir / "b.txt").rename(archive / "b.txt")
    ledger.mark_done(row.id, location=str(archive / "b.txt"))
    ledger.close()
    code, out, _ = run(capsys, "-c", str(cfg), "explain", str(failed_dir / "b.txt"))
    assert code == 0, out
    assert f"#{row.id}" in out and "done" in out and str(archive / "b.txt") in out


def test_explain_a_kept_file_says_it_changed_since_and_what_became_of_a_version(
    cfg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A kept file rewritten in place after its upload was said to be "kept in place", as
    if it still held the bytes sent; and the version it replaced had its note ("rewritten
    in place ...") nowhere in the answer."""
    cfg.write_text(cfg.read_text().replace('archive_dir = "archive"', 'after_upload = "keep"'))
    inbox = cfg.parent / "inbox"
    path = inbox / "k.txt"
    path.write_bytes(b"sent")
    ledger = ledger_of(cfg)
    row = add_row(ledger, inbox, "k.txt")
    ledger.mark_uploaded(
        row.id, sha256="ab" * 32, receipt={"remote_id": "r1"}, ctime_ns=path.stat().st_ctime_ns
    )
    ledger.mark_done(row.id)
    ledger.close()
    code, out, _ = run(capsys, "-c", str(cfg), "explain", str(path))
    assert code == 0 and "kept in place" in out and "changed since" not in out, out
    path.write_bytes(b"SENT")  # rewritten in place
    code, out, _ = run(capsys, "-c", str(cfg), "explain", str(path))
    assert "changed since" in out and "the next scan compares it" in out, out
    ledger = ledger_of(cfg)
    ledger.rewritten(row.id, "rewritten in place after its upload")
    ledger.close()
    code, out, _ = run(capsys, "-c", str(cfg), "explain", str(path))
    assert "then: rewritten in place after its upload" in out, out
