"""Build frozen dataclasses from TOML tables: the machinery behind every config table.

:func:`parse_options` turns one TOML table into an instance of a frozen
dataclass, driven by the dataclass's type annotations and field metadata.
``[daemon]``, each ``[[folders]]`` entry and every destination type's
``Options`` class go through it, so all of them report problems the same way.

Supported annotations (``from __future__ import annotations`` is fine, they
are resolved with :func:`typing.get_type_hints`, so the names they use must
be imported at run time, not only under ``TYPE_CHECKING``):

=====================  ====================================================
``str``                a TOML string
``int``                an integer (``true`` is not an integer, ``4.0`` is not)
``float``              a finite number; integers are accepted
``bool``               ``true`` / ``false``
``tuple[str, ...]``    an array of strings (a single string is an error)
``Path``               a string; ``~`` expanded, relative paths joined to
                       ``base_dir``, then resolved (it need not exist)
``Secret``             a secret reference, see :mod:`syncd.secrets`
``X | None``           ``X``, or the key left out (TOML has no null)
=====================  ====================================================

Field metadata keys (all optional):

``doc``          one-line meaning, used by the docs and ``syncd init``
``secret``       never show the value in a message (implied by ``Secret``)
``unit``         ``"bytes"``: an ``int`` field that also takes ``"8 MiB"``
``min``/``max``  inclusive bounds; ``gt``: exclusive lower bound
``choices``      tuple of allowed strings
``nonempty``     strings (or every array item) must not be empty
``no_control``   strings (or every array item) must not hold control characters
``url``          a string that must be an absolute ``http://`` or ``https://``
                 URL with a host; implied for every field named ``base_url``
                 (each destination type has one)
``min_items``    arrays need at least this many items
``file``         a ``Path`` that must be an existing regular file
``dir``          a ``Path`` that, when it exists, must be a directory
``default_doc``  text for a default computed elsewhere (``field_docs`` shows it)
``internal``     not a config key: never read from the table, not documented

A field without a default is required. Path defaults that are relative are
resolved against ``base_dir`` like configured values. An ``Options`` class
may check rules between its fields in ``__post_init__`` by raising
``ValueError``; the message becomes a problem keyed by the table's prefix.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import stat
import types
import typing
import unicodedata
import urllib.parse
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from functools import cache
from pathlib import Path, PurePath
from typing import Any, NamedTuple

from syncd.errors import Problem
from syncd.secrets import Secret, describe_ref, resolve

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
_SIZE_UNITS: dict[str, int] = {
    "": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
    "kib": KiB, "mib": MiB, "gib": GiB, "tib": 1024 * GiB,
}
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*\Z")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+\Z")
_INVALID: Any = object()


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()
"""The ``default`` that :func:`field_docs` reports for a required key."""


@dataclasses.dataclass(frozen=True)
class Derived:
    """The ``default`` :func:`field_docs` reports when it is computed at load time."""

    text: str

    def __str__(self) -> str:
        return self.text


class FieldDoc(NamedTuple):
    """One config key: ``(key, type text, default, doc)``."""

    key: str
    type: str
    default: Any  # a value, REQUIRED, or a Derived
    doc: str


# -- small helpers shared with syncd.config ------------------------------------------------


def dotted(prefix: str, key: str) -> str:
    """``prefix.key``, quoting ``key`` the TOML way when it is not a bare key."""
    part = key if _BARE_KEY.match(key) else json.dumps(key)
    return f"{prefix}.{part}" if prefix else part


def suggest(word: str, candidates: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest candidate, or ``""``."""
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown(word: str, candidates: Sequence[str], what: str = "key") -> str:
    """The message for an unknown key: a suggestion, or the list of valid ones."""
    hint = suggest(word, candidates)
    if hint:
        return f"unknown {what}{hint}"
    return f"unknown {what} (valid: {', '.join(candidates) or 'none'})"


