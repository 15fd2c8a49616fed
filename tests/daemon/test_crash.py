"""Crash recovery: the real daemon dies at chosen durability points and restarts.

Step mode (``SYNCD_CRASH_AT``, see syncd/crashpoints.py) kills the process with
``os._exit(137)`` right after a named point, deterministically; the random
mode SIGKILLs it at random moments. After every scenario the harness checks
I1-I4 and that files were uploaded again only if they were in flight.
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from pathlib import Path

import pytest

from tests.harness import Setup, rewrite_in_place, sha, wait_until

pytestmark = pytest.mark.process

POINTS = [
    "ledger.promote:1",  # a settle tick promotes its rows in one transaction: the first is all six
    "ledger.claim",
    "ledger.uploaded",  # with the archive target, recorded in the same commit
    "ledger.archive_target.synced",  # the group commit's fsync, before the link
    "archive.placed",
    "archive.renamed_aside",  # the source renamed aside to be unlinked: found again at the start
    "archive.unlinked",
    "ledger.done",
]


def _run_with_crash(s: Setup, spec: str) -> None:
    proc = s.start(extra_env={"SYNCD_CRASH_AT": spec})
    code = proc.wait(60)
    assert code == 137, f"expected the crash at {spec}, exit code {code}: {s.log_text()[-2000:]}"
    assert f"crash point {spec.split(':')[0]}" in s.log_text()


@pytest.mark.parametrize("point", POINTS)
def test_crash_at_each_durability_point(tmp_path: Path, point: str) -> None:
    s = Setup(tmp_path, folders=[{"name": "in", "settle_seconds": 0.1}], daemon={"workers": 2})
    try:
        for i in range(6):
            s.drop(f"sub/f{i}.txt", f"file {i} ".encode() * 50)
        _run_with_crash(s, point if ":" in point else f"{point}:2")
        s.start()
        wait_until(lambda: s.all_done(), 30, what="recovery after the crash")
        s.invariants()
        uploads = s.emulator.uploads()
        # at most the files in flight at the crash (2 workers) were sent twice
        assert sum(u["times_received"] for u in uploads) + len(uploads) - 2 * 6 <= 2
        # exactly one archived copy per file, no leftovers
        archived = sorted(p.name for p in s.archive().rglob("*") if p.is_file())
        assert archived == sorted(f"f{i}.txt" for i in range(6))
        assert not [p for p in s.inbox().rglob("*") if p.is_file()]  # nothing left aside
        assert s.stop() == 0
    finally:
        s.close()


def test_a_crash_with_the_name_renamed_aside_loses_no_new_version(tmp_path: Path) -> None:
    """after_upload = "delete": the producer saves a new version over the name in the
    instant before syncd renames it aside (so that is what goes aside), and syncd is
    killed there. At the start the new version is put back under its name and uploaded;
    it was left hidden as .syncd-unlinking-..., and its row said "vanished"."""
    s = Setup(tmp_path, folders=[{"name": "in", "settle_seconds": 0.1, "after_upload": "delete"}])
    try:
        path = s.drop("report.csv", b"version 1")
        proc = s.start(extra_env={"SYNCD_CRASH_AT": "ledger.uploaded:1"})
        assert proc.wait(60) == 137
        old = path.stat()
        new = path.with_name(".report.csv.tmp")
        new.write_bytes(b"version 2, saved at that instant")
        aside = path.with_name(f".syncd-unlinking-{old.st_dev:x}-{old.st_ino:x}-0123456789ab")
        os.rename(new, aside)  # what Held.unlink's rename did with it, before the crash
        os.unlink(path)
        s.dropped[("in", "report.csv")] = b"version 2, saved at that instant"
        s.start()
        wait_until(lambda: s.counts().get("done") == 2, 30, what="both versions")
        assert sorted(u["sha256"] for u in s.emulator.uploads()) == sorted(
            [sha(b"version 1"), sha(b"version 2, saved at that instant")]
        )
        assert not list(s.inbox().iterdir())
        assert s.stop() == 0
    finally:
        s.close()


@pytest.mark.parametrize("mode", [0o664, 0o644], ids=["private-copy", "link"])
def test_a_rewrite_while_stopped_after_the_archive_placed_it_is_a_new_version(
    tmp_path: Path, mode: int
) -> None:
    """Killed with the file placed in the archive but still in the inbox; while syncd is
    stopped the producer rewrites it in place, same size, mtime set back. The start
    finished the move by unlinking the inbox name, which held the new bytes: never
    uploaded, and lost (a private copy: group-writable here), or archived under the old
    row's hash (a link: the archive entry is the same inode). Now the new bytes are
    hashed, found to be a new version, and uploaded; the archive holds only uploaded bytes."""
    s = Setup(tmp_path, folders=[{"name": "in", "settle_seconds": 0.1}])
    try:
        v1, v2 = os.urandom(1 << 20), os.urandom(1 << 20)
        path = s.drop("big.bin", v1)
        os.chmod(path, mode)  # group-writable: a producer's file, archived as a private copy
        _run_with_crash(s, "archive.placed:1")
        assert (s.archive() / "big.bin").exists() and path.exists()
        rewrite_in_place(path, v2)
        s.dropped[("in", "big.bin")] = v2
        s.start()
        wait_until(lambda: sha(v2) in {u["sha256"] for u in s.emulator.uploads()}, 30, what="v2 uploaded")
        wait_until(lambda: s.all_done(), 30, what="v2 archived")
        remote = {u["sha256"] for u in s.emulator.uploads()}
        archived = {p.name: sha(p.read_bytes()) for p in s.archive().rglob("*") if p.is_file()}
        assert set(archived.values()) <= remote
        assert sha(v2) in archived.values()
        if mode == 0o664:  # the copy of the bytes uploaded stays, beside the new version
            assert sha(v1) in archived.values()
        assert not [p for p in s.inbox().rglob("*") if p.is_file()]
        s.invariants()
        assert s.stop() == 0
    finally:
        s.close()


@pytest.mark.parametrize("spec", ["archive.placed:1", "archive.renamed_aside:1"])
def test_a_crash_in_an_archive_move_then_keep_leaves_the_file_whole_in_the_inbox(
    tmp_path: Path, spec: str
) -> None:
    """Killed in an archive move; the operator switches the folder to after_upload =
    "keep" before the start. The file stayed hidden as .syncd-unlinking-... (renamed aside
    for the unlink), or linked into the archive, where later edits of the kept file would
    change the "archived" one that no row points at. Now it is back under its name, alone."""
    s = Setup(tmp_path, folders=[{"name": "in", "settle_seconds": 0.1}])
    try:
        path = s.drop("kept.txt", b"uploaded, then kept")
        _run_with_crash(s, spec)
        s.folders[0]["after_upload"] = "keep"
        s._write_config({}, {})
        s.start()
        wait_until(lambda: s.all_done(), 30, what="done, kept")
        assert [p.name for p in s.inbox().iterdir()] == ["kept.txt"]
        assert path.read_bytes() == b"uploaded, then kept" and path.stat().st_nlink == 1
        assert not [p for p in s.archive().rglob("*") if p.is_file()]
        assert len(s.emulator.uploads()) == 1
        assert s.stop() == 0
    finally:
        s.close()


@pytest.mark.parametrize("mode", [0o664, 0o644], ids=["private-copy", "link"])
@pytest.mark.parametrize("spec", ["archive.placed:1", "archive.renamed_aside:1"])
def test_a_crash_in_an_archive_move_then_delete_leaves_no_archived_file_without_its_row(
    tmp_path: Path, spec: str, mode: int
) -> None:
    """Killed in an archive move, the archive entry made; the operator switches the folder
    to after_upload = "delete" before the start. The inbox name was deleted and the row
    said "deleted after upload", while the entry the move had made stayed in the archive,
    a file no row pointed at. The move is finished where it began, as it is once a crash
    came after the inbox name was removed: the row points at the archived file."""
    s = Setup(tmp_path, folders=[{"name": "in", "settle_seconds": 0.1}])
    try:
        path = s.drop("report.pdf", b"archived once")
        os.chmod(path, mode)
        _run_with_crash(s, spec)
        archived = s.archive() / "report.pdf"
        assert archived.exists()
        s.folders[0]["after_upload"] = "delete"
        s._write_config({}, {})
        s.start()
        wait_until(lambda: s.all_done(), 30, what="done")
        (row,) = s.rows()
        assert [str(p) for p in s.archive().rglob("*") if p.is_file()] == [str(archived)]
        assert row.state == "done" and row.location == str(archived), row
        assert archived.read_bytes() == b"archived once" and archived.stat().st_nlink == 1
        assert not [p for p in s.inbox().rglob("*") if p.is_file()]
        assert len(s.emulator.uploads()) == 1
        assert s.stop() == 0
    finally:
        s.close()


@pytest.mark.parametrize("mode", [0o664, 0o644], ids=["private-copy", "link"])
def test_a_crash_in_an_archive_move_then_a_new_archive_dir_archives_once(tmp_path: Path, mode: int) -> None:
    """Killed with the archive entry made, the inbox name not yet removed; the operator
    points archive_dir elsewhere before the start. The move is finished where it began:
    one archived copy, where the row says, none left behind in the old folder."""
    s = Setup(tmp_path, folders=[{"name": "in", "settle_seconds": 0.1}])
    try:
        path = s.drop("report.pdf", b"archived once")
        os.chmod(path, mode)
        _run_with_crash(s, "archive.placed:1")
        old = s.archive() / "report.pdf"
        assert old.exists()
        s.folders[0]["archive_dir"] = "archive/elsewhere"
        s._write_config({}, {})
        s.start()
        wait_until(lambda: s.all_done(), 30, what="the move finished")
        (row,) = s.rows()
        assert row.location == str(old)
        assert old.read_bytes() == b"archived once"
        assert not (s.tmp / "archive" / "elsewhere").exists() or not list(
            (s.tmp / "archive" / "elsewhere").rglob("*")
        )
        assert not list(s.inbox().iterdir())
        assert len(s.emulator.uploads()) == 1
        assert s.stop() == 0
    finally:
        s.close()


def test_a_move_finished_after_a_crash_waits_for_a_writer_to_close(tmp_path: Path) -> None:
    """Killed with the file placed in the archive; a process opens the inbox file for
    writing before the start. Finishing the move unlinked the name under the writer, whose
    next bytes went into the archived inode; now it waits for the close, as a move does."""
    from syncd import writers

    s = Setup(tmp_path, folders=[{"name": "in", "settle_seconds": 0.1}])
    try:
        path = s.drop("open.bin", b"uploaded, then opened")
        _run_with_crash(s, "archive.placed:1")
        probe = os.open(s.inbox(), os.O_RDONLY)
        kind = writers.fs_type(probe)
        os.close(probe)
        if kind not in writers.LOCAL_FS:
            pytest.skip(f"{s.inbox()} is on a file system without usable leases (statfs type {kind})")
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            s.start()
            s.wait_logged("a process still has it open for writing", timeout=30)
            assert path.exists() and s.counts() == {"uploaded": 1}
        finally:
            os.close(fd)
        wait_until(lambda: s.all_done(), 30, what="archived once closed")
        assert not path.exists() and (s.archive() / "open.bin").read_bytes() == b"uploaded, then opened"
        assert s.stop() == 0
    finally:
        s.close()


@pytest.mark.parametrize("mode", [0o664, 0o644], ids=["private-copy", "link"])
def test_a_rewrite_of_another_size_after_the_archive_placed_it_leaves_only_uploaded_bytes_archived(
    tmp_path: Path, mode: int
) -> None:
    """As above, but the rewrite changes the size: the file is no longer the row's version
    at all. The archive entry the move made stayed: a link that then held the new bytes
    under the old row's target, or a copy no row pointed at. Now a copy is the old row's
    archived file, and a link to the rewritten file leaves the archive."""
    s = Setup(tmp_path, folders=[{"name": "in", "settle_seconds": 0.1}])
    try:
        v1, v2 = os.urandom(1 << 20), os.urandom((1 << 20) + 7)
        path = s.drop("big.bin", v1)
        os.chmod(path, mode)
        _run_with_crash(s, "archive.placed:1")
        with open(path, "r+b") as f:
            f.write(v2)
        s.dropped[("in", "big.bin")] = v2
        s.start()
        wait_until(lambda: s.all_done(2), 30, what="v2 uploaded and archived")
        archived = {str(p): sha(p.read_bytes()) for p in s.archive().rglob("*") if p.is_file()}
        rows = {r.sha256: r for r in s.rows()}
        assert {rows[h].location for h in archived.values()} == set(archived)  # each has its row
        assert sorted(archived.values()) == sorted([sha(v1), sha(v2)] if mode == 0o664 else [sha(v2)])
        s.invariants()
        assert s.stop() == 0
    finally:
        s.close()


@pytest.mark.parametrize(
    "spec,change",
    [
        ("archive.unlinked:1", {"archive_dir": "archive/elsewhere"}),
        ("archive.renamed_aside:1", {"archive_dir": "archive/elsewhere"}),
        ("archive.unlinked:1", {"after_upload": "keep"}),  # renamed aside: put back (above)
    ],
)
def test_a_move_that_removed_the_inbox_name_is_done_whatever_the_new_config(
    tmp_path: Path, spec: str, change: dict[str, str]
) -> None:
    """Killed once the inbox name is gone (or renamed aside): the file is in the archive.
    With archive_dir changed, or after_upload switched to keep, before the start, the row
    said the source vanished (nothing archived) or was done with no location."""
    s = Setup(tmp_path, folders=[{"name": "in", "settle_seconds": 0.1}])
    try:
        s.drop("report.pdf", b"archived once")
        _run_with_crash(s, spec)
        old = s.archive() / "report.pdf"
        s.folders[0].update(change)
        s._write_config({}, {})
        s.start()
        wait_until(lambda: s.all_done(), 30, what="the move finished")
        (row,) = s.rows()
        assert row.location == str(old) and row.last_error is None, row
        assert old.read_bytes() == b"archived once"
        assert not [p for p in s.inbox().rglob("*") if p.is_file()]
        assert len(s.emulator.uploads()) == 1
        assert s.stop() == 0
    finally:
        s.close()


@pytest.mark.parametrize(
    "spec", ["archive.renamed_aside:1", "archive.renamed_aside:2", "ledger.archive_target:1"]
)
def test_a_crash_in_the_move_to_failed_dir_is_finished_with_its_reason(tmp_path: Path, spec: str) -> None:
    """A file that fails (a malformed sidecar) and a crash in its move to failed_dir:
    with the name renamed aside, the aside file was left in the inbox for good; with
    the target recorded, the reason was lost ("the move ... was interrupted"). The next
    start finishes the move, leaves nothing aside and keeps the reason."""
    s = Setup(tmp_path, folders=[{"name": "in", "settle_seconds": 0.1, "metadata_sidecar": True}])
    try:
        sidecar = s.inbox() / "a.bin.meta.json"
        sidecar.write_bytes(b"{not json")
        s.drop("a.bin", b"the bytes")
        _run_with_crash(s, spec)
        s.start()
        wait_until(lambda: s.counts() == {"failed": 1}, 30, what="the move finished")
        assert not list(s.inbox().iterdir())  # nothing aside, nothing left
        failed = sorted(p.name for p in s.failed().iterdir())
        assert failed == ["a.bin", "a.bin.error.json", "a.bin.meta.json"], failed
        row = s.rows()[0]
        assert "sidecar" in (row.last_error or "") and "interrupted" not in (row.last_error or "")
        assert "sidecar" in (s.failed() / "a.bin.error.json").read_text()
        assert s.stop() == 0
    finally:
        s.close()


def test_a_new_version_renamed_aside_by_a_move_to_failed_dir_is_put_back(tmp_path: Path) -> None:
    """As for the archive (above), on the way to failed_dir: the producer's new version
    went aside in place of the failed file, and syncd was killed there. It is put back
    under its name at the start, and uploaded."""
    s = Setup(tmp_path, folders=[{"name": "in", "settle_seconds": 0.1, "metadata_sidecar": True}])
    try:
        sidecar = s.inbox() / "a.bin.meta.json"
        sidecar.write_bytes(b"{not json")
        path = s.drop("a.bin", b"version 1")
        _run_with_crash(s, "archive.placed:1")  # linked into failed_dir, the name still there
        old = path.stat()
        sidecar.unlink()  # the producer mends its sidecar: the new version has none
        new = path.with_name(".a.bin.tmp")
        new.write_bytes(b"version 2, saved at that instant")
        os.rename(new, path.with_name(f".syncd-unlinking-{old.st_dev:x}-{old.st_ino:x}-0123456789ab"))
        os.unlink(path)
        s.start()
        wait_until(
            lambda: sha(b"version 2, saved at that instant") in {u["sha256"] for u in s.emulator.uploads()},
            30,
            what="the new version uploaded",
        )
        wait_until(lambda: s.counts() == {"failed": 1, "done": 1}, 30, what="both rows final")
        assert [p.name for p in s.inbox().iterdir()] == []
        assert (s.failed() / "a.bin").read_bytes() == b"version 1"
        assert s.stop() == 0
    finally:
        s.close()


def test_crash_between_cross_device_copy_and_link(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("/dev/shm is not a separate filesystem here: no cross-device move to test")
    with tempfile.TemporaryDirectory(dir=shm) as other:
        s = Setup(tmp_path, folders=[{"name": "in", "archive_dir": f"{other}/arch"}])
        try:
            for i in range(3):
                s.drop(f"f{i}.bin", os.urandom(200_000))
            for spec in ("archive.copied:1", "archive.placed:1"):
                _run_with_crash(s, spec)
            s.start()
            wait_until(lambda: s.all_done(), 30, what="recovery")
            names = sorted(p.name for p in Path(other, "arch").iterdir())
            assert names == ["f0.bin", "f1.bin", "f2.bin"]  # no temp copies, no duplicates
            for (_folder, rel), data in s.dropped.items():
                assert sha(Path(other, "arch", rel).read_bytes()) == sha(data)
            assert not any(s.inbox().iterdir())
            assert s.stop() == 0
        finally:
            s.close()


def test_crash_mid_multipart_resumes_without_resending_parts(tmp_path: Path) -> None:
    mib = 1024 * 1024
    s = Setup(tmp_path, folders=[{"name": "in"}], lilt={"multipart_threshold": 5 * mib, "part_size": 5 * mib})
    try:
        data = os.urandom(4 * 5 * mib + 1234)  # 5 parts
        s.drop("big.bin", data)
        # checkpoints: session opened (1), part 1 (2), part 2 (3) -> die after part 2
        _run_with_crash(s, "ledger.checkpoint:3")
        sent_before = [r for r in s.emulator.requests() if r["op"] == "lilt.put_part" and r["status"] == 200]
        assert len(sent_before) == 2
        s.emulator.reset_log()
        s.start()
        wait_until(lambda: s.all_done(), 60, what="resumed multipart")
        after = [r for r in s.emulator.requests() if r["op"] == "lilt.put_part"]
        assert len(after) == 3, f"expected only parts 3-5 again, got {len(after)} part PUTs"
        assert not [r for r in s.emulator.requests() if r["op"] == "lilt.initiate_multipart"]
        s.invariants()
        assert s.stop() == 0
    finally:
        s.close()


def test_five_kills_during_one_multipart_upload_finish_it_whole(tmp_path: Path) -> None:
    """One multi-part upload killed five times, each time right after one more part was
    checkpointed, with max_attempts = 3: every kill left confirmed parts, so none costs an
    attempt; the upload finishes in its first session, and the service holds exactly the
    file's bytes, each part once more at most."""
    from tests.e2e_services import SERVICES

    service = SERVICES["wriftai"]  # parts of 64 KiB: quick
    kw = service.setup_kwargs()
    kw["folders"][0]["max_attempts"] = 3
    s = Setup(tmp_path, **kw)
    try:
        data = os.urandom(8 * service.part_size - 99)
        s.drop("big.bin", data)
        for kill in range(5):  # the first checkpoint of the first run opens the session
            _run_with_crash(s, "ledger.checkpoint:2" if kill == 0 else "ledger.checkpoint:1")
            (row,) = s.rows()
            assert row.state == "uploading" and len(row.resume["parts"]) == kill + 1, row.resume
        s.start()
        wait_until(lambda: s.all_done(), 30, what="the upload finished after five kills")
        (obj,) = s.emulator.uploads()
        assert (obj["sha256"], obj["size"], obj["parts"]) == (sha(data), len(data), 8)
        assert (s.archive() / "big.bin").read_bytes() == data
        opens = [r for r in s.emulator.requests() if r["op"] == service.open_op]
        assert len(opens) == 1, "a new session after a kill"
        assert s.stop() == 0
    finally:
        s.close()


