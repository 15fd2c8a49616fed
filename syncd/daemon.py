"""The daemon: wires the stages together and runs the main loop.

Threads:

* watchdog's observers (watcher.py) put paths into the :class:`Intake`;
* one scanner thread walks folders on request (startup, every
  ``rescan_seconds``, a folder re-armed, a directory moved in);
* ``workers`` uploader threads (uploader.py);
* the main thread runs :meth:`Daemon.tick` a few times a second: flush the
  intake into the ledger, settle, check folder health, finish archive moves
  that failed earlier, write the heartbeat, talk to systemd, and (at most once
  a second, while uploads run) publish their progress for `syncd status`
  (ledger kv ``progress``, syncd/progress.py).

What `syncd status` reads besides the ledger's rows: the heartbeat (kv
``daemon``: problems, circuits, metrics endpoint, names the last scans
ignored) and the configuration last applied (kv ``config``: folder paths,
destination names and types, no secret), which lets `status` and `files` work
while the config file on disk is broken.

Startup reconciles ledger, inbox and archive before anything else (design
invariant 5): uploads interrupted by a crash are requeued with their resume
state, rows already ``uploaded`` have their archive move finished, half
copies left by a cross-device move are removed, and every folder is scanned
for files dropped while the daemon was down. A ledger whose write lock another
process holds is waited for (said once in the log) rather than fatal.

Under systemd (notify.py): ``READY=1`` after that; ``WATCHDOG=1`` from the
main loop only, when :meth:`Daemon.healthy` passes (the last tick
completed, the ledger takes a write, the observers are alive), so a wedged
daemon stops pinging and is restarted; ``STATUS=`` lines from
:meth:`Daemon.status_line`.

Signals. SIGHUP reloads (:meth:`Daemon.reload`): the new config is validated
completely and applied without a restart (folders watched and released,
workers resized, destinations and credentials rebuilt, metrics and logging
re-set), or refused with the reason in the log and STATUS while the old one
keeps running; either way the outcome is recorded in the ledger (kv
``reload``) for `syncd reload`, the unit's ``ExecReload=``, to wait on.
SIGTERM/SIGINT stop (:meth:`Daemon._shutdown`): no new work, uploads in
flight get ``drain_seconds`` to finish, then are interrupted and requeued
with their resume state; a second signal skips the wait. The ledger is
closed last and the exit code is 0.

A full disk (ledger or archive) pauses claiming new uploads; the main loop
probes with a real write every few seconds and resumes when it succeeds.
A destination that is down, refuses us or rate-limits us is held by its
circuit (circuit.py, in the uploader): STATUS says which one, since when and
why, and so does the heartbeat that `syncd status` reads (``destinations``).

``once`` mode runs the same pipeline without watches and returns when every
file present at the start has reached a final state.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import sqlite3
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from syncd import archive, failed, logs, moves, scanner, webhook
from syncd import config as configmod
from syncd.circuit import DOWN, REFUSED, UP, CircuitState
from syncd.destinations import REGISTRY
from syncd.destinations.base import Destination
from syncd.errors import ConfigError, Problem
from syncd.http import make_client, tls_context
from syncd.ledger import ACTIVE_STATES, Ledger
from syncd.lock import StateLock
from syncd.logs import qp
from syncd.metrics import Metrics
from syncd.notify import Notifier
from syncd.progress import KV_KEY as PROGRESS_KEY
from syncd.progress import PUBLISH_EVERY as PROGRESS_EVERY
from syncd.progress import ProgressMeter, snapshot
from syncd.redact import redact
from syncd.retry_policy import is_disk_full
from syncd.settle import Settler
from syncd.uploader import Uploader
from syncd.watcher import Intake, Watcher, probe
from syncd.webhook import Webhook

log = logging.getLogger(__name__)

TICK = 0.25
MIN_TICK = 0.02  # seconds between two ticks however often the loop is woken
HEALTH_EVERY = 2.0
HEARTBEAT_EVERY = 5.0
SWEEP_EVERY = 10.0
CANCEL_GRACE = 2.0  # after interrupting uploads, how long workers get to record it
STOP_MARGIN = 15.0  # asked of systemd beyond drain_seconds (EXTEND_TIMEOUT_USEC)
DISK_PROBE_BYTES = 64 * 1024
LEDGER_NAME = "ledger.sqlite3"
CONFIG_KEY = "config"  # ledger kv: what the config applied last names (`syncd status` on a broken one)
RELOAD_KEY = "reload"  # ledger kv: the last reload's outcome, which `syncd reload` waits for



def ledger_path(cfg: configmod.Config) -> Path:
    return Path(cfg.daemon.state_dir) / LEDGER_NAME


def build_destinations(cfg: configmod.Config, client: httpx.Client) -> dict[str, Destination]:
    return {
        name: REGISTRY[dc.type](name, dc.options, client)  # type: ignore[call-arg]
        for name, dc in cfg.destinations.items()
    }


def build_client(cfg: configmod.Config) -> httpx.Client:
    d = cfg.daemon
    verify: bool | ssl.SSLContext = False
    if d.tls_verify:
        verify = tls_context(os.fspath(d.ca_bundle) if d.ca_bundle else None)
    return make_client(connect=d.connect_timeout, read=d.io_timeout, write=d.io_timeout,
                       max_connections=max(8, d.workers * 2), verify=verify)


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
    def __init__(self, cfg: configmod.Config, *, once: bool = False, watch: bool = True) -> None:
        self.cfg = cfg
        self.once = once
        self.watch = watch and not once
        self.notifier = Notifier()
        self.metrics = Metrics()
        self.webhook: Webhook | None = None  # daemon.webhook_url (webhook.py)
        self.intake = Intake()
        self.watcher = Watcher(self.intake)
        self._stop = STOP_REQUESTED
        # set by anything the main loop should act on now rather than at the next tick:
        # a signal, an event, a scan or an upload finished
        self._nudge = threading.Event()
        self.intake.on_add = self._nudge.set
        self._hard_stop = threading.Event()
        self._signals = 0
        self._reload = RELOAD_REQUESTED
        self._reload_problem: str | None = None
        self._meter = ProgressMeter()
        self._progress_shown = False  # the last progress snapshot written listed uploads
        self.ignored: dict[str, dict[str, Any]] = {}  # root -> names its last full scan ignored
        self._reload_began = 0.0  # CLOCK_MONOTONIC when the last reload began
        self._tick_error: BaseException | None = None
        self._scan_queue: queue.Queue[tuple[str, str, str] | None] = queue.Queue()
        self._scans_pending = 0
        self._scan_lock = threading.Lock()
        self.started_at = time.time()
        self.ledger: Ledger | None = None
        self.client: httpx.Client | None = None
        self.destinations: dict[str, Destination] = {}
        self.folders: dict[str, Any] = {}
        self.uploader: Uploader | None = None
        self.settler: Settler | None = None
        self.failed_at_start = self.done_at_start = 0
        self.final_counts: dict[str, int] = {}
        self.held_back = 0  # once mode: files left waiting for a destination that is down

    # ------------------------------------------------------------------ run

    def run(self) -> int:
        """Run until stopped (or, in once mode, until idle). Returns the exit code."""
        lock = StateLock(Path(self.cfg.daemon.state_dir))
        lock.acquire()
        try:
            self.ledger = Ledger.open(ledger_path(self.cfg))
            try:
                if not self._wait_for_ledger():
                    return 0  # stopped while waiting; nothing was started
                return self._run()
            finally:
                self.ledger.close()
        finally:
            lock.release()

    def _run(self) -> int:
        assert self.ledger is not None
        ledger = self.ledger
        self.metrics.track_ledger(ledger.counts_by_folder)
        self.metrics.track_backlog(ledger.next_due)
        self._apply(self.cfg)
        assert self.uploader is not None
        self.metrics.track_destinations(self.uploader.destination_states)
        self.metrics.track_progress(self.uploader.progress)
        at_start = ledger.counts()
        self.failed_at_start, self.done_at_start = at_start["failed"], at_start["done"]
        self._install_signals()
        self._recover()
        scanner_thread = threading.Thread(target=self._scan_loop, name="scanner", daemon=True)
        scanner_thread.start()
        for root in self.folders:
            self.request_scan(root, reason="startup")
        assert self.uploader is not None
        self.uploader.start(self.cfg.daemon.workers)
        self.notifier.ready(self.status_line())
        log.info("syncd started: %d folder(s), %d destination(s), %d worker(s)%s",
                 len(self.folders), len(self.destinations), self.cfg.daemon.workers,
                 " (once)" if self.once else "")
        last = {"health": 0.0, "heartbeat": 0.0, "sweep": 0.0, "rescan": time.monotonic(),
                "watchdog": 0.0, "progress": 0.0}
        watchdog_every = self.notifier.watchdog_interval()
        while not self._stop.is_set():
            now = time.monotonic()
            self._tick_safely(now, last)
            if self._reload.is_set():
                self._reload.clear()
                self.reload()
            if watchdog_every and now - last["watchdog"] >= watchdog_every and self.healthy():
                self.notifier.watchdog()
                last["watchdog"] = now
            if self.once and self._idle():
                break
            wait = self._until_settle_due(TICK)
            if watchdog_every:  # wake in time for the next ping
                wait = min(wait, max(0.01, last["watchdog"] + watchdog_every - time.monotonic()))
            self._nudge.wait(wait)
            self._nudge.clear()
            # a burst of events wakes the loop often; a tick at most every MIN_TICK keeps
            # the main thread's share bounded (each tick judges the settling rows)
            spent = time.monotonic() - now
            if spent < MIN_TICK and not self._stop.is_set():
                self._stop.wait(MIN_TICK - spent)
        self._shutdown(last, watchdog_every)
        code = 0
        if self.once:
            counts = ledger.counts()
            failed = counts["failed"] - self.failed_at_start
            self.final_counts = {"done": counts["done"] - self.done_at_start, "failed": failed}
            code = 1 if failed > 0 or self.held_back else 0
        log.info("syncd stopped")
        return code

    def _wait_for_ledger(self) -> bool:
        """Wait while another process holds the ledger's write lock; False if stopped meanwhile.

        Each try waits the busy timeout (10 s); a lock held longer than that
        must not kill the daemon at start (Restart= would only loop).
        """
        assert self.ledger is not None
        said = False
        while not self._stop.is_set():
            try:
                self.ledger.put_meta("heartbeat", time.time())
                if said:
                    log.info("the ledger is free again; starting")
                return True
            except sqlite3.OperationalError as exc:
                if is_disk_full(exc):
                    return True  # reported and paused by the running daemon
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                if not said:
                    log.warning("the ledger is locked by another process (%s); waiting for it "
                                "before starting", exc)
                    self.notifier.status("waiting for the ledger (locked by another process)")
                    said = True
        return False

    def _shutdown(self, last: dict[str, float], watchdog_every: float | None) -> None:
        """Stop taking work, let uploads drain, interrupt the rest, release everything."""
        assert self.uploader is not None
        uploader = self.uploader
        drain = 0.0 if self._hard_stop.is_set() else self.cfg.daemon.drain_seconds
        running = len(uploader.inflight_ids())
        status = (f"stopping: {running} upload(s) finishing (up to {drain:g} s)" if running
                  else "stopping")
        self.notifier.stopping(status, extend_seconds=drain + STOP_MARGIN)
        if running:
            log.info("stopping: taking no new uploads; waiting up to %gs for %d upload(s) in "
                     "flight", drain, running)
        else:
            log.info("stopping: no uploads in flight")
        self.watcher.stop()
        self._scan_queue.put(None)
        uploader.stop_claiming()
        deadline = time.monotonic() + drain
        while uploader.busy() and not self._hard_stop.is_set() and time.monotonic() < deadline:
            now = time.monotonic()
            if watchdog_every and now - last["watchdog"] >= watchdog_every and self.healthy():
                self.notifier.watchdog()
                last["watchdog"] = now
            self._hard_stop.wait(0.05)
        if uploader.busy():
            why = ("second stop signal" if self._hard_stop.is_set()
                   else f"drain time ({drain:g}s) is up")
            log.warning("%s: interrupting %d upload(s); they go back to the queue and resume "
                        "from their last confirmed part at the next start", why,
                        len(uploader.inflight_ids()))
            uploader.cancel()
            if self.client is not None:
                self.client.close()  # requests not yet sent fail at once
            if not uploader.join(CANCEL_GRACE):
                stuck = uploader.abandon_inflight()
                log.warning("%d upload(s) did not stop in %gs; requeued them (%s)", len(stuck),
                            CANCEL_GRACE, ", ".join(f"#{i}" for i in stuck) or "none left")
        elif running:
            log.info("uploads in flight finished")
        self._meter = ProgressMeter()
        self._publish_progress()  # nothing in flight any more
        self._write_heartbeat(stopped=True)
        self.metrics.stop()
        if self.webhook is not None:  # what is still queued gets one try
            self.webhook.close()
        if self.client is not None:
            self.client.close()
        for dest in self.destinations.values():
            dest.close()

    def _tick_safely(self, now: float, last: dict[str, float]) -> None:
        """One tick; a failure is logged and makes :meth:`healthy` false until a tick works."""
        assert self.uploader is not None
        uploader = self.uploader
        try:
            self.tick(now, last)
        except sqlite3.Error as exc:
            if is_disk_full(exc):
                uploader.note_disk_full("ledger", exc)
                self._tick_error = None  # a known condition, reported; not a wedge
                return
            if self._tick_error is None:
                log.error("ledger error in the main loop: %s; retrying", exc)
            self._tick_error = exc
            self.notifier.status(f"ledger error: {exc}", only_if_changed=True)
            return
        except Exception as exc:
            if self._tick_error is None:  # once per streak, not four times a second
                log.exception("error in the main loop; retrying")
            self._tick_error = exc
            return
        self._tick_error = None

    def tick(self, now: float, last: dict[str, float]) -> None:
        assert self.ledger is not None and self.settler is not None
        assert self.uploader is not None
        self._flush_intake()
        self.settler.tick()
        if now - last["health"] >= HEALTH_EVERY:
            last["health"] = now
            if self.watch:
                for root in self.watcher.check_health():
                    self.request_scan(root, reason="rearmed")
                problems = self.watcher.problems()
                self.metrics.set_folders({root: root not in problems for root in self.folders})
            if self.uploader.disk_full:
                self._probe_disk()
            line = self.status_line()
            if line != self.notifier.last_status:  # tell systemd and `syncd status` at once
                self.notifier.status(line)
                self._write_heartbeat()
        if not self.once and now - last["rescan"] >= self.cfg.daemon.rescan_seconds:
            last["rescan"] = now
            log.debug("periodic rescan")
            for root in self.folders:
                self.request_scan(root, reason="periodic")
        if now - last["sweep"] >= SWEEP_EVERY:
            last["sweep"] = now
            self._sweep()
        if now - last["heartbeat"] >= HEARTBEAT_EVERY:
            last["heartbeat"] = now
            self._write_heartbeat()
            self.notifier.status(self.status_line())
        if now - last.get("progress", 0.0) >= PROGRESS_EVERY:
            last["progress"] = now
            self._publish_progress()

    def _publish_progress(self) -> None:
        """Bytes sent, rate and ETA of each upload in flight, for `syncd status` (ledger kv
        ``progress``): only the rows in flight, at most once a second, without an fsync of
        its own; once more (empty) when the last upload ended."""
        assert self.ledger is not None and self.uploader is not None
        files = self._meter.update(self.uploader.progress(), time.time())
        if not files and not self._progress_shown:
            return
        try:
            self.ledger.put_meta(PROGRESS_KEY, snapshot(files, os.getpid()), durable=False)
        except sqlite3.Error as exc:  # not worth a wedge: the heartbeat reports the ledger
            log.debug("cannot write the upload progress: %s", exc)
            return
        self._progress_shown = bool(files)

    # ------------------------------------------------------------- plumbing

    def _apply(self, cfg: configmod.Config) -> None:
        """Build or rebuild everything that depends on the config.

        New clients and destinations are built first, so a failure there
        leaves the running configuration untouched.
        """
        assert self.ledger is not None
        client = build_client(cfg)
        try:
            destinations = build_destinations(cfg, client)
        except Exception:
            client.close()
            raise
        old_client, old_destinations = self.client, self.destinations
        old_cfg = self.cfg
        self.client, self.destinations = client, destinations
        for root in set(self.folders) - {os.fspath(f.path) for f in cfg.folders}:
            self.metrics.forget_folder(root)
        self.folders = {os.fspath(f.path): f for f in cfg.folders}
        self.cfg = cfg
        if self.settler is None:
            self.settler = Settler(self.ledger, self._usable_folders, on_queued=self._wake)
        if self.uploader is None:
            self.uploader = Uploader(self.ledger, lambda: self.destinations, lambda: self.folders,
                                     retry_base=cfg.daemon.retry_base_seconds,
                                     retry_max=cfg.daemon.retry_max_seconds,
                                     folder_problem=self.folder_problem, metrics=self.metrics)
            if self.once:  # `once` ends as soon as the last file is handled
                self.uploader.on_done = self._nudge.set
        else:
            self.uploader.set_retry(cfg.daemon.retry_base_seconds, cfg.daemon.retry_max_seconds)
            # A destination whose table changed (or that refused us: new credentials
            # deserve a new try) starts afresh; one that is down stays down until probed.
            states = self.uploader.destination_states()
            self.uploader.reset_circuits([
                name for name in list(self.uploader.circuits)
                if old_cfg.destinations.get(name) != cfg.destinations.get(name)
                or states.get(name, CircuitState()).state == REFUSED])
            self.uploader.resize(cfg.daemon.workers)
        self.metrics.workers.set(cfg.daemon.workers)
        self.uploader.bandwidth.configure({n: d.bandwidth for n, d in cfg.destinations.items()})
        self.webhook = self.uploader.webhook = webhook.update(self.webhook, cfg.daemon)
        if self.watch:
            self.watcher.set_folders(cfg.folders)
        else:
            for root, folder in self.folders.items():
                problem = probe(folder)[0]
                if problem is not None:
                    log.error("folder %s: %s; skipping it", qp(root), problem)
        if not self.once:
            self.metrics.serve(cfg.daemon.metrics_listen)
        if old_cfg is not cfg and (old_cfg.daemon.log_level, old_cfg.daemon.log_format) != \
                (cfg.daemon.log_level, cfg.daemon.log_format):
            logs.setup(cfg.daemon.log_level, cfg.daemon.log_format)
        if old_destinations:
            for dest in old_destinations.values():
                dest.close()
        if old_client is not None:
            # in-flight uploads keep their own reference; close once they are done
            timer = threading.Timer(old_cfg.daemon.io_timeout * 2, old_client.close)
            timer.daemon = True
            timer.start()
        self._record_config(cfg)

    def _record_config(self, cfg: configmod.Config) -> None:
        """Note in the ledger what the applied config names (paths, names, types; never
        a secret or a URL), so `syncd status` and `syncd files` can still show the folders
        when the file on disk is broken (a refused reload)."""
        assert self.ledger is not None
        record = {
            "path": None if cfg.path is None else os.fspath(cfg.path),
            "state_dir": os.fspath(cfg.daemon.state_dir),
            "applied_at": time.time(),
            "destinations": {name: dc.type for name, dc in cfg.destinations.items()},
            "folders": [{"path": os.fspath(f.path), "destination": f.destination,
                         "labels": list(f.labels), "category": f.category,
                         "archive_dir": None if f.archive_dir is None else os.fspath(f.archive_dir),
                         "failed_dir": None if f.failed_dir is None else os.fspath(f.failed_dir)}
                        for f in cfg.folders],
        }
        try:
            self.ledger.put_meta(CONFIG_KEY, record)
        except sqlite3.Error as exc:
            log.warning("cannot record the applied configuration in the ledger: %s", exc)

    def reload(self) -> None:
        """SIGHUP: validate the config file again and apply it, or keep the old one."""
        self._reload_began = time.monotonic()  # before the file is read (syncd/systemd.py)
        self.notifier.reloading()
        path = self.cfg.path
        log.info("reloading the configuration from %s", path)
        try:
            new = configmod.load(path) if path is not None else self.cfg
            if Path(new.daemon.state_dir) != Path(self.cfg.daemon.state_dir):
                raise ConfigError([Problem(
                    "daemon.state_dir", "cannot change while syncd runs; restart syncd")],
                    str(path))
            self._apply(new)
        except ConfigError as exc:
            self._refuse_reload(str(exc.problems[0]), str(exc))
            return
        except Exception as exc:
            log.exception("reload failed")
            self._refuse_reload(f"{type(exc).__name__}: {exc}", str(exc))
            return
        self._reload_problem = None
        for w in new.warnings:
            log.warning("config: %s", w)
        for root in self.folders:
            self.request_scan(root, reason="reload")
        log.info("configuration reloaded: %d folder(s), %d destination(s), %d worker(s)",
                 len(self.folders), len(self.destinations), new.daemon.workers)
        self.notifier.ready(self.status_line())
        self._record_reload(None)

    def _refuse_reload(self, first: str, full: str) -> None:
        log.error("reload refused, still running the previous configuration: %s", full)
        self._reload_problem = first
        self.notifier.ready(self.status_line())
        self._record_reload(first)

    def _record_reload(self, problem: str | None) -> None:
        """The reload's outcome, for `syncd reload` (the unit's ExecReload=) to wait on:
        ``began`` is CLOCK_MONOTONIC when this reload started reading the file."""
        if self.ledger is None:
            return
        try:
            self.ledger.put_meta(RELOAD_KEY, {
                "pid": os.getpid(), "began": self._reload_began,
                "at": time.time(), "ok": problem is None,
                "problem": None if problem is None else logs.printable(redact(problem)),
            })
        except sqlite3.Error as exc:
            log.error("cannot record the outcome of the reload: %s", exc)

    def _recover(self) -> None:
        assert self.ledger is not None
        moved = failed.finish_interrupted_failures(self.ledger, self.folders)
        if moved:
            log.info("finished %d move(s) to a failed folder interrupted by the last stop", moved)
        requeued = self.ledger.requeue_stale()
        if requeued:
            log.info("resuming %d upload(s) interrupted by the last stop", requeued)
        for folder in self.folders.values():
            for directory in (folder.archive_dir, folder.failed_dir):
                if directory is not None and os.path.isdir(directory):
                    removed = moves.clean_temp(os.fspath(directory))
                    if removed:
                        log.info("removed %d partial copies in %s", removed,
                                 qp(os.fspath(directory)))
        self._finish_uploaded()

    def _finish_uploaded(self) -> bool:
        """Finish after_upload for rows left ``uploaded``; True if a disk was full."""
        assert self.ledger is not None and self.uploader is not None
        busy = self.uploader.inflight_ids()
        full = False
        for row in self.ledger.in_state("uploaded"):
            if row.id in busy:
                continue
            folder = self.folders.get(row.folder)
            if folder is None:
                continue
            try:
                archive.finish(self.ledger, row, folder)
            except OSError as exc:
                known = "archive" in self.uploader.disk_full
                if is_disk_full(exc):
                    self.uploader.note_disk_full("archive", exc)
                    full = True
                log.log(logging.DEBUG if full and known else logging.ERROR,
                        "could not finish %s for %s: %s", folder.after_upload,
                        qp(row.inbox_path), exc.strerror or exc)
                continue
            self.metrics.observe_done(row.first_seen, time.time())
        return full

    def _probe_disk(self) -> None:
        """Paused for a full disk: resume once the ledger and the archive take writes."""
        assert self.ledger is not None and self.uploader is not None
        try:
            self.ledger.put_meta("disk_probe", time.time())
        except sqlite3.Error as exc:
            if is_disk_full(exc):
                return
            raise
        if "archive" in self.uploader.disk_full:
            if self._finish_uploaded():
                return
            for folder in self.folders.values():
                if folder.archive_dir is not None and not _can_write(folder.archive_dir):
                    return
        self.uploader.disk_ok()
        for root in self.folders:  # events may have been dropped while the ledger was full
            self.request_scan(root, reason="disk-space")

    def _sweep(self) -> None:
        """Repair what a failed ledger write or archive move may have left behind."""
        assert self.ledger is not None and self.uploader is not None
        self._finish_uploaded()
        self.uploader.requeue_orphans()

    def _flush_intake(self) -> None:
        assert self.ledger is not None
        paths, scans = self.intake.drain()
        pending = [(root, sorted(rels)) for root, rels in paths.items()]
        try:
            while pending:
                root, rels = pending[0]
                folder = self.folders.get(root)
                if folder is None or not rels:
                    pending.pop(0)
                    continue
                self.ledger.observe(root, rels[:scanner.BATCH], destination=folder.destination,
                                    labels=folder.labels, category=folder.category)
                pending[0] = (root, rels[scanner.BATCH:])
        except BaseException as exc:
            # A busy, locked or full ledger must not lose what the events reported:
            # put back what was not recorded; the next tick tries again.
            for root, rels in pending:
                for rel in rels:
                    self.intake.add(root, rel)
            for root, rel in scans:
                self.intake.request_scan(root, rel)
            if isinstance(exc, sqlite3.Error) and is_disk_full(exc) and self.uploader is not None:
                self.uploader.note_disk_full("ledger", exc)
                return  # reported and paused; the rest of the tick (health, STATUS) goes on
            raise
        for root, rel in scans:
            self.request_scan(root, rel, reason="directory")

    def request_scan(self, root: str, rel: str = "", *, reason: str = "periodic") -> None:
        with self._scan_lock:
            self._scans_pending += 1
        self._scan_queue.put((root, rel, reason))

    def _scan_loop(self) -> None:
        assert self.ledger is not None and self.settler is not None
        while True:
            item = self._scan_queue.get()
            if item is None:
                return
            root, rel, reason = item
            try:
                folder = self.folders.get(root)
                if folder is None or self.folder_problem(root) is not None:
                    continue  # reported by the health check; never scan an unmounted folder
                started = time.monotonic()
                ignored = scanner.Ignored()
                found = scanner.scan_folder(
                    self.ledger, folder, start=rel,
                    on_special=lambda r, m, root=root: self.settler.skip_special(root, r, m),  # type: ignore[misc]
                    ignored=ignored,
                )
                if not rel:  # a walk of the whole folder: what it ignored, for `syncd status`
                    self.ignored[root] = {"count": ignored.count, "examples": ignored.examples,
                                          "at": time.time()}
                self.metrics.observe_scan(root, reason, found)
                if found:
                    log.info("scan of %s found %d new file(s) in %.2fs",
                             qp(os.path.join(root, rel) if rel else root), found,
                             time.monotonic() - started)
            except sqlite3.Error as exc:
                log.error("ledger error during scan of %s: %s", qp(root), exc)
            except Exception:
                log.exception("scan of %s failed", qp(root))
            finally:
                with self._scan_lock:
                    self._scans_pending -= 1
                self._nudge.set()

    def _until_settle_due(self, longest: float) -> float:
        """Seconds until the next settling file is due a look (at most ``longest``)."""
        assert self.ledger is not None and self.settler is not None
        if self.settler.more:
            return 0.0  # the last tick left due rows behind: go on at once
        try:
            due = self.ledger.next_settle_due()
        except sqlite3.Error:
            return longest
        return longest if due is None else min(longest, max(0.0, due - time.time()))

    def _wake(self) -> None:
        if self.uploader is not None:
            self.uploader.wake()

    def _idle(self) -> bool:
        assert self.ledger is not None
        with self._scan_lock:
            if self._scans_pending:
                return False
        by_folder = self.ledger.counts_by_folder()
        held = self._held_destinations()
        waiting: dict[str, int] = {}
        for root, folder in self._usable_folders().items():
            counts = by_folder.get(root, {})
            active = sum(counts.get(state, 0) for state in ACTIVE_STATES)
            if not active:
                continue
            if folder.destination not in held or counts.get("uploading") or counts.get("uploaded"):
                return False
            waiting[folder.destination] = waiting.get(folder.destination, 0) + active
        for name, n in waiting.items():  # `once` does not wait out an outage: the next run goes on
            log.warning("destination %r is %s (%s): %d file(s) wait for the next run", name,
                        held[name].state, held[name].reason, n)
            self.held_back += n
        return True

    def _held_destinations(self) -> dict[str, Any]:
        """Destinations whose circuit is open (down or refusing), with their state."""
        assert self.uploader is not None
        return {name: st for name, st in self.uploader.destination_states().items()
                if st.state in ("down", "refused")}

    # --------------------------------------------------------------- health

    def folder_problem(self, root: str) -> str | None:
        """Why the folder ``root`` cannot be used right now (checked now), or None."""
        if self.watch:
            return self.watcher.problem(root)
        folder = self.folders.get(root)
        return "not configured" if folder is None else probe(folder)[0]

    def _usable_folders(self) -> dict[str, Any]:
        """The folders whose files may be judged now (settle skips the others).

        Checked afresh on every call (a stat or two per folder), so a share
        unmounted a moment ago does not make its settling files "vanished".
        """
        return {root: f for root, f in self.folders.items() if self.folder_problem(root) is None}

    def healthy(self) -> bool:
        """For the systemd watchdog: loop ticking, ledger writable, observers alive.

        A ledger that is full is reported and paused, not a reason to be
        restarted: that would not free any space.
        """
        assert self.ledger is not None and self.uploader is not None
        if self._tick_error is not None:
            return False
        if self.watch and not self.watcher.observers_alive():
            return False
        try:
            self.ledger.put_meta("heartbeat", time.time())
        except sqlite3.Error as exc:
            if is_disk_full(exc):
                self.uploader.note_disk_full("ledger", exc)
                return True
            log.error("health check: the ledger does not take writes: %s", exc)
            return False
        return True

    def status_line(self) -> str:
        """The STATUS= line: problems first, then ``12 queued, 3 uploading, ...``."""
        assert self.ledger is not None and self.uploader is not None
        counts = self.ledger.counts()
        parts = [f"{counts['queued'] + counts['retrying']} queued",
                 f"{counts['uploading']} uploading"]
        parts.append(f"{self.ledger.done_today():,} done today")
        last = self.uploader.stats.last_upload
        if last is not None:
            parts.append(f"last upload {_ago(time.time() - last)}")
        if counts["failed"]:
            parts.append(f"{counts['failed']:,} failed")
        return ", ".join(self.problems() + parts)

    def problems(self) -> list[str]:
        """What is wrong now, most urgent first: the start of the STATUS= line, and
        ``problems`` in the heartbeat (`syncd status` shows them with the ledger's counts)."""
        assert self.uploader is not None
        first: list[str] = []
        if self.uploader.disk_full:
            first.append(f"disk full, paused ({', '.join(sorted(self.uploader.disk_full))})")
        for root, problem in sorted(self.watcher.problems().items()):
            first.append(f"inbox {root} missing" if problem == "folder missing"
                         else f"inbox {root}: {problem}")
        for root, note in sorted(self.watcher.fallbacks().items()):
            first.append(f"inbox {root}: {note}")
        for name, state in sorted(self.uploader.destination_states().items()):
            if state.state == DOWN:
                first.append(f"destination {name} down since {_clock(state.since)}: "
                             f"{state.reason}")
            elif state.state != UP:
                first.append(f"destination {name} paused: {state.reason}")
        if self._reload_problem:
            first.append(f"reload failed, running the previous config: {self._reload_problem}")
        if self.metrics.error:
            first.append(f"metrics off: {self.metrics.error}")
        return first

    def _write_heartbeat(self, stopped: bool = False) -> None:
        if self.ledger is None or self.uploader is None:
            return
        destinations = self.uploader.destination_states()
        try:
            self.ledger.put_meta("daemon", {
                "pid": os.getpid(),
                "started_at": self.started_at,
                "heartbeat": time.time(),
                "stopped": stopped,
                "status": self.status_line(),
                "problems": self.problems(),
                "metrics": {"listen": self.metrics.listen, "error": self.metrics.error},
                "ignored": self.ignored,
                "folder_problems": self.watcher.problems(),
                "disk_full": dict(self.uploader.disk_full),
                "workers": self.cfg.daemon.workers,
                "paused": {name: state.reason for name, state in destinations.items()
                           if state.state != UP},
                "destinations": {name: state.to_json() for name, state in destinations.items()},
                "uploaded": self.uploader.stats.uploaded,
                "bytes": self.uploader.stats.bytes,
            })
        except sqlite3.Error as exc:
            if is_disk_full(exc):
                self.uploader.note_disk_full("ledger", exc)
            else:
                log.error("cannot write the heartbeat: %s", exc)

    # -------------------------------------------------------------- signals

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGHUP, self._on_reload_signal)

    def _on_reload_signal(self, signum: int, _frame: Any) -> None:
        self._reload.set()
        self._nudge.set()

    def _on_stop_signal(self, signum: int, _frame: Any) -> None:
        # Only flags here: the main thread does the work (and the logging).
        self._signals += 1
        if self._signals > 1:
            self._hard_stop.set()
        self._stop.set()
        self._nudge.set()

    def stop(self) -> None:
        self._signals += 1
        self._stop.set()
        self._nudge.set()


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


def _can_write(directory: Any) -> bool:
    """Whether ``directory`` takes a small write (a full-disk probe); False on ENOSPC."""
    try:
        return moves.can_write(os.fspath(directory), DISK_PROBE_BYTES)
    except OSError as exc:
        return not is_disk_full(exc)
