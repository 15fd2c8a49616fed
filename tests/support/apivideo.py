"""The apivideo tests' shared constants, clock, emulator fixtures and helpers
(tests/emulator/test_emulator_apivideo.py and tests/destinations/test_apivideo_destination.py)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from syncd_emulator import Emulator
from syncd_emulator.apivideo import ApiVideoService
from tests.conftest import FakeClock as Clock  # its `clock` fixture serves these tests

TOKEN = "to-test-apivideo-token"


KEY = "test-apivideo-key-4c1f"


MIB = 1024 * 1024


C = 5 * MIB  # the smallest chunk api.video takes


UUID = "6a3f0c1e-2b4d-4e5f-8a9b-0c1d2e3f4a5b"


@pytest.fixture
def emu(tmp_path: Path, clock: Clock, request: pytest.FixtureRequest) -> Iterator[Emulator]:
    """More Emulator options by indirect parametrization."""
    with Emulator(
        tmp_path / "data",
        apivideo_token=TOKEN,
        apivideo_key=KEY,
        clock=clock,
        **getattr(request, "param", {}),
    ) as emulator:
        yield emulator


def basic(key: str = KEY, password: str = "") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:{password}".encode()).decode()}


def stored(emu: Emulator) -> list[dict[str, Any]]:
    return [u for u in emu.uploads() if u["service"] == "apivideo"]


UPLOAD_OPS = ("apivideo.upload", "apivideo.upload_source")  # the token route, the API-key route


def uploads_logged(emu: Emulator, ok_only: bool = True) -> list[int]:
    return [
        e["bytes"] for e in emu.requests() if e["op"] in UPLOAD_OPS and (not ok_only or e["status"] == 201)
    ]


def service(emu: Emulator) -> ApiVideoService:
    (svc,) = [s for s in emu.services if isinstance(s, ApiVideoService)]
    return svc


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as c:
        yield c
