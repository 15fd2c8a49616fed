"""The configuration in force, and everything built from it.

:class:`Runtime` holds the folders, the destinations and their shared
``httpx.Client`` (with the daemon's timeouts and TLS settings), the upload
worker pool (syncd/uploader.py), the upload helpers (syncd/offload.py) and
the webhook, and knows which folders are usable right now. It builds them at
start and, on SIGHUP, applies a reload (:meth:`Runtime.reload`): the new config is
validated and its clients and destinations built first (a failure changes nothing);
then folders are watched and released, workers resized,
destinations swapped (a changed one's retries due now), and the rest re-set. A
refused reload keeps the old config; its problem stays in STATUS until one succeeds.

Two ledger records come from here: what the applied config names
(:data:`CONFIG_KEY`: paths, destination names and types, never a secret or a
URL), so `syncd status` and `syncd files` work while the config file is
broken, and the last reload's outcome (:data:`RELOAD_KEY`), which `syncd
reload` (the unit's ``ExecReload=``) waits for.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from syncd import config as configmod
from syncd import folder_lock, limits, logs
from syncd.circuit import REFUSED, CircuitState
from syncd.destinations.base import Destination
from syncd.destinations.build import build_client, build_destinations, tls_verify
from syncd.errors import ConfigError, Problem
from syncd.folder_probe import probe
from syncd.ledger import ACTIVE_STATES, CONFIG_KEY, Ledger, State
from syncd.ledger.retention import PRUNED_STATES
from syncd.liveness import Bounds, Liveness
from syncd.metrics import Metrics
from syncd.offload import Offload
from syncd.redact import redact
from syncd.uploader import Uploader
from syncd.watcher import Watcher

if TYPE_CHECKING:
    from syncd.webhook import Webhook

log = logging.getLogger("syncd.daemon")  # the daemon's lines keep one logger name

RELOAD_KEY = "reload"  # ledger kv: the last reload's outcome, which `syncd reload` waits for
PRUNE_BATCH = 1000  # rows of each finished state looked at per sweep for keep_done_days


def build_webhook(current: Webhook | None, daemon: configmod.DaemonConfig) -> Webhook | None:
    """The webhook for ``daemon``: ``current`` reconfigured, a new one, or None
    (``current`` closed) when ``webhook_url`` is not set."""
    url = daemon.webhook_url
    if url is None or not url.reveal():
        if current is not None:
            current.close(0)
        return None
    verify = tls_verify(daemon)
    timeout = min(daemon.connect_timeout, daemon.io_timeout, 30.0)
    if current is None:
        from syncd.webhook import Webhook  # only where a webhook_url is set

        return Webhook(url, daemon.webhook_secret, verify=verify, timeout=timeout)
    current.configure(url, daemon.webhook_secret, verify=verify, timeout=timeout)
    return current


def _build(cfg: configmod.Config) -> tuple[httpx.Client, dict[str, Destination]]:
    client = build_client(cfg)
    try:
        return client, build_destinations(cfg, client)
    except BaseException:
        client.close()
        raise


class Runtime:
    """What the config in force built; see the module docstring."""

    def __init__(
        self,
        cfg: configmod.Config,
        ledger: Ledger,
        *,
        watcher: Watcher,
        metrics: Metrics,
        liveness: Liveness | None = None,
        once: bool = False,
        watch: bool = True,
    ) -> None:
        self.ledger = ledger
        self.watcher = watcher
        self.metrics = metrics
        self.liveness = liveness or Liveness()
        self.once = once
        self.watch = watch
        self.cfg = cfg
        self.client, self.destinations = _build(cfg)
        # clients of earlier configs, each with the uploads in flight when it was replaced
        self._retired: list[tuple[httpx.Client, set[int], float]] = []  # and when (monotonic)
        self.folders: dict[str, Any] = {os.fspath(f.path): f for f in cfg.folders}
        self.reload_problem: str | None = None  # the first problem of the last refused reload
        # files waiting per destination the config no longer has (a status problem)
        self.lost: dict[str, int] = {}
        self._prune_after: dict[State, int] = dict.fromkeys(PRUNED_STATES, 0)  # keep_done_days cursors
        self.webhook: Webhook | None = None  # daemon.webhook_url (webhook.py)
        self._locks = folder_lock.Locks()  # without a watcher (syncd/folder_lock.py)
        self.uploader = Uploader(
            ledger,
            lambda: self.destinations,
            lambda: self.folders,
            retry_base=cfg.daemon.retry_base_seconds,
            retry_max=cfg.daemon.retry_max_seconds,
            folder_problem=self.folder_problem,
            metrics=metrics,
            liveness=liveness,
        )
        self.offload = Offload(self.uploader.policy.shortages)  # said once with the uploads'
        self.uploader.procedure.offload = self.offload
        # out of descriptors: the idle pooled connections give theirs back (syncd/limits.py)
        self.uploader.policy.shortages.relief = lambda: limits.drop_idle(self.client)
        self._configure(cfg)

    def _configure(self, cfg: configmod.Config) -> None:
        """What every apply sets, at start and on reload."""
        self.liveness.bounds = Bounds.for_config(cfg.daemon)
        self.metrics.set_workers(cfg.daemon.workers)
        self.uploader.bandwidth.configure({n: d.bandwidth for n, d in cfg.destinations.items()})
        self.offload.configure(cfg)
        self.webhook = build_webhook(self.webhook, cfg.daemon)
        self.uploader.set_webhook(self.webhook)
        if self.watch:
            self.watcher.set_folders(cfg.folders)
        else:
            for root in self.folders:
                problem = self.folder_problem(root)
                if problem is not None:
                    log.error("folder %s: %s; skipping it", logs.quoted_path(root), problem)
        if not self.once:
            self.metrics.serve(cfg.daemon.metrics_listen)
        record_config(self.ledger, cfg)

    def reroute(self) -> None:
        """Files waiting for a destination the config no longer has go to the one whose
        ``replaces`` names it, or are said in the log; files still settling take their
        folder's destination, labels and category as configured now. At start (after
        recovery has requeued interrupted uploads) and after every reload."""
        self.repoint_replaced()
        for root, folder in self.folders.items():
            dest, labels, category = folder.destination, folder.labels, folder.category
            if n := self.ledger.retarget_settling(root, destination=dest, labels=labels, category=category):
                said = "%d settling file(s) of %s go to %r with the folder's labels as now configured"
                log.info(said, n, logs.quoted_path(root), dest)
        for root, counts in self.ledger.counts_by_folder().items():
            if root not in self.folders and (n := sum(counts.get(s, 0) for s in ACTIVE_STATES)):
                said = "%d file(s) of %s, a folder the configuration no longer has, wait for it to be again"
                log.warning(said, n, logs.quoted_path(root))
        self.lost = self.ledger.waiting_elsewhere(sorted(self.cfg.destinations))
        for name, n in self.lost.items():
            log.warning(
                "%d file(s) wait for destination %r, which the configuration no longer has;"
                " they stay queued until it is configured again, or a destination's `replaces`"
                " names it (docs/operations.md, Reload)",
                n,
                name,
            )

    def sweep(self) -> None:
        """The main loop's sweep: an upload in flight to a replaced destination when the
        reload came, and failing after it, goes to the replacement; the count of files
        waiting for lost destinations is brought up to date while there are any (such
        files may vanish), without a look at the backlog otherwise."""
        self.repoint_replaced()
        if self.lost:
            self.lost = self.ledger.waiting_elsewhere(sorted(self.cfg.destinations))
        self.prune()
        self.close_retired()

    def prune(self) -> int:
        """``keep_done_days``: delete the next batch of old rows of finished files (see
        :mod:`syncd.ledger.retention`); how many."""
        days = self.cfg.daemon.keep_done_days
        if not days:
            return 0
        cutoff = time.time() - days * 86400
        deleted = 0
        for state in PRUNED_STATES:
            n, self._prune_after[state] = self.ledger.prune(
                state, cutoff, after=self._prune_after[state], limit=PRUNE_BATCH
            )
            deleted += n
        if deleted:
            log.debug("deleted %d ledger row(s) of files done over %g day(s) ago", deleted, days)
        return deleted

    def repoint_replaced(self) -> None:
        """Waiting files of every destination a ``replaces`` names go to its replacement."""
        moved = 0
        for name, dest in self.cfg.destinations.items():
            for old in dest.replaces:
                if n := self.ledger.repoint(old, name):
                    said = "%d file(s) queued for destination %r now go to %r (destinations.%s.replaces)"
                    log.info(said, n, old, name, name)
                moved += n
        if moved:
            self.uploader.wake()

    def apply(self, cfg: configmod.Config) -> None:
        """Put ``cfg`` in force in place of the running one (a reload)."""
        client, destinations = _build(cfg)
        old_client, old_destinations = self.client, self.destinations
        old_cfg = self.cfg
        self.client, self.destinations = client, destinations
        for root in set(self.folders) - {os.fspath(f.path) for f in cfg.folders}:
            self.metrics.forget_folder(root)
        self.folders = {os.fspath(f.path): f for f in cfg.folders}
        self.cfg = cfg
        uploader = self.uploader
        uploader.set_retry(cfg.daemon.retry_base_seconds, cfg.daemon.retry_max_seconds)
        # A destination whose table changed (or that refused us: new credentials deserve a new
        # try) starts afresh, its files' retries due now, not after backoffs earned before the
        # fix; one that is down stays down until probed.
        states = uploader.destination_states()
        afresh = [
            name
            for name in uploader.circuits.names()
            if old_cfg.destinations.get(name) != cfg.destinations.get(name)
            or states.get(name, CircuitState()).state == REFUSED
        ]
        afresh = uploader.reset_circuits(afresh)  # not one a rate limit holds: its wait stands
        if due := self.ledger.due_now(afresh):
            log.info("%d file(s) waiting to retry on %s are due now", due, ", ".join(map(repr, afresh)))
        uploader.resize(cfg.daemon.workers)
        self._configure(cfg)
        if (old_cfg.daemon.log_level, old_cfg.daemon.log_format) != (
            cfg.daemon.log_level,
            cfg.daemon.log_format,
        ):
            logs.setup(cfg.daemon.log_level, cfg.daemon.log_format)
        for dest in old_destinations.values():
            dest.close()
        # Uploads in flight keep their own reference to the old client: it is closed once
        # the last of them is done (close_retired), however long a large upload takes.
        self._retired.append((old_client, self.uploader.inflight_ids(), time.monotonic()))
        self.reroute()

    def close_retired(self) -> None:
        """Close the HTTP clients of earlier configs that no upload in flight uses now, and
        that were replaced at least 2 x io_timeout ago: a circuit's idle probe (no row in
        flight) may still be using one for that long."""
        busy = self.uploader.inflight_ids()
        settled = time.monotonic() - 2 * self.cfg.daemon.io_timeout
        keep = []
        for client, users, since in self._retired:
            if users & busy or since > settled:
                keep.append((client, users, since))
            else:
                client.close()
        self._retired = keep

    def reload(self, announce: Callable[[bool], None] = lambda applied: None) -> bool:
        """SIGHUP: validate the config file again and apply it, or keep the old one; True
        when applied. ``announce(applied)`` is called before the outcome is recorded for
        `syncd reload` (the daemon sends READY=1 with the new STATUS there)."""
        began = time.monotonic()  # before the file is read (syncd/systemd.py)
        path = self.cfg.path
        log.info("reloading the configuration from %s", path)
        old, new = self.cfg, None
        try:
            new = configmod.load(path) if path is not None else self.cfg
            if Path(new.daemon.state_dir) != Path(self.cfg.daemon.state_dir):
                raise ConfigError(
                    [Problem("daemon.state_dir", "cannot change while syncd runs; restart syncd")], str(path)
                )
            self.apply(new)
        except ConfigError as exc:
            return self._refuse(began, str(exc.problems[0]), str(exc), announce)
        except Exception as exc:
            log.exception("reload failed")
            part_way = new is not None and new is not old and self.cfg is new  # in force, then failed
            return self._refuse(began, f"{type(exc).__name__}: {exc}", str(exc), announce, part_way=part_way)
        self.reload_problem = None
        for w in new.warnings:
            log.warning("config: %s", w)
        log.info(
            "configuration reloaded: %d folder(s), %d destination(s), %d worker(s)",
            len(self.folders),
            len(self.destinations),
            new.daemon.workers,
        )
        announce(True)
        record_reload(self.ledger, began, None)
        return True

    def _refuse(
        self, began: float, first: str, full: str, announce: Callable[[bool], None], *, part_way: bool = False
    ) -> bool:
        if part_way:
            log.error(
                "reload failed part-way: the new configuration is in force, perhaps not all of it;"
                " fix the cause and reload again: %s",
                full,
            )
        else:
            log.error("reload refused, still running the previous configuration: %s", full)
        self.reload_problem = first
        announce(False)
        record_reload(self.ledger, began, first)
        return False

    def folder_problem(self, root: str) -> str | None:
        """Why the folder ``root`` cannot be used right now (checked now), or None."""
        if self.watch:
            return self.watcher.problem(root)
        folder = self.folders.get(root)
        if folder is None:
            return "not configured"
        problem, st = probe(folder)
        return problem if st is None or problem is not None else self._locks.check(root, st)

    def usable_folders(self) -> dict[str, Any]:
        """The folders whose files may be judged now (settle skips the others).

        Checked afresh on every call (a stat or two per folder), so a share
        unmounted a moment ago does not make its settling files "vanished".
        """
        return {root: f for root, f in self.folders.items() if self.folder_problem(root) is None}

    def helpers_health(self) -> dict[str, Any] | None:
        """The upload helpers' counts (:meth:`Offload.health`), None while they are off."""
        return self.offload.health()

    def webhook_health(self) -> dict[str, Any] | None:
        """The webhook's counts (:meth:`Webhook.health`), None while none is configured."""
        hook = self.webhook
        return None if hook is None else hook.health()

    def close(self) -> None:
        """At the very end: the webhook gets one try for what it still holds; the client and
        the destinations are closed."""
        if self.webhook is not None:
            self.webhook.close()
        self.offload.close()
        self._locks.close()
        self.client.close()
        for client, _, _ in self._retired:
            client.close()
        for dest in self.destinations.values():
            dest.close()


