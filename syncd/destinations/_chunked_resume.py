"""The resume state of a chunked upload: what is checkpointed, and when it can be trusted.

The state is ``{"v": 1, "kind", "session", "part_size", "size", "parts",
"ctime_ns"}`` (:class:`ResumeState`; session keys starting with ``_`` stay in
memory). ``ctime_ns`` is the file's inode change time when the parts were read:
a file rewritten in place since (same size, its mtime set back) has another,
since no program can set it, so its confirmed parts, which hold the old bytes,
are not trusted (:func:`read_from`). A state without it (written by an older
syncd) is trusted as before.
A service describes its session format (:class:`SessionFormat`: its
``kind``, its part rules and the fields its session must hold, as
:data:`Spec` s); :func:`usable` continues from a resume only when all of it
is consistent with the file at hand.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from syncd.destinations._chunked_parts import PartRules, part_count

RESUME_VERSION = 1

#: One entry of ``session_fields``: a type (``str``: non-empty; ``int``: >= 0, no bool;
#: ``bool``), or a tuple of types, literal values and ``None`` (the key may be absent or null).
Spec = type | tuple[Any, ...]


def _fits(value: Any, spec: Spec) -> bool:
    allowed = spec if isinstance(spec, tuple) else (spec,)
    if value is None:
        return None in allowed
    if isinstance(value, bool):
        return bool in allowed
    if any(value == a for a in allowed if a is not None and not isinstance(a, type)):
        return True
    if isinstance(value, int):
        return int in allowed and value >= 0
    return isinstance(value, str) and str in allowed and value != ""


def session_fits(fields: Mapping[str, Spec], session: dict[str, Any]) -> bool:
    """Whether ``session`` holds every field as ``fields`` describes it."""
    return all(_fits(session.get(key), spec) for key, spec in fields.items())


class SessionFormat(Protocol):
    """What a service says about its resume state (the first part of a ``ChunkedService``)."""

    kind: str  # the resume's "kind"; change it when the session format changes
    rules: PartRules
    # A service whose new uploads use one configured part size (Lilt) may also name the
    # wider rules a recorded session's part size must meet, as ``resume_rules``: a session
    # opened before the configured size changed goes on in the size it began with.

    @property
    def session_fields(self) -> Mapping[str, Spec]:
        """What a checkpointed session must hold: key -> :data:`Spec` (see :func:`session_fits`)."""
        ...


@dataclass
class ResumeState:
    """Where one upload stands: its session, part size, file size and confirmed parts."""

    kind: str
    session: dict[str, Any]
    part_size: int
    size: int
    parts: dict[str, str] = field(default_factory=dict)
    ctime_ns: int | None = None  # the file's when its parts were read (None: not known)

    def to_resume(self) -> dict[str, Any]:
        session = {k: v for k, v in self.session.items() if not k.startswith("_")}
        resume = {
            "v": RESUME_VERSION,
            "kind": self.kind,
            "session": session,
            "part_size": self.part_size,
            "size": self.size,
            "parts": dict(self.parts),
        }
        if self.ctime_ns is not None:
            resume["ctime_ns"] = self.ctime_ns
        return resume


def read_from(resume: dict[str, Any], ctime_ns: int) -> bool:
    """Whether the parts of ``resume`` were read from the file as it is now (its inode
    change time ``ctime_ns``); a state that does not say is taken as yes."""
    recorded = resume.get("ctime_ns")
    return recorded is None or recorded == ctime_ns


def is_resume_for(service: SessionFormat, resume: dict[str, Any] | None) -> bool:
    """Whether ``resume`` was written by the driver for ``service`` (any size)."""
    return (
        isinstance(resume, dict)
        and resume.get("v") == RESUME_VERSION
        and resume.get("kind") == service.kind
        and isinstance(resume.get("session"), dict)
        and session_fits(service.session_fields, resume["session"])
    )


def usable(
    service: SessionFormat, resume: dict[str, Any] | None, size: int, ctime_ns: int | None = None
) -> ResumeState | None:
    """The state to continue from, or None when ``resume`` cannot be trusted for this file
    (of ``size`` bytes and, when given, inode change time ``ctime_ns``)."""
    if resume is None or not is_resume_for(service, resume):
        return None
    if ctime_ns is not None and not read_from(resume, ctime_ns):
        return None
    part_size, parts = resume.get("part_size"), resume.get("parts")
    rules: PartRules = getattr(service, "resume_rules", None) or service.rules
    if resume.get("size") != size or type(part_size) is not int or part_size < 1:
        return None
    count = part_count(size, part_size, rules.empty_parts)
    if count > rules.max_parts:
        return None
    if count > 1 and (
        part_size < rules.min_size
        or part_size % rules.multiple
        or (rules.max_size is not None and part_size > rules.max_size)
    ):
        return None
    if not isinstance(parts, dict):
        return None
    for number, token in parts.items():
        if not (  # "1".."count" exactly: "01" is part 1 sent twice, "¹" is a digit int() refuses
            isinstance(number, str)
            and number.isascii()
            and number.isdigit()
            and number == str(int(number))
            and 1 <= int(number) <= count
            and isinstance(token, str)
            and token
        ):
            return None
    return ResumeState(service.kind, dict(resume["session"]), part_size, size, dict(parts), ctime_ns)


__all__ = [
    "RESUME_VERSION",
    "ResumeState",
    "SessionFormat",
    "Spec",
    "is_resume_for",
    "read_from",
    "session_fits",
    "usable",
]
