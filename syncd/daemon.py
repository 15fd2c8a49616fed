"""The daemon: the process around the pipeline, and the main loop that wires the stages.

The stages, each in its own module:

* intake.py: events (watcher.py) and scans (scanner.py, on the scanner
  thread) into the ledger as ``settling`` rows; settle.py judges them; the
  main loop's wake-ups;
* uploader.py: the pool of ``workers`` upload threads; upload_one.py, the
  upload of one file; retry_policy.py, what a failed attempt leads to;
  circuits.py, the destinations' circuits; backpressure.py, the pause while
  the disk is full;
* recovery.py: startup recovery, the sweep that repeats it, and the archiver
  thread that finishes uploaded files no worker holds;
* health.py: the systemd watchdog (with liveness.py), STATUS= and what
  `syncd status` reads (heartbeat, upload progress);
* runtime.py: what the config builds (folders, destinations, client, the
  pool, the webhook), and applying a reload;
* shutdown.py: stopping with a drain.

:class:`Daemon` is the process: the single-instance lock, the ledger (a full
disk under it, or a write lock another process holds, is waited for, said once,
systemd's start timeout extended), the signals and the exit code.
:class:`MainLoop` builds every stage, runs startup recovery, queues the
startup scan, starts the workers, says ``READY=1``, then ticks
whenever something wakes it, at least once a second: flush the intake and
settle, check folder health and probe a full disk every :data:`HEALTH_EVERY`
s, rescan every ``rescan_seconds``, sweep, write the heartbeat, publish
upload progress, apply a reload, ping the watchdog.

Signals. SIGHUP reloads (runtime.py), then ``READY=1`` with the new STATUS.
SIGTERM/SIGINT stop (shutdown.py): uploads in flight get ``drain_seconds``,
then are requeued with their resume state; a second signal skips the wait.

``once`` mode: the same pipeline without watches, until every file present at
the start is final (it does not wait out an outage, syncd/once.py).
"""

from __future__ import annotations

import logging
import signal
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from syncd import config as configmod
from syncd import descriptors, limits, once, shutdown, writers
from syncd.clock_steps import ClockSteps
from syncd.errors import LedgerError
from syncd.failure_kinds import is_disk_full, is_locked
from syncd.health import Health
from syncd.intake import IntakeStage
from syncd.ledger import Ledger, Row
from syncd.liveness import Liveness
from syncd.lock import StateLock
from syncd.metrics import Metrics
from syncd.metrics.unserved import Unserved
from syncd.notify import Notifier
from syncd.once import RETRY_WAIT as ONCE_WAIT
from syncd.progress import PUBLISH_EVERY as PROGRESS_EVERY
from syncd.recovery import SWEEP_EVERY, Recovery
from syncd.runtime import Runtime
from syncd.settle import Settler
from syncd.starting import open_ledger, wait_for_lock
from syncd.watcher import Intake, Watcher

log = logging.getLogger(__name__)

TICK = 1.0  # the longest the main loop sleeps (events, scans, uploads and signals wake it)
HEALTH_EVERY = 2.0
HEARTBEAT_EVERY = 5.0
LEDGER_NAME = "ledger.sqlite3"


def ledger_path(cfg: configmod.Config) -> Path:
    return Path(cfg.daemon.state_dir) / LEDGER_NAME


STOP_REQUESTED = threading.Event()
RELOAD_REQUESTED = threading.Event()


def early_signals() -> None:
    """Called first thing by `syncd run`: a SIGTERM during start-up stops cleanly,
    a SIGHUP is kept for when the daemon is up (its default action would kill)."""

    def handler(signum: int, _frame: Any) -> None:
        STOP_REQUESTED.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGHUP, lambda *_: RELOAD_REQUESTED.set())


