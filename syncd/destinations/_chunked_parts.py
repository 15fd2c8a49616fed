"""The parts of a chunked upload: the service's rules, the plan, and reading one part.

:class:`PartRules` describes what a service accepts; :func:`choose_part_size`
fits the preferred part size to them, :func:`plan_parts` cuts a file into
:class:`Part` s, and a part reads its bytes through the
:class:`~syncd.destinations.base.Source` (hashed, change-checked) as a
stream, a seekable file or bytes in memory. The loop that sends them is
:mod:`._chunked`.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from syncd.destinations.base import Source
from syncd.errors import PermanentError

S3_MAX_PARTS = 10_000


@dataclass(frozen=True)
class PartRules:
    """A service's parts: the size it asks for and its limits. Sizes in bytes."""

    part_size: int | None = None  # the size to send; None: the whole file (or what open() dictates)
    min_size: int = 1  # every part but the last is at least this big
    max_size: int | None = None  # no part may be bigger
    multiple: int = 1  # part sizes must be a multiple of this
    max_parts: int = S3_MAX_PARTS
    empty_parts: int = 1  # a 0-byte file is sent as one empty part (1) or none (0)

    def __post_init__(self) -> None:
        if self.min_size < 1 or self.multiple < 1 or self.max_parts < 1:
            raise ValueError("min_size, multiple and max_parts must be >= 1")
        if self.empty_parts not in (0, 1):
            raise ValueError("empty_parts must be 0 or 1")


@dataclass(frozen=True)
class Part:
    """Part ``number`` (1-based) of ``count``: bytes ``[offset, offset + size)``."""

    number: int
    offset: int
    size: int
    count: int
    file_size: int
    source: Source = field(repr=False, compare=False)

    @property
    def last(self) -> bool:
        return self.number == self.count

    @property
    def end(self) -> int:
        """The offset just past this part (exclusive)."""
        return self.offset + self.size

    def stream(self) -> Iterator[bytes]:
        """A fresh iterator over the part's bytes (hashed, change-checked); one per attempt."""
        return self.source.iter_range(self.offset, self.size)

    def read(self) -> bytes:
        """The part's bytes in memory (for protocols that cannot stream a part)."""
        return self.source.read(self.offset, self.size)

    def file(self) -> io.RawIOBase:
        """The part as a seekable binary file: the body of a form field (httpx ``files=``)."""
        return _PartFile(self)


class _PartFile(io.RawIOBase):
    """One part as a seekable binary file, for httpx's multipart encoder.

    httpx learns the length by seeking, then reads 64 KiB at a time: the part
    streams from the :class:`Source` (hashed, change-checked), never whole.
    """

    def __init__(self, part: Part) -> None:
        super().__init__()
        self._part = part
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._part.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        n = min(len(buffer), self._part.size - self._pos)
        if n <= 0:
            return 0
        data = self._part.source.read(self._part.offset + self._pos, n)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)


# -- planning -----------------------------------------------------------------


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def part_count(size: int, part_size: int, empty_parts: int = 1) -> int:
    """How many parts a file of ``size`` bytes has with parts of ``part_size``."""
    if size == 0:
        return empty_parts
    return -(-size // part_size)


def choose_part_size(size: int, preferred: int, rules: PartRules) -> int:
    """The part size to use: ``preferred`` adjusted to ``rules`` ("Planning" in :mod:`._chunked`).

    Raises PermanentError when the file cannot be sent within ``max_parts``
    parts of at most ``max_size`` bytes.
    """
    part_size = _round_up(max(preferred, rules.min_size, 1), rules.multiple)
    if rules.max_size is not None and part_size > rules.max_size:
        part_size = max(rules.max_size // rules.multiple * rules.multiple, rules.multiple)
    if part_count(size, part_size) > rules.max_parts:
        part_size = _round_up(-(-size // rules.max_parts), rules.multiple)
        if rules.max_size is not None and part_size > rules.max_size:
            raise PermanentError(
                f"the file is too large: {size} bytes need more than {rules.max_parts} parts "
                f"of at most {rules.max_size} bytes"
            )
    return part_size


def plan_parts(source: Source, part_size: int, rules: PartRules) -> list[Part]:
    """Every part of ``source``, in order."""
    size = source.size
    count = part_count(size, part_size, rules.empty_parts)
    return [
        Part(
            number=n,
            offset=(n - 1) * part_size,
            size=min(part_size, size - (n - 1) * part_size),
            count=count,
            file_size=size,
            source=source,
        )
        for n in range(1, count + 1)
    ]


__all__ = ["S3_MAX_PARTS", "Part", "PartRules", "choose_part_size", "part_count", "plan_parts"]
