"""Failure scenarios about the ledger and durability (docs/guarantees.md, F25, F26, F28).

The real daemon (subprocess) against the in-process emulator:

* F25: a ledger whose header is smashed (SQLITE_NOTADB) or whose page 3 is
  garbled (SQLITE_CORRUPT): ``syncd run`` fails closed with exit code 4 and
  a message naming the fix, touching no file; systemd is told not to
  restart on 4; ``syncd ledger rebuild`` moves the database aside, and the
  next run rebuilds from the folders without uploading archived files again.
* F26: another process holds ``BEGIN EXCLUSIVE`` on the ledger for longer
  than the busy timeout: the daemon logs "database is locked", keeps
  running, and catches up after the release; a second instance still exits
  3 at once (the instance lock is a separate file).
* F28: the order of durability syscalls, read from strace, for every
  archived file: the "uploaded" commit is fdatasync'ed before the link into
  the archive, then the archive directory is fsync'ed, then the source is
  unlinked, then the inbox directory is fsync'ed.
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from syncd.aside import UNLINK_PREFIX
from tests.harness import ROOT, Setup, sha, strace_problem, wait_until

pytestmark = pytest.mark.timeout(90)


def _once(s: Setup) -> None:
    proc = s.start("once")
    assert proc.wait(60) == 0, s.log_text()[-2000:]


# -- F25 ----------------------------------------------------------------------------------


def _smash_header(path: Path) -> None:
    with open(path, "r+b") as f:  # bytes 0-16: "SQLite format 3\0" and the page size
        f.write(b"\xa5" * 17)


def _garble_page_3(path: Path) -> None:
    conn = sqlite3.connect(path)  # raw SQLite: the file format itself is what gets damaged
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    assert conn.execute("PRAGMA page_count").fetchone()[0] >= 3
    conn.close()
    data = bytearray(path.read_bytes())
    for i in range(2 * page, 2 * page + 200):  # 200 bytes at the start of page 3
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


@pytest.mark.process
@pytest.mark.parametrize("damage", ["notadb", "corrupt"])
def test_f25_corrupt_ledger_exits_4_and_rebuild_recovers(setup: Callable[..., Setup], damage: str) -> None:
    s = setup(folders=[{"name": "in", "settle_seconds": 0.1}])
    for i in range(3):
        s.drop(f"old-{i}.txt", f"archived before the damage {i}".encode())
    _once(s)
    old = {r.relpath: r for r in s.rows()}
    assert {r.state for r in old.values()} == {"done"}
    for i in range(3):  # arrive while the daemon is down
        s.drop(f"new-{i}.txt", f"dropped after the damage {i}".encode())
    conn = sqlite3.connect(s.ledger_path)  # fold the WAL in, so the damage hits real pages
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    (_smash_header if damage == "notadb" else _garble_page_3)(s.ledger_path)

    proc = s.start()
    assert proc.wait(30) == 4, s.log_text()[-2000:]
    message = s.log_text()
    want = "file is not a database" if damage == "notadb" else "is corrupt"
    assert want in message and "syncd ledger rebuild" in message, message
    assert "Traceback" not in message
    out = s.cli("status")  # the CLI fails closed the same way, with the same advice
    assert out.returncode == 4 and "syncd ledger rebuild" in out.stderr
    assert sorted(p.name for p in s.inbox().iterdir()) == [f"new-{i}.txt" for i in range(3)]
    assert sorted(p.name for p in s.archive().iterdir()) == [f"old-{i}.txt" for i in range(3)]

    out = s.cli("ledger", "rebuild")
    assert out.returncode == 0, out.stderr
    assert "moved ledger.sqlite3.broken-" in out.stdout
    assert list(s.ledger_path.parent.glob("ledger.sqlite3.broken-*"))
    if damage == "notadb":  # nothing can be read: the files archived before keep no row
        assert "nothing could be read from the damaged ledger (file is not a database)" in out.stdout
        salvaged: list[str] = []
    else:  # page 3 holds no row of these: every one is copied, receipt and archive copy
        assert "copied 3 row(s) from the damaged ledger (3 done)" in out.stdout, out.stdout
        salvaged = sorted(old)
    s.start()
    wait_until(lambda: s.counts().get("done") == 3 + len(salvaged), 30, what="the inbox after the rebuild")
    assert s.stop() == 0

    # I1-I4 over the rebuilt ledger: what was in the folders, and what could be salvaged
    # (the broken ledger is kept beside it).
    assert s.integrity() == "ok"  # I3
    uploads = s.emulator.uploads()
    by_uuid = {u["uuid"]: u for u in uploads}
    rows = {r.relpath: r for r in s.rows()}
    assert sorted(rows) == sorted([f"new-{i}.txt" for i in range(3)] + salvaged)
    for rel in salvaged:
        assert (rows[rel].uuid, rows[rel].receipt, rows[rel].location) == (
            old[rel].uuid,
            old[rel].receipt,
            old[rel].location,
        )
    for rel, row in ((r, rows[r]) for r in rows if r.startswith("new-")):
        data = s.dropped[("in", rel)]
        assert row.state == "done" and row.sha256 == sha(data)
        assert row.location and Path(row.location).read_bytes() == data  # I1, I4
        assert by_uuid[row.uuid]["sha256"] == sha(data)  # I2
    for rel, row in old.items():  # archive means uploaded, and is not uploaded again
        data = s.dropped[("in", rel)]
        assert (s.archive() / rel).read_bytes() == data
        assert by_uuid[row.uuid]["sha256"] == sha(data)
        assert by_uuid[row.uuid]["times_received"] == 1
    assert len(uploads) == 6
    assert not list(s.inbox().iterdir())


def test_f25_systemd_does_not_restart_on_exit_4() -> None:
    unit = (ROOT / "systemd" / "syncd.service").read_text()
    line = re.search(r"^RestartPreventExitStatus=(.*)$", unit, re.MULTILINE)
    assert line is not None, "the unit lists no RestartPreventExitStatus="
    assert "4" in line.group(1).split(), "a corrupt ledger (exit 4) would crash-loop"
    assert "2" in line.group(1).split(), "a bad config (exit 2) would crash-loop"


# -- F26 ----------------------------------------------------------------------------------

HOLD_SECONDS = 12.5  # longer than the ledger's 10 s busy timeout, so the daemon sees SQLITE_BUSY
HOLD_AT_START = 14.0  # the same, plus the daemon's start-up time

_HOLDER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
print("released", flush=True)
"""


