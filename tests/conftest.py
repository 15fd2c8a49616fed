"""Fixtures and guards for the whole suite (pytest applies this file to every directory under tests/).

Guards: a test fails if it leaves a thread running after its teardown (:func:`_no_thread_leaks`),
and a test without the ``process`` marker fails if it starts a process
(:func:`pytest_runtest_call` and its siblings), which keeps ``make check`` free of them.

Under pytest-xdist (``make test``: ``-n 2``) each worker is a pytest session of its own and runs
these guards for the tests it is given; they keep no state across tests or processes (the
thread baseline and the refused spawners are per test, :func:`gc.freeze` per process), and no
hook here is one that runs only in the controller.
"""

from __future__ import annotations

import _posixsubprocess
import gc
import logging
import os
import subprocess
import sys
import sysconfig
import threading
import time
import traceback
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The daemons and commands the tests start run with syncd's bytecode cached, as an installed
# syncd does: under PYTHONDONTWRITEBYTECODE (some shells and CI images set it) each of the
# suite's hundreds of starts would compile syncd's modules again (~0.15 s of CPU each). The
# cache goes to .venv/pycache, outside the source tree; the writes are atomic, so parallel
# workers share it safely.
if os.environ.pop("PYTHONDONTWRITEBYTECODE", None):
    os.environ.setdefault("PYTHONPYCACHEPREFIX", str(ROOT / ".venv" / "pycache"))

from syncd.config import FolderConfig  # noqa: E402
from syncd.ledger import Ledger, Row, Stat  # noqa: E402

# How long a test's threads get, after its fixtures are torn down, to finish on their own.
THREAD_GRACE_SECONDS = 2.0


def _where(thread: threading.Thread) -> str:
    """The innermost frame of ``thread``'s stack outside the standard library, as file:line."""
    frame = sys._current_frames().get(thread.ident or -1)
    if frame is None:
        return "?"
    stack = traceback.extract_stack(frame)
    stdlib = sysconfig.get_paths()["stdlib"]
    entry = next((e for e in reversed(stack) if not e.filename.startswith(stdlib)), stack[-1])
    return f"{entry.filename}:{entry.lineno} in {entry.name}"


@pytest.fixture(autouse=True)
def _no_thread_leaks() -> Iterator[None]:
    """Fail a test that leaves a thread running after its teardown (as watchdog's own suite does).

    Fixtures of a wider scope are set up before this one and torn down after it, so the threads
    they own are in the baseline; the test's own function-scoped fixtures are torn down before
    the check. Threads the test started get THREAD_GRACE_SECONDS to end.

    Garbage is collected first: an unclosed file or socket the test dropped in a reference cycle
    then gives its ResourceWarning (an error) in this test's teardown, not in a later test. What
    is still alive after that is frozen (:func:`gc.freeze`), so each collection walks only what
    one test made: milliseconds, not the whole session's heap. (What a test keeps alive past its
    teardown and drops later is never collected, then.)"""
    before = set(threading.enumerate())
    yield
    gc.collect()
    gc.freeze()
    started = [
        t for t in threading.enumerate() if t not in before and not isinstance(t, threading._DummyThread)
    ]
    deadline = time.monotonic() + THREAD_GRACE_SECONDS
    for thread in started:
        thread.join(max(0.0, deadline - time.monotonic()))
    leaked = [t for t in started if t.is_alive()]
    if leaked:
        pytest.fail(
            "threads started by the test still run after its teardown:\n"
            + "\n".join(f"  {t.name!r} (daemon={t.daemon}) at {_where(t)}" for t in leaked),
            pytrace=False,
        )


class StartsAProcess(RuntimeError):
    """A test without the ``process`` marker tried to start a process."""


# What starts a process: subprocess (run, check_output, asyncio's subprocesses, os.popen) goes
# through Popen._execute_child; multiprocessing through os.fork or _posixsubprocess.fork_exec.
_SPAWNERS: list[tuple[Any, str]] = [(subprocess.Popen, "_execute_child"), (_posixsubprocess, "fork_exec")] + [
    (os, name) for name in ("fork", "forkpty", "posix_spawn", "posix_spawnp", "system") if hasattr(os, name)
]


def _message(tried: list[str]) -> str:
    return (
        f"this test starts a process: mark it process (@pytest.mark.process, or "
        f"pytestmark = pytest.mark.process for a whole file); it tried {tried[0]}"
    )


