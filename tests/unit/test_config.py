"""syncd.config, syncd._options and syncd.secrets: every rule, with real files in tmp_path.

Pure path logic runs under pyfakefs; everything else uses real temporary
folders, because permissions and file reads are part of what is tested.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from syncd import config as config_mod
from syncd._options import (
    REQUIRED,
    Derived,
    default_text,
    format_size,
    parse_size,
    resolve_path,
)
from syncd.config import (
    Config,
    DaemonConfig,
    FolderConfig,
    default_config_path,
    field_docs,
    load,
    loads,
    parse_options,
)
from syncd.destinations import REGISTRY
from syncd.destinations.lilt import LiltOptions
from syncd.errors import ConfigError, Problem
from syncd.redact import redact
from syncd.secrets import Secret, resolve

REPO = Path(__file__).resolve().parents[2]
KEY = "cfgtest-env-secret-7f3a91"
LITERAL = "cfgtest-literal-secret-c2d4e8"

MINIMAL = """
[destinations.d]
type = "lilt"
api_key = "env:CFGTEST_KEY"

[[folders]]
path = "inbox"
destination = "d"
"""


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CFGTEST_KEY", KEY)
    for name in ("CREDENTIALS_DIRECTORY", "SYNCD_CONFIG", "CFGTEST_MISSING", "CFGTEST_EMPTY"):
        monkeypatch.delenv(name, raising=False)


def write(tmp_path: Path, text: str, *, name: str = "config.toml", mode: int = 0o600) -> Path:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(mode)
    return path


def load_text(tmp_path: Path, text: str, **kw: Any) -> Config:
    return load(write(tmp_path, text, **kw))


def errors(tmp_path: Path, text: str, **kw: Any) -> list[str]:
    """The error lines of a config that must fail."""
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text, **kw)
    assert all(p.severity == "error" for p in info.value.problems)
    return [str(p) for p in info.value.problems]


def warnings(cfg: Config) -> list[str]:
    assert all(p.severity == "warning" for p in cfg.warnings)
    return [str(p) for p in cfg.warnings]


def folder(extra: str = "", *, path: str = "inbox", dest: str = "d") -> str:
    return f'\n[[folders]]\npath = "{path}"\ndestination = "{dest}"\n{extra}\n'


DEST = '\n[destinations.d]\ntype = "lilt"\napi_key = "env:CFGTEST_KEY"\n'


# -- the happy path -----------------------------------------------------------------------


def test_minimal_config_gets_defaults_and_resolved_paths(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, MINIMAL)
    assert cfg.path == tmp_path / "config.toml"
    assert cfg.daemon == dataclasses.replace(DaemonConfig(), state_dir=tmp_path / "state")
    (f,) = cfg.folders
    assert f.path == tmp_path / "inbox"
    assert f.destination == "d"
    assert f.include == ("*",) and f.exclude == () and f.labels == ()
    assert f.archive_dir == tmp_path / "state" / "archive" / "inbox"
    assert f.failed_dir == tmp_path / "state" / "failed" / "inbox"
    assert f.state_dir == tmp_path / "state"
    dest = cfg.destinations["d"]
    assert (dest.name, dest.type) == ("d", "lilt")
    assert isinstance(dest.options, LiltOptions)
    assert dest.options.api_key.reveal() == KEY
    assert cfg.warnings == ()


def test_config_is_frozen_and_destinations_read_only(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, MINIMAL)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.daemon.workers = 8  # type: ignore[misc]  # frozen: the assignment must fail
    with pytest.raises(TypeError):
        cfg.destinations["x"] = cfg.destinations["d"]  # type: ignore[index]  # read-only, must fail


def test_relative_paths_resolve_against_config_folder_not_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_text(
        conf_dir,
        '[daemon]\nstate_dir = "../var/state"\n' + DEST + folder('archive_dir = "done"', path="sub/../in"),
    )
    assert cfg.daemon.state_dir == tmp_path / "var" / "state"
    assert cfg.folders[0].path == conf_dir / "in"
    assert cfg.folders[0].archive_dir == conf_dir / "done"
    # a relative --config path works too
    cfg2 = load(Path("..") / "etc" / "config.toml")
    assert cfg2.folders[0].path == conf_dir / "in"


def test_home_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cfg = load_text(tmp_path, DEST + folder(path="~/drop"))
    assert cfg.folders[0].path == tmp_path / "home" / "drop"


def test_ints_accepted_for_floats(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, "[daemon]\nrescan_seconds = 60\n" + DEST + folder("settle_seconds = 0"))
    assert cfg.daemon.rescan_seconds == 60.0 and isinstance(cfg.daemon.rescan_seconds, float)
    assert cfg.folders[0].settle_seconds == 0.0


def test_default_config_path(monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_config_path() == Path("/etc/syncd/config.toml")
    monkeypatch.setenv("SYNCD_CONFIG", "/srv/syncd.toml")
    assert default_config_path() == Path("/srv/syncd.toml")
    monkeypatch.setenv("SYNCD_CONFIG", "")
    assert default_config_path() == Path("/etc/syncd/config.toml")


# -- reporting ------------------------------------------------------------------------------


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    text = '[daemon]\nworkers = 0\nlog_level = "loud"\n' + DEST + folder("settle_seconds = -3")
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)
    message = str(info.value)
    lines = message.splitlines()
    assert lines[0] == f"{tmp_path / 'config.toml'}: 3 problems:"
    assert lines[1:] == [
        "  daemon.workers: must be >= 1, got 0",
        "  daemon.log_level: must be one of 'debug', 'info', 'warning', 'error', got 'loud'",
        "  folders[0].settle_seconds: must be >= 0, got -3",
    ]


def test_folder_indexes_are_zero_based(tmp_path: Path) -> None:
    text = DEST + folder(path="a") + folder("settle_seconds = -3", path="b")
    assert errors(tmp_path, text) == ["folders[1].settle_seconds: must be >= 0, got -3"]


def test_invalid_toml_is_one_error_with_line_and_column(tmp_path: Path) -> None:
    (line,) = errors(tmp_path, "[daemon]\nworkers = = 4\n")
    assert line.startswith("invalid TOML: ")
    assert re.search(r"line 2, column \d+", line)


def test_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the config file: No such file"):
        load(tmp_path / "nope.toml")
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b"# caf\xe9\n")
    with pytest.raises(ConfigError, match=r"not valid UTF-8 \(at byte 5\)"):
        load(bad)


# -- unknown keys and did-you-mean -----------------------------------------------------------


def test_unknown_keys_suggest_the_closest(tmp_path: Path) -> None:
    text = "[daemon]\nwrokers = 3\n" + DEST + "part_sise = 1\n" + folder("setle_seconds = 1")
    assert errors(tmp_path, text) == [
        "daemon.wrokers: unknown key (did you mean 'workers'?)",
        "destinations.d.part_sise: unknown key (did you mean 'part_size'?)",
        "folders[0].setle_seconds: unknown key (did you mean 'settle_seconds'?)",
    ]


def test_unknown_key_without_close_match_lists_valid_keys(tmp_path: Path) -> None:
    (line,) = errors(tmp_path, "[daemon]\ncolour = 1\n" + DEST + folder())
    assert line.startswith("daemon.colour: unknown key (valid: state_dir, workers, rescan_seconds,")
    assert "tls_verify, webhook_url, webhook_secret)" in line


def test_unknown_top_level_tables(tmp_path: Path) -> None:
    text = "[deamon]\nworkers = 2\n[extras]\nx = 1\n" + DEST + folder()
    assert errors(tmp_path, text) == [
        "deamon: unknown table (did you mean 'daemon'?)",
        "extras: unknown table (valid: daemon, destinations, folders)",
    ]
    assert errors(tmp_path, "workers = 2\n" + DEST + folder()) == [
        "workers: unknown key (valid: daemon, destinations, folders)"
    ]


def test_odd_names_are_quoted_in_dotted_keys(tmp_path: Path) -> None:
    text = '[destinations."my dest"]\ntype = "lilt"\napi_key = "env:CFGTEST_MISSING"\n'
    text += folder(dest="my dest")
    assert errors(tmp_path, text) == [
        'destinations."my dest".api_key: environment variable CFGTEST_MISSING is not set'
    ]


# -- types -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('workers = "4"', "daemon.workers: expected an integer, got '4'"),
        ("workers = true", "daemon.workers: expected an integer, got true"),
        ("workers = 4.5", "daemon.workers: expected an integer, got 4.5"),
        ('rescan_seconds = "300"', "daemon.rescan_seconds: expected a number, got '300'"),
        ("rescan_seconds = false", "daemon.rescan_seconds: expected a number, got false"),
        ("rescan_seconds = inf", "daemon.rescan_seconds: must be a finite number, got inf"),
        ("rescan_seconds = nan", "daemon.rescan_seconds: must be a finite number, got nan"),
        ('tls_verify = "no"', "daemon.tls_verify: expected true or false, got 'no'"),
        ("log_level = 3", "daemon.log_level: expected a string, got 3"),
        ("state_dir = 3", "daemon.state_dir: expected a non-empty path string, got 3"),
        ('state_dir = ""', "daemon.state_dir: expected a non-empty path string, got ''"),
        (
            "workers = 1979-05-27",
            "daemon.workers: expected an integer, got a date/time (1979-05-27)",
        ),
        ("workers = {n = 1}", "daemon.workers: expected an integer, got a table"),
    ],
)
def test_bad_daemon_types(tmp_path: Path, line: str, expected: str) -> None:
    assert errors(tmp_path, f"[daemon]\n{line}\n" + DEST + folder()) == [expected]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('labels = "legal"', "folders[0].labels: expected an array of strings, got 'legal'"),
        ('labels = ["a", 1]', "folders[0].labels: expected an array of strings, got ['a', 1]"),
        ('labels = ["a", ""]', "folders[0].labels[1]: must not be empty, got ''"),
        (
            'labels = ["a\\tb"]',
            "folders[0].labels[0]: must not contain control characters, got 'a\\tb'",
        ),
        ('category = ""', "folders[0].category: must not be empty, got ''"),
        (
            'category = "x\\u0007"',
            "folders[0].category: must not contain control characters, got 'x\\x07'",
        ),
        ("include = []", "folders[0].include: needs at least 1 item(s), got []"),
        ('include = ["*.pdf", ""]', "folders[0].include[1]: must not be empty, got ''"),
        ('exclude = [" "]', "folders[0].exclude[0]: must not be empty, got ' '"),
        ('exclude = "*.bak"', "folders[0].exclude: expected an array of strings, got '*.bak'"),
        ("recursive = 1", "folders[0].recursive: expected true or false, got 1"),
        (
            'observer = "inotify"',
            "folders[0].observer: must be one of 'native', 'polling', got 'inotify'",
        ),
        (
            'after_upload = "move"',
            "folders[0].after_upload: must be one of 'archive', 'delete', 'keep', got 'move'",
        ),
        (
            'after_upload = "archve"',
            "folders[0].after_upload: must be one of 'archive', 'delete', 'keep', got 'archve' "
            "(did you mean 'archive'?)",
        ),
        ("max_attempts = 0", "folders[0].max_attempts: must be >= 1, got 0"),
        ("poll_seconds = 0", "folders[0].poll_seconds: must be > 0, got 0"),
        (
            "settle_seconds = 5\nmax_settle_seconds = 3",
            "folders[0].max_settle_seconds: must be 0 (never force) or >= settle_seconds (5), got 3",
        ),
    ],
)
def test_bad_folder_values(tmp_path: Path, line: str, expected: str) -> None:
    assert errors(tmp_path, DEST + folder(line)) == [expected]


def test_max_settle_zero_or_above_settle_is_fine(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, DEST + folder("settle_seconds = 5\nmax_settle_seconds = 60"))
    assert cfg.folders[0].max_settle_seconds == 60.0


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ("workers = 65", "daemon.workers: must be <= 64, got 65"),
        ("rescan_seconds = 0.5", "daemon.rescan_seconds: must be >= 1, got 0.5"),
        ("drain_seconds = -1", "daemon.drain_seconds: must be >= 0, got -1"),
        ("connect_timeout = 0", "daemon.connect_timeout: must be > 0, got 0"),
        ("io_timeout = -2.5", "daemon.io_timeout: must be > 0, got -2.5"),
        ("retry_base_seconds = 0", "daemon.retry_base_seconds: must be > 0, got 0"),
        (
            "retry_base_seconds = 30\nretry_max_seconds = 10",
            "daemon.retry_max_seconds: must be >= retry_base_seconds (30), got 10",
        ),
        ('log_format = "xml"', "daemon.log_format: must be one of 'text', 'json', got 'xml'"),
        # durations no timer can hold (1e300 passed, then failed every upload), and inf
        ("connect_timeout = 1e300", "daemon.connect_timeout: must be <= 3600.0, got 1e+300"),
        ("io_timeout = inf", "daemon.io_timeout: must be a finite number, got inf"),
        ("rescan_seconds = 1e9", "daemon.rescan_seconds: must be <= 604800.0, got 1000000000.0"),
        ("drain_seconds = 1e5", "daemon.drain_seconds: must be <= 86400.0, got 100000.0"),
    ],
)
def test_daemon_ranges(tmp_path: Path, lines: str, expected: str) -> None:
    assert errors(tmp_path, f"[daemon]\n{lines}\n" + DEST + folder()) == [expected]


@pytest.mark.parametrize(
    "value",
    [
        '"127.0.0.1:9100"',
        '"localhost:9100"',
        '"[::1]:9100"',
        '"0.0.0.0:65535"',
        '"syncd_metrics:9100"',  # a Docker or /etc/hosts name
        '"host.example.com.:9100"',  # fully qualified, with its root dot
    ],
)
def test_metrics_listen_valid(tmp_path: Path, value: str) -> None:
    cfg = load_text(tmp_path, f"[daemon]\nmetrics_listen = {value}\n" + DEST + folder())
    assert cfg.daemon.metrics_listen == value.strip('"')


@pytest.mark.parametrize(
    "value",
    [
        '"9100"',
        '":9100"',
        '"host:0"',
        '"host:70000"',
        '"::1:9100"',
        '"host:port"',
        '"a b:1"',
        '"metrics..local:9100"',
        '"-x:1"',
    ],
)
def test_metrics_listen_invalid(tmp_path: Path, value: str) -> None:
    (line,) = errors(tmp_path, f"[daemon]\nmetrics_listen = {value}\n" + DEST + folder())
    assert line.startswith('daemon.metrics_listen: expected "HOST:PORT"')
    assert line.endswith(f"got '{value.strip(chr(34))}'")


def test_tls_verify_false_is_a_loud_warning(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, "[daemon]\ntls_verify = false\n" + DEST + folder())
    (w,) = warnings(cfg)
    assert w.startswith("daemon.tls_verify: TLS certificate verification is OFF")
    assert cfg.daemon.tls_verify is False


def test_ca_bundle_must_exist(tmp_path: Path) -> None:
    assert errors(tmp_path, '[daemon]\nca_bundle = "ca.pem"\n' + DEST + folder()) == [
        f"daemon.ca_bundle: {tmp_path / 'ca.pem'} does not exist"
    ]
    (tmp_path / "certs").mkdir()
    assert errors(tmp_path, '[daemon]\nca_bundle = "certs"\n' + DEST + folder()) == [
        f"daemon.ca_bundle: {tmp_path / 'certs'} is not a regular file"
    ]
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    cfg = load_text(tmp_path, '[daemon]\nca_bundle = "ca.pem"\n' + DEST + folder())
    assert cfg.daemon.ca_bundle == tmp_path / "ca.pem"


def test_directories_that_are_files(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("")
    (tmp_path / "inbox").write_text("")
    assert errors(tmp_path, DEST + folder()) == [
        f"daemon.state_dir: {tmp_path / 'state'} exists but is not a directory",
        f"folders[0].path: {tmp_path / 'inbox'} exists but is not a directory",
    ]


def test_missing_watched_folder_is_not_a_config_error(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, DEST + folder(path="not/yet/there"))
    assert not cfg.folders[0].path.exists()


# -- sizes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "n"),
    [
        ("8 MiB", 8 * 1024**2),
        ("5MB", 5_000_000),
        ("512 KiB", 512 * 1024),
        ("100", 100),
        ("100 B", 100),
        ("1.5 MiB", 1572864),
        ("8mib", 8 * 1024**2),
        (" 2 GiB ", 2 * 1024**3),
        ("1 kb", 1000),
        ("1 TiB", 1024**4),
    ],
)
def test_parse_size(text: str, n: int) -> None:
    assert parse_size(text) == n


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("8 MB/s", "expected a size"),
        ("MiB", "expected a size"),
        ("-5 MiB", "expected a size"),
        ("5 XB", "unknown unit 'XB'"),
        ("1.3 B", "not a whole number"),
        ("8 M", "unknown unit 'M'"),
    ],
)
def test_parse_size_rejects(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        parse_size(text)


def test_format_size() -> None:
    assert format_size(8 * 1024**2) == "8 MiB"
    assert format_size(3 * 1024**3) == "3 GiB"
    assert format_size(1536) == "1536 bytes"
    assert format_size(3072) == "3 KiB"
    assert format_size(1000) == "1000 bytes"


def test_sizes_in_destination_options(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, DEST + 'part_size = "16 MiB"\nmultipart_threshold = 6291456\n' + folder())
    opts = cfg.destinations["d"].options
    assert (opts.part_size, opts.multipart_threshold) == (16 * 1024**2, 6 * 1024**2)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('part_size = "5MB"', "must be >= 5 MiB, got '5MB' (= 5000000 bytes)"),
        ("part_size = 4096", "must be >= 5 MiB, got 4096"),
        (
            'part_size = "8 MB/s"',
            'expected a size like 8388608, "8 MiB", "5MB" or "512 KiB", got \'8 MB/s\'',
        ),
        (
            'part_size = "8 XB"',
            "unknown unit 'XB' (valid: B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), got '8 XB'",
        ),
        ("part_size = true", 'expected a size in bytes or a string like "8 MiB", got true'),
        ("part_size = 8.5", 'expected a size in bytes or a string like "8 MiB", got 8.5'),
    ],
)
def test_bad_sizes(tmp_path: Path, line: str, expected: str) -> None:
    assert errors(tmp_path, DEST + line + "\n" + folder()) == [f"destinations.d.part_size: {expected}"]


# -- pure path logic (pyfakefs) -------------------------------------------------------------


def test_resolve_path_fakefs(fs: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    fs.create_dir("/etc/syncd")
    fs.create_dir("/data/real")
    fs.create_symlink("/data/link", "/data/real")
    monkeypatch.setenv("HOME", "/home/op")
    base = Path("/etc/syncd")
    assert resolve_path("inbox", base) == Path("/etc/syncd/inbox")
    assert resolve_path("./a/../b/", base) == Path("/etc/syncd/b")
    assert resolve_path("/abs/x", base) == Path("/abs/x")
    assert resolve_path("~/drop", base) == Path("/home/op/drop")
    assert resolve_path("/data/link/in", base) == Path("/data/real/in")
    assert resolve_path("../../..", base) == Path("/")
    with pytest.raises(ValueError, match="NUL"):
        resolve_path("a\0b", base)


def test_load_on_fakefs(fs: Any) -> None:
    fs.create_file("/etc/syncd/config.toml", contents=MINIMAL, st_mode=0o100600)
    fs.create_dir("/etc/syncd/state/archive/inbox")
    cfg = load("/etc/syncd/config.toml")
    f = cfg.folders[0]
    assert f.path == Path("/etc/syncd/inbox")
    assert f.archive_dir == Path("/etc/syncd/state/archive/inbox")
    assert f.ignored_dirs() == ()


def test_config_symlink_resolves_relative_to_the_link_folder(fs: Any) -> None:
    # Kubernetes-style: the link's folder is stable, the target's hidden folder is not.
    fs.create_file("/etc/syncd/..2024_01/config.toml", contents=MINIMAL, st_mode=0o100600)
    fs.create_symlink("/etc/syncd/config.toml", "/etc/syncd/..2024_01/config.toml")
    cfg = load("/etc/syncd/config.toml")
    assert cfg.daemon.state_dir == Path("/etc/syncd/state")


# -- folders ------------------------------------------------------------------------------


def test_no_folders_is_an_error(tmp_path: Path) -> None:
    assert errors(tmp_path, DEST) == ["no [[folders]] defined"]
    assert errors(tmp_path, "") == ["no [[folders]] defined"]
    assert errors(tmp_path, "folders = []\n" + DEST) == ["no [[folders]] defined"]


def test_folders_must_be_an_array_of_tables(tmp_path: Path) -> None:
    assert errors(tmp_path, DEST + '[folders]\npath = "x"\ndestination = "d"\n') == [
        "folders: expected an array of tables ([[folders]]), got a table"
    ]
    assert errors(tmp_path, "folders = [1]\n" + DEST) == ["folders[0]: expected a table ([[folders]]), got 1"]


def test_required_folder_keys(tmp_path: Path) -> None:
    assert errors(tmp_path, DEST + "[[folders]]\nlabels = []\n") == [
        "folders[0].path: required key is missing",
        "folders[0].destination: required key is missing",
    ]


def test_undefined_destination_lists_defined_names(tmp_path: Path) -> None:
    text = DEST + '[destinations.contracts]\ntype = "lilt"\napi_key = "env:CFGTEST_KEY"\n'
    text += folder(path="a") + folder(dest="contract", path="b")
    assert errors(tmp_path, text) == [
        "folders[1].destination: no destination named 'contract' (did you mean 'contracts'?) "
        "(defined: contracts, d)"
    ]
    assert errors(tmp_path, folder(dest="x")) == [
        "folders[0].destination: no destination named 'x' (defined: none)"
    ]


def test_undefined_destination_is_reported_with_other_folder_errors(tmp_path: Path) -> None:
    assert errors(tmp_path, DEST + folder("settle_seconds = -1", dest="nope")) == [
        "folders[0].destination: no destination named 'nope' (defined: d)",
        "folders[0].settle_seconds: must be >= 0, got -1",
    ]


def test_duplicate_folder_paths(tmp_path: Path) -> None:
    text = (
        DEST + folder(path="in") + folder(path="./in/", extra='archive_dir = "arch2"\nfailed_dir = "failed2"')
    )
    assert errors(tmp_path, text) == [f"folders[1].path: {tmp_path / 'in'} is already watched by folders[0]"]


def test_nested_folders(tmp_path: Path) -> None:
    text = DEST + folder(path="in/sub") + folder(path="in")
    assert errors(tmp_path, text) == [
        f"folders[0].path: {tmp_path / 'in' / 'sub'} lies inside folders[1].path "
        f"({tmp_path / 'in'}); "
        "nested watched folders are not supported"
    ]


def test_default_archive_dirs_collide_on_same_basename(tmp_path: Path) -> None:
    text = DEST + folder(path="a/inbox") + folder(path="b/inbox")
    state = tmp_path / "state"
    assert errors(tmp_path, text) == [
        f"folders[1].archive_dir: {state / 'archive' / 'inbox'} is also folders[0].archive_dir "
        f"({state / 'archive' / 'inbox'}); set archive_dir explicitly (the default "
        "<state_dir>/archive/<folder basename> repeats when two folders share a basename)",
        f"folders[1].failed_dir: {state / 'failed' / 'inbox'} is also folders[0].failed_dir "
        f"({state / 'failed' / 'inbox'}); set failed_dir explicitly (the default "
        "<state_dir>/failed/<folder basename> repeats when two folders share a basename)",
    ]
    fixed = (
        DEST
        + folder(path="a/inbox")
        + folder(
            'archive_dir = "state/archive/b-inbox"\nfailed_dir = "state/failed/b-inbox"',
            path="b/inbox",
        )
    )
    cfg = load_text(tmp_path, fixed)
    assert cfg.folders[1].archive_dir == state / "archive" / "b-inbox"


def test_explicit_dirs_that_collide(tmp_path: Path) -> None:
    text = DEST + folder('archive_dir = "done"', path="a") + folder('failed_dir = "done/x"', path="b")
    assert errors(tmp_path, text) == [
        f"folders[1].failed_dir: {tmp_path / 'done' / 'x'} overlaps folders[0].archive_dir "
        f"({tmp_path / 'done'}); give each folder its own failed_dir"
    ]


def test_archive_dir_equal_to_folder(tmp_path: Path) -> None:
    assert errors(tmp_path, DEST + folder('archive_dir = "inbox"')) == [
        f"folders[0].archive_dir: {tmp_path / 'inbox'} is the watched folder itself; "
        "files would be uploaded again"
    ]


def test_folder_inside_its_own_archive_dir(tmp_path: Path) -> None:
    assert errors(tmp_path, DEST + folder('archive_dir = "x"', path="x/in")) == [
        f"folders[0].archive_dir: the watched folder {tmp_path / 'x' / 'in'} lies inside it "
        f"({tmp_path / 'x'})"
    ]


def test_archive_and_failed_dir_of_one_folder_apart(tmp_path: Path) -> None:
    assert errors(tmp_path, DEST + folder('archive_dir = "x"\nfailed_dir = "x"')) == [
        f"folders[0].failed_dir: {tmp_path / 'x'} overlaps archive_dir ({tmp_path / 'x'}); "
        "keep archived and failed files apart"
    ]


def test_archive_dir_inside_another_watched_folder(tmp_path: Path) -> None:
    text = DEST + folder('archive_dir = "b/archive-a"', path="a") + folder(path="b")
    assert errors(tmp_path, text) == [
        f"folders[0].archive_dir: {tmp_path / 'b' / 'archive-a'} overlaps the watched folder "
        f"folders[1].path ({tmp_path / 'b'}); its files would be uploaded again"
    ]


def test_folder_equal_to_state_dir(tmp_path: Path) -> None:
    assert errors(tmp_path, DEST + folder(path="state")) == [
        f"folders[0].path: {tmp_path / 'state'} is daemon.state_dir; watch another folder"
    ]


def test_after_upload_without_archive(tmp_path: Path) -> None:
    cfg = load_text(
        tmp_path,
        DEST
        + folder('after_upload = "delete"', path="a")
        + folder('after_upload = "keep"\narchive_dir = "arch"', path="b"),
    )
    a, b = cfg.folders
    assert a.archive_dir is None and b.archive_dir == tmp_path / "arch"
    assert a.failed_dir == tmp_path / "state" / "failed" / "a"
    assert warnings(cfg) == ["folders[1].archive_dir: is not used because after_upload = 'keep'"]


def test_ignored_dirs(tmp_path: Path) -> None:
    text = (
        '[daemon]\nstate_dir = "in/.syncd"\n'
        + DEST
        + folder('archive_dir = "in/.done"\nfailed_dir = "failed"\nallow_unsafe_dirs = true', path="in")
    )
    f = load_text(tmp_path, text).folders[0]
    assert f.ignored_dirs() == (tmp_path / "in" / ".done", tmp_path / "in" / ".syncd")
    g = load_text(tmp_path, DEST + folder()).folders[0]
    assert g.ignored_dirs() == ()


def test_with_defaults_for_hand_built_folders(tmp_path: Path) -> None:
    raw = FolderConfig(path=tmp_path / "in", destination="d")
    with pytest.raises(ValueError):  # the placeholder failed_dir is unusable on purpose
        os.stat(raw.failed_dir)
    f = raw.with_defaults(tmp_path / "st")
    assert f.archive_dir == tmp_path / "st" / "archive" / "in"
    assert f.failed_dir == tmp_path / "st" / "failed" / "in"
    kept = FolderConfig(
        path=tmp_path / "in", destination="d", failed_dir=tmp_path / "f", after_upload="keep"
    ).with_defaults(tmp_path / "st")
    assert kept.failed_dir == tmp_path / "f" and kept.archive_dir is None
    assert kept.ignored_dirs() == ()


# -- destinations ---------------------------------------------------------------------------


def test_destination_type_rules(tmp_path: Path) -> None:
    text = (
        '[destinations.a]\napi_key = "x"\n'
        '[destinations.b]\ntype = "lilt2"\n'
        "[destinations.c]\ntype = 3\n"
        + folder(dest="a", path="1")
        + folder(dest="b", path="2")
        + folder(dest="c", path="3")
    )
    valid = ", ".join(sorted(REGISTRY))
    assert errors(tmp_path, text) == [
        f"destinations.a.type: required key is missing (valid: {valid})",
        f"destinations.b.type: unknown type 'lilt2' (valid: {valid})",
        f"destinations.c.type: unknown type 3 (valid: {valid})",
    ]


_TYPE_KEYS = {
    "lilt": 'api_key = "env:CFGTEST_KEY"',
    "wriftai": 'token = "env:CFGTEST_KEY"',
    "xvid": 'client_id = "c"\nclient_secret = "env:CFGTEST_KEY"\npipeline_id = "p"',
    "apivideo": 'upload_token = "env:CFGTEST_KEY"',
}


@pytest.mark.parametrize("kind", sorted(_TYPE_KEYS))
def test_base_url_must_be_an_absolute_http_url(tmp_path: Path, kind: str) -> None:
    assert set(_TYPE_KEYS) == set(REGISTRY), "a new destination type: add it here"

    def dest(url: str) -> str:
        return f'[destinations.d]\ntype = "{kind}"\nbase_url = "{url}"\n{_TYPE_KEYS[kind]}\n'

    for bad in (
        "api.example.com/v1",
        "127.0.0.1:8790/lilt",
        "ftp://files.example/up",
        "https://",
        "https:///v1",
        "http://h:99999/",
        "/v1",
        "HTTPS://api.example",
    ):
        assert errors(tmp_path, dest(bad) + folder()) == [
            "destinations.d.base_url: must be an absolute URL starting with https:// or "
            f"http:// and naming a host, got {bad!r}"
        ], bad
    for good in ("https://api.example.com/v1", "http://127.0.0.1:8790/lilt", "https://[::1]:8443/x/"):
        cfg = load_text(tmp_path, dest(good) + folder())
        assert cfg.destinations["d"].options.base_url == good


def test_destination_must_be_a_table(tmp_path: Path) -> None:
    assert errors(tmp_path, "[destinations]\nd = 3\n" + folder()) == [
        "destinations.d: expected a table [destinations.d], got an integer"
    ]
    # the value is not shown: a secret pasted in the wrong place must not be echoed
    assert errors(tmp_path, 'destinations = "lilt"\n' + folder()) == [
        "destinations: expected [destinations.NAME] tables, got a string",
        "folders[0].destination: no destination named 'd' (defined: none)",
    ]


def test_destination_required_options(tmp_path: Path) -> None:
    assert errors(tmp_path, '[destinations.d]\ntype = "lilt"\n' + folder()) == [
        "destinations.d.api_key: required key is missing"
    ]


def test_unused_destination_is_a_warning(tmp_path: Path) -> None:
    text = MINIMAL + '[destinations.spare]\ntype = "lilt"\napi_key = "env:CFGTEST_KEY"\n'
    assert warnings(load_text(tmp_path, text)) == ["destinations.spare: not used by any folder"]


# -- secrets ---------------------------------------------------------------------------------


def secret_config(ref: str) -> str:
    return f'[destinations.d]\ntype = "lilt"\napi_key = "{ref}"\n' + folder()


def test_env_secret(tmp_path: Path) -> None:
    key = load_text(tmp_path, secret_config("env:CFGTEST_KEY")).destinations["d"].options.api_key
    assert isinstance(key, Secret)
    assert key.reveal() == KEY and key.source == "env:CFGTEST_KEY" and not key.is_literal
    assert repr(key) == str(key) == "Secret('env:CFGTEST_KEY')"
    assert redact(f"Authorization: x {KEY} y").count(KEY) == 0


def test_env_secret_missing_or_empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert errors(tmp_path, secret_config("env:CFGTEST_MISSING")) == [
        "destinations.d.api_key: environment variable CFGTEST_MISSING is not set"
    ]
    monkeypatch.setenv("CFGTEST_EMPTY", "")
    assert errors(tmp_path, secret_config("env:CFGTEST_EMPTY")) == [
        "destinations.d.api_key: environment variable CFGTEST_EMPTY is not set"
    ]
    assert errors(tmp_path, secret_config("env:")) == [
        "destinations.d.api_key: 'env:' is not a valid environment variable name"
    ]


def test_file_secret(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    key_file = tmp_path / "keys" / "lilt"
    key_file.write_text("cfgtest-file-secret-91ab\n")
    key_file.chmod(0o600)
    cfg = load_text(tmp_path, secret_config("file:keys/lilt"))
    key = cfg.destinations["d"].options.api_key
    assert key.reveal() == "cfgtest-file-secret-91ab" and key.source == "file:keys/lilt"
    assert cfg.warnings == ()
    assert "cfgtest-file-secret-91ab" not in redact("cfgtest-file-secret-91ab")


def test_file_secret_readable_by_others_is_a_warning(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("cfgtest-file-secret-22cd\r\n")
    key_file.chmod(0o644)
    cfg = load_text(tmp_path, secret_config(f"file:{key_file}"))
    assert cfg.destinations["d"].options.api_key.reveal() == "cfgtest-file-secret-22cd"
    assert warnings(cfg) == [
        f"destinations.d.api_key: secret file {key_file} is readable by group/others "
        f"(mode 0644); run `chmod 600 {key_file}`"
    ]


def test_file_secret_errors(tmp_path: Path) -> None:
    assert errors(tmp_path, secret_config("file:missing")) == [
        f"destinations.d.api_key: cannot read secret file {tmp_path / 'missing'}: No such file or directory"
    ]
    (tmp_path / "empty").write_text("\n")
    assert errors(tmp_path, secret_config("file:empty")) == [
        f"destinations.d.api_key: secret file {tmp_path / 'empty'} is empty"
    ]
    (tmp_path / "adir").mkdir()
    (line,) = errors(tmp_path, secret_config("file:adir"))
    assert line.startswith(f"destinations.d.api_key: cannot read secret file {tmp_path / 'adir'}: ")
    (tmp_path / "big").write_bytes(b"x" * (64 * 1024 + 1))
    assert errors(tmp_path, secret_config("file:big")) == [
        f"destinations.d.api_key: secret file {tmp_path / 'big'} is larger than 64 KiB; is it the right file?"
    ]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_file_secret_permission_denied(tmp_path: Path) -> None:
    secret = tmp_path / "locked"
    secret.write_text("cfgtest-locked-secret")
    secret.chmod(0)
    assert errors(tmp_path, secret_config("file:locked")) == [
        f"destinations.d.api_key: cannot read secret file {secret}: Permission denied"
    ]


def test_credential_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "lilt").write_text("cfgtest-cred-secret-5e6f\n")
    (creds / "lilt").chmod(0o444)  # systemd makes credentials read-only; no warning for those
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    cfg = load_text(tmp_path, secret_config("credential:lilt"))
    key = cfg.destinations["d"].options.api_key
    assert key.reveal() == "cfgtest-cred-secret-5e6f" and key.source == "credential:lilt"
    assert cfg.warnings == ()
    assert errors(tmp_path, secret_config("credential:other")) == [
        f"destinations.d.api_key: cannot read credential {creds / 'other'}: No such file or directory"
    ]
    for name in ("../x", "a b:c", "x\\ny"):  # systemd splits LoadCredential= at ":"
        (line,) = errors(tmp_path, secret_config(f"credential:{name}"))
        assert line.endswith("expected credential:NAME (a plain file name, no ':' or spaces)"), line


def test_credential_secret_without_systemd(tmp_path: Path) -> None:
    (line,) = errors(tmp_path, secret_config("credential:lilt"))
    assert line.startswith("destinations.d.api_key: 'credential:lilt' needs $CREDENTIALS_DIRECTORY")
    assert "LoadCredential=" in line and "not set" in line


def test_literal_secret(tmp_path: Path) -> None:
    key = load_text(tmp_path, secret_config(LITERAL)).destinations["d"].options.api_key
    assert key.reveal() == LITERAL and key.is_literal and key.source == "literal"
    assert repr(key) == "Secret('literal')"
    assert LITERAL not in redact(f"sent {LITERAL}")
    assert errors(tmp_path, secret_config("")) == ["destinations.d.api_key: must not be empty"]


def test_secret_equality_and_hash() -> None:
    assert Secret("a-long-value", "literal") == Secret("a-long-value", "literal")
    assert Secret("a-long-value", "literal") != Secret("other-value", "literal")
    assert hash(Secret("v1", "env:X")) == hash(Secret("v1", "env:X"))


def test_no_secret_value_in_errors_or_reprs(tmp_path: Path) -> None:
    text = (
        f'[destinations.d]\ntype = "lilt"\napi_key = "{LITERAL}"\napi_kye = "{LITERAL}"\n'
        f'[destinations.e]\ntype = "lilt"\napi_key = 123456789\n'
        + folder(path="a")
        + folder(path="b", dest="e")
    )
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)
    shown = str(info.value) + repr(info.value.problems)
    assert LITERAL not in shown and "123456789" not in shown
    assert (
        "destinations.e.api_key: expected a string (a secret or env:/file:/credential: "
        "reference), got '***'" in shown
    )
    cfg = load_text(tmp_path, secret_config(LITERAL))
    assert LITERAL not in repr(cfg) and LITERAL not in str(cfg)
    assert KEY not in repr(load_text(tmp_path, MINIMAL))


def test_secret_check_only_reads_nothing(tmp_path: Path) -> None:
    problems: list[Problem] = []
    for ref in ("env:CFGTEST_MISSING", "file:/nonexistent", "credential:x"):
        s = resolve(ref, key="k", problems=problems, base_dir=tmp_path, check_only=True)
        assert s is not None and s.source == ref and s.reveal() == ""
    assert problems == []
    cfg = loads(secret_config("env:CFGTEST_MISSING"), base_dir=tmp_path, resolve_secrets=False)
    assert cfg.destinations["d"].options.api_key.source == "env:CFGTEST_MISSING"


# -- permissions -----------------------------------------------------------------------------


def test_literal_secret_in_readable_config_is_a_warning(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, secret_config(LITERAL), mode=0o644)
    path = tmp_path / "config.toml"
    assert warnings(cfg) == [
        f"destinations.d.api_key: literal secret in {path}, which is readable by group/others "
        f'(mode 0644); run `chmod 600 {path}` or use "env:NAME" or "credential:NAME"'
    ]
    assert load_text(tmp_path, secret_config(LITERAL), mode=0o640).warnings != ()
    assert load_text(tmp_path, secret_config(LITERAL), mode=0o600).warnings == ()
    assert load_text(tmp_path, secret_config("env:CFGTEST_KEY"), mode=0o644).warnings == ()


def test_a_literal_webhook_url_or_secret_in_a_readable_config_is_a_warning(tmp_path: Path) -> None:
    """The daemon's own secrets: a chat webhook's URL carries its token. Only the
    destinations' secrets were looked at."""
    text = (
        '[daemon]\nwebhook_url = "https://hooks.example/T0/B0/tokenpart"\n'
        'webhook_secret = "hmac-literal-secret"\n' + secret_config("env:CFGTEST_KEY")
    )
    found = warnings(load_text(tmp_path, text, mode=0o644))
    assert [w.split(":")[0] for w in found] == ["daemon.webhook_url", "daemon.webhook_secret"]
    assert load_text(tmp_path, text, mode=0o600).warnings == ()


