"""Stopping: no new work, let the uploads in flight drain, interrupt the rest, release all.

On SIGTERM/SIGINT (or at the end of ``once``): ``STOPPING=1`` with
``EXTEND_TIMEOUT_USEC`` covering ``drain_seconds`` + :data:`STOP_MARGIN`, so a
long drain is not cut short by ``TimeoutStopSec=``; the watches and the
scanner stop; workers take no new rows and the uploads in flight get
``drain_seconds`` to finish (the watchdog is still fed meanwhile, while
they progress). Then, or at once after a second signal, the uploads are
interrupted: they fail at their next read of the file and go back to
``queued`` without using an attempt, keeping their resume state. A worker
still stuck in the network :data:`CANCEL_GRACE` seconds later has its row
requeued for it (:meth:`syncd.uploader.Uploader.abandon_inflight`). Last, the
final progress snapshot and heartbeat (``stopped``), metrics, the webhook
(one try for what it holds), the HTTP client and the destinations. The
ledger is closed by the daemon after this.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable

from syncd.health import Health
from syncd.intake import IntakeStage
from syncd.ledger import State
from syncd.liveness import Pulse
from syncd.notify import Notifier
from syncd.runtime import Runtime
from syncd.uploader import Uploader
from syncd.watcher import Watcher

log = logging.getLogger("syncd.daemon")  # the daemon's lines keep one logger name

CANCEL_GRACE = 2.0  # after interrupting uploads, how long workers get to record it
STOP_MARGIN = 15.0  # asked of systemd beyond drain_seconds (EXTEND_TIMEOUT_USEC)
DRAIN_POLL = 0.05


def drain(
    uploader: Uploader,
    runtime: Runtime,
    intake: IntakeStage,
    health: Health,
    pulse: Pulse,
    notifier: Notifier,
    watcher: Watcher,
    hard_stop: threading.Event,
    archiver: Callable[[float], bool] = lambda _timeout: True,
) -> None:
    """Stop taking work, let uploads drain, interrupt the rest, release everything."""
    drain_seconds = 0.0 if hard_stop.is_set() else runtime.cfg.daemon.drain_seconds
    sending, archiving = _in_flight(uploader)
    running = sending + archiving
    what = f"{sending} upload(s)" if sending else f"{archiving} archive move(s)"
    status = f"stopping: {what} finishing (up to {drain_seconds:g} s)" if running else "stopping"
    notifier.stopping(status, extend_seconds=drain_seconds + STOP_MARGIN)
    if running:
        log.info(
            "stopping: taking no new uploads; waiting up to %gs for %d upload(s) in flight%s",
            drain_seconds,
            sending,
            f" and {archiving} archive move(s)" if archiving else "",
        )
    else:
        log.info("stopping: no uploads in flight")
    watcher.stop()
    intake.stop_scanner()
    uploader.stop_claiming()
    archiver(0.0)  # starts no further archive move (the one under way may finish below)
    deadline = time.monotonic() + drain_seconds
    while uploader.busy() and not hard_stop.is_set() and time.monotonic() < deadline:
        pulse.beat()  # the main loop is draining, not wedged
        health.watchdog(time.monotonic())
        uploader.join(DRAIN_POLL)  # returns as soon as the last worker is done
    if uploader.busy():
        why = "second stop signal" if hard_stop.is_set() else f"drain time ({drain_seconds:g}s) is up"
        sending, archiving = _in_flight(uploader)
        if sending:
            log.warning(
                "%s: interrupting %d upload(s); they go back to the queue and resume "
                "from their last confirmed part at the next start",
                why,
                sending,
            )
        if archiving:
            log.warning(
                "%s: cutting %d archive move(s) short; those files are uploaded, stay in their "
                "inbox and are archived at the next start",
                why,
                archiving,
            )
        uploader.cancel()
        runtime.client.close()  # requests not yet sent fail at once
        if not uploader.join(CANCEL_GRACE):
            stuck = uploader.abandon_inflight()
            log.warning(
                "%d upload(s) did not stop in %gs; requeued them (%s)",
                len(stuck),
                CANCEL_GRACE,
                ", ".join(f"#{i}" for i in stuck) or "none left",
            )
    elif running:
        log.info("uploads in flight finished")
    until = max(deadline, time.monotonic()) + CANCEL_GRACE
    while not archiver(min(DRAIN_POLL, max(0.0, until - time.monotonic()))) and time.monotonic() < until:
        pulse.beat()
        health.watchdog(time.monotonic())
    if not archiver(0.0):
        uploader.cancel()  # a copy under way stops at its next block, removing its temp file
        archiver(CANCEL_GRACE)
    if not archiver(0.0):
        # a copy that did not stop: cut short at exit, as by a crash (the next start
        # removes the partial copy and archives the file again)
        log.warning(
            "stopping while a file is being copied into its archive folder; it is archived at the next start"
        )
    health.publish_progress(final=True)  # nothing in flight any more
    try:
        health.write_heartbeat(stopped=True)
    except (OSError, sqlite3.Error) as exc:  # `syncd status` then says the heartbeat is old
        log.error("could not record the stop in the ledger: %s", exc)
    runtime.metrics.stop()
    runtime.close()


def _in_flight(uploader: Uploader) -> tuple[int, int]:
    """(uploads, archive moves) in flight: a row held that is uploaded already is being
    archived (by its worker, or by the archiver)."""
    ids = uploader.inflight_ids()
    archiving = 0
    for row_id in ids:
        try:
            row = uploader.ledger.get(row_id)
        except sqlite3.Error:
            continue
        archiving += row is not None and row.state == State.UPLOADED
    return len(ids) - archiving, archiving
