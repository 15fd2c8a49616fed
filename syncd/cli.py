"""The ``syncd`` command line.

Exit codes: 0 ok, 1 some files failed, 2 usage or config error, 3 another
instance holds the lock, 4 the ledger is unusable.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import logging
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from syncd import __version__, limits, systemd
from syncd.commands import forget
from syncd.commands.argtypes import positive, seconds
from syncd.commands.common import (  # the exit codes, also for tests and scripts
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_LEDGER,
    EXIT_LOCKED,
    EXIT_OK,
)
from syncd.commands.common import load as _load
from syncd.errors import ConfigError, LedgerError, LedgerUnreachable, LockedError
from syncd.ledger import STATES
from syncd.logs import quoted_path
from syncd.logs import setup as setup_logging
from syncd.once import RETRY_WAIT
from syncd.redact import redact

EPILOG = """\
examples:
  syncd -c /etc/syncd/config.toml check          validate the config (add --online to probe services)
  syncd run                                      the daemon, in the foreground (systemd runs this)
  syncd once                                     upload what is in the folders now, then exit
  syncd status                                   counts per state and folder, recent errors
  syncd status --watch                           the same every 2 s, with each upload's progress
  syncd files --state failed                     list failed files with their reasons
  syncd retry --failed                           send failed files through the pipeline again
  syncd explain /srv/inbox/contracts/a.pdf       why this file will or will not be uploaded
  syncd ledger forget --folder /srv/inbox/old    retire the waiting files of a folder removed for good
  syncd init ./syncd.toml                        write a starter config
  syncd folder add /srv/inbox/scans --destination contracts --label scan --category SOURCE
  syncd unit --install                           install the systemd unit and its snippets
  syncd reload                                   reload the daemon's config, wait for the outcome
  syncd emulate --listen 127.0.0.1:8790          local emulator of every supported service

