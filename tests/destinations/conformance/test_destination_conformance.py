"""The destination conformance suite: every scenario, once, for every registered type.

Each test gets ``target`` (see conftest.py): a destination configured against
the real emulator, reached in process through its httpx transport (``wire``
parametrized True: over a loopback socket), with a way to read back what the
server stored and what it was sent. A scenario that needs a capability the
type lacks is skipped, never failed. Service-specific edge cases belong in
``tests/destinations/test_<service>_destination.py``, not here.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from syncd.destinations import REGISTRY
from syncd.destinations.base import Receipt, Source, UploadItem
from syncd.errors import FatalError, PermanentError, RetryableError, UploadError
from tests.destinations.conformance.targets import CAPABILITIES, TARGETS, Target

pytestmark = pytest.mark.timeout(60)

UUID = "0b7e6a2c-3f1d-4c55-9e0a-5d2f8c1b7a90"

#: Tests run in process and once more over a loopback socket (the server's own framing,
#: a real RST): conftest.py parametrizes ``wire`` for them.
OVER_BOTH: set[Callable[..., None]] = set()


def over_both(test: Callable[..., None]) -> Callable[..., None]:
    OVER_BOTH.add(test)
    return test


class Crash(Exception):
    """Stands for the process dying right after a durable checkpoint."""


class Checkpoints:
    """A checkpoint callback: keeps the last state (JSON round-tripped, as the ledger would)."""

    def __init__(self, crash_when: Callable[[dict[str, Any]], bool] | None = None) -> None:
        self.last: dict[str, Any] | None = None
        self.count = 0
        self.crash_when = crash_when

    def __call__(self, state: dict[str, Any]) -> None:
        self.last = json.loads(json.dumps(state))
        self.count += 1
        if self.crash_when is not None and self.crash_when(state):
            raise Crash()


def parts_done(state: dict[str, Any]) -> int:
    parts = state.get("parts")
    return len(parts) if isinstance(parts, dict) else 0


def make_file(tmp_path: Path, size: int, name: str = "report.bin") -> Path:
    path = tmp_path / "inbox" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(os.urandom(size))
    return path


def item_for(
    path: Path, *, labels: tuple[str, ...] = ("legal", "review-needed"), category: str | None = "SOURCE"
) -> UploadItem:
    return UploadItem(
        uuid=UUID,
        name=path.name,
        relpath=path.name,
        size=path.stat().st_size,
        content_type="application/octet-stream",
        labels=labels,
        category=category,
    )


def attempt(
    target: Target, path: Path, resume: dict[str, Any] | None, checkpoint: Checkpoints, **item_kw: Any
) -> tuple[Receipt, str]:
    """One ``upload()`` call, as the uploader makes it; returns the receipt and local sha256."""
    st = path.stat()
    with Source(path, size=st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino) as source:
        receipt = target.dest.upload(item_for(path, **item_kw), source, resume, checkpoint)
        return receipt, source.sha256()


def upload_with_retries(
    target: Target, path: Path, *, attempts: int = 4, **item_kw: Any
) -> tuple[Receipt, str, list[RetryableError]]:
    """What the uploader does: retry RetryableError with the last checkpoint.

    Not the wait before the next try: waiting out ``retry_after`` is the uploader's part
    (tests/unit/test_uploader.py, and F17 in tests/scenarios/ in real time), and the emulator
    holds no client to it, so here the next try goes at once."""
    checkpoint = Checkpoints()
    errors: list[RetryableError] = []
    for _ in range(attempts):
        try:
            receipt, sha = attempt(target, path, copy.deepcopy(checkpoint.last), checkpoint, **item_kw)
            return receipt, sha, errors
        except RetryableError as exc:
            errors.append(exc)
    raise AssertionError(f"no success after {attempts} attempts: {errors}")


def assert_stored_once(target: Target, path: Path, sha: str) -> dict[str, Any]:
    """Exactly one object on the server, with these bytes, received once."""
    stored = target.stored()
    assert len(stored) == 1, stored
    (row,) = stored
    assert row["sha256"] == sha == hashlib.sha256(path.read_bytes()).hexdigest()
    assert row["size"] == path.stat().st_size
    assert row["times_received"] == 1
    assert target.leftovers() == []
    return row


def assert_clean_receipt(receipt: Receipt) -> None:
    assert receipt.remote_id
    assert receipt.url is None or "?" not in receipt.url
    json.dumps(receipt.to_json())


# -- the guard ---------------------------------------------------------------------


def test_every_registered_type_has_a_target() -> None:
    missing = sorted(set(REGISTRY) - set(TARGETS))
    assert not missing, f"destination types without a conformance target: {missing}"


def test_targets_build_registered_classes(target: Target) -> None:
    assert type(target.dest) is REGISTRY[target.type]
    assert target.supports <= CAPABILITIES


# -- sizes ------------------------------------------------------------------------


def test_empty_file(target: Target, tmp_path: Path) -> None:
    target.require("empty")
    path = make_file(tmp_path, 0)
    receipt, sha, _ = upload_with_retries(target, path)
    assert_stored_once(target, path, sha)
    assert_clean_receipt(receipt)


def test_one_byte(target: Target, tmp_path: Path) -> None:
    path = make_file(tmp_path, 1)
    receipt, sha, _ = upload_with_retries(target, path)
    assert_stored_once(target, path, sha)
    assert_clean_receipt(receipt)


def test_exactly_one_part(target: Target, tmp_path: Path) -> None:
    path = make_file(tmp_path, target.part_size)
    receipt, sha, _ = upload_with_retries(target, path)
    assert_stored_once(target, path, sha)
    assert len(target.log(target.part_op)) <= 1


def test_one_part_and_one_byte(target: Target, tmp_path: Path) -> None:
    target.require("multipart")
    path = make_file(tmp_path, target.part_size + 1)
    receipt, sha, _ = upload_with_retries(target, path)
    assert_stored_once(target, path, sha)
    assert [e["bytes"] for e in target.log(target.part_op)] == [target.part_size, 1]


@over_both
def test_several_parts_with_short_last_part(target: Target, tmp_path: Path) -> None:
    target.require("multipart")
    size = 2 * target.part_size + target.part_size // 5
    path = make_file(tmp_path, size)
    receipt, sha, _ = upload_with_retries(target, path)
    assert_stored_once(target, path, sha)
    assert_clean_receipt(receipt)
    sent = [e["bytes"] for e in target.log(target.part_op) if 200 <= e["status"] < 300]
    assert sent == [target.part_size, target.part_size, target.part_size // 5]


# -- crash and resume ----------------------------------------------------------------


def test_resume_after_crash_at_part_2(target: Target, tmp_path: Path) -> None:
    target.require("multipart", "resume")
    size = 2 * target.part_size + target.part_size // 5
    path = make_file(tmp_path, size)
    crashing = Checkpoints(crash_when=lambda state: parts_done(state) >= 2)
    with pytest.raises(Crash):
        attempt(target, path, None, crashing)
    saved = crashing.last
    assert saved is not None and parts_done(saved) == 2
    assert target.stored() == []

    target.emulator.reset_log()
    checkpoint = Checkpoints()
    receipt, sha = attempt(target, path, saved, checkpoint)
    assert_stored_once(target, path, sha)
    sent = [e["bytes"] for e in target.log(target.part_op) if 200 <= e["status"] < 300]
    assert sent == [target.part_size // 5], "parts 1 and 2 must not be sent again"
    assert_clean_receipt(receipt)


def test_checkpoints_carry_no_secrets_or_urls(target: Target, tmp_path: Path) -> None:
    seen: list[str] = []
    path = make_file(tmp_path, 2 * target.part_size + 7 if "multipart" in target.supports else 7)
    attempt(target, path, None, lambda state: seen.append(json.dumps(state)))
    assert seen
    for text in seen:
        assert "http://" not in text and "https://" not in text
        assert "conformance-" not in text and "Signature" not in text


def test_abort_leaves_nothing_behind(target: Target, tmp_path: Path) -> None:
    target.require("multipart", "abort")
    path = make_file(tmp_path, 2 * target.part_size + 1)
    crashing = Checkpoints(crash_when=lambda state: parts_done(state) >= 1)
    with pytest.raises(Crash):
        attempt(target, path, None, crashing)
    assert crashing.last is not None
    assert target.leftovers() != []
    target.dest.abort(crashing.last)
    assert target.leftovers() == []
    assert target.stored() == []
    target.dest.abort(crashing.last)  # twice: still quiet


def test_abort_tolerates_any_resume(target: Target) -> None:
    """A resume state the destination does not know names nothing remote: abort sends nothing."""
    before = len(target.emulator.requests())
    for resume in ({}, {"v": 99}, {"v": 1, "kind": "nonsense"}, {"garbage": [1, 2]}):
        target.dest.abort(resume)
    sent = target.emulator.requests()[before:]
    assert sent == [], f"abort of an unknown resume state sent {[e['op'] for e in sent]}"


# -- server trouble ------------------------------------------------------------------


def test_503_then_success(target: Target, tmp_path: Path) -> None:
    multipart = "multipart" in target.supports
    op = target.part_op if multipart else target.first_op
    target.emulator.set_faults(script=[{"op": op, "status": 503, "count": 1}])
    path = make_file(tmp_path, 2 * target.part_size + 1 if multipart else 1000)
    receipt, sha, errors = upload_with_retries(target, path)
    assert [e.status for e in errors] == [503]
    assert_stored_once(target, path, sha)
    if multipart:  # the retry resumed: each part was accepted once
        ok = [e for e in target.log(target.part_op) if 200 <= e["status"] < 300]
        assert len(ok) == 3


def test_429_with_retry_after(target: Target, tmp_path: Path) -> None:
    target.emulator.set_faults(script=[{"op": target.first_op, "kind": "429", "retry_after": 1}])
    path = make_file(tmp_path, 10)
    receipt, sha, errors = upload_with_retries(target, path)
    assert len(errors) == 1 and errors[0].status == 429
    assert errors[0].retry_after == pytest.approx(1.0)
    assert_stored_once(target, path, sha)


def test_429_with_http_date(target: Target, tmp_path: Path) -> None:
    target.emulator.set_faults(script=[{"op": target.first_op, "kind": "429", "retry_after": "date"}])
    with pytest.raises(RetryableError) as info:
        attempt(target, make_file(tmp_path, 10), None, Checkpoints())
    assert info.value.retry_after is not None and 0.0 <= info.value.retry_after <= 3.0


def test_permanent_4xx(target: Target, tmp_path: Path) -> None:
    target.emulator.set_faults(script=[{"op": target.first_op, "status": 400}])
    with pytest.raises(PermanentError) as info:
        attempt(target, make_file(tmp_path, 10), None, Checkpoints())
    assert info.value.status == 400
    assert target.stored() == []


def test_bad_credentials_are_fatal(make_target: Callable[..., Target], tmp_path: Path) -> None:
    bad = make_target(bad_credentials=True)
    with pytest.raises(FatalError) as info:
        attempt(bad, make_file(tmp_path, 10), None, Checkpoints())
    assert "not-the-key" not in str(info.value)
    with pytest.raises(UploadError):
        bad.dest.probe()
    assert bad.stored() == []


def test_probe(target: Target) -> None:
    text = target.dest.probe()
    assert isinstance(text, str) and text


@over_both
def test_connection_reset_is_retryable(target: Target, tmp_path: Path) -> None:
    target.emulator.set_faults(script=[{"op": target.first_op, "kind": "reset"}])
    path = make_file(tmp_path, 100)
    receipt, sha, errors = upload_with_retries(target, path)
    assert len(errors) == 1 and errors[0].status is None
    assert_stored_once(target, path, sha)


def test_expired_url_is_renewed_within_the_call(target: Target, tmp_path: Path) -> None:
    multipart = "multipart" in target.supports
    op = target.part_op if multipart else target.first_op.replace("initiate", "put")
    target.emulator.set_faults(script=[{"op": op, "kind": "expire"}])
    path = make_file(tmp_path, 2 * target.part_size + 1 if multipart else 100)
    receipt, sha = attempt(target, path, None, Checkpoints())  # no error reaches the caller
    assert_stored_once(target, path, sha)


# -- metadata --------------------------------------------------------------------------


def test_metadata_delivered(target: Target, tmp_path: Path) -> None:
    path = make_file(tmp_path, 321, "contract.pdf")
    receipt, sha, _ = upload_with_retries(target, path, labels=("legal", "review-needed"), category="SOURCE")
    row = assert_stored_once(target, path, sha)
    assert row["filename"] == "contract.pdf"
    if "labels" in target.supports:
        assert row["labels"] == ["legal", "review-needed"]
    if "category" in target.supports:
        assert row["category"] == "SOURCE"
    if "uuid" in target.supports:
        assert row["uuid"] == UUID


def test_metadata_on_multipart(target: Target, tmp_path: Path) -> None:
    target.require("multipart")
    path = make_file(tmp_path, target.part_size + 10, "big.zip")
    _, sha, _ = upload_with_retries(target, path, labels=("x",), category=None)
    row = assert_stored_once(target, path, sha)
    if "labels" in target.supports:
        assert row["labels"] == ["x"]
    if "category" in target.supports:
        assert row["category"] is None
    if "uuid" in target.supports:
        assert row["uuid"] == UUID
