"""`syncd status`: what the ledger and the running daemon say (`syncd files` is in .files).

Where each number comes from (so that they never contradict each other):

* counts per state and folder, "done today", the rows uploading and the
  recent errors: the **ledger, now** (one read-only connection);
* whether a daemon runs and its pid: the lock on ``state_dir``;
* what the daemon knows that the ledger does not (its problems, each
  destination's circuit and bandwidth limit, the metrics endpoint, the
  webhook's deliveries, the names its last scan ignored): its **heartbeat**
  in the ledger's kv table, written every few seconds and whenever its
  STATUS= line changes, shown with its age;
* bytes sent, rate and ETA of each upload in flight: the daemon's **progress
  snapshot** (kv ``progress``, at most a second old; see syncd/progress.py),
  attached to the ledger's ``uploading`` rows.

It works when the config file is broken (see :mod:`.common`).
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

from syncd import config as configmod
from syncd import progress as progressmod
from syncd.bandwidth import rate_text
from syncd.commands.common import (
    EXIT_OK,
    LEDGER_NAME,
    View,
    ago,
    as_applied,
    load_view,
    lost_folders,
    open_ledger,
    shown,
    stamp,
)
from syncd.commands.files import _path, _uploading, cmd_files
from syncd.errors import ConfigError, LedgerError
from syncd.ledger import CONFIG_KEY, STATES, State
from syncd.ledger.writer import SPACE_TO_OPEN, lock_holder, space_left
from syncd.lock import holder_pid
from syncd.logs import printable, printable_json, quoted_path

MIN_WATCH = 0.2  # seconds: `status --watch` refreshes no faster
STALE_AFTER = 30.0  # seconds: a running daemon writes its heartbeat every 5 s


def status_data(source: View | configmod.Config) -> dict[str, Any]:
    """What `syncd status --json` prints (also used by tests)."""
    view = source if isinstance(source, View) else View.of(source, source.path or Path("-"))
    ledger = open_ledger(view.state_dir)
    pid = holder_pid(view.state_dir)
    data: dict[str, Any] = {
        "states": {s: 0 for s in STATES},
        "done_today": 0,
        "folders": [],
        "daemon": {"running": pid is not None, "pid": pid},
        "uploading": [],
        "recent_errors": [],
        "config": {
            "path": str(view.path),
            "ok": view.broken is None,
            "problem": view.broken,
            "applied_at": view.applied_at,
        },
    }
    by_folder: dict[str, dict[str, int]] = {}
    meta: dict[str, Any] = {}
    if ledger is not None:
        try:
            if pid is not None and view.broken is None:
                view = as_applied(view, ledger.get_meta(CONFIG_KEY), data["config"])
            data["states"] = ledger.counts()
            by_folder = ledger.counts_by_folder()
            meta = ledger.get_meta("daemon", {}) or {}
            try:
                data["done_today"] = ledger.done_today()
            except (AttributeError, sqlite3.Error):  # a ledger from before the day counter
                midnight = time.mktime(time.localtime()[:3] + (0, 0, 0, 0, 0, -1))
                data["done_today"] = ledger.done_since(midnight)
            moving = progressmod.read(ledger.get_meta(progressmod.KV_KEY), pid)
            data["uploading"] = [_uploading(r, moving.get(r.id)) for r in ledger.in_state(State.UPLOADING)]
            data["recent_errors"] = [
                {
                    "id": r.id,
                    "path": _path(r),
                    "state": r.state,
                    "error": r.last_error,
                    "attempts": r.attempts,
                    "at": r.updated_at,
                }
                for r in ledger.recent_errors(10)
            ]
        finally:
            ledger.close()
    running = pid is not None
    if running and meta.get("pid") not in (None, pid):  # an earlier daemon's: this one is starting
        path, last = Path(view.state_dir) / LEDGER_NAME, meta.get("heartbeat")
        data["daemon"].update(starting=True, last_heartbeat=last, ledger_locked_by=lock_holder(path))
        data["daemon"]["ledger_disk_full"], meta = _ledger_full(path), {}
    problems = meta.get("folder_problems", {}) if running else {}
    ignored: dict[str, Any] = meta.get("ignored") or {}
    if not isinstance(ignored, dict):
        ignored = {}
    for folder in view.folders:
        root = folder.path
        counts = {s: 0 for s in STATES}
        counts.update(by_folder.get(root, {}))
        exists = Path(root).is_dir()
        seen = ignored.get(root)
        if isinstance(seen, dict):  # names from the disk: escaped like every path shown
            seen = {**seen, "examples": [printable(str(e)) for e in seen.get("examples") or []]}
        data["folders"].append(
            {
                "path": root,
                "destination": folder.destination,
                "labels": list(folder.labels),
                "category": folder.category,
                "states": counts,
                "exists": exists,
                "problem": problems.get(root) or (None if exists else "folder does not exist"),
                "ignored": seen if isinstance(seen, dict) else None,
            }
        )
    data["folders"] += lost_folders(by_folder, {f.path for f in view.folders})
    if running and meta:
        data["daemon"].update(
            {
                "started_at": meta.get("started_at"),
                "uptime_seconds": round(time.time() - meta.get("started_at", time.time()), 1),
                "heartbeat": meta.get("heartbeat"),
                "heartbeat_age_seconds": round(time.time() - meta.get("heartbeat", time.time()), 1),
                "status": meta.get("status"),
                "problems": meta.get("problems"),
                "paused_destinations": meta.get("paused", {}),
                "metrics": meta.get("metrics"),
                "webhook": meta.get("webhook"),
                "upload_helpers": meta.get("upload_helpers"),
                "heartbeat_stale": _stale(meta.get("heartbeat"), Path(view.state_dir) / LEDGER_NAME),
                "ledger_disk_full": _ledger_full(Path(view.state_dir) / LEDGER_NAME),
            }
        )
    elif meta:
        data["daemon"]["last_heartbeat"] = meta.get("heartbeat")
    known = meta.get("destinations") if running else None
    data["destinations"] = _destinations(view, known if isinstance(known, dict) else None)
    limits = meta.get("bandwidth") if running else None
    for entry in data["destinations"]:  # the bandwidth limit in force, as the daemon has it
        limit = limits.get(entry["name"]) if isinstance(limits, dict) else None
        entry["bwlimit"] = limit if isinstance(limit, dict) else None
    return data


def _destinations(view: View, known: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Each destination's circuit as the running daemon last published it (heartbeat);
    ``state`` is "unknown" when no daemon runs (or it did not say). ``since`` (Unix time) is
    when it went down, began refusing uploads or was rate limited; ``reason`` says why."""
    out = []
    now = time.time()
    for name, kind in sorted(view.destinations.items()):
        entry: dict[str, Any] = {
            "name": name,
            "type": kind,
            "state": "unknown",
            "up": None,
            "since": None,
            "for_seconds": None,
            "reason": None,
            "next_probe_at": None,
            "failures": None,
        }
        if known is not None:
            entry.update({"state": "up", "up": True})
            got = known.get(name)
            if isinstance(got, dict):
                entry.update(
                    {k: got.get(k) for k in ("state", "up", "since", "reason", "next_probe_at", "failures")}
                )
            since = entry.get("since")
            if isinstance(since, int | float) and entry["state"] != "up":
                entry["for_seconds"] = round(max(0.0, now - since), 1)
        out.append(entry)
    return out


