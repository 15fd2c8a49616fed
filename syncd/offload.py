"""Upload helper processes: the bytes of small files sent from more than one core.

One CPython process runs Python code on one core at a time, and for small
files most of a worker's time is Python: building and parsing HTTP requests.
With ``[daemon] upload_processes = N`` (0, the default, turns this off) syncd
runs up to N helper processes (``python -m syncd.offload_helper``): they
start when a worker has a small file for one, and stop when none was handed
over for :data:`IDLE_STOP` seconds, so an idle daemon has none. A worker
hands only the send of a small file to an idle helper; opening the file
through safefs, the ledger, retries, circuits and the archive stay with the
worker. What crosses the socket: :mod:`syncd.offload_helper`.

Only files of at most :data:`SMALL_FILE` bytes to a destination without a
bandwidth limit are handed over (with their resume state, if an earlier
attempt left one); the others are sent by the worker itself. A worker waits
up to :data:`HELPER_WAIT` for an idle helper, and sends the file itself when
none is free by then or running (starting, stopped after a quiet time, or
given up), so the workers never depend on helpers, nor wait on them. A
helper that dies, breaks the protocol, says nothing for :data:`SILENT_LIMIT`
while sending, or cannot hand over a resume state (too large) fails that
attempt (retried like a transient error, by the worker itself next time; a
broken helper is replaced); helpers that keep failing to start are given
up, with an error in the log, until a reload. A start that ran into syncd's
own limits (descriptors, threads or processes: :mod:`syncd.offload_start`) is
no helper's failure: said once with the daemon's other shortages, it is tried
again after :data:`RESTART_PAUSE` and never leads to giving up.

Helpers die with syncd (``PR_SET_PDEATHSIG``, and the socket's end), ignore
SIGTERM, SIGINT and SIGHUP (syncd stops and reloads them), and are started
from one long-lived thread (the death signal follows the thread that started
a process). A reload replaces them once their current file is done.
"""

from __future__ import annotations

import logging
import pickle
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from syncd import limits, offload_start
from syncd.destinations.base import Receipt
from syncd.errors import describe
from syncd.logs import quoted_path
from syncd.offload_helper import Helper, HelperFailed, decode
from syncd.upload_source import UploadCancelled

if TYPE_CHECKING:
    from syncd.bandwidth import Bandwidth
    from syncd.config import Config
    from syncd.destinations.base import Source, UploadItem
    from syncd.ledger import Row

log = logging.getLogger(__name__)

SMALL_FILE = 8 << 20  # bytes: larger files are sent by the worker itself (one part, progress)
WAIT_SLICE = 0.25  # a worker waiting for its helper looks at the cancel flag this often
SILENT_LIMIT = 30.0  # seconds a sending helper may say nothing (it says "alive" every 2 s)
HELPER_WAIT = 0.02  # seconds a worker waits for a helper to be free before sending itself
GIVE_UP_AFTER = 3  # helpers that failed to start in a row before offloading stops
RESTART_PAUSE = 5.0  # seconds between starts after a start failed or ran into syncd's limits
CHECK_EVERY = 5.0  # seconds between two looks for idle helpers that exited
IDLE_STOP = 60.0  # helpers stop when no small file was handed over for this long
AVOID_MAX = 10_000  # rows remembered as "send it yourself" after a helper failed them


@dataclass(frozen=True)
class Handover:
    """One file's send, as a worker hands it to a helper."""

    row: Row
    item: UploadItem
    source: Source  # the worker's open file: its descriptor is what the helper reads
    checkpoint: Callable[[Any], None]  # writes a resume state to the ledger
    beat: Callable[[], None]  # the worker's heartbeat
    cancel: threading.Event  # syncd is stopping: the helper is killed


