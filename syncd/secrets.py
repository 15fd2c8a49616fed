"""Secret values from the config: ``env:NAME``, ``file:/path``, ``credential:NAME`` or literal.

(Placeholder: the resolver is written with syncd.config.)
"""

from __future__ import annotations


class Secret:
    """A resolved secret. Its repr and str never show the value."""

    __slots__ = ("_value", "source")

    def __init__(self, value: str, source: str = "literal") -> None:
        self._value = value
        self.source = source

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({self.source!r})"

    __str__ = __repr__
