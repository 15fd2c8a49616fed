"""The daemon: wires the stages together and runs the main loop.

Threads:

* watchdog's observers (watcher.py) put paths into the :class:`Intake`;
* one scanner thread walks folders on request (startup, every
  ``rescan_seconds``, a folder re-armed, a directory moved in);
* ``workers`` uploader threads (uploader.py);
* the main thread runs :meth:`Daemon.tick` a few times a second: flush the
  intake into the ledger, settle, check folder health, finish archive moves
  that failed earlier, write the heartbeat, talk to systemd.

Startup reconciles ledger, inbox and archive before anything else (design
invariant 5): uploads interrupted by a crash are requeued with their resume
state, rows already ``uploaded`` have their archive move finished, half
copies left by a cross-device move are removed, and every folder is scanned
for files dropped while the daemon was down.

``once`` mode runs the same pipeline without watches and returns when every
file present at the start has reached a final state.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import sqlite3
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from syncd import archive, config as configmod, scanner
from syncd.destinations import REGISTRY
from syncd.destinations.base import Destination
from syncd.errors import ConfigError
from syncd.http import make_client
from syncd.ledger import Ledger
from syncd.lock import StateLock
from syncd.logs import qp
from syncd.notify import Notifier
from syncd.settle import Settler
from syncd.uploader import Uploader
from syncd.watcher import Intake, Watcher

log = logging.getLogger(__name__)

TICK = 0.25
HEALTH_EVERY = 2.0
HEARTBEAT_EVERY = 5.0
SWEEP_EVERY = 10.0
LEDGER_NAME = "ledger.sqlite3"

_PENDING = ("settling", "queued", "uploading", "retrying", "uploaded")


def ledger_path(cfg: configmod.Config) -> Path:
    return Path(cfg.daemon.state_dir) / LEDGER_NAME


def build_destinations(cfg: configmod.Config, client: httpx.Client) -> dict[str, Destination]:
    return {
        name: REGISTRY[dc.type](name, dc.options, client)  # type: ignore[call-arg]
        for name, dc in cfg.destinations.items()
    }


def build_client(cfg: configmod.Config) -> httpx.Client:
    d = cfg.daemon
    verify: bool | str = os.fspath(d.ca_bundle) if d.ca_bundle else d.tls_verify
    return make_client(connect=d.connect_timeout, read=d.io_timeout, write=d.io_timeout,
                       max_connections=max(8, d.workers * 2), verify=verify)


STOP_REQUESTED = threading.Event()


def early_signals() -> None:
    """Called first thing by `syncd run`: a SIGTERM during start-up stops cleanly."""
    def handler(signum: int, _frame: Any) -> None:
        STOP_REQUESTED.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


class Daemon:
    def __init__(self, cfg: configmod.Config, *, once: bool = False, watch: bool = True) -> None:
        self.cfg = cfg
        self.once = once
        self.watch = watch and not once
        self.notifier = Notifier()
        self.intake = Intake()
        self.watcher = Watcher(self.intake)
        self._stop = STOP_REQUESTED
        self._signals = 0
        self._reload = threading.Event()
        self._scan_queue: queue.Queue[tuple[str, str] | None] = queue.Queue()
        self._scans_pending = 0
        self._scan_lock = threading.Lock()
        self.started_at = time.time()
        self.ledger: Ledger | None = None
        self.client: httpx.Client | None = None
        self.destinations: dict[str, Destination] = {}
        self.folders: dict[str, Any] = {}
        self.uploader: Uploader | None = None
        self.settler: Settler | None = None
        self.failed_at_start = 0

    # ------------------------------------------------------------------ run

    def run(self) -> int:
        """Run until stopped (or, in once mode, until idle). Returns the exit code."""
        lock = StateLock(Path(self.cfg.daemon.state_dir))
        lock.acquire()
        try:
            self.ledger = Ledger.open(ledger_path(self.cfg))
            try:
                return self._run()
            finally:
                self.ledger.close()
        finally:
            lock.release()

    def _run(self) -> int:
        assert self.ledger is not None
        ledger = self.ledger
        self._apply(self.cfg)
        self.failed_at_start = ledger.counts()["failed"]
        self._install_signals()
        self._recover()
        scanner_thread = threading.Thread(target=self._scan_loop, name="scanner", daemon=True)
        scanner_thread.start()
        for root in self.folders:
            self.request_scan(root)
        assert self.uploader is not None
        self.uploader.start(self.cfg.daemon.workers)
        self.notifier.ready(self.status_line())
        log.info("syncd started: %d folder(s), %d destination(s), %d worker(s)%s",
                 len(self.folders), len(self.destinations), self.cfg.daemon.workers,
                 " (once)" if self.once else "")
        last = {"health": 0.0, "heartbeat": 0.0, "sweep": 0.0, "rescan": time.monotonic(),
                "watchdog": 0.0}
        watchdog_every = self.notifier.watchdog_interval()
        code = 0
        while not self._stop.is_set():
            now = time.monotonic()
            try:
                self.tick(now, last)
            except sqlite3.Error as exc:
                log.error("ledger error in the main loop: %s; retrying", exc)
                self.notifier.status(f"ledger error: {exc}")
            if self._reload.is_set():
                self._reload.clear()
                self.reload()
            if watchdog_every and now - last["watchdog"] >= watchdog_every and self.healthy():
                self.notifier.watchdog()
                last["watchdog"] = now
            if self.once and self._idle():
                break
            self._stop.wait(TICK)
        self.notifier.stopping()
        log.info("stopping: waiting up to %.0fs for uploads in flight", self.cfg.daemon.drain_seconds)
        self.watcher.stop()
        self._scan_queue.put(None)
        drained = self.uploader.stop(0 if self._signals > 1 else self.cfg.daemon.drain_seconds)
        if not drained:
            log.warning("uploads still in flight at exit resume at the next start")
        self._write_heartbeat(stopped=True)
        if self.client is not None:
            self.client.close()
        for dest in self.destinations.values():
            dest.close()
        if self.once:
            failed = ledger.counts()["failed"] - self.failed_at_start
            code = 1 if failed > 0 else 0
        log.info("syncd stopped")
        return code

    def tick(self, now: float, last: dict[str, float]) -> None:
        assert self.ledger is not None and self.settler is not None
        self._flush_intake()
        self.settler.tick()
        if now - last["health"] >= HEALTH_EVERY and self.watch:
            last["health"] = now
            for root in self.watcher.check_health():
                self.request_scan(root)
        if not self.once and now - last["rescan"] >= self.cfg.daemon.rescan_seconds:
            last["rescan"] = now
            log.debug("periodic rescan")
            for root in self.folders:
                self.request_scan(root)
        if now - last["sweep"] >= SWEEP_EVERY:
            last["sweep"] = now
            self._sweep()
        if now - last["heartbeat"] >= HEARTBEAT_EVERY:
            last["heartbeat"] = now
            self._write_heartbeat()
            self.notifier.status(self.status_line())

    # ------------------------------------------------------------- plumbing

    def _apply(self, cfg: configmod.Config) -> None:
        """Build or rebuild everything that depends on the config."""
        assert self.ledger is not None
        old_client, old_destinations = self.client, self.destinations
        self.client = build_client(cfg)
        self.destinations = build_destinations(cfg, self.client)
        self.folders = {os.fspath(f.path): f for f in cfg.folders}
        self.cfg = cfg
        if self.settler is None:
            self.settler = Settler(self.ledger, lambda: self.folders, on_queued=self._wake)
        if self.uploader is None:
            self.uploader = Uploader(self.ledger, lambda: self.destinations, lambda: self.folders,
                                     retry_base=cfg.daemon.retry_base_seconds,
                                     retry_max=cfg.daemon.retry_max_seconds)
        else:
            self.uploader.retry_base = cfg.daemon.retry_base_seconds
            self.uploader.retry_max = cfg.daemon.retry_max_seconds
            self.uploader.paused.clear()
            self.uploader.resize(cfg.daemon.workers)
        if self.watch:
            for root in self.watcher.set_folders(cfg.folders):
                self.request_scan(root)
        else:
            for root in self.folders:
                if not os.path.isdir(root):
                    log.error("folder %s does not exist", qp(root))
        if old_destinations:
            for dest in old_destinations.values():
                dest.close()
        if old_client is not None:
            # in-flight uploads keep their own reference; close once they are done
            threading.Timer(self.cfg.daemon.io_timeout * 2, old_client.close).start()

    def reload(self) -> None:
        """SIGHUP: validate the config file again and apply it, or keep the old one."""
        self.notifier.reloading()
        path = self.cfg.path
        try:
            new = configmod.load(path) if path is not None else self.cfg
        except ConfigError as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            self.notifier.ready(f"reload failed, running the previous config: {exc.problems[0]}")
            return
        if Path(new.daemon.state_dir) != Path(self.cfg.daemon.state_dir):
            log.error("reload: state_dir cannot change while running (restart syncd); "
                      "keeping the running configuration")
            self.notifier.ready("reload failed: state_dir changed")
            return
        self._apply(new)
        for root in self.folders:
            self.request_scan(root)
        log.info("configuration reloaded: %d folder(s), %d destination(s), %d worker(s)",
                 len(self.folders), len(self.destinations), new.daemon.workers)
        self.notifier.ready(self.status_line())

    def _recover(self) -> None:
        assert self.ledger is not None
        requeued = self.ledger.requeue_stale()
        if requeued:
            log.info("resuming %d upload(s) interrupted by the last stop", requeued)
        for folder in self.folders.values():
            for directory in (folder.archive_dir, folder.failed_dir):
                if directory is not None and os.path.isdir(directory):
                    removed = archive.clean_temp(os.fspath(directory))
                    if removed:
                        log.info("removed %d partial copies in %s", removed, qp(os.fspath(directory)))
        self._finish_uploaded()

    def _finish_uploaded(self) -> None:
        assert self.ledger is not None and self.uploader is not None
        busy = self.uploader.inflight_ids()
        for row in self.ledger.in_state("uploaded"):
            if row.id in busy:
                continue
            folder = self.folders.get(row.folder)
            if folder is None:
                continue
            try:
                archive.finish(self.ledger, row, folder)
            except OSError as exc:
                log.error("could not finish %s for %s: %s", folder.after_upload,
                          qp(row.inbox_path), exc.strerror or exc)

    def _sweep(self) -> None:
        """Repair what a failed ledger write or archive move may have left behind."""
        assert self.ledger is not None and self.uploader is not None
        self._finish_uploaded()
        busy = self.uploader.inflight_ids()
        for row in self.ledger.in_state("uploading"):
            if row.id not in busy:
                self.ledger.requeue_now(row.id, reason="interrupted")

    def _flush_intake(self) -> None:
        assert self.ledger is not None
        paths, scans = self.intake.drain()
        for root, rels in paths.items():
            folder = self.folders.get(root)
            if folder is None:
                continue
            rels_list = sorted(rels)
            for i in range(0, len(rels_list), scanner.BATCH):
                self.ledger.observe(root, rels_list[i:i + scanner.BATCH],
                                    destination=folder.destination, labels=folder.labels,
                                    category=folder.category)
        for root, rel in scans:
            self.request_scan(root, rel)

    def request_scan(self, root: str, rel: str = "") -> None:
        with self._scan_lock:
            self._scans_pending += 1
        self._scan_queue.put((root, rel))

    def _scan_loop(self) -> None:
        assert self.ledger is not None and self.settler is not None
        while True:
            item = self._scan_queue.get()
            if item is None:
                return
            root, rel = item
            try:
                folder = self.folders.get(root)
                if folder is None or not os.path.isdir(root):
                    continue
                started = time.monotonic()
                found = scanner.scan_folder(
                    self.ledger, folder, start=rel,
                    on_special=lambda r, m, root=root: self.settler.skip_special(root, r, m),  # type: ignore[misc, union-attr]
                )
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

    def _wake(self) -> None:
        if self.uploader is not None:
            self.uploader.wake()

    def _idle(self) -> bool:
        assert self.ledger is not None
        with self._scan_lock:
            if self._scans_pending:
                return False
        by_folder = self.ledger.counts_by_folder()
        for root in self.folders:
            counts = by_folder.get(root, {})
            if any(counts.get(state) for state in _PENDING):
                return False
        return True

    # --------------------------------------------------------------- health

    def healthy(self) -> bool:
        """For the systemd watchdog: loop ticking, ledger writable, observers alive."""
        if self.watch and not self.watcher.observers_alive():
            return False
        try:
            assert self.ledger is not None
            self.ledger.put_meta("heartbeat", time.time())
        except sqlite3.Error:
            return False
        return True

    def status_line(self) -> str:
        assert self.ledger is not None and self.uploader is not None
        counts = self.ledger.counts()
        parts = [f"{counts['queued'] + counts['retrying']} queued",
                 f"{counts['uploading']} uploading"]
        midnight = time.mktime(time.localtime()[:3] + (0, 0, 0, 0, 0, -1))
        parts.append(f"{self.ledger.done_since(midnight):,} done today")
        last = self.uploader.stats.last_upload
        if last is not None:
            parts.append(f"last upload {max(0, time.time() - last):.0f}s ago")
        problems = list(self.watcher.problems().items())
        if problems:
            root, problem = problems[0]
            parts.insert(0, f"{root}: {problem}")
        for name, (until, reason) in self.uploader.paused.items():
            if until > time.time():
                parts.insert(0, f"destination {name} paused: {reason}")
        if counts["failed"]:
            parts.append(f"{counts['failed']} failed")
        return ", ".join(parts)

    def _write_heartbeat(self, stopped: bool = False) -> None:
        if self.ledger is None or self.uploader is None:
            return
        try:
            self.ledger.put_meta("daemon", {
                "pid": os.getpid(),
                "started_at": self.started_at,
                "heartbeat": time.time(),
                "stopped": stopped,
                "status": self.status_line(),
                "folder_problems": self.watcher.problems(),
                "paused": {k: v[1] for k, v in self.uploader.paused.items() if v[0] > time.time()},
                "uploaded": self.uploader.stats.uploaded,
                "bytes": self.uploader.stats.bytes,
            })
        except sqlite3.Error as exc:
            log.error("cannot write the heartbeat: %s", exc)

    # -------------------------------------------------------------- signals

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGHUP, lambda *_: self._reload.set())

    def _on_stop_signal(self, signum: int, _frame: Any) -> None:
        self._signals += 1
        if self._signals > 1:
            log.warning("second stop signal: exiting without waiting for uploads")
            if self.uploader is not None:
                self.uploader.stop(0)
        self._stop.set()

    def stop(self) -> None:
        self._signals += 1
        self._stop.set()


def pending_counts(counts: Mapping[str, int]) -> int:
    return sum(counts.get(s, 0) for s in _PENDING)
