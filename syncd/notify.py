"""systemd's notify protocol (sd_notify), through the sdnotify package.

Every call is a no-op when ``NOTIFY_SOCKET`` is not set, so the daemon runs
the same in a terminal, under systemd, and in tests (which bind a real
datagram socket and point ``NOTIFY_SOCKET`` at it).
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._notifier = None
        if self.enabled:
            import sdnotify

            self._notifier = sdnotify.SystemdNotifier()

    def send(self, *lines: str) -> None:
        if self._notifier is None:
            return
        try:
            self._notifier.notify("\n".join(lines))
        except Exception as exc:  # the notify socket must never take the daemon down
            log.debug("sd_notify failed: %s", exc)

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping")

    def reloading(self) -> None:
        self.send("RELOADING=1", "STATUS=reloading configuration")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def watchdog_interval(self) -> float | None:
        """Half of WATCHDOG_USEC in seconds (how often to ping), or None."""
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if not usec or (pid and pid != str(os.getpid())):
            return None
        try:
            return int(usec) / 2e6
        except ValueError:
            return None