def show(value: object) -> str:
    """A config value as it may appear in a message (TOML-ish, truncated)."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, dict):
        text = "a table"
    elif isinstance(value, str | int | float | list):
        text = repr(value)
    elif hasattr(value, "isoformat"):
        text = f"a date/time ({value.isoformat()})"
    else:
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def parse_size(text: str) -> int:
    """Bytes in ``"8 MiB"``, ``"5MB"``, ``"512 KiB"``, ``"100"``; ValueError otherwise.

    ``KB``/``MB``/``GB``/``TB`` are powers of 1000, ``KiB``/``MiB``/``GiB``/``TiB``
    powers of 1024; unit names are case-insensitive; the result must be whole bytes.
    """
    match = _SIZE_RE.match(text)
    if not match:
        raise ValueError('expected a size like 8388608, "8 MiB", "5MB" or "512 KiB"')
    number, unit = match.groups()
    factor = _SIZE_UNITS.get(unit.lower())
    if factor is None:
        raise ValueError(f"unknown unit {unit!r} (valid: B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)")
    try:
        total = Decimal(number) * factor
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only decimals
        raise ValueError("not a number") from exc
    if total != total.to_integral_value():
        raise ValueError("is not a whole number of bytes")
    return int(total)


def format_size(n: int) -> str:
    """``8388608`` -> ``"8 MiB"``; sizes that are not whole KiB/MiB/GiB stay in bytes."""
    for name, factor in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n and n % factor == 0:
            return f"{n // factor} {name}"
    return f"{n} bytes"


def resolve_path(raw: str, base_dir: Path) -> Path:
    """``raw`` with ``~`` expanded, joined to ``base_dir`` when relative, resolved.

    The path need not exist. Raises ValueError (with a reason) when it cannot
    be resolved: an embedded NUL, an unknown ``~user``, a symlink loop.
    """
    if "\0" in raw:
        raise ValueError("contains a NUL character")
    try:
        path = Path(raw).expanduser()
        if not path.is_absolute():
            path = base_dir / path
        return path.resolve()
    except (OSError, RuntimeError) as exc:
        raise ValueError(str(exc)) from exc


def _kind(path: Path) -> str:
    """One of file, dir, other, missing, or unknown (when it cannot be looked at)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return "missing"
    except OSError:
        return "unknown"
    if stat.S_ISREG(st.st_mode):
        return "file"
    return "dir" if stat.S_ISDIR(st.st_mode) else "other"


def _has_control(text: str) -> bool:
    return any(unicodedata.category(ch) == "Cc" for ch in text)


# -- hints -----------------------------------------------------------------------------------


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(hint: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"unsupported config annotation {hint!r}")
        return args[0], True
    return hint, False


def _is_path(obj: Any) -> bool:
    """A Path class or instance (pyfakefs swaps pathlib.Path, so not by identity)."""
    cls = obj if isinstance(obj, type) else type(obj)
    return issubclass(cls, PurePath)


def _is_str_tuple(hint: Any) -> bool:
    return typing.get_origin(hint) is tuple and typing.get_args(hint) == (str, Ellipsis)


def _config_fields(cls: type) -> list[dataclasses.Field[Any]]:
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    return [f for f in dataclasses.fields(cls) if f.init and not f.metadata.get("internal")]


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return REQUIRED


# -- parsing ---------------------------------------------------------------------------------


def parse_options(
    cls: type,
    table: Mapping[str, Any],
    *,
    prefix: str,
    base_dir: Path,
    problems: list[Problem],
    resolve_secrets: bool = True,
    shared_keys: Sequence[str] = (),
) -> Any | None:
    """An instance of the frozen dataclass ``cls`` built from ``table``, or None.

    Every problem found (unknown keys with a did-you-mean, missing required
    keys, wrong types, out-of-range values, unresolvable secrets) is appended
    to ``problems`` keyed by ``prefix.key``; the function never stops at the
    first one. It returns None exactly when it added an error (warnings, such
    as a group-readable secret file, do not count). Secret values never
    appear in a message. ``resolve_secrets=False`` checks secret references
    for syntax only (see :func:`syncd.secrets.resolve`). ``shared_keys`` are
    keys of the same table that another class reads (the keys every
    destination type takes): not unknown here, and offered as suggestions.
    """
    errors_before = _count_errors(problems)
    if not isinstance(table, Mapping):
        problems.append(Problem(prefix, f"expected a table, got {show(table)}"))
        return None
    specs = _config_fields(cls)
    names = [f.name for f in specs]
    for key in table:
        if key not in names and key not in shared_keys:
            problems.append(Problem(dotted(prefix, key), unknown(key, [*names, *shared_keys])))
    hints = _hints(cls)
    values: dict[str, Any] = {}
    for f in specs:
        key = dotted(prefix, f.name)
        if f.name not in table:
            default = _default(f)
            if not _is_path(default) or f.metadata.get("default_doc"):
                if default is REQUIRED:
                    problems.append(Problem(key, "required key is missing"))
                continue
            raw: Any = str(default)  # a relative default is "next to the config file" too
        else:
            raw = table[f.name]
        value = _convert(hints[f.name], raw, _field_meta(f), key, base_dir, problems,
                         resolve_secrets)
        if value is not _INVALID:
            values[f.name] = value
    if _count_errors(problems) > errors_before:
        return None
    try:
        return cls(**values)
    except ValueError as exc:
        problems.append(Problem(prefix, str(exc)))
        return None


