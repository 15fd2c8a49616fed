"""`make bench`: every benchmark with its default sizes, figures printed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

for script, args in [
    ("ledger_commit.py", []),
    ("many_parts.py", []),
    ("emulator_rate.py", ["--seconds", "3"]),
    ("throughput.py", []),
    ("compare_small.py", []),
    ("compare_large.py", []),
    ("latency.py", []),
    ("backlog.py", []),
    ("status_scale.py", []),
    ("startup.py", []),
    ("idle.py", []),
    ("flaky.py", []),
]:
    print(f"== {script}", flush=True)
    subprocess.run([sys.executable, str(HERE / script), *args], check=True)
print("(the crash soak is separate: bench/soak.py --kills 1000)")