@pytest.mark.parametrize(("seed", "helpers"), [(1, 0), (2, 2)], ids=["seed1", "seed2-upload-helpers"])
def test_random_sigkill_loop(tmp_path: Path, seed: int, helpers: int) -> None:
    """25 random SIGKILLs per run (50 in CI across the two seeds, the second with two
    upload helpers sending the files, syncd/offload.py); nothing is lost."""
    rng = random.Random(seed)
    s = Setup(
        tmp_path,
        folders=[{"name": "a", "labels": ["x"]}, {"name": "b"}],
        emulator={"seed": seed},
        daemon={"upload_processes": helpers},
    )
    try:
        n = 0
        for kill in range(25):
            for _ in range(rng.randint(3, 12)):  # files keep arriving between kills
                folder = rng.choice(["a", "b"])
                s.drop(f"k{kill}-{n}.bin", rng.randbytes(rng.randint(0, 20_000)), folder)
                n += 1
            s.start()
            time.sleep(rng.uniform(0.2, 1.0))
            s.kill()
            s.invariants()
        s.start()
        wait_until(lambda: s.all_done(), 120, 0.5, "everything after the kill loop")
        s.invariants()
        assert s.stop() == 0
        s.assert_no_secret()
    finally:
        s.close()


def test_crash_while_moving_to_failed_dir(tmp_path: Path) -> None:
    """A permanent rejection, and the daemon dies between the move and mark_failed."""
    s = Setup(tmp_path, folders=[{"name": "in"}])
    try:
        s.emulator.set_faults(script=[{"op": "lilt.initiate", "status": 400, "count": 2}])
        s.drop("rejected.txt", b"the service refuses this")
        _run_with_crash(s, "ledger.archive_target:1")  # target recorded, move not done
        s.start()
        wait_until(lambda: s.counts().get("failed") == 1, 20, what="failed after restart")
        assert (s.failed() / "rejected.txt").read_bytes() == b"the service refuses this"
        assert not (s.inbox() / "rejected.txt").exists()
        s.invariants(allow_failed=True)
        s.stop()
        s.emulator.set_faults(script=[{"op": "lilt.initiate", "status": 400, "count": 1}])
        s.drop("again.txt", b"refused too")
        _run_with_crash(s, "archive.placed:1")  # linked into failed_dir, source not unlinked
        s.start()
        wait_until(lambda: s.counts().get("failed") == 2, 20, what="second failure recorded")
        assert sorted(p.name for p in s.failed().iterdir() if not p.name.endswith(".json")) == [
            "again.txt",
            "rejected.txt",
        ]
        assert not (s.inbox() / "again.txt").exists()
        s.invariants(allow_failed=True)
        assert [u for u in s.emulator.uploads()] == []
    finally:
        s.close()


