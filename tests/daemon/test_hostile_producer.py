"""A hostile producer against the real daemon, each under its own uid.

The daemon runs as a dedicated uid (``setpriv``) in the producers' group; a
producer runs as another uid in that group with write access to its inbox
only, and attacks as someone with that access would: directories swapped for
symlinks to a credentials directory at random moments, names swapped for
links during the archive move, static links and loops in a polled folder,
hard links kept to archived files. The invariants after each:

* a canary file outside every folder (a credential the producer cannot read)
  never reaches the emulator and never moves;
* nothing outside the inbox, archive_dir, failed_dir and state_dir is written;
* no symlink ever reaches the archive; no user file is overwritten;
* the daemon's memory and CPU stay bounded and SIGTERM is obeyed.

Needs root (to switch uids) and ``setpriv``; skipped with the reason otherwise.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Setup, host_tool, sha, wait_until

pytestmark = [pytest.mark.process, pytest.mark.timeout(240)]

DAEMON_UID = 64101
PRODUCER_UID = 64102
GROUP = 64100  # the producers' group; the daemon is a member
CANARY = b"CANARY-CREDENTIAL-the-producer-may-not-read-this-3f9a\n"


def _problem() -> str | None:
    if os.geteuid() != 0:
        return "needs root to run the daemon and the producer under their own uids"
    if shutil.which("setpriv") is None:
        return "setpriv (util-linux) is not installed"
    out = subprocess.run(
        ["setpriv", f"--reuid={PRODUCER_UID}", f"--regid={GROUP}", "--clear-groups", "true"],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        return f"setpriv cannot switch uids here: {out.stderr.strip()[:200]}"
    return None


def as_user(uid: int, groups: list[int]) -> list[str]:
    return [
        "setpriv",
        f"--reuid={uid}",
        f"--regid={groups[0]}",
        f"--groups={','.join(map(str, groups))}",
        "--inh-caps=-all",
        "--",
    ]


def _snapshot(paths: list[Path]) -> dict[str, tuple[int, int, bytes | None]]:
    out: dict[str, tuple[int, int, bytes | None]] = {}
    for base in paths:
        for p in [base, *base.rglob("*")]:
            st = p.lstat()
            data = p.read_bytes() if stat.S_ISREG(st.st_mode) else None
            out[str(p)] = (st.st_ino, st.st_mtime_ns, data)
    return out


class Hostile:
    """A Setup laid out with real owners and modes, and a producer to attack with."""

    def __init__(self, base: Path, **folder: Any) -> None:
        self.base = base
        self.s = Setup(
            base,
            folders=[{"name": "in", "settle_seconds": 0.2, **folder}],
            daemon={"rescan_seconds": 2, "workers": 2},
        )
        # the daemon owns the tree; the inbox is the producers' (setgid + sticky)
        for p in [base, *base.rglob("*")]:
            if p.is_relative_to(base / "emulator"):
                continue
            os.lchown(p, DAEMON_UID, DAEMON_UID)
        inbox = self.s.inbox()
        os.chown(inbox, DAEMON_UID, GROUP)
        inbox.chmod(0o3770)
        os.chown(inbox.parent, DAEMON_UID, GROUP)
        inbox.parent.chmod(0o750)
        # what the producer must never get at: a credential only the daemon can read ...
        self.creds = base / "creds"
        self.creds.mkdir(mode=0o700)
        (self.creds / "lilt-api-key").write_bytes(CANARY)
        os.chown(self.creds, DAEMON_UID, DAEMON_UID)
        os.chown(self.creds / "lilt-api-key", DAEMON_UID, DAEMON_UID)
        (self.creds / "lilt-api-key").chmod(0o600)
        # ... and another tree the producer may plant links to (another team's files)
        self.outside = base / "outside"
        (self.outside / "sub").mkdir(parents=True)
        (self.outside / "victim.txt").write_bytes(b"VICTIM " * 10)
        (self.outside / "sub" / "lilt-api-key").write_bytes(CANARY)
        self.home = base / "producer-home"
        self.home.mkdir()
        os.chown(self.home, PRODUCER_UID, GROUP)
        base.chmod(0o755)
        self.before = _snapshot([self.creds, self.outside])

    def start(self) -> None:
        self.s.start(wrapper=as_user(DAEMON_UID, [DAEMON_UID, GROUP]))
        self.s.wait_started(60)

    def produce(self, script: str, *args: str, timeout: float = 120) -> str:
        """Run a Python ``script`` as the producer (inbox path is argv[1])."""
        code = textwrap.dedent(script)
        out = subprocess.run(
            [*as_user(PRODUCER_UID, [GROUP]), sys.executable, "-c", code, str(self.s.inbox()), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={"PATH": os.environ["PATH"]},
            cwd="/",
        )
        assert out.returncode == 0, out.stderr[-3000:]
        return out.stdout

    def check(self) -> None:
        """The invariants of the module docstring."""
        canary = sha(CANARY)
        uploads = self.s.emulator.uploads()
        assert canary not in {u["sha256"] for u in uploads}, "the canary credential was uploaded"
        store = self.base / "emulator"
        for p in store.rglob("*"):
            if p.is_file() and p.stat().st_size < 1 << 20:
                assert CANARY.strip() not in p.read_bytes(), f"canary bytes in the emulator: {p}"
        assert _snapshot([self.creds, self.outside]) == self.before, "something outside changed"
        for root in (self.s.tmp / "archive", self.s.tmp / "failed"):
            for p in root.rglob("*") if root.exists() else []:
                assert not p.is_symlink(), f"a symlink reached {p}"
                if p.is_file():
                    assert p.read_bytes() != CANARY, f"the canary was moved to {p}"
        victim = sha((self.outside / "victim.txt").read_bytes())
        assert victim not in {u["sha256"] for u in uploads}, "the victim's bytes were uploaded"

    def usage(self) -> tuple[float, float]:
        """(RSS in MB, CPU seconds) of the daemon."""
        assert self.s.proc is not None
        pid = self.s.proc.pid
        rss = 0.0
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) / 1024
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return rss, (int(fields[11]) + int(fields[12])) / ticks

    def stop_quickly(self) -> None:
        started = time.monotonic()
        assert self.s.stop(timeout=10) == 0, self.s.log_text()[-3000:]
        assert time.monotonic() - started < 5 + 2, "SIGTERM not obeyed within drain + 2 s"


@pytest.fixture
def hostile() -> Iterator[Any]:
    problem = _problem()
    if problem:
        pytest.skip(problem)
    made: list[Hostile] = []
    bases: list[Path] = []

    def make(**folder: Any) -> Hostile:
        base = Path(tempfile.mkdtemp(prefix="syncd-hostile-"))
        bases.append(base)
        h = Hostile(base, **folder)
        made.append(h)
        return h

    yield make
    for h in made:
        h.s.close()
    for base in bases:
        shutil.rmtree(base, ignore_errors=True)


SWAP_DIRS = """
    import os, random, sys, time
    inbox, creds, tries = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rng = random.Random(7)
    for i in range(tries):
        d = os.path.join(inbox, f"x{i % 5}")
        if os.path.islink(d):
            os.unlink(d)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "lilt-api-key"), "wb") as f:
            f.write(b"decoy %d" % i)
        time.sleep(rng.uniform(0, 0.3))  # sometimes settled, queued or uploading by now
        for name in os.listdir(d):
            os.unlink(os.path.join(d, name))
        os.rmdir(d)
        os.symlink(creds, d)
        time.sleep(rng.uniform(0, 0.05))
    print("done")
