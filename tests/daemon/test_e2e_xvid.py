"""The real daemon (subprocess) and the emulated Xvid MediaHub: what only Xvid does.

Sizes, SIGKILL mid-upload and an expiring form policy are in the suite every
service runs (``tests/daemon/test_e2e_services.py``). Here: Xvid has no metadata
fields, so the folder's labels and category and syncd's uuid travel only in
``object_key`` (the template of :data:`tests.e2e_services.XVID` puts them in
its segments); and every access token, form policy and signature the
emulator issued stays out of the daemon's log and the ledger's files.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from syncd_emulator.xvid import XvidService
from tests.e2e_services import CATEGORY, LABELS, XVID, XVID_PIPELINE, assert_delivered, ledger_bytes, make
from tests.harness import Setup, wait_until

pytestmark = [pytest.mark.process, pytest.mark.timeout(90)]

CHUNK = XVID.part_size


def record_issued(s: Setup) -> tuple[XvidService, list[str]]:
    """The emulator's Xvid service, and a list that gets every policy and signature it issues."""
    (service,) = [x for x in s.emulator.services if isinstance(x, XvidService)]
    issued: list[str] = []
    sign = service._sign_policy

    def recording_sign(pipeline_id: str) -> tuple[str, str]:
        policy, signature = sign(pipeline_id)
        issued.extend((policy, signature))
        return policy, signature

    service._sign_policy = recording_sign  # type: ignore[method-assign]  # wrapped, to record
    return service, issued


def test_object_keys_carry_labels_category_and_uuid_and_no_issued_secret_is_kept(
    make_setup: Callable[..., Setup],
) -> None:
    s = make(make_setup, XVID)
    service, issued = record_issued(s)
    s.drop("one.bin", b"\x01")
    s.drop("sub/three.bin", os.urandom(2 * CHUNK + 12345))
    s.start()
    wait_until(s.all_done, 30, 0.1, "every file done")
    assert_delivered(s, XVID)
    objects = {u["object_key"]: u for u in s.emulator.uploads()}
    for row in s.rows():
        key = f"e2e/{CATEGORY}/{','.join(LABELS)}/{row.uuid}/{row.relpath}"
        assert row.receipt is not None and row.receipt["remote_id"] == key
        obj = objects[key]
        assert obj["filename"] == os.path.basename(row.relpath)
        assert obj["pipeline_id"] == XVID_PIPELINE
    raw, log = ledger_bytes(s), s.log_text()
    secrets = [*service._tokens, *issued]  # noqa: SLF001 (what the emulator issued)
    assert len(secrets) >= 3
    for secret in secrets:
        assert secret not in log and secret.encode() not in raw
    assert s.stop() == 0
