"""Fixtures of the destination tests: Lilt's in-process emulator and the wire to it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from syncd.http import make_client
from syncd_emulator import Emulator
from tests.destinations.lilt_wire import KEY, PART, Clock, Wire


@pytest.fixture
def emu(tmp_path: Path) -> Emulator:
    return Emulator(tmp_path / "emu", lilt_key=KEY, lilt_part_size=PART, clock=Clock())


@pytest.fixture
def wire(emu: Emulator) -> Wire:
    return Wire(emu)


@pytest.fixture
def client(wire: Wire) -> Iterator[httpx.Client]:
    with make_client(transport=wire) as c:
        yield c
