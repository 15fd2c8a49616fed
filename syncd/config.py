"""Load and validate syncd's TOML config into frozen dataclasses.

The config is read once, with :mod:`tomllib`, and validated completely
before anything starts: :func:`load` either returns a :class:`Config` in
which every value has been checked, every path resolved and every secret
resolved, or raises :class:`~syncd.errors.ConfigError` listing *all* the
errors it found, one :class:`~syncd.errors.Problem` per error, each with
its dotted key (``folders[1].settle_seconds``, 0-based like TOML arrays)
and the bad value. Things that work but are probably unintended (an unused
destination, ``tls_verify = false``, a literal secret in a group-readable
file) are returned as ``Config.warnings``.

Rules beyond the per-key ones of each table:

* relative paths resolve against the config file's folder; ``~`` expands;
* a folder's ``destination`` must name a ``[destinations.NAME]`` table;
* watched folders are distinct and never nested in one another;
* no two archive/failed folders overlap, and none overlaps another watched
  folder (files would be uploaded again);
* a folder's own archive/failed folder, and ``daemon.state_dir``, must not lie
  inside a watched folder (whoever drops files there could write into them,
  replace them or plant symlinks), unless the folder sets
  ``allow_unsafe_dirs = true``; such folders are then reported by
  :meth:`FolderConfig.ignored_dirs` so the watcher skips them;
* an existing archive/failed folder writable by group/others is a warning,
  an error with ``strict_dirs=True`` (``syncd check``), unless
  ``allow_unsafe_dirs = true``.

The file itself: at most ``MAX_CONFIG_BYTES`` of a regular file (a FIFO or
``/dev/zero`` is refused); a file that group/others can write, or that a
user other than root or the caller owns, is a warning.

Messages never contain a secret's value. See ``docs/configuration.md``.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
import types
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar

from syncd import bandwidth, metadata, rules
from syncd._options import (
    FieldDoc,
    dotted,
    field_docs,
    is_http_url,
    parse_options,
    resolve_path,
    show,
    suggest,
    unknown,
)
from syncd.destinations.options import OPTIONS
from syncd.errors import ConfigError, Problem
from syncd.secrets import Secret, describe_ref

DEFAULT_CONFIG_PATH = Path("/etc/syncd/config.toml")
MAX_CONFIG_BYTES = 1024 * 1024  # a config is a few KiB; this bounds what a wrong path costs
TOP_LEVEL = ("daemon", "destinations", "folders")
# Placeholder for a failed_dir not given in the table; FolderConfig.with_defaults replaces it.
# The NUL makes every file-system call on it fail, so it can never be used by mistake.
_DERIVED_DIR = Path("\0<state_dir>/failed/<folder basename>")


T = TypeVar("T")


def _key(default: T, doc: str, **meta: Any) -> T:
    """A config key with a default; ``meta`` as described in :mod:`syncd._options`."""
    return field(default=default, metadata={"doc": doc, **meta})


def _required(doc: str, **meta: Any) -> Any:
    return field(metadata={"doc": doc, **meta})


@dataclass(frozen=True)
class DaemonConfig:
    """The ``[daemon]`` table: process-wide settings."""

    state_dir: Path = _key(
        Path("state"), "Ledger, lock file, and default archive/failed folders.", dir=True)
    workers: int = _key(4, "Uploader threads.", min=1, max=64)
    rescan_seconds: float = _key(300.0, "Interval of the safety rescan of every folder.", min=1)
    log_level: str = _key("info", "Log verbosity.", choices=("debug", "info", "warning", "error"))
    log_format: str = _key("text", "json: one object per line.", choices=("text", "json"))
    drain_seconds: float = _key(
        30.0, "Graceful stop: how long in-flight uploads may take to finish.", min=0)
    metrics_listen: str = _key(
        "", '"HOST:PORT" to serve metrics on ("[::1]:8791" for IPv6); "" = off.')
    retry_base_seconds: float = _key(
        2.0, "Delay before the first retry; later retries back off up to the maximum.", gt=0)
    retry_max_seconds: float = _key(
        600.0, "Longest retry delay; must be >= retry_base_seconds.", gt=0)
    connect_timeout: float = _key(10.0, "TCP/TLS connect timeout, seconds.", gt=0)
    io_timeout: float = _key(60.0, "Read/write timeout per socket operation, seconds.", gt=0)
    ca_bundle: Path | None = _key(
        None, "Extra CA bundle (PEM) to trust for TLS, e.g. a company CA.", file=True)
    tls_verify: bool = _key(True, "Verify TLS certificates; false (tests only) is a warning.")
    webhook_url: Secret | None = _key(
        None, "POST a JSON notification here when a file fails for good and when a destination "
        "goes down or comes back: the http(s) URL, or a secret reference to it (env:/file:/"
        "credential:), since many webhook URLs embed a token.")
    webhook_secret: Secret | None = _key(
        None, "Signs every notification: header X-Syncd-Signature-256: sha256=<hex HMAC-SHA256 "
        "of the body with this secret>.")


_TEXT = {"nonempty": True, "no_control": True}
_JUNK = ("Skip junk and partial names: .DS_Store, ._*, Thumbs.db, desktop.ini, *.part, "
         "*.partial, *.tmp, *.crdownload, ~$*, .~lock.*#, dot-files.")


@dataclass(frozen=True)
class FolderConfig:
    """One ``[[folders]]`` entry: a watched folder and what happens to its files."""

    path: Path = _required(
        "The watched folder; need not exist yet (`syncd check` reports it, the daemon retries).",
        dir=True)
    destination: str = _required("Name of the [destinations.NAME] to upload to.", **_TEXT)
    labels: tuple[str, ...] = _key(
        (), "Labels sent with every file (if the destination type carries labels).", **_TEXT)
    category: str | None = _key(
        None, "Category sent with every file (if the destination type carries one).", **_TEXT)
    include: tuple[str, ...] = _key(
        ("*",), "Globs on the path relative to the folder; a file must match one.",
        nonempty=True, min_items=1)
    exclude: tuple[str, ...] = _key(
        (), "Globs of files to skip, in addition to the built-in junk list.", nonempty=True)
    ignore_junk: bool = _key(True, _JUNK)
    recursive: bool = _key(True, "Also watch sub-folders.")
    settle_seconds: float = _key(
        2.0, "A file is finished once size, mtime and inode stay unchanged this long.", min=0)
    max_settle_seconds: float = _key(
        0.0, "0 = never force; else (>= settle_seconds) upload a file still changing after "
        "this long.", min=0)
    observer: str = _key(
        "native", "native (inotify), or polling for network shares where inotify sees nothing.",
        choices=("native", "polling"))
    poll_seconds: float = _key(5.0, "Interval of the polling observer.", gt=0)
    marker: str | None = _key(
        None, "A file that must exist in the folder (e.g. .syncd-root); while it is missing "
        "the folder counts as not mounted and is neither watched nor scanned.", **_TEXT)
    after_upload: str = _key(
        "archive", "What happens to a file once its upload is confirmed.",
        choices=("archive", "delete", "keep"))
    archive_dir: Path | None = _key(
        None, 'Where uploaded files go, keeping their sub-path (after_upload = "archive").',
        default_doc="<state_dir>/archive/<folder basename>", dir=True)
    failed_dir: Path = _key(
        _DERIVED_DIR, "Where files go after a permanent error or max_attempts failures.",
        default_doc="<state_dir>/failed/<folder basename>", dir=True)
    max_attempts: int = _key(8, "Upload attempts before a file goes to failed_dir.", min=1)
    allow_unsafe_dirs: bool = _key(
        False, "true: accept an archive_dir/failed_dir (or daemon.state_dir) inside this "
        "folder, or one that group/others can write (refused by default: producers could "
        "tamper with it).")
    labels_from_path: str | None = _key(
        None, 'A pattern such as "{client}/{project}/**": the folder names it captures from a '
        "file's relative path are added to its labels; a file outside it keeps the folder's.",
        **_TEXT)
    metadata_sidecar: bool = _key(
        False, 'true: NAME.meta.json beside NAME ({"labels": [...], "category": "..."}) adds '
        "labels and sets the category; it moves with its file and is never uploaded itself.")
    on_duplicate: str = _key(
        "upload", '"skip": a file with the same SHA-256 as one this folder already uploaded '
        "(to the same destination) is archived without uploading it again.",
        choices=("upload", "skip"))
    state_dir: Path | None = field(default=None, metadata={"internal": True})
    """The daemon's state_dir (set by :meth:`with_defaults`); not a config key."""

    def with_defaults(self, state_dir: Path) -> FolderConfig:
        """A copy with the defaults that depend on ``state_dir`` filled in.

        ``archive_dir`` (only when ``after_upload == "archive"``) becomes
        ``<state_dir>/archive/<folder basename>`` and ``failed_dir``
        ``<state_dir>/failed/<folder basename>`` unless they were set.
        :func:`load` does this; tests that build a FolderConfig by hand
        should too (until then ``failed_dir`` is a placeholder that every
        file-system call rejects).
        """
        name = self.path.name or "root"
        archive = self.archive_dir
        if archive is None and self.after_upload == "archive":
            archive = state_dir / "archive" / name
        failed = state_dir / "failed" / name if self.failed_dir == _DERIVED_DIR else self.failed_dir
        return replace(self, archive_dir=archive, failed_dir=failed, state_dir=state_dir)

    def ignored_dirs(self) -> tuple[Path, ...]:
        """archive_dir, failed_dir and state_dir when they lie inside ``path``.

        The watcher must never watch or ingest these: the daemon writes there.
        """
        out: list[Path] = []
        for d in (self.archive_dir, self.failed_dir, self.state_dir):
            if d is None or d == _DERIVED_DIR or d == self.path or d in out:
                continue
            if d.is_relative_to(self.path):
                out.append(d)
        return tuple(out)


