"""``python -m syncd.emulator``: the same as ``syncd emulate``."""

from __future__ import annotations

from syncd.emulator import main

raise SystemExit(main())