class Daemon:
    """The process: lock, ledger, signals; runs a :class:`MainLoop` until stopped."""

    def __init__(
        self, cfg: configmod.Config, *, once: bool = False, watch: bool = True, once_wait: float = ONCE_WAIT
    ) -> None:
        self.cfg = cfg
        self.once = once
        self.watch = watch and not once
        self.notifier = Notifier()
        self.ledger: Ledger | None = None  # open while run() runs (`syncd once` reads counts)
        self.stop_requested = STOP_REQUESTED
        self.hard_stop = threading.Event()  # a second stop signal: no drain
        self.reload_requested = RELOAD_REQUESTED
        self.nudge = threading.Event()  # act now, not at the next tick (a signal, an event, ...)
        self._signals = 0
        self.final_counts: dict[str, int] = {}
        self.held_back = 0  # once mode: files left for the next run (syncd/once.py)
        self.unread = 0  # once mode: folders it could not read when scanned or at the end (once.unread)
        self.once_wait = once_wait  # once mode: the longest retry or rate limit waited for

    def run(self) -> int:
        """Run until stopped (or, in once mode, until idle). Returns the exit code."""
        limits.raise_nofile()  # systemd's soft limit is 1,024; syncd may use the hard one
        descriptors.warn(self.cfg, watch=self.watch)  # a limit still below what the config may hold
        lock = StateLock(Path(self.cfg.daemon.state_dir))
        lock.acquire()
        try:
            # a full disk under it, or another process's lock, is waited out (syncd/starting.py)
            ledger = self.ledger = open_ledger(
                ledger_path(self.cfg), self.stop_requested, self.notifier, self.once
            )
            if ledger is None:
                return 0  # stopped while waiting for room on the ledger's disk
            try:
                if not wait_for_lock(ledger, self.stop_requested, self.notifier):
                    return 0  # stopped while waiting; nothing was started
                return MainLoop(self, ledger).run()
            finally:
                ledger.close()
        finally:
            lock.release()
            self.notifier.close()

    def install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGHUP, self._on_reload_signal)
        writers.enable()  # ignores SIGIO, which a lease probe's break would send

    def _on_reload_signal(self, signum: int, _frame: Any) -> None:
        self.reload_requested.set()
        self.nudge.set()

    def _on_stop_signal(self, signum: int, _frame: Any) -> None:
        # Only flags here: the main thread does the work (and the logging).
        self._signals += 1
        if self._signals > 1:
            self.hard_stop.set()
        self.stop_requested.set()
        self.nudge.set()

    def stop(self) -> None:
        self._signals += 1
        self.stop_requested.set()
        self.nudge.set()

    def stop_now(self) -> None:
        """Stop without a drain (the ledger is lost: nothing more may be recorded there)."""
        self.hard_stop.set()
        self.stop()


