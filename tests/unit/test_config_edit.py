"""syncd.config_edit: `syncd init` and `syncd folder add` write valid configs atomically."""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path
from typing import Any

import pytest

from syncd.config import load
from syncd.config_edit import add_folder, starter_config, write_initial
from syncd.errors import ConfigError


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.delenv("CFGEDIT_MISSING", raising=False)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


# -- write_initial ---------------------------------------------------------------------------


def test_write_initial_writes_a_valid_private_starter(tmp_path: Path) -> None:
    old_umask = os.umask(0)  # a careless umask must not widen the mode
    try:
        path = tmp_path / "etc" / "syncd" / "config.toml"  # parents are created
        write_initial(path)
    finally:
        os.umask(old_umask)
    assert mode(path) == 0o600
    text = path.read_text()
    assert text.startswith("# syncd configuration, written by `syncd init`.")
    cfg = load(path)
    assert cfg.warnings == ()
    dest = cfg.destinations["demo"]
    assert dest.type == "lilt"
    assert dest.options.base_url == "http://127.0.0.1:8790/lilt"
    assert dest.options.api_key.reveal() == "demo-lilt-key"
    (folder,) = cfg.folders
    assert folder.path == path.parent / "inbox"
    assert folder.destination == "demo"
    assert folder.after_upload == "archive"
    assert folder.archive_dir == path.parent / "archive"
    assert cfg.daemon.state_dir == path.parent / "state"


def test_write_initial_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("# mine\n")
    with pytest.raises(FileExistsError):
        write_initial(path)
    assert path.read_text() == "# mine\n"


@pytest.mark.parametrize(
    ("before", "after"), [(0o644, 0o640), (0o640, 0o640), (0o600, 0o600), (0o000, 0o600)]
)
def test_write_initial_force_keeps_owner_rw_and_group_r_at_most(
    tmp_path: Path, before: int, after: int
) -> None:
    """A service's config is 0640 root:syncd: forced back to 0600, the service could no
    longer read it. Others never may (the starter holds a literal key)."""
    path = tmp_path / "config.toml"
    path.write_text("# mine\n")
    path.chmod(before)
    write_initial(path, force=True)
    assert mode(path) == after
    assert load(path).folders[0].path == tmp_path / "inbox"
    assert leftovers(tmp_path) == []


def test_starter_config_is_a_fresh_dict_each_time() -> None:
    a = starter_config()
    a["daemon"]["workers"] = 99
    assert starter_config()["daemon"]["workers"] == 4


# -- add_folder ------------------------------------------------------------------------------