@dataclass(frozen=True)
class DestinationConfig:
    """One ``[destinations.NAME]`` table; ``options`` is an ``OPTIONS[type]``
    (:mod:`syncd.destinations.options`: the ``Options`` of the type's class)."""

    name: str
    type: str
    options: Any
    bandwidth: bandwidth.Limit = bandwidth.Limit()  # bwlimit / bwlimit_schedule, any type


@dataclass(frozen=True)
class Config:
    """A fully validated config. ``warnings`` holds the Problems of severity "warning"."""

    path: Path | None
    daemon: DaemonConfig
    destinations: Mapping[str, DestinationConfig]
    folders: tuple[FolderConfig, ...]
    warnings: tuple[Problem, ...] = ()


def default_config_path() -> Path:
    """``$SYNCD_CONFIG`` when set and non-empty, else ``/etc/syncd/config.toml``."""
    env = os.environ.get("SYNCD_CONFIG", "")
    return Path(env).expanduser() if env else DEFAULT_CONFIG_PATH


def load(path: str | Path, *, resolve_secrets: bool = True, strict_dirs: bool = False) -> Config:
    """Read and validate the config file at ``path``.

    Relative paths in it resolve against the folder of ``path`` as given,
    without following a symlink to the file (a Kubernetes ConfigMap mount,
    for one, points into a hidden folder that changes on every update).
    Raises ConfigError listing every error, including "cannot read the
    config file", a path that is not a regular file or is larger than
    ``MAX_CONFIG_BYTES``, and TOML syntax errors (with line and column). A
    literal secret in a file that group/others can read, a file that
    group/others can write or that another user than root or the caller
    owns, are warnings. ``strict_dirs``: an archive/failed folder writable
    by group/others is an error rather than a warning (``syncd check``).
    """
    given = Path(path).expanduser()
    source = str(given)
    try:
        data, st = read_config(given)
        text = data.decode("utf-8")
    except OSError as exc:
        message = f"cannot read the config file: {exc.strerror or exc}"
        raise ConfigError([Problem("", message)], source) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([Problem("", f"not valid UTF-8 (at byte {exc.start})")], source) from None
    absolute = given if given.is_absolute() else Path.cwd() / given
    cfg = _build(text, base_dir=absolute.parent, source=source, path=absolute,
                 check_permissions_of=absolute, resolve_secrets=resolve_secrets,
                 strict_dirs=strict_dirs)
    own = _file_problems(given, st)
    return replace(cfg, warnings=(*own, *cfg.warnings)) if own else cfg


