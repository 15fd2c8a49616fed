"""docs/guarantees.md stays true to the test suite.

Every failure scenario F1-F30 has a row in the table with at least one
``tests/<file>.py::<test>`` reference, and every such reference anywhere in
the page names a test that exists. Test names are collected by parsing the
test files with :mod:`ast` (nothing is imported or run), so a renamed or
deleted test fails here instead of leaving the page pointing at nothing.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "guarantees.md"
SCENARIOS = range(1, 31)
REF = re.compile(r"\b(tests/[\w/.-]+?\.py)::(\w+(?:::\w+)?)(?:\[[^\]\s]*\])?")
ROW = re.compile(r"^\|\s*F(\d+)\s*\|")


@cache
def defined_tests(relpath: str) -> frozenset[str]:
    """``test_x`` for module-level tests, ``TestClass::test_x`` for methods."""
    path = ROOT / relpath
    if not path.is_file():
        return frozenset()
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=relpath)
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item.name.startswith("test"):
                    names.add(f"{node.name}::{item.name}")
    return frozenset(names)


def doc_text() -> str:
    assert DOC.is_file(), "docs/guarantees.md is missing"
    return DOC.read_text(encoding="utf-8")


def scenario_rows() -> dict[int, list[str]]:
    rows: dict[int, list[str]] = {}
    for line in doc_text().splitlines():
        m = ROW.match(line)
        if m:
            rows.setdefault(int(m.group(1)), []).append(line)
    return rows


def missing(refs: list[tuple[str, str]]) -> list[str]:
    return [f"{path}::{name}" for path, name in refs if name not in defined_tests(path)]


@pytest.mark.parametrize("n", SCENARIOS, ids=[f"F{n}" for n in SCENARIOS])
def test_every_scenario_has_a_row_naming_existing_tests(n: int) -> None:
    rows = scenario_rows().get(n)
    assert rows, f"F{n} has no row in the scenario table of docs/guarantees.md"
    refs = [ref for row in rows for ref in REF.findall(row)]
    assert refs, f"F{n}: its row names no test (tests/<file>.py::<test_name>)"
    gone = missing(refs)
    assert not gone, f"F{n}: the row names tests that do not exist: {gone}"


def test_every_test_reference_in_the_page_exists() -> None:
    refs = REF.findall(doc_text())
    assert len(refs) >= 40
    gone = missing(refs)
    assert not gone, f"docs/guarantees.md names tests that do not exist: {gone}"


def test_no_scenario_outside_f1_to_f30() -> None:
    assert set(scenario_rows()) <= set(SCENARIOS)


def test_promises_limits_and_soak_are_stated() -> None:
    text = doc_text()
    for heading in ("## The promises", "## Limits", "## Known gaps", "## The soak"):
        assert heading in text, f"docs/guarantees.md lacks the section {heading!r}"
    for promise in (
        "At-least-once",
        "Archive means uploaded",
        "Changed during upload",
        "crash anywhere",
        "Never silent",
        "Secrets never leak",
    ):
        assert promise.lower() in text.lower(), f"the promise {promise!r} is not stated"
    assert "bench/soak.py --kills 1000" in text
    soak = (ROOT / "bench" / "soak.py").read_text(encoding="utf-8")
    assert '"--kills"' in soak, "bench/soak.py no longer takes --kills"
    assert "test_random_sigkill_loop" in defined_tests("tests/daemon/test_crash.py")
    assert "tests/daemon/test_crash.py::test_random_sigkill_loop" in text


def test_the_reference_parser_catches_a_missing_test() -> None:
    refs = REF.findall(
        "see `tests/daemon/test_crash.py::test_no_such_thing[seed-1]` and `tests/no_such_file.py::test_x`"
    )
    assert missing(refs) == [
        "tests/daemon/test_crash.py::test_no_such_thing",
        "tests/no_such_file.py::test_x",
    ]
