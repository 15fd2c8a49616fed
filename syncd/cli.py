"""The ``syncd`` command line.

Exit codes: 0 ok, 1 some files failed, 2 usage or config error, 3 another
instance holds the lock, 4 the ledger is unusable.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from syncd import __version__, rules
from syncd import config as configmod
from syncd.errors import ConfigError, LedgerError, LockedError, Problem
from syncd.ledger import STATES, Ledger, Row, make_private
from syncd.lock import holder_pid
from syncd.logs import printable, qp
from syncd.logs import setup as setup_logging
from syncd.redact import redact

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_LOCKED, EXIT_LEDGER = 0, 1, 2, 3, 4

EPILOG = """\
examples:
  syncd -c /etc/syncd/config.toml check          validate the config (add --online to probe services)
  syncd run                                      the daemon, in the foreground (systemd runs this)
  syncd once                                     upload what is in the folders now, then exit
  syncd status                                   counts per state and folder, recent errors
  syncd files --state failed                     list failed files with their reasons
  syncd retry --failed                           send every failed file through the pipeline again
  syncd explain /srv/inbox/contracts/a.pdf       why this file will or will not be uploaded
  syncd init ./syncd.toml                        write a starter config
  syncd folder add /srv/inbox/scans --destination contracts --label scan --category SOURCE
  syncd emulate --listen 127.0.0.1:8790          local emulator of every supported service

