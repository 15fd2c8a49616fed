"""Free names for a file in a folder: ``name``, then ``stem (1).ext``, ``stem (2).ext``...

What :mod:`syncd.moves` (archive targets, an uploaded file's name given back)
and :mod:`syncd.failed` (failed_dir targets) use to never replace a file.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

NAME_MAX = 255


def candidate_names(name: str) -> Iterator[str]:
    """``name``, then ``stem (1).ext``, ``stem (2).ext`` ... each within NAME_MAX bytes."""
    yield name
    stem, ext = _split(name)
    n = 1
    while True:
        yield _numbered(stem, ext, n)
        n += 1


def free_names(name: str, taken: Callable[[str], bool]) -> Iterator[str]:
    """The names of :func:`candidate_names` that ``taken`` says are free now, in order,
    the first found with lookups that grow with the logarithm of how many are taken.

    A producer that always writes ``export.csv`` fills the archive with
    ``export (N).csv``, N in the hundreds of thousands after a year of one a minute;
    one lookup per number was a second and a half per file by then. The search takes
    the numbers in use to be a run from 1, which they are unless files were deleted
    from the archive; a gap may then be filled instead of the next number after the
    run, which is harmless: any free name will do, and none is ever replaced (the
    caller links without clobbering, and takes the next name if it lost a race).
    """
    if len(os.fsencode(name)) <= NAME_MAX and not taken(name):  # a longer one cannot be made
        yield name
    stem, ext = _split(name)
    low, high = 0, 1  # low: taken (0 stands for the bare name); high: the next to look at
    while taken(_numbered(stem, ext, high)):
        low, high = high, high * 2
    while high - low > 1:  # the first free number after low, if those in use are a run
        middle = (low + high) // 2
        if taken(_numbered(stem, ext, middle)):
            low = middle
        else:
            high = middle
    n = high
    while True:
        candidate = _numbered(stem, ext, n)
        if not taken(candidate):
            yield candidate
        n += 1


def with_suffix(name: str, suffix: str) -> str:
    """``name + suffix`` within NAME_MAX bytes: ``name`` cut at its end if need be (never
    inside a character), so that ``suffix`` stays whole (a sidecar beside a file whose
    name is near the limit: ``<name>.meta.json``)."""
    return _cut(name, NAME_MAX - len(os.fsencode(suffix))) + suffix


def _split(name: str) -> tuple[str, str]:
    stem, ext = os.path.splitext(name)
    if stem == "" or len(os.fsencode(ext)) > 32:
        stem, ext = name, ""
    return stem, ext


def _numbered(stem: str, ext: str, n: int) -> str:
    """``stem (n).ext`` within NAME_MAX bytes, the stem cut (never inside a character)."""
    suffix = f" ({n}){ext}"
    return _cut(stem, NAME_MAX - len(os.fsencode(suffix))) + suffix


def _cut(text: str, room: int) -> str:
    """``text`` within ``room`` bytes, cut at its end (never inside a UTF-8 character)."""
    raw = os.fsencode(text)[:room]
    while True:  # do not cut a multi-byte character in half
        try:
            raw.decode("utf-8")
            break
        except UnicodeDecodeError as exc:
            if exc.start < len(raw) - 4:
                break  # not UTF-8 to begin with; bytes are fine
            raw = raw[:-1]
    return os.fsdecode(raw)