@pytest.mark.parametrize("spec", ["archive.placed:1", "archive.unlinked:1"])
def test_a_crash_in_the_move_to_failed_dir_then_a_new_failed_dir_fails_it_once(
    tmp_path: Path, spec: str
) -> None:
    """Killed in the move of a refused file to failed_dir (the entry made; or the inbox name
    removed too); the operator points failed_dir elsewhere before the start. The entry in
    the old folder stayed, a file no row pointed at, beside a second copy in the new one;
    or, with the inbox name gone, the row said the file failed in place, where nothing
    was. The move is finished where it began, as an archive move is."""
    s = Setup(tmp_path, folders=[{"name": "in", "settle_seconds": 0.1}])
    try:
        s.emulator.set_faults(script=[{"op": "lilt.initiate", "status": 400, "count": 1}])
        s.drop("rejected.txt", b"the service refuses this")
        _run_with_crash(s, spec)
        old = s.failed() / "rejected.txt"
        assert old.exists()
        s.folders[0]["failed_dir"] = "failed/elsewhere"
        s._write_config({}, {})
        s.start()
        wait_until(lambda: s.counts().get("failed") == 1, 20, what="failed after restart")
        (row,) = s.rows()
        assert row.location == str(old), row
        assert old.read_bytes() == b"the service refuses this"
        assert "400" in (row.last_error or "")
        elsewhere = s.tmp / "failed" / "elsewhere"
        assert not elsewhere.exists() or not [p for p in elsewhere.rglob("*") if p.is_file()]
        assert not [p for p in s.inbox().rglob("*") if p.is_file()]
        assert s.emulator.uploads() == []
        assert s.stop() == 0
    finally:
        s.close()


