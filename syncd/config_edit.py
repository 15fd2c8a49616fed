"""Write and edit the config file: ``syncd init`` and ``syncd folder add``.

Both write with :mod:`tomli_w` and never leave a half-written or invalid
file behind: the new text is validated with :func:`syncd.config.loads`
first, then written to a temporary file in the same folder, fsynced, and
renamed over the target (the folder is fsynced too). The original file's
mode, and its owner when we are allowed to set it, are kept.

Comments: :func:`add_folder` appends the new ``[[folders]]`` table to the
end of the file, so everything already in it, comments included, is kept
byte for byte. Only when appending cannot express the edit (the folders
were written as an inline array ``folders = [...]``) is the whole file
re-rendered by tomli-w, and tomli-w does not preserve comments.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import stat
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import tomli_w

from syncd import durable
from syncd._options import dotted
from syncd.config import MAX_CONFIG_BYTES, loads, read_config
from syncd.errors import ConfigError, Problem

log = logging.getLogger(__name__)

_HEADER = """\
# syncd configuration, written by `syncd init`.
# Every key with its default and meaning: config.example.toml and docs/configuration.md.
# As written, this uploads files dropped into {inbox} to the bundled emulator
# (start it with `syncd emulate`); point base_url and api_key at the real service later.

"""


# ``system``: the service's layout (docs/operations.md, systemd/syncd.tmpfiles.conf)
SYSTEM_STATE_DIR = "/var/lib/syncd"
SYSTEM_ROOT = "/srv/syncd"


def starter_config(system: bool = False) -> dict[str, Any]:
    """The document :func:`write_initial` writes: relative paths (next to the file), or
    with ``system`` the absolute paths of the service's layout (/var/lib/syncd,
    /srv/syncd/{inbox,archive,failed}/demo), for a config in /etc."""
    if system:
        return {
            "daemon": {
                "state_dir": SYSTEM_STATE_DIR,
                "workers": 4,
                "rescan_seconds": 300,
                "log_level": "info",
            },
            "destinations": {
                "demo": {"type": "lilt", "base_url": "http://127.0.0.1:8790/lilt", "api_key": "demo-lilt-key"}
            },
            "folders": [
                {
                    "path": f"{SYSTEM_ROOT}/inbox/demo",
                    "destination": "demo",
                    "labels": [],
                    "after_upload": "archive",
                    "archive_dir": f"{SYSTEM_ROOT}/archive/demo",
                    "failed_dir": f"{SYSTEM_ROOT}/failed/demo",
                }
            ],
        }
    return {
        "daemon": {"state_dir": "state", "workers": 4, "rescan_seconds": 300, "log_level": "info"},
        "destinations": {
            "demo": {
                "type": "lilt",
                "base_url": "http://127.0.0.1:8790/lilt",
                "api_key": "demo-lilt-key",
            }
        },
        "folders": [
            {
                "path": "inbox",
                "destination": "demo",
                "labels": [],
                "after_upload": "archive",
                "archive_dir": "archive",
            }
        ],
    }


def write_initial(path: Path, *, force: bool = False, system: bool = False) -> None:
    """Write a small valid starter config to ``path`` with mode 0600.

    It has a ``[daemon]`` table, one ``lilt`` destination pointed at the
    emulator (``http://127.0.0.1:8790/lilt``, api_key ``"demo-lilt-key"``)
    and one folder ``inbox`` archived to ``archive``, both relative to the
    file's folder (with ``system``: absolute paths, see :func:`starter_config`).
    Missing parent folders are created. Raises
    FileExistsError if ``path`` exists, unless ``force`` (then it is
    replaced atomically).
    """
    path = Path(path)
    doc = starter_config(system)
    inbox = doc["folders"][0]["path"] if system else "./inbox"
    text = _HEADER.format(inbox=inbox) + render(doc)
    loads(text, base_dir=path.parent.absolute(), source=str(path), resolve_secrets=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    if force and path.exists():
        # its owner and group kept, and its mode as far as owner rw, group r: a service's
        # 0640 root:syncd stays readable by syncd; nothing else may read the starter's key
        durable.replace(path, text, mode=stat.S_IMODE(path.stat().st_mode) & 0o640 or 0o600)
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        os.fchmod(fd, 0o600)  # the umask may have taken bits away, never added; be exact
        os.write(fd, text.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    durable.fsync_dir(path.parent)


def add_folder(
    config_path: Path,
    folder_path: str,
    *,
    destination: str,
    labels: Sequence[str] = (),
    category: str | None = None,
    **extra: Any,
) -> list[str]:
    """Append a ``[[folders]]`` entry to the config at ``config_path``; the warnings of
    the new config, and one when its comments were lost, for the caller to show.

    ``folder_path`` is written as given; a relative path means relative to
    the config file's folder, so a caller holding a path relative to its
    working directory should make it absolute first. ``extra`` holds any
    other folder keys (``settle_seconds=5``, ``after_upload="keep"``);
    ``None`` values are left out, tuples and Paths are written as arrays and
    strings.

    The edited document is validated with :func:`syncd.config.loads` (secret
    references are checked for syntax only, since this shell's environment
    is not the service's) before anything is written. On ConfigError the
    file is left untouched and the error is raised; it lists every problem
    of the edited config. The write is atomic and keeps the file's mode.

    Comments survive, because the entry is appended as text; only a config
    whose folders are an inline array is re-rendered by tomli-w, which drops
    comments (a warning is logged then). OSError (no such file, permission
    denied) propagates unchanged.
    """
    config_path = Path(config_path)
    target = Path(os.path.realpath(config_path))  # write the file a symlink points to
    with _editing(target.parent):  # two edits at once: each sees the other's result
        return _add_folder(config_path, target, folder_path, destination, labels, category, extra)


@contextlib.contextmanager
def _editing(directory: Path) -> Iterator[None]:
    """An exclusive lock of the config's folder (its inode stays; the file's does not, since
    each edit replaces it) for one read-change-replace."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:  # a folder we may write but not read: no lock, the re-read check stays
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # NFS takes no exclusive lock on a descriptor opened read-only
            pass
        yield
    finally:
        os.close(fd)


def _add_folder(
    config_path: Path,
    target: Path,
    folder_path: str,
    destination: str,
    labels: Sequence[str],
    category: str | None,
    extra: dict[str, Any],
) -> list[str]:
    source = str(config_path)
    try:
        original = read_config(target)[0].decode("utf-8")  # a regular file, size-capped
    except UnicodeDecodeError as exc:
        raise ConfigError([Problem("", f"not valid UTF-8 (at byte {exc.start})")], source) from None
    try:
        doc = tomllib.loads(original)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([Problem("", f"invalid TOML: {exc}")], source) from None

    entry: dict[str, Any] = {"path": folder_path, "destination": destination}
    if labels:
        entry["labels"] = list(labels)
    if category is not None:
        entry["category"] = category
    entry.update({k: _toml_value(v) for k, v in extra.items() if v is not None})

    folders = doc.get("folders", [])
    expected = dict(doc)
    expected["folders"] = [*folders, entry] if isinstance(folders, list) else folders
    # Appending keeps the file as it is; check that TOML reads it back as intended
    # (it would not if the folders were an inline array).
    appended = original
    if appended and not appended.endswith("\n"):
        appended += "\n"
    appended += "\n" + _table("[[folders]]", entry)
    try:
        text = appended if _flat(entry) and tomllib.loads(appended) == expected else None
    except tomllib.TOMLDecodeError:
        text = None
    rewritten = text is None
    if text is None:
        text = render(expected)

    # Relative paths resolve like load() does: against the folder of the path as given.
    cfg = loads(text, base_dir=config_path.absolute().parent, source=source, resolve_secrets=False)
    if len(text.encode("utf-8")) > MAX_CONFIG_BYTES:
        raise ConfigError([Problem("", f"would grow past {MAX_CONFIG_BYTES // 1024} KiB, the limit")], source)
    if read_config(target)[0].decode("utf-8", "replace") != original:  # an editor saved meanwhile
        raise ConfigError([Problem("", "changed while syncd was editing it; run the command again")], source)
    durable.replace(target, text)
    notes = [str(w) for w in cfg.warnings]
    if rewritten and "#" in original:
        notes.append(f"{source}: rewritten by tomli-w; its comments were not preserved")
    return notes


def render(doc: Mapping[str, Any]) -> str:
    """TOML text for a config document, laid out like the example config.

    ``[daemon]``, then one ``[destinations.NAME]`` table each, then one
    ``[[folders]]`` table each (tomli-w alone writes a short folder list as
    an inline array, which a later append could not extend). A document
    that does not fit this layout is rendered by tomli-w as a whole. No
    comments, by nature.
    """
    daemon = doc.get("daemon", {})
    destinations = doc.get("destinations", {})
    folders = doc.get("folders", [])
    fits = (
        set(doc) <= {"daemon", "destinations", "folders"}
        and _flat(daemon)
        and isinstance(destinations, Mapping)
        and all(map(_flat, destinations.values()))
        and isinstance(folders, list)
        and all(map(_flat, folders))
    )
    if not fits:
        return tomli_w.dumps(doc)
    parts = [_table("[daemon]", daemon)] if "daemon" in doc else []
    parts += [_table(f"[{dotted('destinations', name)}]", table) for name, table in destinations.items()]
    parts += [_table("[[folders]]", table) for table in folders]
    return "\n".join(parts)


def _flat(table: Any) -> bool:
    """A table without sub-tables: it can be written as a header and key = value lines."""
    return isinstance(table, Mapping) and not any(
        isinstance(v, Mapping) or (isinstance(v, list) and any(isinstance(x, Mapping) for x in v))
        for v in table.values()
    )


def _table(header: str, table: Mapping[str, Any]) -> str:
    return f"{header}\n{tomli_w.dumps(table)}"


def _toml_value(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple | list):
        return [_toml_value(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _toml_value(v) for k, v in value.items()}
    return value


__all__ = ["add_folder", "render", "starter_config", "write_initial"]