class Offload:
    """The helper processes of one daemon; see the module docstring."""

    def __init__(self, shortages: limits.Shortages | None = None) -> None:
        self._shortages = shortages or limits.Shortages()  # the daemon's (runtime.py): said once
        self._lock = threading.Lock()
        self._available = threading.Condition(self._lock)  # a helper went idle: one worker may go
        self._wanted = threading.Condition(self._lock)  # the starting thread has something to do
        self._idle: list[Helper] = []
        self._busy = 0
        self._starting = 0
        self._target = 0
        self._generation = 0
        self._config: bytes | None = None
        self._failures = 0
        self._closed = False
        self._avoid: set[int] = set()
        self._demand = -IDLE_STOP  # monotonic time a worker last had a file for a helper
        self._sent = 0  # files sent by helpers since start
        self._failed = 0  # sends a helper failed (it died, broke, or could not carry the state)
        self._thread: threading.Thread | None = None  # the starting thread (:meth:`_keep`)
        self._keeper_at = 0.0  # monotonic time to try to start it again (out of threads)

    # configuration -------------------------------------------------------------

    def configure(self, cfg: Config) -> None:
        """The configuration in force (at start and on every reload): helpers are
        started, or replaced by ones that know the new configuration."""
        processes = cfg.daemon.upload_processes
        wanted = (cfg.daemon, dict(cfg.destinations))  # what a helper builds its client and destinations from
        config = pickle.dumps(wanted, protocol=pickle.HIGHEST_PROTOCOL) if processes else None
        with self._lock:
            if config == self._config and processes == self._target:
                if self._failures >= GIVE_UP_AFTER:  # given up: a reload tries again, as said
                    self._failures = 0
                    self._wanted.notify()
                return
            self._config, self._target = config, processes
            self._generation += 1
            self._failures = 0
            stale, self._idle = self._idle, []
            if processes and self._thread is None:
                self._start_keeper()
            self._wanted.notify()
            self._available.notify_all()
        for helper in stale:
            helper.stop()

    def _start_keeper(self) -> None:
        """(Under the lock.) Start the thread that starts helpers. With no thread to spare
        it is said once and tried again at a file for a helper RESTART_PAUSE later: it
        raised out of the reload that asked for helpers, and none ever started."""
        thread = threading.Thread(target=self._keep, name="upload-helpers", daemon=True)
        error = limits.start(thread)
        if error is None:
            self._thread = thread
            return
        self._keeper_at = time.monotonic() + RESTART_PAUSE
        self._shortages.note(limits.THREADS, error)

    def close(self) -> None:
        """At the end: every helper is stopped (those still sending, once they are done)."""
        with self._lock:
            self._closed = True
            self._target = 0
            stale, self._idle = self._idle, []
            self._wanted.notify()
            self._available.notify_all()
        for helper in stale:
            helper.stop()
        if self._thread is not None:
            self._thread.join(10.0)

    def health(self) -> dict[str, Any] | None:
        """For the heartbeat and `syncd status`; None when helpers are off: ``configured``,
        ``running`` (ready), ``sending`` (a file now), ``sent`` (files since start), ``failed``
        (sends a helper failed), ``given_up`` (GIVE_UP_AFTER failed starts in a row)."""
        with self._lock:
            if not self._target:
                return None
            return {
                "configured": self._target,
                "running": len(self._idle) + self._busy,
                "sending": self._busy,
                "sent": self._sent,
                "failed": self._failed,
                "given_up": self._failures >= GIVE_UP_AFTER,
            }

    # the workers' side -----------------------------------------------------------

    def take(self, row: Row, bandwidth: Bandwidth, cancel: threading.Event) -> Helper | None:
        """A helper for ``row``, waiting up to :data:`HELPER_WAIT` for one to be idle while
        any is running; None when the worker sends the file itself (too large or
        limited; no helper free by then, running yet or any more; stopping).

        Helpers spare the main process's CPU; they must not cap how many files
        go at once: with a slow service (each file a second on the wire) every
        worker waiting for one of two helpers sent two files at a time. A
        helper that is busy with a small file is free again within milliseconds
        when CPU is what limits, so the wait is short."""
        if (
            not self._target
            or row.size is None
            or row.size > SMALL_FILE
            or row.id in self._avoid
            or bandwidth.limit(row.destination).active
        ):
            return None
        with self._lock:
            self._demand = time.monotonic()
            if self._thread is None and self._target and self._demand >= self._keeper_at:
                self._start_keeper()  # out of threads when configured: again now
            if not self._enough():
                self._wanted.notify()  # fewer than configured: the starting thread starts one
            until = time.monotonic() + HELPER_WAIT
            while not cancel.is_set():
                while self._idle:
                    helper = self._idle.pop()
                    if helper.proc.poll() is None:
                        self._busy += 1
                        return helper
                    self._gone(helper)
                left = until - time.monotonic()
                if not self._busy or left <= 0:
                    return None  # none running (starting, given up, or off), or none free soon
                self._available.wait(left)
        return None

    def upload(self, helper: Helper, send: Handover) -> Receipt:
        """Have ``helper`` send the file (the worker's open ``send.source``); returns the receipt.

        The helper's SHA-256 of what it read becomes the source's. Errors are
        those of the upload; :class:`HelperFailed` when the helper broke, and
        UploadCancelled when ``cancel`` is set (the helper is killed).
        """
        healthy = False
        try:
            answer = _exchange(helper, send)
            healthy = True
        except (HelperFailed, OSError) as exc:  # OSError: the socket, the helper is gone
            self._avoid_row(send.row.id)
            if isinstance(exc, HelperFailed):
                raise
            raise HelperFailed(f"upload helper (pid {helper.proc.pid}) failed: {exc}") from None
        finally:
            self._give_back(helper, healthy)
        if isinstance(answer, BaseException):
            if isinstance(answer, HelperFailed):  # StateTooLarge: the worker sends it next
                self._avoid_row(send.row.id)
            raise answer
        receipt, sha = answer
        send.source.hashed_as(sha)
        with self._lock:
            self._sent += 1
        log.debug("sent by upload helper %d: %s", helper.proc.pid, quoted_path(send.row.inbox_path))
        return receipt

    def _avoid_row(self, row_id: int) -> None:
        with self._lock:
            self._failed += 1
        if len(self._avoid) >= AVOID_MAX:
            self._avoid.clear()
        self._avoid.add(row_id)

    def _give_back(self, helper: Helper, healthy: bool) -> None:
        with self._lock:
            self._busy -= 1
            keep = healthy and not self._closed and helper.generation == self._generation
            if keep:
                self._idle.append(helper)
                self._available.notify()
            else:
                self._wanted.notify()  # another in its place
        if not keep:
            helper.stop(kill=not healthy)

    # starting helpers (one thread: the death signal follows the starting thread) ------------

    def _keep(self) -> None:
        while True:
            with self._lock:
                retire: list[Helper] = []
                while not self._closed and not self._should_start():
                    retire = self._tidy()
                    if retire:
                        break
                    self._wanted.wait(self._next_look())
                if self._closed:
                    return
                if not retire:
                    self._starting += 1
                    generation, config = self._generation, self._config
            if retire:
                for idle in retire:
                    idle.stop()
                continue
            helper: Helper | None = None
            short = None  # out of descriptors or threads: a pause, not a failure (offload_start.py)
            try:
                assert config is not None
                helper = offload_start.start(config, generation)
            except Exception as exc:
                if (short := limits.start_shortage(exc)) is not None:
                    self._shortages.note(short, exc)
                else:
                    log.error("cannot start an upload helper: %s", describe(exc))
            with self._lock:
                self._starting -= 1
                if helper is not None and generation == self._generation and not self._closed:
                    self._idle.append(helper)
                    self._failures = 0
                    self._available.notify()
                    continue
                if helper is None and short is None and generation == self._generation:
                    self._failures += 1
                    if self._failures >= GIVE_UP_AFTER:
                        log.error(
                            "upload helpers failed to start %d times in a row; the workers send every "
                            "file themselves until the configuration is reloaded",
                            self._failures,
                        )
            if helper is not None:
                helper.stop()  # started for a configuration replaced meanwhile
                continue
            with self._lock:  # a pause (workers asking for helpers do not cut it short); a reload does
                until = time.monotonic() + RESTART_PAUSE
                while not self._closed and generation == self._generation and time.monotonic() < until:
                    self._wanted.wait(until - time.monotonic())

    def _should_start(self) -> bool:
        """(Under the lock.) Fewer helpers than configured, files sent lately, and not given up."""
        return (
            not self._enough()
            and self._failures < GIVE_UP_AFTER
            and time.monotonic() - self._demand < IDLE_STOP
        )

    def _tidy(self) -> list[Helper]:
        """(Under the lock.) Drop idle helpers that exited; the idle ones to stop when no
        file was handed over for IDLE_STOP seconds (they are taken out of the pool)."""
        for dead in [h for h in self._idle if h.proc.poll() is not None]:
            self._idle.remove(dead)
            self._gone(dead)
        if self._idle and time.monotonic() - self._demand >= IDLE_STOP:
            retire, self._idle = self._idle, []
            log.debug("stopping %d idle upload helper(s)", len(retire))
            return retire
        return []

    def _next_look(self) -> float:
        """(Under the lock.) How long the starting thread may sleep."""
        if self._idle or self._busy:
            return max(0.05, min(CHECK_EVERY, self._demand + IDLE_STOP - time.monotonic()))
        return CHECK_EVERY

    def _gone(self, helper: Helper) -> None:
        """An idle helper that has exited (under the lock): another takes its place."""
        log.warning("upload helper (pid %d) exited while idle; starting another", helper.proc.pid)
        helper.sock.close()
        self._wanted.notify()

    def _enough(self) -> bool:
        return len(self._idle) + self._busy + self._starting >= self._target