def record_config(ledger: Ledger, cfg: configmod.Config) -> None:
    """Note in the ledger what the applied config names (paths, names, types; never a secret or
    a URL): `syncd status` and `syncd files` show the folders while the file is broken."""
    record = {
        "path": None if cfg.path is None else os.fspath(cfg.path),
        "state_dir": os.fspath(cfg.daemon.state_dir),
        "applied_at": time.time(),
        "destinations": {name: dc.type for name, dc in cfg.destinations.items()},
        "folders": [
            {
                "path": os.fspath(f.path),
                "destination": f.destination,
                "labels": list(f.labels),
                "category": f.category,
                "archive_dir": None if f.archive_dir is None else os.fspath(f.archive_dir),
                "failed_dir": None if f.failed_dir is None else os.fspath(f.failed_dir),
            }
            for f in cfg.folders
        ],
    }
    try:
        ledger.put_meta(CONFIG_KEY, record)
    except sqlite3.Error as exc:
        log.warning("cannot record the applied configuration in the ledger: %s", exc)


def record_reload(ledger: Ledger, began: float, problem: str | None) -> None:
    """The reload's outcome, for `syncd reload` (the unit's ExecReload=) to wait on:
    ``began`` is CLOCK_MONOTONIC when this reload started reading the file."""
    try:
        ledger.put_meta(
            RELOAD_KEY,
            {
                "pid": os.getpid(),
                "began": began,
                "at": time.time(),
                "ok": problem is None,
                "problem": None if problem is None else logs.printable(redact(problem)),
            },
        )
    except sqlite3.Error as exc:
        log.error("cannot record the outcome of the reload: %s", exc)
