"""Xvid object keys: the ``object_key`` template, chunk keys, and how long objects live.

Every value a placeholder takes is one safe path segment (``{relpath}``
one per directory), never empty, ``.`` or ``..``; the placeholders are in
docs/destinations/xvid.md. Files above ``chunk_size`` are posted as one S3
object per chunk, under :func:`chunk_key` (an assumption: Xvid documents no
naming). ``expires_at`` decides when Xvid deletes an object that no Job used.
"""

from __future__ import annotations

import re
import time

from syncd.destinations.base import UploadItem
from syncd.destinations.options import DOT_SEGMENTS

DEFAULT_EXPIRY_DAYS = 7  # Xvid deletes an object no Job used after this, unless expires_at
EMPTY = "none"  # what {labels} and {category} become when the folder sets none
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DOTS = DOT_SEGMENTS  # segments a key must not have (no climbing, no '//')


def _segment(text: str) -> str:
    """One path segment: no control characters, no '/', never empty, '.' or '..'."""
    text = _CONTROL.sub("_", text).replace("/", "_")
    return text.replace(".", "_") if text in _DOTS else text


def render_object_key(template: str, item: UploadItem, mtime_ns: int) -> str:
    """The object key of ``item``: see docs/destinations/xvid.md for each placeholder.

    Deterministic for one file version (``{date}`` is the file's modification
    date, UTC), so every attempt and every new session use the same key.
    Every value is one safe segment (``{relpath}`` one per directory): never
    empty, ``.`` or ``..``. ValueError for a key that would still have such
    a segment.
    """
    values = {
        "relpath": "/".join(_segment(s) for s in item.relpath.split("/")),
        "name": _segment(item.name),
        "labels": ",".join(_segment(x).replace(",", "_") for x in item.labels) or EMPTY,
        "category": _segment(item.category) if item.category else EMPTY,
        "uuid": item.uuid,
        "date": time.strftime("%Y-%m-%d", time.gmtime(mtime_ns // 1_000_000_000)),
    }
    key = template.format_map(values)
    if any(segment in _DOTS for segment in key.split("/")):  # e.g. ".{category}" with "."
        raise ValueError(f"the object key {key!r} has an empty, '.' or '..' segment")
    return key


def chunk_key(key: str, index: int) -> str:
    """The S3 key of chunk ``index`` (0-based, the form's ``chunk``) of a chunked upload.

    An assumption: Xvid documents no naming (:mod:`syncd.destinations.xvid`). Only files above
    ``chunk_size`` (default 5 GiB, S3's POST limit) are chunked at all.
    """
    return f"{key}.chunk{index:05d}"


def expiry_text(expires_at: int | None, uploaded: float | None = None) -> str:
    """What ``expires_at`` means for an object (uploaded at ``uploaded``, when known)."""
    stamp = "%Y-%m-%dT%H:%M:%SZ unless a Job uses it"
    if expires_at == 0:
        return "never"
    if expires_at is not None:
        return time.strftime(stamp, time.gmtime(expires_at))
    if uploaded is None:
        return f"{DEFAULT_EXPIRY_DAYS} days after upload unless a Job uses it (Xvid's default)"
    return (
        time.strftime(stamp, time.gmtime(uploaded + DEFAULT_EXPIRY_DAYS * 86400))
        + f" (Xvid's default: {DEFAULT_EXPIRY_DAYS} days)"
    )


__all__ = ["DEFAULT_EXPIRY_DAYS", "EMPTY", "chunk_key", "expiry_text", "render_object_key"]
