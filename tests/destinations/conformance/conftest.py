"""Fixtures of the destination conformance suite; the table itself is in targets.py.

The emulator is reached in process (``EmulatorTransport``: no socket, no port)
unless a test parametrizes ``wire`` to True: then it is started on a loopback
port and the client goes over TCP, for what only a socket shows (a reset is
an RST the client sees while it sends).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from syncd.destinations import REGISTRY
from syncd.http import make_client
from syncd_emulator import Emulator, EmulatorTransport
from tests.destinations.conformance.targets import EMULATOR_OPTIONS, TARGETS, Target, TargetFactory
from tests.destinations.conformance.test_destination_conformance import OVER_BOTH


@pytest.fixture
def conformance_targets() -> dict[str, TargetFactory]:
    return TARGETS


@pytest.fixture
def wire() -> bool:
    """False: in process. A test that needs the socket server parametrizes it True."""
    return False


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.function in OVER_BOTH and "wire" in metafunc.fixturenames:
        metafunc.parametrize("wire", [False, True], ids=["in-process", "socket"])


@pytest.fixture
def emulator(tmp_path: Path, wire: bool) -> Iterator[Emulator]:
    emu = Emulator(tmp_path / "emulator-data", port=0, **EMULATOR_OPTIONS)
    if wire:
        emu.start()
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture
def http_client(emulator: Emulator, wire: bool) -> Iterator[httpx.Client]:
    """syncd's own client (make_client), over the in-process transport or the socket."""
    transport = None if wire else EmulatorTransport(emulator)
    with make_client(read=30.0, write=30.0, transport=transport) as client:
        yield client


@pytest.fixture(params=sorted(REGISTRY))
def target(request: pytest.FixtureRequest, emulator: Emulator, http_client: httpx.Client) -> Iterator[Target]:
    factory = TARGETS.get(request.param)
    if factory is None:  # the guard test reports this once, as a failure
        pytest.skip(f"no conformance target for destination type {request.param!r}")
    t = factory(emulator, http_client, False)
    try:
        yield t
    finally:
        t.dest.close()


@pytest.fixture
def make_target(
    request: pytest.FixtureRequest, target: Target, emulator: Emulator, http_client: httpx.Client
) -> Callable[..., Target]:
    """Another instance of the current type, e.g. with bad credentials."""

    def make(*, bad_credentials: bool = False) -> Target:
        t = TARGETS[target.type](emulator, http_client, bad_credentials)
        request.addfinalizer(t.dest.close)
        return t

    return make
