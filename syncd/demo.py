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

import tomli_w

from syncd import config as configmod
from syncd.commands.common import EXIT_LOCKED
from syncd.errors import LockedError
from syncd.lock import StateLock
from syncd.logs import setup as setup_logging

DEMO_PORT = 8790

HEADER = """\
# The demo config written by `make run`: one folder per supported service, all
# against the bundled emulator with its default credentials. Every key is
# documented in config.example.toml and docs/configuration.md.
"""

FOLDERS = [
    # (folder, destination, labels, category)
    ("contracts", "lilt", ["legal", "review-needed"], "SOURCE"),
    ("predictions", "wriftai", [], None),
    ("media", "xvid", ["raw"], "footage"),
    ("videos", "apivideo", ["demo", "training"], "onboarding"),
]


def _config(url: str) -> str:
    """The demo config for an emulator at ``url`` (TOML, written with tomli-w)."""
    destinations = {
        "lilt": {"type": "lilt", "base_url": f"{url}/lilt", "api_key": "demo-lilt-key"},
        "wriftai": {"type": "wriftai", "base_url": f"{url}/wriftai/v1", "token": "demo-wriftai-token"},
        "xvid": {
            "type": "xvid",
            "base_url": f"{url}/xvid/v1",
            "client_id": "demo-client",
            "client_secret": "demo-secret",
            "pipeline_id": "demo-pipeline",
            "object_key": "uploads/{category}/{labels}/{relpath}",
        },
        "apivideo": {
            "type": "apivideo",
            "base_url": f"{url}/apivideo",
            "upload_token": "to-demo-upload-token",
            "api_key": "demo-apivideo-key",
        },
    }
    folders = []
    for name, dest, labels, category in FOLDERS:
        folder: dict[str, object] = {"path": f"inbox/{name}", "destination": dest, "labels": labels}
        if category:
            folder["category"] = category
        folder.update(settle_seconds=1.0, archive_dir=f"archive/{name}", failed_dir=f"failed/{name}")
        folders.append(folder)
    doc = {
        "daemon": {"state_dir": "state", "workers": 4, "rescan_seconds": 60},
        "destinations": destinations,
        "folders": folders,
    }
    return HEADER + tomli_w.dumps(doc)


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
    from syncd_emulator import Emulator

    root = args.dir.resolve()
    for name, *_ in FOLDERS:
        (root / "inbox" / name).mkdir(parents=True, exist_ok=True)
        for sub in ("archive", "failed"):  # syncd's alone, whatever the umask (docs/operations.md)
            (root / sub / name).mkdir(mode=0o700, parents=True, exist_ok=True)
    (root / "state").mkdir(mode=0o700, parents=True, exist_ok=True)
    running = StateLock(root / "state")
    try:  # a second `make run`: its new emulator port must not replace the running one's
        running.acquire()
    except LockedError as exc:
        print(f"syncd demo: {exc}; it runs already (in another terminal?)", file=sys.stderr)
        return EXIT_LOCKED
    running.release()  # the daemon takes it below
    port = _free_port(args.port)
    emulator = Emulator(root / "emulator-data", port=port).start()
    config_path = root / "syncd.toml"
    config_path.write_text(_config(emulator.url))
    config_path.chmod(0o600)
    cfg = configmod.load(config_path)
    setup_logging(cfg.daemon.log_level, cfg.daemon.log_format)
    print(
        f"""
syncd demo is running. Try it:

  cp README.md {root}/inbox/contracts/      (Lilt)
  cp Makefile  {root}/inbox/predictions/   (WriftAI)
  cp docs/*.md {root}/inbox/media/         (Xvid)
  cp pyproject.toml {root}/inbox/videos/   (api.video)

  dropped files settle for 1s, upload to the emulator at {emulator.url},
  then move to {root}/archive/<folder>/
  what the emulator received: {emulator.url}/_emulator/uploads
  in another terminal:        .venv/bin/syncd -c {config_path} status

Ctrl-C stops it.
""",
        file=sys.stderr,
        flush=True,
    )
    try:
        return Daemon(cfg).run()
    finally:
        emulator.stop()


if __name__ == "__main__":
    raise SystemExit(main())