"""


def test_directory_swapped_for_a_credentials_link_at_random_moments(hostile: Any) -> None:
    h = hostile()
    h.start()
    h.produce(SWAP_DIRS, str(h.creds), "120")
    h.produce(SWAP_DIRS, str(h.outside / "sub"), "80")
    time.sleep(2.5)  # a rescan (rescan_seconds = 2) walks every planted link
    h.s.drop("after.txt", b"an honest file after the attack")
    os.chown(h.s.inbox() / "after.txt", PRODUCER_UID, GROUP)
    wait_until(
        lambda: any(u["filename"] == "after.txt" for u in h.s.emulator.uploads()), 30, what="the honest file"
    )
    h.check()
    assert (h.creds / "lilt-api-key").read_bytes() == CANARY
    h.stop_quickly()


ARCHIVE_RACE = """
    import os, random, sys, time
    inbox, victim, tries = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rng = random.Random(11)
    for i in range(tries):
        name = os.path.join(inbox, f"r{i}.txt")
        tmp = os.path.join(inbox, f".r{i}.writing")
        with open(tmp, "wb") as f:
            f.write(b"payload %d" % i)
        os.rename(tmp, name)
        time.sleep(rng.uniform(0.1, 0.4))  # around settle, upload and the archive move
        try:
            os.rename(name, os.path.join(inbox, f".r{i}.moved-away"))
            os.symlink(victim, name)
        except FileNotFoundError:
            pass  # archived already
    print("done")
