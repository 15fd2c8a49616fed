"""One TOML table into one frozen dataclass: :func:`parse_options`.

The annotations and metadata keys it understands are listed in
:mod:`syncd._options`; each value is converted and checked by
:func:`_convert`, and every problem is collected, never just the first.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from syncd._options.fields import (
    REQUIRED,
    config_fields,
    default_of,
    field_meta,
    hints,
    is_path,
    is_str_tuple,
    unwrap_optional,
)
from syncd._options.values import (
    dotted,
    format_size,
    has_control,
    is_http_url,
    parse_size,
    path_kind,
    resolve_path,
    show,
    suggest,
    unknown,
)
from syncd.errors import Problem
from syncd.secrets import Secret, describe_ref, resolve

_INVALID: Any = object()


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
    specs = config_fields(cls)
    names = [f.name for f in specs]
    for key in table:
        if key not in names and key not in shared_keys:
            problems.append(Problem(dotted(prefix, key), unknown(key, [*names, *shared_keys])))
    types_ = hints(cls)
    values: dict[str, Any] = {}
    for f in specs:
        key = dotted(prefix, f.name)
        if f.name not in table:
            default = default_of(f)
            if not is_path(default) or f.metadata.get("default_doc"):
                if default is REQUIRED:
                    problems.append(Problem(key, "required key is missing"))
                continue
            raw: Any = str(default)  # a relative default is "next to the config file" too
        else:
            raw = table[f.name]
        value = _convert(types_[f.name], raw, field_meta(f), key, base_dir, problems, resolve_secrets)
        if value is not _INVALID:
            values[f.name] = value
    if _count_errors(problems) > errors_before:
        return None
    try:
        return cls(**values)
    except ValueError as exc:
        problems.append(Problem(prefix, str(exc)))
        return None


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
    hint, _optional = unwrap_optional(hint)
    secret = bool(meta.get("secret")) or hint is Secret
    shown = describe_ref(raw) if secret else show(raw)

    def bad(message: str) -> Any:
        problems.append(Problem(key, message))
        return _INVALID

    if hint is Secret:
        if not isinstance(raw, str):
            return bad("expected a string (a secret or env:/file:/credential: reference), got '***'")
        secret_value = resolve(
            raw, key=key, problems=problems, base_dir=base_dir, check_only=not resolve_secrets
        )
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
    if is_str_tuple(hint):
        if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
            return bad(f"expected an array of strings, got {shown}")
        if len(raw) < meta.get("min_items", 0):
            return bad(f"needs at least {meta['min_items']} item(s), got {shown}")
        items = [_check_text(x, meta, f"{key}[{i}]", show(x), problems) for i, x in enumerate(raw)]
        return _INVALID if _INVALID in items else tuple(items)
    if is_path(hint):
        if not isinstance(raw, str) or not raw:
            return bad(f"expected a non-empty path string, got {shown}")
        try:
            path = resolve_path(raw, base_dir)
        except ValueError as exc:
            return bad(f"cannot resolve {shown}: {exc}")
        kind = path_kind(path)
        if meta.get("file") and kind != "file":
            reason = {"missing": "does not exist", "unknown": "cannot be accessed"}
            return bad(f"{path} {reason.get(kind, 'is not a regular file')}")
        if meta.get("dir") and kind not in ("dir", "missing", "unknown"):
            return bad(f"{path} exists but is not a directory")
        return path
    raise TypeError(f"unsupported config annotation {hint!r} for {key}")


def _check_text(value: str, meta: Mapping[str, Any], key: str, shown: str, problems: list[Problem]) -> Any:
    choices: Sequence[str] | None = meta.get("choices")
    if choices is not None and value not in choices:
        listed = ", ".join(repr(c) for c in choices)
        problems.append(Problem(key, f"must be one of {listed}, got {shown}{suggest(value, choices)}"))
        return _INVALID
    if meta.get("nonempty") and not value.strip():
        problems.append(Problem(key, f"must not be empty, got {shown}"))
        return _INVALID
    if meta.get("no_control") and has_control(value):
        problems.append(Problem(key, f"must not contain control characters, got {shown}"))
        return _INVALID
    if meta.get("url") and not is_http_url(value):
        problems.append(
            Problem(
                key,
                f"must be an absolute URL starting with https:// or http:// and naming a host, got {shown}",
            )
        )
        return _INVALID
    return value


def _check_range(value: float, meta: Mapping[str, Any], key: str, shown: str, problems: list[Problem]) -> Any:
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
