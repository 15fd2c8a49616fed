"""Opening the ledger at the daemon's start, and waiting while it cannot be written yet.

A ledger of an older syncd is upgraded (migrated) as it is opened, in one
transaction that a kill rolls back: a million rows take seconds, ten million
minutes on a slow disk. The start says so in the log and on the STATUS= line, and
asks systemd to extend the start's timeout while it runs (:func:`upgrading`): a
start timeout that ended it would roll it back, and every restart would begin it
again. Only while it gets on: one that made no progress for :data:`MIGRATE_STALL`
seconds (a hung disk) asks no more, so that systemd's start timeout ends it.

Two conditions a start waits out rather than exiting (an exit is restarted by the
unit a few times, then left failed: nothing would start syncd once the condition
ended): the disk holding the ledger is full (SQLite has no room for its -wal and
-shm), and another process holds the ledger's write lock. Each is said once in
the log and on the STATUS= line, and systemd is asked at every try to extend the
start's timeout (``EXTEND_TIMEOUT_USEC``). ``syncd once`` does not wait for space.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from syncd.errors import LedgerDiskFull
from syncd.failure_kinds import is_disk_full, is_locked
from syncd.ledger import Ledger

log = logging.getLogger("syncd.daemon")  # the daemon's lines keep one logger name

OPEN_RETRY = 2.0  # seconds between tries to open a ledger whose disk is full
LOCK_EXTEND = 30.0  # seconds asked of systemd at each try for the lock (a try waits 10 s)
MIGRATE_EXTEND_EVERY = 10.0  # seconds between asks for more start time while the ledger is upgraded
MIGRATE_STALL = 300.0  # seconds without progress after which an upgrade is taken for hung


@contextmanager
def upgrading(
    notifier: Any,
    path: Path,
    old: int,
    new: int,
    every: float = MIGRATE_EXTEND_EVERY,
    stall: float = MIGRATE_STALL,
) -> Iterator[Callable[[], None]]:
    """Around the migration of the ledger at ``path`` from schema ``old`` to ``new``: say
    so, and ask systemd every ``every`` seconds for three times that much more start time
    while it gets on. It yields the callable the migration calls as it goes (SQLite's
    progress handler); ``stall`` seconds without a call, the asks stop (said once)."""
    status = f"upgrading the ledger from schema {old} to {new}"
    log.info("%s (%s): one transaction; the start waits for it", status, path)
    done = threading.Event()
    progressed = [time.monotonic()]

    def step() -> None:
        progressed[0] = time.monotonic()

    def extend() -> None:
        while True:
            if (quiet := time.monotonic() - progressed[0]) > stall:
                log.error(
                    "the ledger upgrade has made no progress for %.0f s (a hung disk?); no more "
                    "start time is asked of systemd, whose start timeout ends it",
                    quiet,
                )
                return
            notifier.extend(status, 3 * every)
            if done.wait(every):
                return

    keeper = threading.Thread(target=extend, name="syncd-upgrading", daemon=True)
    started = time.monotonic()
    keeper.start()
    try:
        yield step
    finally:
        done.set()
        keeper.join()
    log.info("the ledger is at schema %d (upgraded in %.1f s)", new, time.monotonic() - started)


def open_ledger(path: Path, stop: threading.Event, notifier: Any, once: bool = False) -> Ledger | None:
    """Open the ledger at ``path``; while the disk holding it is full, try again every
    OPEN_RETRY seconds, as a running daemon waits for space. None if stopped while
    waiting; ``once`` (`syncd once`): raise instead."""
    said = False
    while True:
        try:
            ledger = Ledger.open(path, migrating=partial(upgrading, notifier, path))
        except LedgerDiskFull as exc:
            if once:
                raise
            if not said:
                log.error("%s; syncd starts once there is room", exc)
                said = True
            notifier.extend(f"disk full (ledger): waiting for space to start: {exc}", 5 * OPEN_RETRY)
            if stop.wait(OPEN_RETRY):
                return None
            continue
        if said:
            log.info("the disk holding the ledger has room again; starting")
        return ledger


def wait_for_lock(ledger: Ledger, stop: threading.Event, notifier: Any) -> bool:
    """Wait while another process holds the ledger's write lock; False if stopped meanwhile.

    Each try (the first heartbeat) waits the busy timeout (10 s); a lock held longer
    than that must not kill the daemon at start (Restart= would only loop), nor let
    systemd's start timeout end it.
    """
    said, who = False, ""
    while not stop.is_set():
        try:
            ledger.put_meta("heartbeat", time.time())
            if said:
                log.info("the ledger is free again; starting")
            return True
        except sqlite3.OperationalError as exc:
            if is_disk_full(exc):
                return True  # reported and paused by the running daemon
            if not is_locked(exc):
                raise
            if not said:
                who = ledger.held_by()
                log.warning(
                    "the ledger is locked by another process%s; waiting for it before starting (%s)",
                    who,
                    exc,
                )
                said = True
            notifier.extend(f"waiting for the ledger (locked by another process{who})", LOCK_EXTEND)
    return False
