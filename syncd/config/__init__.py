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
(the rules between folders and about the folders syncd writes into);
:mod:`.loader` puts them together (:func:`load`, :func:`loads`). This module
names them all; the loader and the key docs are imported on first use, so
that an upload helper process, which unpickles the dataclasses of a config
and never reads one, does not import tomllib and every table's checks.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from syncd.config.file import DEFAULT_CONFIG_PATH, MAX_CONFIG_BYTES, default_config_path, read_config
from syncd.config.model import Config, DaemonConfig, DestinationConfig, FolderConfig
from syncd.errors import ConfigError as ConfigError  # re-exported: what load raises
from syncd.errors import Problem as Problem

if TYPE_CHECKING:
    from syncd._options import FieldDoc, field_docs, parse_options
    from syncd.config.loader import TOP_LEVEL, load, loads

_ON_FIRST_USE = {
    "TOP_LEVEL": "syncd.config.loader",
    "load": "syncd.config.loader",
    "loads": "syncd.config.loader",
    "FieldDoc": "syncd._options",
    "field_docs": "syncd._options",
    "parse_options": "syncd._options",
}


def __getattr__(name: str) -> Any:
    """The loader's and the key docs' names, imported when first used (see above)."""
    module = _ON_FIRST_USE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


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
