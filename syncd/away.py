"""Folders that are away, as the stages that put files off for them saw it.

A folder is away while it is unmounted, missing, or no longer in the config.
The settle stage and the retry policy put the files of such a folder off for
minutes (:data:`syncd.settle.AWAY_LOOK`, :data:`syncd.file_waits.FOLDER_WAIT`)
instead of looking at them every second, and note the folder here. The settle
stage checks at each tick which noted folders are usable again and makes
their files due at once (:meth:`syncd.ledger.schedule.Schedule.folder_back`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable


class AwayFolders:
    """The noted folders; shared by the worker threads and the main loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._roots: set[str] = set()

    def note(self, root: str) -> bool:
        """Note ``root`` as away; True the first time (until it is back)."""
        with self._lock:
            if root in self._roots:
                return False
            self._roots.add(root)
            return True

    def back(self, usable: Iterable[str]) -> list[str]:
        """The noted folders that are among ``usable`` now, forgotten as they are returned."""
        with self._lock:
            found = self._roots.intersection(usable)
            self._roots -= found
            return sorted(found)