@pytest.mark.process
def test_f26_ledger_locked_by_another_process_then_released(setup: Callable[..., Setup]) -> None:
    # no periodic rescan during the test: what the events reported must not be lost
    s = setup(folders=[{"name": "in", "settle_seconds": 0.2}], daemon={"rescan_seconds": 300})
    s.start()
    s.drop("before.txt", b"uploaded before the lock")
    wait_until(lambda: s.all_done(1), 20, what="the first file")
    with subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(s.ledger_path), str(HOLD_SECONDS)],
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
            locked_at = time.monotonic()
            for name in ("during-1.txt", "during-2.txt"):
                s.drop(name, f"dropped while the ledger is locked: {name}".encode())
            second = s.cli("run")  # the instance lock is not the database lock: still exit 3
            assert second.returncode == 3 and "already running" in second.stderr
            status = s.cli("status", "--json")  # readers are not blocked (WAL)
            assert status.returncode == 0, status.stderr
            wait_until(
                lambda: f"database is locked (held by pid {holder.pid}, python" in s.log_text(),
                HOLD_SECONDS + 5,
                what="the daemon noticing the lock, and who holds it",
            )
            assert time.monotonic() - locked_at < HOLD_SECONDS, "the lock was released too early"
            assert s.proc is not None and s.proc.poll() is None, "the daemon died of a busy ledger"
            assert holder.wait(HOLD_SECONDS + 10) == 0
        finally:
            holder.kill()  # only if it is still running
    wait_until(lambda: s.all_done(3), 5, what="catching up after the release")
    log = s.log_text()
    assert "Traceback" not in log
    s.invariants()
    assert s.stop() == 0
    s.assert_no_secret()


@pytest.mark.process
def test_f26_daemon_started_while_the_ledger_is_locked_waits_for_it(setup: Callable[..., Setup]) -> None:
    """It waits, and tells systemd at every try to extend the start's timeout: a lock held
    past TimeoutStartSec (2 min) failed the start, and after StartLimitBurst such
    restarts the unit stayed failed, though the lock was released later."""
    from tests.daemon.test_service import NotifySocket

    s = setup(folders=[{"name": "in", "settle_seconds": 0.2}], daemon={"rescan_seconds": 300})
    s.drop("first.txt", b"makes the ledger")
    _once(s)
    notify = NotifySocket()
    try:
        with subprocess.Popen(
            [sys.executable, "-c", _HOLDER, str(s.ledger_path), str(HOLD_AT_START)],
            stdout=subprocess.PIPE,
            text=True,
        ) as holder:
            try:
                assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
                s.drop("second.txt", b"waits for the lock")
                proc = s.start(extra_env=notify.env())
                wait_until(
                    lambda: f"locked by another process (held by pid {holder.pid}, python" in s.log_text(),
                    HOLD_AT_START + 5,
                    what="the daemon saying it waits, and for whom",
                )
                assert proc.poll() is None, f"the daemon died at start: {s.log_text()[-1500:]}"
                extended = notify.wait_for(lambda m: "EXTEND_TIMEOUT_USEC" in m, 15, what="an extension")
                assert "waiting for the ledger (locked by another process" in extended["STATUS"]
                assert holder.wait(HOLD_AT_START + 10) == 0
            finally:
                holder.kill()  # only if it is still running
        notify.wait_for(lambda m: m.get("READY") == "1", 15, what="READY once the lock is gone")
    finally:
        notify.close()
    wait_until(lambda: s.all_done(2), 10, what="starting once the lock is gone")
    assert "Traceback" not in s.log_text()
    s.invariants()
    assert s.stop() == 0


