"""``syncd emulate`` (and ``python -m syncd_emulator``): serve the emulator on a port."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from syncd_emulator.emulator import Emulator
from syncd_emulator.faults import DEFAULT_KINDS, parse_kinds
from syncd_emulator.lilt import PART_SIZE as LILT_PART_SIZE
from syncd_emulator.wriftai import DEFAULT_PART_SIZE as WRIFTAI_PART_SIZE

__all__ = ["build_parser", "main"]


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}")
    return value


def _kinds(text: str) -> tuple[str, ...]:
    try:
        return parse_kinds(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _client(text: str) -> str:
    if ":" not in text:
        raise argparse.ArgumentTypeError("expected ID:SECRET")
    return text


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text!r}")
    return value


def _bytes(text: str) -> int:
    value = int(text) if text.isdigit() else 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number of bytes > 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="syncd emulate",
        description="Serve local emulators of every supported upload service on one port.",
    )
    p.add_argument(
        "--listen",
        type=_listen,
        default=("127.0.0.1", 8790),
        metavar="HOST:PORT",
        help="address to listen on (default 127.0.0.1:8790; port 0 = any free port)",
    )
    p.add_argument(
        "--data",
        default="./emulator-data",
        metavar="DIR",
        help="where received objects are kept (default ./emulator-data)",
    )
    p.add_argument("--lilt-key", default="demo-lilt-key", help="Lilt API key accepted")
    p.add_argument("--wriftai-token", default="demo-wriftai-token", help="WriftAI token accepted")
    p.add_argument(
        "--xvid-client",
        type=_client,
        default="demo-client:demo-secret",
        metavar="ID:SECRET",
        help="Xvid client id and secret accepted",
    )
    p.add_argument(
        "--apivideo-token",
        default="to-demo-upload-token",
        help="api.video delegated upload token accepted",
    )
    p.add_argument("--apivideo-key", default="demo-apivideo-key", help="api.video API key accepted")
    p.add_argument(
        "--lilt-part-size",
        type=int,
        default=LILT_PART_SIZE,
        metavar="BYTES",
        help="the only Lilt multipart part size accepted (default 8388608, Lilt's rule; "
        "0 = any size S3 accepts)",
    )
    p.add_argument(
        "--wriftai-part-size",
        type=_bytes,
        default=WRIFTAI_PART_SIZE,
        metavar="BYTES",
        help="the smallest WriftAI part the server hands out (default 5242880); "
        "smaller parts make multipart uploads of small files",
    )
    p.add_argument(
        "--fail-rate",
        type=_rate,
        default=0.0,
        metavar="F",
        help="fraction of service requests answered with a random fault (default 0)",
    )
    p.add_argument("--seed", type=int, default=None, metavar="N", help="seed for random faults")
    p.add_argument(
        "--faults",
        type=_kinds,
        default=DEFAULT_KINDS,
        metavar="KINDS",
        help="comma list of fault kinds to draw from: 500,503,429,reset,slow,expire "
        "(default 500,503,429,reset,slow)",
    )
    p.add_argument(
        "--url-ttl",
        type=_positive,
        default=900.0,
        metavar="SECONDS",
        help="lifetime of presigned URLs (default 900)",
    )
    noise = p.add_mutually_exclusive_group()
    noise.add_argument(
        "--quiet",
        dest="quiet",
        action="store_true",
        default=True,
        help="no per-request log (default)",
    )
    noise.add_argument(
        "--verbose",
        dest="quiet",
        action="store_false",
        help="one line per request on stderr (secrets masked)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the emulator until SIGINT/SIGTERM: 0 on a clean stop, 1 if it cannot start
    (port taken, data folder unusable), 2 for bad arguments (argparse)."""
    from syncd import redact

    args = build_parser().parse_args(argv)
    for secret in (args.lilt_key, args.wriftai_token, args.xvid_client.partition(":")[2],
                   args.apivideo_token, args.apivideo_key):  # fmt: skip
        redact.register(secret)
    host, port = args.listen
    try:
        emulator = Emulator(
            args.data, host, port, lilt_key=args.lilt_key, wriftai_token=args.wriftai_token,
            xvid_client=args.xvid_client, apivideo_token=args.apivideo_token,
            apivideo_key=args.apivideo_key, fail_rate=args.fail_rate, seed=args.seed,
            fault_kinds=args.faults, url_ttl=args.url_ttl, quiet=args.quiet,
            lilt_part_size=args.lilt_part_size, wriftai_part_size=args.wriftai_part_size,
        )  # fmt: skip
    except OSError as exc:
        print(f"syncd emulate: cannot use data folder {args.data}: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    try:
        try:
            emulator.start()
        except OSError as exc:
            print(f"syncd emulate: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
            return 1
        print(f"syncd emulator on {emulator.url} (data in {emulator.store.root})")
        for name, url in emulator.base_urls().items():
            print(f"  {name:<10} base_url = {url}")
        print(f"  {'control':<10} {emulator.url}/_emulator/uploads", flush=True)
        while not stop.wait(0.5):
            pass
        emulator.stop()
        print("syncd emulator stopped", flush=True)
        return 0
    finally:
        emulator.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
