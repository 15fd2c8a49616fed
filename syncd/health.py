"""Health: the systemd watchdog, the STATUS= line, and what `syncd status` reads.

``WATCHDOG=1`` is sent from the main loop only, every quarter of
``WATCHDOG_USEC`` (:meth:`syncd.notify.Notifier.watchdog_interval`), and only
while :meth:`Health.healthy` passes and every stage progresses:

* the last tick of the main loop completed (a tick that raised makes it
  false until one works);
* the inotify observer threads are alive;
* the ledger takes a write (the ``heartbeat`` key). A ledger that is full
  is reported and pauses the uploads (syncd/backpressure.py), but does not
  stop the pings: a restart would not free any space;
* no stage is wedged (:mod:`syncd.liveness`: the main loop ticking, the
  scanner not stuck in one scan, no worker stuck in one step; the bounds
  are documented there). A wedged stage is logged once at ERROR level, and
  named at the head of the STATUS line.

So a wedged daemon stops pinging, and systemd (``WatchdogSec=``) restarts it.

The STATUS= line (:meth:`Health.status_line`) puts problems first (disk
full, folders missing, destinations down or paused, a refused reload, metrics
off, a wedged stage), then counts. The heartbeat (ledger kv ``daemon``,
:meth:`Health.write_heartbeat`) and the progress of the uploads in flight
(kv ``progress``, :meth:`Health.publish_progress`) are what `syncd status`
reads from another process.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable

from syncd.circuit import DOWN, UP
from syncd.failure_kinds import is_disk_full
from syncd.intake import IntakeStage
from syncd.ledger import Ledger, State
from syncd.liveness import Liveness
from syncd.notify import Notifier
from syncd.progress import KV_KEY as PROGRESS_KEY
from syncd.progress import ProgressMeter, snapshot
from syncd.runtime import Runtime
from syncd.watcher import Watcher

log = logging.getLogger("syncd.daemon")  # the daemon's lines keep one logger name

RECHECK = 0.25  # seconds between two health checks while one fails (no ping meanwhile)


class Health:
    def __init__(
        self,
        ledger: Ledger,
        *,
        notifier: Notifier,
        watcher: Watcher,
        runtime: Runtime,
        intake: IntakeStage,
        liveness: Liveness,
    ) -> None:
        self.ledger = ledger
        self.notifier = notifier
        self.watcher = watcher
        self.runtime = runtime
        self.uploader = runtime.uploader
        self.intake = intake
        self.liveness = liveness
        self.started_at = time.time()
        self.tick_error: BaseException | None = None  # the last tick's, until one works
        self.ledger_gone: str | None = None  # why the ledger file is no longer ours (exit 4)
        self.watchdog_every = notifier.watchdog_interval()
        self._due = 0.0  # CLOCK_MONOTONIC when the next WATCHDOG=1 (or health check) is due
        self._meter = ProgressMeter()
        self._progress_shown = False  # the last progress snapshot written listed uploads

    def ledger_lost(self, stop: Callable[[], None]) -> bool:
        """True when the ledger file was deleted or replaced under syncd (``rm``, a backup
        copied over it): whatever syncd recorded from then on would be in no ledger at
        the next start, so the first time it calls ``stop`` (a stop without a drain) and
        says how to go on. The same when an fsync of the ledger failed (EIO): its
        commits are durable no more."""
        if self.ledger_gone is not None:
            return True  # stopping already
        how = self.ledger.gone()
        if how is None:
            return False
        if how.startswith("could not be written"):
            self.ledger_gone = (
                f"the ledger {self.ledger.path} {how}; stopping, since what syncd records "
                "from now on may not survive a power loss, and nothing is moved or deleted "
                "on its word. Check the disk (the kernel log says what failed), then start "
                "syncd again: it goes on from what the ledger holds (uploads it did not keep "
                "are sent again)"
            )
        else:
            self.ledger_gone = (
                f"the ledger {self.ledger.path} {how} while syncd ran; stopping before more is "
                "recorded where no later start finds it. Restore the ledger from a backup "
                "(docs/operations.md, section 13), or start syncd again to begin a new one from "
                "the folders (files still in the inboxes are uploaded again)"
            )
        log.critical("%s", self.ledger_gone)
        self.notifier.status(f"stopping: the ledger {how}")
        stop()
        return True

    # the watchdog ------------------------------------------------------------

    def watchdog(self, now: float) -> None:
        """Ping systemd's watchdog when a ping is due and everything is healthy; when not
        healthy, look again RECHECK seconds later."""
        every = self.watchdog_every
        if not every or now < self._due:
            return
        if self.liveness.alive(now) and self.healthy():
            self.notifier.watchdog()
            self._due = now + every
        else:
            self._due = now + min(every, RECHECK)

    def until_ping(self, now: float, longest: float) -> float:
        """Seconds the main loop may sleep and still ping in time (at most ``longest``)."""
        if not self.watchdog_every:
            return longest
        return min(longest, max(0.01, self._due - now))

    def healthy(self) -> bool:
        """Loop ticking, observers alive, ledger writable (see the module docstring)."""
        if self.tick_error is not None:
            return False
        if self.runtime.watch and not self.watcher.observers_alive():
            return False
        try:
            self.ledger.put_meta("heartbeat", time.time())
        except sqlite3.Error as exc:
            if is_disk_full(exc):
                self.uploader.disk_full.note("ledger", exc)
                return True
            log.error("health check: the ledger does not take writes: %s", exc)
            return False
        return True

    # STATUS= and `syncd status` -------------------------------------------------

    def status_line(self) -> str:
        """The STATUS= line: problems first, then ``12 queued, 3 uploading, ...``."""
        counts = self.ledger.counts()
        parts = [f"{counts['queued'] + counts['retrying']} queued", f"{counts['uploading']} uploading"]
        parts.append(f"{self.ledger.done_today():,} done today")
        last = self.uploader.stats.last_upload
        if last is not None:
            parts.append(f"last upload {_ago(time.time() - last)}")
        if counts[State.FAILED]:
            parts.append(f"{counts[State.FAILED]:,} failed")
        return ", ".join(self.problems() + parts)

    def problems(self) -> list[str]:
        """What is wrong now, most urgent first: the start of the STATUS= line, and
        ``problems`` in the heartbeat (`syncd status` shows them with the ledger's counts)."""
        first: list[str] = []
        first.extend(self.uploader.disk_full.describe())
        first.extend(self.uploader.policy.shortages.describe())
        for root, problem in sorted(self.watcher.problems().items()):
            first.append(
                f"inbox {root} missing" if problem == "folder missing" else f"inbox {root}: {problem}"
            )
        for root, note in sorted(self.watcher.fallbacks().items()):
            first.append(f"inbox {root}: {note}")
        for name, state in sorted(self.uploader.destination_states().items()):
            if state.state == DOWN:
                first.append(f"destination {name} down since {_clock(state.since)}: {state.reason}")
            elif state.state != UP:
                first.append(f"destination {name} paused: {state.reason}")
        for root, why in sorted(self.uploader.procedure.after.stuck.problems().items()):
            if root in self.runtime.folders:  # not one a reload removed since
                first.append(f"uploaded files in {root} cannot be archived or deleted: {why}")
        for name, n in sorted(self.runtime.lost.items()):
            first.append(f"{n} file(s) wait for destination {name!r}, which the configuration no longer has")
        if self.runtime.reload_problem:
            first.append(f"reload failed, running the previous config: {self.runtime.reload_problem}")
        metrics = self.runtime.metrics
        if metrics.error:
            first.append(f"metrics off: {metrics.error}")
        hook = self.runtime.webhook_health()
        if hook is not None and hook["failing_since"] is not None:
            first.append(
                f"webhook failing since {_clock(hook['failing_since'])} "
                f"({hook['failed']:,} notification(s) given up since start)"
            )
        helpers = self.runtime.helpers_health()
        if helpers is not None and helpers["given_up"]:
            first.append("upload helpers keep failing to start; the workers send every file")
        first.extend(f"wedged: {stall}" for stall in self.liveness.stalls())
        return first

    def write_heartbeat(self, stopped: bool = False) -> None:
        """The ledger kv ``daemon`` that `syncd status` reads.

        Written every few seconds without an fsync of its own (the next durable commit, or
        the kernel's writeback, carries it): an idle daemon would otherwise force a journal
        commit of the disk every five seconds for a value no crash recovery reads. The last
        one, at stop, is durable."""
        uploader = self.uploader
        destinations = uploader.destination_states()
        metrics = self.runtime.metrics
        try:
            self.ledger.put_meta(
                "daemon",
                {
                    "pid": os.getpid(),
                    "started_at": self.started_at,
                    "heartbeat": time.time(),
                    "stopped": stopped,
                    "status": self.status_line(),
                    "problems": self.problems(),
                    "metrics": {"listen": metrics.listen, "error": metrics.error},
                    "webhook": self.runtime.webhook_health(),
                    "upload_helpers": self.runtime.helpers_health(),
                    "ignored": self.intake.ignored,
                    "folder_problems": self.watcher.problems(),
                    "disk_full": dict(uploader.disk_full.where),
                    "workers": self.runtime.cfg.daemon.workers,
                    "paused": {
                        name: state.reason for name, state in destinations.items() if state.state != UP
                    },
                    "destinations": {name: state.to_json() for name, state in destinations.items()},
                    "bandwidth": self._bandwidth(),
                    "uploaded": uploader.stats.uploaded,
                    "bytes": uploader.stats.bytes,
                },
                durable=stopped,
            )
        except sqlite3.Error as exc:
            if is_disk_full(exc):
                uploader.disk_full.note("ledger", exc)
            else:
                log.error("cannot write the heartbeat: %s", exc)

    def _bandwidth(self) -> dict[str, dict[str, object]]:
        """The bandwidth limit of each destination that has one, and the rate in force now."""
        bw = self.uploader.bandwidth
        return {
            name: {"limit": bw.limit(name).describe(), "rate": bw.rate(name)}
            for name in self.runtime.destinations
            if bw.limit(name).active
        }

    def publish_progress(self, *, final: bool = False) -> None:
        """Bytes sent, rate and ETA of each upload in flight, for `syncd status` (ledger kv
        ``progress``): only the rows in flight, at most once a second, without an fsync of
        its own; once more (empty) when the last upload ended. ``final``: at stop, with
        the rates begun afresh."""
        if final:
            self._meter = ProgressMeter()
        files = self._meter.update(self.uploader.progress(), time.time())
        if not files and not self._progress_shown:
            return
        try:
            self.ledger.put_meta(PROGRESS_KEY, snapshot(files, os.getpid()), durable=False)
        except sqlite3.Error as exc:  # not worth a wedge: the heartbeat reports the ledger
            log.debug("cannot write the upload progress: %s", exc)
            return
        self._progress_shown = bool(files)


def _clock(at: float | None) -> str:
    """``14:02:11`` (local time), for STATUS lines."""
    return "?" if at is None else time.strftime("%H:%M:%S", time.localtime(at))


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"
