"""The validated config as frozen dataclasses: one class per table.

:class:`DaemonConfig` is ``[daemon]``, :class:`FolderConfig` one
``[[folders]]`` entry, :class:`DestinationConfig` one
``[destinations.NAME]`` table (its keys are the type's ``Options``, from
:mod:`syncd.destinations.options`), and :class:`Config` the whole file.
Every key is a field whose metadata (``doc``, bounds, choices, ...) drives
both parsing and the documentation, as :mod:`syncd._options` describes;
:mod:`syncd.config` builds these, and the rules between tables live there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from syncd import bandwidth
from syncd.errors import Problem
from syncd.secrets import Secret

# Placeholder for a failed_dir not given in the table; FolderConfig.with_defaults replaces it.
# The NUL makes every file-system call on it fail, so it can never be used by mistake.
_DERIVED_DIR = Path("\0<state_dir>/failed/<folder basename>")


T = TypeVar("T")


# Upper bounds of durations (seconds): far beyond any sensible setting, and far below what
# timers and timestamps can hold (1e300 passed the checks and failed every upload).
HOUR, DAY, WEEK = 3600.0, 86400.0, 604800.0


def _key(default: T, doc: str, **meta: Any) -> T:
    """A config key with a default; ``meta`` as described in :mod:`syncd._options`."""
    return field(default=default, metadata={"doc": doc, **meta})


def _required(doc: str, **meta: Any) -> Any:
    return field(metadata={"doc": doc, **meta})


@dataclass(frozen=True)
class DaemonConfig:
    """The ``[daemon]`` table: process-wide settings."""

    state_dir: Path = _key(Path("state"), "Ledger, lock file, and default archive/failed folders.", dir=True)
    workers: int = _key(4, "Uploader threads.", min=1, max=64)
    rescan_seconds: float = _key(300.0, "Interval of the safety rescan of every folder.", min=1, max=WEEK)
    upload_processes: int = _key(
        0,
        "Helper processes that send small files (up to 8 MiB) for the workers, so uploads use "
        "more than one CPU core; 0 = the workers send everything.",
        min=0,
        max=64,
    )
    keep_done_days: int = _key(
        0,
        "Days the ledger keeps the row of a file that was archived (done, skipped) or vanished; "
        "0 = for good. Rows of files left in place, and of failed files, are always kept.",
        min=0,
        max=36500,
    )
    log_level: str = _key("info", "Log verbosity.", choices=("debug", "info", "warning", "error"))
    log_format: str = _key("text", "json: one object per line.", choices=("text", "json"))
    drain_seconds: float = _key(
        30.0, "Graceful stop: how long in-flight uploads may take to finish.", min=0, max=DAY
    )
    metrics_listen: str = _key("", '"HOST:PORT" to serve metrics on ("[::1]:8791" for IPv6); "" = off.')
    retry_base_seconds: float = _key(
        2.0, "Delay before the first retry; later retries back off up to the maximum.", gt=0, max=WEEK
    )
    retry_max_seconds: float = _key(
        600.0, "Longest retry delay; must be >= retry_base_seconds.", gt=0, max=WEEK
    )
    connect_timeout: float = _key(10.0, "TCP/TLS connect timeout, seconds.", gt=0, max=HOUR)
    io_timeout: float = _key(60.0, "Read/write timeout per socket operation, seconds.", gt=0, max=DAY)
    ca_bundle: Path | None = _key(
        None, "Extra CA bundle (PEM) to trust for TLS, e.g. a company CA.", file=True
    )
    tls_verify: bool = _key(True, "Verify TLS certificates; false (tests only) is a warning.")
    webhook_url: Secret | None = _key(
        None,
        "POST a JSON notification here when a file fails for good and when a destination "
        "goes down or comes back: the http(s) URL, or a secret reference to it (env:/file:/"
        "credential:), since many webhook URLs embed a token.",
    )
    webhook_secret: Secret | None = _key(
        None,
        "Signs every notification: header X-Syncd-Signature-256: sha256=<hex HMAC-SHA256 "
        "of the body with this secret>.",
    )


_TEXT = {"nonempty": True, "no_control": True}
_JUNK = (
    "Skip junk and partial names: .DS_Store, ._*, Thumbs.db, desktop.ini, *.part, "
    "*.partial, *.tmp, *.crdownload, ~$*, .~lock.*#, dot-files."
)


@dataclass(frozen=True)
class FolderConfig:
    """One ``[[folders]]`` entry: a watched folder and what happens to its files."""

    path: Path = _required(
        "The watched folder; need not exist yet (`syncd check` reports it, the daemon retries).", dir=True
    )
    destination: str = _required("Name of the [destinations.NAME] to upload to.", **_TEXT)
    labels: tuple[str, ...] = _key(
        (), "Labels sent with every file (if the destination type carries labels).", **_TEXT
    )
    category: str | None = _key(
        None, "Category sent with every file (if the destination type carries one).", **_TEXT
    )
    include: tuple[str, ...] = _key(
        ("*",), "Globs on the path relative to the folder; a file must match one.", nonempty=True, min_items=1
    )
    exclude: tuple[str, ...] = _key(
        (), "Globs of files to skip, in addition to the built-in junk list.", nonempty=True
    )
    ignore_junk: bool = _key(True, _JUNK)
    recursive: bool = _key(True, "Also watch sub-folders.")
    settle_seconds: float = _key(
        2.0, "A file is finished once size, mtime and inode stay unchanged this long.", min=0, max=DAY
    )
    max_settle_seconds: float = _key(
        0.0,
        "0 = never force; else (>= settle_seconds) upload a file still changing after this long.",
        min=0,
        max=WEEK,
    )
    observer: str = _key(
        "native",
        "native (inotify), or polling for network shares where inotify sees nothing.",
        choices=("native", "polling"),
    )
    poll_seconds: float = _key(5.0, "Interval of the polling observer.", gt=0, max=HOUR)
    marker: str | None = _key(
        None,
        "A file that must exist in the folder (e.g. .syncd-root); while it is missing "
        "the folder counts as not mounted and is neither watched nor scanned.",
        **_TEXT,
    )
    after_upload: str = _key(
        "archive",
        "What happens to a file once its upload is confirmed.",
        choices=("archive", "delete", "keep"),
    )
    archive_dir: Path | None = _key(
        None,
        'Where uploaded files go, keeping their sub-path (after_upload = "archive").',
        default_doc="<state_dir>/archive/<folder basename>",
        dir=True,
    )
    failed_dir: Path = _key(
        _DERIVED_DIR,
        "Where files go after a permanent error or max_attempts failures.",
        default_doc="<state_dir>/failed/<folder basename>",
        dir=True,
    )
    max_attempts: int = _key(8, "Upload attempts before a file goes to failed_dir.", min=1)
    allow_unsafe_dirs: bool = _key(
        False,
        "true: accept an archive_dir/failed_dir (or daemon.state_dir) inside this "
        "folder, or one that group/others can write (refused by default: producers could "
        "tamper with it).",
    )
    labels_from_path: str | None = _key(
        None,
        'A pattern such as "{client}/{project}/**": the folder names it captures from a '
        "file's relative path are added to its labels; a file outside it keeps the folder's.",
        **_TEXT,
    )
    metadata_sidecar: bool = _key(
        False,
        'true: NAME.meta.json beside NAME ({"labels": [...], "category": "..."}) adds '
        "labels and sets the category; it moves with its file and is never uploaded itself.",
    )
    on_duplicate: str = _key(
        "upload",
        '"skip": a file with the same SHA-256 as one this folder already uploaded '
        "(to the same destination) is archived without uploading it again.",
        choices=("upload", "skip"),
    )
    state_dir: Path | None = field(default=None, metadata={"internal": True})
    """The daemon's state_dir (set by :meth:`with_defaults`); not a config key."""

    def with_defaults(self, state_dir: Path) -> FolderConfig:
        """A copy with the defaults that depend on ``state_dir`` filled in.

        ``archive_dir`` (only when ``after_upload == "archive"``) becomes
        ``<state_dir>/archive/<folder basename>`` and ``failed_dir``
        ``<state_dir>/failed/<folder basename>`` unless they were set.
        :func:`load` does this; tests that build a FolderConfig by hand
        should too (until then ``failed_dir`` is a placeholder that every
        file-system call rejects).
        """
        name = self.path.name or "root"
        archive = self.archive_dir
        if archive is None and self.after_upload == "archive":
            archive = state_dir / "archive" / name
        failed = state_dir / "failed" / name if self.failed_dir == _DERIVED_DIR else self.failed_dir
        return replace(self, archive_dir=archive, failed_dir=failed, state_dir=state_dir)

    def ignored_dirs(self) -> tuple[Path, ...]:
        """archive_dir, failed_dir and state_dir when they lie inside ``path``.

        The watcher must never watch or ingest these: the daemon writes there.
        """
        out: list[Path] = []
        for d in (self.archive_dir, self.failed_dir, self.state_dir):
            if d is None or d == _DERIVED_DIR or d == self.path or d in out:
                continue
            if d.is_relative_to(self.path):
                out.append(d)
        return tuple(out)


@dataclass(frozen=True)
class DestinationConfig:
    """One ``[destinations.NAME]`` table; ``options`` is an ``OPTIONS[type]``
    (:mod:`syncd.destinations.options`: the ``Options`` of the type's class)."""

    name: str
    type: str
    options: Any
    bandwidth: bandwidth.Limit = bandwidth.Limit()  # bwlimit / bwlimit_schedule, any type
    # `replaces`, any type: destinations gone from the config whose waiting files come here
    replaces: tuple[str, ...] = ()


@dataclass(frozen=True)
class Config:
    """A fully validated config. ``warnings`` holds the Problems of severity "warning"."""

    path: Path | None
    daemon: DaemonConfig
    destinations: Mapping[str, DestinationConfig]
    folders: tuple[FolderConfig, ...]
    warnings: tuple[Problem, ...] = ()


__all__ = ["Config", "DaemonConfig", "DestinationConfig", "FolderConfig"]
