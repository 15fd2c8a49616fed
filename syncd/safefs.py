"""Path safety: file-system calls that never leave their folder.

Anyone who can write into a watched folder can create symlinks there, and
can swap a directory for a symlink at any moment. A call such as
``open(folder + "/x/report.pdf")`` would then follow ``x`` to wherever the
link points: a credentials directory, another producer's inbox. So every
call syncd makes under a watched folder, an ``archive_dir`` or a
``failed_dir`` goes through this module, which resolves a *relative* path
from a directory file descriptor of that trusted root and refuses a symlink
at **every** component, not only the last:

* ``openat2(2)`` with ``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
  RESOLVE_NO_MAGICLINKS`` where the kernel has it (Linux 5.6+), so the
  kernel checks every component atomically;
* otherwise a walk that opens one component at a time with
  ``O_NOFOLLOW | O_DIRECTORY`` from the previous component's descriptor.

A symlink anywhere in the path raises :class:`UnsafePath` (an ``OSError``
with ``errno.ELOOP``); ``..`` or an absolute path raises it too. The root
itself is the operator's configured path and is opened as given.

Directories created here get mode 0700 unless told otherwise, and files are
created with ``O_EXCL`` (never clobbering, never following a planted link).
Identity of a file is ``(st_dev, st_ino)``, never the inode number alone.

:func:`walk` lists a tree from directory descriptors: it never descends
through a symlink, keeps a set of visited ``(st_dev, st_ino)`` so a bind
mount loop is entered once, and stops at a depth and an entry cap so a
hostile tree costs bounded memory and time.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

log = logging.getLogger(__name__)

_SYS_OPENAT2 = 437  # the same number on every Linux architecture (it came after the unification)
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_BENEATH = _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS  # no way out of dirfd
_NO_LINKS = _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS
_AT_FDCWD = -100

O_PATH = getattr(os, "O_PATH", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
DIR_FLAGS = (O_PATH or os.O_RDONLY) | os.O_DIRECTORY | os.O_NOFOLLOW | _CLOEXEC
READ_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _CLOEXEC
READ_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | _CLOEXEC

MAX_DEPTH = 64  # directory levels a walk descends
MAX_ENTRIES = 1_000_000  # directory entries one walk looks at before it stops
SHORT = (errno.EMFILE, errno.ENFILE)  # syncd out of descriptors (syncd/limits.py)


class UnsafePath(OSError):
    """A path that would leave its root: a symlink at some component, or ``..``."""

    def __init__(self, relpath: str, why: str = "a symlink in the path (symlinks are never followed)"):
        super().__init__(errno.ELOOP, why, relpath)


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


class _Kernel:
    """Whether ``openat2`` works here; found out on first use."""

    use_openat2: bool | None = None  # None: not tried yet; tests set False to exercise the walk
    _syscall = None

    @classmethod
    def openat2(cls, dirfd: int, path: bytes, flags: int, mode: int, resolve: int = _BENEATH) -> int | None:
        """The new descriptor, or None when the kernel (or a seccomp filter) lacks openat2."""
        if cls.use_openat2 is False:
            return None
        if cls._syscall is None:
            try:
                cls._syscall = ctypes.CDLL(None, use_errno=True).syscall
            except (OSError, AttributeError):
                cls.use_openat2 = False
                return None
        how = _OpenHow(flags, mode if flags & os.O_CREAT else 0, resolve)
        fd = cls._syscall(_SYS_OPENAT2, dirfd, path, ctypes.byref(how), ctypes.sizeof(how))
        if fd >= 0:
            cls.use_openat2 = True
            return int(fd)
        err = ctypes.get_errno()
        if err in (errno.ENOSYS, errno.EPERM) and cls.use_openat2 is None:
            cls.use_openat2 = False  # no openat2 (old kernel, or a sandbox refuses it)
            return None
        if err == errno.EAGAIN:  # RESOLVE_* lookups may ask to be retried
            return cls.openat2(dirfd, path, flags, mode, resolve)
        raise OSError(err, os.strerror(err), os.fsdecode(path))


def components(relpath: str) -> list[str]:
    """The parts of a relative path; UnsafePath for an absolute path, ``.``/``..`` or an empty part."""
    if relpath in ("", "."):
        return []
    parts = relpath.split("/")
    if relpath.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise UnsafePath(relpath, "not a plain relative path")
    return parts


def open_root(root: str | os.PathLike[str], flags: int = DIR_FLAGS & ~os.O_NOFOLLOW) -> int:
    """A descriptor of a configured root directory (the operator's path, followed as given)."""
    return os.open(os.fspath(root), flags)


def open_beneath(dirfd: int, relpath: str, flags: int, mode: int = 0o600) -> int:
    """``openat`` of ``relpath`` under ``dirfd``, refusing a symlink at any component.

    ``O_NOFOLLOW`` and ``O_CLOEXEC`` are always added. An empty ``relpath``
    opens ``dirfd``'s own directory again (with ``flags``).
    """
    flags |= os.O_NOFOLLOW | _CLOEXEC
    parts = components(relpath)
    if not parts:
        return os.open(".", flags & ~os.O_NOFOLLOW, dir_fd=dirfd)
    try:
        fd = _Kernel.openat2(dirfd, os.fsencode(relpath), flags, mode)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EXDEV):
            raise UnsafePath(relpath) from None
        if exc.errno not in (errno.ENOTDIR, errno.ENAMETOOLONG):
            raise
        # ENOTDIR: a symlink where a directory was asked for, or a file on the way: find out
        # which; ENAMETOOLONG: a path past PATH_MAX, which one component at a time can open
        fd = None
    if fd is not None:
        return fd
    return _walk_open(dirfd, parts, flags, mode, relpath)


