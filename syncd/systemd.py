"""syncd as a system service: ``syncd unit`` and ``syncd reload``.

``syncd unit`` prints (or installs) the files a distribution package would
install, shipped in the wheel as package data (``syncd/data/``, links to
``systemd/``, ``config.example.toml`` and ``contrib/`` in a checkout): the
unit, the sysusers.d and tmpfiles.d snippets, the example config, the
Grafana dashboard and Prometheus alerting rules, and a drop-in with one
``LoadCredential=`` per ``credential:NAME`` the config uses.

``syncd reload`` is the unit's ``ExecReload=``: it sends SIGHUP to the daemon
and returns only once the daemon has applied the new config (exit 0) or
refused it (exit 2), so ``systemctl reload syncd`` reports a refused config as
a failure and a script that reloads and then acts does not race the daemon.
systemd 252 has no ``Type=notify-reload``, and ``kill -HUP`` returns at once.

How it knows: every reload, applied or refused, ends with the daemon writing
``{"pid", "began", "ok", "problem", ...}`` to the ledger's kv table (key
``reload``, :meth:`syncd.runtime.Runtime.reload`), where ``began`` is
``CLOCK_MONOTONIC`` (one clock for the whole host) when it started reading the
file. A record of that pid whose ``began`` is not before the moment the signal
was sent is the outcome of a reload that read the file after the signal: that
is the answer. Several SIGHUPs may fold into one reload; that reload read the
file after each of them, so it answers each of them.

The daemon's state directory (where the ledger is) comes from the lock the
daemon holds open, found through ``/proc/PID/fd`` when the pid is known (the
unit passes ``$MAINPID``); it does not depend on the config file, which may be
the broken one being refused. Without ``--pid``, the config names the state
directory and its lock names the pid.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from syncd.commands.argtypes import process_id, wait_seconds
from syncd.errors import ConfigError
from syncd.lock import LOCK_NAME, holder_pid
from syncd.secrets import Secret

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
CREDENTIALS_DIR = "/etc/syncd/credentials"

# name in syncd/data -> where `syncd unit --install` puts it (under --root)
SHIPPED = {
    "syncd.service": "etc/systemd/system/syncd.service",
    "syncd.sysusers.conf": "etc/sysusers.d/syncd.conf",
    "syncd.tmpfiles.conf": "etc/tmpfiles.d/syncd.conf",
}
EXAMPLE_CONFIG = "config.example.toml"
GRAFANA_DASHBOARD = "syncd-dashboard.json"  # contrib/grafana/ in the checkout
PROMETHEUS_ALERTS = "syncd-alerts.yml"  # contrib/prometheus/ in the checkout
UNIT_EXEC = "/opt/syncd/bin/syncd"  # the unit's ExecStart= and ExecReload= program


def shipped(name: str) -> str:
    """The text of a file shipped in ``syncd/data`` (package data)."""
    from importlib import resources

    return (resources.files("syncd") / "data" / name).read_text(encoding="utf-8")


# ------------------------------------------------------------------ syncd unit


def add_parsers(cmd: Callable[..., argparse.ArgumentParser]) -> None:
    """Add ``unit`` and ``reload`` with the CLI's ``cmd(name, help)`` helper."""
    u = cmd(
        "unit",
        "print or install the systemd unit, the sysusers/tmpfiles snippets; "
        "print the example config and the monitoring files shipped with syncd",
    )
    what = u.add_mutually_exclusive_group()
    what.add_argument("--sysusers", action="store_true", help="print the sysusers.d snippet")
    what.add_argument("--tmpfiles", action="store_true", help="print the tmpfiles.d snippet")
    what.add_argument(
        "--config-example", action="store_true", help="print config.example.toml (every key with its default)"
    )
    what.add_argument(
        "--grafana-dashboard",
        action="store_true",
        help="print the Grafana dashboard (JSON, for a Prometheus data source scraping syncd)",
    )
    what.add_argument(
        "--prometheus-alerts", action="store_true", help="print the Prometheus alerting rules for syncd"
    )
    what.add_argument(
        "--credentials",
        action="store_true",
        help="print a drop-in with a LoadCredential= line for every credential:NAME the config uses",
    )
    what.add_argument(
        "--install",
        action="store_true",
        help="write the unit to /etc/systemd/system/syncd.service and the "
        "snippets to /etc/sysusers.d/syncd.conf and /etc/tmpfiles.d/syncd.conf",
    )
    u.add_argument(
        "--root",
        type=Path,
        default=Path("/"),
        metavar="DIR",
        help="with --install: install under DIR instead of / (an image)",
    )
    r = cmd(
        "reload",
        "reload the running daemon's config and wait until it is applied "
        "(exit 0) or refused (exit 2); the unit's ExecReload=",
    )
    r.add_argument(
        "--pid",
        type=process_id,
        help="the daemon's pid (default: the holder of the "
        "config's state_dir lock; the unit passes $MAINPID)",
    )
    r.add_argument(
        "--timeout",
        type=wait_seconds,
        default=60.0,
        metavar="SECONDS",
        help="give up after this long (default 60; exit 1)",
    )
    r.add_argument("--no-wait", action="store_true", help="send SIGHUP and return at once")