def test_loads_checks_permissions_only_when_asked(tmp_path: Path) -> None:
    readable = write(tmp_path, "", name="other.toml", mode=0o604)
    text = secret_config(LITERAL)
    assert loads(text, base_dir=tmp_path).warnings == ()
    (w,) = loads(text, base_dir=tmp_path, check_permissions_of=readable).warnings
    assert w.key == "destinations.d.api_key" and str(readable) in w.message
    assert loads(text, base_dir=tmp_path).path is None


@pytest.mark.parametrize("setting", ["0", "1", None])
def test_a_host_that_lets_anyone_hard_link_any_file_is_a_warning_for_shared_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setting: str | None
) -> None:
    sysctl = tmp_path / "protected_hardlinks"
    if setting is not None:
        sysctl.write_text(f"{setting}\n")
    monkeypatch.setattr("syncd.config.checks.PROTECTED_HARDLINKS", sysctl)
    (tmp_path / "inbox").mkdir(mode=0o700)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    text = MINIMAL + folder(path="shared") + folder(path="absent")
    said = warnings(load_text(tmp_path, text))
    if setting != "0":  # protected, or unknown (no /proc/sys in the unit): nothing to say
        assert said == []
        return
    # only the folder others can write into; syncd's own 0700 folder and a missing one are fine
    assert said == [
        f"folders[1].path: fs.protected_hardlinks is 0 on this host: whoever can write into {shared} "
        "can hard-link into it any file of the same filesystem, one only syncd may read included, "
        "and syncd would upload it; run `sysctl -w fs.protected_hardlinks=1` (and set it in "
        "/etc/sysctl.d/ for the next boot)"
    ]


