"""Each table of the config file, parsed and checked on its own.

``[daemon]`` (:func:`parse_daemon`), the ``[destinations.NAME]`` tables
(:func:`parse_destinations`: the keys every type takes, then the type's
``Options``) and the ``[[folders]]`` array (:func:`parse_folders`: a
folder's keys, the rules between them, and its destination by name). Each
appends its problems and returns what parsed; the rules between folders are
:mod:`syncd.config.checks`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from syncd import bandwidth, metadata, redact, rules
from syncd._options import dotted, is_http_url, parse_options, show, suggest
from syncd.config.checks import check_own_dirs
from syncd.config.model import DaemonConfig, DestinationConfig, FolderConfig
from syncd.destinations.options import OPTIONS
from syncd.errors import Problem
from syncd.secrets import describe_ref

# a host name is dot-separated labels of letters, digits and inner hyphens ("a..b" is
# not one: the resolver refuses it with a UnicodeError, not an OSError)
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"  # "_" too: /etc/hosts, Docker names
_HOST_PORT = re.compile(rf"(?:\[[0-9A-Fa-f:.]+\]|{_LABEL}(?:\.{_LABEL})*\.?):(?P<port>\d{{1,5}})\Z")


def parse_daemon(
    raw: Any, base_dir: Path, problems: list[Problem], resolve_secrets: bool = True
) -> DaemonConfig | None:
    """The ``[daemon]`` table with the rules between its keys; None when it has an error.
    ``resolve_secrets=False``: its secrets (the webhook's) are checked, not read."""
    level = raw.get("log_level") if isinstance(raw, dict) else None
    if isinstance(level, str) and level.lower() in ("debug", "info", "warning", "error"):
        raw = {**raw, "log_level": level.lower()}  # "INFO" as well as "info"
    daemon: DaemonConfig | None = parse_options(
        DaemonConfig,
        raw,
        prefix="daemon",
        base_dir=base_dir,
        problems=problems,
        resolve_secrets=resolve_secrets,
    )
    if daemon is None:
        return None
    errors = len(problems)
    if daemon.retry_max_seconds < daemon.retry_base_seconds:
        problems.append(
            Problem(
                "daemon.retry_max_seconds",
                (
                    f"must be >= retry_base_seconds ({daemon.retry_base_seconds:g}), "
                    f"got {daemon.retry_max_seconds:g}"
                ),
            )
        )
    listen = _HOST_PORT.match(daemon.metrics_listen)
    if daemon.metrics_listen and (not listen or not 1 <= int(listen["port"]) <= 65535):
        problems.append(
            Problem(
                "daemon.metrics_listen",
                (
                    'expected "HOST:PORT" ("127.0.0.1:8791", "[::1]:8791") with a port 1-65535, '
                    f'or "" for off; got {show(daemon.metrics_listen)}'
                ),
            )
        )
    hook = daemon.webhook_url
    if hook is not None and hook.reveal() and not is_http_url(hook.reveal()):  # "" when
        problems.append(
            Problem(
                "daemon.webhook_url",
                (  # secrets are only checked
                    "must be an absolute URL starting with https:// or http:// and naming a host, "
                    f"got {describe_ref(hook.source)}"
                ),
            )
        )
    elif hook is not None and hook.reveal():
        # Chat webhooks carry their token in the path; a receiver that answers "no route
        # for /hooks/T000/B000/XYZ" would put it in the log through the error text.
        # (Short paths such as /notify are left alone: they would mask ordinary words.)
        parts = urlsplit(hook.reveal())
        for part in (parts.path, parts.query):
            if len(part) >= 16:
                redact.register(part)
    failed = len(problems) > errors
    if daemon.webhook_secret is not None and hook is None:
        problems.append(
            Problem("daemon.webhook_secret", "is not used without webhook_url", severity="warning")
        )
    if not daemon.tls_verify:
        problems.append(
            Problem(
                "daemon.tls_verify",
                (
                    "TLS certificate verification is OFF: uploads can be intercepted. "
                    "Use ca_bundle for a private CA instead"
                ),
                severity="warning",
            )
        )
    return None if failed else daemon


def parse_destinations(
    raw: Any, base_dir: Path, problems: list[Problem], resolve_secrets: bool
) -> dict[str, DestinationConfig]:
    """Every ``[destinations.NAME]`` table that parsed, by name (``type`` picks the Options)."""
    out: dict[str, DestinationConfig] = {}
    if not isinstance(raw, dict):
        problems.append(Problem("destinations", f"expected [destinations.NAME] tables, got {_what(raw)}"))
        return out
    valid = ", ".join(sorted(OPTIONS))
    for name, table in raw.items():
        prefix = dotted("destinations", name)
        kind = table.get("type") if isinstance(table, dict) else None
        if not isinstance(table, dict):
            problems.append(Problem(prefix, f"expected a table [{prefix}], got {_what(table)}"))
        elif not name.strip():
            problems.append(Problem(prefix, "destination names must not be empty"))
        elif kind is None:
            problems.append(Problem(f"{prefix}.type", f"required key is missing (valid: {valid})"))
        elif not isinstance(kind, str) or kind not in OPTIONS:
            problems.append(Problem(f"{prefix}.type", f"unknown type {show(kind)} (valid: {valid})"))
        else:
            # The keys every type takes (bandwidth.KEYS, replaces) are read here, the rest by
            # the type.
            rest = {k: v for k, v in table.items() if k != "type"}
            options = parse_options(
                OPTIONS[kind],
                rest,
                prefix=prefix,
                base_dir=base_dir,
                problems=problems,
                resolve_secrets=resolve_secrets,
                shared_keys=(*bandwidth.KEYS, REPLACES),
            )
            limit = bandwidth.parse(table, prefix=prefix, base_dir=base_dir, problems=problems)
            replaces = _replaces(table.get(REPLACES, []), f"{prefix}.{REPLACES}", problems)
            if options is not None and limit is not None and replaces is not None:
                out[name] = DestinationConfig(
                    name=name, type=kind, options=options, bandwidth=limit, replaces=replaces
                )
    _check_replaced(raw, out, problems)
    return out


REPLACES = "replaces"


def _replaces(value: Any, key: str, problems: list[Problem]) -> tuple[str, ...] | None:
    """``replaces``: names of destinations that are no longer configured."""
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        problems.append(Problem(key, f"expected an array of destination names, got {show(value)}"))
        return None
    return tuple(dict.fromkeys(value))


def _check_replaced(raw: dict[str, Any], out: dict[str, DestinationConfig], problems: list[Problem]) -> None:
    """A replaced name is not configured itself, and only one destination replaces it."""
    taken: dict[str, str] = {}
    for name, dest in out.items():
        for old in dest.replaces:
            key = f"{dotted('destinations', name)}.{REPLACES}"
            if old in raw:
                problems.append(
                    Problem(key, f"{old!r} is a configured destination; only a removed one can be replaced")
                )
            elif old in taken:
                problems.append(Problem(key, f"{old!r} is replaced by {taken[old]!r} already"))
            else:
                taken[old] = name


def _what(value: object) -> str:
    """The kind of a value, for places where the value itself may be a misplaced secret."""
    kinds = {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "a table",
    }
    return kinds.get(type(value), "a date/time")


def parse_folders(
    raw: Any,
    defined: list[str],
    base_dir: Path,
    state_dir: Path,
    problems: list[Problem],
    resolve_secrets: bool,
) -> list[tuple[int, FolderConfig]]:
    """The folders that parsed, with their index; ``defined``: all destination names."""
    if raw is None or raw == []:
        problems.append(Problem("", "no [[folders]] defined"))
        return []
    if not isinstance(raw, list):
        problems.append(Problem("folders", f"expected an array of tables ([[folders]]), got {show(raw)}"))
        return []
    used: set[str] = set()
    out: list[tuple[int, FolderConfig]] = []
    for i, table in enumerate(raw):
        prefix = f"folders[{i}]"
        if not isinstance(table, dict):
            problems.append(Problem(prefix, f"expected a table ([[folders]]), got {show(table)}"))
            continue
        # Checked on the raw value, so it is reported even when other keys are broken.
        name = table.get("destination")
        if isinstance(name, str) and name:
            used.add(name)
            if name not in defined:
                problems.append(
                    Problem(
                        f"{prefix}.destination",
                        (
                            f"no destination named {name!r}{suggest(name, defined)} "
                            f"(defined: {', '.join(defined) or 'none'})"
                        ),
                    )
                )
        folder: FolderConfig | None = parse_options(
            FolderConfig,
            table,
            prefix=prefix,
            base_dir=base_dir,
            problems=problems,
            resolve_secrets=resolve_secrets,
        )
        if folder is not None and _check_folder(prefix, table, folder, state_dir, problems):
            folder = folder.with_defaults(state_dir)
            check_own_dirs(prefix, folder, problems)
            out.append((i, folder))
    for name in defined:
        if name not in used:
            problems.append(
                Problem(dotted("destinations", name), "not used by any folder", severity="warning")
            )
    return out


def _check_folder(
    prefix: str, table: Mapping[str, Any], folder: FolderConfig, state_dir: Path, problems: list[Problem]
) -> bool:
    """Rules between one folder's keys; False when one of them is broken."""
    errors = len(problems)
    if folder.max_settle_seconds and folder.max_settle_seconds < folder.settle_seconds:
        problems.append(
            Problem(
                f"{prefix}.max_settle_seconds",
                (
                    f"must be 0 (never force) or >= settle_seconds ({folder.settle_seconds:g}), "
                    f"got {folder.max_settle_seconds:g}"
                ),
            )
        )
    if folder.path == state_dir:
        problems.append(Problem(f"{prefix}.path", f"{folder.path} is daemon.state_dir; watch another folder"))
    if folder.marker is not None:
        if "/" in folder.marker or folder.marker in (".", ".."):
            problems.append(
                Problem(
                    f"{prefix}.marker", (f"must be a file name in the folder itself, got {folder.marker!r}")
                )
            )
        elif rules.judge(
            folder.marker, include=folder.include, exclude=folder.exclude, ignore_junk=folder.ignore_junk
        ).accepted:
            problems.append(
                Problem(
                    f"{prefix}.marker",
                    (
                        f"{folder.marker!r} would itself be uploaded and archived; use a dot-file "
                        "such as '.syncd-root', or add it to exclude"
                    ),
                )
            )
    if folder.labels_from_path is not None:
        try:
            metadata.compile_pattern(folder.labels_from_path)
        except ValueError as exc:
            problems.append(
                Problem(f"{prefix}.labels_from_path", f"{exc}; got {show(folder.labels_from_path)}")
            )
    failed = len(problems) > errors
    if folder.after_upload != "archive" and "archive_dir" in table:
        problems.append(
            Problem(
                f"{prefix}.archive_dir",
                (f"is not used because after_upload = {folder.after_upload!r}"),
                severity="warning",
            )
        )
    return not failed


__all__ = ["parse_daemon", "parse_destinations", "parse_folders"]
