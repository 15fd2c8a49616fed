"""The process's own limits: file descriptors and threads.

A host at its limits refuses syncd a descriptor (``EMFILE``: the process's
``RLIMIT_NOFILE``, ``LimitNOFILE=`` of the unit; ``ENFILE``: the system's
``fs.file-max``) or a thread (``can't start new thread``: the unit's
``TasksMax=``, ``ulimit -u``). Neither is the file's failure nor the service's:
an attempt that ran into one spends no attempt of the file and opens no
circuit; the file waits in place and is tried again after a short, growing
delay (syncd/file_waits.py). :class:`Shortages` says it once (an ERROR with the
limit to raise), shows it in STATUS and ``syncd status`` while it lasts, and
says when it is over (nothing ran into it for :data:`QUIET` seconds). Out of
descriptors, it closes the HTTP pool's idle connections (:func:`drop_idle`,
the runtime's ``relief``), which would keep theirs until the next request, and
the pool keeps at most an eighth of the limit idle (:func:`keepalive`).

:func:`shortage` tells such an error, also behind the wrappers of an HTTP
error (:func:`start_shortage`: of starting a process, where fork's ``EAGAIN`` is
the process limit); :func:`raise_nofile` lifts the soft descriptor limit to the
hard one at start (systemd's default soft limit is 1,024; syncd uses ``poll``,
never ``select``, so descriptors above 1,024 are fine), and
:mod:`syncd.descriptors` checks what it ends up with against the configuration.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import threading
import time
from collections.abc import Callable
from typing import Any

from syncd import safefs

log = logging.getLogger(__name__)

DESCRIPTORS = "descriptors"
THREADS = "threads"
QUIET = 30.0  # seconds without a shortage before it is said to be over
NOFILE_CAP = 524288  # the soft limit syncd raises itself to, at most (systemd's hard default)

NO_THREAD = "can't start new thread"  # what CPython says when no thread can be started


def _culprit(exc: BaseException | None) -> BaseException | None:
    """``exc``, or an error it was raised from or during (an HTTP error's socket error),
    that is the process running out of descriptors or threads."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        err = todo.pop()
        if err is None or id(err) in seen or len(seen) > 16:
            continue
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in safefs.SHORT:
            return err
        if isinstance(err, RuntimeError) and NO_THREAD in str(err):
            return err
        todo.extend([err.__cause__, err.__context__])
    return None


def shortage(exc: BaseException | None) -> str | None:
    """:data:`DESCRIPTORS` or :data:`THREADS` when ``exc`` (or an error behind it) is the
    process running out of them; None otherwise."""
    culprit = _culprit(exc)
    if culprit is None:
        return None
    return THREADS if isinstance(culprit, RuntimeError) else DESCRIPTORS


def start_shortage(exc: BaseException | None) -> str | None:
    """:func:`shortage` of an error starting a process, where fork's ``EAGAIN`` is the
    process limit reached too (the unit's ``TasksMax=``, ``ulimit -u``): :data:`THREADS`."""
    if isinstance(exc, OSError) and exc.errno == errno.EAGAIN:
        return THREADS
    return shortage(exc)


def start(thread: threading.Thread) -> RuntimeError | None:
    """Start ``thread``; the error when the host allows no more threads (else None)."""
    try:
        thread.start()
    except RuntimeError as exc:
        if NO_THREAD not in str(exc):
            raise
        return exc
    return None


def nofile() -> tuple[int, int]:
    """``(soft, hard)`` RLIMIT_NOFILE."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def open_descriptors() -> int | None:
    """How many descriptors this process holds now (None: not known)."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # (the listing's own)
    except OSError:
        return None


def out_of_descriptors() -> bool:
    """Whether this process holds (nearly) as many descriptors as its limit allows."""
    held = open_descriptors()
    return held is None or held >= nofile()[0] - 2


def keepalive(connections: int) -> int:
    """Idle connections the HTTP pool may keep: each holds a descriptor until the pool is
    next used, so at most an eighth of the descriptor limit (idle sockets filling the
    table left archive moves and scans none, for good, once uploads were over)."""
    return max(1, min(connections, nofile()[0] // 8))


def drop_idle(client: Any) -> None:
    """Close the idle pooled connections of an ``httpx.Client``: each holds a descriptor
    until the pool is next used (after the last upload: for good). httpcore refuses a
    closed connection to a request that takes it meanwhile, and uses another."""
    for transport in [client._transport, *client._mounts.values()]:
        for connection in list(getattr(getattr(transport, "_pool", None), "connections", None) or []):
            if connection.is_idle():
                connection.close()


def raised_nofile() -> int:
    """The descriptor limit :func:`raise_nofile` leaves this process with (unlimited:
    ``resource.RLIM_INFINITY``)."""
    soft, hard = nofile()
    want = NOFILE_CAP if hard == resource.RLIM_INFINITY else min(hard, NOFILE_CAP)
    return soft if soft == resource.RLIM_INFINITY or soft >= want else want


def raise_nofile() -> None:
    """The soft RLIMIT_NOFILE raised to the hard one (at most :data:`NOFILE_CAP`)."""
    soft, hard = nofile()
    want = raised_nofile()
    if soft != want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (OSError, ValueError) as exc:
            log.debug("could not raise the descriptor limit from %d to %d: %s", soft, want, exc)
        else:
            log.debug("descriptor limit raised from %d to %d", soft, want)


def explain(kind: str, exc: BaseException | None = None) -> str:
    """What ran out, and what to raise, for a log line and STATUS."""
    if kind == THREADS:
        what = "a process" if isinstance(exc, OSError) and exc.errno == errno.EAGAIN else "a thread"
        return f"cannot start {what} (the unit's TasksMax= or the user's process limit reached)"
    culprit = _culprit(exc)
    if isinstance(culprit, OSError) and culprit.errno == errno.ENFILE:
        return "out of file descriptors (the system's limit, sysctl fs.file-max, reached)"
    held = open_descriptors()
    held_said = f"{held} open, " if held is not None else ""
    return f"out of file descriptors ({held_said}LimitNOFILE= {nofile()[0]})"


class Shortages:
    """The shortages run into lately: said once each, shown while they last."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}  # kind -> when last run into
        self._what: dict[str, str] = {}  # kind -> what ran out (explain)
        self.relief: Callable[[], None] = lambda: None  # frees descriptors syncd can spare

    def note(self, kind: str, exc: BaseException | None = None) -> bool:
        """``kind`` ran out (``exc``); True the first time since it was last over."""
        what = explain(kind, exc)
        with self._lock:
            first = kind not in self._last
            self._last[kind] = self._clock()
            self._what[kind] = what
        if kind == DESCRIPTORS:
            try:
                self.relief()
            except Exception:
                log.debug("could not free idle connections", exc_info=True)
        if first:
            log.error(
                "syncd %s: files wait in place and are tried again without using attempts; "
                "raise the limit (operations.md, section 5), or lower workers, parallel_parts "
                "or upload_processes",
                what,
            )
        return first

    def describe(self) -> list[str]:
        """What is short now, for the STATUS= line; one quiet for QUIET seconds is over."""
        now = self._clock()
        said = []
        with self._lock:
            for kind in sorted(self._last):
                if now - self._last[kind] < QUIET:
                    said.append(f"{self._what[kind]}: files wait")
                    continue
                del self._last[kind]
                log.warning("syncd has had enough %s for %gs again", kind, QUIET)
        return said
