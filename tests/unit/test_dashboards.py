"""The shipped Grafana dashboard and Prometheus alerting rules (contrib/).

Every series they query must be one syncd exports, with labels and label
values it really has: checked against the exposition text of a populated
:class:`~syncd.metrics.Metrics` and against a running daemon's ``/metrics``.
Where promtool can be had (``scripts/host-tool.sh`` installs Debian's ``prometheus``) the rules
pass ``promtool check rules`` and their unit tests (``promtool test rules``),
and every dashboard query parses; without it those tests are skipped, so the
suite itself installs nothing.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from syncd.circuit import CIRCUIT_STATES, CircuitState
from syncd.ledger import STATES
from syncd.metrics import Metrics
from tests.harness import host_tool, wait_until

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "contrib" / "prometheus" / "syncd-alerts.yml"
RULES_TEST = ROOT / "contrib" / "prometheus" / "syncd-alerts.test.yml"
DASHBOARD = ROOT / "contrib" / "grafana" / "syncd-dashboard.json"


PROMTOOL, _WHY = host_tool("promtool", "prometheus")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason=f"no promtool: {_WHY}")

# Series that Prometheus itself records for every target, not syncd.
PROMETHEUS_SERIES = {"up"}
# Labels Prometheus adds to every series of a target.
TARGET_LABELS = {"instance", "job"}
# Label values the queries may name, per series and label.
KNOWN_VALUES = {
    ("syncd_files", "state"): set(STATES),
    ("syncd_destination_state", "state"): set(CIRCUIT_STATES),
    ("syncd_rescan_found_files_total", "reason"): {
        "startup",
        "periodic",
        "rearmed",
        "reload",
        "directory",
        "disk-space",
    },
}
_SERIES = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?")
_MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
_SUFFIXES = ("_bucket", "_count", "_sum")


def rule_exprs() -> dict[str, str]:
    """alert name -> its PromQL, from the rules file (plain or folded ``>-`` values)."""
    out: dict[str, str] = {}
    lines = RULES.read_text().splitlines()
    alert = ""
    for i, line in enumerate(lines):
        m = re.match(r"\s*- alert:\s*(\S+)", line)
        if m:
            alert = m.group(1)
        m = re.match(r"(\s*)expr:\s*(.*)$", line)
        if not m:
            continue
        value = m.group(2).strip()
        if value in (">-", ">", "|", "|-"):
            indent, parts = len(m.group(1)), []
            for more in lines[i + 1 :]:
                if more.strip() and len(more) - len(more.lstrip()) <= indent:
                    break
                parts.append(more.strip())
            value = " ".join(p for p in parts if p)
        out[alert] = value
    return out


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def dashboard_exprs() -> list[str]:
    """Every PromQL of the dashboard: panel targets and template variable queries."""
    data = dashboard()
    exprs = [n["expr"] for n in _walk(data["panels"]) if isinstance(n.get("expr"), str)]
    for var in data["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            m = re.fullmatch(r"label_values\((.*),\s*([a-zA-Z_]+)\)", query)
            assert m, f"variable {var['name']}: unexpected query {query!r}"
            exprs.append(m.group(1))
    return exprs


def grafana_to_promql(expr: str) -> str:
    """A dashboard query with Grafana's variables filled in, as Prometheus would get it."""
    return (
        expr.replace("$__rate_interval", "5m")
        .replace("$instance", ".*")
        .replace("$destination", ".*")
        .replace("$folder", ".*")
    )