def _walk_open(dirfd: int, parts: list[str], flags: int, mode: int, relpath: str) -> int:
    current = dirfd
    try:
        for part in parts[:-1]:
            try:
                nxt = os.open(part, DIR_FLAGS, dir_fd=current)
            except OSError as exc:
                if exc.errno == errno.ELOOP or (exc.errno == errno.ENOTDIR and _is_link(current, part)):
                    raise UnsafePath(relpath) from None
                raise
            if current != dirfd:
                os.close(current)
            current = nxt
        try:
            return os.open(parts[-1], flags, mode, dir_fd=current)
        except OSError as exc:
            if exc.errno == errno.ELOOP or (exc.errno == errno.ENOTDIR and _is_link(current, parts[-1])):
                raise UnsafePath(relpath) from None
            raise
    finally:
        if current != dirfd:
            os.close(current)


def _is_link(dirfd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dirfd, follow_symlinks=False).st_mode)
    except OSError:
        return False


@contextlib.contextmanager
def parent(
    root: str | os.PathLike[str] | int, relpath: str, *, create: bool = False, mode: int = 0o700
) -> Iterator[tuple[int, str]]:
    """``(dirfd, name)``: the directory holding ``relpath`` (under ``root``) and its last part.

    ``root`` is a configured directory path or an open descriptor of one.
    With ``create``, missing directories on the way are made with ``mode``.
    The descriptor is valid inside the ``with`` block only.
    """
    parts = components(relpath)
    if not parts:
        raise UnsafePath(relpath, "names the root itself")
    rootfd = open_root(root) if not isinstance(root, int) else root
    try:
        rel_dir = "/".join(parts[:-1])
        if not rel_dir:  # a name in the root itself: its descriptor serves, no second one
            yield rootfd, parts[-1]
            return
        dirfd = makedirs(rootfd, rel_dir, mode) if create else open_beneath(rootfd, rel_dir, DIR_FLAGS)
        try:
            yield dirfd, parts[-1]
        finally:
            os.close(dirfd)
    finally:
        if not isinstance(root, int):
            os.close(rootfd)


def makedirs(rootfd: int, rel_dir: str, mode: int = 0o700) -> int:
    """Create ``rel_dir`` under ``rootfd`` as needed (``mkdirat``, one part at a time); its descriptor.

    An existing part that is a symlink (or not a directory) is refused; it
    is never followed and never replaced.
    """
    current = os.open(".", DIR_FLAGS & ~os.O_NOFOLLOW, dir_fd=rootfd)
    try:
        for part in components(rel_dir):
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, mode, dir_fd=current)
            try:
                nxt = os.open(part, DIR_FLAGS, dir_fd=current)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise UnsafePath(rel_dir, "a symlink or a file where a directory belongs") from None
                raise
            os.close(current)
            current = nxt
        return current
    except BaseException:
        os.close(current)
        raise


def lstat(root: str | os.PathLike[str] | int, relpath: str) -> os.stat_result:
    """``lstat`` of ``root/relpath`` without following a symlink at any component."""
    with parent(root, relpath) as (dirfd, name):
        return os.stat(name, dir_fd=dirfd, follow_symlinks=False)


def open_file(root: str | os.PathLike[str] | int, relpath: str, flags: int = READ_FILE_FLAGS) -> int:
    """A descriptor of the file ``root/relpath`` (read-only, non-blocking by default)."""
    rootfd = open_root(root) if not isinstance(root, int) else root
    try:
        return open_beneath(rootfd, relpath, flags)
    finally:
        if not isinstance(root, int):
            os.close(rootfd)


