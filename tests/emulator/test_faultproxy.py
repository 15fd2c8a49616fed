"""The TCP fault proxy itself (it is used by the scenario tests)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from syncd_emulator import Emulator
from tests.faultproxy import FaultProxy


@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[tuple[Emulator, FaultProxy]]:
    emu = Emulator(tmp_path / "emu").start()
    port = int(emu.url.rsplit(":", 1)[1])
    proxy = FaultProxy(("127.0.0.1", port)).start()
    yield emu, proxy
    proxy.stop()
    emu.stop()


def test_forwards_and_counts(proxied: tuple[Emulator, FaultProxy]) -> None:
    emu, proxy = proxied
    r = httpx.get(proxy.url + "/_emulator/uploads")
    assert r.status_code == 200 and r.json() == {"uploads": []}
    assert proxy.stats["connections"] == 1 and proxy.stats["up_bytes"] > 0


def test_bandwidth_limit(proxied: tuple[Emulator, FaultProxy]) -> None:
    emu, proxy = proxied
    proxy.set(bandwidth=100_000)
    started = time.monotonic()
    httpx.post(proxy.url + "/_emulator/reset-log", content=b"x" * 50_000)
    assert time.monotonic() - started >= 0.4


def test_reset_after_bytes_is_a_transport_error(proxied: tuple[Emulator, FaultProxy]) -> None:
    emu, proxy = proxied
    proxy.set(reset_after=1000)
    with pytest.raises(httpx.TransportError):
        httpx.post(proxy.url + "/_emulator/reset-log", content=b"x" * 100_000)
    assert proxy.stats["resets"] == 1


def test_stall_times_out(proxied: tuple[Emulator, FaultProxy]) -> None:
    emu, proxy = proxied
    proxy.set(stall_after=100)
    with pytest.raises(httpx.TimeoutException):
        httpx.post(proxy.url + "/_emulator/reset-log", content=b"x" * 500_000, timeout=0.5)


def test_down_refuses(proxied: tuple[Emulator, FaultProxy]) -> None:
    emu, proxy = proxied
    proxy.set(down=True)
    with pytest.raises(httpx.TransportError):
        httpx.get(proxy.url + "/_emulator/uploads")
    proxy.clear()
    assert httpx.get(proxy.url + "/_emulator/uploads").status_code == 200
