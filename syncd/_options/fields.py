"""What a config dataclass's fields declare: type hints, defaults and metadata.

Shared by table parsing (:mod:`syncd._options.parse`) and the key
documentation (:mod:`syncd._options.docs`), so both read a class the same way.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from functools import cache
from pathlib import PurePath
from typing import Any


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()
"""The ``default`` of a key without one (:func:`default_of`, ``field_docs``)."""


@cache
def hints(cls: type) -> dict[str, Any]:
    """The resolved annotations of ``cls`` (names must be importable at run time)."""
    return typing.get_type_hints(cls)


def unwrap_optional(hint: Any) -> tuple[Any, bool]:
    """``(X, True)`` for ``X | None``, ``(hint, False)`` otherwise; TypeError for other unions."""
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"unsupported config annotation {hint!r}")
        return args[0], True
    return hint, False


def is_path(obj: Any) -> bool:
    """A Path class or instance (pyfakefs swaps pathlib.Path, so not by identity)."""
    cls = obj if isinstance(obj, type) else type(obj)
    return issubclass(cls, PurePath)


def is_str_tuple(hint: Any) -> bool:
    """Whether ``hint`` is ``tuple[str, ...]``."""
    return typing.get_origin(hint) is tuple and typing.get_args(hint) == (str, Ellipsis)


def config_fields(cls: type) -> list[dataclasses.Field[Any]]:
    """The fields of ``cls`` that are config keys (not ``internal``), in declaration order."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    return [f for f in dataclasses.fields(cls) if f.init and not f.metadata.get("internal")]


def default_of(f: dataclasses.Field[Any]) -> Any:
    """The field's default value, or :data:`REQUIRED`."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return REQUIRED


def field_meta(f: dataclasses.Field[Any]) -> Mapping[str, Any]:
    """A field's metadata; every ``base_url`` is a ``url`` (see :mod:`syncd._options`)."""
    if f.name == "base_url" and "url" not in f.metadata:
        return {**f.metadata, "url": True}
    return f.metadata
