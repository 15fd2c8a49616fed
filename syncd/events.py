"""The :class:`Intake` buffer: paths that watchdog events reported, for the main loop.

The watchdog handler (syncd/event_handler.py) puts each path into it from
watchdog's emitter thread, and a new or moved-in directory (or a whole folder
whose events were lost) as a *scan request*; the daemon's main loop flushes
it into the ledger in batches (syncd/intake.py). This module imports no
watchdog: `syncd once` watches nothing, yet has an Intake.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class Intake:
    """Paths reported by events, waiting to be ledgered by the main loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._paths: dict[str, set[str]] = {}
        self._scans: dict[tuple[str, str], str] = {}  # (folder, reldir) -> why (the metric's reason)
        self.events = 0
        self.on_add: Callable[[], None] = lambda: None  # wakes the main loop

    def add(self, folder: str, relpath: str) -> None:
        with self._lock:
            self._paths.setdefault(folder, set()).add(relpath)
            self.events += 1
        self.on_add()

    def request_scan(self, folder: str, reldir: str, reason: str = "directory") -> None:
        with self._lock:
            self._scans.setdefault((folder, reldir), reason)
        self.on_add()

    def drain(self) -> tuple[dict[str, set[str]], dict[tuple[str, str], str]]:
        with self._lock:
            paths, scans = self._paths, self._scans
            self._paths, self._scans = {}, {}
        return paths, scans
