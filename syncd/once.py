"""When ``syncd once`` is done: every file final, or left for the next run.

``once`` uploads what is in the folders now and exits. It does not wait out
what would keep it running for minutes: files of a destination whose circuit
is open (down, refusing uploads, or rate limited for longer than ``wait``,
:data:`RETRY_WAIT` unless ``syncd once --max-wait`` says otherwise), and
files whose next retry is more than ``wait`` away (a server's
``Retry-After``, a backoff grown long).
Those stay where they are, in the ledger, and the next run takes them; the
run says how many and exits 1.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

from syncd.backpressure import DiskFull
from syncd.circuit import DOWN, RATE_LIMITED, REFUSED, CircuitState
from syncd.config import FolderConfig
from syncd.ledger import ACTIVE_STATES, Ledger, State
from syncd.logs import quoted_path

log = logging.getLogger("syncd.daemon")  # said as the daemon's own lines

RETRY_WAIT = 60.0  # by default `once` waits for a retry due within this many seconds, not a later one


def outcome(
    ledger: Ledger, at_start: Mapping[str, int], folders: Mapping[str, FolderConfig]
) -> tuple[dict[str, int], int]:
    """At the end of a run: files done and failed since ``at_start`` (the ledger's counts
    then), and how many files of ``folders`` are left for the next run, in a state that
    is not final (the waits of :func:`left_for_next_run`, and what a stop signal cut
    short or a folder that is away kept)."""
    counts = ledger.counts()
    finished = {s: counts[s] - at_start[s] for s in ("done", "failed")}
    return finished, _active(ledger.counts_by_folder(), folders)


def unread(folders: Mapping[str, FolderConfig], problem: Callable[[str], str | None]) -> int:
    """How many of ``folders`` could not be read when scanned or at the end of the run (missing,
    unmounted, another syncd's...), each said: their files, if any, are not even known."""
    count = 0
    for root in folders:
        why = problem(root)
        if why is not None:
            log.warning(
                "not read: %s (%s); its files wait for a run that can read it",
                quoted_path(root),
                why,
            )
            count += 1
    return count


def _active(by_folder: Mapping[str, Mapping[str, int]], folders: Mapping[str, FolderConfig]) -> int:
    """Files of ``folders`` in a state that is not final."""
    return sum(by_folder.get(root, {}).get(state, 0) for root in folders for state in ACTIVE_STATES)


def left_for_next_run(
    ledger: Ledger,
    destinations: Mapping[str, CircuitState],
    folders: Mapping[str, FolderConfig],
    clock: Callable[[], float] = time.time,
    *,
    wait: float = RETRY_WAIT,
    open_for_writing: Mapping[str, int] | None = None,
    disk_full: DiskFull | None = None,
    held_open: Mapping[str, int] | None = None,
) -> int | None:
    """None while ``once`` has work to wait for; else how many files it leaves for the
    next run (0: everything reached a final state), each group said in the log.
    ``open_for_writing``: per folder, settling files a process still has open for
    writing (syncd/settle.py): not waited for, however long the writer keeps them.
    ``disk_full``: where the disk is full. A full ledger pauses uploads: every file left
    waits. A full archive folder holds only its uploaded files (in their inbox).
    ``held_open``: per folder, uploaded files a process still has open for writing
    (syncd/hand_over.py): archived or deleted once closed, by a later run."""
    writers = open_for_writing or {}
    by_folder = ledger.counts_by_folder()
    if disk_full is not None and disk_full.paused:
        left = _active(by_folder, folders)
        log.warning(
            "the disk is full (ledger: %s): %d file(s) wait for the next run", disk_full.where["ledger"], left
        )
        return left
    unarchived = {  # uploaded, in a folder whose archive is full: they wait
        root: by_folder.get(root, {}).get(State.UPLOADED, 0)
        for root, folder in folders.items()
        if disk_full is not None and disk_full.archive_full(folder)
    }
    for root, n in (held_open or {}).items():  # uploaded, open for writing: they wait
        if root in folders:
            unarchived[root] = min(
                by_folder.get(root, {}).get(State.UPLOADED, 0), unarchived.get(root, 0) + n
            )
    now = clock()
    held = {
        name: st
        for name, st in destinations.items()
        if st.state in (DOWN, REFUSED)
        or (st.state == RATE_LIMITED and (st.next_probe_at or now) - now > wait)
    }
    waiting: dict[str, int] = {}
    retrying: list[str] = []  # folders whose files left all wait for a retry
    for root, folder in folders.items():
        counts = by_folder.get(root, {})
        kept = unarchived.get(root, 0)
        active = sum(counts.get(state, 0) for state in ACTIVE_STATES) - writers.get(root, 0) - kept
        if active <= 0:
            continue
        busy = counts.get(State.UPLOADING) or counts.get(State.UPLOADED, 0) - kept
        if folder.destination in held and not busy:
            waiting[folder.destination] = waiting.get(folder.destination, 0) + active
        elif active == counts.get(State.RETRYING, 0):
            retrying.append(root)
        else:
            return None
    later = sum(by_folder[root].get(State.RETRYING, 0) for root in retrying)
    first = ledger.first_retry(retrying) if retrying else None
    if retrying and (first is None or first - now <= wait):
        return None  # a retry due soon (or with no time: due now)
    writing = sum(n for root, n in writers.items() if root in folders)
    if writing:
        log.warning(
            "%d file(s) are still open for writing by a process: they wait for the next run",
            writing,
        )
    for name, n in waiting.items():
        log.warning(
            "destination %r is %s (%s): %d file(s) wait for the next run",
            name,
            held[name].state,
            held[name].reason,
            n,
        )
    opened = sum(n for root, n in (held_open or {}).items() if root in folders)
    if opened:
        log.warning(
            "%d uploaded file(s) are still open for writing by a process: they stay in the inbox "
            "for the next run",
            opened,
        )
    if disk_full is not None and disk_full.archives and sum(unarchived.values()) > opened:
        log.warning(
            "an archive folder is full (%s: %s): %d uploaded file(s) stay in the inbox and are "
            "archived by the next run",
            ", ".join(sorted(disk_full.archives)),
            disk_full.where.get("archive"),
            sum(unarchived.values()) - opened,
        )
    if later:
        log.warning(
            "%d file(s) wait for a retry, the first at %s (more than %gs away): they wait for the next run",
            later,
            time.strftime("%H:%M:%S", time.localtime(first)),
            wait,
        )
    return sum(waiting.values()) + later + writing + sum(unarchived.values())
