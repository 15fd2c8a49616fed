"""systemd's notify protocol (sd_notify), through the sdnotify package.

The protocol is one datagram of newline-separated ``KEY=VALUE`` lines sent
to the ``AF_UNIX`` socket named by ``$NOTIFY_SOCKET`` (a leading ``@`` means
the abstract namespace; sdnotify handles that). What syncd sends, and when:

``READY=1``
    once the ledger is open, the watches are set and the startup scan is
    queued; again after every reload, successful or refused.
``STATUS=...``
    a line an operator can read in ``systemctl status``: ``12 queued, 3
    uploading, 1,204 done today, last upload 4 s ago``, ``inbox /srv/x
    missing``, ``disk full, paused``.
``WATCHDOG=1``
    from the main loop only, while the health check passes and every stage
    progresses (:mod:`syncd.liveness`), every quarter of ``$WATCHDOG_USEC``
    (see :meth:`Notifier.watchdog_interval`).
``RELOADING=1``
    when a SIGHUP is being handled (with ``MONOTONIC_USEC``, which
    ``Type=notify-reload`` needs on systemd >= 253).
``STOPPING=1``
    as soon as a stop signal arrives, with ``EXTEND_TIMEOUT_USEC`` covering
    the drain so a long ``drain_seconds`` is not cut short by
    ``TimeoutStopSec=``.

Every call is a no-op when ``NOTIFY_SOCKET`` is not set, so the daemon runs
the same in a terminal, under systemd, and in tests (which bind a real
datagram socket and point ``NOTIFY_SOCKET`` at it). A failing socket never
takes the daemon down. Every line passes :func:`syncd.redact.redact`, so no
secret reaches ``systemctl status`` either.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from syncd.redact import redact

log = logging.getLogger(__name__)

STATUS_MAX = 400  # systemctl shows one line; keep datagrams small


class Notifier:
    """Sends sd_notify messages; see the module docstring for the protocol."""

    def __init__(self) -> None:
        env = os.environ  # sdnotify reads NOTIFY_SOCKET from the environment itself
        self.enabled = bool(env.get("NOTIFY_SOCKET"))
        self._watchdog_usec = env.get("WATCHDOG_USEC")
        self._watchdog_pid = env.get("WATCHDOG_PID")
        self._notifier: Any = None
        self.last_status: str | None = None
        if self.enabled:
            import sdnotify  # type: ignore[import-untyped]  # no py.typed, no stubs (typeshed has none)

            self._notifier = sdnotify.SystemdNotifier()
            if getattr(self._notifier, "socket", None) is None:
                log.warning(
                    "NOTIFY_SOCKET is set but cannot be connected to; systemd will not hear from syncd"
                )

    def send(self, *lines: str) -> None:
        """Send one datagram of ``lines`` (no-op without NOTIFY_SOCKET)."""
        if self._notifier is None:
            return
        try:
            self._notifier.notify("\n".join(redact(line) for line in lines))
        except Exception as exc:  # the notify socket must never take the daemon down
            log.debug("sd_notify failed: %s", exc)

    def close(self) -> None:
        """Close the notify socket; later messages are no-ops. Safe to call more than once."""
        notifier, self._notifier = self._notifier, None
        sock = getattr(notifier, "socket", None)
        if sock is not None:
            sock.close()

    @staticmethod
    def _status(text: str) -> str:
        text = " ".join(text.split())  # one line, whatever a reason contained
        if len(text) > STATUS_MAX:
            text = text[: STATUS_MAX - 3] + "..."
        return f"STATUS={text}"

    def ready(self, status: str) -> None:
        self.last_status = status
        self.send("READY=1", self._status(status))

    def status(self, status: str, *, only_if_changed: bool = False) -> None:
        if only_if_changed and status == self.last_status:
            return
        self.last_status = status
        self.send(self._status(status))

    def stopping(self, status: str = "stopping", extend_seconds: float | None = None) -> None:
        lines = ["STOPPING=1", self._status(status)]
        if extend_seconds is not None and extend_seconds > 0:
            lines.append(f"EXTEND_TIMEOUT_USEC={int(extend_seconds * 1e6)}")
        self.last_status = status
        self.send(*lines)

    def extend(self, status: str, seconds: float) -> None:
        """A start (or stop) that takes longer: ``status``, and ``seconds`` more before
        systemd's timeout (EXTEND_TIMEOUT_USEC)."""
        self.last_status = status
        self.send(self._status(status), f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}")

    def reloading(self) -> None:
        self.send(
            "RELOADING=1",
            f"MONOTONIC_USEC={time.monotonic_ns() // 1000}",
            self._status("reloading configuration"),
        )

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def watchdog_interval(self) -> float | None:
        """A quarter of WATCHDOG_USEC in seconds (how often to ping), or None when not asked.

        systemd asks for at least every half interval; a quarter leaves room
        for one slow tick (a batch of a large backlog) without a gap anywhere
        near the limit.

        ``WATCHDOG_PID``, when set, must be this process: a watchdog meant
        for a parent is not ours to feed.
        """
        usec, pid = self._watchdog_usec, self._watchdog_pid
        if not self.enabled or not usec or (pid and pid != str(os.getpid())):
            return None
        try:
            value = int(usec)
        except ValueError:
            return None
        return value / 4e6 if value > 0 else None