def test_loads_source_prefixes_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        loads("[daemon]\nworkers = 0\n", base_dir=tmp_path, source="edit")
    assert str(info.value).startswith("edit: 2 problems:")


# -- the config file itself: size, kind, who can change it (security review) -----------------


def test_config_larger_than_the_cap_is_refused(tmp_path: Path) -> None:
    cap = config_mod.MAX_CONFIG_BYTES
    text = MINIMAL + "#" * (cap - len(MINIMAL.encode()) - 1) + "\n"
    at_cap = write(tmp_path, text)
    assert at_cap.stat().st_size == cap
    assert load(at_cap).folders  # exactly the cap: fine
    over = write(tmp_path, text + "\n", name="big.toml")
    with pytest.raises(ConfigError) as info:
        load(over)
    assert str(info.value) == (
        f"{over}: {over} is larger than 1024 KiB, the limit for a config file; is it the right file?"
    )


@pytest.mark.parametrize("kind", ["fifo", "dir", "dev"])
def test_config_must_be_a_regular_file(tmp_path: Path, kind: str) -> None:
    if kind == "fifo":
        path = tmp_path / "config.toml"
        os.mkfifo(path)  # no writer: a blocking open would never return
        what = "a FIFO"
    elif kind == "dir":
        path = tmp_path / "conf.d"
        path.mkdir()
        what = "a folder"
    else:
        path = Path("/dev/zero")  # endless: read whole, it grew syncd to 24 GB
        what = "a character device"
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(info.value) == (
        f"{path}: {path} is not a regular file (it is {what}); point --config at the TOML file"
    )


