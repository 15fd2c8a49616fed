"""``make run``: the daemon on a ready demo setup against the bundled emulator.

Creates ``./demo/`` (inbox folders, archive, state, emulator data and a
config file that points at the emulator), starts ``syncd emulate`` in a
background thread of this process, and runs the daemon in the foreground
until Ctrl-C. Everything it writes stays under ``./demo/``; running it again
reuses what is there, so the ledger and archive persist between runs.
"""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

from syncd import config as configmod
from syncd.logs import setup as setup_logging

DEMO_PORT = 8790

CONFIG = """\
# The demo config written by `make run`. Every key is documented in
# config.example.toml and docs/configuration.md.
[daemon]
state_dir = "state"
workers = 4
rescan_seconds = 60

[destinations.lilt]
type = "lilt"
base_url = "{url}/lilt"
api_key = "demo-lilt-key"          # the emulator's default key

[[folders]]
path = "inbox/contracts"
destination = "lilt"
labels = ["legal", "review-needed"]
category = "SOURCE"
settle_seconds = 1.0
archive_dir = "archive/contracts"
failed_dir = "failed/contracts"

[[folders]]
path = "inbox/references"
destination = "lilt"
labels = ["reference"]
category = "REFERENCE"
settle_seconds = 1.0
archive_dir = "archive/references"
failed_dir = "failed/references"
"""


def _free_port(preferred: int) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m syncd.demo", description=__doc__)
    parser.add_argument("--dir", type=Path, default=Path("demo"), help="demo folder (./demo)")
    parser.add_argument("--port", type=int, default=DEMO_PORT, help="emulator port (8790)")
    args = parser.parse_args(argv)

    from syncd.daemon import Daemon
    from syncd.emulator import Emulator

    root = args.dir.resolve()
    for sub in ("inbox/contracts", "inbox/references", "archive", "failed", "state"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    port = _free_port(args.port)
    emulator = Emulator(root / "emulator-data", port=port).start()
    config_path = root / "syncd.toml"
    config_path.write_text(CONFIG.format(url=emulator.url))
    config_path.chmod(0o600)
    cfg = configmod.load(config_path)
    setup_logging(cfg.daemon.log_level, cfg.daemon.log_format)
    print(f"""
syncd demo is running. Try it:

  cp README.md {root}/inbox/contracts/
  cp LICENSE* Makefile {root}/inbox/references/

  dropped files settle for 1s, upload to the emulator at {emulator.url}/lilt,
  then move to {root}/archive/
  what the emulator received: {emulator.url}/_emulator/uploads
  in another terminal:        .venv/bin/syncd -c {config_path} status

Ctrl-C stops it.
""", file=sys.stderr, flush=True)
    try:
        return Daemon(cfg).run()
    finally:
        emulator.stop()


if __name__ == "__main__":
    raise SystemExit(main())
