"""``labels_from_path``: a pattern on a file's path, the folder names it captures as labels.

The pattern (see :mod:`syncd.metadata` and docs/configuration.md) is
relative to the folder, ``/``-separated; each part is one of

* ``{name}``: exactly one folder name, captured (a name is letters, digits
  and ``_``, not starting with a digit; each name at most once);
* ``*``: exactly one name, not captured;
* ``**``: any number of folder levels; at the end of the pattern, one or
  more (everything below);
* literal text, which may hold placeholders (``client-{client}``; two
  placeholders need text between them).

A value (a placeholder's, or a name ``*`` and ``**`` pass over) is one or
more characters without ``/`` or a control character (C0, DEL, C1).

What a pattern means is the regular expression :func:`compile_pattern`
builds from it (:attr:`PathPattern.regex`): the leftmost match, each ``**``
and each placeholder as long as the rest of the pattern allows. It is not
matched as one, though: backtracking over a producer's path took seconds
per file (a name of 250 dashes against ``{y}-{m}-{d}``: the cube of its
length; minutes with directories nested under ``**``), holding the
interpreter's lock while every other thread waited. :meth:`PathPattern.labels`
gives the same captures in time linear in the path (times the pattern's
parts): the parts are aligned with the path's components by a table (a part
never spans a ``/``), and a part's placeholders are placed within one
component by where the text after each may follow.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from functools import lru_cache

from syncd.destinations.base import wire_name

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_TOKEN = re.compile(r"\{([^{}]*)\}|[^{}]+|[{}]")
_VALUE = r"[^/\x00-\x1f\x7f-\x9f]+"  # one folder name without control characters (C1 too)
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")  # C0, DEL, C1: in no value (nor a label)

DEEP, ANY = "**", "*"


@dataclass(frozen=True)
class Part:
    """One ``/``-separated part: ``**``, ``*``, or literal text ``lits[0] {names[0]}
    lits[1] ... {names[-1]} lits[-1]`` (``len(lits) == len(names) + 1``)."""

    kind: str  # DEEP, ANY or "text"
    lits: tuple[str, ...] = ()
    names: tuple[str, ...] = ()


@dataclass(frozen=True)
class PathPattern:
    """A compiled ``labels_from_path`` pattern."""

    text: str
    names: tuple[str, ...]
    regex: re.Pattern[str]  # what the pattern means (the matcher below gives its captures)
    parts: tuple[Part, ...] = field(default=())

    def labels(self, relpath: str) -> tuple[str, ...] | None:
        """The values captured from ``relpath``, in pattern order; None when it does not match."""
        found = _match(self.parts, relpath.split("/"))
        if found is None:
            return None
        return tuple(wire_name(found[name]) for name in self.names)


def _valid(comp: str) -> bool:
    """Whether ``comp`` is a value: not empty, no control character."""
    return bool(comp) and CONTROL.search(comp) is None


def _match(parts: tuple[Part, ...], comps: list[str]) -> dict[str, str] | None:
    """The captures of ``parts`` against the components ``comps``, or None."""
    n_parts, n_comps = len(parts), len(comps)
    valid = [_valid(c) for c in comps]
    # valid_run[j]: how many components from j on are values, in a row
    valid_run = [0] * (n_comps + 1)
    for j in range(n_comps - 1, -1, -1):
        valid_run[j] = valid_run[j + 1] + 1 if valid[j] else 0
    texts: dict[tuple[int, int], dict[str, str] | None] = {}

    def text_at(i: int, j: int) -> dict[str, str] | None:
        if (i, j) not in texts:
            texts[i, j] = _text_part(parts[i], comps[j])
        return texts[i, j]

    # ok[i][j]: parts[i:] match comps[j:] exactly
    ok = [[False] * (n_comps + 1) for _ in range(n_parts + 1)]
    ok[n_parts][n_comps] = True
    for i in range(n_parts - 1, -1, -1):
        part, last = parts[i], i == n_parts - 1
        row, below = ok[i], ok[i + 1]
        if part.kind == DEEP and last:  # one or more components, all the rest
            for j in range(n_comps):
                row[j] = valid_run[j] == n_comps - j
            continue
        if part.kind == DEEP:  # zero or more components, then the rest of the pattern
            reach = False
            for j in range(n_comps, -1, -1):
                reach = below[j] or (j < n_comps and valid[j] and reach)
                row[j] = reach
            continue
        for j in range(n_comps):
            if below[j + 1]:
                row[j] = valid[j] if part.kind == ANY else text_at(i, j) is not None
    if not ok[0][0]:
        return None
    found: dict[str, str] = {}
    j = 0
    for i, part in enumerate(parts):
        if part.kind == DEEP:
            if i == n_parts - 1:
                break
            k = valid_run[j]  # as many as it may take, then fewer, as the regex tries them
            while not ok[i + 1][j + k]:
                k -= 1
            j += k
            continue
        if part.kind != ANY:
            captured = text_at(i, j)
            assert captured is not None
            found.update(captured)
        j += 1
    return found


def _text_part(part: Part, comp: str) -> dict[str, str] | None:
    """The captures of a literal-text part in one component, or None.

    Each placeholder takes the longest value after which the rest can follow (as the
    regex's greedy, backtracking match does); whether it can is known for every place
    each text between placeholders is found, from the last placeholder back.
    """
    lits, names = part.lits, part.names
    if not names:
        return {} if comp == lits[0] else None
    head, tail = lits[0], lits[-1]
    start, end = len(head), len(comp) - len(tail)
    if end - start < len(names) or not comp.startswith(head) or not comp.endswith(tail):
        return None
    # clean_to[p]: the end of the run of characters without a control character from p
    clean_to = [0] * (end + 1)
    clean_to[end] = end
    for p in range(end - 1, -1, -1):
        clean_to[p] = p if CONTROL.match(comp, p) else clean_to[p + 1]
    last = len(names) - 1

    def fits_last(p: int) -> bool:  # the last placeholder takes comp[p:end]
        return p < end and clean_to[p] == end

    # ends[k]: where placeholder k may end (lits[k + 1] found there, and the rest can follow)
    ends: list[list[int]] = [[] for _ in names]
    for k in range(last - 1, -1, -1):
        lit = lits[k + 1]
        at = comp.find(lit, start + 1)
        while at != -1 and at + len(lit) <= end:
            after = at + len(lit)
            if fits_last(after) if k + 1 == last else _can(ends[k + 1], clean_to, after):
                ends[k].append(at)
            at = comp.find(lit, at + 1)
    found: dict[str, str] = {}
    p = start
    for k in range(last):
        options = ends[k]
        top = bisect.bisect_right(options, clean_to[p]) - 1
        if top < 0 or options[top] <= p:
            return None
        found[names[k]] = comp[p : options[top]]
        p = options[top] + len(lits[k + 1])
    if not fits_last(p):
        return None
    found[names[last]] = comp[p:end]
    return found


def _can(options: list[int], clean_to: list[int], p: int) -> bool:
    """Whether a placeholder starting at ``p`` can end at one of ``options`` (sorted):
    after ``p``, with no control character before it."""
    i = bisect.bisect_right(options, clean_to[p]) - 1
    return i >= 0 and options[i] > p


@lru_cache(maxsize=64)
def compile_pattern(text: str) -> PathPattern:
    """Compile a ``labels_from_path`` pattern; ValueError says what is wrong with it."""
    if not text:
        raise ValueError("the pattern is empty")
    if text.startswith("/"):
        raise ValueError("the pattern is relative to the folder; remove the leading '/'")
    raw = text.split("/")
    if any(p == "" for p in raw):
        raise ValueError("empty part ('//' or a trailing '/')")
    names: list[str] = []
    parts: list[Part] = []
    regex = ""
    for i, part in enumerate(raw):
        last = i == len(raw) - 1
        if part == DEEP:
            # "a/**/b" matches a/b too; a trailing "**" needs at least one more name
            regex += f"{_VALUE}(?:/{_VALUE})*" if last else f"(?:{_VALUE}/)*"
            parts.append(Part(DEEP))
            continue
        if part in (".", ".."):
            raise ValueError(f"{part!r} is not allowed in a pattern")
        if part == ANY:
            regex += _VALUE
            parts.append(Part(ANY))
        else:
            before = len(names)
            piece, lits = _segment(part, names, last)
            regex += piece
            parts.append(Part("text", tuple(lits), tuple(names[before:])))
        if not last:
            regex += "/"
    if not names:
        raise ValueError(
            "it captures nothing; write {name} for each folder level to turn "
            'into a label, e.g. "{client}/{project}/**"'
        )
    return PathPattern(text, tuple(names), re.compile(regex), tuple(parts))


def _segment(part: str, names: list[str], last: bool) -> tuple[str, list[str]]:
    """The regex of one part that is literal text with ``{name}`` placeholders, and its
    texts around the placeholders (one more than the placeholders, "" where none)."""
    out = ""
    lits = [""]
    previous_was_name = False
    for token in _TOKEN.finditer(part):
        name, text = token[1], token[0]
        if name is not None:
            if not _NAME.match(name):
                raise ValueError(
                    f"{text}: a placeholder name is letters, digits and _, not starting with a digit"
                )
            if name in names:
                raise ValueError(f"{text} appears twice; each name may be used once")
            if previous_was_name:
                raise ValueError(f"two placeholders need text between them ({part!r})")
            if last:
                raise ValueError(
                    "the last part matches the file name and cannot capture; end "
                    "the pattern with /** (anything below) or /* (files directly "
                    "inside)"
                )
            names.append(name)
            out += f"(?P<{name}>{_VALUE})"
            lits.append("")
            previous_was_name = True
            continue
        if text in ("{", "}"):
            raise ValueError(f"unbalanced {text!r} in {part!r}; placeholders are written {{name}}")
        bad = next((c for c in text if c in "*?[]\\"), None)
        if bad is not None:
            raise ValueError(
                f"{bad!r} inside {part!r} is not supported: use * or ** as a whole "
                "part, and {name} to capture"
            )
        out += re.escape(text)
        lits[-1] += text
        previous_was_name = False
    return out, lits


def path_labels(pattern: str | None, relpath: str) -> tuple[str, ...]:
    """The labels ``pattern`` captures from ``relpath`` (empty when it does not match)."""
    if not pattern:
        return ()
    return compile_pattern(pattern).labels(relpath) or ()
