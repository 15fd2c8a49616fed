"""The vendor's own Python client drives the WriftAI emulator (protocols.md §3.5).

``wriftai`` 0.28.0 speaks ``POST /files/urls`` + one PUT; 0.34.0 speaks
``POST /uploads`` + part PUTs + complete. They cannot share one environment,
so 0.28.0 is pinned in the ``test`` extra (installed in the venv) and the
Makefile installs 0.34.0 into ``<venv>/vendor/wriftai-0.34`` (``--no-deps``:
it needs only httpx and anyio, which the venv already has for 0.28.0). Each
client runs in a subprocess, the newer one with ``PYTHONPATH`` pointing at
that folder, against the in-process emulator. A client that is not installed
is a skip whose reason says so and how to install it; it never passes
silently.
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from syncd_emulator import Emulator

pytestmark = [pytest.mark.process, pytest.mark.timeout(120)]

TOKEN = "vendor-wriftai-token-31c7"
VENDOR_034 = Path(sys.prefix) / "vendor" / "wriftai-0.34"
PART = 64 * 1024

CLIENT = r"""
import importlib.metadata, json, sys
from pathlib import Path
import wriftai

protocol, *paths = sys.argv[1:]
client = wriftai.Client()  # token and base URL from WRIFTAI_ACCESS_TOKEN / WRIFTAI_API_BASE_URL
out = {"version": importlib.metadata.version("wriftai"), "module": wriftai.__file__, "urls": []}
for p in paths:
    if protocol == "urls":
        out["urls"].append(client.files.upload(Path(p), "prediction"))
    else:
        from wriftai import File
        out["urls"].append(client.files.upload(File(Path(p)))["download_url"])
print(json.dumps(out))
"""


def client_env(emulator: Emulator, pythonpath: Path | None, token: str = TOKEN) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WRIFTAI_") and k != "PYTHONPATH"}
    env["WRIFTAI_ACCESS_TOKEN"] = token
    env["WRIFTAI_API_BASE_URL"] = emulator.url + "/wriftai/v1"
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return env


def run_client(
    emulator: Emulator, protocol: str, paths: list[Path], pythonpath: Path | None, token: str = TOKEN
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CLIENT, protocol, *map(str, paths)],
        env=client_env(emulator, pythonpath, token),
        capture_output=True,
        text=True,
        timeout=90,
    )


def installed_version(pythonpath: Path | None) -> str | None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    probe = subprocess.run(
        [sys.executable, "-c", "import importlib.metadata as m; print(m.version('wriftai'))"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return probe.stdout.strip() if probe.returncode == 0 else None


@pytest.fixture(scope="module")
def sdk_028() -> None:
    version = installed_version(None)
    if version != "0.28.0":
        pytest.skip(
            f"wriftai 0.28.0 is not installed in {sys.prefix} (found {version!r}); it "
            "is pinned in the test extra: pip install -e '.[test]' (make does it)"
        )


@pytest.fixture(scope="module")
def sdk_034() -> Path:
    version = installed_version(VENDOR_034) if (VENDOR_034 / "wriftai").is_dir() else None
    if version != "0.34.0":
        pytest.skip(
            f"wriftai 0.34.0 is not installed in {VENDOR_034} (found {version!r}); "
            f"make installs it: pip install --no-deps --target {VENDOR_034} "
            "wriftai==0.34.0"
        )
    return VENDOR_034


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[Emulator]:
    with Emulator(tmp_path / "emu", wriftai_token=TOKEN, wriftai_part_size=PART) as emu:
        yield emu


def make_files(tmp_path: Path, sizes: dict[str, int]) -> list[Path]:
    paths = []
    for name, size in sizes.items():
        path = tmp_path / "files" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(os.urandom(size))
        paths.append(path)
    return paths


def assert_stored(emulator: Emulator, paths: list[Path], result: dict[str, Any]) -> list[dict[str, Any]]:
    """The emulator holds each file's exact bytes, and the client's download URL serves them."""
    rows = emulator.uploads()
    assert len(rows) == len(paths) == len(result["urls"])
    by_url = {r["url"]: r for r in rows}
    for path, url in zip(paths, result["urls"], strict=True):
        data = path.read_bytes()
        row = by_url[url.split("?")[0]]
        assert row["sha256"] == hashlib.sha256(data).hexdigest() and row["size"] == len(data)
        assert Path(row["path"]).read_bytes() == data
        assert row["content_type"] == (mimetypes.guess_type(path.name)[0] or "application/octet-stream")
        assert httpx.get(url).content == data
    return [by_url[u.split("?")[0]] for u in result["urls"]]


def test_sdk_028_uploads_through_files_urls(sdk_028: None, emulator: Emulator, tmp_path: Path) -> None:
    paths = make_files(tmp_path, {"empty.json": 0, "one.txt": 1, "clip.mp4": 300 * 1024 + 7})
    out = run_client(emulator, "urls", paths, None)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["version"] == "0.28.0" and str(VENDOR_034) not in result["module"]
    rows = assert_stored(emulator, paths, result)
    assert [r["filename"] for r in rows] == [p.name for p in paths]
    assert {r["protocol"] for r in rows} == {"urls"}
    assert [e["op"] for e in emulator.requests()].count("wriftai.put") == 3


def test_sdk_034_uploads_parts_and_waits_out_a_429(sdk_034: Path, emulator: Emulator, tmp_path: Path) -> None:
    emulator.set_faults(script=[{"op": "wriftai.initiate_multipart", "kind": "429"}])
    sizes = {"empty.json": 0, "one.txt": 1, "clip.mp4": 5 * PART + 3}
    paths = make_files(tmp_path, sizes)
    out = run_client(emulator, "uploads", paths, sdk_034)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.splitlines()[-1])
    assert result["version"] == "0.34.0" and result["module"].startswith(str(sdk_034))
    rows = assert_stored(emulator, paths, result)
    assert [r["parts"] for r in rows] == [1, 1, 6] and {r["filename"] for r in rows} == {""}
    ops = [(e["op"], e["status"]) for e in emulator.requests()]
    assert ops[:2] == [("wriftai.initiate_multipart", 429), ("wriftai.initiate_multipart", 200)]
    assert ops.count(("wriftai.put_part", 200)) == 8


@pytest.mark.parametrize("version", ["0.28", "0.34"])
def test_sdks_are_refused_a_wrong_token(
    version: str, request: pytest.FixtureRequest, emulator: Emulator, tmp_path: Path
) -> None:
    pythonpath = request.getfixturevalue("sdk_034") if version == "0.34" else None
    if version == "0.28":
        request.getfixturevalue("sdk_028")
    out = run_client(
        emulator,
        "uploads" if version == "0.34" else "urls",
        make_files(tmp_path, {"a.txt": 3}),
        pythonpath,
        token="not-the-token",
    )
    assert out.returncode != 0 and "401" in out.stderr
    assert emulator.uploads() == []