class MainLoop:
    """Every stage, built once from the config and the open ledger, and the loop."""

    def __init__(self, daemon: Daemon, ledger: Ledger) -> None:
        self.daemon = daemon
        self.once = daemon.once
        self.ledger = ledger
        self.notifier = daemon.notifier
        self.metrics = Unserved() if self.once else Metrics()  # once: never served
        self.metrics.track_ledger(ledger.counts_by_folder)
        self.metrics.track_backlog(ledger.next_due)
        self.liveness = Liveness()
        intake = Intake()
        self.watcher = Watcher(intake)
        self.runtime = Runtime(
            daemon.cfg,
            ledger,
            watcher=self.watcher,
            metrics=self.metrics,
            liveness=self.liveness,
            once=daemon.once,
            watch=daemon.watch,
        )
        uploader = self.uploader = self.runtime.uploader
        self.watcher.shortages = uploader.policy.shortages  # said once with the uploads' (limits.py)
        uploader.on_done = self._handled
        self.metrics.track_destinations(uploader.destination_states)
        self.metrics.track_progress(uploader.progress)
        self.metrics.track_webhook(self.runtime.webhook_health)
        self.metrics.track_helpers(self.runtime.helpers_health)
        self.settler = Settler(
            ledger,
            self.runtime.usable_folders,
            on_queued=uploader.wake,
            steps=ClockSteps(),
            away=uploader.policy.away,
            shortages=uploader.policy.shortages,
        )
        self.intake = IntakeStage(
            ledger,
            intake,
            self.settler,
            folders=self._folders,
            folder_problem=self.runtime.folder_problem,
            disk_full=uploader.disk_full,
            metrics=self.metrics,
            liveness=self.liveness,
            nudge=daemon.nudge,
        )
        self.recovery = Recovery(ledger, self._folders, uploader)
        self.health = Health(
            ledger,
            notifier=self.notifier,
            watcher=self.watcher,
            runtime=self.runtime,
            intake=self.intake,
            liveness=self.liveness,
        )
        self.pulse = self.liveness.pulse("main loop", "main")

    def _folders(self) -> dict[str, Any]:
        return self.runtime.folders

    def run(self) -> int:
        daemon, runtime = self.daemon, self.runtime
        at_start = self.ledger.counts()
        daemon.install_signals()
        self.recovery.start(self.liveness, daemon.nudge.set)  # archives off the main loop
        self.recovery.at_start()
        runtime.reroute()  # after recovery: uploads it requeued may wait for a replaced destination
        self.intake.start_scanner()
        for root in runtime.folders:
            self.intake.request_scan(root, reason="startup")
        workers = runtime.cfg.daemon.workers
        self.uploader.resize(workers)
        self.notifier.ready(self.health.status_line())
        log.info(
            "syncd started: %d folder(s), %d destination(s), %d worker(s)%s",
            len(runtime.folders),
            len(runtime.destinations),
            workers,
            " (once)" if self.once else "",
        )
        last = {"health": 0.0, "heartbeat": 0.0, "sweep": 0.0, "rescan": time.monotonic(), "progress": 0.0}
        self.pulse.step("ticking")
        while not daemon.stop_requested.is_set():
            now = time.monotonic()
            self.tick_safely(now, last)
            if daemon.reload_requested.is_set():
                daemon.reload_requested.clear()
                self.reload()
            self.health.watchdog(now)
            if self.once and self._finished():
                break
            self.intake.sleep(now, self.health.until_ping(time.monotonic(), TICK), daemon.stop_requested)
        shutdown.drain(
            self.uploader,
            runtime,
            self.intake,
            self.health,
            self.pulse,
            self.notifier,
            self.watcher,
            daemon.hard_stop,
            self.recovery.stop,
        )
        code = 0
        if self.once:
            daemon.final_counts, daemon.held_back = once.outcome(self.ledger, at_start, runtime.folders)
            unread = self.intake.unread  # not read when its scan ran, even if back since
            daemon.unread = once.unread(runtime.folders, lambda r: runtime.folder_problem(r) or unread.get(r))
            code = 1 if daemon.final_counts["failed"] or daemon.held_back or daemon.unread else 0
        if self.health.ledger_gone is not None:
            raise LedgerError(self.health.ledger_gone)  # exit 4: the unit does not restart on it
        log.info("syncd stopped")
        return code

    def tick_safely(self, now: float, last: dict[str, float]) -> None:
        """One tick; a failure is logged and makes the health check fail until a tick works."""
        health = self.health
        try:
            self.tick(now, last)
        except sqlite3.Error as exc:
            if is_disk_full(exc):
                self.uploader.disk_full.note("ledger", exc)
                health.tick_error = None  # a known condition, reported; not a wedge
                self.pulse.beat()
                return
            who = self.ledger.held_by() if is_locked(exc) else ""
            if health.tick_error is None:
                log.error("ledger error in the main loop: %s%s; retrying", exc, who)
            health.tick_error = exc
            self.notifier.status(f"ledger error: {exc}{who}", only_if_changed=True)
            return
        except Exception as exc:
            if self.health.ledger_lost(self.daemon.stop_now):  # the cause: said once, no traceback
                return
            if health.tick_error is None:  # once per streak, not four times a second
                log.exception("error in the main loop; retrying")
            health.tick_error = exc
            return
        health.tick_error = None
        self.pulse.beat()

    def tick(self, now: float, last: dict[str, float]) -> None:
        self.intake.tick()
        runtime, health = self.runtime, self.health
        if now - last["health"] >= HEALTH_EVERY:
            last["health"] = now
            if runtime.watch:
                for root in self.watcher.check_health():
                    self.intake.request_scan(root, reason="rearmed")
                problems = self.watcher.problems()
                self.metrics.set_folders({root: root not in problems for root in runtime.folders})
            if self.uploader.disk_full:
                self.uploader.disk_full.probe(
                    self.ledger,
                    runtime.folders,
                    self.recovery.archive_full,
                    lambda root: self.intake.request_scan(root, reason="disk-space"),
                )
            self.liveness.alive(now)  # a wedged stage is logged even without a watchdog
            self.health.ledger_lost(self.daemon.stop_now)
            line = health.status_line()
            if line != self.notifier.last_status:  # tell systemd and `syncd status` at once
                self.notifier.status(line)
                health.write_heartbeat()
        if not self.once and now - last["rescan"] >= runtime.cfg.daemon.rescan_seconds:
            last["rescan"] = now
            log.debug("periodic rescan")
            for root in runtime.folders:
                self.intake.request_scan(root, reason="periodic")
        if now - last["sweep"] >= SWEEP_EVERY:
            last["sweep"] = now
            self.recovery.sweep()
            runtime.sweep()
            self.uploader.top_up()  # workers a thread limit kept from starting
        if now - last["heartbeat"] >= HEARTBEAT_EVERY:
            last["heartbeat"] = now
            health.write_heartbeat()
            self.notifier.status(health.status_line())
        if now - last["progress"] >= PROGRESS_EVERY:
            last["progress"] = now
            health.publish_progress()

    def reload(self) -> None:
        """SIGHUP: apply the config file again, or keep the old one (runtime.py)."""
        self.notifier.reloading()

        def announce(applied: bool) -> None:
            if applied:
                for root in self.runtime.folders:
                    self.intake.request_scan(root, reason="reload")
                descriptors.warn(self.runtime.cfg, watch=self.daemon.watch)  # more workers, say
            self.notifier.ready(self.health.status_line())
            # before `syncd reload` hears the outcome: `syncd status` says the same at once
            self.health.write_heartbeat()

        self.runtime.reload(announce)
        self.pulse.beat()

    def _handled(self, row: Row) -> None:
        """A worker is done with ``row`` (any outcome): another name of its file may go now,
        and `once` ends as soon as the last file is handled."""
        if self.settler.same_file.over(row.folder, row.inode) or self.once:
            self.daemon.nudge.set()

    def _finished(self) -> bool:
        """Once mode: nothing left to do now (what is left is counted at the end: once.outcome)."""
        if self.intake.scans_pending():
            return False
        left = once.left_for_next_run(
            self.ledger,
            self.uploader.destination_states(),
            self.runtime.usable_folders(),
            wait=self.daemon.once_wait,
            open_for_writing=self.settler.held_by_folder(),
            disk_full=self.uploader.disk_full,
            held_open=self.uploader.procedure.after.open_by_folder(),
        )
        return left is not None