def _field_meta(f: dataclasses.Field[Any]) -> Mapping[str, Any]:
    """A field's metadata; every ``base_url`` is a ``url`` (see the module docstring)."""
    if f.name == "base_url" and "url" not in f.metadata:
        return {**f.metadata, "url": True}
    return f.metadata


def is_http_url(text: str) -> bool:
    """Whether ``text`` is an absolute http(s) URL with a host (and a valid port, if any)."""
    if not text or text != text.strip() or _has_control(text) or " " in text:
        return False
    try:
        parts = urllib.parse.urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return False
    return text.startswith(("http://", "https://")) and bool(parts.hostname)


def _count_errors(problems: list[Problem]) -> int:
    return sum(1 for p in problems if p.severity == "error")


def _convert(
    hint: Any,
    raw: Any,
    meta: Mapping[str, Any],
    key: str,
    base_dir: Path,
    problems: list[Problem],
    resolve_secrets: bool,
) -> Any:
    """Convert and check one value; append a problem and return _INVALID when it is bad."""
    hint, _optional = _unwrap_optional(hint)
    secret = bool(meta.get("secret")) or hint is Secret
    shown = describe_ref(raw) if secret else show(raw)

    def bad(message: str) -> Any:
        problems.append(Problem(key, message))
        return _INVALID

    if hint is Secret:
        if not isinstance(raw, str):
            return bad(
                "expected a string (a secret or env:/file:/credential: reference), got '***'"
            )
        secret_value = resolve(raw, key=key, problems=problems, base_dir=base_dir,
                               check_only=not resolve_secrets)
        return _INVALID if secret_value is None else secret_value
    if hint is bool:
        if not isinstance(raw, bool):
            return bad(f"expected true or false, got {shown}")
        return raw
    if hint is int:
        if meta.get("unit") == "bytes" and isinstance(raw, str):
            try:
                raw = parse_size(raw)
            except ValueError as exc:
                return bad(f"{exc}, got {shown}")
            shown = f"{shown} (= {raw} bytes)"
        elif isinstance(raw, bool) or not isinstance(raw, int):
            what = 'a size in bytes or a string like "8 MiB"' if meta.get("unit") else "an integer"
            return bad(f"expected {what}, got {shown}")
        return _check_range(raw, meta, key, shown, problems)
    if hint is float:
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            return bad(f"expected a number, got {shown}")
        if not math.isfinite(raw):
            return bad(f"must be a finite number, got {shown}")
        return _check_range(float(raw), meta, key, shown, problems)
    if hint is str:
        if not isinstance(raw, str):
            return bad(f"expected a string, got {shown}")
        return _check_text(raw, meta, key, shown, problems)
    if _is_str_tuple(hint):
        if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
            return bad(f"expected an array of strings, got {shown}")
        if len(raw) < meta.get("min_items", 0):
            return bad(f"needs at least {meta['min_items']} item(s), got {shown}")
        items = [_check_text(x, meta, f"{key}[{i}]", show(x), problems) for i, x in enumerate(raw)]
        return _INVALID if _INVALID in items else tuple(items)
    if _is_path(hint):
        if not isinstance(raw, str) or not raw:
            return bad(f"expected a non-empty path string, got {shown}")
        try:
            path = resolve_path(raw, base_dir)
        except ValueError as exc:
            return bad(f"cannot resolve {shown}: {exc}")
        kind = _kind(path)
        if meta.get("file") and kind != "file":
            reason = {"missing": "does not exist", "unknown": "cannot be accessed"}
            return bad(f"{path} {reason.get(kind, 'is not a regular file')}")
        if meta.get("dir") and kind not in ("dir", "missing", "unknown"):
            return bad(f"{path} exists but is not a directory")
        return path
    raise TypeError(f"unsupported config annotation {hint!r} for {key}")


