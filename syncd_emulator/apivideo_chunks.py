"""api.video's chunk rules, apart from the service that applies them (:mod:`syncd_emulator.apivideo`).

The upload form (:func:`parse_form`), the ``Content-Range`` grammar
(:func:`parse_range`: ``bytes FROM-TO/TOTAL`` or ``part N/M``, TOTAL or M
may be ``*``), the 5 MiB floor for every chunk but the last
(:func:`check_min_size`), and :func:`apply_chunk`: how one chunk changes a
video's record (order, duplicates, totals, completion). The rules
themselves are described in the service's module docstring. Errors are
api.video problems (:func:`problem`), rendered by ``ApiVideoService.error``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from syncd_emulator.forms import FilePart, Form, FormError, boundary, read_form
from syncd_emulator.messages import ApiError, Request
from syncd_emulator.store import Session, Sessions

MIB = 1024 * 1024
MIN_CHUNK = 5 * MIB
FIELD_LIMIT = 64 * 1024
BYTES_RANGE = re.compile(r"bytes (\d{1,19})-(\d{1,19})/(\d{1,19}|\*)")
PART_RANGE = re.compile(r"part (\d{1,9})/(\d{1,9}|\*)")
RANGE_GRAMMAR = "Content-Range must be 'bytes FROM-TO/TOTAL' or 'part PART/TOTAL' (TOTAL may be '*')"


def problem(status: int, slug: str, title: str, name: str = "", detail: str = "") -> ApiError:
    """An ApiError that :meth:`ApiVideoService.error` renders with this slug, name and detail."""
    return ApiError(status, title, f"av:{slug}:{name}" + (f"\x1f{detail}" if detail else ""))


def bad(slug: str, title: str, name: str = "file", detail: str = "") -> ApiError:
    return problem(400, slug, title, name, detail)


def malformed(title: str) -> ApiError:
    return bad("video-content-range-malformed", title, "Content-Range")


# -- multipart/form-data, streamed ----------------------------------------------------


def parse_form(request: Request, temp_path: Callable[[], Path]) -> Form:
    """The upload form (file fields streamed to temp files); 400 problem+json if malformed."""
    bound = boundary(request.headers.get("Content-Type", ""))
    if bound is None:
        raise bad("invalid-attribute", "The request must be multipart/form-data with a boundary")
    try:
        return read_form(request.body, bound, temp_path, field_limit=FIELD_LIMIT)
    except FormError as exc:
        raise bad("invalid-attribute", f"Malformed multipart body: {exc}") from None


# -- Content-Range --------------------------------------------------------------------


@dataclass(frozen=True)
class Range:
    """A parsed Content-Range: ``mode`` "bytes" (first/last inclusive) or "part"."""

    mode: str
    first: int = 0  # bytes: FROM; part: N
    last: int = 0  # bytes: TO
    total: int | None = None  # TOTAL bytes or M parts; None for "*"


def is_final(rng: Range) -> bool:
    """Whether this chunk completes the source by its own header (the total is known)."""
    if rng.total is None:
        return False
    return rng.last + 1 == rng.total if rng.mode == "bytes" else rng.first == rng.total


def check_min_size(rng: Range | None, size: int) -> None:
    """Every chunk but the last is at least 5 MiB (protocols.md §4.3)."""
    if rng is not None and not is_final(rng) and size < MIN_CHUNK:
        what = "chunk" if rng.mode == "bytes" else f"part {rng.first}"
        raise bad("invalid-attribute", f"Every chunk but the last must be at least {MIN_CHUNK} "
                  f"bytes; this {what} has {size}", "file")


def parse_range(text: str | None, size: int) -> Range | None:
    """The chunk's range checked against its file size; None without a header."""
    if text is None:
        return None
    text = text.strip()
    if m := BYTES_RANGE.fullmatch(text):
        first, last = int(m.group(1)), int(m.group(2))
        total = None if m.group(3) == "*" else int(m.group(3))
        if last < first or (total is not None and last >= total):
            raise malformed(f"Content-Range {text!r} is not a valid inclusive range")
        if last - first + 1 != size:
            raise malformed(f"Content-Range {text!r} covers {last - first + 1} bytes, "
                            f"the file has {size}")
        return Range("bytes", first, last, total)
    if m := PART_RANGE.fullmatch(text):
        number = int(m.group(1))
        total = None if m.group(2) == "*" else int(m.group(2))
        if number < 1 or (total is not None and number > total):
            raise malformed(f"Content-Range {text!r}: the part number must be 1..total")
        return Range("part", number, number, total)
    raise malformed(RANGE_GRAMMAR)


