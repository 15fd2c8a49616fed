"""Parts of one file in flight at once, and one bound on part requests per destination.

:class:`Parallel` holds both numbers (the ``parallel_parts`` and
``max_connections`` options); :func:`send_parallel` sends a list of parts
with at most ``per_file`` in flight and hands every result back on the
calling thread, so that the caller records and checkpoints them in one place.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from syncd.destinations._chunked_parts import Part

log = logging.getLogger(__name__)


class Parallel:
    """How many part requests may be in flight: ``per_file`` parts of one file,
    and at most ``connections`` across every file of one destination."""

    def __init__(self, per_file: int = 1, connections: int | None = None) -> None:
        self.per_file = per_file
        self._slots = threading.BoundedSemaphore(connections) if connections else None

    @classmethod
    def of(cls, options: Any) -> Parallel:
        """From a type's ``parallel_parts`` and ``max_connections`` options."""
        return cls(options.parallel_parts, options.max_connections)

    def slot(self) -> contextlib.AbstractContextManager[Any]:
        """Held while one part request is in flight."""
        return self._slots if self._slots is not None else contextlib.nullcontext()


SERIAL = Parallel()


def send_parallel(
    todo: list[Part], send: Callable[[Part], str], record: Callable[[Part, str], None], per_file: int
) -> None:
    """``send`` every part of ``todo``, at most ``per_file`` at once, in their order.

    ``record(part, token)`` is called on this thread as each one is confirmed.
    After the first error no new part starts; the ones in flight finish (and
    are recorded), then the error is raised. A host at its thread limit (the
    unit's ``TasksMax=``) gives fewer threads: the parts go out with as many as
    could be started, or one after the other on this thread when none could.
    """
    pending = iter(todo)
    results: queue.Queue[tuple[Part, str | None, BaseException | None] | None] = queue.Queue()
    lock = threading.Lock()
    failed = threading.Event()

    def next_part() -> Part | None:
        with lock:
            return None if failed.is_set() else next(pending, None)

    def work() -> None:
        try:
            while (part := next_part()) is not None:
                try:
                    results.put((part, send(part), None))
                except BaseException as exc:  # no new part starts; the others finish
                    failed.set()
                    results.put((part, None, exc))
        finally:
            results.put(None)

    threads = 0
    for _ in range(per_file):
        thread = threading.Thread(target=work, name="part", daemon=True)
        try:
            thread.start()
        except RuntimeError as exc:
            _fewer_threads(threads, per_file, exc)
            break
        threads += 1
    if threads == 0:  # not one thread: this one sends them all
        for part in pending:
            record(part, send(part))
        return
    error: BaseException | None = None
    while threads:
        item = results.get()
        if item is None:
            threads -= 1
            continue
        part, token, failure = item
        if failure is not None:
            error = error or failure  # keep the first
        elif token is not None:
            record(part, token)
    if error is not None:
        raise error


def _fewer_threads(started: int, wanted: int, exc: BaseException) -> None:
    """Said once a minute at most: the parts of a file go out with fewer threads."""
    global _said_at
    now = time.monotonic()
    if now - _said_at >= 60.0:
        _said_at = now
        log.warning(
            "cannot start a thread for parallel parts (%s: the unit's TasksMax= reached?); "
            "sending %d part(s) at once instead of %d",
            exc,
            max(started, 1),
            wanted,
        )


_said_at = -60.0


__all__ = ["SERIAL", "Parallel", "send_parallel"]