def _exchange(helper: Helper, send: Handover) -> tuple[Receipt, str] | BaseException:
    """The messages of one send: (receipt, SHA-256), or the error the upload ended with
    (or the ledger's, when it refused a checkpoint)."""
    row, source = send.row, send.source
    helper.send(
        ("upload", row.destination, send.item, row.resume, source.path, source.size, source.mtime_ns,
         source.inode, source.device),
        [source.fileno()],
    )  # fmt: skip
    held: BaseException | None = None  # a checkpoint the ledger refused
    heard = time.monotonic()
    while True:
        if send.cancel.is_set():
            raise UploadCancelled("syncd is stopping")
        message = helper.receive(WAIT_SLICE)
        if message is None:
            if time.monotonic() - heard > SILENT_LIMIT:  # stopped, or hung in the kernel
                raise HelperFailed(
                    f"upload helper (pid {helper.proc.pid}) said nothing for {SILENT_LIMIT:g}s; "
                    "it is stopped and the file sent again"
                )
            continue
        heard = time.monotonic()
        kind = message[0]
        if kind == "alive":
            continue
        if kind == "beat":
            send.beat()
        elif kind == "checkpoint":
            try:
                send.checkpoint(message[1])
            except Exception as exc:
                held = exc
            helper.send(("ack", held is None))
        elif kind == "done":
            receipt, sha = message[1:3]
            if not isinstance(receipt, Receipt) or not isinstance(sha, str):
                raise HelperFailed("upload helper answered without a receipt")
            return held if held is not None else (receipt, sha)
        elif kind == "error":
            return held if held is not None else decode(message[1])
        else:
            raise HelperFailed(f"upload helper sent an unknown message {kind!r}")
