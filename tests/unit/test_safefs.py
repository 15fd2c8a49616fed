"""syncd.safefs: no lookup under a trusted root follows a symlink at any component.

Every test runs twice: with openat2 (the kernel checks each component) and
with the component-by-component O_NOFOLLOW walk used where openat2 is missing.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from syncd import aside, safefs
from syncd.folder_probe import relinked


@pytest.fixture(params=["openat2", "walk"], autouse=True)
def resolver(request: pytest.FixtureRequest) -> Iterator[str]:
    saved = safefs._Kernel.use_openat2
    safefs._Kernel.use_openat2 = None if request.param == "openat2" else False
    probe = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    try:
        if request.param == "openat2":
            safefs.open_beneath(probe, "tmp", safefs.DIR_FLAGS)
            if safefs._Kernel.use_openat2 is False:
                pytest.skip("this kernel (or its seccomp filter) has no openat2")
    except OSError:
        pass
    finally:
        os.close(probe)
    yield request.param
    safefs._Kernel.use_openat2 = saved


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """root/ holds a/b/file; outside/ holds a secret; root/link -> outside, root/a/up -> .."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "file").write_bytes(b"inside")
    outside.mkdir()
    (outside / "secret").write_bytes(b"SECRET")
    (outside / "b").mkdir()
    (outside / "b" / "file").write_bytes(b"SECRET")
    os.symlink(outside, root / "link")
    os.symlink("..", root / "a" / "up")
    os.symlink(outside / "secret", root / "a" / "leaf")
    return root


def _read(root: Path, rel: str) -> bytes:
    fd = safefs.open_file(root, rel)
    try:
        return os.pread(fd, 100, 0)
    finally:
        os.close(fd)


def test_plain_paths_open(tree: Path) -> None:
    assert _read(tree, "a/b/file") == b"inside"
    assert stat.S_ISREG(safefs.lstat(tree, "a/b/file").st_mode)


@pytest.mark.parametrize("rel", ["link/secret", "link/b/file", "a/leaf", "a/up/link/secret", "a/up/a/b/file"])
def test_a_symlink_at_any_component_is_refused(tree: Path, rel: str) -> None:
    with pytest.raises(safefs.UnsafePath) as info:
        _read(tree, rel)
    assert info.value.errno == errno.ELOOP


@pytest.mark.parametrize(
    "rel", ["../outside/secret", "/etc/passwd", "a/../../outside/secret", "a//b/file", "./a/b/file"]
)
def test_dot_dot_absolute_and_odd_paths_are_refused(tree: Path, rel: str) -> None:
    with pytest.raises(safefs.UnsafePath):
        _read(tree, rel)


def test_lstat_of_a_link_itself_is_allowed_but_not_through_it(tree: Path) -> None:
    assert stat.S_ISLNK(safefs.lstat(tree, "link").st_mode)
    with pytest.raises(safefs.UnsafePath):
        safefs.lstat(tree, "link/secret")


def test_directory_swapped_for_a_symlink_after_a_first_lookup(tree: Path, tmp_path: Path) -> None:
    """The credential attack: mkdir x; touch x/key; (settled) rm -r x; ln -s creds x."""
    (tree / "x").mkdir()
    (tree / "x" / "lilt-api-key").write_bytes(b"decoy")
    assert safefs.lstat(tree, "x/lilt-api-key").st_size == 5
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "lilt-api-key").write_bytes(b"the real key")
    (tree / "x" / "lilt-api-key").unlink()
    (tree / "x").rmdir()
    os.symlink(creds, tree / "x")
    with pytest.raises(safefs.UnsafePath):
        safefs.lstat(tree, "x/lilt-api-key")
    with pytest.raises(safefs.UnsafePath):
        _read(tree, "x/lilt-api-key")


def test_makedirs_refuses_a_planted_link_and_creates_0700(tree: Path, tmp_path: Path) -> None:
    rootfd = safefs.open_root(tree)
    try:
        with pytest.raises(safefs.UnsafePath):
            safefs.makedirs(rootfd, "link/new")
        assert not (tmp_path / "outside" / "new").exists()
        fd = safefs.makedirs(rootfd, "made/deeper")
        os.close(fd)
    finally:
        os.close(rootfd)
    assert stat.S_IMODE(os.stat(tree / "made" / "deeper").st_mode) == 0o700


@pytest.mark.parametrize("rel", ["link", "link/b", "a/up/a", "a/leaf"])
def test_relinked_names_a_symlink_at_any_component(tree: Path, rel: str) -> None:
    why = relinked(tree / rel)
    assert why is not None and "through a symlink now" in why


@pytest.mark.parametrize("rel", ["", "a", "a/b", "a/b/file", "not-there", "a/not/there"])
def test_relinked_passes_a_path_without_symlinks(tree: Path, rel: str) -> None:
    assert relinked(os.path.join(tree, rel).rstrip("/")) is None


