"""The wriftai tests' shared constants, clock, emulator fixtures and helpers
(tests/emulator/test_emulator_wriftai.py and tests/destinations/test_wriftai_destination.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from syncd_emulator import Emulator
from tests.conftest import FakeClock as Clock

TOKEN = "test-wriftai-token-5e1f"


PART = 64 * 1024


TTL = 600.0


@pytest.fixture
def clock() -> Clock:
    """The emulator's wall clock: real time to start with, movable for URL expiry."""
    return Clock(time.time())


@pytest.fixture
def emulator(tmp_path: Path, clock: Clock, request: pytest.FixtureRequest) -> Iterator[Emulator]:
    """Parts of PART bytes; more Emulator options by indirect parametrization (``rules``)."""
    options = getattr(request, "param", {})
    emu = Emulator(
        tmp_path / "emu", wriftai_token=TOKEN, url_ttl=TTL, clock=clock, wriftai_part_size=PART, **options
    ).start()
    try:
        yield emu
    finally:
        emu.stop()


def rules(**options: Any) -> pytest.MarkDecorator:
    """The ``emulator`` fixture built with these Emulator options."""
    return pytest.mark.parametrize("emulator", [options], indirect=True, ids=list(options))