"""


def test_names_swapped_for_links_during_the_archive_move(hostile: Any) -> None:
    h = hostile()
    h.start()
    h.produce(ARCHIVE_RACE, str(h.outside / "victim.txt"), "120", timeout=200)
    time.sleep(3)
    h.check()
    rows = h.s.rows()
    # every payload is in the archive (uploaded) or still in the inbox under the name the
    # producer moved it to; none is lost, and nothing but payloads is archived
    inbox, arch = h.s.inbox(), h.s.archive()
    archived = {p.read_bytes() for p in arch.rglob("*") if p.is_file()} if arch.exists() else set()
    kept = {p.read_bytes() for p in inbox.iterdir() if p.is_file() and not p.is_symlink()}
    for i in range(120):
        data = b"payload %d" % i
        assert data in archived or data in kept, f"r{i}.txt lost"
    assert all(d.startswith(b"payload ") for d in archived)
    assert not any(r.state == "failed" for r in rows)
    h.stop_quickly()


def test_static_links_and_loops_in_a_polled_folder_stay_bounded(hostile: Any) -> None:
    h = hostile(observer="polling", poll_seconds=0.2)
    h.produce(
        """
        import os, sys
        inbox, outside = sys.argv[1], sys.argv[2]
        os.symlink(".", os.path.join(inbox, "loop"))
        os.symlink("loop", os.path.join(inbox, "loop2"))
        os.symlink("/", os.path.join(inbox, "root"))
        os.symlink(outside, os.path.join(inbox, "out"))
        os.makedirs(os.path.join(inbox, "deep", "a", "b"))
        os.symlink("../../..", os.path.join(inbox, "deep", "a", "b", "up"))
        os.makedirs(os.path.join(inbox, "closed"))
        os.chmod(os.path.join(inbox, "closed"), 0)
    """,
        str(h.outside),
    )
    h.start()
    rss0, cpu0 = h.usage()
    started = time.monotonic()
    h.produce("""
        import os, sys
        with open(os.path.join(sys.argv[1], "fresh.txt"), "wb") as f:
            f.write(b"picked up despite the loops")
    """)
    wait_until(
        lambda: any(u["filename"] == "fresh.txt" for u in h.s.emulator.uploads()),
        30,
        what="a new file in the polled folder",
    )
    time.sleep(6)
    rss, cpu = h.usage()
    wall = time.monotonic() - started
    assert rss < 150, f"RSS {rss:.0f} MB"
    assert rss - rss0 < 30, f"RSS grew from {rss0:.0f} to {rss:.0f} MB"
    assert (cpu - cpu0) / wall < 0.5, f"{(cpu - cpu0) / wall:.0%} of a core"
    h.check()
    log = h.s.log_text()
    assert "polled, inotify limit" not in log
    h.stop_quickly()


def test_an_unlistable_subdirectory_does_not_force_polling(hostile: Any) -> None:
    h = hostile()
    h.produce("""
        import os, sys
        os.makedirs(os.path.join(sys.argv[1], "closed"))
        os.chmod(os.path.join(sys.argv[1], "closed"), 0)
    """)
    h.start()
    log = h.s.log_text()
    assert "falling back to polling" not in log, log[-2000:]
    h.produce(
        """
        import os, sys
        os.symlink(sys.argv[2], os.path.join(sys.argv[1], "exported"))
    """,
        str(h.outside),
    )
    time.sleep(2.5)
    h.check()
    h.stop_quickly()


def test_an_inbox_the_daemon_may_not_list_is_a_folder_problem_not_a_crash(hostile: Any) -> None:
    """An inbox left root's and 0700 (a mistake in the layout): syncd starts, says the
    folder cannot be watched, and takes it up once its permissions are fixed. It crashed
    at start (a wrong "inotify limit" diagnosis, then a traceback and exit 1)."""
    h = hostile()
    inbox = h.s.inbox()
    os.chown(inbox, 0, 0)
    inbox.chmod(0o700)
    h.start()
    h.s.wait_logged("cannot watch (Permission denied", 20)
    assert "inotify limit" not in h.s.log_text()
    assert h.s.proc is not None and h.s.proc.poll() is None
    os.chown(inbox, DAEMON_UID, GROUP)
    inbox.chmod(0o3770)
    h.s.wait_logged("is usable again", 20)
    h.produce("""
        import os, sys
        with open(os.path.join(sys.argv[1], "late.txt"), "wb") as f:
            f.write(b"after the fix")
    """)
    wait_until(lambda: h.s.counts().get("done") == 1, 30, what="the file uploaded")
    h.stop_quickly()


def test_an_inbox_shared_with_the_daemon_through_an_acl_is_watched(hostile: Any) -> None:
    """The inbox is its producer's (0700) and the daemon's by an ACL entry: the kernel lets
    the daemon in, so syncd must not refuse the folder on its mode bits."""
    setfacl, why = host_tool("setfacl", "acl")
    if setfacl is None:
        pytest.skip(f"no setfacl: {why}")
    h = hostile()
    inbox = h.s.inbox()
    os.chown(inbox, PRODUCER_UID, PRODUCER_UID)  # a group the daemon is not in
    inbox.chmod(0o700)
    subprocess.run([setfacl, "-m", f"u:{DAEMON_UID}:rwx", str(inbox)], check=True)
    h.start()
    h.produce("""
        import os, sys
        with open(os.path.join(sys.argv[1], "acl.txt"), "wb") as f:
            f.write(b"through the acl")
    """)
    wait_until(lambda: h.s.counts().get("done") == 1, 30, what="the file uploaded")
    assert "cannot watch" not in h.s.log_text()
    h.stop_quickly()


def test_a_hard_link_kept_by_the_producer_cannot_change_the_archive(hostile: Any) -> None:
    h = hostile()
    h.start()
    h.produce(
        """
        import os, sys
        inbox, home = sys.argv[1], sys.argv[2]
        for i in range(5):
            tmp = os.path.join(inbox, f".h{i}.writing")
            with open(tmp, "wb") as f:
                f.write(b"original %d" % i)
            os.chmod(tmp, 0o660)
            os.link(tmp, os.path.join(home, f"keep{i}"))
            os.rename(tmp, os.path.join(inbox, f"h{i}.txt"))
    """,
        str(h.home),
    )
    arch = h.s.archive()
    wait_until(lambda: arch.exists() and len(list(arch.iterdir())) == 5, 30, what="5 archived")
    h.produce(
        """
        import os, sys
        for i in range(5):
            with open(os.path.join(sys.argv[2], f"keep{i}"), "r+b") as f:
                f.write(b"TAMPERED")
    """,
        str(h.home),
    )
    for i in range(5):
        assert (arch / f"h{i}.txt").read_bytes() == b"original %d" % i
        up = [u for u in h.s.emulator.uploads() if u["filename"] == f"h{i}.txt"]
        assert up and up[0]["sha256"] == hashlib.sha256(b"original %d" % i).hexdigest()
    h.check()
    h.stop_quickly()


def test_a_descriptor_kept_by_the_producer_cannot_change_the_archive(hostile: Any) -> None:
    """The producer keeps its files open (one for writing, one read-only, which its owner
    may reopen for writing through /proc) until syncd has archived them, then writes
    through them: the archive holds private copies of the uploaded bytes, untouched."""
    h = hostile()
    h.start()
    out = h.produce(
        """
        import os, sys, time
        inbox = sys.argv[1]
        kept = {}
        for name, mode in (("w.txt", os.O_WRONLY), ("r.txt", os.O_RDONLY)):
            path = os.path.join(inbox, name)
            with open(path, "wb") as f:
                f.write(b"amount: 100 EUR " + name.encode())
            os.chmod(path, 0o660)
            kept[name] = os.open(path, mode)
        deadline = time.monotonic() + 60
        while any(os.path.exists(os.path.join(inbox, n)) for n in kept) and time.monotonic() < deadline:
            time.sleep(0.05)  # uploaded and archived: the inbox names are gone
        os.pwrite(kept["w.txt"], b"amount: 999", 0)
        with open(f"/proc/self/fd/{kept['r.txt']}", "r+b") as f:
            f.write(b"amount: 999")
        print("wrote through both")
    """
    )
    assert "wrote through both" in out
    arch = h.s.archive()
    for name in ("w.txt", "r.txt"):
        original = b"amount: 100 EUR " + name.encode()
        assert (arch / name).read_bytes() == original
        assert os.stat(arch / name).st_uid == DAEMON_UID  # syncd's own copy, not the producer's inode
        up = [u for u in h.s.emulator.uploads() if u["filename"] == name]
        assert up and up[0]["sha256"] == hashlib.sha256(original).hexdigest()
    h.check()
    h.stop_quickly()