The config is --config/-c, else $SYNCD_CONFIG, else /etc/syncd/config.toml.
Exit codes: 0 ok, 1 not everything was done (files failed or left for the next
`once`, an ID `retry` left alone, a reload with no daemon to answer), 2 usage or
config error, 3 another instance is running, 4 the ledger is unusable, 130 Ctrl-C.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="syncd",
        description="Watch-folder upload daemon: files dropped into folders are "
        "uploaded to the configured service with their labels, ledgered, then archived.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "-c", "--config", type=Path, help="config file (default: $SYNCD_CONFIG, then /etc/syncd/config.toml)"
    )
    p.add_argument("--version", action="version", version=f"syncd {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def cmd(name: str, help: str, **kw: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, **kw)

    r = cmd("run", "run the daemon in the foreground (what systemd runs)")
    r.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        type=str.lower,
        help="override daemon.log_level",
    )
    o = cmd("once", "ingest what is in the folders now, upload, archive, exit (exit 1 if any file failed)")
    o.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        type=str.lower,
        help="override daemon.log_level",
    )
    o.add_argument("--no-progress", action="store_true", help="no progress line on a terminal")
    o.add_argument(
        "--max-wait",
        type=functools.partial(seconds, zero=True),
        default=RETRY_WAIT,
        metavar="SECONDS",
        help=f"wait for retries and rate limits that end within SECONDS (default "
        f"{RETRY_WAIT:g}); files whose next try is later are left for the next run (exit 1)",
    )
    s = cmd(
        "status",
        "counts per state and per folder, uploads in flight with their "
        "progress, recent errors, daemon health (works with a broken config)",
    )
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument(
        "--watch",
        nargs="?",
        type=seconds,
        const=2.0,
        metavar="SECONDS",
        help="show it again every SECONDS (default 2) until Ctrl-C, on a cleared "
        "screen (with --json: one JSON document per line)",
    )
    f = cmd("files", "list ledger rows (uploading ones with their progress)")
    f.add_argument("--state", choices=STATES, help="only rows in this state")
    f.add_argument("--limit", type=positive, default=None, help="at most this many rows (newest)")
    f.add_argument("--json", action="store_true", help="machine-readable output")
    f.add_argument(
        "--receipt",
        type=positive,
        metavar="ID",
        help="the receipt of row ID as JSON, "
        "with its signed or private URLs whole (needs the destination's secret)",
    )
    rt = cmd("retry", "requeue failed files; files in failed_dir go back through the pipeline")
    g = rt.add_mutually_exclusive_group(required=True)
    g.add_argument(
        "--failed",
        action="store_true",
        help="every failed file, except those the service refused for good (they would fail again at once)",
    )
    g.add_argument(
        "ids",
        nargs="*",
        type=positive,
        default=[],
        metavar="ID",
        help="ledger row ids (exit 1 if one is not a failed row)",
    )
    rt.add_argument(
        "--all",
        "--force",
        dest="all",
        action="store_true",
        help="with --failed: the files the service refused for good too",
    )
    c = cmd("check", "validate the config; --online also probes each destination")
    c.add_argument("--online", action="store_true", help="contact each destination (no upload)")
    e = cmd(
        "explain",
        "why this file will or will not be uploaded, or what became of it "
        "(exit 2 if it does not exist and the ledger never saw it)",
    )
    e.add_argument(
        "path", type=Path, help="a file, a watched folder, or a file in an archive or failed folder"
    )
    i = cmd(
        "init",
        "write a starter config (refuses to overwrite); one under /etc gets the "
        "service's absolute paths (/var/lib/syncd, /srv/syncd)",
    )
    i.add_argument("path", nargs="?", type=Path, help="where (default: the --config path)")
    i.add_argument("--force", action="store_true", help="overwrite an existing file")
    fo = cmd("folder", "edit the [[folders]] of the config")
    fsub = fo.add_subparsers(dest="folder_command", metavar="ACTION")
    fsub.required = True
    fa = fsub.add_parser("add", help="add a watched folder", description="add a watched folder")
    fa.add_argument("path", help="the folder to watch (relative to the current directory; written absolute)")
    fa.add_argument("--destination", "-d", required=True, help="a [destinations.NAME] name")
    fa.add_argument("--label", "-l", action="append", default=[], help="a label (repeatable)")
    fa.add_argument("--category", help="the category")
    fa.add_argument("--after-upload", choices=["archive", "delete", "keep"])
    fa.add_argument("--archive-dir")
    fa.add_argument("--failed-dir")
    lg = cmd("ledger", "ledger maintenance")
    lsub = lg.add_subparsers(dest="ledger_command", metavar="ACTION")
    lsub.required = True
    lr = lsub.add_parser(
        "rebuild",
        help="move an unusable ledger aside and start a new one",
        description="Move the damaged ledger aside and start a new one with every row "
        "that can still be read from it (done, skipped, failed, vanished, forgotten, uploaded). Files "
        "still in the inbox whose rows were lost are uploaded again (at-least-once); "
        "archived files are not. A ledger that passes its integrity check is left alone "
        "unless --force is given.",
    )
    lr.add_argument(
        "--force",
        action="store_true",
        help="rebuild a ledger that passes its integrity check too (its queued and retrying "
        "files lose their rows and resume points, and are found again in the inbox)",
    )
    lsub.add_parser("check", help="run SQLite's integrity check on the ledger")
    lb = lsub.add_parser(
        "backup",
        help="copy the ledger safely, also while syncd runs",
        description="Copy the ledger with SQLite's online backup API (a "
        "consistent snapshot even while the daemon writes), check the copy's "
        "integrity, then give it its name. Never copy ledger.sqlite3 with cp: "
        "its -wal file holds the latest commits.",
    )
    lb.add_argument("dest", help="the file to write (must not exist)")
    forget.add_parser(lsub)
    systemd.add_parsers(cmd)  # unit, reload
    cmd(
        "emulate",
        "local emulator of every supported service (see `syncd emulate --help`)",
        add_help=False,
        prefix_chars="\0",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _first_positional(argv)
    if command is not None and argv[command] == "emulate":
        from syncd_emulator import main as emulate_main

        return emulate_main(argv[command + 1 :])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0) if exc.code in (0, None) else EXIT_CONFIG
    handler = _COMMANDS[args.command]
    try:
        return handler(args)
    except ConfigError as exc:
        print(f"syncd: configuration error in {redact(str(exc))}", file=sys.stderr)
        return EXIT_CONFIG
    except LockedError as exc:
        print(f"syncd: {exc}", file=sys.stderr)
        return EXIT_LOCKED
    except LedgerError as exc:
        print(f"syncd: {exc}", file=sys.stderr)
        return EXIT_FAILED if isinstance(exc, LedgerUnreachable) else EXIT_LEDGER
    except BrokenPipeError:
        if not _reader_gone():
            raise  # another pipe or socket: not ours to hide
        # `syncd files | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 128 + signal.SIGPIPE
    except (OSError, RuntimeError) as exc:
        if (kind := limits.shortage(exc)) is not None:  # too few for even the daemon's own threads
            print(f"syncd: {limits.explain(kind, exc)}: cannot run; raise the limit", file=sys.stderr)
            return EXIT_FAILED
        if args.command == "run" or not isinstance(exc, OSError):
            raise  # unexpected in the daemon: a traceback and exit 1, which systemd restarts
        return _os_error_exit(exc)
    except KeyboardInterrupt:
        return 130