def cmd_unit(args: argparse.Namespace) -> int:
    if args.install:
        return install(args.root)
    if args.credentials:
        sys.stdout.write(credentials_drop_in(_config_path(args)))
        return EXIT_OK
    flags = {
        "sysusers": "syncd.sysusers.conf",
        "tmpfiles": "syncd.tmpfiles.conf",
        "config_example": EXAMPLE_CONFIG,
        "grafana_dashboard": GRAFANA_DASHBOARD,
        "prometheus_alerts": PROMETHEUS_ALERTS,
    }
    name = next((file for flag, file in flags.items() if getattr(args, flag)), "syncd.service")
    sys.stdout.write(shipped(name))
    return EXIT_OK


def install(root: Path) -> int:
    """Write the unit and the two snippets under ``root`` (0644, folders created)."""
    for name, rel in SHIPPED.items():
        target = root / rel
        text = shipped(name)
        if target.is_symlink() and os.readlink(target) == "/dev/null":
            # `systemctl mask`: an administrator said this must not run; replacing the
            # link would unmask it, and the upgrade's restart would then start it
            print(f"syncd: {target} is masked (a link to /dev/null); left alone", file=sys.stderr)
            return EXIT_FAILED
        try:
            if target.is_file() and target.read_text(encoding="utf-8") == text:
                print(f"{target}: unchanged")
                continue
            target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            partial = target.with_name(target.name + ".partial")
            partial.write_text(text, encoding="utf-8")
            os.chmod(partial, 0o644)
            os.replace(partial, target)
        except OSError as exc:
            print(f"syncd: cannot write {target}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_FAILED
        print(f"wrote {target}")
    here = Path(sys.prefix) / "bin" / "syncd"  # this install's syncd (a venv's bin/)
    if str(here) != UNIT_EXEC:
        print(
            f"note: the unit runs {UNIT_EXEC}; this syncd is {here}: set ExecStart= and "
            "ExecReload= in a drop-in (docs/operations.md, section 5)"
        )
    print("next: systemd-sysusers && systemd-tmpfiles --create syncd.conf && systemctl daemon-reload")
    return EXIT_OK


def credentials_drop_in(config: Path) -> str:
    """A drop-in loading every ``credential:NAME`` secret the config at ``config`` names.

    The config is validated first (a ConfigError otherwise), and only its secret keys
    count: a label that happens to read "credential:x" is not one, and a name the
    checks refuse (a newline in it would start a directive of its own) never gets here.
    """
    from syncd import config as configmod

    cfg = configmod.load(config, resolve_secrets=False)
    names = sorted(set(_credentials(cfg)))
    lines = [
        "# /etc/systemd/system/syncd.service.d/credentials.conf: the secrets that",
        f"# {config} reads as credential:NAME; each file root-owned, mode 0600",
        "[Service]",
    ]
    lines += [f"LoadCredential={n}:{CREDENTIALS_DIR}/{n}" for n in names]
    if not names:
        lines.append("# the config names no credential: secret")
    return "\n".join(lines) + "\n"


def _credentials(cfg: Any) -> Iterator[str]:
    """The credential names of the config's secrets (destinations' and the webhook's)."""
    holders = [cfg.daemon, *(dest.options for dest in cfg.destinations.values())]
    for holder in holders:
        for f in dataclasses.fields(holder):
            value = getattr(holder, f.name)
            if isinstance(value, Secret) and value.source.startswith("credential:"):
                yield value.source.removeprefix("credential:")


# ---------------------------------------------------------------- syncd reload


def cmd_reload(args: argparse.Namespace) -> int:
    found = _find_daemon(args)
    if isinstance(found, str):
        print(f"syncd: {found}", file=sys.stderr)
        return EXIT_FAILED
    pid, state_dir = found
    ledger = None
    if not args.no_wait:
        from syncd.daemon import LEDGER_NAME
        from syncd.ledger import Ledger

        ledger = Ledger.open(state_dir / LEDGER_NAME, readonly=True)
    try:
        sent = time.monotonic()
        try:
            os.kill(pid, signal.SIGHUP)
        except OSError as exc:
            print(f"syncd: cannot signal pid {pid}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_FAILED
        if ledger is None:
            print(f"sent SIGHUP to syncd (pid {pid})")
            return EXIT_OK
        return _wait(ledger, pid, sent, args.timeout)
    finally:
        if ledger is not None:
            ledger.close()


def _wait(ledger: Any, pid: int, sent: float, timeout: float) -> int:
    from syncd.runtime import RELOAD_KEY

    deadline = sent + timeout
    while True:
        record = ledger.get_meta(RELOAD_KEY)
        if isinstance(record, dict) and record.get("pid") == pid and float(record.get("began", -1.0)) >= sent:
            if record.get("ok"):
                print(f"syncd (pid {pid}) reloaded its configuration")
                return EXIT_OK
            print(
                f"syncd: reload refused, still running the previous configuration: {record.get('problem')}",
                file=sys.stderr,
            )
            return EXIT_CONFIG
        if not _alive(pid):
            print(f"syncd: the daemon (pid {pid}) exited before it answered", file=sys.stderr)
            return EXIT_FAILED
        if time.monotonic() >= deadline:
            print(
                f"syncd: no answer from the daemon (pid {pid}) within {timeout:g}s; "
                "see `journalctl -u syncd`",
                file=sys.stderr,
            )
            return EXIT_FAILED
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _find_daemon(args: argparse.Namespace) -> tuple[int, Path] | str:
    """(pid, state_dir) of the daemon to reload, or why there is none. A --pid is
    signalled only when it is a syncd daemon: it holds a state directory's lock."""
    if args.pid is not None:
        held = lock_dir_of(args.pid)
        if held is not None:
            return args.pid, held
    config = _config_path(args)
    state_dir = _state_dir(config)
    if state_dir is None:
        return f"cannot tell which daemon to reload: {config} is not readable TOML" + (
            f" and pid {args.pid} holds no syncd lock"
            if args.pid is not None
            else "; give the daemon's --pid"
        )
    pid = holder_pid(state_dir)
    if args.pid is not None and pid != args.pid:
        return f"pid {args.pid} is not the syncd daemon of {state_dir} (it holds no syncd lock)"
    if pid is None or pid <= 0:
        return f"no daemon is running on {state_dir}"
    return pid, state_dir


def lock_dir_of(pid: int) -> Path | None:
    """The state directory whose ``syncd.lock`` process ``pid`` holds open, or None
    (not a syncd daemon, gone, or its /proc entry is not ours to read)."""
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        fds = list(fd_dir.iterdir())
    except OSError:
        return None
    for fd in fds:
        try:
            target = Path(os.readlink(fd))
        except OSError:
            continue
        if target.name == LOCK_NAME and target.is_absolute():
            return target.parent
    return None


def _state_dir(config: Path) -> Path | None:
    """``daemon.state_dir`` of the config; from the raw TOML when the config is invalid
    otherwise (the daemon is about to refuse it, and the answer is still wanted)."""
    from syncd import config as configmod

    try:
        return Path(configmod.load(config, resolve_secrets=False).daemon.state_dir)
    except ConfigError:
        pass
    try:  # never more than a config may be (/dev/zero given as the config read for good)
        doc = tomllib.loads(configmod.read_config(config)[0].decode("utf-8"))
    except (OSError, ConfigError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    daemon = doc.get("daemon")
    raw = daemon.get("state_dir", "state") if isinstance(daemon, dict) else "state"
    if not isinstance(raw, str):
        return None
    path = Path(raw).expanduser()
    return path if path.is_absolute() else config.expanduser().absolute().parent / path


def _config_path(args: argparse.Namespace) -> Path:
    from syncd.config import default_config_path

    return Path(args.config) if args.config else default_config_path()


COMMANDS = {"unit": cmd_unit, "reload": cmd_reload}
