"""syncd.claims: one syncd per watched folder (an abstract socket named after the folder)."""

from __future__ import annotations

import os
from pathlib import Path

from syncd.claims import HELD, FolderClaims


def test_a_folder_held_by_another_claim_is_refused_until_released(tmp_path: Path) -> None:
    inbox, other = tmp_path / "inbox", tmp_path / "other"
    inbox.mkdir()
    other.mkdir()
    first, second = FolderClaims(), FolderClaims()  # two open descriptions: as two processes
    assert first.take([str(inbox), str(tmp_path / "not-yet")]) == {}  # a missing one is not refused
    assert second.take([str(inbox), str(other)]) == {str(inbox): HELD}
    assert second.problem(str(other)) is None  # its own claim
    first.release([str(inbox)])
    assert second.problem(str(inbox)) is None
    assert first.problem(str(inbox)) == HELD
    second.release()
    assert first.problem(str(inbox)) is None
    first.release()


def test_a_folder_replaced_under_its_claim_is_claimed_again(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    mine, theirs = FolderClaims(), FolderClaims()
    assert mine.problem(str(inbox)) is None
    os.rename(inbox, tmp_path / "old")
    inbox.mkdir()  # a new directory under the name (a remount): the old claim says nothing of it
    assert theirs.problem(str(inbox)) is None
    assert mine.problem(str(inbox)) == HELD
    mine.release()
    theirs.release()
