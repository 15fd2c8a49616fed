"""A Debian 12 container booting systemd as PID 1, for tests/daemon/test_systemd_live.py.

* :func:`ensure_tree` runs ``scripts/systemd-tree.sh``: the host tools (apt)
  and a debootstrap tree, cached in ``/var/cache/syncd-test/debian-12`` and
  rebuilt only when the script (its recipe) changes.
* :func:`build_wheels` builds syncd's wheel from this checkout (a copy of its
  files, so the working tree gets no ``build/``) and the wheels of
  ``constraints.txt`` (cached by the file's hash), so that the container
  installs offline: it has no network (``--private-network``).
* :class:`Machine` boots the tree with ``systemd-nspawn --boot
  --volatile=overlay`` (the cached tree stays untouched: every write goes to
  a tmpfs overlay and is gone at shutdown) and runs commands inside with
  ``nsenter``. When PID 1 of the host is not systemd, nothing registers the
  container: it gets ``--register=no --keep-unit`` and cgroups of its own,
  created here under every cgroup hierarchy the host has mounted and removed
  at the end.

Whatever the machine cannot do raises :class:`Unavailable` with the reason;
the tests skip with it. One live run at a time (a lock in the cache folder).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("SYNCD_TEST_CACHE", "/var/cache/syncd-test"))
TREE_SCRIPT = ROOT / "scripts" / "systemd-tree.sh"
CONSTRAINTS = ROOT / "constraints.txt"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Unavailable(Exception):
    """This machine cannot run the live systemd tests; the message says why."""


def why_not() -> str | None:
    """The reason nothing here can work, found cheaply, or None."""
    if not sys.platform.startswith("linux"):
        return "systemd-nspawn needs Linux"
    if os.geteuid() != 0:
        return "systemd-nspawn and debootstrap need root (run the suite as root)"
    if not Path("/sys/fs/cgroup").is_dir():
        return "no /sys/fs/cgroup: the kernel offers no control groups"
    probe = subprocess.run(
        ["unshare", "--mount", "--pid", "--fork", "--uts", "--ipc", "true"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if probe.returncode != 0:
        return f"namespaces are not permitted here (unshare: {probe.stderr.strip()})"
    return None


@contextlib.contextmanager
def exclusive(timeout: float = 600) -> Iterator[None]:
    """One live run (or tree build) at a time on this machine."""
    CACHE.mkdir(parents=True, exist_ok=True)
    fd = os.open(CACHE / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise Unavailable(
                        f"another live systemd test held {CACHE}/lock for {timeout:.0f}s"
                    ) from None
                time.sleep(1)
        yield
    finally:
        os.close(fd)


def ensure_tree() -> Path:
    """The cached Debian 12 tree (built on first use: a few minutes)."""
    out = subprocess.run(
        ["sh", str(TREE_SCRIPT), str(CACHE / "debian-12")], capture_output=True, text=True, timeout=1800
    )
    if out.returncode != 0:
        raise Unavailable(
            f"scripts/systemd-tree.sh failed ({out.returncode}): "
            + " | ".join(out.stderr.strip().splitlines()[-5:])
        )
    tree = Path(out.stdout.strip().splitlines()[-1])
    if not (tree / "usr/lib/systemd/systemd").exists():
        raise Unavailable(f"{tree} has no systemd")
    return tree


def build_wheels(dest: Path) -> Path:
    """syncd's wheel from this checkout, plus the pinned dependencies' wheels, in ``dest``.
    Returns the syncd wheel."""
    dest.mkdir(parents=True, exist_ok=True)
    pins = CONSTRAINTS.read_bytes()
    cached = CACHE / "wheels" / hashlib.sha256(pins).hexdigest()[:16]
    if not (cached / ".complete").exists():
        shutil.rmtree(cached, ignore_errors=True)
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--quiet",
                "--no-deps",
                "-r",
                str(CONSTRAINTS),
                "-w",
                str(cached),
            ],
            capture_output=True,
            text=True,
            timeout=900,
        )
        if out.returncode != 0:
            raise Unavailable(
                "cannot fetch the wheels of constraints.txt (no package index?): "
                + " | ".join(out.stderr.strip().splitlines()[-3:])
            )
        (cached / ".complete").touch()
    for wheel in cached.glob("*.whl"):
        shutil.copy2(wheel, dest / wheel.name)
    shutil.copy2(CONSTRAINTS, dest / "constraints.txt")
    with tempfile.TemporaryDirectory(prefix="syncd-src-") as tmp:
        src = Path(tmp) / "src"
        _copy_checkout(src)
        out = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(dest), str(src)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if out.returncode != 0:
            raise AssertionError(f"building syncd's wheel failed:\n{out.stdout}\n{out.stderr}")
    wheels = sorted(dest.glob("syncd-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def _copy_checkout(src: Path) -> None:
    """The checkout's files (tracked and new, not ignored) into ``src``, symlinks kept
    (syncd/data links to systemd/ and the example config): building from the working
    tree itself would leave build/ and egg-info behind in it."""
    try:
        files = subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"],
            cwd=ROOT,
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: all but the junk
        shutil.copytree(
            ROOT,
            src,
            symlinks=True,
            ignore=shutil.ignore_patterns(
                ".git",
                ".venv",
                "build",
                "dist",
                "demo",
                "*.egg-info",
                "__pycache__",
                ".*_cache",
                ".hypothesis",
            ),
        )
        return
    for rel in filter(None, files.decode().split("\0")):
        source = ROOT / rel
        if not source.exists() and not source.is_symlink():
            continue  # deleted in the working tree
        target = src / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            os.symlink(os.readlink(source), target)
        else:
            shutil.copy2(source, target)


class Machine:
    """A booted container; :meth:`sh` runs a shell script inside it as root."""

    def __init__(self, tree: Path, *, binds_ro: dict[Path, str] | None = None, log: Path) -> None:
        self.tree = tree
        self.name = f"syncd-test-{os.getpid()}"
        self.binds_ro = binds_ro or {}
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.leader: int | None = None
        self.cgroups: list[Path] = []

    # -- boot and shutdown ----------------------------------------------------

    def boot(self, timeout: float = 90) -> None:
        host_systemd = (
            Path("/run/systemd/system").is_dir() and Path("/proc/1/comm").read_text().strip() == "systemd"
        )
        args = [
            "systemd-nspawn",
            "--quiet",
            "-D",
            str(self.tree),
            "--boot",
            "--volatile=overlay",
            "--private-network",
            "-M",
            self.name,
            "--register=no",
            "--console=read-only",
        ]
        for host, inside in self.binds_ro.items():
            args.append(f"--bind-ro={host}:{inside}")
        prefix = ""
        if not host_systemd:
            # Nobody hands out a cgroup: make one under each mounted hierarchy and move
            # there before exec, so nspawn (--keep-unit) delegates it to the container.
            args.insert(1, "--keep-unit")
            for hierarchy in ("unified", "systemd", ""):
                base = Path("/sys/fs/cgroup") / hierarchy
                if not (base / "cgroup.procs").exists():
                    continue
                group = base / self.name
                try:
                    group.mkdir(exist_ok=True)
                except OSError as exc:
                    raise Unavailable(f"cannot create a cgroup for the container in {base}: {exc}") from None
                self.cgroups.append(group)
                prefix += f"echo $$ > {shlex.quote(str(group / 'cgroup.procs'))} && "
            if not self.cgroups:
                raise Unavailable("no writable cgroup hierarchy under /sys/fs/cgroup")
        script = prefix + "exec " + shlex.join(args)
        with open(self.log, "wb") as out:  # the child writes to its own copy of the descriptor
            self.proc = subprocess.Popen(
                ["sh", "-c", script],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while self.leader is None:
            if self.proc.poll() is not None:
                raise Unavailable(
                    f"systemd-nspawn exited ({self.proc.returncode}) before the "
                    f"container booted: {self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise Unavailable(
                    f"the container's PID 1 did not appear in {timeout:.0f}s: {self.log_tail()}"
                )
            self.leader = self._find_leader()
            time.sleep(0.1)
        while True:
            try:
                state = self.sh(
                    "systemctl is-system-running --wait",
                    check=False,
                    timeout=max(1.0, deadline - time.monotonic()),
                ).stdout.strip()
            except subprocess.TimeoutExpired:
                state = "still starting"
            if state in ("running", "degraded"):
                break
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise Unavailable(
                    f"systemd in the container did not finish booting ({state!r}): {self.log_tail()}"
                )
            time.sleep(0.2)

    def _find_leader(self) -> int | None:
        """The container's PID 1: the child of systemd-nspawn (its inner child)."""
        assert self.proc is not None
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        except OSError:
            return None
        for pid in children.split():
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                    return int(pid)
        return None

    def log_tail(self, lines: int = 8) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # nspawn: an orderly poweroff of the container
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        for group in self.cgroups:
            for sub in sorted(group.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                if sub.is_dir():
                    with contextlib.suppress(OSError):
                        sub.rmdir()
            with contextlib.suppress(OSError):
                group.rmdir()

    # -- inside ----------------------------------------------------------------

    def sh(
        self, script: str, *, check: bool = True, timeout: float = 60, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``script`` with /bin/sh -e in every namespace of the container, as root."""
        assert self.leader is not None
        cmd = [
            "nsenter",
            "-t",
            str(self.leader),
            "-m",
            "-u",
            "-i",
            "-n",
            "-p",
            "-r",
            "-w",
            "env",
            "-i",
            f"PATH={PATH}",
            "LANG=C.UTF-8",
            "SYSTEMD_PAGER=",
            "SYSTEMD_COLORS=0",
            "/bin/sh",
            "-ec",
            script,
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input)
        if check and out.returncode != 0:
            raise AssertionError(
                f"in the container, exit {out.returncode}:\n$ {script}\n{out.stdout}{out.stderr}"
            )
        return out
