"""Fault injection: decide, per service request, whether to misbehave and how.

Kinds (``FAULT_KINDS``):

``500``, ``503``
    answer that status with the service's own error body.
``429``
    answer 429 with ``Retry-After`` (``1`` second unless a script entry says
    ``retry_after``: an integer number of seconds, ``"date"`` for the
    HTTP-date form, one to two seconds in the future, or ``"none"`` for no
    ``Retry-After`` at all, as Lilt documents none).
``reset``
    read part of the request, then close the socket with ``SO_LINGER`` 0, so
    the client sees a connection reset and no response.
``slow``
    sleep (1–2 s, or a script entry's ``delay``) and then answer normally.
``expire``
    answer 403 as an expired presigned URL would.

A script entry may also give any other ``status`` (say 502): that status is
answered with the service's error body. A ``message`` replaces the text of
that error body (as a hostile or broken server might answer: control
characters, echoed credentials), so tests can check what syncd makes of it.

Scripted faults are consumed first: the first entry whose ``op`` matches the
request's operation name (``"*"`` or no ``op`` matches any) fires and its
``count`` (default 1) goes down. Only when no entry matches are random faults
drawn, at ``fail_rate``, from ``kinds``, with a private RNG seeded by
``seed`` so that a run of requests in the same order is reproducible.

Every fault except ``slow`` is decided and answered *before* the handler
runs, so a faulted request has no effect on the emulator's state.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypedDict

FAULT_KINDS = ("500", "503", "429", "reset", "slow", "expire")
DEFAULT_KINDS = ("500", "503", "429", "reset", "slow")


@dataclass(frozen=True)
class Fault:
    """One decided fault. ``status`` is set for kinds answered with an error."""

    kind: str
    status: int | None = None
    retry_after: int | str = 1  # seconds, "date", or "none" (no header)
    delay: float | None = None  # for "slow"; None = random 1-2 s
    message: str | None = None  # the error body's text; None = the kind's usual text


def parse_kinds(value: str | Iterable[Any]) -> tuple[str, ...]:
    """``"503,429"`` or ``["503", 429]`` → ``("503", "429")``; ValueError if unknown."""
    items = value.split(",") if isinstance(value, str) else list(value)
    kinds = tuple(str(k).strip() for k in items if str(k).strip())
    unknown = [k for k in kinds if k not in FAULT_KINDS]
    if unknown:
        raise ValueError(f"unknown fault kind(s) {unknown}; valid: {', '.join(FAULT_KINDS)}")
    return kinds


def _fault(
    kind: str, status: int | None = None, retry_after: int | str = 1, delay: float | None = None
) -> Fault:
    if status is None and kind.isdigit():
        status = int(kind)
    if kind == "expire":
        status = 403
    return Fault(kind, status, retry_after, delay)


class _ScriptEntry(TypedDict):
    op: str
    count: int  # requests still to fail
    fault: Fault


def _parse_entry(raw: Any) -> _ScriptEntry:
    if not isinstance(raw, Mapping):
        raise ValueError(f"script entry must be an object, got {raw!r}")
    op = raw.get("op", "*")
    count = raw.get("count", 1)
    if not isinstance(op, str) or not op:
        raise ValueError(f"script entry op must be a non-empty string, got {op!r}")
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ValueError(f"script entry count must be an integer >= 1, got {count!r}")
    status, kind = raw.get("status"), raw.get("kind")
    if status is not None:
        if not isinstance(status, int) or isinstance(status, bool) or not 400 <= status <= 599:
            raise ValueError(f"script entry status must be an HTTP error status, got {status!r}")
        kind = kind or ("expire" if status == 403 else str(status))
    elif kind is None:
        raise ValueError("script entry needs 'kind' or 'status'")
    else:
        kind = str(kind)
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; valid: {', '.join(FAULT_KINDS)}")
    retry_after = raw.get("retry_after", 1)
    if not (retry_after in ("date", "none") or (isinstance(retry_after, int) and retry_after >= 0)):
        raise ValueError(f'retry_after must be seconds >= 0, "date" or "none", got {retry_after!r}')
    delay = raw.get("delay")
    if delay is not None and (not isinstance(delay, (int, float)) or delay < 0):
        raise ValueError(f"delay must be seconds >= 0, got {delay!r}")
    message = raw.get("message")
    if message is not None and not isinstance(message, str):
        raise ValueError(f"message must be a string, got {message!r}")
    fault = _fault(kind, status, retry_after, None if delay is None else float(delay))
    if message is not None:
        fault = replace(fault, message=message)
    return {"op": op, "count": count, "fault": fault}


class FaultInjector:
    """Thread-safe fault decisions. See the module docstring for the rules."""

    def __init__(
        self, fail_rate: float = 0.0, kinds: Sequence[str] = DEFAULT_KINDS, seed: int | None = None
    ) -> None:
        self._lock = threading.Lock()
        self._default_kinds = parse_kinds(kinds)
        self._fail_rate = 0.0
        self._kinds: tuple[str, ...] = self._default_kinds
        self._seed = seed
        self._rng = random.Random(seed)
        self._script: list[_ScriptEntry] = []
        self._stopping = threading.Event()  # set while the emulator stops: pauses end at once
        self.configure(fail_rate=fail_rate)

    def configure(
        self,
        *,
        fail_rate: float | None = None,
        kinds: Iterable[Any] | str | None = None,
        seed: int | None = None,
        script: Sequence[Any] | None = None,
    ) -> None:
        """Change what is given (None = unchanged); ValueError on bad input, nothing changed.

        ``script`` replaces the current script; ``seed`` re-seeds the RNG.
        """
        if fail_rate is not None and (
            isinstance(fail_rate, bool)
            or not isinstance(fail_rate, (int, float))
            or not 0.0 <= fail_rate <= 1.0
        ):
            raise ValueError(f"fail_rate must be a number in 0..1, got {fail_rate!r}")
        new_kinds = parse_kinds(kinds) if kinds is not None else None
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        if script is not None and not isinstance(script, (list, tuple)):
            raise ValueError("script must be a list of entries")
        entries = [_parse_entry(e) for e in script] if script is not None else None
        with self._lock:
            if fail_rate is not None:
                self._fail_rate = float(fail_rate)
            if new_kinds is not None:
                self._kinds = new_kinds
            if seed is not None:
                self._seed = seed
                self._rng = random.Random(seed)
            if entries is not None:
                self._script = entries

    def clear(self) -> None:
        """No more faults: rate 0, empty script, kinds back to the start-up ones."""
        with self._lock:
            self._fail_rate = 0.0
            self._script = []
            self._kinds = self._default_kinds

    def decide(self, op: str) -> Fault | None:
        """The fault for one request of operation ``op``, or None."""
        with self._lock:
            for entry in self._script:
                if entry["op"] in ("*", op):
                    entry["count"] -= 1
                    if entry["count"] <= 0:
                        self._script.remove(entry)
                    return entry["fault"]
            if self._fail_rate <= 0.0 or not self._kinds:
                return None
            if self._rng.random() >= self._fail_rate:
                return None
            return _fault(self._rng.choice(self._kinds))

    def slow_delay(self, fault: Fault) -> float:
        if fault.delay is not None:
            return fault.delay
        with self._lock:
            return self._rng.uniform(1.0, 2.0)

    def pause(self, fault: Fault) -> None:
        """Wait out a ``slow`` fault; cut short when the emulator stops (see :meth:`stopping`)."""
        self._stopping.wait(self.slow_delay(fault))

    def stopping(self, stopping: bool) -> None:
        """While True, pauses end at once: a stopped emulator leaves no thread asleep."""
        if stopping:
            self._stopping.set()
        else:
            self._stopping.clear()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "fail_rate": self._fail_rate,
                "kinds": list(self._kinds),
                "seed": self._seed,
                "script": [
                    {
                        "op": e["op"],
                        "count": e["count"],
                        "kind": e["fault"].kind,
                        "status": e["fault"].status,
                    }
                    for e in self._script
                ],
            }
