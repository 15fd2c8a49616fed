"""The xvid tests' shared constants, clock, emulator fixtures and helpers
(tests/emulator/test_emulator_xvid.py and tests/destinations/test_xvid_destination.py)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from syncd_emulator import Emulator
from syncd_emulator.xvid import XvidService

CLIENT, SECRET = "xvid-test-client", "xvid-test-secret-7c1e"


PIPELINE = "53a1ac4914eaa8ffa4fce91b"


class Clock:
    """The emulator's wall clock: real time plus a settable offset (policy and token expiry)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def emu(tmp_path: Path, clock: Clock) -> Iterator[Emulator]:
    with Emulator(tmp_path / "data", xvid_client=f"{CLIENT}:{SECRET}", url_ttl=60, clock=clock) as emulator:
        yield emulator


@pytest.fixture
def service(emu: Emulator) -> XvidService:
    (found,) = [s for s in emu.services if isinstance(s, XvidService)]
    return found


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=20) as client:
        yield client


def ops(emu: Emulator, op: str, status: int | None = None) -> list[dict[str, Any]]:
    return [e for e in emu.requests() if e["op"] == op and (status is None or e["status"] == status)]


def stored(emu: Emulator) -> list[dict[str, Any]]:
    return [u for u in emu.uploads() if u["service"] == "xvid"]


def leftovers(emu: Emulator) -> list[str]:
    root = Path(emu.store.root) / "sessions" / "xvid"
    return [
        str(p.parent.name)
        for p in root.glob("*/session.json")
        if json.loads(p.read_text())["state"] == "active" or list(p.parent.glob("part-*"))
    ]


def get_token(http: httpx.Client, emu: Emulator, **form: str) -> httpx.Response:
    body = {
        "grant_type": "client_credential",
        "client_id": CLIENT,
        "client_secret": SECRET,
        "scope": "mediahub",
        **form,
    }
    return http.post(emu.url + "/xvid/v1/oauth2/token/", data=body)


def bearer(http: httpx.Client, emu: Emulator) -> dict[str, str]:
    r = get_token(http, emu)
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def finish(
    http: httpx.Client, emu: Emulator, auth: dict[str, str], upload_id: str, nb: int
) -> httpx.Response:
    return http.put(
        f"{emu.url}/xvid/v1/files/uploads/{upload_id}", headers=auth, json={"upload": {"nb_chunks": nb}}
    )
