"""Per-file metadata beyond the folder's own: labels from the path, and a sidecar.

A folder's ``labels`` and ``category`` go with every file. Two folder keys
add per-file values, resolved by the uploader just before a file is sent
(:func:`resolve`), so a file retried from ``failed_dir`` picks up a sidecar
fixed there:

``labels_from_path = "{client}/{project}/**"``
    A pattern on the file's path relative to the folder (``/``-separated).
    Each part is one of:

    * ``{name}``: exactly one folder name, captured (a name is letters,
      digits and ``_``, not starting with a digit; each name at most once);
    * ``*``: exactly one name, not captured;
    * ``**``: any number of folder levels; at the end of the pattern, one or
      more (everything below), so ``{client}/**`` does not match a file
      lying directly in the folder;
    * literal text, which may contain placeholders (``client-{client}``,
      two placeholders need text between them).

    The last part matches the file name and may not capture: end the
    pattern with ``/**`` or ``/*``. The values captured are added to the
    file's labels in the order of the pattern (``acme/q3/a.pdf`` with the
    pattern above adds ``acme`` and ``q3``). A file whose path does not
    match, or whose captured folder name holds a control character, keeps
    the folder's labels. :func:`compile_pattern` validates a pattern
    (``ValueError`` with the reason; the config loader reports it).

``metadata_sidecar = true``
    ``NAME.meta.json`` beside ``NAME`` holds ``{"labels": [...],
    "category": "..."}`` (both optional; any other key is an error). Its
    labels are added and its category replaces the folder's. It is read
    through :mod:`syncd.safefs` (no symlink followed at any component, a
    regular file only, at most :data:`SIDECAR_MAX` bytes). A malformed one
    (not UTF-8, not JSON, wrong types, too large, not a regular file) raises
    :class:`SidecarError`; the uploader then fails the file with that reason
    and both go to ``failed_dir``. A sidecar is never uploaded on its own
    (:func:`is_sidecar`, used by :mod:`syncd.rules`); it is archived, deleted
    or moved to ``failed_dir`` together with its file (:mod:`syncd.archive`,
    :mod:`syncd.failed`).

Labels are the folder's, then the path's, then the sidecar's, each once.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from syncd import safefs
from syncd.path_patterns import CONTROL, path_labels
from syncd.path_patterns import PathPattern as PathPattern  # labels_from_path, re-exported
from syncd.path_patterns import compile_pattern as compile_pattern

if TYPE_CHECKING:
    from syncd.config import FolderConfig

SIDECAR_SUFFIX = ".meta.json"
SIDECAR_MAX = 64 * 1024  # bytes; a sidecar is a few labels
SIDECAR_PATIENCE = 600.0  # seconds from a file's sighting that a changing sidecar is waited for
MAX_LABELS = 64  # labels one sidecar may add
MAX_TEXT = 256  # characters of one label or category from a sidecar


class SidecarError(ValueError):
    """A sidecar that cannot be used; the message says why (for the failed file's reason)."""


# -- sidecars -------------------------------------------------------------------------------


def is_sidecar(relpath: str) -> bool:
    """Whether ``relpath`` names a metadata sidecar (``NAME.meta.json``, NAME not empty)."""
    name = relpath.rsplit("/", 1)[-1]
    return name.endswith(SIDECAR_SUFFIX) and len(name) > len(SIDECAR_SUFFIX)


def sidecar_path(path: str) -> str:
    """The sidecar of the data file at ``path`` (absolute or relative)."""
    return path + SIDECAR_SUFFIX


@dataclass(frozen=True)
class Sidecar:
    """A sidecar as read: where, what it says, and which file version it was."""

    path: str
    labels: tuple[str, ...]
    category: str | None
    size: int
    mtime_ns: int
    inode: int
    device: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "labels": list(self.labels),
            "category": self.category,
            "size": self.size,
            "mtime_ns": self.mtime_ns,
            "inode": self.inode,
            "device": self.device,
            "sha256": self.sha256,
        }


def waited_for(mtime_ns: int | None, folder: FolderConfig, first_seen: float, now: float) -> bool:
    """Whether a sidecar changed less than the folder's settle time ago and is still given
    time: one touched for good is taken as it is SIDECAR_PATIENCE after its file's sighting."""
    young = mtime_ns is not None and 0 <= now - mtime_ns / 1e9 < folder.settle_seconds
    return young and now - first_seen < SIDECAR_PATIENCE


def sidecar_mtime(path: str, roots: Sequence[str | os.PathLike[str] | None]) -> int | None:
    """The mtime of the sidecar at ``path`` (under one of ``roots``, never through a link), or
    None. syncd out of descriptors to look (EMFILE, ENFILE) raises: not known is not none."""
    try:
        root, rel = safefs.anchor(path, [*roots, os.path.dirname(path)])
        return safefs.lstat(root, rel).st_mtime_ns
    except OSError as exc:
        if exc.errno in safefs.SHORT:
            raise
        return None


def sidecar_stat(root: str, relpath: str) -> os.stat_result | None:
    """``lstat`` of the sidecar of the file ``relpath`` in the folder ``root``; None when
    there is none (or it is behind a symlink: the upload reports it). syncd out of
    descriptors to look (EMFILE, ENFILE) raises: not known is not none."""
    try:
        return safefs.lstat(root, sidecar_path(relpath))
    except OSError as exc:
        if exc.errno in safefs.SHORT:
            raise
        return None