def check_header(text: str | None) -> None:
    """Refuse a malformed ``Content-Range`` before the body is read."""
    if text is not None and not (BYTES_RANGE.fullmatch(text.strip())
                                 or PART_RANGE.fullmatch(text.strip())):
        raise malformed(RANGE_GRAMMAR)


def apply_chunk(sessions: Sessions, session: Session, rng: Range | None,
                chunk: FilePart) -> bool:
    """Check ``chunk`` against the video and keep it; True when the source is complete.

    The caller holds ``session.lock`` and restores ``session.info`` when this
    raises (a rejected chunk changes nothing).
    """
    info = session.info
    if info["mode"] is not None and (rng is None or rng.mode != info["mode"]):
        raise malformed(f"This video is being uploaded with the {info['mode']} form of "
                        "Content-Range; every chunk must use it")
    if rng is None:
        if info["ranges"] or info["part_sizes"]:
            raise malformed("This video already holds chunks: send the rest with "
                            "Content-Range")
        rng = Range("bytes", 0, chunk.size - 1, chunk.size)  # the whole source at once
    else:
        info["mode"] = rng.mode
    if info["filename"] is None:
        info["filename"] = chunk.filename or "untitled"
    apply = _apply_bytes if rng.mode == "bytes" else _apply_part
    return apply(sessions, session, rng, chunk)


def _check_total(info: dict[str, Any], total: int | None) -> None:
    if total is not None and info["total"] is not None and total != info["total"]:
        raise malformed(f"Content-Range total {total} differs from the total {info['total']} "
                        "given before")
    if total is not None:
        info["total"] = total


def _apply_bytes(sessions: Sessions, session: Session, rng: Range, chunk: FilePart) -> bool:
    info = session.info
    _check_total(info, rng.total)
    held = info["ranges"][-1][1] + 1 if info["ranges"] else 0
    if rng.first < held:  # sent already (a lost 201, say): documented as an error
        raise bad("video-content-range-by-bytes-range-overlap",
                  'The range in the "Content-Range" header overlaps with a previous one '
                  "you already sent for this video.", "Content-Range",
                  f"bytes 0-{held - 1} are held; the next chunk starts at byte {held}")
    if rng.first != held:
        raise malformed(f"This chunk starts at byte {rng.first}; {held} bytes are held, so "
                        f"the next chunk must start at byte {held}")
    final = is_final(rng)
    sessions.add_part(session, len(session.parts) + 1, chunk.path, chunk.size, chunk.md5)
    info["ranges"].append([rng.first, rng.last])
    if final:
        info["filesize"] = rng.total
    return final


def _apply_part(sessions: Sessions, session: Session, rng: Range, chunk: FilePart) -> bool:
    info = session.info
    _check_total(info, rng.total)
    sizes: dict[str, int] = info["part_sizes"]
    total = info["total"]
    if total is not None and any(int(n) > total for n in sizes):
        raise malformed(f"Parts above the total of {total} were already received")
    if str(rng.first) in sizes:  # sent already (a lost 201, say): documented as an error
        raise bad("video-content-range-by-part-part-already-sent",
                  'The "part" value in the "Content-Range" header collides with a previous '
                  "one you already sent for this video.", "Content-Range",
                  f"parts {sorted(map(int, sizes))} are held")
    sessions.add_part(session, rng.first, chunk.path, chunk.size, chunk.md5)
    sizes[str(rng.first)] = chunk.size
    if total is None or len(sizes) < total:
        return False
    offset, ranges = 0, []
    for n in range(1, total + 1):
        ranges.append([offset, offset + sizes[str(n)] - 1])
        offset += sizes[str(n)]
    info["ranges"], info["filesize"] = ranges, offset
    return True
