"""A wall clock that tests can step, for a real syncd process (tests/daemon/test_clock_steps.py).

Python imports ``sitecustomize`` at start-up from the path; a test puts this
folder first on ``PYTHONPATH`` and names a file in ``SYNCD_TEST_CLOCK_FILE``.
The file holds an offset in seconds, and ``time.time()`` (and
``time.time_ns()``) return the real time plus that offset, read again at most
every 50 ms: writing ``-3600`` to the file steps the process's wall clock
back an hour, as an NTP correction would. The monotonic and boot-time clocks
are left alone, as a real step leaves them. This module is installed before
syncd imports anything, so the default ``clock=time.time`` arguments syncd's
classes take see the stepped clock too.
"""

from __future__ import annotations

import os
import time

_FILE = os.environ.get("SYNCD_TEST_CLOCK_FILE")

if _FILE:
    _real_time, _real_time_ns, _monotonic = time.time, time.time_ns, time.monotonic
    _state = {"offset": 0.0, "read_at": -1.0}

    def _offset() -> float:
        now = _monotonic()
        if now - _state["read_at"] >= 0.05:
            _state["read_at"] = now
            try:
                with open(_FILE) as f:
                    _state["offset"] = float(f.read().strip() or 0)
            except (OSError, ValueError):
                pass
        return _state["offset"]

    def _time() -> float:
        return _real_time() + _offset()

    def _time_ns() -> int:
        return _real_time_ns() + int(_offset() * 1e9)

    time.time = _time
    time.time_ns = _time_ns