def _check_text(
    value: str, meta: Mapping[str, Any], key: str, shown: str, problems: list[Problem]
) -> Any:
    choices: Sequence[str] | None = meta.get("choices")
    if choices is not None and value not in choices:
        listed = ", ".join(repr(c) for c in choices)
        problems.append(
            Problem(key, f"must be one of {listed}, got {shown}{suggest(value, choices)}")
        )
        return _INVALID
    if meta.get("nonempty") and not value.strip():
        problems.append(Problem(key, f"must not be empty, got {shown}"))
        return _INVALID
    if meta.get("no_control") and _has_control(value):
        problems.append(Problem(key, f"must not contain control characters, got {shown}"))
        return _INVALID
    if meta.get("url") and not is_http_url(value):
        problems.append(Problem(key, "must be an absolute URL starting with https:// or "
                                     f"http:// and naming a host, got {shown}"))
        return _INVALID
    return value


def _check_range(
    value: float, meta: Mapping[str, Any], key: str, shown: str, problems: list[Problem]
) -> Any:
    fmt = format_size if meta.get("unit") == "bytes" else repr
    for name, ok, op in (
        ("min", value >= meta.get("min", value), ">="),
        ("gt", value > meta.get("gt", value - 1), ">"),
        ("max", value <= meta.get("max", value), "<="),
    ):
        if name in meta and not ok:
            problems.append(Problem(key, f"must be {op} {fmt(meta[name])}, got {shown}"))
            return _INVALID
    return value


# -- documentation ---------------------------------------------------------------------------


def field_docs(cls: type) -> list[FieldDoc]:
    """The documented keys of ``cls`` in declaration order: (key, type, default, doc).

    ``type`` is human text with the constraints, e.g. ``"integer, 1 to 64"``.
    ``default`` is the default value, :data:`REQUIRED`, or a :class:`Derived`
    when it is computed at load time (``archive_dir``). Internal fields are left out.
    """
    hints = _hints(cls)
    out: list[FieldDoc] = []
    for f in _config_fields(cls):
        default = Derived(f.metadata["default_doc"]) if "default_doc" in f.metadata else _default(f)
        text = _type_text(hints[f.name], f.metadata)
        out.append(FieldDoc(f.name, text, default, str(f.metadata.get("doc", ""))))
    return out


def _type_text(hint: Any, meta: Mapping[str, Any]) -> str:
    inner, optional = _unwrap_optional(hint)
    if inner is int and meta.get("unit") == "bytes":
        base = 'size (bytes, or "8 MiB")'
    elif _is_str_tuple(inner):
        base = "array of strings"
    else:
        names = {str: "string", int: "integer", float: "number", bool: "boolean", Secret: "secret"}
        base = names.get(inner, "path" if _is_path(inner) else str(inner))
    fmt = format_size if meta.get("unit") == "bytes" else repr
    parts = [base]
    if "min" in meta and "max" in meta:
        parts.append(f"{fmt(meta['min'])} to {fmt(meta['max'])}")
    elif "min" in meta:
        parts.append(f">= {fmt(meta['min'])}")
    elif "max" in meta:
        parts.append(f"<= {fmt(meta['max'])}")
    if "gt" in meta:
        parts.append(f"> {fmt(meta['gt'])}")
    if "choices" in meta:
        parts.append("one of " + " / ".join(f'"{c}"' for c in meta["choices"]))
    array = _is_str_tuple(inner)
    if meta.get("min_items"):
        n = meta["min_items"]
        parts.append(f"at least {n} item" + ("s" if n > 1 else ""))
    if meta.get("nonempty"):
        parts.append("no empty items" if array else "non-empty")
    if meta.get("file"):
        parts.append("must exist")
    if optional:
        parts.append("optional")
    return ", ".join(parts)


def default_text(default: Any, *, type_text: str = "") -> str:
    """A default as TOML-ish text for docs and comments: ``4``, ``"info"``, ``["*"]``."""
    if default is REQUIRED:
        return "(required)"
    if isinstance(default, Derived):
        return default.text
    if default is None:
        return "(unset)"
    if isinstance(default, bool):
        return "true" if default else "false"
    if isinstance(default, int) and type_text.startswith("size") and default % KiB == 0 and default:
        return json.dumps(format_size(default))
    if isinstance(default, str | Path):
        return json.dumps(str(default))
    if isinstance(default, tuple | list):
        return "[" + ", ".join(json.dumps(str(x)) for x in default) + "]"
    return repr(default)
