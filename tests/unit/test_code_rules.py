"""Rules for the product code that no linter checks for us.

* Every ``# type: ignore`` in the product packages names its error codes and says
  why: ``# type: ignore[attr-defined]  # <why>``. A bare or unexplained one hides
  whatever else goes wrong on that line, and nobody can tell whether it is still needed.

The files are read with :mod:`tokenize`, so only comments count (not strings).
"""

from __future__ import annotations

import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("syncd", "syncd_emulator")
IGNORE = re.compile(r"type:\s*ignore\b(?P<codes>\[[^\]]*\])?(?P<rest>.*)")


def unexplained_ignores(source: str) -> list[tuple[int, str]]:
    """(line, comment) of every ``type: ignore`` comment without codes or without a reason."""
    found = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type != tokenize.COMMENT:
            continue
        m = IGNORE.search(tok.string)
        if m is None:
            continue
        reason = re.fullmatch(r"\s*#\s*\S.*", m["rest"])
        if not m["codes"] or m["codes"] == "[]" or reason is None:
            found.append((tok.start[0], tok.string))
    return found


@pytest.mark.parametrize(
    "line, ok",
    [
        ("x = f()  # type: ignore[attr-defined]  # stubs lack it\n", True),
        ("import m  # type: ignore[import-untyped]  # no py.typed\n", True),
        ("x = f()  # type: ignore[attr-defined]\n", False),
        ("x = f()  # type: ignore[attr-defined]  #\n", False),
        ("x = f()  # type: ignore  # no codes\n", False),
        ("x = f()  # type: ignore\n", False),
        ("x = f()  # type:ignore[misc]\n", False),
        ("x = f()  # noqa: E501  # type: ignore[misc]\n", False),
        ('x = "# type: ignore"\n', True),  # a string, not a comment
    ],
)
def test_the_rule_itself(line: str, ok: bool) -> None:
    assert (unexplained_ignores(line) == []) is ok


def test_every_type_ignore_in_the_product_says_why() -> None:
    files = [p for pkg in PACKAGES if (ROOT / pkg).is_dir() for p in sorted((ROOT / pkg).rglob("*.py"))]
    assert files, "no product sources found"
    bad = [
        f"{path.relative_to(ROOT)}:{line}: {comment}"
        for path in files
        for line, comment in unexplained_ignores(path.read_text(encoding="utf-8"))
    ]
    assert not bad, "write `# type: ignore[code]  # why` (or type it properly):\n" + "\n".join(bad)
