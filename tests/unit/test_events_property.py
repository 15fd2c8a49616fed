"""F5 (duplicate and interleaved events), property-based, at the handler level.

Hypothesis drives a real folder on disk through random file operations and
feeds the watchdog events those operations would produce to
:class:`syncd.event_handler._Handler` -- delivered late, in order (as inotify
does), mixed with stale and duplicated events. In between, the intake is
flushed into a real ledger by the daemon's own ``syncd.intake.flush`` (a
moved-in directory becomes a scan, run at once), and the settle stage ticks
on a fake clock. Whatever the interleaving:

* a path never has more than one active ledger row;
* an ignored name (junk, dot-file, partial download) never gets a row;
* once every event is delivered and the folder has been quiet for the
  settle time, every accepted file on disk has exactly one active row, and
  no row is left settling for a file that is gone.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
)

from syncd import rules, scanner
from syncd.event_handler import _Handler
from syncd.events import Intake
from syncd.intake import flush
from syncd.ledger import ACTIVE_STATES, Ledger
from syncd.settle import Settler
from tests.conftest import FakeClock, make_folder

SETTLE = 1.0
ACCEPTED = ["a.txt", "b.pdf", "sub/c.txt", "d e.txt", "sub/deeper/e.bin"]
IGNORED = [".hidden", "x.tmp", "~$lock.docx", "y.part", ".git/cfg", "Thumbs.db", "sub/.z"]
OUTSIDE = ["../outside/o1.txt", "../outside/o2.tmp"]
NAMES = ACCEPTED + IGNORED
EVENT_KINDS = {
    "created": FileCreatedEvent,
    "modified": FileModifiedEvent,
    "closed": FileClosedEvent,
    "deleted": FileDeletedEvent,
}

name = st.sampled_from(NAMES)
any_name = st.sampled_from(NAMES + OUTSIDE)
step = st.one_of(
    st.tuples(st.just("write"), any_name, st.integers(1, 3)),  # open/write/close cycles
    st.tuples(st.just("touch"), name),
    st.tuples(st.just("move"), any_name, any_name),
    st.tuples(st.just("delete"), name),
    st.tuples(st.just("stale"), st.sampled_from(sorted(EVENT_KINDS)), any_name),
    st.tuples(st.just("dup"), st.integers(0, 5)),  # watchdog delivering an event twice
    st.tuples(
        st.just("dir_in"),
    ),  # a whole directory moved in: one event, no file events
    st.tuples(st.just("deliver"), st.integers(0, 6)),
    st.tuples(
        st.just("flush"),
    ),
    st.tuples(st.just("tick"), st.sampled_from([0.0, 0.3, 0.6, 1.1, 2.5])),
)


class World:
    """A real folder, its handler, intake, ledger and settle stage on a fake clock."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.folder = make_folder(base, "inbox", settle_seconds=SETTLE)
        self.root = os.fspath(self.folder.path)
        (base / "outside").mkdir()
        self.clock = FakeClock()
        self.ledger = Ledger.open(base / "state" / "ledger.sqlite3", clock=self.clock)
        self.intake = Intake()
        self.handler = _Handler(self.folder, self.intake)
        self.pending: list[FileSystemEvent] = []  # produced, not yet delivered (in order)
        self.delivered: list[FileSystemEvent] = []
        self.settler = Settler(self.ledger, lambda: {self.root: self.folder}, clock=self.clock)
        self.dir_ins = 0

    def close(self) -> None:
        self.ledger.close()

    def path(self, rel: str) -> str:
        return os.path.normpath(os.path.join(self.root, rel))

    def _scan(self, root: str, rel: str = "", *, reason: str = "") -> None:
        scanner.scan_folder(self.ledger, self.folder, start=rel)

    # file operations, each queueing the events inotify would report ---------------

    def write(self, rel: str, cycles: int) -> None:
        path = self.path(rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if not os.path.exists(path):
            self.pending.append(FileCreatedEvent(path))
        for i in range(cycles):
            with open(path, "ab") as f:
                f.write(f"{rel}:{i};".encode())
            self.pending += [FileModifiedEvent(path), FileClosedEvent(path)]

    def touch(self, rel: str) -> None:
        path = self.path(rel)
        if os.path.isfile(path):
            os.utime(path)
            self.pending.append(FileModifiedEvent(path))

    def move(self, a: str, b: str) -> None:
        src, dst = self.path(a), self.path(b)
        if src == dst or not os.path.isfile(src):
            return
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        os.replace(src, dst)
        self.pending.append(FileMovedEvent(src, dst))

    def delete(self, rel: str) -> None:
        path = self.path(rel)
        if os.path.isfile(path):
            os.unlink(path)
            self.pending.append(FileDeletedEvent(path))

    def stale(self, kind: str, rel: str) -> None:
        self.pending.append(EVENT_KINDS[kind](self.path(rel)))

    def dup(self, back: int) -> None:
        if self.delivered:
            self.pending.insert(0, self.delivered[-1 - min(back, len(self.delivered) - 1)])

    def dir_in(self) -> None:
        self.dir_ins += 1
        outside = os.path.join(self.base, "outside", f"batch{self.dir_ins}")
        os.makedirs(os.path.join(outside, "nested"))
        for rel in ("one.txt", "nested/two.pdf", "skip.tmp"):
            Path(outside, rel).write_bytes(b"moved in with its directory")
        inside = self.path(f"batch{self.dir_ins}")
        os.rename(outside, inside)
        self.pending.append(DirMovedEvent(outside, inside))

    def deliver(self, n: int | None = None) -> None:
        n = len(self.pending) if n is None else min(n, len(self.pending))
        for event in self.pending[:n]:
            self.handler.dispatch(event)
            self.delivered.append(event)
        del self.pending[:n]

    def flush(self) -> None:
        flush(self.ledger, self.intake, {self.root: self.folder}, request_scan=self._scan)
        self.check_rows()

    def tick(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.settler.tick()
        self.check_rows()

    # properties ----------------------------------------------------------------

    def check_rows(self) -> None:
        active: dict[str, int] = {}
        for row in self.ledger.rows():
            verdict = rules.judge(
                row.relpath,
                include=self.folder.include,
                exclude=self.folder.exclude,
                ignore_junk=self.folder.ignore_junk,
            )
            assert verdict.accepted, f"a row for an ignored name: {row.relpath!r} ({verdict.reason})"
            assert not row.relpath.startswith(".."), f"a row outside the folder: {row.relpath!r}"
            if row.state in ACTIVE_STATES and row.location is None:
                active[row.relpath] = active.get(row.relpath, 0) + 1
        twice = {p: n for p, n in active.items() if n > 1}
        assert not twice, f"more than one active row per path: {twice}"

    def on_disk(self) -> set[str]:
        found = set()
        for dirpath, _dirs, files in os.walk(self.root):
            for f in files:
                rel = os.path.relpath(os.path.join(dirpath, f), self.root)
                if rules.judge(
                    rel,
                    include=self.folder.include,
                    exclude=self.folder.exclude,
                    ignore_junk=self.folder.ignore_junk,
                ).accepted:
                    found.add(rel)
        return found


def _apply(world: World, op: tuple[Any, ...]) -> None:
    kind, *args = op
    getattr(world, kind)(*args)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(step, min_size=1, max_size=30))
def test_f5_random_event_interleavings_keep_one_row_per_path(
    steps: list[tuple[Any, ...]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    base = Path(tempfile.mkdtemp(dir=tmp_path_factory.getbasetemp()))
    world = World(base)
    try:
        for op in steps:
            _apply(world, op)
        world.deliver()  # every event arrives in the end
        world.flush()
        for _ in range(3):  # quiet for longer than the settle time
            world.tick(SETTLE + 0.5)
        rows = [r for r in world.ledger.rows() if r.state in ACTIVE_STATES and r.location is None]
        by_path: dict[str, list[str]] = {}
        for r in rows:
            by_path.setdefault(r.relpath, []).append(r.state)
        on_disk = world.on_disk()
        missing = on_disk - set(by_path)
        assert not missing, f"files on disk without a ledger row: {sorted(missing)}"
        for rel, states in by_path.items():
            if "settling" in states:
                assert rel in on_disk, f"{rel!r} is gone but its row is still settling"
        # what the settle stage leaves settling is only a renamed twin of a queued upload
        for r in rows:
            if r.state == "settling":
                assert world.ledger.inode_busy(r), f"{r.relpath!r} quiet for {SETTLE}s but not queued"
    finally:
        world.close()
        shutil.rmtree(base, ignore_errors=True)


def test_f5_the_same_events_twice_make_no_second_row(tmp_path: Path) -> None:
    """A plain example of the property, readable on its own: a producer's usual burst."""
    world = World(tmp_path)
    try:
        world.write("a.txt", 3)
        world.write("x.tmp", 1)
        world.move("x.tmp", "b.pdf")  # temp name renamed into place
        world.deliver()
        world.flush()
        for event in list(world.delivered):  # watchdog repeating everything
            world.handler.dispatch(event)
        world.handler.dispatch(DirCreatedEvent(world.path("newdir")))
        world.flush()
        world.tick(SETTLE + 0.5)
        world.tick(SETTLE + 0.5)
        rows = world.ledger.rows()
        assert sorted((r.relpath, r.state) for r in rows) == [("a.txt", "queued"), ("b.pdf", "queued")]
    finally:
        world.close()
