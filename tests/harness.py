"""End-to-end harness: the real daemon as a subprocess against the real emulator.

A :class:`Setup` owns a temporary tree (inboxes, archive, failed, state), an
in-process :class:`~syncd_emulator.Emulator` on a loopback port, and a
config file. ``start()`` launches ``python -m syncd run`` with its output in
a log file; ``kill()`` sends SIGKILL; ``invariants()`` checks, after a
scenario, that nothing was lost:

* I1 every file dropped is in its inbox, or archived/failed with a ledger
  row saying why;
* I2 nothing is in the archive unless the emulator holds identical bytes;
* I3 ``PRAGMA integrity_check`` is ok;
* I4 ledger states agree with the filesystem.

The ledger is read through its own API, read-only (:meth:`Setup.ledger`,
:meth:`Setup.rows`), as ``syncd status`` reads it while the daemon runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from syncd.errors import LedgerError
from syncd.ledger import ACTIVE_STATES, Ledger, Row, State
from syncd_emulator import Emulator

ROOT = Path(__file__).resolve().parent.parent
CANARY_KEY = "canary-lilt-key-5f1e2d"
# Canary credentials for every service: configured in every harness run, and
# assert_no_secret() fails if any of them shows up in a log or the ledger.
CANARIES = {
    "lilt_key": CANARY_KEY,
    "wriftai_token": "canary-wriftai-token-8c3b",
    "xvid_secret": "canary-xvid-secret-41aa",
    "apivideo_token": "to-canary-upload-token-77e1",
    "apivideo_key": "canary-apivideo-key-9d02",
}


def rewrite_in_place(path: Path, data: bytes) -> None:
    """Overwrite the start of ``path`` with ``data`` and set its mtime back: other bytes
    under the same size (when ``data`` is as long) and mtime, as a producer hiding its
    change from mtime does."""
    st = path.stat()
    with open(path, "r+b") as f:
        f.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def wait_until(
    cond: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def host_tool(command: str, package: str) -> tuple[str | None, str]:
    """The path of a host tool a test needs, installed from Debian's ``package`` by the
    project's script (scripts/host-tool.sh: apt as root, here and in CI) if missing;
    ``(None, why)`` when it cannot be had."""
    found = shutil.which(command)
    if found is not None:
        return found, ""
    out = subprocess.run(
        [str(ROOT / "scripts" / "host-tool.sh"), command, package],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    return (out.stdout.strip() or None), out.stderr.strip()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Setup:
    def __init__(
        self,
        tmp: Path,
        *,
        folders: Iterable[dict[str, Any]] | None = None,
        daemon: dict[str, Any] | None = None,
        lilt: dict[str, Any] | None = None,
        destination: dict[str, Any] | None = None,
        emulator: dict[str, Any] | None = None,
    ) -> None:
        """``destination`` replaces the default Lilt table (``lilt`` only adds keys to it).

        Its ``base_url`` may use ``{url}`` for the emulator's root URL; secrets
        should be ``"env:NAME"`` references to the variables of :meth:`env`.
        """
        self.tmp = tmp
        self.emulator = Emulator(
            tmp / "emulator",
            lilt_key=CANARIES["lilt_key"],
            wriftai_token=CANARIES["wriftai_token"],
            xvid_client=f"canary-client:{CANARIES['xvid_secret']}",
            apivideo_token=CANARIES["apivideo_token"],
            apivideo_key=CANARIES["apivideo_key"],
            # Lilt parts of any size S3 takes (the scenarios use 5 MiB ones); the 8 MiB rule
            # has its own tests (test_emulator_lilt.py, test_lilt_destination.py).
            **{"lilt_part_size": 0, **(emulator or {})},
        ).start()
        self.destination = destination
        self.proc: subprocess.Popen[bytes] | None = None
        self.logs: list[Path] = []
        self.dropped: dict[tuple[str, str], bytes] = {}  # (folder name, relpath) -> content
        self.folders = list(folders or [{"name": "inbox", "labels": ["a"], "category": "SOURCE"}])
        self.config = tmp / "syncd.toml"
        self._write_config(daemon or {}, lilt or {})

    # config -------------------------------------------------------------

    def _write_config(self, daemon: dict[str, Any], lilt: dict[str, Any]) -> None:
        import tomli_w

        d = {
            "state_dir": "state",
            "workers": 4,
            "rescan_seconds": 30,
            "retry_base_seconds": 0.2,
            "retry_max_seconds": 2.0,
            "drain_seconds": 5,
        }
        d.update(daemon)
        if self.destination is not None:
            dest = {
                k: (v.format(url=self.emulator.url) if isinstance(v, str) else v)
                for k, v in self.destination.items()
            }
        else:
            dest = {"type": "lilt", "base_url": self.emulator.url + "/lilt", "api_key": "env:TEST_LILT_KEY"}
        dest.update(lilt)
        folders = []
        for f in self.folders:
            f = dict(f)
            name = f.pop("name")
            entry = {
                "path": f"inbox/{name}",
                "destination": "lilt",
                "settle_seconds": 0.3,
                "archive_dir": f"archive/{name}",
                "failed_dir": f"failed/{name}",
            }
            entry.update(f)
            folders.append(entry)
            (self.tmp / entry["path"]).mkdir(parents=True, exist_ok=True)
        doc = {"daemon": d, "destinations": {"lilt": dest}, "folders": folders}
        self.config.write_text(tomli_w.dumps(doc))
        self.config.chmod(0o600)

    def inbox(self, name: str | None = None) -> Path:
        return self.tmp / "inbox" / (name or self.folders[0]["name"])

    def archive(self, name: str | None = None) -> Path:
        return self.tmp / "archive" / (name or self.folders[0]["name"])

    def failed(self, name: str | None = None) -> Path:
        return self.tmp / "failed" / (name or self.folders[0]["name"])

    @property
    def ledger_path(self) -> Path:
        return self.tmp / "state" / "ledger.sqlite3"

    # files --------------------------------------------------------------

    def drop(self, rel: str | bytes, data: bytes, folder: str | None = None) -> Path:
        """Write a file the way a careful producer does: temp name, then rename in."""
        name = folder or self.folders[0]["name"]
        rel_s = os.fsdecode(rel)
        path = self.inbox(name) / rel_s
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name[:200]}.writing"
        tmp.write_bytes(data)
        os.rename(tmp, path)
        self.dropped[(name, rel_s)] = data
        return path

    # process ------------------------------------------------------------

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
        env["TEST_LILT_KEY"] = CANARY_KEY
        env["TEST_WRIFTAI_TOKEN"] = CANARIES["wriftai_token"]
        env["TEST_XVID_SECRET"] = CANARIES["xvid_secret"]
        env["TEST_APIVIDEO_TOKEN"] = CANARIES["apivideo_token"]
        env["TEST_APIVIDEO_KEY"] = CANARIES["apivideo_key"]
        env["PYTHONPATH"] = str(ROOT)
        env.pop("JOURNAL_STREAM", None)
        return env

    def start(
        self, *args: str, extra_env: dict[str, str] | None = None, wrapper: list[str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``syncd run`` (or ``args``); ``wrapper`` prefixes the command (``unshare -U``)."""
        assert self.proc is None or self.proc.poll() is not None, "daemon already running"
        log = self.tmp / f"daemon-{len(self.logs)}.log"
        self.logs.append(log)
        env = self.env()
        env.update(extra_env or {})
        with open(log, "wb") as out:  # the child writes to its own copy of the descriptor
            self.proc = subprocess.Popen(
                [
                    *(wrapper or []),
                    sys.executable,
                    "-m",
                    "syncd",
                    "-c",
                    str(self.config),
                    *(args or ("run",)),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.tmp,
            )
        return self.proc

    def wait_started(self, timeout: float = 20) -> None:
        """Wait until the current daemon process has finished starting up."""
        log = self.logs[-1]
        wait_until(lambda: "syncd started" in log.read_text(errors="replace"), timeout, what="daemon start")

    def cli(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(
            [sys.executable, "-m", "syncd", "-c", str(self.config), *args],
            capture_output=True,
            text=True,
            env=self.env(),
            cwd=self.tmp,
            timeout=60,
        )
        if check:
            assert out.returncode == 0, out.stderr
        return out

    def status(self) -> dict[str, Any]:
        out = self.cli("status", "--json", check=True)
        status: dict[str, Any] = json.loads(out.stdout)
        return status

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 30) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            # a SIGTERM that lands while the interpreter is still starting kills it
            # with the default handler; an operator's stop comes after start-up
            self.wait_started()
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def close(self) -> None:
        self.kill()
        self.emulator.stop()

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.logs if p.exists())

    def wait_logged(self, text: str, timeout: float = 10) -> None:
        """Wait until the daemon's log holds ``text``: a line logged after the ledger
        commit a test waited for may reach the file a moment later."""
        wait_until(lambda: text in self.log_text(), timeout, what=f"{text!r} in the log")

    # ledger -------------------------------------------------------------

    @contextlib.contextmanager
    def ledger(self, path: Path | None = None) -> Iterator[Ledger]:
        """The ledger (or the one at ``path``, e.g. a backup), opened read-only."""
        ledger = Ledger.open(path or self.ledger_path, readonly=True)
        try:
            yield ledger
        finally:
            ledger.close()

    def _being_created(self, path: Path | None = None) -> bool:
        """The daemon has created the ledger's file but not its tables yet."""
        try:
            Ledger.open(path or self.ledger_path, readonly=True).close()
        except LedgerError as exc:
            return "no ledger yet" in str(exc)
        return False

    def rows(self, path: Path | None = None) -> list[Row]:
        """Every ledger row, oldest first; none before the daemon has created the ledger."""
        if not (path or self.ledger_path).exists() or self._being_created(path):
            return []
        with self.ledger(path) as ledger:
            try:
                return ledger.rows()
            except sqlite3.OperationalError:  # the daemon has not created its tables yet
                return []

    def confirmed_parts(self) -> int:
        """How many parts the first row's durable resume state records as confirmed."""
        rows = self.rows()
        resume = (rows[0].resume if rows else None) or {}
        return len(resume.get("parts") or {})

    def counts(self) -> dict[str, int]:
        """Rows per state, only the states that have rows."""
        if not self.ledger_path.exists() or self._being_created():
            return {}
        with self.ledger() as ledger:
            try:
                return {state: n for state, n in ledger.counts().items() if n}
            except sqlite3.OperationalError:
                return {}

    def integrity(self) -> str:
        """``PRAGMA integrity_check`` of the ledger: ``"ok"`` when it is sound (I3), and
        when there is none yet (a daemon killed before it created it, or its tables, recorded
        nothing)."""
        if not self.ledger_path.exists() or self._being_created():
            return "ok"
        with self.ledger() as ledger:
            return ledger.integrity_check()

    def all_done(self, expected: int | None = None) -> bool:
        rows = self.rows()
        done = sum(1 for r in rows if r.state in (State.DONE, State.SKIPPED))
        busy = sum(1 for r in rows if r.state in ACTIVE_STATES)
        want = len(self.dropped) if expected is None else expected
        return done >= want and busy == 0

    # invariants ---------------------------------------------------------

    def invariants(self, *, allow_failed: bool = False) -> None:
        """I1-I4 (see the module docstring); raises AssertionError with details."""
        assert self.integrity() == "ok"  # I3
        rows = self.rows()
        remote = {}
        for u in self.emulator.uploads():
            remote.setdefault(u["uuid"], u)
        by_path: dict[tuple[str, str], list[Row]] = {}
        by_id = {r.id: r for r in rows}
        for r in rows:
            by_path.setdefault((Path(r.folder).name, r.relpath), []).append(r)
        for (folder, rel), data in self.dropped.items():
            in_inbox = self.inbox(folder) / rel
            versions = by_path.get((folder, rel), [])
            # a skipped duplicate is archived like an upload; its bytes are its original's
            done = [r for r in versions if r.state in (State.DONE, State.SKIPPED)]
            failed = [r for r in versions if r.state == State.FAILED]
            if done:
                row = done[-1]
                assert row.sha256 == sha(data), f"{rel}: ledger hash differs"
                where = Path(row.location) if row.location else in_inbox
                assert where.read_bytes() == data, f"{rel}: archived bytes differ"  # I1
                uploaded = by_id.get(row.duplicate_of or -1) or row
                up = remote.get(uploaded.uuid)
                assert up is not None, f"{rel}: archived but the emulator has no object"  # I2
                assert up["sha256"] == sha(data), f"{rel}: remote bytes differ"
            elif failed and allow_failed:
                row = failed[-1]
                where = Path(row.location) if row.location else in_inbox
                assert where.exists(), f"{rel}: failed and lost"
            else:
                # not done yet: the bytes are in the inbox, or (an archive move cut
                # short) at the archive target recorded in an "uploaded" row
                places = [in_inbox] + [
                    Path(r.archive_path) for r in versions if r.state == State.UPLOADED and r.archive_path
                ]
                assert any(p.exists() for p in places), (
                    f"{rel}: lost (not done, not in the inbox): {[r.state for r in versions]}"
                )
        for r in rows:  # I4
            if r.state == State.DONE and r.location:
                assert Path(r.location).exists(), f"{r.relpath}: done but archive missing"
            if r.state in (State.QUEUED, State.RETRYING, State.UPLOADING) and not r.location:
                # waiting or in flight: its bytes are still in the inbox (a test that deletes
                # a file checks the row once the daemon has seen it go)
                assert os.path.lexists(r.inbox_path), f"{r.relpath}: {r.state}, but not in its inbox"
        # metadata sidecars are archived beside their file (sidecar_path)
        known = {p for r in rows for p in (r.location, r.archive_path, r.sidecar_path) if p}
        archive_root = self.tmp / "archive"
        if archive_root.exists():
            for p in archive_root.rglob("*"):
                if p.is_file():
                    assert str(p) in known, f"{p}: in the archive but no ledger row points at it"

    def assert_no_secret(self, *extra_texts: str) -> None:
        """No canary credential in any log, CLI output given, or ledger row."""
        texts = [self.log_text(), *extra_texts]
        for r in self.rows():
            texts.append(json.dumps(r.to_json()))
        raw = self.ledger_path.read_bytes() if self.ledger_path.exists() else b""
        for name, canary in CANARIES.items():
            for text in texts:
                assert canary not in text, f"the {name} canary appeared in a log or row"
            assert canary.encode() not in raw, f"the {name} canary is in the ledger file"
        for blob in texts[1:]:
            assert "Signature=" not in blob and "X-Emu-Signature" not in blob


def strace_problem() -> str | None:
    """Why strace cannot trace a child here (None if it can): for the syscall-order tests."""
    import shutil

    strace = shutil.which("strace")
    if strace is None:
        return "strace is not installed"
    try:
        out = subprocess.run(
            [strace, "-f", "-o", os.devnull, sys.executable, "-c", "pass"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"strace does not run: {exc}"
    if out.returncode != 0:
        return f"strace cannot trace here (ptrace not permitted?): {out.stderr.strip()[:200]}"
    return None