def read_config(path: Path) -> tuple[bytes, os.stat_result]:
    """The bytes of the config file at ``path`` and its ``fstat``.

    Raises ConfigError (naming ``path``) when it is not a regular file (a
    FIFO, a device such as ``/dev/zero``, a folder) or holds more than
    ``MAX_CONFIG_BYTES``; OSError when it cannot be opened or read. Never
    blocks on a FIFO and never reads more than the cap plus one byte.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError([Problem("", (
                f"{path} is not a regular file (it is {_file_kind(st.st_mode)}); "
                "point --config at the TOML file"))], str(path))
        chunks: list[bytes] = []
        left = MAX_CONFIG_BYTES + 1
        while left > 0:
            chunk = os.read(fd, min(left, 65536))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        if left <= 0:
            raise ConfigError([Problem("", (
                f"{path} is larger than {MAX_CONFIG_BYTES // 1024} KiB, the limit for a "
                "config file; is it the right file?"))], str(path))
        return b"".join(chunks), st
    finally:
        os.close(fd)


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR,
             "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    return next((text for test, text in kinds if test(mode)), "not a regular file")


def _file_problems(path: Path, st: os.stat_result) -> list[Problem]:
    """Warnings about who can change the config file (it names, or holds, the secrets)."""
    out: list[Problem] = []
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022:
        out.append(Problem("", (
            f"{path} is writable by group/others (mode {mode:04o}): they could point uploads "
            f"elsewhere or at other secrets; run `chmod go-w {path}` (0640 root:syncd)"),
            severity="warning"))
    if st.st_uid not in (0, os.geteuid()):
        out.append(Problem("", (
            f"{path} is owned by uid {st.st_uid}, neither root nor this user: that user "
            f"can change it; run `chown root {path}`"), severity="warning"))
    return out


def loads(
    text: str,
    *,
    base_dir: Path,
    source: str = "<string>",
    check_permissions_of: Path | None = None,
    resolve_secrets: bool = True,
    strict_dirs: bool = False,
) -> Config:
    """Validate config ``text``; relative paths resolve against ``base_dir``.

    ``source`` prefixes the ConfigError message. When ``check_permissions_of``
    is given, a literal secret in ``text`` while that file is readable by
    group/others is a warning. ``resolve_secrets=False`` checks secret
    references without reading the environment or files (for config edits;
    such a Config must not be used to upload). The result's ``path`` is None.
    """
    return _build(text, base_dir=base_dir, source=source, path=None,
                  check_permissions_of=check_permissions_of, resolve_secrets=resolve_secrets,
                  strict_dirs=strict_dirs)


def _build(text: str, *, base_dir: Path, source: str, path: Path | None,
           check_permissions_of: Path | None, resolve_secrets: bool,
           strict_dirs: bool = False) -> Config:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([Problem("", f"invalid TOML: {exc}")], source) from None
    base_dir = base_dir.absolute()
    problems: list[Problem] = []
    for key, value in doc.items():
        if key not in TOP_LEVEL:
            what = "table" if isinstance(value, dict | list) else "key"
            problems.append(Problem(dotted("", key), unknown(key, TOP_LEVEL, what)))

    daemon = _parse_daemon(doc.get("daemon", {}), base_dir, problems)
    state_dir = daemon.state_dir if daemon else resolve_path("state", base_dir)
    raw_destinations = doc.get("destinations", {})
    destinations = _parse_destinations(raw_destinations, base_dir, problems, resolve_secrets)
    defined = sorted(raw_destinations) if isinstance(raw_destinations, dict) else []
    folders = _parse_folders(doc.get("folders"), defined, base_dir, state_dir, problems,
                             resolve_secrets)
    _check_overlaps(folders, problems)
    _check_unsafe_dirs(folders, state_dir, problems, strict=strict_dirs)
    if check_permissions_of is not None:
        _check_permissions(check_permissions_of, destinations, problems)

    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise ConfigError(errors, source)
    assert daemon is not None  # no errors means the daemon table parsed
    return Config(
        path=path,
        daemon=daemon,
        destinations=types.MappingProxyType(destinations),
        folders=tuple(f for _, f in folders),
        warnings=tuple(p for p in problems if p.severity != "error"),
    )


# -- tables ----------------------------------------------------------------------------------

_HOST_PORT = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(?P<port>\d{1,5})\Z")


def _parse_daemon(raw: Any, base_dir: Path, problems: list[Problem]) -> DaemonConfig | None:
    level = raw.get("log_level") if isinstance(raw, dict) else None
    if isinstance(level, str) and level.lower() in ("debug", "info", "warning", "error"):
        raw = {**raw, "log_level": level.lower()}  # "INFO" as well as "info"
    daemon: DaemonConfig | None = parse_options(
        DaemonConfig, raw, prefix="daemon", base_dir=base_dir, problems=problems)
    if daemon is None:
        return None
    errors = len(problems)
    if daemon.retry_max_seconds < daemon.retry_base_seconds:
        problems.append(Problem("daemon.retry_max_seconds", (
            f"must be >= retry_base_seconds ({daemon.retry_base_seconds:g}), "
            f"got {daemon.retry_max_seconds:g}")))
    listen = _HOST_PORT.match(daemon.metrics_listen)
    if daemon.metrics_listen and (not listen or not 1 <= int(listen["port"]) <= 65535):
        problems.append(Problem("daemon.metrics_listen", (
            'expected "HOST:PORT" ("127.0.0.1:8791", "[::1]:8791") with a port 1-65535, '
            f'or "" for off; got {show(daemon.metrics_listen)}')))
    hook = daemon.webhook_url
    if hook is not None and hook.reveal() and not is_http_url(hook.reveal()):  # "" when
        problems.append(Problem("daemon.webhook_url", (  # secrets are only checked
            "must be an absolute URL starting with https:// or http:// and naming a host, "
            f"got {describe_ref(hook.source)}")))
    failed = len(problems) > errors
    if daemon.webhook_secret is not None and hook is None:
        problems.append(Problem("daemon.webhook_secret", "is not used without webhook_url",
                                severity="warning"))
    if not daemon.tls_verify:
        problems.append(Problem("daemon.tls_verify", (
            "TLS certificate verification is OFF: uploads can be intercepted. "
            "Use ca_bundle for a private CA instead"), severity="warning"))
    return None if failed else daemon


def _parse_destinations(raw: Any, base_dir: Path, problems: list[Problem],
                        resolve_secrets: bool) -> dict[str, DestinationConfig]:
    out: dict[str, DestinationConfig] = {}
    if not isinstance(raw, dict):
        problems.append(Problem("destinations",
                                f"expected [destinations.NAME] tables, got {_what(raw)}"))
        return out
    valid = ", ".join(sorted(OPTIONS))
    for name, table in raw.items():
        prefix = dotted("destinations", name)
        kind = table.get("type") if isinstance(table, dict) else None
        if not isinstance(table, dict):
            problems.append(Problem(prefix, f"expected a table [{prefix}], got {_what(table)}"))
        elif not name.strip():
            problems.append(Problem(prefix, "destination names must not be empty"))
        elif kind is None:
            problems.append(Problem(f"{prefix}.type", f"required key is missing (valid: {valid})"))
        elif not isinstance(kind, str) or kind not in OPTIONS:
            problems.append(Problem(f"{prefix}.type",
                                    f"unknown type {show(kind)} (valid: {valid})"))
        else:
            # The keys every type takes (bandwidth.KEYS) are read here, the rest by the type.
            rest = {k: v for k, v in table.items() if k != "type"}
            options = parse_options(OPTIONS[kind], rest, prefix=prefix,
                                    base_dir=base_dir, problems=problems,
                                    resolve_secrets=resolve_secrets, shared_keys=bandwidth.KEYS)
            limit = bandwidth.parse(table, prefix=prefix, base_dir=base_dir, problems=problems)
            if options is not None and limit is not None:
                out[name] = DestinationConfig(name=name, type=kind, options=options,
                                              bandwidth=limit)
    return out


def _what(value: object) -> str:
    """The kind of a value, for places where the value itself may be a misplaced secret."""
    kinds = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
             list: "an array", dict: "a table"}
    return kinds.get(type(value), "a date/time")


def _parse_folders(
    raw: Any, defined: list[str], base_dir: Path, state_dir: Path, problems: list[Problem],
    resolve_secrets: bool,
) -> list[tuple[int, FolderConfig]]:
    """The folders that parsed, with their index; ``defined``: all destination names."""
    if raw is None or raw == []:
        problems.append(Problem("", "no [[folders]] defined"))
        return []
    if not isinstance(raw, list):
        problems.append(Problem("folders",
                                f"expected an array of tables ([[folders]]), got {show(raw)}"))
        return []
    used: set[str] = set()
    out: list[tuple[int, FolderConfig]] = []
    for i, table in enumerate(raw):
        prefix = f"folders[{i}]"
        if not isinstance(table, dict):
            problems.append(Problem(prefix, f"expected a table ([[folders]]), got {show(table)}"))
            continue
        # Checked on the raw value, so it is reported even when other keys are broken.
        name = table.get("destination")
        if isinstance(name, str) and name:
            used.add(name)
            if name not in defined:
                problems.append(Problem(f"{prefix}.destination", (
                    f"no destination named {name!r}{suggest(name, defined)} "
                    f"(defined: {', '.join(defined) or 'none'})")))
        folder: FolderConfig | None = parse_options(
            FolderConfig, table, prefix=prefix, base_dir=base_dir, problems=problems,
            resolve_secrets=resolve_secrets)
        if folder is not None and _check_folder(prefix, table, folder, state_dir, problems):
            folder = folder.with_defaults(state_dir)
            _check_own_dirs(prefix, folder, problems)
            out.append((i, folder))
    for name in defined:
        if name not in used:
            problems.append(Problem(dotted("destinations", name), "not used by any folder",
                                    severity="warning"))
    return out


def _check_folder(prefix: str, table: Mapping[str, Any], folder: FolderConfig,
                  state_dir: Path, problems: list[Problem]) -> bool:
    """Rules between one folder's keys; False when one of them is broken."""
    errors = len(problems)
    if folder.max_settle_seconds and folder.max_settle_seconds < folder.settle_seconds:
        problems.append(Problem(f"{prefix}.max_settle_seconds", (
            f"must be 0 (never force) or >= settle_seconds ({folder.settle_seconds:g}), "
            f"got {folder.max_settle_seconds:g}")))
    if folder.path == state_dir:
        problems.append(Problem(f"{prefix}.path",
                                f"{folder.path} is daemon.state_dir; watch another folder"))
    if folder.marker is not None:
        if "/" in folder.marker or folder.marker in (".", ".."):
            problems.append(Problem(f"{prefix}.marker", (
                f"must be a file name in the folder itself, got {folder.marker!r}")))
        elif rules.judge(folder.marker, include=folder.include, exclude=folder.exclude,
                         ignore_junk=folder.ignore_junk).accepted:
            problems.append(Problem(f"{prefix}.marker", (
                f"{folder.marker!r} would itself be uploaded and archived; use a dot-file "
                "such as '.syncd-root', or add it to exclude")))
    if folder.labels_from_path is not None:
        try:
            metadata.compile_pattern(folder.labels_from_path)
        except ValueError as exc:
            problems.append(Problem(f"{prefix}.labels_from_path",
                                    f"{exc}; got {show(folder.labels_from_path)}"))
    failed = len(problems) > errors
    if folder.after_upload != "archive" and "archive_dir" in table:
        problems.append(Problem(f"{prefix}.archive_dir", (
            f"is not used because after_upload = {folder.after_upload!r}"), severity="warning"))
    return not failed


