"""Whether any process holds a file open for writing, asked of the kernel.

Quiet time alone cannot tell a finished file from one whose writer paused: a
copy over a slow link, a scanner between pages, a producer that writes a
header, computes for a minute, then writes the rest. Linux knows, though:
a *read lease* (``fcntl(F_SETLEASE, F_RDLCK)``) is refused with ``EAGAIN``
while any process has the file open for writing. :func:`held_for_writing`
takes one on a read-only descriptor and gives it back at once, so the
settle stage waits for the writer to close the file, however long it pauses.

The answer is None (cannot tell: quiet time decides, as before) where the
kernel will not lease: a file of another user without ``CAP_LEASE`` (a
documented drop-in grants it; the shipped unit does not), ``fs.leases-enable
= 0``, or before :func:`enable` ran; and on any file system but the local
ones of :data:`LOCAL_FS`. Network file systems answer ``EAGAIN`` for reasons
of their own (NFSv4 without a read delegation, SMB without a read oplock),
which would hold every file of such a share for ever.

A writer that opens the file in the microseconds the lease is held breaks
it: its ``open`` waits until the lease is given back (an ``O_NONBLOCK`` open
fails with ``EWOULDBLOCK`` instead), and the kernel sends the holder
``SIGIO``, whose default action ends the process. :func:`enable` therefore
sets ``SIGIO`` to be ignored first; it runs on the main thread with the other
signal handlers (syncd uses ``SIGIO`` for nothing else).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import signal
import threading
from typing import Any

from syncd import safefs

log = logging.getLogger(__name__)

#: ``statfs`` magic numbers of local file systems whose leases mean what the
#: kernel's generic lease code says (linux/magic.h)
LOCAL_FS = {
    0xEF53: "ext2/3/4",
    0x58465342: "xfs",
    0x9123683E: "btrfs",
    0x01021994: "tmpfs",
    0x858458F6: "ramfs",
    0xF2F52010: "f2fs",
    0x2FC12FC1: "zfs",
    0xCA451A4E: "bcachefs",
    0x794C7630: "overlayfs",
    0x3153464A: "jfs",
    0x52654973: "reiserfs",
    0x4D44: "vfat",
    0x2011BAB0: "exfat",
    0x7366746E: "ntfs3",
}

_enabled = False
# st_dev -> statfs type, for one settle tick (forget_devices): a device number
# freed by an unmount may come back as another file system
_fs_of_device: dict[int, int | None] = {}
_said: set[str] = set()  # the reasons already logged for "cannot tell"
_lock = threading.Lock()


def enable() -> None:
    """Ignore ``SIGIO`` (a broken lease's signal) and let :func:`held_for_writing` ask."""
    global _enabled
    signal.signal(signal.SIGIO, signal.SIG_IGN)
    _enabled = True


def forget_devices() -> None:
    """Look the file system types up afresh (each settle tick begins with it)."""
    _fs_of_device.clear()


def file_held_for_writing(root: str, relpath: str, device: int | None = None) -> bool | None:
    """:func:`held_for_writing` for the file ``relpath`` of the folder ``root``, opened
    through :mod:`syncd.safefs`. True too while another holder's lease on it (Samba's
    oplock) is being broken; None when it cannot be opened (gone, swapped, unreadable:
    whoever goes on to use it finds out). syncd out of descriptors to open it (EMFILE)
    raises: "cannot tell" would let a file its writer paused on go half-written."""
    try:
        fd = safefs.open_file(root, relpath)
    except BlockingIOError:
        return True
    except OSError as exc:
        if exc.errno in safefs.SHORT:
            raise
        return None
    try:
        return held_for_writing(fd, device)
    finally:
        os.close(fd)


def held_for_writing(fd: int, device: int | None = None) -> bool | None:
    """True when some process has the file of ``fd`` (opened read-only) open for
    writing, False when none has, None when the kernel will not say. ``device``: the
    file's ``st_dev``, whose file system type is then looked up once."""
    if not _enabled:
        return None
    if device is None:
        kind = fs_type(fd)
    else:
        kind = _fs_of_device.get(device, -1)
        if kind == -1:
            kind = _fs_of_device[device] = fs_type(fd)
    if kind is None or kind not in LOCAL_FS:
        _say_once(
            "a file system whose leases do not say so" + ("" if kind is None else f" (statfs type {kind:#x})")
        )
        return None
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
            return True
        _say_once(_why(exc.errno))
        return None
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    except OSError:  # closing the descriptor gives the lease back too
        pass
    return False


class _StatFs(ctypes.Structure):
    _fields_ = [("f_type", ctypes.c_long), ("_rest", ctypes.c_byte * 248)]


_fstatfs: Any = None  # libc's fstatfs, looked up at the first use


def fs_type(fd: int) -> int | None:
    """The ``statfs`` type (magic number) of the file system of ``fd``; None if unknown."""
    global _fstatfs
    if _fstatfs is None:
        _fstatfs = ctypes.CDLL(None, use_errno=True).fstatfs
    buf = _StatFs()
    if _fstatfs(fd, ctypes.byref(buf)) != 0:
        return None
    return int(buf.f_type) & 0xFFFFFFFF


def _say_once(why: str) -> None:
    with _lock:
        first = why not in _said
        _said.add(why)
    if first:
        log.info(
            "cannot ask the kernel whether a file is still open for writing (%s): "
            "quiet time alone decides when such files are finished",
            why,
        )


def _why(code: int | None) -> str:
    if code in (errno.EACCES, errno.EPERM):
        return "a file of another user, and syncd lacks CAP_LEASE"
    if code == errno.EINVAL:
        return "the file system has no leases, or fs.leases-enable is 0"
    return errno.errorcode.get(code or 0, str(code))