The config is --config/-c, else $SYNCD_CONFIG, else /etc/syncd/config.toml.
Exit codes: 0 ok, 1 some files failed, 2 usage or config error,
3 another instance is running, 4 the ledger is unusable.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="syncd", description="Watch-folder upload daemon: files dropped into folders are "
        "uploaded to the configured service with their labels, ledgered, then archived.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-c", "--config", type=Path, help="config file (default: $SYNCD_CONFIG, "
                   "then /etc/syncd/config.toml)")
    p.add_argument("--version", action="version", version=f"syncd {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def cmd(name: str, help: str, **kw: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, **kw)

    r = cmd("run", "run the daemon in the foreground (what systemd runs)")
    r.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                   help="override daemon.log_level")
    o = cmd("once", "ingest what is in the folders now, upload, archive, exit "
            "(exit 1 if any file failed)")
    o.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    o.add_argument("--no-progress", action="store_true", help="no progress line on a terminal")
    s = cmd("status", "counts per state and per folder, recent errors, daemon health")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    f = cmd("files", "list ledger rows")
    f.add_argument("--state", choices=STATES, help="only rows in this state")
    f.add_argument("--limit", type=int, default=None, help="at most this many rows (newest)")
    f.add_argument("--json", action="store_true", help="machine-readable output")
    f.add_argument("--receipt", type=int, metavar="ID", help="the receipt of row ID as JSON, "
                   "with its signed or private URLs whole (needs the destination's secret)")
    rt = cmd("retry", "requeue failed files; files in failed_dir go back through the pipeline")
    g = rt.add_mutually_exclusive_group(required=True)
    g.add_argument("--failed", action="store_true", help="every failed file")
    g.add_argument("ids", nargs="*", type=int, default=[], metavar="ID", help="ledger row ids")
    c = cmd("check", "validate the config; --online also probes each destination")
    c.add_argument("--online", action="store_true", help="contact each destination (no upload)")
    e = cmd("explain", "why this file will or will not be uploaded")
    e.add_argument("path", type=Path)
    i = cmd("init", "write a starter config (refuses to overwrite)")
    i.add_argument("path", nargs="?", type=Path, help="where (default: the --config path)")
    i.add_argument("--force", action="store_true", help="overwrite an existing file")
    fo = cmd("folder", "edit the [[folders]] of the config")
    fsub = fo.add_subparsers(dest="folder_command", metavar="ACTION")
    fsub.required = True
    fa = fsub.add_parser("add", help="add a watched folder", description="add a watched folder")
    fa.add_argument("path", help="the folder to watch")
    fa.add_argument("--destination", "-d", required=True, help="a [destinations.NAME] name")
    fa.add_argument("--label", "-l", action="append", default=[], help="a label (repeatable)")
    fa.add_argument("--category", help="the category")
    fa.add_argument("--after-upload", choices=["archive", "delete", "keep"])
    fa.add_argument("--archive-dir")
    fa.add_argument("--failed-dir")
    lg = cmd("ledger", "ledger maintenance")
    lsub = lg.add_subparsers(dest="ledger_command", metavar="ACTION")
    lsub.required = True
    lsub.add_parser("rebuild", help="move an unusable ledger aside and start a new one",
                    description="Move the ledger aside and start an empty one. Files still in "
                    "the inbox are uploaded again (at-least-once); archived files are not.")
    lsub.add_parser("check", help="run SQLite's integrity check on the ledger")
    lb = lsub.add_parser("backup", help="copy the ledger safely, also while syncd runs",
                         description="Copy the ledger with SQLite's online backup API (a "
                         "consistent snapshot even while the daemon writes), check the copy's "
                         "integrity, then give it its name. Never copy ledger.sqlite3 with cp: "
                         "its -wal file holds the latest commits.")
    lb.add_argument("dest", type=Path, help="the file to write (must not exist)")
    cmd("emulate", "local emulator of every supported service (see `syncd emulate --help`)",
        add_help=False, prefix_chars="\0")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _first_positional(argv)
    if command is not None and argv[command] == "emulate":
        from syncd.emulator import main as emulate_main

        return emulate_main(argv[command + 1:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0) if exc.code in (0, None) else EXIT_CONFIG
    handler = _COMMANDS[args.command]
    try:
        return handler(args)
    except ConfigError as exc:
        print(f"syncd: configuration error in {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except LockedError as exc:
        print(f"syncd: {exc}", file=sys.stderr)
        return EXIT_LOCKED
    except LedgerError as exc:
        print(f"syncd: {exc}", file=sys.stderr)
        return EXIT_LEDGER
    except KeyboardInterrupt:
        return 130


# ----------------------------------------------------------------- helpers

def _first_positional(argv: list[str]) -> int | None:
    """Index of the sub-command in ``argv`` (skipping ``-c PATH``), or None."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-c", "--config"):
            i += 2
            continue
        if arg.startswith("-"):
            i += 1
            continue
        return i
    return None


def _config_path(args: argparse.Namespace) -> Path:
    return Path(args.config) if args.config else configmod.default_config_path()


def _load(args: argparse.Namespace, *, secrets: bool = True,
          strict_dirs: bool = False) -> configmod.Config:
    """The config; ``secrets=False`` for commands that never upload, so they work from an
    admin shell that lacks the service's environment and $CREDENTIALS_DIRECTORY.
    ``strict_dirs``: group/other-writable archive/failed folders are errors (`check`)."""
    path = _config_path(args)
    if not path.exists():
        raise ConfigError([Problem("", f"no such file (create one with `syncd init {path}`)")],
                          source=str(path))
    cfg = configmod.load(path, resolve_secrets=secrets, strict_dirs=strict_dirs)
    for w in cfg.warnings:
        print(f"syncd: warning: {w}", file=sys.stderr)
    return cfg


def _open_ledger(cfg: configmod.Config, *, readonly: bool = True) -> Ledger | None:
    from syncd.daemon import ledger_path

    path = ledger_path(cfg)
    if readonly and not path.exists():
        return None
    return Ledger.open(path, readonly=readonly)


def _ago(t: float | None) -> str:
    if t is None:
        return "never"
    s = max(0.0, time.time() - t)
    if s < 120:
        return f"{s:.0f}s ago"
    if s < 7200:
        return f"{s / 60:.0f}m ago"
    return f"{s / 3600:.1f}h ago"


def _stamp(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


# ---------------------------------------------------------------- commands

def cmd_run(args: argparse.Namespace, *, once: bool = False) -> int:
    from syncd.daemon import Daemon, early_signals

    early_signals()
    cfg = _load(args)
    setup_logging(args.log_level or cfg.daemon.log_level, cfg.daemon.log_format)
    daemon = Daemon(cfg, once=once)
    if not once:
        return daemon.run()
    stop = threading.Event()
    if sys.stdout.isatty() and not getattr(args, "no_progress", False):
        threading.Thread(target=_progress, args=(daemon, stop), daemon=True).start()
    started = time.monotonic()
    try:
        code = daemon.run()
    finally:
        stop.set()
    counts = daemon.final_counts
    if sys.stdout.isatty() and not getattr(args, "no_progress", False):
        sys.stdout.write("\n")
    held = f"; {daemon.held_back} waiting for a destination that is down" if daemon.held_back else ""
    print(f"syncd once: finished in {time.monotonic() - started:.1f}s"
          + (f" ({_summary(counts)}{held})" if counts else ""))
    return code


def _shown(text: object) -> str:
    """Ledger or server text (an error, a status, a remote id) as one safe line.

    It was redacted and escaped when it was recorded; this is the last line of
    defence for rows written by older versions: shapes masked, controls escaped.
    """
    return printable(redact(str(text)))


def _summary(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {state}" for state, n in counts.items() if n) or "no files"


def _progress(daemon: Any, stop: threading.Event) -> None:
    """`syncd once` on a terminal: one self-overwriting progress line on stdout."""
    while not stop.wait(0.5):
        ledger = daemon.ledger
        if ledger is None:
            continue
        try:
            c = ledger.counts()
        except Exception:
            continue
        sys.stdout.write(f"\r{c['done']} done, {c['queued'] + c['retrying']} queued, "
                         f"{c['uploading']} uploading, {c['settling']} settling, "
                         f"{c['failed']} failed \033[K")
        sys.stdout.flush()


def cmd_once(args: argparse.Namespace) -> int:
    return cmd_run(args, once=True)


def status_data(cfg: configmod.Config) -> dict[str, Any]:
    """What `syncd status --json` prints (also used by tests)."""
    ledger = _open_ledger(cfg)
    pid = holder_pid(Path(cfg.daemon.state_dir))
    data: dict[str, Any] = {
        "states": {s: 0 for s in STATES},
        "folders": [],
        "daemon": {"running": pid is not None, "pid": pid},
        "recent_errors": [],
    }
    by_folder: dict[str, dict[str, int]] = {}
    meta: dict[str, Any] = {}
    if ledger is not None:
        try:
            data["states"] = ledger.counts()
            by_folder = ledger.counts_by_folder()
            meta = ledger.get_meta("daemon", {}) or {}
            data["recent_errors"] = [
                {"id": r.id, "path": r.to_json()["folder"] + "/" + r.to_json()["relpath"],
                 "state": r.state, "error": r.last_error, "attempts": r.attempts,
                 "at": r.updated_at}
                for r in ledger.recent_errors(10)
            ]
        finally:
            ledger.close()
    problems = meta.get("folder_problems", {}) if pid is not None else {}
    for folder in cfg.folders:
        root = os.fspath(folder.path)
        counts = {s: 0 for s in STATES}
        counts.update(by_folder.get(root, {}))
        exists = os.path.isdir(root)
        data["folders"].append({
            "path": root, "destination": folder.destination, "labels": list(folder.labels),
            "category": folder.category, "states": counts, "exists": exists,
            "problem": problems.get(root) or (None if exists else "folder does not exist"),
        })
    if pid is not None and meta:
        data["daemon"].update({
            "started_at": meta.get("started_at"),
            "uptime_seconds": round(time.time() - meta.get("started_at", time.time()), 1),
            "heartbeat": meta.get("heartbeat"),
            "heartbeat_age_seconds": round(time.time() - meta.get("heartbeat", time.time()), 1),
            "status": meta.get("status"), "paused_destinations": meta.get("paused", {}),
        })
    elif meta:
        data["daemon"]["last_heartbeat"] = meta.get("heartbeat")
    known = meta.get("destinations") if pid is not None else None
    data["destinations"] = _destinations(cfg, known if isinstance(known, dict) else None)
    return data


def _destinations(cfg: configmod.Config, known: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Each destination's circuit as the running daemon last published it (heartbeat);
    ``state`` is "unknown" when no daemon runs (or it did not say). ``since`` (Unix time) is when it went
    down, began refusing uploads or was rate limited; ``reason`` says why."""
    out = []
    now = time.time()
    for name, dc in sorted(cfg.destinations.items()):
        entry: dict[str, Any] = {"name": name, "type": dc.type, "state": "unknown", "up": None,
                                 "since": None, "for_seconds": None, "reason": None,
                                 "next_probe_at": None, "failures": None}
        if known is not None:
            entry.update({"state": "up", "up": True})
            got = known.get(name)
            if isinstance(got, dict):
                entry.update({k: got.get(k) for k in ("state", "up", "since", "reason",
                                                      "next_probe_at", "failures")})
            since = entry.get("since")
            if isinstance(since, int | float) and entry["state"] != "up":
                entry["for_seconds"] = round(max(0.0, now - since), 1)
        out.append(entry)
    return out


def cmd_status(args: argparse.Namespace) -> int:
    cfg = _load(args, secrets=False)
    data = status_data(cfg)
    if args.json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
        return EXIT_OK
    d = data["daemon"]
    if d["running"]:
        print(f"daemon: running (pid {d['pid']}, up {d.get('uptime_seconds', 0):.0f}s, "
              f"heartbeat {_ago(d.get('heartbeat'))})")
        if d.get("status"):
            print(f"        {_shown(d['status'])}")
    else:
        print(f"daemon: not running (last heartbeat {_ago(d.get('last_heartbeat'))})")
    states = data["states"]
    print("files:  " + ", ".join(f"{n} {s}" for s, n in states.items() if n) if any(states.values())
          else "files:  none yet")
    print("folders:")
    for f in data["folders"]:
        counts = ", ".join(f"{n} {s}" for s, n in f["states"].items() if n) or "no files yet"
        print(f"  {qp(f['path'])} -> {f['destination']}: {counts}")
        if f["problem"]:
            print(f"    problem: {_shown(f['problem'])}")
    if d["running"] and data["destinations"]:
        print("destinations:")
        for dest in data["destinations"]:
            print(f"  {dest['name']} ({dest['type']}): {_destination_text(dest)}")
    if data["recent_errors"]:
        print("recent errors:")
        for e in data["recent_errors"]:
            print(f"  #{e['id']} {e['state']} {qp(e['path'])}: {_shown(e['error'])}")
    return EXIT_OK


def _destination_text(dest: dict[str, Any]) -> str:
    state = dest.get("state") or "unknown"
    if state in ("up", "unknown"):
        return state
    words = {"down": "DOWN", "refused": "REFUSING UPLOADS", "rate_limited": "rate limited"}
    text = f"{words.get(state, state)} since {_stamp(dest.get('since'))}"
    if dest.get("reason"):
        text += f": {_shown(dest['reason'])}"
    probe = dest.get("next_probe_at")
    if isinstance(probe, int | float):
        wait = max(0.0, probe - time.time())
        text += f" (next {'try' if state == 'rate_limited' else 'probe'} in {wait:.0f}s)"
    return text


def cmd_files(args: argparse.Namespace) -> int:
    if args.receipt is not None:
        return _show_receipt(args)
    cfg = _load(args, secrets=False)
    ledger = _open_ledger(cfg)
    rows: list[Row] = []
    if ledger is not None:
        try:
            rows = ledger.rows(state=args.state)
        finally:
            ledger.close()
    if args.limit is not None:
        rows = rows[-args.limit:]
    if args.json:
        print(json.dumps([r.to_json() for r in rows], indent=2, ensure_ascii=False))
        return EXIT_OK
    if not rows:
        print("no files" + (f" in state {args.state}" if args.state else ""))
        return EXIT_OK
    for r in rows:
        where = r.location or r.inbox_path
        extra = f"  ({_shown(r.last_error)})" if r.last_error and r.state != "done" else ""
        print(f"#{r.id:<6} {r.state:<9} {r.size if r.size is not None else '-':>10}  "
              f"{_stamp(r.updated_at)}  {qp(where)}{extra}")
    return EXIT_OK


def _show_receipt(args: argparse.Namespace) -> int:
    """``syncd files --receipt ID``: the row's receipt, with the URLs its destination keeps
    sealed (signed download URLs, private-video tokens) opened with the secret in the config."""
    from syncd.destinations import REGISTRY

    cfg = _load(args)  # with secrets: a seal opens only with the destination's own secret
    ledger = _open_ledger(cfg)
    row = None
    if ledger is not None:
        try:
            row = ledger.get(args.receipt)
        finally:
            ledger.close()
    if row is None or not row.receipt:
        print(f"syncd: #{args.receipt} " + ("has no receipt (not uploaded)" if row is not None
                                           else "is not a ledger row"), file=sys.stderr)
        return EXIT_FAILED
    receipt = dict(row.receipt)
    dest = cfg.destinations.get(row.destination)
    reveal = getattr(REGISTRY[dest.type], "reveal_receipt", None) if dest is not None else None
    if dest is not None and reveal is not None:
        try:
            receipt = reveal(dest.options, receipt)
        except ValueError as exc:
            print(f"syncd: warning: #{args.receipt}: {exc}", file=sys.stderr)
    print(json.dumps(receipt, indent=2, ensure_ascii=False))
    return EXIT_OK


def cmd_retry(args: argparse.Namespace) -> int:
    cfg = _load(args, secrets=False)
    ledger = _open_ledger(cfg, readonly=False)
    assert ledger is not None
    try:
        if args.failed:
            rows = ledger.requeue_failed(None)
        else:
            bad = [i for i in args.ids if (r := ledger.get(i)) is None or r.state != "failed"]
            for i in bad:
                print(f"syncd: #{i} is not a failed file; left alone", file=sys.stderr)
            rows = ledger.requeue_failed([i for i in args.ids if i not in bad])
    finally:
        ledger.close()
    for r in rows:
        print(f"requeued #{r.id} {qp(r.current_path)}")
    if not rows:
        print("nothing to retry")
    elif holder_pid(Path(cfg.daemon.state_dir)) is None:
        print("syncd is not running: they will be uploaded at its next start (or run `syncd once`)")
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    from syncd.destinations import REGISTRY

    cfg = _load(args, strict_dirs=True)
    ok = True
    print(f"config {_config_path(args)}: valid ({len(cfg.folders)} folder(s), "
          f"{len(cfg.destinations)} destination(s))")
    for folder in cfg.folders:
        root = os.fspath(folder.path)
        dest = cfg.destinations[folder.destination]
        cls = REGISTRY[dest.type]
        # What these options can deliver, and the type's own warnings (destinations/base.py).
        caps_for = getattr(cls, "capabilities_for", None)
        caps = caps_for(dest.options) if caps_for is not None else cls.CAPABILITIES
        why = f" {caps.note}" if caps.note else ""
        if not os.path.isdir(root):
            ok = False
            print(f"error: folders: {qp(root)} does not exist (syncd run waits for it; "
                  "create it or fix the path)")
        else:
            print(f"folder {qp(root)} -> {folder.destination} ({dest.type})")
        if folder.labels:
            if caps.labels:
                print(f"  labels {list(folder.labels)} are delivered as {caps.labels}")
            else:
                print(f"  warning: {dest.type} cannot carry labels{why}; "
                      f"{list(folder.labels)} will not reach the service")
        if folder.category:
            if caps.category:
                print(f"  category {folder.category!r} is delivered as {caps.category}")
            else:
                print(f"  warning: {dest.type} cannot carry a category{why}; "
                      f"{folder.category!r} will not reach the service")
        for note in getattr(cls, "check_warnings", lambda *_: [])(dest.options, folder):
            print(f"  warning: {note}")
    if args.online:
        from syncd.daemon import build_client, build_destinations
        from syncd.errors import UploadError, describe

        client = build_client(cfg)
        try:
            for name, live in build_destinations(cfg, client).items():
                try:
                    print(f"destination {name}: {live.probe()}")
                except UploadError as exc:
                    ok = False
                    print(f"error: destination {name}: {describe(exc)}")
        finally:
            client.close()
    return EXIT_OK if ok else EXIT_CONFIG


def cmd_explain(args: argparse.Namespace) -> int:
    cfg = _load(args, secrets=False)
    path = os.path.abspath(os.fspath(args.path))
    print(explain(cfg, path))
    return EXIT_OK


def explain(cfg: configmod.Config, path: str) -> str:
    """A human-readable answer to "will this file be uploaded, and why (not)?"."""
    folder = None
    for f in cfg.folders:
        root = os.fspath(f.path)
        if path.startswith(root + os.sep):
            folder = f
            break
        for d in (f.archive_dir, f.failed_dir):
            if d is not None and (path + os.sep).startswith(os.fspath(d) + os.sep):
                return f"{qp(path)} is in the archive/failed folder of {qp(root)}; it is not uploaded"
    if folder is None:
        return f"{qp(path)} is not inside any watched folder"
    root = os.fspath(folder.path)
    rel = path[len(root) + 1:]
    lines = [f"{qp(path)}: folder {qp(root)} -> destination {folder.destination!r}"]
    for d in folder.ignored_dirs():
        if (path + os.sep).startswith(os.fspath(d) + os.sep):
            return lines[0] + f"\n  not uploaded: inside {qp(os.fspath(d))}, which syncd never watches"
    if not folder.recursive and "/" in rel:
        return lines[0] + "\n  not uploaded: in a sub-folder and the folder has recursive = false"
    verdict = rules.judge(rel, include=folder.include, exclude=folder.exclude,
                          ignore_junk=folder.ignore_junk)
    if not verdict.accepted:
        return lines[0] + f"\n  not uploaded: {verdict.reason}"
    lines.append(f"  rules: {verdict.reason}")
    try:
        st = os.lstat(path)
        import stat as st_mod

        if not st_mod.S_ISREG(st.st_mode):
            from syncd.settle import describe_mode

            lines.append(f"  not uploaded: it is a {describe_mode(st.st_mode)}")
            return "\n".join(lines)
    except FileNotFoundError:
        st = None
    ledger = _open_ledger(cfg)
    row = None
    if ledger is not None:
        try:
            row = ledger.latest_for_path(root, rel)
        finally:
            ledger.close()
    if row is None:
        if st is None:
            lines.append("  no such file, and the ledger has never seen it")
        else:
            lines.append("  not seen yet: the watcher or the next scan will pick it up, then it "
                         f"settles for {folder.settle_seconds:g}s before upload")
        return "\n".join(lines)
    lines.append(f"  ledger row #{row.id} ({row.uuid}): {row.state}")
    if row.state == "settling":
        left = folder.settle_seconds - (time.time() - row.changed_at)
        lines.append(f"  settling: waiting until it has been unchanged for {folder.settle_seconds:g}s"
                     f" ({max(left, 0):.1f}s left if it stays quiet)")
    elif row.state in ("queued", "uploading"):
        lines.append(f"  {row.state}, attempt {row.attempts} of {folder.max_attempts}")
    elif row.state == "retrying":
        lines.append(f"  attempt {row.attempts} failed: {_shown(row.last_error)}")
        lines.append(f"  next attempt {_stamp(row.next_attempt_at)}")
    elif row.state in ("uploaded", "done"):
        lines.append(f"  uploaded {_stamp(row.uploaded_at)} sha256 {row.sha256}")
        if row.receipt:
            lines.append(f"  remote: {_shown(row.receipt.get('remote_id'))}")
        if row.state == "done":
            where = f" -> {qp(row.location)}" if row.location else ""
            lines.append(f"  after upload ({folder.after_upload}) done {_stamp(row.done_at)}{where}")
        if st is not None and row.location is not None:
            lines.append("  the file now at this path is a new version; it will be uploaded too")
    elif row.state == "failed":
        lines.append(f"  failed: {_shown(row.last_error)}")
        if row.location:
            lines.append(f"  moved to {qp(row.location)}; `syncd retry {row.id}` sends it again")
    elif row.state == "vanished":
        lines.append(f"  {_shown(row.last_error)}")
    return "\n".join(lines)


def cmd_init(args: argparse.Namespace) -> int:
    from syncd import config_edit

    path = args.path or _config_path(args)
    try:
        config_edit.write_initial(Path(path), force=args.force)
    except FileExistsError:
        print(f"syncd: {path} exists; use --force to overwrite it", file=sys.stderr)
        return EXIT_CONFIG
    print(f"wrote {path}; edit it, then `syncd -c {path} check`")
    return EXIT_OK


def cmd_folder(args: argparse.Namespace) -> int:
    from syncd import config_edit

    extra: dict[str, Any] = {}
    if args.after_upload:
        extra["after_upload"] = args.after_upload
    if args.archive_dir:
        extra["archive_dir"] = args.archive_dir
    if args.failed_dir:
        extra["failed_dir"] = args.failed_dir
    path = _config_path(args)
    config_edit.add_folder(path, args.path, destination=args.destination, labels=args.label,
                           category=args.category, **extra)
    print(f"added folder {args.path} -> {args.destination} to {path}")
    pid = holder_pid(Path(configmod.load(path).daemon.state_dir))
    if pid:
        print(f"syncd is running (pid {pid}): `systemctl reload syncd` or `kill -HUP {pid}` "
              "applies it")
    return EXIT_OK


def cmd_ledger(args: argparse.Namespace) -> int:
    from syncd.daemon import ledger_path
    from syncd.lock import StateLock

    cfg = _load(args, secrets=False)
    path = ledger_path(cfg)
    if args.ledger_command == "check":
        ledger = Ledger.open(path, readonly=True)
        try:
            result = ledger.integrity_check()
        finally:
            ledger.close()
        print(f"{path}: {result}")
        return EXIT_OK if result == "ok" else EXIT_LEDGER
    if args.ledger_command == "backup":
        return _backup_ledger(path, Path(args.dest))
    with StateLock(Path(cfg.daemon.state_dir)):
        stamp = time.strftime("%Y%m%d-%H%M%S")
        moved = []
        for suffix in ("", "-wal", "-shm"):
            p = Path(str(path) + suffix)
            if p.exists():
                target = Path(f"{path}.broken-{stamp}{suffix}")
                os.replace(p, target)
                os.chmod(target, 0o600)  # a ledger's content, the owner's only
                moved.append(target)
        Ledger.open(path).close()
    for m in moved:
        print(f"moved {m.name} aside")
    print(f"new ledger at {path}; files still in the folders will be uploaded at the next start")
    return EXIT_OK


def _backup_ledger(path: Path, dest: Path) -> int:
    import sqlite3

    if dest.exists():
        print(f"syncd: {dest} exists; choose a new name", file=sys.stderr)
        return EXIT_CONFIG
    if not path.exists():
        raise LedgerError(f"no ledger at {path} (has syncd run with this config?)")
    partial = dest.with_name(dest.name + ".partial")
    partial.unlink(missing_ok=True)
    source = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        make_private(partial)  # 0600 before SQLite writes a byte (its journal copies the mode)
        target = sqlite3.connect(partial)
        try:
            source.backup(target)  # one step: one consistent snapshot
        finally:
            target.close()
    except sqlite3.Error as exc:
        partial.unlink(missing_ok=True)
        raise LedgerError(f"cannot back up {path}: {exc}") from None
    finally:
        source.close()
    copy = Ledger.open(partial, readonly=True)
    try:
        result = copy.integrity_check()
        rows = sum(copy.counts().values())
    finally:
        copy.close()
    if result != "ok":
        print(f"syncd: the copy failed its integrity check ({result}); kept as {partial}",
              file=sys.stderr)
        return EXIT_LEDGER
    os.replace(partial, dest)
    print(f"backed up {path} to {dest} ({rows} rows, integrity ok)")
    return EXIT_OK


_COMMANDS = {
    "run": cmd_run, "once": cmd_once, "status": cmd_status, "files": cmd_files,
    "retry": cmd_retry, "check": cmd_check, "explain": cmd_explain, "init": cmd_init,
    "folder": cmd_folder, "ledger": cmd_ledger,
}

logging.getLogger("syncd").addHandler(logging.NullHandler())
