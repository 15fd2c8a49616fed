"""The upload helper process (``python -m syncd.offload_helper``) and what both ends share.

Why there are helpers, and how workers use them: :mod:`syncd.offload`.
This module imports only what a helper needs (the configuration's dataclasses,
not its loader; the HTTP client; logging), and a helper imports the modules of
the destination types it is given, no others, so it starts quickly (a test
lists what it imports: tests/unit/test_import_cost.py).

What a helper gets, over a ``SOCK_SEQPACKET`` socket pair (pickled messages):

* at start, the ``[daemon]`` table and the destinations of the applied
  configuration; it builds its own HTTP client and destinations from them
  and answers ``ready`` (or ``error`` when it ran out of descriptors or
  threads meanwhile, which syncd waits out: :mod:`syncd.offload_start`);
* per file, the destination's name, the
  :class:`~syncd.destinations.base.UploadItem`, the resume state an earlier
  attempt left, the settled identity (size, mtime, inode, device) and the
  worker's open descriptor of the file (``SCM_RIGHTS``), so the helper reads
  exactly the inode the worker opened and checked: it never resolves a path.

It answers ``done`` with the receipt and the SHA-256 of the bytes it read, or
``error`` with the upload error (:func:`encode`: rebuilt on the worker's side
with its class and fields, so the retry policy and the circuits see what
they would have seen without a helper); on the way it may ask for a ``checkpoint``
(the worker writes it to the ledger and acknowledges) and reports ``beat``
while it reads, which the worker passes to its heartbeat. While it sends a
file it also says ``alive`` every :data:`ALIVE_EVERY` seconds from a thread of
its own, whatever the upload does: a helper that says nothing for
:data:`~syncd.offload.SILENT_LIMIT` seconds (stopped, or hung in the kernel)
is killed and the file sent again by the worker. ``alive`` is not a
heartbeat: an upload that hangs inside the helper is the worker's liveness
bound's to find, as in a worker without helpers.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import importlib
import logging
import os
import pickle
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

from syncd import limits, logs
from syncd.config import Config
from syncd.destinations.base import Source
from syncd.destinations.build import build_client, build_destinations
from syncd.errors import RetryableError, UploadError, describe

log = logging.getLogger("syncd.offload")

MESSAGE_MAX = 1 << 20  # bytes of the first message (the configuration)
MESSAGE = 1 << 16  # bytes of any other message
BEAT_EVERY = 1.0  # a helper reports reads at most this often
ALIVE_EVERY = 2.0  # seconds between two "alive" of a helper sending a file


class HelperFailed(RetryableError):
    """The upload helper died or answered nonsense; the worker sends the file itself next."""


class StateTooLarge(HelperFailed):
    """A resume state over a helper's message size (thousands of tiny parts): the worker
    sends the file itself, from the last state the helper could hand over."""


class CheckpointRefused(Exception):
    """The worker could not record a checkpoint: the helper abandons the upload."""


def send(sock: socket.socket, message: tuple[Any, ...], fds: list[int] | None = None) -> None:
    """One message (pickled), with ``fds`` passed along (``SCM_RIGHTS``)."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    if fds:
        socket.send_fds(sock, [data], fds)
    else:
        sock.send(data)


def receive(sock: socket.socket, size: int = MESSAGE) -> tuple[tuple[Any, ...] | None, list[int]]:
    """The next message (None: the other end closed) and the descriptors sent with it.

    ValueError when it was over ``size`` bytes or is not a message.
    """
    data, fds, flags, _ = socket.recv_fds(sock, size, 1)
    if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
        for fd in fds:
            os.close(fd)
        raise ValueError(f"a message over {size} bytes")
    if not data:
        return None, fds
    try:
        message = pickle.loads(data)
    except Exception:
        message = None
    if not isinstance(message, tuple) or not message:
        raise ValueError("a malformed message")
    return message, fds


class Helper:
    """One helper process and the worker's end of its socket (used by :mod:`syncd.offload`)."""

    def __init__(self, proc: subprocess.Popen[bytes], sock: socket.socket, generation: int) -> None:
        self.proc = proc
        self.sock = sock
        self.generation = generation
        self._poll = select.poll()
        self._poll.register(sock, select.POLLIN)

    def send(self, message: tuple[Any, ...], fds: list[int] | None = None) -> None:
        send(self.sock, message, fds)

    def receive(self, timeout: float) -> tuple[Any, ...] | None:
        """The next message, or None if none came within ``timeout``; HelperFailed at EOF."""
        if not self._poll.poll(timeout * 1000):
            return None
        try:
            message, _ = receive(self.sock)
        except ValueError as exc:
            raise HelperFailed(f"upload helper (pid {self.proc.pid}) sent {exc}") from None
        if message is None:
            raise HelperFailed(f"upload helper (pid {self.proc.pid}) exited ({self._exit()})")
        return message

    def _exit(self) -> str:
        try:
            code = self.proc.wait(1.0)
        except subprocess.TimeoutExpired:
            return "still running"
        return f"signal {-code}" if code < 0 else f"status {code}"

    def stop(self, kill: bool = False) -> None:
        """End the helper: closing its socket makes it exit; ``kill`` does not wait for that."""
        if kill and self.proc.poll() is None:
            self.proc.kill()
        self.sock.close()
        try:
            self.proc.wait(5.0)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# errors across the socket ------------------------------------------------------------------


