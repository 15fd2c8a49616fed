"""api.video's chunk rules, apart from the service that applies them (:mod:`syncd_emulator.apivideo`).

The request before its body (:func:`check_upload`: size cap, ``Content-Range``
syntax), the upload form (:func:`parse_form`) and its one ``file``
(:func:`read_chunk`), the ``Content-Range`` grammar (:func:`parse_range`:
``bytes FROM-TO/TOTAL`` or ``part N/M``, TOTAL or M may be ``*``), the 5 MiB
floor for every chunk but the last (:func:`check_min_size`), and
:func:`apply_chunk`: how one chunk changes a video's record (order,
duplicates, totals, completion). The rules themselves are described in the
service's module docstring. Errors are api.video problems
(:mod:`syncd_emulator.apivideo_problems`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from syncd_emulator.apivideo_problems import bad, problem
from syncd_emulator.apivideo_videos import token_tag
from syncd_emulator.forms import FilePart, Form, FormError, boundary, read_form
from syncd_emulator.messages import ApiError, Request
from syncd_emulator.store import Session, Sessions

MIB = 1024 * 1024
MAX_BODY = 200 * MIB + 64 * 1024  # api.video's 200 MiB request cap, plus room for the form
MIN_CHUNK = 5 * MIB
FIELD_LIMIT = 64 * 1024
BYTES_RANGE = re.compile(r"bytes (\d{1,19})-(\d{1,19})/(\d{1,19}|\*)")
PART_RANGE = re.compile(r"part (\d{1,9})/(\d{1,9}|\*)")
RANGE_GRAMMAR = "Content-Range must be 'bytes FROM-TO/TOTAL' or 'part PART/TOTAL' (TOTAL may be '*')"


def malformed(title: str) -> ApiError:
    return bad("video-content-range-malformed", title, "Content-Range")


# -- multipart/form-data, streamed ----------------------------------------------------


def check_upload(request: Request) -> None:
    """Refuse an upload before its body is read: too large (413), or a malformed
    ``Content-Range`` header."""
    length = request.content_length
    if length is not None and length > MAX_BODY:
        raise problem(
            413,
            "request-too-large",
            f"A request may carry at most {MAX_BODY} bytes; send larger files in chunks",
            "file",
        )
    check_header(request.headers.get("Content-Range"))


def parse_form(request: Request, temp_path: Callable[[], Path]) -> Form:
    """The upload form (file fields streamed to temp files); 400 problem+json if malformed."""
    bound = boundary(request.headers.get("Content-Type", ""))
    if bound is None:
        raise bad("invalid-attribute", "The request must be multipart/form-data with a boundary")
    try:
        return read_form(request.body, bound, temp_path, field_limit=FIELD_LIMIT)
    except FormError as exc:
        raise bad("invalid-attribute", f"Malformed multipart body: {exc}") from None


def read_chunk(
    form: Form, header: str | None, video_id: str | None
) -> tuple[FilePart, Range | None, str | None]:
    """The form's one non-empty ``file``, its range (``header`` checked against its size)
    and the video it names: ``video_id`` when the route gave one, else its ``videoId``
    field (at most once; None for a first chunk)."""
    files = [f for f in form.files if f.name == "file"]
    if not files:
        raise bad("uploaded-file-no-file", "There is no uploaded file in the request.")
    if len(files) > 1:
        raise bad("uploaded-file-multiple-files", "There is more than one uploaded file in the request.")
    (chunk,) = files
    if chunk.size == 0:
        raise bad("uploaded-file-no-file", "The uploaded file is empty.")
    rng = parse_range(header, chunk.size)
    check_min_size(rng, chunk.size)
    if video_id is None:
        ids = form.fields.get("videoId", [])
        if len(ids) > 1:
            raise bad("invalid-attribute", "videoId must be given once.", "videoId")
        video_id = ids[0] if ids else None
    return chunk, rng, video_id


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
        raise bad(
            "invalid-attribute",
            f"Every chunk but the last must be at least {MIN_CHUNK} bytes; this {what} has {size}",
            "file",
        )


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
            raise malformed(f"Content-Range {text!r} covers {last - first + 1} bytes, the file has {size}")
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
    if text is not None and not (BYTES_RANGE.fullmatch(text.strip()) or PART_RANGE.fullmatch(text.strip())):
        raise malformed(RANGE_GRAMMAR)


def apply_chunk(sessions: Sessions, session: Session, rng: Range | None, chunk: FilePart) -> bool:
    """Check ``chunk`` against the video and keep it; True when the source is complete.

    The caller holds ``session.lock`` and restores ``session.info`` when this
    raises (a rejected chunk changes nothing).
    """
    info = session.info
    if info["mode"] is not None and (rng is None or rng.mode != info["mode"]):
        raise malformed(
            f"This video is being uploaded with the {info['mode']} form of "
            "Content-Range; every chunk must use it"
        )
    if rng is None:
        if info["ranges"] or info["part_sizes"]:
            raise malformed("This video already holds chunks: send the rest with Content-Range")
        rng = Range("bytes", 0, chunk.size - 1, chunk.size)  # the whole source at once
    else:
        info["mode"] = rng.mode
    if info["filename"] is None:
        info["filename"] = chunk.filename or "untitled"
    apply = _apply_bytes if rng.mode == "bytes" else _apply_part
    return apply(sessions, session, rng, chunk)


def chunk_target(token: str, rng: Range | None, videos: Callable[[], list[Session]]) -> Session | None:
    """The video an ``/upload`` chunk without ``videoId`` goes to; None for a first chunk.

    A byte chunk past the start needs ``videoId``. A ``part`` chunk N > 1 goes
    to the one unfinished part-form upload opened with ``token`` among
    ``videos()`` (api.video-python 1.4.7's chunks never carry ``videoId``).
    """
    if rng is not None and rng.mode == "bytes" and rng.first > 0:
        raise bad(
            "attribute-required",
            "videoId is required for every chunk after the "
            "first (send the videoId the first chunk returned).",
            "videoId",
        )
    if rng is not None and rng.mode == "part" and rng.first > 1:
        tag = token_tag(token)
        open_ = [
            s for s in videos() if s.state == "active" and s.info["token"] == tag and s.info["mode"] == "part"
        ]
        if len(open_) != 1:
            raise bad(
                "attribute-required",
                f"videoId is required: {len(open_)} unfinished part-form uploads are open for this token.",
                "videoId",
            )
        return open_[0]
    return None


def _check_total(info: dict[str, Any], total: int | None) -> None:
    if total is not None and info["total"] is not None and total != info["total"]:
        raise malformed(f"Content-Range total {total} differs from the total {info['total']} given before")
    if total is not None:
        info["total"] = total


def _apply_bytes(sessions: Sessions, session: Session, rng: Range, chunk: FilePart) -> bool:
    info = session.info
    _check_total(info, rng.total)
    held = info["ranges"][-1][1] + 1 if info["ranges"] else 0
    if rng.first < held:  # sent already (a lost 201, say): documented as an error
        raise bad(
            "video-content-range-by-bytes-range-overlap",
            'The range in the "Content-Range" header overlaps with a previous one '
            "you already sent for this video.",
            "Content-Range",
            f"bytes 0-{held - 1} are held; the next chunk starts at byte {held}",
        )
    if rng.first != held:
        raise malformed(
            f"This chunk starts at byte {rng.first}; {held} bytes are held, so "
            f"the next chunk must start at byte {held}"
        )
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
        raise bad(
            "video-content-range-by-part-part-already-sent",
            'The "part" value in the "Content-Range" header collides with a previous '
            "one you already sent for this video.",
            "Content-Range",
            f"parts {sorted(map(int, sizes))} are held",
        )
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
