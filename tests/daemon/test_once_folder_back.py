"""`syncd once` and a folder it could not read when its scan ran, back before the end."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from tests.harness import Setup

pytestmark = pytest.mark.process


def test_once_a_folder_missing_at_its_scan_and_back_later_is_said_not_read(
    make_setup: Callable[..., Setup],
) -> None:
    """The share is mounted while the run goes on: `once` scans only at its start, so the
    folder's files were not looked at; the run must not end "finished", exit 0."""
    s = make_setup(folders=[{"name": "in", "settle_seconds": 0.1}, {"name": "late"}])
    s.emulator.set_faults(script=[{"op": "lilt.put", "kind": "slow", "delay": 4}])
    s.drop("a.txt", b"a")
    late = s.inbox("late")
    shutil.rmtree(late)
    proc = subprocess.Popen(
        [sys.executable, "-m", "syncd", "-c", str(s.config), "once", "--no-progress"],
        env=s.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(2)  # past its start-up scan, while a.txt is being sent
        late.mkdir()
        (late / "b.txt").write_bytes(b"b")
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "1 done" in out, out + err
    assert proc.returncode == 1, out + err
    assert "not read:" in err, err
