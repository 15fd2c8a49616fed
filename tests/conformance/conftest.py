"""Fixtures of the destination conformance suite; the table itself is in targets.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from conformance.targets import EMULATOR_OPTIONS, TARGETS, Target, TargetFactory
from syncd.destinations import REGISTRY
from syncd.emulator import Emulator
from syncd.http import make_client


@pytest.fixture
def conformance_targets() -> dict[str, TargetFactory]:
    return TARGETS


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[Emulator]:
    emu = Emulator(tmp_path / "emulator-data", port=0, **EMULATOR_OPTIONS).start()
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture
def http_client() -> Iterator[httpx.Client]:
    with make_client(read=30.0, write=30.0) as client:
        yield client


@pytest.fixture(params=sorted(REGISTRY))
def target(request: pytest.FixtureRequest, emulator: Emulator,
           http_client: httpx.Client) -> Iterator[Target]:
    factory = TARGETS.get(request.param)
    if factory is None:  # the guard test reports this once, as a failure
        pytest.skip(f"no conformance target for destination type {request.param!r}")
    t = factory(emulator, http_client, False)
    try:
        yield t
    finally:
        t.dest.close()


@pytest.fixture
def make_target(request: pytest.FixtureRequest, target: Target, emulator: Emulator,
                http_client: httpx.Client) -> Callable[..., Target]:
    """Another instance of the current type, e.g. with bad credentials."""
    def make(*, bad_credentials: bool = False) -> Target:
        t = TARGETS[target.type](emulator, http_client, bad_credentials)
        request.addfinalizer(t.dest.close)
        return t
    return make
