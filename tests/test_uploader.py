from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path
from typing import Any, ClassVar

import pytest

from syncd.destinations.base import Capabilities, Checkpoint, Receipt, Source, UploadItem
from syncd.errors import FatalError, PermanentError, RetryableError
from syncd.ledger import Ledger
from syncd.uploader import Uploader, backoff
from tests.conftest import FakeClock, make_folder


class FakeDestination:
    TYPE: ClassVar[str] = "fake"
    CAPABILITIES: ClassVar[Capabilities] = Capabilities(labels="x", category="y")
    Options: ClassVar[type] = object

    def __init__(self) -> None:
        self.name = "dest"
        self.script: list[Any] = []  # exceptions to raise, or callables(source) run first
        self.received: list[tuple[UploadItem, bytes]] = []
        self.aborted: list[dict[str, Any]] = []

    def upload(self, item: UploadItem, source: Source, resume: dict[str, Any] | None,
               checkpoint: Checkpoint) -> Receipt:
        checkpoint({"v": 1, "session": "s1"})
        action = self.script.pop(0) if self.script else None
        if callable(action) and not isinstance(action, Exception):
            action(source)
        data = source.read(0, item.size)
        if isinstance(action, Exception):
            raise action
        self.received.append((item, data))
        return Receipt(remote_id=f"obj/{item.name}", url="http://x/obj")

    def abort(self, resume: dict[str, Any]) -> None:
        self.aborted.append(resume)

    def probe(self) -> str:
        return "ok"

    def close(self) -> None:
        pass


@pytest.fixture
def setup(tmp_path: Path, clock: FakeClock) -> Any:
    ledger = Ledger.open(tmp_path / "state" / "ledger.sqlite3", clock=clock)
    folder = make_folder(tmp_path, labels=("a", "b"), category="SOURCE", max_attempts=3)
    dest = FakeDestination()
    up = Uploader(ledger, lambda: {"dest": dest}, lambda: {os.fspath(folder.path): folder},
                  retry_base=1.0, retry_max=30.0, clock=clock, rng=random.Random(1))

    def drop(rel: str, data: bytes = b"payload") -> int:
        path = folder.path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        st = path.stat()
        ledger.observe(os.fspath(folder.path), [rel], destination="dest", labels=folder.labels,
                       category=folder.category)
        row = ledger.active_for_path(os.fspath(folder.path), rel)
        assert row is not None
        ledger.note_stat(row.id, size=st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino,
                         changed=True)
        ledger.promote(row.id)
        return row.id

    def step() -> str:
        row = ledger.claim_next(["dest"])
        assert row is not None
        return up.process(row)

    yield ledger, folder, dest, up, drop, step
    ledger.close()


def test_success_uploads_records_and_archives(setup: Any, tmp_path: Path) -> None:
    ledger, folder, dest, up, drop, step = setup
    row_id = drop("sub/a.pdf", b"pdf bytes")
    assert step() == "done"
    item, data = dest.received[0]
    assert data == b"pdf bytes"
    assert (item.name, item.relpath, item.content_type) == ("a.pdf", "sub/a.pdf", "application/pdf")
    assert item.labels == ("a", "b") and item.category == "SOURCE"
    row = ledger.get(row_id)
    assert row.state == "done" and row.sha256 == hashlib.sha256(b"pdf bytes").hexdigest()
    assert row.receipt == {"remote_id": "obj/a.pdf", "url": "http://x/obj"}
    assert (tmp_path / "archive" / "inbox" / "sub" / "a.pdf").read_bytes() == b"pdf bytes"
    assert up.stats.uploaded == 1