def _check_own_dirs(prefix: str, folder: FolderConfig, problems: list[Problem]) -> None:
    """A folder's archive/failed folders: not the folder, not around it, apart from each other."""
    dirs = [(k, d) for k, d in (("archive_dir", folder.archive_dir),
                                ("failed_dir", folder.failed_dir)) if d is not None]
    for key, d in dirs:
        if d == folder.path:
            problems.append(Problem(f"{prefix}.{key}", (
                f"{d} is the watched folder itself; files would be uploaded again")))
        elif folder.path.is_relative_to(d):
            problems.append(Problem(f"{prefix}.{key}",
                                    f"the watched folder {folder.path} lies inside it ({d})"))
    if len(dirs) == 2 and _overlap(dirs[0][1], dirs[1][1]):
        problems.append(Problem(f"{prefix}.failed_dir", (
            f"{folder.failed_dir} overlaps archive_dir ({folder.archive_dir}); "
            "keep archived and failed files apart")))


def _overlap(a: Path, b: Path) -> bool:
    return a.is_relative_to(b) or b.is_relative_to(a)


def _check_overlaps(folders: list[tuple[int, FolderConfig]], problems: list[Problem]) -> None:
    """Watched folders distinct and not nested; archive/failed folders apart from all others."""
    for n, (i, a) in enumerate(folders):
        for j, b in folders[:n]:
            if a.path == b.path:
                problems.append(Problem(f"folders[{i}].path",
                                        f"{a.path} is already watched by folders[{j}]"))
            elif _overlap(a.path, b.path):
                inside = a.path.is_relative_to(b.path)
                (k, inner), (m, outer) = ((i, a), (j, b)) if inside else ((j, b), (i, a))
                problems.append(Problem(f"folders[{k}].path", (
                    f"{inner.path} lies inside folders[{m}].path ({outer.path}); "
                    "nested watched folders are not supported")))
    dirs = [(i, f, k, d) for i, f in folders
            for k, d in (("archive_dir", f.archive_dir), ("failed_dir", f.failed_dir))
            if d is not None]
    for n, (i, f, key, d) in enumerate(dirs):
        for j, _, other_key, other in dirs[:n]:
            if i != j and _overlap(d, other):
                how = "is also" if d == other else "overlaps"
                problems.append(Problem(f"folders[{i}].{key}", (
                    f"{d} {how} folders[{j}].{other_key} ({other}); {_own_dir_hint(f, key, d)}")))
        for j, g in folders:
            if i != j and _overlap(d, g.path):
                problems.append(Problem(f"folders[{i}].{key}", (
                    f"{d} overlaps the watched folder folders[{j}].path ({g.path}); "
                    "its files would be uploaded again")))


