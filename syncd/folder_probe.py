"""Whether a watched folder is usable: the check of folder health (syncd/watcher.py).

A folder is usable when it exists, is a directory, is reached through no
symlink put in since the config was loaded, holds its ``marker`` file when the
folder names one, and sits on the device it was first watched on. The watcher
checks every folder with :func:`probe` every few seconds; callers without a
watcher (``syncd once``) check one folder with it.
"""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING

from syncd import safefs
from syncd.logs import quoted_path

if TYPE_CHECKING:
    from syncd.config import FolderConfig


def probe(folder: FolderConfig, device: int | None = None) -> tuple[str | None, os.stat_result | None]:
    """``(problem, stat)`` of a watched folder; problem None means usable.

    ``device`` is the ``st_dev`` the folder is expected on (None: any).
    Problems read well after the folder's path: ``folder missing``, ``not a
    directory``, ``leads to '/srv/archive' through a symlink now ...`` (the path, resolved
    when the config was loaded, leads elsewhere now: a symlink at any
    component), ``marker file '.syncd-root' missing (not mounted?)``, ``on
    another device than before (unmounted?)``.
    """
    root = os.fspath(folder.path)
    try:
        st = os.stat(root)
    except FileNotFoundError:
        return "folder missing", None
    except OSError as exc:
        return f"folder unavailable ({exc.strerror or exc})", None
    if not stat.S_ISDIR(st.st_mode):
        return "not a directory", None
    why = relinked(root)  # (checked not to be inside another folder's archive, say)
    if why is not None:
        return why, None
    marker = getattr(folder, "marker", None)
    if marker and not os.path.lexists(os.path.join(root, marker)):
        return f"marker file {marker!r} missing (not mounted?)", st
    if device is not None and st.st_dev != device:
        return "on another device than before (unmounted?)", st
    return None, st


def relinked(path: str | os.PathLike[str]) -> str | None:
    """Why a folder whose path was resolved (and checked) when the configuration was
    loaded is not to be used now that it leads elsewhere (a symlink put in at any of its
    components since: where it leads, nothing checked), else None."""
    text = os.fspath(path)
    if safefs.without_symlinks(text):
        return None
    real = os.path.realpath(text)
    if real == text:
        return None
    return f"leads to {quoted_path(real)} through a symlink now; not followed (reload to check and use it)"
