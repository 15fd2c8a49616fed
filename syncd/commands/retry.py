"""`syncd retry`: failed files back into the queue.

``retry ID ...`` requeues exactly those rows (exit 1 when one of them is not a
failed row: it is named and left alone). ``retry --failed`` requeues every
failed row except the ones the service refused for good (a
:class:`~syncd.errors.PermanentError`: 400, 413, a file it cannot hold...),
which would fail again at once; it says how many it skipped and why.
``--all`` (or ``--force``) requeues those too, for when the cause was fixed
(a config change, a server-side fix). A file whose destination the config no
longer has (and no destination ``replaces``) goes where its folder's files go
now, with the folder's labels and category, and the command says so.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

from syncd.commands.common import EXIT_FAILED, EXIT_OK, load, open_ledger
from syncd.config import Config
from syncd.ledger import Ledger, Row, State
from syncd.lock import holder_pid
from syncd.logs import quoted_path

# How the uploader records a refusal that retrying cannot change (errors.describe()).
PERMANENT_PREFIXES = ("PermanentError",)
SHOW_IDS = 10


def refused_for_good(row: Row) -> bool:
    """Whether the row failed on a PermanentError (not on attempts running out)."""
    return (row.last_error or "").startswith(PERMANENT_PREFIXES)


def where_now(ledger: Ledger, cfg: Config, row: Row) -> tuple[Row, str]:
    """``row`` as requeued, and what to say of it: a destination the config no longer has
    (nor any ``replaces``: the daemon hands such files over) gives way to its folder's."""
    known = set(cfg.destinations).union(*(d.replaces for d in cfg.destinations.values()))
    folder = next((f for f in cfg.folders if os.fspath(f.path) == row.folder), None)
    if row.destination in known:
        away = f" (it waits: its folder {quoted_path(row.folder)} is no longer configured)"
        return row, "" if folder is not None else away
    gone = f"{row.destination!r} is no longer configured"
    if folder is None or not ledger.retarget(
        row.id, destination=folder.destination, labels=folder.labels, category=folder.category
    ):
        return row, f" (it waits: {gone}, nor is its folder)"
    return replace(row, destination=folder.destination), f" for {folder.destination!r}, its folder's ({gone})"


def cmd_retry(args: argparse.Namespace) -> int:
    cfg = load(args, secrets=False)
    ledger = open_ledger(cfg, readonly=False)
    assert ledger is not None
    code = EXIT_OK
    skipped: list[Row] = []
    try:
        if args.failed:
            failed = ledger.rows(state=State.FAILED)
            if not args.all:
                skipped = [r for r in failed if refused_for_good(r)]
            keep = {r.id for r in skipped}
            asked = [r.id for r in failed if r.id not in keep]
            rows = ledger.requeue_failed(asked)
        else:
            ids: list[int] = []
            for i in dict.fromkeys(args.ids):
                row = ledger.get(i)
                if row is None:
                    print(
                        f"syncd: #{i}: no such ledger row (`syncd files --state failed` "
                        "lists the failed ones)",
                        file=sys.stderr,
                    )
                    code = EXIT_FAILED
                elif row.state != State.FAILED:
                    print(f"syncd: #{i} is {row.state}, not a failed file; left alone", file=sys.stderr)
                    code = EXIT_FAILED
                else:
                    ids.append(i)
            asked = ids
            rows = ledger.requeue_failed(ids) if ids else []
        moved = [where_now(ledger, cfg, r) for r in rows]
    finally:
        ledger.close()
    left = sorted(set(asked) - {r.id for r in rows})
    for i in left:
        print(
            f"syncd: #{i} left failed: it failed where it was, and its path now holds a newer "
            "version of the file, which is in the ledger already (`syncd explain PATH` says where)",
            file=sys.stderr,
        )
    if left and not args.failed:
        code = EXIT_FAILED
    for r, note in moved:
        if not os.path.lexists(r.current_path):  # deleted by hand since it failed
            note += " (but no file is at that path now: it ends as vanished unless one is put back)"
        print(f"requeued #{r.id} {quoted_path(r.current_path)}{note}")
    if skipped:
        listed = ", ".join(f"#{r.id}" for r in skipped[:SHOW_IDS])
        more = f" and {len(skipped) - SHOW_IDS} more" if len(skipped) > SHOW_IDS else ""
        print(
            f"skipped {len(skipped)} file(s) the service refused for good, which would fail "
            f"again at once ({listed}{more}); `syncd retry --failed --all` or "
            "`syncd retry ID` sends them anyway"
        )
    if not rows:
        print("nothing requeued" if skipped or code != EXIT_OK else "nothing to retry")
    elif holder_pid(Path(cfg.daemon.state_dir)) is None:
        print("syncd is not running: they will be uploaded at its next start (or run `syncd once`)")
    return code