def _check_unsafe_dirs(folders: list[tuple[int, FolderConfig]], state_dir: Path,
                       problems: list[Problem], *, strict: bool) -> None:
    """archive/failed folders and state_dir that producers could tamper with.

    Inside a watched folder: an error. Existing and writable by group/others:
    an error when ``strict``, else a warning. A folder with
    ``allow_unsafe_dirs = true`` is exempt from both.
    """
    hint = "move it out of the inbox, or set allow_unsafe_dirs = true on the folder"
    for i, f in folders:
        if f.allow_unsafe_dirs:
            continue
        if state_dir.is_relative_to(f.path) and state_dir != f.path:
            problems.append(Problem("daemon.state_dir", (
                f"{state_dir} lies inside the watched folder folders[{i}].path ({f.path}): "
                "whoever drops files there could read or replace the ledger; move it out, or "
                f"set allow_unsafe_dirs = true on folders[{i}]")))
        for key, d in (("archive_dir", f.archive_dir), ("failed_dir", f.failed_dir)):
            if d is None or d == f.path or f.path.is_relative_to(d):
                continue  # reported by _check_own_dirs
            if d.is_relative_to(f.path):
                problems.append(Problem(f"folders[{i}].{key}", (
                    f"{d} lies inside the watched folder {f.path}: whoever drops files there "
                    f"could also write into it, replace it or plant symlinks; {hint}")))
                continue
            try:
                mode = d.stat().st_mode
            except OSError:
                continue  # created by syncd when first needed
            if stat.S_ISDIR(mode) and mode & 0o022:
                problems.append(Problem(f"folders[{i}].{key}", (
                    f"{d} is writable by group/others (mode {stat.S_IMODE(mode):04o}): they "
                    f"could replace what syncd moves there or plant symlinks; run `chmod go-w "
                    f"{d}`, or set allow_unsafe_dirs = true on the folder"),
                    severity="error" if strict else "warning"))


