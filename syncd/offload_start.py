"""Starting one upload helper process, for the starting thread of :mod:`syncd.offload`.

:func:`start` makes the socket pair, starts ``python -m syncd.offload_helper``
with its end, hands it the configuration and waits for ``ready``.

A start that ran into syncd's own limits is a passing shortage, not a broken
helper: out of descriptors for the socket pair or for Popen's pipes
(``EMFILE``, ``ENFILE``), fork refused at the process limit (``EAGAIN``: the
unit's ``TasksMax=``, ``ulimit -u``), or the helper unable to start its own
thread (it answers with that error instead of ``ready``). :func:`start` raises
those (:func:`syncd.limits.start_shortage` tells them), and the starting thread
says them once through the daemon's :class:`syncd.limits.Shortages`, waits and
tries again, without counting them toward giving helpers up. Any other start
failure raises too (socket pair, Popen), or is logged here (the helper did not
become ready) and gives None; those count.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys

from syncd import limits
from syncd.offload_helper import Helper, HelperFailed, decode

log = logging.getLogger("syncd.offload")

START_TIMEOUT = 60.0  # a helper that is not ready by then is given up


def start(config: bytes, generation: int) -> Helper | None:
    """One helper, ready, that knows ``config``; None (logged) when it did not become ready.
    Raises what starting it raised, a shortage the helper ran into included."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "syncd.offload_helper", str(theirs.fileno()), str(os.getpid())],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
        )
    except BaseException:
        mine.close()
        raise
    finally:
        theirs.close()
    helper = Helper(proc, mine, generation)
    try:
        helper.send(("config", config))
        message = helper.receive(START_TIMEOUT)
    except (OSError, HelperFailed) as exc:
        log.error("upload helper (pid %d) did not start: %s", proc.pid, exc)
        helper.stop(kill=True)
        return None
    if message != ("ready",):
        helper.stop(kill=True)
        if (short := _shortage(message)) is not None:
            raise short  # out of descriptors or threads in the helper: not its failure
        log.error("upload helper (pid %d) did not start: %s", proc.pid, message or "no answer")
        return None
    log.debug("upload helper (pid %d) ready", proc.pid)
    return helper


def _shortage(message: tuple[object, ...] | None) -> BaseException | None:
    """The shortage a helper answered with instead of ``ready`` (None: any other answer)."""
    if message is None or len(message) != 2 or message[0] != "error" or not isinstance(message[1], tuple):
        return None
    try:
        error = decode(message[1])
    except Exception:  # not an error as encode() makes them
        return None
    return error if limits.shortage(error) is not None else None