def test_add_folder_round_trip_keeps_comments_and_mode(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    write_initial(path)
    path.chmod(0o640)
    before = path.read_text()
    add_folder(
        path,
        "scans",
        destination="demo",
        labels=["legal", "2024"],
        category="SOURCE",
        settle_seconds=5,
        include=("*.pdf",),
        archive_dir=Path("done/scans"),
        failed_dir=None,
    )
    after = path.read_text()
    assert after.startswith(before)  # appended: every comment above survives byte for byte
    assert mode(path) == 0o640
    assert leftovers(tmp_path) == []
    cfg = load(path)
    assert [f.path for f in cfg.folders] == [tmp_path / "inbox", tmp_path / "scans"]
    new = cfg.folders[1]
    assert new.destination == "demo"
    assert new.labels == ("legal", "2024") and new.category == "SOURCE"
    assert new.settle_seconds == 5.0 and new.include == ("*.pdf",)
    assert new.archive_dir == tmp_path / "done" / "scans"
    assert new.failed_dir == tmp_path / "state" / "failed" / "scans"


def test_add_folder_twice(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    write_initial(path)
    add_folder(path, "a", destination="demo")
    add_folder(path, str(tmp_path / "b"), destination="demo", after_upload="delete")
    cfg = load(path)
    assert [f.path.name for f in cfg.folders] == ["inbox", "a", "b"]
    assert cfg.folders[2].archive_dir is None


@pytest.mark.parametrize(
    ("args", "kwargs", "expected"),
    [
        (
            ("other",),
            {"destination": "nope"},
            "folders[1].destination: no destination named 'nope' (defined: demo)",
        ),
        (("inbox",), {"destination": "demo"}, "is already watched by folders[0]"),
        (("inbox/sub",), {"destination": "demo"}, "nested watched folders are not supported"),
        (
            ("other",),
            {"destination": "demo", "settle_seconds": -1},
            "folders[1].settle_seconds: must be >= 0, got -1",
        ),
        (
            ("other",),
            {"destination": "demo", "setle_seconds": 1},
            "folders[1].setle_seconds: unknown key (did you mean 'settle_seconds'?)",
        ),
        (
            ("other",),
            {"destination": "demo", "labels": [""]},
            "folders[1].labels[0]: must not be empty",
        ),
    ],
)
def test_invalid_edit_leaves_the_file_untouched(
    tmp_path: Path, args: tuple[str], kwargs: dict[str, Any], expected: str
) -> None:
    path = tmp_path / "config.toml"
    write_initial(path)
    before = path.read_bytes()
    st = path.stat()
    with pytest.raises(ConfigError) as info:
        add_folder(path, *args, **kwargs)
    assert expected in str(info.value)
    assert path.read_bytes() == before
    assert path.stat().st_ino == st.st_ino
    assert leftovers(tmp_path) == []


def test_add_folder_does_not_need_the_service_environment(tmp_path: Path) -> None:
    # The admin shell lacks the service's env vars and systemd credentials.
    path = tmp_path / "config.toml"
    path.write_text(
        '[destinations.a]\ntype = "lilt"\napi_key = "env:CFGEDIT_MISSING"\n'
        '[destinations.b]\ntype = "lilt"\napi_key = "credential:lilt"\n'
        '[[folders]]\npath = "in"\ndestination = "a"\n'
    )
    add_folder(path, "in2", destination="b")
    assert "in2" in path.read_text()


def test_add_folder_to_a_broken_config_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[daemon]\nworkers = = 1\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        add_folder(path, "in", destination="demo")
    assert path.read_text() == "[daemon]\nworkers = = 1\n"


def test_add_folder_rewrites_inline_arrays_with_tomli_w(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        "# this comment cannot survive a tomli-w rewrite\n"
        'folders = [{path = "in", destination = "d"}]\n'
        '[destinations.d]\ntype = "lilt"\napi_key = "cfgedit-literal-key-77"\n'
    )
    path.chmod(0o600)
    notes = add_folder(path, "in2", destination="d")  # `syncd folder add` prints them
    assert any("comments were not preserved" in n for n in notes)
    assert "# this comment" not in path.read_text()
    assert [f.path.name for f in load(path).folders] == ["in", "in2"]


def test_add_folder_to_a_file_without_trailing_newline(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        '[destinations.d]\ntype = "lilt"\napi_key = "env:CFGEDIT_MISSING"\n'
        '[[folders]]\npath = "in"\ndestination = "d"'
    )
    add_folder(path, "in2", destination="d")
    text = path.read_text()
    assert 'destination = "d"\n\n[[folders]]\npath = "in2"' in text


def test_add_folder_edits_the_symlink_target(tmp_path: Path) -> None:
    real_dir = tmp_path / "real"
    real_dir.mkdir()
    target = real_dir / "config.toml"
    write_initial(target)
    link = tmp_path / "config.toml"
    link.symlink_to(target)
    add_folder(link, "more", destination="demo")
    assert link.is_symlink()
    assert 'path = "more"' in target.read_text()
    assert leftovers(real_dir) == []


def test_add_folder_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        add_folder(tmp_path / "nope.toml", "in", destination="d")


@pytest.mark.parametrize(
    "doc",
    [
        starter_config(),
        {"folders": [{"path": "a", "destination": "d"}], "destinations": {"a b": {"type": "lilt"}}},
        {"x": 1, "folders": [{"path": "a", "o": {"k": 1}}, {"path": "b"}]},
        {"destinations": {"d": {"type": "lilt", "sub": {"k": [1, 2]}}}, "daemon": {"workers": 2}},
        {"folders": {"path": "a"}},
    ],
)
def test_render_round_trips(doc: dict[str, object]) -> None:
    import tomllib

    from syncd.config_edit import render

    assert tomllib.loads(render(doc)) == doc


def test_folder_adds_at_the_same_time_all_land(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Six `syncd folder add` at once all said "added", and three of the six folders were
    in the file: each read, changed and replaced it without regard to the others."""
    import threading
    import time

    from syncd import config_edit

    path = tmp_path / "config.toml"
    path.write_text('[destinations.d]\ntype = "lilt"\napi_key = "env:CFGEDIT_MISSING"\n')
    path.chmod(0o600)
    real = config_edit.loads

    def slow(*args: Any, **kw: Any) -> Any:  # between the read and the replace
        time.sleep(0.05)
        return real(*args, **kw)

    monkeypatch.setattr(config_edit, "loads", slow)
    threads = [
        threading.Thread(target=add_folder, args=(path, f"in{i}"), kwargs={"destination": "d"})
        for i in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    folders = tomllib.loads(path.read_text())["folders"]
    assert sorted(f["path"] for f in folders) == [f"in{i}" for i in range(6)]


def test_folder_add_works_where_the_folder_takes_no_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NFS takes no exclusive flock on a descriptor opened read-only (a folder cannot be
    opened for writing): the edit goes on, with its check that nobody saved meanwhile."""
    import errno
    import fcntl

    def refused(fd: int, op: int) -> None:
        raise OSError(errno.EBADF, "Bad file descriptor")

    monkeypatch.setattr(fcntl, "flock", refused)
    path = tmp_path / "config.toml"
    path.write_text('[destinations.d]\ntype = "lilt"\napi_key = "env:CFGEDIT_MISSING"\n')
    path.chmod(0o600)
    add_folder(path, "in", destination="d")
    assert [f["path"] for f in tomllib.loads(path.read_text())["folders"]] == ["in"]
