"""Print constraints.txt: pins of syncd's runtime dependencies, as installed here.

Run from the venv the test suite passed in (``make constraints``). Only the
closure of ``[project] dependencies`` is pinned (no test or dev extras), with
environment markers evaluated for this interpreter.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, distribution

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

HEADER = """\
# Pinned runtime dependencies of syncd, the versions the test suite runs with.
# A server install uses them: pip install --constraint constraints.txt syncd-*.whl
# (docs/operations.md, section 1). Regenerate from a tested venv: make constraints
"""


def closure(root: str = "syncd") -> dict[str, str]:
    env = {**default_environment(), "extra": ""}
    pins: dict[str, str] = {}
    todo = [root]
    while todo:
        for spec in distribution(todo.pop()).requires or []:
            req = Requirement(spec)
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            name = canonicalize_name(req.name)
            if name in pins:
                continue
            try:
                pins[name] = distribution(req.name).version
            except PackageNotFoundError:
                raise SystemExit(f"{req.name} is not installed; run `make test` first") from None
            todo.append(req.name)
    return pins


if __name__ == "__main__":
    print(HEADER + "".join(f"{name}=={version}\n" for name, version in sorted(closure().items())), end="")
