"""Parts of one file in flight at once, and one bound on part requests per destination.

:class:`Parallel` holds both numbers (the ``parallel_parts`` and
``max_connections`` options); :func:`send_parallel` sends a list of parts
with at most ``per_file`` in flight and hands every result back on the
calling thread, so that the caller records and checkpoints them in one place.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from syncd.destinations._chunked_parts import Part


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
    are recorded), then the error is raised.
    """
    pending = iter(todo)
    error: BaseException | None = None
    with ThreadPoolExecutor(max_workers=per_file, thread_name_prefix="part") as pool:
        running: dict[Future[str], Part] = {}

        def submit_next() -> None:
            part = next(pending, None)
            if part is not None:
                running[pool.submit(send, part)] = part

        for _ in range(per_file):
            submit_next()
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                part = running.pop(future)
                try:
                    token = future.result()
                except BaseException as exc:  # keep the first; let the others finish
                    error = error or exc
                    continue
                record(part, token)
                if error is None:
                    submit_next()
    if error is not None:
        raise error


__all__ = ["SERIAL", "Parallel", "send_parallel"]
