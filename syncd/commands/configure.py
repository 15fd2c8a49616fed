"""`syncd check`, `syncd init` and `syncd folder add`."""

from __future__ import annotations

import argparse
import os
import resource
import sys
from pathlib import Path
from typing import Any

from syncd import config as configmod
from syncd import descriptors, limits, redact
from syncd.commands.common import EXIT_CONFIG, EXIT_OK, config_path, load
from syncd.errors import ConfigError
from syncd.lock import holder_pid
from syncd.logs import quoted_path

SYSTEM_CONFIG_DIR = "/etc"  # a config written below it gets the service's absolute paths


def _plain_http_off_host(url: str) -> bool:
    """Whether ``url`` is ``http://`` to a host other than this one (loopback: the emulator,
    a local proxy)."""
    import ipaddress
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme.lower() != "http":
        return False
    host = parts.hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True


def cmd_check(args: argparse.Namespace) -> int:
    from syncd.destinations import REGISTRY

    cfg = load(args, strict_dirs=True)
    ok = True
    print(
        f"config {config_path(args)}: valid ({len(cfg.folders)} folder(s), "
        f"{len(cfg.destinations)} destination(s))"
    )
    for n, folder in enumerate(cfg.folders):
        root = os.fspath(folder.path)
        dest = cfg.destinations[folder.destination]
        cls = REGISTRY[dest.type]
        # What these options can deliver, and the type's own warnings (destinations/base.py).
        caps_for = getattr(cls, "capabilities_for", None)
        caps = caps_for(dest.options) if caps_for is not None else cls.CAPABILITIES
        why = f" {caps.note}" if caps.note else ""
        print(f"folder {quoted_path(root)} -> {folder.destination} ({dest.type})")
        if not os.path.isdir(root):
            # Not a config error (docs/configuration.md): the daemon waits for the folder.
            print(
                f"  warning: folders[{n}].path: {quoted_path(root)} does not exist yet; syncd run "
                "waits for it (create it, or fix the path)"
            )
        # (what is sent, as shown, the noun in "cannot carry ...", where the service keeps it)
        sent = (
            (folder.labels, f"{list(folder.labels)}", "labels", "labels", "are", caps.labels),
            (folder.category, f"{folder.category!r}", "category", "a category", "is", caps.category),
        )
        for value, shown_value, name, kind, verb, carried_as in sent:
            if value and carried_as:
                print(f"  {name} {shown_value} {verb} delivered as {carried_as}")
            elif value:
                print(
                    f"  warning: {dest.type} cannot carry {kind}{why}; "
                    f"{shown_value} will not reach the service"
                )
        per_file = [k for k in ("labels_from_path", "metadata_sidecar") if getattr(folder, k)]
        if per_file and not caps.labels:
            print(
                f"  warning: {dest.type} cannot carry labels{why}; the labels that "
                f"{' and '.join(per_file)} add will not reach the service"
            )
        for note in getattr(cls, "check_warnings", lambda *_: [])(dest.options, folder):
            print(f"  warning: {note}")
    for name, dest in cfg.destinations.items():
        url = getattr(dest.options, "base_url", "")
        if _plain_http_off_host(url):
            print(
                f"destination {name}: warning: base_url {redact.redact(url)} is plain HTTP to another host: "
                "credentials cross the network readable, and a byte changed on the way is not "
                "detected (use https://)"
            )
    _check_descriptors(cfg)
    if args.online:
        from syncd.destinations.build import build_client, build_destinations
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


def _check_descriptors(cfg: configmod.Config) -> None:
    """The descriptors the config may hold at once, against the limit syncd would have here
    (the soft limit raised to the hard one, as `syncd run` does; a unit's LimitNOFILE= is its own)."""
    need = descriptors.needed(cfg)
    limit = limits.raised_nofile()
    here = "unlimited" if limit == resource.RLIM_INFINITY else str(limit)
    print(f"descriptors: up to {need.total} at once ({need.said()}); the limit here: {here}")
    if (short := descriptors.check(cfg, limit)) is not None:
        print(f"warning: {short}")


def is_system_path(path: Path) -> bool:
    """A config under /etc: its relative paths would resolve under /etc."""
    return Path(os.path.abspath(path)).is_relative_to(SYSTEM_CONFIG_DIR)


def cmd_init(args: argparse.Namespace) -> int:
    from syncd import config_edit

    path = Path(args.path or config_path(args))
    system = is_system_path(path)
    try:
        config_edit.write_initial(path, force=args.force, system=system)
    except FileExistsError:
        print(f"syncd: {path} exists; use --force to overwrite it", file=sys.stderr)
        return EXIT_CONFIG
    print(f"wrote {path}")
    doc = config_edit.starter_config(system)
    folder = doc["folders"][0]
    where = (
        "absolute paths, the service's layout"
        if system
        else f"relative paths, resolved against {os.path.dirname(os.path.abspath(path))}"
    )
    print(
        f"  ({where}): state_dir {doc['daemon']['state_dir']!r}, folder {folder['path']!r}, "
        f"archive_dir {folder['archive_dir']!r}"
    )
    print(f"edit it, then `syncd -c {path} check`")
    return EXIT_OK


def cmd_folder(args: argparse.Namespace) -> int:
    """`folder add`: paths relative to the current directory, like any command's, written
    absolute; the edited config is validated (without reading secrets) before it is written."""
    from syncd import config_edit

    def absolute(p: str) -> str:
        return os.path.abspath(os.path.expanduser(p))

    extra: dict[str, Any] = {}
    if args.after_upload:
        extra["after_upload"] = args.after_upload
    if args.archive_dir:
        extra["archive_dir"] = absolute(args.archive_dir)
    if args.failed_dir:
        extra["failed_dir"] = absolute(args.failed_dir)
    path = config_path(args)
    folder = absolute(args.path)
    for given in (folder, *extra.values()):
        if isinstance(given, str) and not _utf8(given):
            print(
                f"syncd: {quoted_path(given)} is not valid UTF-8, which a TOML config cannot hold: "
                "rename the folder (or give another path)",
                file=sys.stderr,
            )
            return EXIT_CONFIG
    notes = config_edit.add_folder(
        path, folder, destination=args.destination, labels=args.label, category=args.category, **extra
    )
    given = (
        "" if os.path.isabs(os.path.expanduser(args.path)) else f" ({args.path!r} from the current directory)"
    )
    print(f"added folder {quoted_path(folder)}{given} -> {args.destination} to {path}")
    for note in notes:  # what `syncd check` would warn about, and comments the rewrite lost
        print(f"syncd: warning: {note}", file=sys.stderr)
    if not os.path.isdir(folder):
        print(f"  warning: {quoted_path(folder)} does not exist yet; syncd run waits for it")
    try:
        state_dir = configmod.load(path, resolve_secrets=False).daemon.state_dir
    except ConfigError:  # changed by someone else since; what we wrote was valid
        return EXIT_OK
    pid = holder_pid(Path(state_dir))
    if pid:
        print(f"syncd is running (pid {pid}): `systemctl reload syncd` or `kill -HUP {pid}` applies it")
    return EXIT_OK


def _utf8(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:  # an undecodable byte, kept by Python as a lone surrogate
        return False
    return True
