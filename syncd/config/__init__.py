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

The package: :mod:`.model` (the dataclasses), :mod:`.file` (finding and
reading the file), :mod:`.tables` (each table on its own), :mod:`.checks`
(the rules between folders and about the folders syncd writes into); this
module puts them together (:func:`load`, :func:`loads`).
"""

from __future__ import annotations

import tomllib
import types
from dataclasses import replace
from pathlib import Path

from syncd._options import FieldDoc, dotted, field_docs, parse_options, resolve_path, unknown
from syncd.config.checks import (
    check_hardlinks,
    check_overlaps,
    check_permissions,
    check_state_dir,
    check_unsafe_dirs,
)
from syncd.config.file import (
    DEFAULT_CONFIG_PATH,
    MAX_CONFIG_BYTES,
    default_config_path,
    file_problems,
    read_config,
)
from syncd.config.model import Config, DaemonConfig, DestinationConfig, FolderConfig
from syncd.config.tables import parse_daemon, parse_destinations, parse_folders
from syncd.errors import ConfigError, Problem

TOP_LEVEL = ("daemon", "destinations", "folders")


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
    cfg = _build(
        text,
        base_dir=absolute.parent,
        source=source,
        path=absolute,
        check_permissions_of=absolute,
        resolve_secrets=resolve_secrets,
        strict_dirs=strict_dirs,
    )
    own = file_problems(given, st)
    return replace(cfg, warnings=(*own, *cfg.warnings)) if own else cfg


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
    return _build(
        text,
        base_dir=base_dir,
        source=source,
        path=None,
        check_permissions_of=check_permissions_of,
        resolve_secrets=resolve_secrets,
        strict_dirs=strict_dirs,
    )


def _build(
    text: str,
    *,
    base_dir: Path,
    source: str,
    path: Path | None,
    check_permissions_of: Path | None,
    resolve_secrets: bool,
    strict_dirs: bool = False,
) -> Config:
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

    daemon = parse_daemon(doc.get("daemon", {}), base_dir, problems, resolve_secrets)
    state_dir = daemon.state_dir if daemon else resolve_path("state", base_dir)
    raw_destinations = doc.get("destinations", {})
    destinations = parse_destinations(raw_destinations, base_dir, problems, resolve_secrets)
    defined = sorted(raw_destinations) if isinstance(raw_destinations, dict) else []
    folders = parse_folders(doc.get("folders"), defined, base_dir, state_dir, problems, resolve_secrets)
    check_overlaps(folders, problems)
    check_unsafe_dirs(folders, state_dir, problems, strict=strict_dirs)
    if check_permissions_of is not None:
        check_permissions(check_permissions_of, daemon, destinations, problems)
        check_hardlinks(folders, problems)
        check_state_dir(state_dir, problems)

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


__all__ = [
    "DEFAULT_CONFIG_PATH",
    "MAX_CONFIG_BYTES",
    "TOP_LEVEL",
    "Config",
    "DaemonConfig",
    "DestinationConfig",
    "FieldDoc",
    "FolderConfig",
    "default_config_path",
    "field_docs",
    "load",
    "loads",
    "parse_options",
    "read_config",
]