def used_series(expr: str) -> list[tuple[str, dict[str, str]]]:
    """(series name, {label: matcher value}) for each selector in ``expr``."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', lambda m: m.group(0).replace(" ", "\0"), expr)
    out = []
    for m in _SERIES.finditer(text):
        name, matchers = m.group(1), (m.group(2) or "").replace("\0", " ")
        if not (name.startswith(("syncd_", "process_")) or name in PROMETHEUS_SERIES):
            continue
        out.append((name, {k: v for k, _, v in _MATCHER.findall(matchers)}))
    return out


def populated_metrics() -> Metrics:
    """A Metrics with every series present at least once (labels included)."""
    m = Metrics()
    m.track_ledger(lambda: {"/srv/in": {s: 1 for s in STATES}})
    m.track_destinations(lambda: {"d": CircuitState()})
    m.track_backlog(lambda: 1.0)
    m.track_progress(lambda: [])
    m.track_webhook(lambda: {"delivered": 3, "failed": 1, "dropped": 0, "pending": 2, "failing_since": 1.0})
    m.track_helpers(lambda: {"running": 2, "sending": 1, "sent": 9, "failed": 0, "given_up": False})
    m.observe_upload("d", 10, 0.5, 1.0)
    m.observe_done(0.0, 1.0)
    m.observe_retry("network")
    m.observe_failed()
    m.observe_scan("/srv/in", "periodic", 1)
    m.set_folders({"/srv/in": True})
    m.workers.set(4)
    return m


def exported(text: str) -> dict[str, set[str]]:
    """Sample name -> its label names, from an exposition text."""
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    return out


def test_every_queried_series_is_exported_with_those_labels() -> None:
    series = exported(generate_latest(populated_metrics().registry).decode())
    queries = [("rules " + a, e) for a, e in rule_exprs().items()]
    queries += [("dashboard", e) for e in dashboard_exprs()]
    problems = []
    seen = set()
    for where, expr in queries:
        for name, matchers in used_series(expr):
            seen.add(name)
            if name in PROMETHEUS_SERIES:
                labels = set(TARGET_LABELS)
            elif name not in series:
                problems.append(f"{where}: {name} is not exported ({expr})")
                continue
            else:
                labels = series[name] | TARGET_LABELS
            for label, value in matchers.items():
                if label not in labels:
                    problems.append(f"{where}: {name} has no label {label!r} ({expr})")
                known = KNOWN_VALUES.get((name, label))
                if known is not None and "$" not in value:
                    for alternative in value.split("|"):
                        if alternative not in known:
                            problems.append(
                                f"{where}: {name}{{{label}}} is never "
                                f"{alternative!r} (known: {sorted(known)})"
                            )
    assert problems == []
    # what the alerts of docs/operations.md need is all there
    for name in (
        "syncd_failed_files_total",
        "syncd_destination_state",
        "syncd_folder_healthy",
        "syncd_backlog_age_seconds",
        "syncd_disk_full",
        "up",
    ):
        assert name in seen


def test_used_series_parser() -> None:
    assert used_series('sum by (state) (syncd_files{instance=~"$i", state=~"a|b"}) > 0') == [
        ("syncd_files", {"instance": "$i", "state": "a|b"})
    ]
    assert used_series('absent(up{job="syncd"}) or process_open_fds') == [
        ("up", {"job": "syncd"}),
        ("process_open_fds", {}),
    ]
    assert [
        n
        for n, _ in used_series(
            "histogram_quantile(0.5, sum by (le) (rate(syncd_end_to_end_seconds_bucket[5m])))"
        )
    ] == ["syncd_end_to_end_seconds_bucket"]


def test_rules_cover_the_documented_alerts() -> None:
    alerts = rule_exprs()
    assert set(alerts) >= {
        "SyncdDown",
        "SyncdAbsent",
        "SyncdFilesFailed",
        "SyncdDestinationDown",
        "SyncdDestinationRefused",
        "SyncdFolderUnhealthy",
        "SyncdDiskFull",
        "SyncdBacklogOld",
    }
    ops = (ROOT / "docs" / "operations.md").read_text()
    assert [a for a in alerts if f"`{a}`" not in ops] == [], "docs/operations.md lists them all"
    for path in (RULES, RULES_TEST, DASHBOARD):
        assert str(path.relative_to(ROOT)) in ops


def test_dashboard_is_importable() -> None:
    data = dashboard()
    assert data["uid"] and data["title"] == "syncd" and data["id"] is None
    variables = {v["name"]: v for v in data["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = [p for p in data["panels"]]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        for t in panel["targets"]:
            assert t["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            for var in re.findall(r"\$(\w+)", t["expr"]):
                assert var in variables or var == "__rate_interval", (panel["title"], var)
    # no two panels overlap
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        g = panel["gridPos"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, panel["title"]
        cells |= mine


@pytest.mark.process
@needs_promtool
def test_promtool_checks_the_rules() -> None:
    assert PROMTOOL is not None
    out = subprocess.run(
        [PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(rule_exprs())} rules found" in out.stdout


@pytest.mark.process
@needs_promtool
def test_promtool_unit_tests_of_the_rules() -> None:
    assert PROMTOOL is not None
    out = subprocess.run(
        [PROMTOOL, "test", "rules", RULES_TEST.name],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=RULES_TEST.parent,
    )
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.process
@needs_promtool
def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """Each dashboard query, variables filled in, as a recording rule that promtool checks."""
    assert PROMTOOL is not None
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for i, expr in enumerate(dashboard_exprs()):
        lines += [
            f"      - record: dashboard:query_{i}",
            f"        expr: {json.dumps(grafana_to_promql(expr))}",
        ]
    rules = tmp_path / "dashboard-rules.yml"
    rules.write_text("\n".join(lines) + "\n")
    out = subprocess.run(
        [PROMTOOL, "check", "rules", str(rules)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stdout + out.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.process
def test_running_daemon_exports_every_queried_family(make_setup: Any) -> None:
    """The families queried are served by a real daemon's /metrics (HELP lines, so a
    labelled family counts before its first sample)."""
    port = _free_port()
    s = make_setup(daemon={"metrics_listen": f"127.0.0.1:{port}"})
    s.drop("a.txt", b"hello")
    s.start()
    s.wait_started()
    wait_until(lambda: s.all_done(), 30, what="upload")
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert s.stop() == 0
    families = set(re.findall(r"^# HELP (\S+)", text, re.M))
    wanted = {
        n
        for e in [*rule_exprs().values(), *dashboard_exprs()]
        for n, _ in used_series(e)
        if n not in PROMETHEUS_SERIES
    }
    missing = sorted(
        n
        for n in wanted
        if n not in families and not any(n.endswith(x) and n[: -len(x)] in families for x in _SUFFIXES)
    )
    assert missing == []
    assert re.search(r"^syncd_backlog_age_seconds 0\.0$", text, re.M)
    assert re.search(r'^syncd_destination_state\{destination="lilt",state="up"\} 1\.0$', text, re.M)