def parse_sidecar(data: bytes) -> tuple[tuple[str, ...], str | None]:
    """``(labels, category)`` from a sidecar's bytes; SidecarError says what is wrong."""
    if len(data) > SIDECAR_MAX:
        raise SidecarError(f"larger than {SIDECAR_MAX // 1024} KiB")
    try:
        doc = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise SidecarError(f"not valid UTF-8 (at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise SidecarError(f"not valid JSON: {exc}") from None
    except RecursionError:
        raise SidecarError("nested too deeply") from None
    except ValueError as exc:  # an integer of more than 4,300 digits
        raise SidecarError(f"not usable JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise SidecarError(f'expected a JSON object {{"labels": [...], "category": "..."}}, got {_kind(doc)}')
    unknown = sorted(k for k in doc if k not in ("labels", "category"))
    if unknown:
        raise SidecarError(f"unknown key {unknown[0]!r} (valid: labels, category)")
    labels = doc.get("labels", [])
    if not isinstance(labels, list):
        raise SidecarError(f'"labels" must be an array of strings, got {_kind(labels)}')
    if len(labels) > MAX_LABELS:
        raise SidecarError(f'"labels" has {len(labels)} items; at most {MAX_LABELS}')
    for i, label in enumerate(labels):
        _check_text(label, f'"labels"[{i}]')
    category = doc.get("category")
    if category is not None:
        _check_text(category, '"category"')
    return tuple(dict.fromkeys(labels)), category


def _check_text(value: Any, where: str) -> None:
    if not isinstance(value, str):
        raise SidecarError(f"{where} must be a string, got {_kind(value)}")
    if not value.strip():
        raise SidecarError(f"{where} is empty")
    if len(value) > MAX_TEXT:
        raise SidecarError(f"{where} is longer than {MAX_TEXT} characters")
    if CONTROL.search(value):
        raise SidecarError(f"{where} contains a control character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise SidecarError(f"{where} is not valid Unicode (a lone surrogate)") from None


def _kind(value: object) -> str:
    kinds = {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "an object",
        type(None): "null",
    }
    return kinds.get(type(value), "something else")


def read_sidecar(path: str, roots: Sequence[str | os.PathLike[str] | None]) -> Sidecar | None:
    """The sidecar at ``path`` (under one of ``roots``), or None when there is none.

    Opened through :mod:`syncd.safefs` from the root's descriptor, never
    following a symlink; read up to :data:`SIDECAR_MAX` bytes plus one.
    Raises SidecarError for a malformed sidecar, one that is not a regular
    file or is reached through a symlink; PermissionError and other
    OSErrors propagate (the caller retries).
    """
    try:
        root, rel = safefs.anchor(path, [*roots, os.path.dirname(path)])
        fd = safefs.open_file(root, rel)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except safefs.UnsafePath:
        raise SidecarError("it is a symlink, or reached through one (never followed)") from None
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:  # a file named within 10 bytes of NAME_MAX has none
            return None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SidecarError("it is not a regular file")
        if st.st_size > SIDECAR_MAX:
            raise SidecarError(f"larger than {SIDECAR_MAX // 1024} KiB ({st.st_size} bytes)")
        chunks: list[bytes] = []
        pos = 0
        while pos <= SIDECAR_MAX:
            chunk = os.pread(fd, SIDECAR_MAX + 1 - pos, pos)
            if not chunk:
                break
            chunks.append(chunk)
            pos += len(chunk)
        data = b"".join(chunks)
    finally:
        os.close(fd)
    labels, category = parse_sidecar(data)
    return Sidecar(
        path=path,
        labels=labels,
        category=category,
        size=st.st_size,
        mtime_ns=st.st_mtime_ns,
        inode=st.st_ino,
        device=st.st_dev,
        sha256=hashlib.sha256(data).hexdigest(),
    )


# -- one file's metadata --------------------------------------------------------------------


@dataclass(frozen=True)
class Metadata:
    """What is sent with one file: labels, category, and the sidecar they came from."""

    labels: tuple[str, ...]
    category: str | None
    sidecar: Sidecar | None = None

    def to_json(self) -> dict[str, Any]:
        """The form stored in the ledger row's ``meta`` (the archive finds the sidecar there)."""
        return {
            "labels": list(self.labels),
            "category": self.category,
            "sidecar": self.sidecar.to_json() if self.sidecar is not None else None,
        }


def wanted(folder: FolderConfig) -> bool:
    """Whether ``folder`` adds per-file metadata (so :func:`resolve` has work to do)."""
    return bool(getattr(folder, "labels_from_path", None) or getattr(folder, "metadata_sidecar", False))


def resolve(
    folder: FolderConfig,
    relpath: str,
    data_path: str,
    labels: Sequence[str],
    category: str | None,
    roots: Sequence[str | os.PathLike[str] | None],
) -> Metadata:
    """The metadata of the file ``relpath`` (its bytes now at ``data_path``).

    ``labels``/``category`` are the row's (the folder's when it was seen).
    The sidecar is looked for beside ``data_path`` (the inbox, or failed_dir
    for a retried file). Raises SidecarError for a malformed sidecar.
    """
    out = list(labels)
    out += path_labels(getattr(folder, "labels_from_path", None), relpath)
    sidecar = None
    if getattr(folder, "metadata_sidecar", False):
        sidecar = read_sidecar(sidecar_path(data_path), roots)
        if sidecar is not None:
            out += sidecar.labels
            category = sidecar.category or category
    return Metadata(tuple(dict.fromkeys(out)), category, sidecar)


def sidecar_identity_matches(st: os.stat_result, info: dict[str, Any]) -> bool:
    """Whether ``st`` is the sidecar version recorded as ``info`` (:meth:`Sidecar.to_json`)."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) == (
        info.get("device"),
        info.get("inode"),
        info.get("size"),
        info.get("mtime_ns"),
    )
