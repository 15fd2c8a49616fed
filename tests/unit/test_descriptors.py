"""The descriptors a configuration may hold at once, and the look at the limit at start
(syncd/descriptors.py). The daemon under a real low limit: tests/daemon/test_limits.py."""

from __future__ import annotations

import logging
import resource
from pathlib import Path

import pytest

from syncd import config as configmod
from syncd import descriptors, limits
from syncd.metrics import MAX_CONNECTIONS


def load(
    tmp_path: Path, daemon: str = "", folders: int = 1, lilt: str = "", folder: str = ""
) -> configmod.Config:
    tables = [f"[daemon]\nstate_dir = 'state'\n{daemon}\n"]
    tables.append(
        f"[destinations.d]\ntype = 'lilt'\nbase_url = 'http://127.0.0.1:9/lilt'\napi_key = 'k'\n{lilt}\n"
    )
    for i in range(folders):
        (tmp_path / f"in{i}").mkdir(exist_ok=True)
        tables.append(f"[[folders]]\npath = 'in{i}'\ndestination = 'd'\n{folder}\n")
    return configmod.loads("\n".join(tables), base_dir=tmp_path)


def total(tmp_path: Path, **kw: str | int) -> int:
    return descriptors.needed(load(tmp_path, **kw)).total  # type: ignore[arg-type]


def test_each_part_of_the_configuration_adds_what_it_holds(tmp_path: Path) -> None:
    base = total(tmp_path, daemon="workers = 4")
    assert base >= 4 * descriptors.PER_WORKER + descriptors.PROCESS + descriptors.WATCHER + 1
    assert total(tmp_path, daemon="workers = 32") - base == 28 * descriptors.PER_WORKER
    assert total(tmp_path, daemon="workers = 4", folders=5) - base == 4 * descriptors.PER_FOLDER
    # parts in flight: workers x parallel_parts, at most max_connections of the destination
    parts = "parallel_parts = 4\nmax_connections = 10"
    assert total(tmp_path, daemon="workers = 1", lilt=parts) - total(tmp_path, daemon="workers = 1") == 4
    assert total(tmp_path, daemon="workers = 4", lilt=parts) - base == 10
    assert total(tmp_path, daemon="workers = 4", lilt="parallel_parts = 1") == base
    helpers = total(tmp_path, daemon="workers = 4\nupload_processes = 3") - base
    assert helpers == 3 * descriptors.PER_HELPER + descriptors.HELPER_START
    metrics = total(tmp_path, daemon="workers = 4\nmetrics_listen = '127.0.0.1:8791'") - base
    assert metrics == descriptors.METRICS + MAX_CONNECTIONS
    hook = total(tmp_path, daemon="workers = 4\nwebhook_url = 'https://hooks.example.net/x'") - base
    assert hook == descriptors.WEBHOOK
    # no inotify: polled folders, or `syncd once` (nothing watched)
    assert base - total(tmp_path, daemon="workers = 4", folder="observer = 'polling'") == descriptors.WATCHER
    no_watch = descriptors.needed(load(tmp_path, daemon="workers = 4"), watch=False).total
    assert base - no_watch == descriptors.WATCHER


def test_a_limit_below_the_need_and_margin_is_said_with_the_figure_and_what_to_raise(tmp_path: Path) -> None:
    """`LimitNOFILE=64` and `workers = 32`: nothing was said at start, and files waited on
    EMFILE. The check names the limit, the figure, what holds it and what to raise."""
    cfg = load(tmp_path, daemon="workers = 32")
    need = descriptors.needed(cfg)
    said = descriptors.check(cfg, 64)
    assert said is not None
    assert (
        "descriptor limit (64)" in said
        and f"at once: {need.total} ({32 * descriptors.PER_WORKER} for 32 workers, " in said
    )
    assert f"at least {need.total + descriptors.MARGIN}" in said
    assert "LimitNOFILE=" in said and "ulimit -n" in said and "lower workers" in said
    assert descriptors.check(cfg, need.limit - 1) is not None
    assert descriptors.check(cfg, need.limit) is None
    assert descriptors.check(cfg, resource.RLIM_INFINITY) is None


def test_the_warning_at_start_reads_the_limit_in_force(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = load(tmp_path, daemon="workers = 32")
    monkeypatch.setattr(limits, "nofile", lambda: (64, 64))
    with caplog.at_level(logging.WARNING, logger="syncd.descriptors"):
        descriptors.warn(cfg)
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "descriptor limit (64)" in caplog.text
    caplog.clear()
    monkeypatch.setattr(limits, "nofile", lambda: (524288, 524288))
    descriptors.warn(cfg)
    assert not caplog.records


def test_the_limit_syncd_raises_itself_to(monkeypatch: pytest.MonkeyPatch) -> None:
    for (soft, hard), raised in [
        ((1024, 524288), 524288),
        ((32, 64), 64),
        ((64, 64), 64),
        ((64, resource.RLIM_INFINITY), limits.NOFILE_CAP),
        ((resource.RLIM_INFINITY, resource.RLIM_INFINITY), resource.RLIM_INFINITY),
        ((2_000_000, 4_000_000), 2_000_000),  # above the cap already: left as it is
    ]:
        monkeypatch.setattr(limits, "nofile", lambda s=soft, h=hard: (s, h))
        assert limits.raised_nofile() == raised
