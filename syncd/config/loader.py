"""Reading a config file, or text, into a validated :class:`~syncd.config.Config`.

:func:`load` and :func:`loads` (named by :mod:`syncd.config`, whose docstring
says what is checked) parse each table with :mod:`.tables`, then apply the
rules between tables and folders of :mod:`.checks`.
"""

from __future__ import annotations

import tomllib
import types
from dataclasses import replace
from pathlib import Path

from syncd._options import dotted, resolve_path, unknown
from syncd.config.checks import (
    check_hardlinks,
    check_overlaps,
    check_permissions,
    check_state_dir,
    check_unsafe_dirs,
)
from syncd.config.file import file_problems, read_config
from syncd.config.model import Config
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
