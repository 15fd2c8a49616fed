"""A disk that fails one fsync of the ledger's WAL, for a real syncd process
(tests/daemon/test_e2e.py::test_a_failed_fsync_of_the_ledger_stops_the_daemon).

Python imports ``sitecustomize`` at start-up from the path; a test puts this
folder first on ``PYTHONPATH`` and names a file in ``SYNCD_TEST_FSYNC_EIO``.
While that file exists, the next ``os.fdatasync`` of a ``-wal`` file deletes it
and fails with EIO, as a failed writeback does on Linux. The failure is
reported once, as the kernel reports it: the fsyncs after it succeed.
"""

from __future__ import annotations

import errno
import os

_FILE = os.environ.get("SYNCD_TEST_FSYNC_EIO")

if _FILE:
    _real_fdatasync = os.fdatasync

    def _fdatasync(fd: int) -> None:
        if os.path.exists(_FILE) and os.readlink(f"/proc/self/fd/{fd}").endswith("-wal"):
            os.unlink(_FILE)
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        _real_fdatasync(fd)

    os.fdatasync = _fdatasync