# -- F28 ----------------------------------------------------------------------------------


_CALL = re.compile(r"^(\d+) +(\w+)\((.*)")
_FD = re.compile(r"^-?\d+<(.*?)>")
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')
# a path argument with the directory descriptor before it (strace -y): openat2, linkat, unlinkat
_PATH_ARG = re.compile(r'(?:(?:AT_FDCWD|-?\d+)<([^>]*)>, )?"((?:[^"\\]|\\.)*)"')
_RETURNED_FD = re.compile(r"= (\d+)<(.*?)>\s*$")
_PROC_FD = re.compile(r"^/proc/self/fd/(\d+)$")


def _events(trace: str) -> dict[int, list[tuple[str, Any]]]:
    """Per thread, in order: the durability-relevant calls with their decoded paths.

    syncd names files relative to directory descriptors (``openat2``,
    ``linkat``, ``unlinkat``) and links an open descriptor through
    ``/proc/self/fd/N``; both are turned back into absolute paths from
    strace's ``-y`` annotations and the descriptors each open returned.
    """
    out: dict[int, list[tuple[str, Any]]] = {}
    fds: dict[str, str] = {}
    for line in trace.splitlines():
        m = _CALL.match(line)
        if not m:
            continue  # "<... resumed>" halves, signals, exits
        tid, call, args = int(m.group(1)), m.group(2), m.group(3)
        fd = _FD.match(args)
        strings = _STRING.findall(args)
        paths = []
        for dirpath, name in _PATH_ARG.findall(args):
            proc = _PROC_FD.match(name)
            if proc and proc.group(1) in fds:
                paths.append(fds[proc.group(1)])
            elif dirpath and not name.startswith("/"):
                paths.append(os.path.normpath(os.path.join(dirpath, name)))
            else:
                paths.append(name)
        returned = _RETURNED_FD.search(args)
        if returned:
            fds[returned.group(1)] = returned.group(2)
        ev: tuple[str, Any] | None = None
        if call in ("fsync", "fdatasync") and fd:
            ev = ("sync", fd.group(1))
        elif call == "pwrite64" and fd and fd.group(1).endswith("-wal"):
            ev = ("wal_write", "uploaded" in (strings[0] if strings else ""))
        elif call in ("openat", "open", "openat2") and paths:
            ev = ("open", returned.group(2) if returned else paths[0])
        elif call in ("link", "linkat") and len(paths) >= 2:
            ev = ("link", (paths[0], paths[1]))
        elif call in ("unlink", "unlinkat") and paths:
            ev = ("unlink", paths[0])
        elif call in ("rename", "renameat", "renameat2") and len(paths) >= 2:
            ev = ("rename", (paths[0], paths[1]))
        if ev is not None:
            out.setdefault(tid, []).append(ev)
    return out


def _first(events: list[tuple[str, Any]], start: int, pred: Any) -> int:
    for i in range(start, len(events)):
        if pred(events[i]):
            return i
    return -1


