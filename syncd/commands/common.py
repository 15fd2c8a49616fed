"""What the CLI's commands share: exit codes, the config, the ledger, times, safe text.

A broken config (``syncd status`` right after a refused reload)
--------------------------------------------------------------------
`status` and `files` only need to know where the ledger is and which folders
there are, so they do not give up when the config file no longer validates
(:func:`load_view`). The ledger is found from the broken file itself:
``daemon.state_dir`` read from its TOML when it still parses, else from a
``state_dir = "..."`` line, else the default ``state`` beside the file,
relative paths resolved like :func:`syncd.config.load` does. The folders and
destinations are then those of the configuration the daemon last applied,
which it records in the ledger (kv ``config``: paths, names and types, never a
secret or a URL) at every start and applied reload; a ledger without that
record gives the folders its rows name. A warning line says the config is
broken and what is shown instead. With no ledger there, the config error is
reported as before (exit 2).
"""

from __future__ import annotations

import argparse
import os
import re
import sqlite3
import sys
import time
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from syncd import config as configmod
from syncd._options import resolve_path
from syncd.errors import ConfigError, Problem
from syncd.ledger import ACTIVE_STATES, CONFIG_KEY, STATES, Ledger
from syncd.logs import printable
from syncd.redact import redact

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_LOCKED, EXIT_LEDGER = 0, 1, 2, 3, 4
LEDGER_NAME = "ledger.sqlite3"  # as syncd.daemon.LEDGER_NAME (not imported: it pulls in httpx)

_STATE_DIR_LINE = re.compile(r"""^[ \t]*state_dir[ \t]*=[ \t]*(["'])(?P<value>[^"'\n]*)\1""", re.MULTILINE)


def config_path(args: argparse.Namespace) -> Path:
    return Path(args.config) if args.config else configmod.default_config_path()


def load(args: argparse.Namespace, *, secrets: bool = True, strict_dirs: bool = False) -> configmod.Config:
    """The config; ``secrets=False`` for commands that never upload, so they work from an
    admin shell that lacks the service's environment and $CREDENTIALS_DIRECTORY.
    ``strict_dirs``: group/other-writable archive/failed folders are errors (`check`)."""
    path = config_path(args)
    if not path.exists():
        raise ConfigError(
            [Problem("", f"no such file (create one with `syncd init {path}`)")], source=str(path)
        )
    cfg = configmod.load(path, resolve_secrets=secrets, strict_dirs=strict_dirs)
    for w in cfg.warnings:
        print(f"syncd: warning: {w}", file=sys.stderr)
    return cfg


def open_ledger(
    state_dir: str | os.PathLike[str] | configmod.Config, *, readonly: bool = True
) -> Ledger | None:
    """The ledger in ``state_dir`` (or the config's); None when reading one that is not there."""
    if isinstance(state_dir, configmod.Config):
        state_dir = state_dir.daemon.state_dir
    path = Path(state_dir) / LEDGER_NAME
    if readonly and not path.exists():
        return None
    return Ledger.open(path, readonly=readonly)


def ago(t: float | None) -> str:
    if t is None:
        return "never"
    s = max(0.0, time.time() - t)
    if s < 120:
        return f"{s:.0f}s ago"
    if s < 7200:
        return f"{s / 60:.0f}m ago"
    return f"{s / 3600:.1f}h ago"


