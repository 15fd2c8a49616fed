"""``python -m syncd_emulator``: the same as ``syncd emulate``."""

from __future__ import annotations

from syncd_emulator.cli import main

raise SystemExit(main())