# -- status -------------------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    if args.watch is not None:
        return _watch(args, args.watch)
    data = status_data(load_view(args))
    if args.json:
        print(printable_json(data, indent=2))
    else:
        print("\n".join(render(data)))
    return EXIT_OK


def _watch(args: argparse.Namespace, every: float) -> int:
    """`status --watch`: the status again every ``every`` seconds, on a cleared screen when
    stdout is a terminal (one JSON document per line with --json); Ctrl-C ends it, exit 0."""
    every = max(every, MIN_WATCH)
    tty = sys.stdout.isatty()
    try:
        while True:
            try:
                view = load_view(args, warn=False)
                data = status_data(view)
                lines = render(data)
                if view.broken is not None:
                    lines.insert(0, f"warning: {view.warning()}")
            except (ConfigError, LedgerError) as exc:
                data, lines = {"error": str(exc)}, [f"syncd: {shown(exc)} (trying again)"]
            if args.json:
                print(printable_json({"at": time.time(), **data}))
            else:
                if tty:
                    sys.stdout.write("\033[H\033[2J")
                print(f"syncd status every {every:g}s, {time.strftime('%H:%M:%S')} (Ctrl-C to stop)\n")
                print("\n".join(lines))
            sys.stdout.flush()
            _nap(every)
    except KeyboardInterrupt:
        if not args.json:
            print()
        return EXIT_OK