def test_parent_with_create(tree: Path) -> None:
    with safefs.parent(tree, "n1/n2/leaf", create=True) as (dirfd, name):
        assert name == "leaf"
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=dirfd)
        os.close(fd)
    assert (tree / "n1" / "n2" / "leaf").exists()
    with pytest.raises(safefs.UnsafePath), safefs.parent(tree, "link/x", create=True):
        pass


def test_anchor_is_lexical_and_strict(tmp_path: Path) -> None:
    root = str(tmp_path / "r")
    assert safefs.anchor(root + "/a/b", [None, "/elsewhere", root]) == (root, "a/b")
    with pytest.raises(safefs.UnsafePath):
        safefs.anchor(root + "x/a", [root])
    with pytest.raises(safefs.UnsafePath):
        safefs.anchor(root + "/a/../../etc", [root])


def test_walk_never_enters_links_and_reports_them(tree: Path) -> None:
    entries = {e.relpath: e.stat for e in safefs.walk(tree)}
    assert "a/b/file" in entries
    assert stat.S_ISLNK(entries["link"].st_mode) and stat.S_ISLNK(entries["a/up"].st_mode)
    assert not any(rel.startswith(("link/", "a/up/")) for rel in entries)


def test_walk_of_a_symlink_loop_is_bounded(tmp_path: Path) -> None:
    root = tmp_path / "loop"
    root.mkdir()
    os.symlink(".", root / "a")
    os.symlink("a", root / "b")
    (root / "f").write_bytes(b"x")
    assert sorted(e.relpath for e in safefs.walk(root)) == ["a", "b", "f"]


def test_walk_depth_and_entry_caps(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    deep = tmp_path / "deep"
    path = deep
    for i in range(10):
        path = path / f"d{i}"
    path.mkdir(parents=True)
    rels = [e.relpath for e in safefs.walk(deep, max_depth=4)]
    assert max(r.count("/") for r in rels) == 3
    assert "deeper than 4 levels" in caplog.text
    wide = tmp_path / "wide"
    wide.mkdir()
    for i in range(50):
        (wide / f"f{i}").write_bytes(b"")
    assert len(list(safefs.walk(wide, max_entries=20))) == 20
    assert "after 20 entries" in caplog.text


def test_walk_skips_a_directory_it_cannot_list(tmp_path: Path) -> None:
    root = tmp_path / "r"
    (root / "ok").mkdir(parents=True)
    (root / "ok" / "f").write_bytes(b"x")
    # a directory that turns out not to be listable: a file where the walk expected one
    assert sorted(e.relpath for e in safefs.walk(root, start="missing")) == []
    assert [e.relpath for e in safefs.walk(root, start="ok")] == ["ok/f"]


@pytest.mark.parametrize("how", ["renameat2", "link", "rename"])
def test_rename_noreplace_never_replaces_a_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """renameat2(RENAME_NOREPLACE), or where it is missing a hard link and an unlink."""
    if how != "renameat2":
        monkeypatch.setattr(aside, "_renameat2", False)
    if how == "rename":  # a file system without hard links

        def no_links(*args: object, **kwargs: object) -> None:
            raise PermissionError(1, "Operation not permitted")

        monkeypatch.setattr(os, "link", no_links)
    (tmp_path / "a").write_bytes(b"a")
    (tmp_path / "taken").write_bytes(b"taken")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(FileExistsError):
            aside.rename_noreplace(fd, "a", "taken")
        assert (tmp_path / "taken").read_bytes() == b"taken" and (tmp_path / "a").exists()
        aside.rename_noreplace(fd, "a", "free")
        assert (tmp_path / "free").read_bytes() == b"a" and not (tmp_path / "a").exists()
    finally:
        os.close(fd)


def test_a_path_past_the_kernels_limit_is_opened_one_component_at_a_time(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Nested 250-byte names: past 4,096 bytes below the folder, openat2 refuses the
    path (ENAMETOOLONG), and the files there were never listed, uploaded or archived
    (a warning at every rescan). Such a path is walked a component at a time."""
    root = tmp_path / "inbox"
    root.mkdir()
    fd = os.open(root, os.O_RDONLY)
    try:
        for _ in range(20):
            os.mkdir("d" * 250, dir_fd=fd)
            with open(os.open("f.txt", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd), "w") as f:
                f.write("x")
            nxt = os.open("d" * 250, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = nxt
    finally:
        os.close(fd)
    with caplog.at_level(logging.WARNING, logger="syncd.safefs"):
        found = [e.relpath for e in safefs.walk(os.fspath(root)) if e.relpath.endswith("f.txt")]
    assert len(found) == 20 and not caplog.records
    deepest = max(found, key=len)
    assert len(deepest) > 4096
    with safefs.parent(os.fspath(root), deepest) as (dirfd, name):
        assert os.stat(name, dir_fd=dirfd, follow_symlinks=False).st_size == 1
    fd = safefs.open_file(os.fspath(root), deepest)
    assert os.read(fd, 10) == b"x"
    os.close(fd)