def stamp(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def shown(text: object) -> str:
    """Ledger or server text (an error, a status, a remote id) as one safe line.

    It was redacted and escaped when it was recorded; this is the last line of
    defence for rows written by older versions: shapes masked, controls escaped.
    """
    return printable(redact(str(text)))


# -- the config, or what the ledger remembers of it ----------------------------------------------


@dataclass(frozen=True)
class FolderView:
    path: str
    destination: str
    labels: tuple[str, ...] = ()
    category: str | None = None
    archive_dir: str | None = None
    failed_dir: str | None = None


@dataclass(frozen=True)
class View:
    """What `status` and `files` need of the config. ``broken`` is the config's error
    when this view was rebuilt from the ledger (see the module docstring)."""

    path: Path
    state_dir: Path
    folders: tuple[FolderView, ...]
    destinations: dict[str, str] = field(default_factory=dict)  # name -> type
    broken: str | None = None
    applied_at: float | None = None

    @classmethod
    def of(cls, cfg: configmod.Config, path: Path) -> View:
        return cls(
            path=path,
            state_dir=Path(cfg.daemon.state_dir),
            folders=tuple(
                FolderView(
                    os.fspath(f.path),
                    f.destination,
                    tuple(f.labels),
                    f.category,
                    None if f.archive_dir is None else os.fspath(f.archive_dir),
                    None if f.failed_dir is None else os.fspath(f.failed_dir),
                )
                for f in cfg.folders
            ),
            destinations={name: dc.type for name, dc in cfg.destinations.items()},
        )

    def warning(self) -> str | None:
        """The line that says the config is broken and what is shown instead."""
        if self.broken is None:
            return None
        what = (
            f"the configuration the daemon last applied ({stamp(self.applied_at)})"
            if self.applied_at is not None
            else "the folders its rows name"
        )
        return (
            f"the config {self.path} is broken ({self.broken}); showing the ledger in "
            f"{self.state_dir} with {what}. `syncd check` lists every problem"
        )


def load_view(args: argparse.Namespace, *, warn: bool = True) -> View:
    """The config's view, or, when the file exists but does not validate, the ledger's
    (a warning on stderr says so); the ConfigError when there is no ledger to fall back on."""
    path = config_path(args)
    try:
        return View.of(load(args, secrets=False), path)
    except ConfigError as exc:
        if not path.is_file():
            raise
        view = view_from_ledger(path, exc)
        if view is None:
            raise
    text = view.warning()
    if warn and text:
        print(f"syncd: warning: {text}", file=sys.stderr)
    return view


def guess_state_dir(path: Path) -> Path | None:
    """``daemon.state_dir`` of a config file that does not validate (see the module
    docstring); None when the file cannot be read or the value cannot be a path."""
    try:
        text = configmod.read_config(path.expanduser())[0].decode("utf-8", "replace")
    except (OSError, ConfigError):
        return None
    raw: Any = "state"
    try:
        daemon = tomllib.loads(text).get("daemon", {})
        if isinstance(daemon, dict):
            raw = daemon.get("state_dir", "state")
    except tomllib.TOMLDecodeError:
        found = _STATE_DIR_LINE.search(text)
        if found:
            raw = found["value"]
    if not isinstance(raw, str) or not raw:
        return None
    given = path.expanduser()
    absolute = given if given.is_absolute() else Path.cwd() / given
    try:
        return resolve_path(raw, absolute.parent)
    except ValueError:
        return None


def view_from_ledger(path: Path, exc: ConfigError) -> View | None:
    state_dir = guess_state_dir(path)
    if state_dir is None or not (state_dir / LEDGER_NAME).is_file():
        return None
    ledger = Ledger.open(state_dir / LEDGER_NAME, readonly=True)
    try:
        record = ledger.get_meta(CONFIG_KEY)
        known = sorted(ledger.counts_by_folder())
    except sqlite3.Error:
        record, known = None, []
    finally:
        ledger.close()
    first = shown(exc.problems[0]) if exc.problems else shown(exc)
    more = len(exc.problems) - 1
    broken = first + (f", and {more} more problem(s)" if more > 0 else "")
    applied = applied_view(record, path, state_dir)
    if applied is not None:
        return replace(applied, broken=broken)
    return View(path, state_dir, tuple(FolderView(root, "?") for root in known), {}, broken)


def applied_view(record: object, path: Path, state_dir: Path) -> View | None:
    """The view of the configuration the daemon last applied (its ledger record), or None
    when the record is missing or not one."""
    if not isinstance(record, dict) or not isinstance(record.get("folders"), list):
        return None
    folders = tuple(
        FolderView(
            str(f.get("path")),
            str(f.get("destination")),
            tuple(str(x) for x in f.get("labels") or ()),
            f.get("category"),
            f.get("archive_dir"),
            f.get("failed_dir"),
        )
        for f in record["folders"]
        if isinstance(f, dict)
    )
    destinations = {str(k): str(v) for k, v in (record.get("destinations") or {}).items()}
    at = record.get("applied_at")
    applied_at = at if isinstance(at, int | float) else None
    return View(path, state_dir, folders, destinations, applied_at=applied_at)


def as_applied(view: View, record: object, config: dict[str, Any]) -> View:
    """The folders the running daemon works on: those it applied (its ledger record) when
    the config file says otherwise (edited, not reloaded yet; a folder path that leads
    elsewhere through a symlink now), said in ``config["unapplied"]``."""
    applied = applied_view(record, view.path, view.state_dir)
    if applied is None or (applied.folders, applied.destinations) == (view.folders, view.destinations):
        return view
    config["applied_at"] = applied.applied_at
    config["unapplied"] = (
        f"{view.path} differs from the configuration the running daemon applied"
        f" ({stamp(applied.applied_at)}); showing that one. `syncd reload` applies the file"
    )
    return applied


def lost_folders(by_folder: dict[str, dict[str, int]], configured: set[str]) -> list[dict[str, Any]]:
    """The folders the configuration no longer has (a reload removed them) whose files are
    still on their way: they wait in the ledger for the folder to be configured again."""
    out: list[dict[str, Any]] = []
    for root, got in sorted(by_folder.items()):
        waiting = sum(got.get(s, 0) for s in ACTIVE_STATES)
        if root in configured or not waiting:
            continue
        counts = {s: 0 for s in STATES}
        counts.update(got)
        out.append(
            {
                "path": root,
                "destination": None,
                "labels": [],
                "category": None,
                "states": counts,
                "exists": Path(root).is_dir(),
                "problem": (
                    f"not in the configuration: its {waiting:,} file(s) on their way wait for it"
                    " to be configured again"
                ),
                "ignored": None,
            }
        )
    return out
