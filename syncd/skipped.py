"""Paths skipped as not regular files (symlinks, FIFOs, sockets, devices), each said once.

The settle stage and the scanner skip such a path with one warning per run
(docs/guarantees.md, F15). The paths said are remembered to keep it at one;
a producer that keeps making links or FIFOs under new names and removing
them made that memory grow for as long as the daemon ran. Once
:data:`SKIPPED_MEMORY` paths are remembered, those no longer there are
forgotten (a name made again after that is said again); the bound then
doubles while more than half of them are still there, so the look at each is
paid once per that many new paths.
"""

from __future__ import annotations

import logging
import os
import stat

from syncd import rules, safefs
from syncd.logs import quoted_path

log = logging.getLogger("syncd.settle")  # the lines keep the settle stage's logger name

SKIPPED_MEMORY = 10_000  # paths remembered as said before those gone are forgotten


class Skipped:
    """The non-regular paths said to be skipped (the main loop and the scanner thread)."""

    def __init__(self) -> None:
        self._said: set[tuple[str, str]] = set()
        self._limit = SKIPPED_MEMORY

    def __len__(self) -> int:
        return len(self._said)

    def note(self, folder: str, relpath: str, mode: int) -> None:
        """Log, once per path, that a non-regular file is skipped."""
        key = (folder, relpath)
        if key in self._said:
            return
        if len(self._said) >= self._limit:
            self._forget_gone()
        self._said.add(key)
        log.warning(
            "skipping %s: it is a %s, not a regular file",
            quoted_path(os.path.join(folder, relpath)),
            rules.describe_mode(mode),
        )

    def _forget_gone(self) -> None:
        kept = {key for key in list(self._said) if _still_special(*key)}  # a copy: two threads add
        self._said = kept
        self._limit = max(SKIPPED_MEMORY, 2 * len(kept))


def _still_special(folder: str, relpath: str) -> bool:
    try:
        return not stat.S_ISREG(safefs.lstat(folder, relpath).st_mode)
    except safefs.UnsafePath:
        return True  # behind a symlinked directory: still skipped
    except OSError:
        return False
