"""The documentation of config keys, from the same dataclasses that parse them.

:func:`field_docs` lists a class's keys with their type (constraints in
words), default and meaning; :func:`default_text` writes a default the way
``docs/configuration.md`` and the comments of ``syncd init`` show it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from syncd._options.fields import (
    REQUIRED,
    config_fields,
    default_of,
    hints,
    is_path,
    is_str_tuple,
    unwrap_optional,
)
from syncd._options.values import KiB, format_size
from syncd.secrets import Secret


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


def field_docs(cls: type) -> list[FieldDoc]:
    """The documented keys of ``cls`` in declaration order: (key, type, default, doc).

    ``type`` is human text with the constraints, e.g. ``"integer, 1 to 64"``.
    ``default`` is the default value, :data:`REQUIRED`, or a :class:`Derived`
    when it is computed at load time (``archive_dir``). Internal fields are left out.
    """
    types_ = hints(cls)
    out: list[FieldDoc] = []
    for f in config_fields(cls):
        default = Derived(f.metadata["default_doc"]) if "default_doc" in f.metadata else default_of(f)
        text = _type_text(types_[f.name], f.metadata)
        out.append(FieldDoc(f.name, text, default, str(f.metadata.get("doc", ""))))
    return out


def _type_text(hint: Any, meta: Mapping[str, Any]) -> str:
    inner, optional = unwrap_optional(hint)
    if inner is int and meta.get("unit") == "bytes":
        base = 'size (bytes, or "8 MiB")'
    elif is_str_tuple(inner):
        base = "array of strings"
    else:
        names = {str: "string", int: "integer", float: "number", bool: "boolean", Secret: "secret"}
        base = names.get(inner, "path" if is_path(inner) else str(inner))
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
    array = is_str_tuple(inner)
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
