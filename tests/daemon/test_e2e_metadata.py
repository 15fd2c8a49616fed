"""The real daemon (subprocess) against the emulator: per-file metadata and duplicates.

* ``labels_from_path``: the folder names captured from a file's path reach
  the service as labels; a file outside the pattern keeps the folder's.
* ``metadata_sidecar``: ``NAME.meta.json`` adds labels and sets the category,
  is waited for while it is still being written, is archived beside its file
  and never uploaded itself; a malformed one fails the file (both go to
  failed_dir), and ``syncd retry`` after fixing it uploads the file with it.
* ``on_duplicate = "skip"``: the same bytes again are archived, not uploaded;
  the row (``skipped``) names the earlier upload and ``syncd explain`` says so.
* Crashes at the durability points of both (step mode, ``SYNCD_CRASH_AT``)
  end with one archived copy of each file and sidecar and no second upload.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from syncd.ledger import Row
from tests.harness import Setup, rewrite_in_place, sha, wait_until

pytestmark = [pytest.mark.process, pytest.mark.timeout(120)]

PATTERN = "{client}/{project}/**"


def _sidecar(s: Setup, rel: str, doc: Any, folder: str | None = None) -> Path:
    """Write ``rel.meta.json`` the careful way (a dot-name, renamed in); not a dropped file."""
    path = s.inbox(folder) / f"{rel}.meta.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.writing"
    tmp.write_bytes(doc if isinstance(doc, bytes) else json.dumps(doc).encode())
    os.rename(tmp, path)
    return path


def _uploads(s: Setup) -> dict[str, dict[str, Any]]:
    return {u["filename"]: u for u in s.emulator.uploads()}


def _row(s: Setup, rel: str) -> Row:
    rows = [r for r in s.rows() if r.relpath == rel]
    assert rows, f"no ledger row for {rel}"
    return rows[-1]


def _state(s: Setup, rel: str) -> str | None:
    rows = [r for r in s.rows() if r.relpath == rel]
    return rows[-1].state if rows else None


def test_labels_from_path_and_sidecar_reach_the_service(make_setup: Callable[..., Setup]) -> None:
    s = make_setup(
        folders=[
            {
                "name": "in",
                "labels": ["base"],
                "category": "SOURCE",
                "labels_from_path": PATTERN,
                "metadata_sidecar": True,
            }
        ]
    )
    s.start()
    _sidecar(s, "acme/q3/a.pdf", {"labels": ["invoice", "acme"], "category": "FINANCE"})
    s.drop("acme/q3/a.pdf", b"A" * 3000)
    s.drop("acme/b.pdf", b"B" * 10)  # outside the pattern: the folder's labels only
    s.drop("globex/q1/deep/c.pdf", b"C" * 20)
    wait_until(lambda: s.all_done(3), 30, what="three uploads")
    ups = _uploads(s)
    assert sorted(ups) == ["a.pdf", "b.pdf", "c.pdf"]  # the sidecar is never uploaded itself
    assert (ups["a.pdf"]["labels"], ups["a.pdf"]["category"]) == (
        ["base", "acme", "q3", "invoice"],
        "FINANCE",
    )
    assert (ups["b.pdf"]["labels"], ups["b.pdf"]["category"]) == (["base"], "SOURCE")
    assert (ups["c.pdf"]["labels"], ups["c.pdf"]["category"]) == (["base", "globex", "q1"], "SOURCE")
    arch = s.archive() / "acme" / "q3"
    assert (arch / "a.pdf").read_bytes() == b"A" * 3000
    assert json.loads((arch / "a.pdf.meta.json").read_text())["category"] == "FINANCE"
    assert not any(p.is_file() for p in s.inbox().rglob("*"))
    meta = _row(s, "acme/q3/a.pdf").meta or {}
    assert meta["labels"] == ["base", "acme", "q3", "invoice"]
    late = _sidecar(s, "acme/q3/a.pdf", {"labels": ["too late"]})  # after its file was uploaded
    explained = s.cli("explain", str(late), check=True)
    assert "metadata sidecar of 'a.pdf'" in explained.stdout
    time.sleep(1.0)  # a tick or four: it is neither uploaded nor moved
    assert late.exists() and len(s.emulator.uploads()) == 3
    s.invariants()
    assert s.stop() == 0
    s.assert_no_secret()


def test_a_sidecar_still_being_written_is_waited_for(make_setup: Callable[..., Setup]) -> None:
    s = make_setup(
        folders=[{"name": "in", "labels": ["base"], "metadata_sidecar": True, "settle_seconds": 1.0}]
    )
    s.start()
    s.wait_started()
    s.drop("report.pdf", b"R" * 500)
    side = s.inbox() / "report.pdf.meta.json"
    with open(side, "w") as f:  # a slow producer: the data file settles long before this ends
        f.write('{"labels": [')
        for i in range(6):
            f.flush()
            time.sleep(0.4)
            f.write(f'"part{i}", ')
        f.write('"last"], "category": "SLOW"}')
    wait_until(lambda: s.all_done(1), 30, what="the upload")
    up = _uploads(s)["report.pdf"]
    assert up["category"] == "SLOW"
    assert up["labels"] == ["base", *(f"part{i}" for i in range(6)), "last"]
    assert (s.archive() / "report.pdf.meta.json").exists() and not side.exists()
    s.invariants()
    assert s.stop() == 0


def test_malformed_sidecar_fails_its_file_and_retry_uploads_it_fixed(
    make_setup: Callable[..., Setup],
) -> None:
    s = make_setup(folders=[{"name": "in", "labels": ["base"], "metadata_sidecar": True}])
    _sidecar(s, "sub/a.pdf", b'{"labels": ["x",]}')
    s.drop("sub/a.pdf", b"A" * 100)
    s.start()
    wait_until(lambda: _state(s, "sub/a.pdf") == "failed", 30, what="the file to fail")
    row = _row(s, "sub/a.pdf")
    assert "metadata sidecar 'a.pdf.meta.json' is malformed: not valid JSON" in (row.last_error or "")
    failed = s.failed() / "sub"
    assert (failed / "a.pdf").read_bytes() == b"A" * 100
    assert (failed / "a.pdf.meta.json").read_bytes() == b'{"labels": ["x",]}'
    assert "malformed" in json.loads((failed / "a.pdf.error.json").read_text())["reason"]
    assert not any(p.is_file() for p in s.inbox().rglob("*"))
    assert s.emulator.uploads() == []
    (failed / "a.pdf.meta.json").write_text('{"labels": ["fixed"], "category": "OK"}')
    s.cli("retry", str(row.id), check=True)
    wait_until(lambda: s.all_done(1), 30, what="the retried upload")
    up = _uploads(s)["a.pdf"]
    assert (up["labels"], up["category"]) == (["base", "fixed"], "OK")
    assert json.loads((s.archive() / "sub" / "a.pdf.meta.json").read_text())["category"] == "OK"
    assert not (failed / "a.pdf.meta.json").exists()
    assert not (failed / "a.pdf.error.json").exists()  # its reason went with it (it stayed for good)
    s.invariants()
    assert s.stop() == 0


def test_duplicate_content_is_skipped_and_explained(make_setup: Callable[..., Setup]) -> None:
    s = make_setup(folders=[{"name": "in", "on_duplicate": "skip"}])
    s.start()
    s.drop("a.bin", b"same bytes" * 1000)
    wait_until(lambda: s.all_done(1), 30, what="the first upload")
    s.drop("sub/copy.bin", b"same bytes" * 1000)
    s.drop("other.bin", b"other bytes")
    wait_until(lambda: s.all_done(3), 30, what="the copy and the other file")
    ups = s.emulator.uploads()
    assert sorted(u["filename"] for u in ups) == ["a.bin", "other.bin"]
    assert all(u["times_received"] == 1 for u in ups)
    first, copy = _row(s, "a.bin"), _row(s, "sub/copy.bin")
    assert copy.state == "skipped" and copy.duplicate_of == first.id
    assert copy.sha256 == sha(b"same bytes" * 1000)
    assert copy.receipt and first.receipt and copy.receipt["remote_id"] == first.receipt["remote_id"]
    assert (s.archive() / "sub" / "copy.bin").read_bytes() == b"same bytes" * 1000
    out = s.cli("explain", str(s.inbox() / "sub" / "copy.bin"), check=True).stdout
    assert "skipped as a duplicate" in out and f"row #{first.id}" in out
    status = s.status()
    assert status["states"]["skipped"] == 1
    s.invariants()
    assert s.stop() == 0


@pytest.mark.parametrize("point", ["ledger.duplicate", "archive.placed", "archive.unlinked"])
def test_crash_after_the_skip_decision_is_finished_without_upload(
    make_setup: Callable[..., Setup], point: str
) -> None:
    s = make_setup(folders=[{"name": "in", "on_duplicate": "skip"}])
    s.start()
    s.drop("a.bin", b"x" * 5000)
    wait_until(lambda: s.all_done(1), 30, what="the first upload")
    assert s.stop() == 0
    s.drop("b.bin", b"x" * 5000)
    proc = s.start(extra_env={"SYNCD_CRASH_AT": point})
    assert proc.wait(60) == 137, s.log_text()[-2000:]
    row = _row(s, "b.bin")
    assert row.state == "uploaded" and row.duplicate_of == _row(s, "a.bin").id
    s.invariants()  # no loss at the crash: in the inbox or at the recorded archive target
    s.start()
    wait_until(lambda: _state(s, "b.bin") == "skipped", 30, what="recovery")
    assert sorted(p.name for p in s.archive().rglob("*") if p.is_file()) == ["a.bin", "b.bin"]
    assert not (s.inbox() / "b.bin").exists()
    ups = s.emulator.uploads()
    assert len(ups) == 1 and ups[0]["times_received"] == 1
    s.invariants()
    assert s.stop() == 0


@pytest.mark.parametrize("point", ["ledger.sidecar_target", "archive.placed:2", "archive.unlinked:2"])
def test_crash_between_file_and_sidecar_moves(make_setup: Callable[..., Setup], point: str) -> None:
    s = make_setup(folders=[{"name": "in", "metadata_sidecar": True, "labels": ["base"]}])
    _sidecar(s, "d/a.pdf", {"labels": ["side"]})
    s.drop("d/a.pdf", b"A" * 700)
    proc = s.start(extra_env={"SYNCD_CRASH_AT": point})
    assert proc.wait(60) == 137, s.log_text()[-2000:]
    s.invariants()
    s.start()
    wait_until(lambda: s.all_done(1), 30, what="recovery")
    names = sorted(p.name for p in s.archive().rglob("*") if p.is_file())
    assert names == ["a.pdf", "a.pdf.meta.json"]
    assert not any(p.is_file() for p in s.inbox().rglob("*"))
    ups = s.emulator.uploads()
    assert len(ups) == 1 and ups[0]["times_received"] == 1 and ups[0]["labels"] == ["base", "side"]
    s.invariants()
    assert s.stop() == 0


def test_a_move_finished_in_the_old_archive_dir_takes_its_sidecar_along(
    make_setup: Callable[..., Setup],
) -> None:
    """Killed with the file placed in the archive; archive_dir changed before the start.
    The move is finished in the old folder, and the sidecar goes beside the file there:
    it stayed in the inbox (anchored on the new archive_dir), for a later same-name file."""
    s = make_setup(folders=[{"name": "in", "metadata_sidecar": True}])
    _sidecar(s, "a.pdf", {"labels": ["side"]})
    s.drop("a.pdf", b"A" * 700)
    proc = s.start(extra_env={"SYNCD_CRASH_AT": "archive.placed:1"})
    assert proc.wait(60) == 137, s.log_text()[-2000:]
    old = s.archive()
    s.folders[0]["archive_dir"] = "archive/elsewhere"
    s._write_config({}, {})
    s.start()
    wait_until(lambda: s.all_done(1), 30, what="recovery")
    assert sorted(p.name for p in old.iterdir() if p.is_file()) == ["a.pdf", "a.pdf.meta.json"]
    assert not any(p.is_file() for p in s.inbox().rglob("*"))
    assert s.stop() == 0


def test_a_rewrite_while_stopped_keeps_its_sidecar_for_the_new_version(
    make_setup: Callable[..., Setup],
) -> None:
    """Killed with a copy of the file placed in the archive; while stopped, the producer
    rewrites the file (same size, mtime set back). The copy stays archived; the new
    version is uploaded with the sidecar's labels (the sidecar went with the old copy,
    and the new version was sent without them)."""
    s = make_setup(folders=[{"name": "in", "metadata_sidecar": True}])
    _sidecar(s, "big.bin", {"labels": ["side"]})
    v1, v2 = os.urandom(1 << 16), os.urandom(1 << 16)
    path = s.drop("big.bin", v1)
    os.chmod(path, 0o664)  # a producer's file: archived as a copy
    proc = s.start(extra_env={"SYNCD_CRASH_AT": "archive.placed:1"})
    assert proc.wait(60) == 137, s.log_text()[-2000:]
    rewrite_in_place(path, v2)
    s.dropped[("in", "big.bin")] = v2
    s.start()
    wait_until(lambda: s.all_done(2), 30, what="both versions")
    labels = {u["sha256"]: u["labels"] for u in s.emulator.uploads()}
    assert labels == {sha(v1): ["side"], sha(v2): ["side"]}
    assert s.stop() == 0


def test_a_sidecar_whose_archive_name_would_pass_255_bytes_is_archived_shortened(
    make_setup: Callable[..., Setup],
) -> None:
    """A 245-byte file name (its sidecar's name: 255 bytes, the limit) dropped twice: the
    second is archived as ``NAME (1).bin``, whose ``.meta.json`` would be 259 bytes. The
    sidecar's name is cut before ``.meta.json`` instead; the row was stuck ``uploaded``
    for ever (ENAMETOOLONG at every sweep)."""
    s = make_setup(folders=[{"name": "in", "metadata_sidecar": True}])
    s.start()
    name = "n" * 241 + ".bin"
    for i in range(2):
        tmp = s.inbox() / ".sidecar.writing"  # renamed in, as a careful producer does
        tmp.write_text(json.dumps({"labels": [f"v{i}"]}))
        os.rename(tmp, s.inbox() / f"{name}.meta.json")
        s.drop(name, f"version {i}".encode())
        wait_until(lambda i=i: s.all_done(i + 1), 30, what=f"version {i} archived")
    archived = sorted(p.name for p in s.archive().iterdir())
    assert len(archived) == 4 and all(len(n.encode()) <= 255 for n in archived), archived
    second = [n for n in archived if n.endswith(".meta.json") and n != name + ".meta.json"]
    assert len(second) == 1 and second[0].startswith("n" * 200), archived
    assert json.loads((s.archive() / second[0]).read_text()) == {"labels": ["v1"]}
    assert not any(s.inbox().iterdir())
    assert s.stop() == 0


def test_a_late_sidecar_is_not_given_to_the_next_file_of_that_name(
    make_setup: Callable[..., Setup],
) -> None:
    """A producer writes ``report.pdf`` and only then its sidecar, which arrives while the
    file is being sent: the file goes out without it, and the sidecar stays in the inbox.
    Next week's ``report.pdf`` was sent with it, silently; now the sidecar left behind is
    logged, and the next file fails with the reason, both in failed_dir, nothing sent."""
    s = make_setup(folders=[{"name": "in", "metadata_sidecar": True}], lilt={"bwlimit": "1MB"})
    s.start()
    s.drop("report.pdf", b"R" * 2_000_000)
    wait_until(lambda: _state(s, "report.pdf") == "uploading", 20, what="the upload")
    _sidecar(s, "report.pdf", {"labels": ["late"], "category": "LATE"})
    wait_until(lambda: s.all_done(1), 30, what="the first report archived")
    s.wait_logged("stays in the inbox without its file")
    s.drop("report.pdf", b"next week's report")
    wait_until(lambda: _state(s, "report.pdf") == "failed", 20, what="the second report failed")
    assert "left in the inbox by an earlier 'report.pdf'" in (_row(s, "report.pdf").last_error or "")
    assert [(u["labels"], u["category"]) for u in s.emulator.uploads()] == [([], None)]
    assert sorted(p.name for p in s.failed().iterdir()) == [
        "report.pdf",
        "report.pdf.error.json",
        "report.pdf.meta.json",
    ]
    assert (s.archive() / "report.pdf").read_bytes() == b"R" * 2_000_000
    assert s.stop() == 0