def encode(exc: BaseException) -> tuple[Any, ...]:
    # the helper out of descriptors or threads: said as such, not as the service's error it
    # came wrapped in (whose cause does not cross), so that the worker feeds no circuit
    if (short := limits.shortage(exc)) == limits.DESCRIPTORS:
        return ("os", errno.EMFILE, f"in the upload helper: {describe(exc)}")
    if short == limits.THREADS:
        return ("other", f"{limits.NO_THREAD}: {describe(exc)}")
    if isinstance(exc, UploadError):
        cls = type(exc)
        # this module is __main__ in a helper (python -m): the worker imports it by its name
        module = __spec__.name if cls.__module__ == "__main__" and __spec__ else cls.__module__
        return ("upload", module, cls.__qualname__, str(exc), dict(vars(exc)))
    if isinstance(exc, OSError):
        return ("os", exc.errno, exc.strerror or str(exc))
    return ("other", describe(exc))


def decode(encoded: tuple[Any, ...]) -> BaseException:
    kind = encoded[0]
    if kind == "upload":
        _, module, qualname, text, attrs = encoded
        try:
            cls: Any = importlib.import_module(module)
            for part in qualname.split("."):
                cls = getattr(cls, part)
        except (ImportError, AttributeError):
            cls = None
        if not (isinstance(cls, type) and issubclass(cls, UploadError)):
            return HelperFailed(f"upload helper raised {qualname}: {text}")
        exc = cls.__new__(cls)
        Exception.__init__(exc, text)
        exc.__dict__.update(attrs)
        return exc
    if kind == "os":
        return OSError(encoded[1], encoded[2])
    return RuntimeError(f"in the upload helper: {encoded[1]}")


# the helper's side ---------------------------------------------------------------------------


def _die_with_parent(parent: int) -> None:
    """SIGKILL when syncd ends, however it ends (Linux); exit now if it has already."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the socket's end stops the helper at its next message
    if os.getppid() != parent:
        os._exit(0)


def _serve(sock: socket.socket) -> None:
    first, _ = receive(sock, MESSAGE_MAX)
    if first is None or first[0] != "config":
        return
    daemon, destination_configs = pickle.loads(first[1])
    cfg = Config(path=None, daemon=daemon, destinations=destination_configs, folders=())
    logs.setup(cfg.daemon.log_level, cfg.daemon.log_format)
    sending = threading.Event()
    lock = threading.Lock()  # one message at a time on the socket

    def say(message: tuple[Any, ...]) -> None:
        with lock:
            send(sock, message)

    def alive() -> None:
        while True:
            sending.wait()
            time.sleep(ALIVE_EVERY)
            if sending.is_set():
                with contextlib.suppress(OSError):
                    say(("alive",))

    try:
        destinations = build_destinations(cfg, build_client(cfg))
        threading.Thread(target=alive, name="alive", daemon=True).start()
    except Exception as exc:
        if limits.shortage(exc) is None:
            raise
        say(("error", encode(exc)))  # out of descriptors or threads: syncd waits, then tries again
        return
    say(("ready",))
    last_beat = 0.0

    def beat() -> None:
        nonlocal last_beat
        now = time.monotonic()
        if now - last_beat >= BEAT_EVERY:
            last_beat = now
            say(("beat",))

    def checkpoint(state: Any) -> None:
        if len(pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)) > MESSAGE - 64:
            raise StateTooLarge("the upload's resume state is too large for an upload helper")
        say(("checkpoint", state))
        answer, _ = receive(sock)
        if answer is None:
            raise SystemExit(0)
        if answer != ("ack", True):
            raise CheckpointRefused("the checkpoint could not be recorded")

    while True:
        message, fds = receive(sock)
        if message is None:
            return
        if message[0] != "upload" or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            continue
        _, name, item, resume, path, size, mtime_ns, inode, device = message
        sending.set()
        try:
            with Source(path, size=size, mtime_ns=mtime_ns, inode=inode, device=device, fd=fds[0]) as source:
                source.on_read = beat
                receipt = destinations[name].upload(item, source, resume, checkpoint)
                sha = source.sha256()
        except Exception as exc:
            if not isinstance(exc, (UploadError, OSError, CheckpointRefused)):
                log.exception("unexpected error in the upload helper")
            answer: tuple[Any, ...] = ("error", encode(exc))
        else:
            answer = ("done", receipt, sha)
        sending.clear()
        say(answer)


def main(argv: list[str]) -> int:
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    _die_with_parent(int(argv[2]))
    with socket.socket(fileno=int(argv[1])) as sock:
        try:
            _serve(sock)
        except (BrokenPipeError, ConnectionResetError):
            pass  # syncd ended
        except ValueError as exc:
            log.error("upload helper: syncd sent %s; stopping", exc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