def test_a_delete_a_crash_cut_short_is_said_as_a_delete(tmp_path: Path) -> None:
    """after_upload = "delete", killed right after the unlink: the next start found the
    file gone, warned "uploaded, but the file was gone before it could be archived" and
    noted the row "source vanished after a confirmed upload; nothing archived", as if
    someone else had taken a file that was to be archived. It was deleted, as configured."""
    s = Setup(tmp_path, folders=[{"name": "in", "settle_seconds": 0.1, "after_upload": "delete"}])
    try:
        s.drop("report.pdf", b"deleted once")
        _run_with_crash(s, "archive.unlinked:1")
        s.start()
        wait_until(lambda: s.all_done(), 30, what="done")
        (row,) = s.rows()
        assert row.state == "done" and row.last_error == "deleted after upload", row
        assert "gone before it could be archived" not in s.log_text()
        assert not [p for p in s.inbox().rglob("*") if p.is_file()]
        assert len(s.emulator.uploads()) == 1
        assert s.stop() == 0
    finally:
        s.close()


def test_a_file_renamed_during_its_upload_then_a_crash_is_uploaded_once(tmp_path: Path) -> None:
    """Renamed while it was sent (a.txt -> b.txt), killed right after "uploaded" was
    committed, before the new path was recorded. Without the crash it is uploaded once and
    archived from its new path (F3); with it, the next start noted a.txt "source vanished
    after a confirmed upload; nothing archived" (a WARNING) and uploaded b.txt again. The
    file is found by its inode now, and archived from there."""
    s = Setup(tmp_path, folders=[{"name": "in", "settle_seconds": 0.1}])
    try:
        s.emulator.set_faults(script=[{"op": "lilt.put", "kind": "slow", "delay": 2}])
        path = s.drop("a.txt", b"renamed while it was sent")
        proc = s.start(extra_env={"SYNCD_CRASH_AT": "ledger.uploaded:1"})
        wait_until(lambda: [r for r in s.emulator.requests() if r["op"] == "lilt.put"], 20, 0.02, "the PUT")
        os.rename(path, s.inbox() / "b.txt")
        s.dropped = {("in", "b.txt"): b"renamed while it was sent"}
        assert proc.wait(20) == 137, s.log_text()[-1500:]
        s.start()
        wait_until(lambda: s.all_done(), 30, what="done")
        assert len(s.emulator.uploads()) == 1, "uploaded again under its new name"
        # (a row the start-up scan made for b.txt just before it was archived ends "vanished")
        (row,) = [r for r in s.rows() if r.state != "vanished"]
        assert row.location == str(s.archive() / "a.txt")  # under its original name, as F3
        assert s.stop() == 0
    finally:
        s.close()
