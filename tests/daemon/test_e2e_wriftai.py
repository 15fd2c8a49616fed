"""The real daemon (subprocess) and the emulated WriftAI: what only WriftAI does.

Sizes, SIGKILL mid-upload and an expiring part URL, with ``protocol =
"uploads"``, are in the suite every service runs (``tests/daemon/test_e2e_services.py``).
Here: the other protocol, ``"urls"`` (one presigned PUT per file, with the
file's name), and ``syncd files --receipt``, which shows the signed
``download_url`` the ledger keeps sealed.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable

import httpx
import pytest

from tests.e2e_services import CLEAN_OR_FAULTY, WRIFTAI, assert_delivered, make
from tests.harness import Setup, wait_until

pytestmark = [pytest.mark.process, pytest.mark.timeout(60)]

PART = WRIFTAI.part_size

#: protocol "urls": one PUT per file whatever its size, stored under the download URL
#: (the receipt's url, without its signature).
URLS = dataclasses.replace(
    WRIFTAI,
    destination={**WRIFTAI.destination, "protocol": "urls"},
    part_size=1 << 62,
    data_ops=("wriftai.put",),
    remote_field="url",
    receipt_field="url",
)


@CLEAN_OR_FAULTY
def test_urls_protocol_sizes_arrive_byte_identical_under_their_names(
    make_setup: Callable[..., Setup], faults: bool
) -> None:
    s = make(make_setup, URLS, faults=faults, seed=7)
    files = {
        "empty.bin": b"",
        "one.bin": b"\x01",
        "exact.bin": os.urandom(PART),
        "parts.bin": os.urandom(3 * PART + 1234),
    }
    if faults:  # more requests, so every kind of fault has a chance
        files.update({f"small-{i}.txt": os.urandom(100 + i) for i in range(6)})
    for name, data in files.items():
        s.drop(name, data)
    s.start()
    wait_until(s.all_done, 20, 0.1, "every file done")
    assert_delivered(s, URLS)
    for obj in s.emulator.uploads():
        assert obj["protocol"] == "urls" and obj["size"] == len(s.dropped[("in", obj["filename"])])
    if faults:
        assert [e for e in s.emulator.requests() if e.get("fault")], "no fault was injected"
    assert s.stop() == 0


def test_files_receipt_shows_the_usable_download_url(make_setup: Callable[..., Setup]) -> None:
    """The signed download_url is sealed in the ledger; `syncd files --receipt ID` opens it
    with the token from the config, and the URL it shows downloads the file."""
    s = make(make_setup, WRIFTAI)
    data = os.urandom(2 * PART + 3)
    s.drop("report.bin", data)
    s.start()
    wait_until(s.all_done, 20, 0.1, "the file done")
    assert s.stop() == 0
    (row,) = s.rows()
    plain = row.receipt
    assert plain is not None
    assert "sealed_urls" in plain and "?" not in plain["url"] and plain["url_expires_at"]
    out = s.cli("files", "--receipt", str(row.id), check=True)
    shown = json.loads(out.stdout)
    assert "sealed_urls" not in shown and "X-Emu-Signature=" in shown["url"]
    r = httpx.get(shown["url"], timeout=20)
    assert r.status_code == 200 and r.content == data
    assert httpx.get(plain["url"], timeout=20).status_code == 403
    assert s.cli("files", "--receipt", "999").returncode == 1
    s.assert_no_secret()  # the ledger and the logs still hold no signature
    text = s.config.read_text()  # the destination renamed: its seal cannot be opened, and says so
    name = row.destination
    s.config.write_text(
        text.replace(f"destinations.{name}]", f"destinations.{name}-renamed]").replace(
            f'destination = "{name}"', f'destination = "{name}-renamed"'
        )
    )
    out = s.cli("files", "--receipt", str(row.id))
    assert out.returncode == 0 and f"its destination '{name}' is no longer configured" in out.stderr, out
