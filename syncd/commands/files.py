"""`syncd files`: the ledger's rows, newest first, and one row's receipt.

Rows being uploaded carry the daemon's progress snapshot (see
syncd/progress.py), as in `syncd status`. Works when the config file is
broken (see :mod:`.common`), except ``--receipt``, which needs the secrets.

A receipt is the service's text (a remote id, URLs): both views mask what
looks like a secret in it (:func:`syncd.redact.redact`), except the URLs
``--receipt`` opens from their seal on purpose, and print JSON whose control
and bidi characters are escapes (:func:`syncd.logs.printable_json`).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from syncd import progress as progressmod
from syncd.commands.common import EXIT_FAILED, EXIT_OK, load, load_view, open_ledger, shown, stamp
from syncd.ledger import Row, State
from syncd.lock import holder_pid
from syncd.logs import printable_json, quoted_path
from syncd.redact import redact_json


def _path(r: Row) -> str:
    j = r.to_json()
    return f"{j['folder']}/{j['relpath']}"


def _uploading(r: Row, moving: dict[str, Any] | None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": r.id,
        "path": _path(r),
        "destination": r.destination,
        "size": r.size,
        "attempts": r.attempts,
        "progress": None,
    }
    if moving is not None:
        entry["progress"] = {
            k: moving.get(k)
            for k in ("sent", "total", "percent", "rate", "eta_seconds", "started_at", "as_of")
        }
    return entry


def cmd_files(args: argparse.Namespace) -> int:
    if args.receipt is not None:
        return _show_receipt(args)
    view = load_view(args)
    ledger = open_ledger(view.state_dir)
    rows: list[Row] = []
    moving: dict[int, dict[str, Any]] = {}
    if ledger is not None:
        try:
            limit = None if args.limit is None else max(args.limit, 0)
            rows = ledger.rows(state=args.state, limit=limit, newest=True)
            if args.state in (None, "uploading"):
                moving = progressmod.read(ledger.get_meta(progressmod.KV_KEY), holder_pid(view.state_dir))
        finally:
            ledger.close()
    if args.json:
        out = []
        for r in rows:
            j = r.to_json()
            j["receipt"], j["last_error"] = redact_json(j.get("receipt")), redact_json(j.get("last_error"))
            if r.state == State.UPLOADING:
                j["progress"] = _uploading(r, moving.get(r.id))["progress"]
            out.append(j)
        print(printable_json(out, indent=2))
        return EXIT_OK
    if not rows:
        print("no files" + (f" in state {args.state}" if args.state else ""))
        return EXIT_OK
    for r in rows:
        where = r.location or r.inbox_path
        extra = f"  ({shown(r.last_error)})" if r.last_error and r.state != State.DONE else ""
        if r.state == State.UPLOADING and r.id in moving:
            extra = f"  [{progressmod.line(moving[r.id])}]" + extra
        print(
            f"#{r.id:<6} {r.state:<9} {r.size if r.size is not None else '-':>10}  "
            f"{stamp(r.updated_at)}  {quoted_path(where)}{extra}"
        )
    return EXIT_OK


def _show_receipt(args: argparse.Namespace) -> int:
    """``syncd files --receipt ID``: the row's receipt, with the URLs its destination keeps
    sealed (signed download URLs, private-video tokens) opened with the secret in the config."""
    from syncd.destinations import REGISTRY
    from syncd.destinations._receipts import SEALED_KEY

    cfg = load(args)  # with secrets: a seal opens only with the destination's own secret
    ledger = open_ledger(cfg)
    row = None
    if ledger is not None:
        try:
            row = ledger.get(args.receipt)
        finally:
            ledger.close()
    if row is None or not row.receipt:
        print(
            f"syncd: #{args.receipt} "
            + ("has no receipt (not uploaded)" if row is not None else "is not a ledger row"),
            file=sys.stderr,
        )
        return EXIT_FAILED
    stored = dict(row.receipt)
    receipt = stored
    dest = cfg.destinations.get(row.destination)
    reveal = getattr(REGISTRY[dest.type], "reveal_receipt", None) if dest is not None else None
    if dest is not None and reveal is not None:
        try:
            receipt = reveal(dest.options, receipt)
        except ValueError as exc:
            print(f"syncd: warning: #{args.receipt}: {exc}", file=sys.stderr)
    elif dest is None and SEALED_KEY in receipt:
        print(
            f"syncd: warning: #{args.receipt}: its destination {row.destination!r} is no longer "
            "configured, so its sealed URLs stay sealed (they open with that destination's secret)",
            file=sys.stderr,
        )
    opened = {k for k, v in receipt.items() if k not in stored or stored[k] != v}  # from the seal
    shown = {k: v if k in opened else redact_json(v) for k, v in receipt.items()}
    print(printable_json(shown, indent=2))
    return EXIT_OK


__all__ = ["cmd_files"]