def _refusing(owner: Any, name: str, tried: list[str]) -> Callable[..., Any]:
    what = f"{getattr(owner, '__name__', owner)}.{name}"

    def refuse(*args: Any, **kwargs: Any) -> Any:
        if what == "Popen._execute_child" and len(args) > 1:  # (self, args, executable, ...)
            tried.append(f"subprocess.Popen({args[1]!r})")
        else:
            tried.append(f"{what}()")
        raise StartsAProcess(_message(tried))

    return refuse


def _processes_refused(item: pytest.Item) -> Generator[None, Any, Any]:
    """Runs one phase (setup, call or teardown) of ``item``; without the ``process`` marker,
    starting a process raises :class:`StartsAProcess`, and the phase fails with that message
    even if the code under test caught the exception (and skipped, or went on)."""
    if item.get_closest_marker("process") is not None:
        return (yield)
    tried: list[str] = []
    with pytest.MonkeyPatch.context() as mp:
        for owner, name in _SPAWNERS:
            mp.setattr(owner, name, _refusing(owner, name, tried))
        try:
            result = yield
        except StartsAProcess:
            raise
        except (Exception, pytest.skip.Exception, pytest.fail.Exception) as exc:
            if tried:
                raise StartsAProcess(_message(tried)) from exc
            raise
    if tried:
        raise StartsAProcess(_message(tried))
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, Any, Any]:
    """Fixtures of every scope are set up here, so a module fixture cannot slip a process in."""
    return (yield from _processes_refused(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, Any, Any]:
    return (yield from _processes_refused(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, Any, Any]:
    return (yield from _processes_refused(item))


class FakeClock:
    """A settable wall clock for settle and backoff tests (no sleeping)."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Put the logging configuration back after a test that set up syncd's handlers."""
    root = logging.getLogger()
    level = root.level
    levels = {n: logging.getLogger(n).level for n in ("httpx", "httpcore", "watchdog")}
    yield
    for handler in list(root.handlers):
        if getattr(handler, "_syncd", False):
            root.removeHandler(handler)
    root.setLevel(level)
    for name, lvl in levels.items():
        logging.getLogger(name).setLevel(lvl)


def queue_file(ledger: Any, folder: Any, rel: str, data: bytes | None = None) -> int:
    """Put ``folder/rel`` in the ledger as a settled, ``queued`` row (writing ``data`` first
    if given), as the watcher and the settle stage would; returns the row id."""
    path = Path(folder.path) / rel
    if data is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    root = os.fspath(folder.path)
    ledger.observe(
        root, [rel], destination=folder.destination, labels=folder.labels, category=folder.category
    )
    row = ledger.active_for_path(root, rel)
    assert row is not None
    st = path.stat()
    note_stat(ledger, row.id, size=st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino, device=st.st_dev)
    ledger.promote(row.id)
    return int(row.id)


def note_stat(
    ledger: Ledger, row_id: int, *, size: int, mtime_ns: int, inode: int, device: int | None = None
) -> None:
    """Record a stat of a settling row as the settle stage does when it sees the file change
    (``Ledger.set_due``): its quiet time restarts."""
    changed_at = ledger._clock()
    stat = Stat(size=size, mtime_ns=mtime_ns, inode=inode, device=device, changed_at=changed_at)  # type: ignore[arg-type]
    ledger.set_due([], {row_id: stat})


def row_of(ledger: Ledger, row_id: int) -> Row:
    """The ledger row ``row_id``, which must exist."""
    row = ledger.get(row_id)
    assert row is not None, f"no ledger row {row_id}"
    return row


def make_folder(tmp_path: Path, name: str = "inbox", **kw: Any) -> FolderConfig:
    """A FolderConfig rooted in tmp_path with its defaults filled in, folder created."""
    path = tmp_path / name
    path.mkdir(parents=True, exist_ok=True)
    kw.setdefault("destination", "dest")
    kw.setdefault("archive_dir", tmp_path / "archive" / name)
    kw.setdefault("failed_dir", tmp_path / "failed" / name)
    folder = FolderConfig(path=path, **kw)
    return folder.with_defaults(tmp_path / "state")


@pytest.fixture
def make_setup(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """A factory of :class:`tests.harness.Setup` in tmp_path; every one is closed after the test."""
    from tests.harness import Setup

    made: list[Setup] = []

    def make(**kw: Any) -> Setup:
        s = Setup(tmp_path, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


@pytest.fixture
def setup(make_setup: Callable[..., Any]) -> Callable[..., Any]:
    """The same factory under the name the scenario files use."""
    return make_setup