def test_config_through_a_symlink_is_read(tmp_path: Path) -> None:
    real = write(tmp_path, MINIMAL, name="real.toml")
    (tmp_path / "config.toml").symlink_to(real)
    assert load(tmp_path / "config.toml").folders[0].path == tmp_path / "inbox"


@pytest.mark.parametrize("mode", [0o620, 0o602, 0o666, 0o664])
def test_config_writable_by_group_or_others_is_a_warning(tmp_path: Path, mode: int) -> None:
    cfg = load_text(tmp_path, MINIMAL, mode=mode)
    path = tmp_path / "config.toml"
    assert warnings(cfg) == [
        f"{path} is writable by group/others (mode {mode:04o}): they could point uploads "
        f"elsewhere or at other secrets; run `chmod go-w {path}` (0640 root:syncd)"
    ]


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o644, 0o400])
def test_config_only_its_owner_can_write_is_quiet(tmp_path: Path, mode: int) -> None:
    assert load_text(tmp_path, MINIMAL, mode=mode).warnings == ()


def test_config_owned_by_another_user_is_a_warning(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root can give a file to another user")
    path = write(tmp_path, MINIMAL)
    os.chown(path, 4242, -1)
    assert warnings(load(path)) == [
        f"{path} is owned by uid 4242, neither root nor this user: that user can change it; "
        f"run `chown root {path}`"
    ]
    os.chown(path, 0, -1)
    assert load(path).warnings == ()


# -- archive, failed and state folders producers could reach (security review) ---------------

_UNSAFE_HINT = "move it out of the inbox, or set allow_unsafe_dirs = true on the folder"


@pytest.mark.parametrize("key", ["archive_dir", "failed_dir"])
def test_own_dir_inside_the_watched_folder_is_refused(tmp_path: Path, key: str) -> None:
    assert errors(tmp_path, DEST + folder(f'{key} = "inbox/.done"')) == [
        f"folders[0].{key}: {tmp_path / 'inbox' / '.done'} lies inside the watched folder "
        f"{tmp_path / 'inbox'}: whoever drops files there could also write into it, replace it "
        f"or plant symlinks; {_UNSAFE_HINT}"
    ]


def test_state_dir_inside_a_watched_folder_is_refused(tmp_path: Path) -> None:
    text = (
        '[daemon]\nstate_dir = "inbox/.syncd"\n' + DEST + folder('archive_dir = "arch"\nfailed_dir = "fail"')
    )
    assert errors(tmp_path, text) == [
        f"daemon.state_dir: {tmp_path / 'inbox' / '.syncd'} lies inside the watched folder "
        f"folders[0].path ({tmp_path / 'inbox'}): whoever drops files there could read or "
        "replace the ledger; move it out, or set allow_unsafe_dirs = true on folders[0]"
    ]


def test_default_dirs_under_a_state_dir_inside_the_inbox_are_refused(tmp_path: Path) -> None:
    lines = errors(tmp_path, '[daemon]\nstate_dir = "inbox/.syncd"\n' + DEST + folder())
    assert [line.split(":")[0] for line in lines] == [
        "daemon.state_dir",
        "folders[0].archive_dir",
        "folders[0].failed_dir",
    ]


def test_allow_unsafe_dirs_accepts_them_and_the_watcher_skips_them(tmp_path: Path) -> None:
    text = (
        '[daemon]\nstate_dir = "inbox/.syncd"\n'
        + DEST
        + folder('archive_dir = "inbox/.done"\nallow_unsafe_dirs = true')
    )
    f = load_text(tmp_path, text).folders[0]
    assert f.allow_unsafe_dirs is True
    inbox = tmp_path / "inbox"
    assert set(f.ignored_dirs()) == {inbox / ".done", inbox / ".syncd" / "failed" / "inbox", inbox / ".syncd"}


def test_the_opt_out_is_per_folder(tmp_path: Path) -> None:
    text = (
        DEST
        + folder('archive_dir = "a/.done"\nallow_unsafe_dirs = true', path="a")
        + folder('archive_dir = "b/.done"', path="b")
    )
    assert [line.split(":")[0] for line in errors(tmp_path, text)] == ["folders[1].archive_dir"]


def test_dirs_outside_the_inbox_are_fine(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, DEST + folder('archive_dir = "archive/in"\nfailed_dir = "failed"'))
    assert cfg.warnings == () and cfg.folders[0].allow_unsafe_dirs is False
    assert load_text(tmp_path, DEST + folder()).warnings == ()  # defaults under state_dir


@pytest.mark.parametrize("key", ["archive_dir", "failed_dir"])
@pytest.mark.parametrize("dir_mode", [0o775, 0o2770, 0o757, 0o1777])
def test_writable_dir_warns_and_strict_check_refuses(tmp_path: Path, key: str, dir_mode: int) -> None:
    d = tmp_path / "out"
    d.mkdir()
    d.chmod(dir_mode)
    path = write(tmp_path, DEST + folder(f'{key} = "out"'))
    message = (
        f"folders[0].{key}: {d} is writable by group/others (mode {dir_mode:04o}): they "
        f"could replace what syncd moves there or plant symlinks; run `chmod go-w {d}`, "
        "or set allow_unsafe_dirs = true on the folder"
    )
    assert warnings(load(path)) == [message]  # the daemon: a warning at start and on reload
    with pytest.raises(ConfigError) as info:
        load(path, strict_dirs=True)  # syncd check
    assert [str(p) for p in info.value.problems] == [message]
    d.chmod(0o2750)
    assert load(path, strict_dirs=True).warnings == ()
    d.chmod(dir_mode)
    opted = write(tmp_path, DEST + folder(f'{key} = "out"\nallow_unsafe_dirs = true'))
    assert load(opted, strict_dirs=True).warnings == ()


def test_check_command_refuses_unsafe_dirs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from syncd.cli import EXIT_CONFIG, main

    (tmp_path / "inbox").mkdir()
    (tmp_path / "arch").mkdir(mode=0o700)
    (tmp_path / "arch").chmod(0o770)
    path = write(tmp_path, DEST + folder('archive_dir = "arch"'))
    assert main(["-c", str(path), "check"]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert (
        f"configuration error in {path}: folders[0].archive_dir: {tmp_path / 'arch'} is "
        "writable by group/others (mode 0770)" in err
    )
    assert main(["-c", str(path), "status"]) == 0  # other commands only warn
    assert "syncd: warning: folders[0].archive_dir:" in capsys.readouterr().err
    inside = write(tmp_path, DEST + folder('failed_dir = "inbox/failed"'))
    assert main(["-c", str(inside), "check"]) == EXIT_CONFIG
    assert (
        f"folders[0].failed_dir: {tmp_path / 'inbox' / 'failed'} lies inside the watched "
        "folder" in capsys.readouterr().err
    )


# -- the generic machinery -------------------------------------------------------------------


@dataclass(frozen=True)
class _Everything:
    name: str = field(metadata={"doc": "A name.", "nonempty": True})
    count: int = field(default=1, metadata={"doc": "Count.", "min": 0, "max": 9})
    ratio: float = field(default=0.5, metadata={"doc": "Ratio.", "gt": 0})
    flag: bool = False
    tags: tuple[str, ...] = ()
    where: Path = Path("data")
    cert: Path | None = None
    token: Secret | None = field(default=None, metadata={"secret": True})
    chunk: int = field(default=1024**2, metadata={"unit": "bytes", "min": 1})
    mode: str = field(default="a", metadata={"choices": ("a", "b")})
    note: str | None = None

    def __post_init__(self) -> None:
        if self.count == 7 and self.flag:
            raise ValueError("count 7 needs flag = false")


def test_parse_options_builds_every_supported_type(tmp_path: Path) -> None:
    problems: list[Problem] = []
    table = {
        "name": "n",
        "count": 3,
        "ratio": 2,
        "flag": True,
        "tags": ["x", "y"],
        "where": "sub",
        "token": "env:CFGTEST_KEY",
        "chunk": "2 KiB",
        "mode": "b",
        "note": "hi",
    }
    obj = parse_options(_Everything, table, prefix="t", base_dir=tmp_path, problems=problems)
    assert problems == []
    assert obj == _Everything(
        name="n",
        count=3,
        ratio=2.0,
        flag=True,
        tags=("x", "y"),
        where=tmp_path / "sub",
        cert=None,
        token=Secret(KEY, "env:CFGTEST_KEY"),
        chunk=2048,
        mode="b",
        note="hi",
    )


def test_parse_options_defaults_and_path_defaults(tmp_path: Path) -> None:
    problems: list[Problem] = []
    obj = parse_options(_Everything, {"name": "n"}, prefix="t", base_dir=tmp_path, problems=problems)
    assert obj is not None and obj.where == tmp_path / "data" and obj.token is None


def test_parse_options_collects_everything(tmp_path: Path) -> None:
    problems: list[Problem] = []
    table = {"count": 10, "ratio": 0, "tags": "x", "token": 5, "mode": "c", "extra": 1}
    assert parse_options(_Everything, table, prefix="t", base_dir=tmp_path, problems=problems) is None
    assert [str(p) for p in problems] == [
        "t.extra: unknown key (valid: name, count, ratio, flag, tags, where, cert, token, chunk, mode, note)",
        "t.name: required key is missing",
        "t.count: must be <= 9, got 10",
        "t.ratio: must be > 0, got 0",
        "t.tags: expected an array of strings, got 'x'",
        "t.token: expected a string (a secret or env:/file:/credential: reference), got '***'",
        "t.mode: must be one of 'a', 'b', got 'c'",
    ]


def test_parse_options_post_init_value_error(tmp_path: Path) -> None:
    problems: list[Problem] = []
    table = {"name": "n", "count": 7, "flag": True}
    assert parse_options(_Everything, table, prefix="t", base_dir=tmp_path, problems=problems) is None
    assert [str(p) for p in problems] == ["t: count 7 needs flag = false"]


def test_parse_options_not_a_table(tmp_path: Path) -> None:
    problems: list[Problem] = []
    not_a_table: Any = [1]
    assert parse_options(_Everything, not_a_table, prefix="t", base_dir=tmp_path, problems=problems) is None
    assert [str(p) for p in problems] == ["t: expected a table, got [1]"]


def test_parse_options_rejects_unsupported_annotations(tmp_path: Path) -> None:
    @dataclass(frozen=True)
    class Odd:
        x: list[int] = field(default_factory=list)

    with pytest.raises(TypeError, match="unsupported config annotation"):
        parse_options(Odd, {"x": [1]}, prefix="o", base_dir=tmp_path, problems=[])


def test_field_docs() -> None:
    docs = {d.key: d for d in field_docs(_Everything)}
    assert docs["name"] == ("name", "string, non-empty", REQUIRED, "A name.")
    assert docs["count"].type == "integer, 0 to 9"
    assert docs["ratio"].type == "number, > 0"
    assert docs["tags"].type == "array of strings"
    assert docs["cert"].type == "path, optional"
    assert docs["token"].type == "secret, optional"
    assert docs["chunk"].type == 'size (bytes, or "8 MiB"), >= 1 bytes'
    assert docs["mode"].type == 'string, one of "a" / "b"'
    folder_docs = {d.key: d for d in field_docs(FolderConfig)}
    assert "state_dir" not in folder_docs  # internal
    assert folder_docs["archive_dir"].default == Derived("<state_dir>/archive/<folder basename>")
    assert folder_docs["include"].type == "array of strings, at least 1 item, no empty items"
    assert all(d.doc for c in (DaemonConfig, FolderConfig, LiltOptions) for d in field_docs(c))


def test_default_text() -> None:
    assert default_text(REQUIRED) == "(required)"
    assert default_text(None) == "(unset)"
    assert default_text(True) == "true"
    assert default_text(4) == "4"
    assert default_text("info") == '"info"'
    assert default_text(Path("state")) == '"state"'
    assert default_text(("*",)) == '["*"]'
    assert default_text(8 * 1024**2, type_text="size (bytes)") == '"8 MiB"'
    assert default_text(Derived("<x>")) == "<x>"


# -- the example config never rots ------------------------------------------------------------

# Destination types deliberately not shown in config.example.toml. Adding a type to the
# registry makes test_example_documents_every_key fail until the example gets a
# [destinations.NAME] table for it, or the type is listed here with a reason.
TYPES_NOT_IN_EXAMPLE: dict[str, str] = {}

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?")
_KEY = re.compile(r"^\s*#?\s*([A-Za-z0-9_]+)\s*=")


def _example_sections() -> dict[str, set[str]]:
    """Keys (commented-out ones included) per table header of the example."""
    sections: dict[str, set[str]] = {"": set()}
    current = ""
    for line in (REPO / "config.example.toml").read_text().splitlines():
        header = _HEADER.match(line)
        if header:
            current = header.group(2)
            sections.setdefault(current, set())
            continue
        key = _KEY.match(line)
        if key:
            sections[current].add(key.group(1))
    return sections


def test_example_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LILT_API_KEY", "cfgtest-example-key-3b1d")
    monkeypatch.setenv("WRIFTAI_ACCESS_TOKEN", "cfgtest-example-token-6a0e")
    monkeypatch.setenv("XVID_CLIENT_SECRET", "cfgtest-example-secret-77c2")
    monkeypatch.setenv("APIVIDEO_UPLOAD_TOKEN", "to-cfgtest-example-token")
    cfg = load(REPO / "config.example.toml")
    # The example shows one table per type; only "contracts" has a folder.
    assert sorted(str(w) for w in cfg.warnings) == sorted(
        f"destinations.{name}: not used by any folder" for name in cfg.destinations if name != "contracts"
    )
    assert cfg.daemon == dataclasses.replace(DaemonConfig(), state_dir=REPO / "state")
    (f,) = cfg.folders
    assert f.path == REPO / "inbox" / "contracts"
    assert f.labels == ("legal", "review-needed") and f.category == "SOURCE"
    assert cfg.destinations["contracts"].options.part_size == 8 * 1024**2


def test_example_documents_every_key() -> None:
    sections = _example_sections()
    missing = [f"[daemon] {d.key}" for d in field_docs(DaemonConfig) if d.key not in sections["daemon"]]
    missing += [f"[[folders]] {d.key}" for d in field_docs(FolderConfig) if d.key not in sections["folders"]]
    example_types: dict[str, str] = {}
    for header in sections:
        if header.startswith("destinations."):
            text = (REPO / "config.example.toml").read_text()
            block = text.split(f"[{header}]", 1)[1].split("\n[", 1)[0]
            m = re.search(r'^type\s*=\s*"([^"]+)"', block, re.M)
            if m:
                example_types[m.group(1)] = header
    for name, cls in sorted(REGISTRY.items()):
        if name in TYPES_NOT_IN_EXAMPLE:
            continue
        if name not in example_types:
            missing.append(f"a [destinations.NAME] table with type = {name!r}")
            continue
        keys = sections[example_types[name]]
        missing += [f"[{example_types[name]}] {d.key}" for d in field_docs(cls.Options) if d.key not in keys]
    assert missing == [], "config.example.toml lacks: " + ", ".join(missing)


def test_docs_mention_every_key() -> None:
    text = (REPO / "docs" / "configuration.md").read_text()
    missing = [
        f"{c.__name__}.{d.key}"
        for c in (DaemonConfig, FolderConfig, *(d.Options for d in REGISTRY.values()))
        for d in field_docs(c)
        if f"`{d.key}`" not in text
    ]
    assert missing == [], "docs/configuration.md lacks: " + ", ".join(missing)


def test_public_names() -> None:
    for name in (
        "Config",
        "DaemonConfig",
        "DestinationConfig",
        "FolderConfig",
        "load",
        "loads",
        "default_config_path",
        "parse_options",
        "field_docs",
    ):
        assert hasattr(config_mod, name)


# -- replaces -------------------------------------------------------------------------------


def test_replaces_names_destinations_gone_from_the_config(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, DEST + 'replaces = ["old", "older", "old"]\n' + folder())
    assert cfg.destinations["d"].replaces == ("old", "older")
    assert load_text(tmp_path, DEST + folder()).destinations["d"].replaces == ()


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ('replaces = "old"', "destinations.d.replaces: expected an array of destination names, got 'old'"),
        ('replaces = ["old", ""]', "destinations.d.replaces: expected an array of destination names"),
        (
            'replaces = ["e"]\n[destinations.e]\ntype = "lilt"\napi_key = "env:CFGTEST_KEY"',
            "destinations.d.replaces: 'e' is a configured destination; only a removed one can be replaced",
        ),
        (
            'replaces = ["old"]\n[destinations.e]\ntype = "lilt"\napi_key = "env:CFGTEST_KEY"\n'
            'replaces = ["old"]',
            "destinations.e.replaces: 'old' is replaced by 'd' already",
        ),
        ('replaces = ["d"]', "destinations.d.replaces: 'd' is a configured destination"),
    ],
)
def test_bad_replaces(tmp_path: Path, extra: str, expected: str) -> None:
    found = errors(tmp_path, DEST + extra + "\n" + folder())
    assert any(line.startswith(expected) for line in found), found
