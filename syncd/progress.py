"""Progress of the uploads in flight: bytes sent, rate and ETA per file.

The uploader knows, per file in flight, how many bytes the destination has
read from it (``Source.bytes_read``, plus the parts a resumed upload had
already confirmed): :meth:`syncd.uploader.Uploader.progress`. The daemon
samples that at most once a second (:data:`PUBLISH_EVERY`), adds a rate over
the last :data:`RATE_WINDOW` seconds and an ETA (:class:`ProgressMeter`), and
writes the result to the ledger's kv table under :data:`KV_KEY` (only the rows
in flight, so it stays as small as the worker pool). ``syncd status`` and
``syncd files``, in another process, read it from there (:func:`read`).

"Sent" counts bytes read from the file and handed to the connection: it runs
ahead of what the server has acknowledged by a read block at most, and a
part sent again after an error is not counted twice beyond the file's size.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

KV_KEY = "progress"
PUBLISH_EVERY = 1.0  # seconds between two snapshots written by the daemon
RATE_WINDOW = 10.0  # seconds of samples the rate is computed over
STALE_AFTER = 10.0  # a snapshot older than this (or of another pid) is not shown


def resumed_bytes(resume: Mapping[str, Any] | None, size: int) -> int:
    """Bytes a resumed multi-part upload had already confirmed (``parts`` of the
    chunked driver's checkpoint, see destinations/_chunked.py); 0 for anything else."""
    if not resume or not isinstance(resume, Mapping):  # hand-edited, or another syncd's
        return 0
    parts, part_size = resume.get("parts"), resume.get("part_size")
    if not isinstance(parts, Mapping) or not isinstance(part_size, int) or part_size <= 0:
        return 0
    done = 0
    for key in parts:
        try:
            number = int(key)
        except (TypeError, ValueError):
            continue
        if number >= 1:
            done += max(0, min(part_size, size - (number - 1) * part_size))
    return min(done, size)


def confirmed_more(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None, size: int) -> bool:
    """Whether checkpoint ``after`` holds more confirmed bytes than ``before``: an attempt
    that moved on before a connection failed it (the link's trouble, not the file's)."""
    return resumed_bytes(after, size) > resumed_bytes(before, size)


class ProgressMeter:
    """Adds ``rate`` (bytes/s over the last RATE_WINDOW seconds) and ``eta_seconds`` to
    the uploader's snapshots; keeps samples only for the rows still in flight."""

    def __init__(self, window: float = RATE_WINDOW) -> None:
        self.window = window
        self._samples: dict[int, deque[tuple[float, int]]] = {}

    def update(self, files: Iterable[Mapping[str, Any]], now: float) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        seen: set[int] = set()
        for f in files:
            row_id, sent, total = int(f["id"]), int(f["sent"]), int(f["total"])
            seen.add(row_id)
            samples = self._samples.setdefault(row_id, deque())
            if samples and sent < samples[-1][1]:
                samples.clear()  # a new attempt started over
            samples.append((now, sent))
            while len(samples) > 2 and now - samples[0][0] > self.window:
                samples.popleft()
            rate: float | None = None
            t0, b0 = samples[0]
            if now - t0 >= 0.5:
                rate = max(0.0, (sent - b0) / (now - t0))
            elif f.get("started_at") is not None and now - float(f["started_at"]) >= 0.5:
                rate = max(0.0, (sent - int(f.get("resumed", 0))) / (now - float(f["started_at"])))
            eta = (total - sent) / rate if rate else None
            entry = dict(f)
            entry.update(
                {
                    "rate": None if rate is None else round(rate, 1),
                    "eta_seconds": None if eta is None else round(eta, 1),
                    "percent": round(100.0 * sent / total, 1) if total else 100.0,
                }
            )
            out.append(entry)
        for gone in set(self._samples) - seen:
            del self._samples[gone]
        return out


def snapshot(files: list[dict[str, Any]], pid: int, now: float | None = None) -> dict[str, Any]:
    """What the daemon writes under KV_KEY."""
    return {"pid": pid, "at": time.time() if now is None else now, "files": files}


def read(meta: Any, pid: int | None, now: float | None = None) -> dict[int, dict[str, Any]]:
    """Row id -> progress, from what :func:`snapshot` wrote; empty when no daemon runs
    (``pid`` None), the snapshot is another process's, or it is older than STALE_AFTER."""
    if pid is None or not isinstance(meta, dict) or meta.get("pid") != pid:
        return {}
    at = meta.get("at")
    now = time.time() if now is None else now
    if not isinstance(at, int | float) or now - at > STALE_AFTER:
        return {}
    out: dict[int, dict[str, Any]] = {}
    for f in meta.get("files") or []:
        if isinstance(f, dict) and isinstance(f.get("id"), int):
            out[f["id"]] = {**f, "as_of": at}
    return out


# -- text --------------------------------------------------------------------------------------


def size_text(n: float) -> str:
    """``31.5 MiB``: binary units, like the config's sizes."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def duration_text(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h10m``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def line(p: Mapping[str, Any]) -> str:
    """``12.0 MiB of 30.0 MiB (40%), 2.1 MiB/s, ETA 9s``."""
    text = f"{size_text(p.get('sent') or 0)} of {size_text(p.get('total') or 0)}"
    if p.get("percent") is not None:
        text += f" ({p['percent']:.0f}%)"
    rate = p.get("rate")
    if isinstance(rate, int | float):
        text += f", {size_text(rate)}/s"
        eta = p.get("eta_seconds")
        if isinstance(eta, int | float):
            text += f", ETA {duration_text(eta)}"
    return text