def _stale(heartbeat: object, ledger_path: Path) -> str | None:
    """Why a running daemon's heartbeat is old, or None while it is fresh.

    Its problems and circuits above are then from that heartbeat: the most likely
    reason is a full disk under the ledger (the daemon pauses, and records nothing,
    not even its heartbeat, until space is free), which is said with the space left.
    """
    if not isinstance(heartbeat, int | float) or time.time() - heartbeat < STALE_AFTER:
        return None
    free = space_left(ledger_path)
    if free < SPACE_TO_OPEN:
        return (
            f"the disk holding the ledger is full ({free:,} bytes free): the daemon records nothing "
            "and takes no new uploads until space is freed there; what it said above is from before"
        )
    return (
        "the daemon has not written its heartbeat since: it may be stuck (see its log, and "
        "`systemctl status syncd`); what it said above is from then"
    )


def _ledger_full(ledger_path: Path) -> str | None:
    """The running daemon's pause on a full ledger disk, seen from here: it cannot write
    the heartbeat that would say so (and says so as HEARTBEAT OLD only after 30 s)."""
    free = space_left(ledger_path)
    if free >= SPACE_TO_OPEN:
        return None
    return (
        f"disk full, paused (ledger): {free:,} bytes free on the disk holding the ledger; the "
        "daemon records nothing and takes no new uploads until space is freed there"
    )


def _nap(seconds: float) -> None:
    time.sleep(seconds)


