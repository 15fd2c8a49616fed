"""``syncd ledger forget --folder PATH``: retire the files still on their way of a folder
the configuration no longer has.

A folder removed from the config (and reloaded, or restarted) leaves its waiting rows
(settling, queued, retrying, ...) active for ever: they wait for it to be configured
again, and ``syncd status`` lists the folder. This command ends them ``forgotten``
(:meth:`syncd.ledger.routing.Routing.forget_folder`) and touches no file: the files stay
where they are. Configured again later, the folder's files are ledgered and uploaded as
new files (a forgotten row is no finished version of a file).

Refused (exit 2) when PATH is a configured folder, when the running daemon still watches
it (the config file edited, not reloaded), or when the ledger has no row of it.

While a daemon runs (the lock on ``state_dir`` is held) the rows a worker may hold are
left alone and named: ``uploading`` ones, and ``uploaded`` ones (their after-upload step
may be under way); exit 1 then, with what to do (:data:`_AGAIN`). With syncd stopped the
command holds the lock while it works, so no daemon starts meanwhile, and retires every
active row. ``--dry-run`` says what it would do and changes nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from syncd.commands.common import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_OK,
    LEDGER_NAME,
    applied_view,
    config_path,
    load,
)
from syncd.errors import LockedError
from syncd.ledger import ACTIVE_STATES, CONFIG_KEY, SCHEMA_VERSION, Ledger, State
from syncd.ledger.routing import Forgotten
from syncd.lock import StateLock, holder_pid
from syncd.logs import quoted_path

# what a worker of a running daemon may hold: left alone while one runs
HELD = (State.UPLOADING, State.UPLOADED)
# An uploaded file of a folder the running daemon does not have waits for that folder as
# long as it runs (the archiver takes only configured folders' files): those go only with
# syncd stopped. An uploading one is uploaded (then waits the same way) or retried.
_AGAIN = (
    "Uploading ones: run this again once they are done (`syncd status`). Uploaded ones wait "
    "for their folder for as long as syncd runs without it: run this with syncd stopped to "
    "retire them"
)


def add_parser(lsub: Any) -> None:
    """``forget`` under ``syncd ledger``."""
    lf = lsub.add_parser(
        "forget",
        help="retire the waiting files of a folder the configuration no longer has",
        description="A folder removed from the config leaves its files that were still on "
        "their way waiting in the ledger for it to come back. This ends their rows in state "
        "`forgotten`; the files stay where they are (nothing is deleted or moved). If the "
        "folder is configured again later, its files are uploaded as new files. Works while "
        "syncd runs, except for the files being uploaded or just uploaded (it says which, and what to do).",
    )
    lf.add_argument(
        "--folder",
        required=True,
        metavar="PATH",
        help="the removed folder, as `syncd status` names it (relative to the current directory)",
    )
    lf.add_argument("--dry-run", "-n", action="store_true", help="say what it would do; change nothing")


def _spellings(given: str) -> list[str]:
    """The ways ``given`` may be written in the ledger: absolute, and with symlinks resolved
    (as the config resolves a folder's path)."""
    absolute = os.path.normpath(os.path.abspath(given))
    return list(dict.fromkeys((absolute, os.path.realpath(given))))


def _counts(states: dict[str, int]) -> str:
    return ", ".join(f"{n:,} {s}" for s, n in states.items() if n) or "none"


def cmd_forget(args: argparse.Namespace) -> int:
    cfg = load(args, secrets=False)
    state_dir = Path(cfg.daemon.state_dir)
    given = args.folder
    spellings = _spellings(given)
    configured = {os.fspath(f.path) for f in cfg.folders}
    if (watched := next((p for p in spellings if p in configured), None)) is not None:
        print(
            f"syncd: {quoted_path(watched)} is a watched folder in {config_path(args)}: its files "
            "are uploaded, not forgotten. Remove its [[folders]] entry and reload first",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    ledger_file = state_dir / LEDGER_NAME
    if not ledger_file.exists():
        print(
            f"syncd: the ledger has no file of {quoted_path(given)} (no ledger at {ledger_file})",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    lock: StateLock | None = None
    running = holder_pid(state_dir) is not None
    if not args.dry_run:
        lock = StateLock(state_dir)
        try:  # held while we work: no daemon starts and takes a row meanwhile
            lock.acquire()
            running = False
        except LockedError:
            lock, running = None, True
    try:
        if running and not args.dry_run and (older := _older_schema(ledger_file)) is not None:
            print(
                f"syncd: the running syncd is an older syncd (its ledger is at schema {older}, this "
                f"syncd's is {SCHEMA_VERSION}), or one still starting: forgetting would upgrade the "
                "ledger under it and write a state it does not know. Restart it on this version "
                "first (`systemctl restart syncd`), then run this again; --dry-run shows what it "
                "would do",
                file=sys.stderr,
            )
            return EXIT_CONFIG
        ledger = Ledger.open(ledger_file, readonly=args.dry_run)
        try:
            return _forget(args, ledger, state_dir, spellings, running)
        finally:
            ledger.close()
    finally:
        if lock is not None:
            lock.release()


def _older_schema(ledger_file: Path) -> int | None:
    """The schema of a ledger an older syncd made and uses (it does not know ``forgotten``:
    a row in that state fails it, and the upgrade to the current schema makes one of its
    version refuse the ledger at its next start); None when it is the current one."""
    ledger = Ledger.open(ledger_file, readonly=True)
    try:
        version = ledger.schema_version()
    finally:
        ledger.close()
    return version if version < SCHEMA_VERSION else None


def _forget(
    args: argparse.Namespace, ledger: Ledger, state_dir: Path, spellings: list[str], running: bool
) -> int:
    by_folder = ledger.counts_by_folder()
    root = next((p for p in spellings if p in by_folder), None)
    if root is None:
        print(
            f"syncd: the ledger has no file of {quoted_path(spellings[0])}: nothing to forget "
            "(`syncd status` lists the folders the configuration no longer has, as the ledger names them)",
            file=sys.stderr,
        )
        return EXIT_CONFIG

    def watched() -> bool:
        """Whether the running daemon has the folder, as it records its configuration at
        every start and applied reload."""
        applied = applied_view(ledger.get_meta(CONFIG_KEY), config_path(args), state_dir)
        return applied is not None and root in {f.path for f in applied.folders}

    if running and watched():
        print(
            f"syncd: the running syncd still watches {quoted_path(root)}: the config file no "
            "longer has it, but that is not applied yet. Run `syncd reload` first",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    states = tuple(s for s in ACTIVE_STATES if not (running and s in HELD))
    # asked again in the write's transaction: a reload may put the folder back meanwhile
    done = ledger.forget_folder(root, states, dry_run=args.dry_run, unless=watched if running else None)
    if done.watched:
        print(
            f"syncd: the running syncd watches {quoted_path(root)} again (a reload put it back "
            "just now): its files are uploaded, not forgotten. Nothing was changed",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    now = ledger.counts_by_folder().get(root, {})
    held = {str(s): now.get(s, 0) for s in HELD} if running else {}
    if args.dry_run:
        _say_dry(root, done, held)
        return EXIT_OK
    if not done.total and not any(held.values()):
        print(f"nothing to forget: no file of {quoted_path(root)} is on its way ({_counts(now)})")
        return EXIT_OK
    if done.total:
        _say_done(root, done)
    if any(held.values()):
        print(
            f"syncd: left {sum(held.values()):,} file(s) of {quoted_path(root)} alone "
            f"({_counts(held)}): the running syncd may hold them now. {_AGAIN}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return EXIT_OK


def _say_done(root: str, done: Forgotten) -> None:
    print(
        f"forgot {done.total:,} file(s) of {quoted_path(root)}, a folder the configuration no longer "
        f"has ({_counts(done.states)}): their rows are now `forgotten` (`syncd files --state forgotten`)"
    )
    print("the files were left where they are: nothing was deleted or moved")
    _notes(done)


def _say_dry(root: str, done: Forgotten, held: dict[str, int]) -> None:
    if done.total:
        print(
            f"would forget {done.total:,} file(s) of {quoted_path(root)} ({_counts(done.states)}); "
            "their files would stay where they are. Nothing was changed (run it without --dry-run)"
        )
        _notes(done)
    else:
        print(f"nothing to forget: no file of {quoted_path(root)} is on its way")
    if any(held.values()):
        print(
            f"while syncd runs it would leave {sum(held.values()):,} file(s) alone ({_counts(held)}): "
            f"the running syncd may hold them. {_AGAIN}"
        )


def _notes(done: Forgotten) -> None:
    if done.elsewhere:
        print(f"{done.elsewhere:,} of them are outside the folder (in a failed folder), and stay there")
    if uploaded := done.states.get(State.UPLOADED, 0):
        print(
            f"{uploaded:,} of them had been uploaded already (their after_upload step never ran); "
            "if the folder is configured again, they are uploaded again"
        )
    print("if the folder is configured again, its files are ledgered and uploaded as new files")
