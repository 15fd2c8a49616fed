"""Argument types of the command line: numbers checked where they are parsed, so that a
bad one is a usage error (exit 2) naming the argument, never a traceback later."""

from __future__ import annotations

import argparse


def seconds(text: str, *, zero: bool = False) -> float:
    """A duration: above 0 (or from 0 with ``zero``), finite."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (value >= 0 if zero else value > 0) or value == float("inf"):
        raise argparse.ArgumentTypeError(
            f"expected a number of seconds {'>= 0' if zero else '> 0'}, got {text!r}"
        )
    return value


ROW_ID_MAX = (1 << 63) - 1  # SQLite's largest integer


def positive(text: str) -> int:
    """A count or a ledger row id: 1 to SQLite's largest integer; ``#12`` (as `syncd files`
    shows ids) is 12."""
    try:
        value = int(text.removeprefix("#"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value <= ROW_ID_MAX:
        raise argparse.ArgumentTypeError(f"must be between 1 and {ROW_ID_MAX}, got {text}")
    return value


PID_MAX = 1 << 22  # the kernel's PID_MAX_LIMIT on 64-bit systems


def process_id(text: str) -> int:
    """A process id for ``reload --pid``: 1 to the kernel's limit (0 and -1 would signal a
    process group, or every process)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a process id: {text!r}") from None
    if not 1 <= value <= PID_MAX:
        raise argparse.ArgumentTypeError(f"not a process id (1 to {PID_MAX}): {text}")
    return value


def wait_seconds(text: str) -> float:
    """A wait for ``reload --timeout``: above 0 up to a day (``--no-wait`` does not wait);
    not -1, inf or nan."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 86400:
        raise argparse.ArgumentTypeError(f"expected seconds above 0, up to 86400, got {text!r}")
    return value