def _own_dir_hint(folder: FolderConfig, key: str, d: Path) -> str:
    sub = key.removesuffix("_dir")
    if folder.state_dir is not None and d == folder.state_dir / sub / (folder.path.name or "root"):
        return (f"set {key} explicitly (the default <state_dir>/{sub}/<folder basename> "
                "repeats when two folders share a basename)")
    return f"give each folder its own {key}"


def _check_permissions(file: Path, destinations: Mapping[str, DestinationConfig],
                       problems: list[Problem]) -> None:
    """Warn about each literal secret in ``file`` when group/others can read it."""
    try:
        mode = stat.S_IMODE(file.stat().st_mode)
    except OSError:
        return
    if not mode & 0o044:
        return
    for dest in destinations.values():
        for f in fields(dest.options):
            value = getattr(dest.options, f.name)
            if isinstance(value, Secret) and value.is_literal:
                problems.append(Problem(dotted(dotted("destinations", dest.name), f.name), (
                    f"literal secret in {file}, which is readable by group/others "
                    f'(mode {mode:04o}); run `chmod 600 {file}` or use "env:NAME" '
                    'or "credential:NAME"'), severity="warning"))


__all__ = [
    "Config", "DaemonConfig", "DestinationConfig", "FieldDoc", "FolderConfig",
    "default_config_path", "field_docs", "load", "loads", "parse_options",
]
