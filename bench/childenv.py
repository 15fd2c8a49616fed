"""The environment benchmarks start syncd (and the other tools) with.

syncd runs from this checkout (``PYTHONPATH``) with its bytecode cached, as an
installed syncd has it: ``PYTHONDONTWRITEBYTECODE`` (set in some shells and CI
images) would make every start compile syncd's modules again, about 0.15 s of
CPU per process, which a benchmark of ``syncd once`` would count as syncd's.
The cache goes to ``.venv/pycache``, outside the source tree.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.setdefault("PYTHONPYCACHEPREFIX", str(ROOT / ".venv" / "pycache"))
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env