def test_retryable_backs_off_then_fails_after_max_attempts(setup: Any, clock: FakeClock,
                                                           tmp_path: Path) -> None:
    ledger, folder, dest, up, drop, step = setup
    row_id = drop("a.txt")
    dest.script = [RetryableError("HTTP 503"), RetryableError("HTTP 503", retry_after=7),
                   RetryableError("HTTP 503")]
    assert step() == "retrying"
    row = ledger.get(row_id)
    assert row.state == "retrying" and "503" in row.last_error
    assert 0 < row.next_attempt_at - clock() <= 1.0
    assert ledger.claim_next(["dest"]) is None  # not due yet
    clock.advance(1.0)
    assert step() == "retrying"
    assert ledger.get(row_id).next_attempt_at - clock() == pytest.approx(7)
    clock.advance(7)
    assert step() == "failed"
    failed = ledger.get(row_id)
    assert failed.state == "failed" and "gave up after 3 attempts" in failed.last_error
    assert (tmp_path / "failed" / "inbox" / "a.txt").exists()
    assert not (folder.path / "a.txt").exists()


def test_permanent_error_fails_at_once_and_aborts(setup: Any, tmp_path: Path) -> None:
    ledger, folder, dest, up, drop, step = setup
    row_id = drop("a.txt")
    dest.script = [PermanentError("HTTP 400: bad type")]
    assert step() == "failed"
    assert dest.aborted == [{"v": 1, "session": "s1"}]
    assert ledger.get(row_id).attempts == 1
    assert (tmp_path / "failed" / "inbox" / "a.txt.error.json").exists()


def test_changed_during_upload_is_superseded(setup: Any) -> None:
    ledger, folder, dest, up, drop, step = setup
    row_id = drop("a.txt", b"first")

    def append(source: Source) -> None:
        with open(folder.path / "a.txt", "ab") as f:
            f.write(b" and more")

    dest.script = [append]
    assert step() == "vanished"
    assert ledger.get(row_id).state == "vanished"
    new = ledger.active_for_path(os.fspath(folder.path), "a.txt")
    assert new is not None and new.state == "settling" and new.id != row_id
    assert (folder.path / "a.txt").exists()  # never archived
    assert dest.aborted


def test_replaced_by_symlink_is_not_followed(setup: Any) -> None:
    ledger, folder, dest, up, drop, step = setup
    row_id = drop("a.txt")
    os.unlink(folder.path / "a.txt")
    os.symlink("/etc/passwd", folder.path / "a.txt")
    step()
    assert dest.received == []
    assert ledger.get(row_id).state == "vanished"


def test_vanished_before_upload(setup: Any) -> None:
    ledger, folder, dest, up, drop, step = setup
    row_id = drop("a.txt")
    os.unlink(folder.path / "a.txt")
    assert step() == "vanished"
    assert ledger.get(row_id).state == "vanished"


def test_fatal_error_pauses_destination_without_using_attempts(setup: Any, clock: FakeClock) -> None:
    ledger, folder, dest, up, drop, step = setup
    row_id = drop("a.txt")
    dest.script = [FatalError("HTTP 401: bad key")]
    assert step() == "queued"
    row = ledger.get(row_id)
    assert row.state == "queued" and row.attempts == 0
    assert up._available() == []
    clock.advance(61)
    assert up._available() == ["dest"]


def test_unreadable_file_stays_and_is_retried_without_using_attempts(
        setup: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Logic only; tests/test_e2e.py runs the real thing without capabilities."""
    ledger, folder, dest, up, drop, step = setup
    row_id = drop("a.txt")
    import syncd.uploader as uploader_mod

    def denied(*args: Any, **kwargs: Any) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(uploader_mod, "_StoppableSource", denied)
    for _ in range(5):  # more than max_attempts (3): never moved to failed
        ledger.mark_retry(row_id, error="x", at=0, count=False)
        assert step() == "retrying"
    row = ledger.get(row_id)
    assert row.state == "retrying" and row.attempts == 0
    assert "Permission denied" in row.last_error
    assert (folder.path / "a.txt").exists()


def test_backoff_is_full_jitter_and_capped() -> None:
    rng = random.Random(3)
    for attempt in range(1, 12):
        d = backoff(attempt, 2.0, 60.0, rng)
        assert 0 < d <= min(60.0, 2.0 * 2 ** (attempt - 1))
    assert backoff(1, 2.0, 60.0, rng, retry_after=5) == 5
    assert backoff(1, 2.0, 60.0, rng, retry_after=10_000) == 60.0
