from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncd.rules import dir_ignored, judge


@pytest.mark.parametrize(
    "relpath",
    [
        ".DS_Store",
        "._a.pdf",
        "Thumbs.db",
        "desktop.ini",
        "a.part",
        "a.partial",
        "a.tmp",
        "a.crdownload",
        "~$report.docx",
        ".~lock.report.odt#",
        ".hidden",
        "sub/.git/config",
        "deep/dir/Thumbs.db",
    ],
)
def test_builtin_junk_is_ignored(relpath: str) -> None:
    verdict = judge(relpath)
    assert not verdict.accepted
    assert verdict.reason.startswith("ignored:")


@pytest.mark.parametrize(
    "relpath",
    [
        "a.pdf",
        "sub/a.pdf",
        "with space.txt",
        "-leading-dash",
        "ünïcode.txt",
        "a.partner",
        "tmp/a.txt",
        "part",
    ],
)
def test_ordinary_names_are_accepted(relpath: str) -> None:
    assert judge(relpath).accepted


def test_junk_can_be_switched_off() -> None:
    assert judge(".hidden", ignore_junk=False).accepted
    assert judge("a.part", ignore_junk=False).accepted


def test_include_matches_relative_path_or_basename() -> None:
    assert judge("scans/2026/a.pdf", include=["*.pdf"]).accepted
    assert judge("scans/a.pdf", include=["scans/*"]).accepted
    verdict = judge("a.txt", include=["*.pdf", "*.doc"])
    assert not verdict.accepted and "'*.pdf'" in verdict.reason


def test_exclude_wins_and_excludes_whole_directories() -> None:
    assert not judge("drafts/a.pdf", exclude=["drafts"]).accepted
    assert not judge("drafts/x/a.pdf", exclude=["drafts/*"]).accepted
    assert not judge("a.bak", exclude=["*.bak"]).accepted
    assert "exclude pattern '*.bak'" in judge("a.bak", exclude=["*.bak"]).reason
    assert judge("final/a.pdf", exclude=["drafts"]).accepted


def test_dir_ignored() -> None:
    assert dir_ignored(".git")
    assert dir_ignored("a/.cache")
    assert dir_ignored("drafts", exclude=["drafts"])
    assert not dir_ignored("scans")
    assert not dir_ignored(".git", ignore_junk=False)


def test_an_excluded_directory_name_excludes_it_at_any_depth() -> None:
    for relpath in ("acme/drafts/b.pdf", "drafts/b.pdf", "a/b/drafts/c/d.pdf"):
        assert not judge(relpath, exclude=["drafts"]).accepted, relpath
    assert not judge("x/old-2024/a.pdf", exclude=["old*"]).accepted
    assert not judge("x/drafts", exclude=["drafts"]).accepted  # a file of that name, as before
    assert judge("x/drafts.pdf", exclude=["drafts"]).accepted
    assert judge("x/mydrafts/a.pdf", exclude=["drafts"]).accepted


_NAMES = st.sampled_from(["a", "drafts", "tmp", "old-1", "x.pdf", "b.bak", "q3", "sub"])
_PATTERNS = st.sampled_from(["drafts", "old*", "*.bak", "x/*", "a/drafts", "sub", "q?", "*/tmp", "tmp/*"])


@given(dirs=st.lists(_NAMES, min_size=1, max_size=4), name=_NAMES, exclude=st.lists(_PATTERNS, max_size=3))
def test_scans_skip_a_directory_only_when_every_file_under_it_is_ignored(
    dirs: list[str], name: str, exclude: list[str]
) -> None:
    """The scanner skips what dir_ignored says; events and explain use judge. A file the
    scanner never reaches but events accept was uploaded only when its event was seen."""
    for depth in range(1, len(dirs) + 1):
        if dir_ignored("/".join(dirs[:depth]), exclude=exclude):
            relpath = "/".join([*dirs, name])
            assert not judge(relpath, exclude=exclude).accepted, (relpath, exclude)


def test_syncd_s_own_momentary_names_are_never_files_of_the_folder() -> None:
    """With ignore_junk = false, the name an uploaded file is renamed to for a moment
    before it is removed got a row of its own (which then vanished)."""
    for name in (".syncd-unlinking-fe01-1a2b-0123456789ab", "sub/.syncd-tmp-x"):
        assert not judge(name, ignore_junk=False).accepted