def _os_error_exit(exc: OSError) -> int:
    """One line for an OSError of a command (exit 2): no traceback for an operator's slip."""
    if isinstance(exc, PermissionError):
        print(
            f"syncd: {_os_error(exc)}; run it as the user syncd runs as (sudo -u syncd) or as root",
            file=sys.stderr,
        )
    else:  # a missing folder for a backup, a config file that is not there
        print(f"syncd: {_os_error(exc)}", file=sys.stderr)
    return EXIT_CONFIG


def _reader_gone() -> bool:
    """Whether the reader of stdout went away (a pipe closed at its other end)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(event & select.POLLERR for _, event in poller.poll(0))
    except (OSError, ValueError):  # no descriptor (captured), or closed
        return False


# ----------------------------------------------------------------- helpers


def _os_error(exc: OSError) -> str:
    """``cannot open '/var/lib/syncd/lock': Permission denied``, escaped and masked."""
    what = exc.strerror or str(exc)
    return redact(f"{quoted_path(os.fsdecode(exc.filename))}: {what}" if exc.filename else what)


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


# ---------------------------------------------------------------- commands


def cmd_run(args: argparse.Namespace, *, once: bool = False) -> int:
    from syncd.daemon import Daemon, early_signals

    early_signals()
    cfg = _load(args)
    setup_logging(args.log_level or cfg.daemon.log_level, cfg.daemon.log_format)
    daemon = Daemon(cfg, once=once, once_wait=getattr(args, "max_wait", RETRY_WAIT))
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
    held = f"; {daemon.held_back} left for the next run" if daemon.held_back else ""
    held += f"; {daemon.unread} folder(s) not read" if daemon.unread else ""
    print(
        f"syncd once: finished in {time.monotonic() - started:.1f}s"
        + (f" ({_summary(counts)}{held})" if counts else "")
    )
    return code


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
        sys.stdout.write(
            f"\r{c['done']} done, {c['queued'] + c['retrying']} queued, "
            f"{c['uploading']} uploading, {c['settling']} settling, "
            f"{c['failed']} failed \033[K"
        )
        sys.stdout.flush()


def cmd_once(args: argparse.Namespace) -> int:
    return cmd_run(args, once=True)


# status, files, retry, check, explain, init and folder add live in syncd/commands/.


def _deferred(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    """Command ``name`` of ``module``, imported when it runs: `syncd once` and `syncd
    status`, run every minute or every few seconds, do not import each other's code."""

    def command(args: argparse.Namespace) -> int:
        handler: Callable[[argparse.Namespace], int] = getattr(importlib.import_module(module), name)
        return handler(args)

    return command


_COMMANDS = {
    "run": cmd_run,
    "once": cmd_once,
    "status": _deferred("syncd.commands.status", "cmd_status"),
    "files": _deferred("syncd.commands.files", "cmd_files"),
    "retry": _deferred("syncd.commands.retry", "cmd_retry"),
    "check": _deferred("syncd.commands.configure", "cmd_check"),
    "explain": _deferred("syncd.commands.explain", "cmd_explain"),
    "init": _deferred("syncd.commands.configure", "cmd_init"),
    "folder": _deferred("syncd.commands.configure", "cmd_folder"),
    "ledger": _deferred("syncd.commands.ledger", "cmd_ledger"),
}
_COMMANDS.update(systemd.COMMANDS)

logging.getLogger("syncd").addHandler(logging.NullHandler())

__all__ = ["EXIT_CONFIG", "EXIT_FAILED", "EXIT_LEDGER", "EXIT_LOCKED", "EXIT_OK", "build_parser", "main"]
