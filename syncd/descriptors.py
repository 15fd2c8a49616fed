"""The file descriptors a configuration may hold at once, and the look at the limit at start.

syncd raises its soft ``RLIMIT_NOFILE`` to the hard one at start
(:func:`syncd.limits.raise_nofile`). A limit still below what the
configuration may hold at once works, slower: whatever runs out (a file's
open, a connection, an archive move, a folder's lock) waits and is tried
again, and :class:`syncd.limits.Shortages` says so once it happens.
:func:`check` says it at start instead, with the figure and what to raise:
the daemon and ``syncd once`` log it once as a WARNING (:func:`warn`),
``syncd check`` prints it. Nothing refuses to start over it.

:func:`needed` counts, from the code that holds them:

* syncd itself (:data:`PROCESS`, :data:`MAIN`, :data:`SCANNER`, :data:`ARCHIVER`):
  stdin, stdout and stderr (the log), the state directory's lock
  (``lock.py``), the ledger (the database, its ``-wal`` and ``-shm``, and the
  WAL descriptor ``Ledger.sync`` fdatasyncs), the ``sd_notify`` socket; the
  main loop's looks (a settle look's lease probe and the directory it opens
  the file from); the scanner's walk (the folder, the directory it lists,
  ``scandir``'s own copy, the one it looks beneath); the archiver's move of a
  file no worker holds;
* the watcher (:data:`WATCHER`): watchdog's one inotify instance and the
  pipe that stops its reader, when a folder is watched with inotify;
* each folder (:data:`PER_FOLDER`): its lock (``folder_lock.py``, a socket);
* each worker (:data:`PER_WORKER`): the file it sends, the directory it
  opened it from, the archive folder it moves it into, one more while a path
  is walked or a cross-device copy written, and two connections (an API call
  beside a storage request, as ``destinations/build.py`` sizes the pool);
* the parts of multipart uploads in flight: a connection each, for every
  destination with ``parallel_parts`` above 1, at most ``workers`` ×
  ``parallel_parts`` and at most its ``max_connections``;
* each upload helper (:data:`PER_HELPER`): the daemon's end of its socket
  pair, and while one starts (:data:`HELPER_START`) the other end,
  ``Popen``'s error pipe and the ``/dev/null`` it gives the helper as stdin;
* the webhook's connections (:data:`WEBHOOK`); metrics (:data:`METRICS`: the
  listening socket, its event loop's epoll and self-pipe, and the clients it
  keeps open at once, ``syncd.metrics.MAX_CONNECTIONS``).

:data:`MARGIN` more is what comes and goes besides: the config and secrets
read at a reload, a TLS trust store loaded, a module imported late.
"""

from __future__ import annotations

import logging
import resource
from dataclasses import dataclass
from typing import TYPE_CHECKING

from syncd import limits

if TYPE_CHECKING:
    from syncd.config import Config

log = logging.getLogger(__name__)

PROCESS = 3 + 1 + 4 + 1  # std streams, state lock, ledger (db, -wal, -shm, the WAL's fd), sd_notify
MAIN = 2  # the main loop's looks: a lease probe and the directory the file is opened from
SCANNER = 4  # a walk: the folder, the directory listed, scandir's copy of it, a look beneath
ARCHIVER = 5  # one archive move of a file no worker holds
WATCHER = 3  # watchdog's inotify instance and its reader's stop pipe
PER_FOLDER = 1  # the folder's lock
PER_WORKER = 4 + 2  # file, its directory, the archive folder, one walked or copied; 2 connections
PER_HELPER = 1  # the daemon's end of the helper's socket pair
HELPER_START = 4  # while one starts: the helper's end of the pair, Popen's error pipe, /dev/null
WEBHOOK = 2  # the webhook client's connections (webhook.py)
METRICS = 4  # the listening socket, the event loop's epoll and its self-pipe
MARGIN = 16  # what comes and goes besides


@dataclass(frozen=True)
class Need:
    """The descriptors a configuration may hold at once, and what holds them."""

    total: int
    shares: tuple[tuple[str, int], ...]  # (what, how many), for the message

    @property
    def limit(self) -> int:
        """The least descriptor limit that holds them with :data:`MARGIN` to spare."""
        return self.total + MARGIN

    def said(self) -> str:
        """``192 for 32 workers, 4 for 1 folder, ...``."""
        return ", ".join(f"{n} for {what}" for what, n in self.shares if n)


def needed(cfg: Config, *, watch: bool = True) -> Need:
    """What ``cfg`` may hold at once (``watch``: folders watched, not ``syncd once``)."""
    d = cfg.daemon
    parts = 0
    for dest in cfg.destinations.values():
        per_file = getattr(dest.options, "parallel_parts", 1)
        if per_file > 1:
            parts += min(getattr(dest.options, "max_connections", per_file), d.workers * per_file)
    helpers = d.upload_processes * PER_HELPER + (HELPER_START if d.upload_processes else 0)
    inotify = watch and any(f.observer == "native" for f in cfg.folders)
    metrics = 0
    if d.metrics_listen:
        from syncd.metrics import MAX_CONNECTIONS  # (prometheus_client: only when metrics are on)

        metrics = METRICS + MAX_CONNECTIONS
    shares = (
        (_count(d.workers, "worker"), d.workers * PER_WORKER),
        ("parallel parts", parts),
        (_count(d.upload_processes, "upload helper"), helpers),
        (_count(len(cfg.folders), "folder"), len(cfg.folders) * PER_FOLDER + (WATCHER if inotify else 0)),
        ("metrics", metrics),
        ("the webhook", WEBHOOK if d.webhook_url is not None else 0),
        ("syncd itself", PROCESS + MAIN + SCANNER + ARCHIVER),
    )
    return Need(sum(n for _, n in shares), shares)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def check(cfg: Config, limit: int, *, watch: bool = True) -> str | None:
    """What to say when ``limit`` descriptors cannot hold what ``cfg`` may need (else None)."""
    need = needed(cfg, watch=watch)
    if limit == resource.RLIM_INFINITY or limit >= need.limit:
        return None
    return (
        f"the descriptor limit ({limit}) is below what this configuration may hold at once: "
        f"{need.total} ({need.said()}), and {MARGIN} to spare; files will wait for descriptors "
        f"(slower, nothing fails). Raise it to at least {need.limit}: LimitNOFILE= in the unit "
        "(a drop-in, systemctl edit syncd) or ulimit -n where syncd is started by hand; "
        "or lower workers, parallel_parts or upload_processes"
    )


def warn(cfg: Config, *, watch: bool = True) -> None:
    """At start, after :func:`syncd.limits.raise_nofile`: one WARNING when the limit is short."""
    said = check(cfg, limits.nofile()[0], watch=watch)
    if said is not None:
        log.warning("%s", said)