def render(data: dict[str, Any]) -> list[str]:
    """`syncd status` as text lines."""
    out: list[str] = []
    d = data["daemon"]
    if d.get("starting"):
        out.append(f"daemon: starting (pid {d['pid']}), no heartbeat from it yet (opening the ledger?)")
        if d.get("ledger_locked_by"):
            out.append(f"  problem: the ledger's write lock is held by {shown(d['ledger_locked_by'])}")
        if d.get("ledger_disk_full"):
            out.append(f"  problem: {shown(d['ledger_disk_full'])}")
    elif d["running"]:
        out.append(
            f"daemon: running (pid {d['pid']}, up {d.get('uptime_seconds', 0):.0f}s, "
            f"heartbeat {ago(d.get('heartbeat'))})"
        )
        if d.get("heartbeat_stale"):
            out.append(f"  HEARTBEAT OLD: {shown(d['heartbeat_stale'])}")
        problems = d.get("problems")
        said = isinstance(problems, list) and any(str(p).startswith("disk full") for p in problems)
        if d.get("ledger_disk_full") and not d.get("heartbeat_stale") and not said:
            out.append(f"  problem: {shown(d['ledger_disk_full'])}")  # HEARTBEAT OLD says it after 30 s
        if isinstance(problems, list):
            out += [f"  problem: {shown(p)}" for p in problems]
        elif d.get("status"):  # a daemon from before the heartbeat listed its problems
            out.append(f"  its STATUS= line at that heartbeat: {shown(d['status'])}")
        metrics = d.get("metrics")
        if isinstance(metrics, dict) and metrics.get("error"):
            out.append(
                f"metrics: NOT SERVED: {shown(metrics['error'])} (daemon.metrics_listen; fix it, then reload)"
            )
        elif isinstance(metrics, dict) and metrics.get("listen"):
            out.append(f"metrics: http://{shown(metrics['listen'])}/metrics")
        hook = d.get("webhook")
        if isinstance(hook, dict):
            failing = hook.get("failing_since")
            out.append(
                f"webhook: {hook.get('delivered', 0):,} delivered, {hook.get('failed', 0):,} given up, "
                f"{hook.get('dropped', 0):,} dropped (queue full), {hook.get('pending', 0):,} waiting"
                + (f"; FAILING since {stamp(failing)}" if isinstance(failing, int | float) else "")
            )
        helpers = d.get("upload_helpers")
        if isinstance(helpers, dict):
            out.append(
                f"upload helpers: {helpers.get('running', 0)} of {helpers.get('configured', 0)} running "
                f"({helpers.get('sending', 0)} sending), {helpers.get('sent', 0):,} files sent, "
                f"{helpers.get('failed', 0):,} failed while sending"
                + ("; GIVEN UP (they keep failing to start, see the log)" if helpers.get("given_up") else "")
                + ("; they start when small files wait" if not helpers.get("running") else "")
            )
    else:
        out.append(f"daemon: not running (last heartbeat {ago(d.get('last_heartbeat'))})")
    if data["config"].get("unapplied"):
        out.append(f"config: {shown(data['config']['unapplied'])}")
    states = dict(data["states"])
    if any(states.values()):
        parts = []
        for s, n in states.items():
            if n:
                today = f" ({data.get('done_today', 0):,} today)" if s == State.DONE else ""
                parts.append(f"{n:,} {s}{today}")
        out.append("files:  " + ", ".join(parts))
    else:
        out.append("files:  none yet")
    if data.get("uploading"):
        out.append("uploading:")
        for u in data["uploading"]:
            p = u.get("progress")
            how = (
                progressmod.line(p)
                if p
                else (
                    f"{progressmod.size_text(u['size'] or 0)}, no progress reported"
                    + ("" if d["running"] else " (no daemon runs: requeued at its next start)")
                )
            )
            out.append(f"  #{u['id']} {quoted_path(u['path'])} -> {u['destination']}: {how}")
    out.append("folders:")
    for f in data["folders"]:
        counts = ", ".join(f"{n:,} {s}" for s, n in f["states"].items() if n) or "no files yet"
        out.append(f"  {quoted_path(f['path'])} -> {f['destination'] or '?'}: {counts}")
        if f["problem"]:
            out.append(f"    problem: {shown(f['problem'])}")
        seen = f.get("ignored")
        if isinstance(seen, dict) and seen.get("count"):
            examples = ", ".join(quoted_path(str(e)) for e in (seen.get("examples") or [])[:3])
            out.append(
                f"    ignored: {seen['count']:,} name(s) at the scan of "
                f"{stamp(seen.get('at'))} (junk, excluded or not included"
                + (f"; e.g. {examples})" if examples else ")")
            )
    if d["running"] and data["destinations"]:
        out.append("destinations:")
        for dest in data["destinations"]:
            out.append(f"  {dest['name']} ({dest['type']}): {_destination_text(dest)}{_bwlimit_text(dest)}")
    if data["recent_errors"]:
        out.append("recent errors:")
        for e in data["recent_errors"]:
            out.append(f"  #{e['id']} {e['state']} {quoted_path(e['path'])}: {shown(e['error'])}")
    return out


def _bwlimit_text(dest: dict[str, Any]) -> str:
    """``; bwlimit 08:00 512 KiB/s, 18:00 off (now 512 KiB/s)``, or nothing without a limit."""
    limit = dest.get("bwlimit")
    if not isinstance(limit, dict):
        return ""
    rate = limit.get("rate")
    now = rate_text(rate) if isinstance(rate, int) else "?"
    return f"; bwlimit {shown(str(limit.get('limit')))} (now {now})"


def _destination_text(dest: dict[str, Any]) -> str:
    state = dest.get("state") or "unknown"
    if state in ("up", "unknown"):
        return state
    words = {"down": "DOWN", "refused": "REFUSING UPLOADS", "rate_limited": "rate limited"}
    text = f"{words.get(state, state)} since {stamp(dest.get('since'))}"
    if dest.get("reason"):
        text += f": {shown(dest['reason'])}"
    probe = dest.get("next_probe_at")
    if isinstance(probe, int | float):
        wait = max(0.0, probe - time.time())
        text += f" (next {'try' if state == 'rate_limited' else 'probe'} in {wait:.0f}s)"
    return text


__all__ = ["cmd_files", "cmd_status", "render", "status_data"]
