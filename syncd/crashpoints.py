"""Deterministic crash points for crash-recovery tests ("step mode").

Every durability point of syncd (a ledger commit, an archive link or copy, an
unlink) calls :func:`point`. With ``SYNCD_CRASH_AT`` unset this is a single
comparison. Set, it makes the process die with ``os._exit(137)``, exactly as
if SIGKILL had arrived right after that point:

``SYNCD_CRASH_AT=7``
    the 7th durability point of any kind;
``SYNCD_CRASH_AT=archive.placed``
    the first point with that name; ``archive.placed:3`` the third.

Names: ``ledger.<verb>`` after a commit (``ledger.checkpoint``,
``ledger.uploaded``, ``ledger.duplicate`` (a skip recorded), ``ledger.archive_target``,
``ledger.sidecar_target``, ``ledger.done`` ...), ``ledger.<verb>.synced`` after the
group commit's fsync that a durable verb waited for (``ledger.archive_target.synced``:
the target and the "uploaded" commit before it are on disk, the link not yet made),
``archive.copied`` (cross-device copy fsynced, not yet linked),
``archive.placed`` (the archive name exists, the source not yet unlinked),
``archive.renamed_aside`` (the source renamed aside, ``.syncd-unlinking-...``, not
yet looked at or unlinked) and ``archive.unlinked``. The tests advance the crash point one step at a time,
like SQLite's crash tests, until a run completes without reaching it.
"""

from __future__ import annotations

import os
import sys
import threading

_spec = os.environ.get("SYNCD_CRASH_AT", "").strip()
_lock = threading.Lock()
_counts: dict[str, int] = {}
_total = 0

if _spec.isdigit():
    _target_name, _target_n = "", int(_spec)
elif _spec:
    name, _, n = _spec.partition(":")
    _target_name, _target_n = name, int(n or 1)
else:
    _target_name, _target_n = "", 0


def point(name: str) -> None:
    """A durability point was passed; die here if this is the configured one."""
    if not _target_n:
        return
    global _total
    with _lock:
        _total += 1
        _counts[name] = _counts.get(name, 0) + 1
        hit = (
            (_total == _target_n)
            if not _target_name
            else (name == _target_name and _counts[name] == _target_n)
        )
    if hit:
        sys.stderr.write(f"syncd: crash point {name} reached (SYNCD_CRASH_AT={_spec})\n")
        sys.stderr.flush()
        os._exit(137)
