"""syncd.writers: the kernel's answer to "is this file still open for writing?"."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from syncd import writers


@pytest.fixture
def enabled(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    before = signal.getsignal(signal.SIGIO)
    writers.enable()
    monkeypatch.setattr(writers, "_said", set())
    yield
    monkeypatch.setattr(writers, "_enabled", False)
    signal.signal(signal.SIGIO, before)


def _reader(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_NONBLOCK)


def _ask(path: Path) -> bool | None:
    """held_for_writing on a descriptor of its own, as the settle stage asks."""
    fd = _reader(path)
    try:
        return writers.held_for_writing(fd)
    finally:
        os.close(fd)


def test_a_file_open_for_writing_anywhere_is_held(tmp_path: Path, enabled: None) -> None:
    path = tmp_path / "scan.pdf"
    with open(path, "wb") as f:
        f.write(b"page 1")
        fd = _reader(path)
        try:
            assert writers.held_for_writing(fd) is True
        finally:
            os.close(fd)
    fd = _reader(path)
    try:
        assert writers.held_for_writing(fd) is False
        # the lease was given back: a writer opens it at once (no lease break to wait for)
        w = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        os.close(w)
    finally:
        os.close(fd)


def test_read_write_opens_count_and_sigio_is_ignored(tmp_path: Path, enabled: None) -> None:
    path = tmp_path / "db"
    path.write_bytes(b"x")
    rw = os.open(path, os.O_RDWR)
    fd = _reader(path)
    try:
        assert writers.held_for_writing(fd) is True
    finally:
        os.close(fd)
        os.close(rw)
    assert signal.getsignal(signal.SIGIO) == signal.SIG_IGN  # a broken lease cannot end syncd


def test_before_enable_it_cannot_tell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writers, "_enabled", False)
    path = tmp_path / "f"
    with open(path, "wb"):
        fd = _reader(path)
        try:
            assert writers.held_for_writing(fd) is None
        finally:
            os.close(fd)


@pytest.mark.parametrize(
    ("code", "said"),
    [(errno.EACCES, "lacks CAP_LEASE"), (errno.EINVAL, "has no leases")],
)
def test_where_the_kernel_will_not_lease_it_says_so_once(
    tmp_path: Path,
    enabled: None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    code: int,
    said: str,
) -> None:
    def refuse(fd: int, cmd: int, arg: Any = 0) -> int:
        if cmd == fcntl.F_SETLEASE:
            raise OSError(code, os.strerror(code))
        return 0

    monkeypatch.setattr(writers.fcntl, "fcntl", refuse)
    path = tmp_path / "f"
    path.write_bytes(b"x")
    caplog.set_level(logging.INFO, "syncd.writers")
    for _ in range(3):
        assert _ask(path) is None
    lines = [m for m in caplog.messages if "cannot ask the kernel" in m]
    assert len(lines) == 1 and said in lines[0], caplog.messages


def test_a_network_file_system_is_not_asked(
    tmp_path: Path, enabled: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """NFSv4 without a read delegation, SMB without a read oplock: the kernel refuses a
    lease with EAGAIN though nobody writes. Only local file systems are asked."""
    monkeypatch.setattr(writers, "fs_type", lambda fd: 0x6969)  # NFS
    caplog.set_level(logging.INFO, "syncd.writers")
    path = tmp_path / "f"
    with open(path, "wb"):
        for _ in range(2):
            assert _ask(path) is None
    lines = [m for m in caplog.messages if "cannot ask the kernel" in m]
    assert len(lines) == 1 and "0x6969" in lines[0]