def same_file(a: os.stat_result, b: os.stat_result) -> bool:
    """Whether two stats are of one file: same device and inode."""
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def fsync_dirfd(dirfd: int) -> None:
    """fsync a directory given by a (possibly ``O_PATH``) descriptor."""
    fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC, dir_fd=dirfd)
    try:
        os.fsync(fd)
    except OSError as exc:  # some filesystems refuse directory fsync
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def without_symlinks(path: str) -> bool:
    """Whether the kernel resolves the absolute, normal ``path`` without following any
    symlink (one ``openat2``, where ``realpath`` lstats each component: this look is made
    for every file uploaded and archived); False when it cannot tell."""
    if not path.startswith("/") or os.path.normpath(path) != path:
        return False
    try:
        fd = _Kernel.openat2(_AT_FDCWD, os.fsencode(path), (O_PATH or os.O_RDONLY) | _CLOEXEC, 0, _NO_LINKS)
    except OSError:  # a symlink on the way (ELOOP), missing, not reachable: realpath says
        return False
    if fd is None:
        return False
    os.close(fd)
    return True


def anchor(path: str, roots: Iterable[str | os.PathLike[str] | None]) -> tuple[str, str]:
    """Split an absolute ``path`` into ``(root, relpath)`` for the first root that holds it.

    The split is lexical: ``path`` must lie under the root without ``..``.
    Raises :class:`UnsafePath` when no root holds it.
    """
    for root in roots:
        if root is None:
            continue
        base = os.fspath(root).rstrip("/") or "/"
        prefix = base if base == "/" else base + "/"
        if path.startswith(prefix):
            rel = path[len(prefix) :]
            components(rel)
            return base, rel
    raise UnsafePath(path, "outside every configured folder")


@dataclass(frozen=True)
class Entry:
    """One directory entry found by :func:`walk`."""

    relpath: str
    stat: os.stat_result


def walk(
    root: str | os.PathLike[str],
    *,
    start: str = "",
    descend: Callable[[str, os.stat_result], bool] | None = None,
    max_depth: int = MAX_DEPTH,
    max_entries: int = MAX_ENTRIES,
    shortage_raises: bool = False,
) -> Iterator[Entry]:
    """Every entry under ``root/start`` (``lstat``), directories before their contents.

    ``descend(relpath, stat)`` decides whether to enter a directory (default:
    always). Symlinks are reported, never entered; a directory whose
    ``(st_dev, st_ino)`` was seen already (a bind-mount loop) is entered
    once; ``max_depth`` and ``max_entries`` bound the walk, with one warning
    when a bound stops it. A directory that cannot be listed is logged and
    skipped; one swapped for a symlink mid-walk is not entered. ``shortage_raises``:
    syncd out of descriptors (EMFILE, ENFILE) raises, as the walk is cut short.
    """
    seen: set[tuple[int, int]] = set()
    counted = 0
    try:
        rootfd = open_root(root)
    except OSError as exc:
        if shortage_raises and exc.errno in SHORT:
            raise
        if exc.errno != errno.ENOENT:
            log.warning("cannot list %r: %s", os.fspath(root), exc.strerror or exc)
        return
    try:
        stack: list[tuple[str, int]] = [(start, 0)]
        while stack:
            rel, depth = stack.pop()
            try:
                fd = open_beneath(rootfd, rel, READ_DIR_FLAGS)
            except FileNotFoundError:
                continue
            except OSError as exc:
                if shortage_raises and exc.errno in SHORT:
                    raise
                log.warning("cannot list %r under %r: %s", rel, os.fspath(root), exc.strerror or exc)
                continue
            try:
                st_dir = os.fstat(fd)
                key = (st_dir.st_dev, st_dir.st_ino)
                if key in seen:
                    log.warning(
                        "not entering %r under %r again: it is a directory already "
                        "walked (a bind-mount loop?)",
                        rel,
                        os.fspath(root),
                    )
                    continue
                seen.add(key)
                with os.scandir(fd) as it:
                    names = [e.name for e in it]
                for name in names:
                    counted += 1
                    if counted > max_entries:
                        log.warning(
                            "stopped walking %r after %d entries; the rest is seen at the next scan",
                            os.fspath(root),
                            max_entries,
                        )
                        return
                    try:
                        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    except OSError:
                        continue
                    relpath = f"{rel}/{name}" if rel else name
                    yield Entry(relpath, st)
                    if stat.S_ISDIR(st.st_mode):
                        if depth + 1 >= max_depth:
                            log.warning(
                                "not descending into %r under %r: deeper than %d levels",
                                relpath,
                                os.fspath(root),
                                max_depth,
                            )
                            continue
                        if descend is None or descend(relpath, st):
                            stack.append((relpath, depth + 1))
            finally:
                os.close(fd)
    finally:
        os.close(rootfd)