@pytest.mark.process
def test_f28_durability_syscalls_are_in_order(setup: Callable[..., Setup], tmp_path: Path) -> None:
    problem = strace_problem()
    if problem:
        pytest.skip(problem)
    s = setup(folders=[{"name": "in", "settle_seconds": 0.1}], daemon={"workers": 1})
    for name, size in (("a.txt", 10), ("b.bin", 300_000), ("c.txt", 1)):
        s.drop(name, os.urandom(size))
    trace_file = tmp_path / "durability.trace"
    proc = s.start(
        "once",
        wrapper=[
            "strace",
            "-f",
            "-qq",
            "-y",
            "-s",
            "8192",
            "-o",
            os.fspath(trace_file),
            "-e",
            "trace=openat,openat2,pwrite64,fsync,fdatasync,rename,renameat,renameat2,link,"
            "linkat,unlink,unlinkat",
        ],
    )
    assert proc.wait(90) == 0, s.log_text()[-2000:]
    assert s.counts() == {"done": 3}
    threads = _events(trace_file.read_text(errors="replace"))
    wal = os.fspath(s.ledger_path) + "-wal"

    def ledger_sync(e: tuple[str, Any]) -> bool:
        return e[0] == "sync" and e[1] in (wal, os.fspath(s.ledger_path))

    for row in s.rows():
        src = os.fspath(s.inbox() / row.relpath)
        target = row.location
        where = [
            (tid, i)
            for tid, evs in threads.items()
            for i, e in enumerate(evs)
            if e == ("link", (src, target))
        ]
        assert len(where) == 1, f"{src}: expected one link into the archive, saw {len(where)}"
        tid, link = where[0]
        evs = threads[tid]
        opened = max((i for i, e in enumerate(evs[:link]) if e == ("open", src)), default=-1)
        assert opened >= 0, f"{src}: the worker that archived it never opened it"
        committed = _first(evs, opened, ("wal_write", True).__eq__)
        assert 0 <= committed < link, f"{src}: no 'uploaded' commit before the link"
        synced = _first(evs, committed, ledger_sync)
        assert 0 <= synced < link, f"{src}: the 'uploaded' commit was not synced before the link"
        dir_synced = _first(evs, link, ("sync", os.path.dirname(target)).__eq__)
        # the name leaves by a rename to a fresh name of syncd's own, which is then unlinked
        # (moves.Held.unlink: a file saved over the name in between is not the one removed)
        left = _first(evs, link, lambda e, src=src: e[0] == "rename" and e[1][0] == src)
        assert left >= 0, f"{src}: the uploaded file's name was never removed"
        aside = evs[left][1][1]
        assert os.path.dirname(aside) == os.path.dirname(src)
        assert os.path.basename(aside).startswith(UNLINK_PREFIX)
        unlinked = _first(evs, left, ("unlink", aside).__eq__)
        inbox_synced = _first(evs, max(unlinked, 0), ("sync", os.path.dirname(src)).__eq__)
        assert 0 <= dir_synced < left, f"{src}: archive dir not fsynced before the unlink"
        assert 0 <= unlinked < inbox_synced, f"{src}: inbox dir not fsynced after the unlink"
        renames = [
            e
            for evs_ in threads.values()
            for e in evs_
            if e[0] == "rename" and src in e[1] and e[1][1] != aside
        ]
        assert not renames, f"{src} was renamed (rename may clobber): {renames}"
    s.invariants()


@pytest.mark.process
def test_f25_a_rebuild_killed_half_way_is_started_over_and_blocks_the_daemon(
    setup: Callable[..., Setup],
) -> None:
    """`syncd ledger rebuild` SIGKILLed after its first chunk of rows: the partial ledger
    it left was taken by the next rebuild for the damaged one (0 rows salvaged, the real
    one forgotten in a broken-* file) and by the daemon as the ledger (it uploaded again
    the kept files whose rows were not copied yet). Now the daemon refuses it (exit 4,
    naming the fix) and the next rebuild starts over from the damaged ledger."""
    s = setup(folders=[{"name": "in", "settle_seconds": 0.1, "after_upload": "keep"}], daemon={"workers": 4})
    n = 1200  # two chunks of salvage (salvage.CHUNK = 1000)
    for i in range(n):
        s.drop(f"k{i:04d}.txt", b"kept %d" % i)
    _once(s)
    assert s.counts() == {"done": n}
    crash = subprocess.run(
        [sys.executable, "-m", "syncd", "-c", str(s.config), "ledger", "rebuild", "--force"],
        capture_output=True,
        text=True,
        env={**s.env(), "SYNCD_CRASH_AT": "ledger.salvage:1"},
        cwd=s.tmp,
        timeout=60,
    )
    assert crash.returncode == 137, crash.stderr
    proc = s.start("once")
    assert proc.wait(60) == 4
    assert "a `syncd ledger rebuild` was interrupted" in s.log_text()
    out = s.cli("ledger", "rebuild")  # no --force: the interrupted one is finished
    assert out.returncode == 0, out.stderr
    assert "an interrupted rebuild was started over from ledger.sqlite3.broken-" in out.stdout
    assert f"copied {n} row(s) from the damaged ledger ({n} done)" in out.stdout, out.stdout
    _once(s)
    uploads = s.emulator.uploads()
    assert len(uploads) == n and all(u["times_received"] == 1 for u in uploads)
