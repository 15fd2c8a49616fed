"""The end-to-end suite's table of services: one :class:`Service` per destination type.

``tests/daemon/test_e2e_services.py`` runs the real daemon (a subprocess, through
:class:`tests.harness.Setup`) against the emulator for every type in
:data:`syncd.destinations.REGISTRY`, with the scenarios written once; what
differs between services is described here, once per type:

* how to configure it: the destination table and the folder table for the
  harness, and the emulator knobs it needs (small parts, so that a
  multi-part upload happens quickly);
* what its requests are called in the emulator's request log (the op that
  opens a multi-part session, the op that carries one part, every op that
  carries file bytes), so that fault scripts can aim at them and the log
  can be counted;
* what "uploaded" looks like on the emulator: which field of a stored
  object is the receipt's ``remote_id``, which counts its parts, which
  names the session a resume state points at;
* what it can do (``supports``) and, for what it cannot, why (``lacks``):
  a scenario that needs a missing capability is skipped with that reason.

``test_every_registered_type_has_a_service`` fails when a type is registered
without an entry. Adding a service: write its :class:`Service` below and add
it to :data:`SERVICES`.

The helpers at the end (:func:`make`, :func:`assert_delivered`, :func:`log`)
serve the suite and the service-specific end-to-end files alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Setup, sha

KiB = 1024
MiB = 1024 * KiB

#: Capabilities a scenario may require (see Service.supports).
CAPABILITIES = frozenset(
    {
        "empty",  # a 0-byte file is stored (without it: refused as documented, no request)
        "resume",  # after a SIGKILL, only the parts not confirmed in the ledger are sent again
        "expiry",  # a signed URL or form that expires mid-upload is renewed within the attempt
        "labels",  # the folder's labels and category are stored with the object
        "uuid",  # the ledger row's uuid is stored with the object (tests.harness invariants())
    }
)

#: Folder labels and category, for the services that carry them.
LABELS, CATEGORY = ["legal", "review-needed"], "SOURCE"


@dataclass(frozen=True)
class Renewal:
    """How a service renews what expired: ``op`` is the request that renews, once per
    expired part (``per_part``) or once for a whole new session; ``logged`` is in the
    daemon's log when it does."""

    op: str
    per_part: bool
    logged: str


@dataclass(frozen=True)
class Service:
    """One destination type as the end-to-end scenarios see it.

    ``part_size`` is the size of every part but the last of a multi-part
    upload, as configured here (or dictated by the emulator). ``open_op``
    opens a multi-part session; ``part_op`` carries one part; ``data_ops``
    are every op that carries file bytes (single uploads included).
    ``numbered_op``, when set, is an op whose path ends in the part number.
    ``session`` pairs the key of the resume state's ``session`` with the
    stored object's field holding the same id. ``never_in_ledger`` are
    bytes that must never be in the ledger's files (signed URLs are sealed).
    """

    type: str
    destination: dict[str, Any]
    part_size: int
    open_op: str
    part_op: str
    data_ops: tuple[str, ...]
    remote_field: str  # the stored object's field that equals the receipt's receipt_field
    parts_field: str
    session: tuple[str, str]
    supports: frozenset[str]
    lacks: dict[str, str] = field(default_factory=dict)
    folder: dict[str, Any] = field(default_factory=dict)
    emulator: dict[str, Any] = field(default_factory=dict)
    numbered_op: str | None = None
    renewal: Renewal | None = None
    never_in_ledger: tuple[bytes, ...] = ()
    receipt_field: str = "remote_id"

    def require(self, *capabilities: str) -> None:
        unknown = set(capabilities) - CAPABILITIES
        assert not unknown, f"unknown capability {unknown}"
        for c in capabilities:
            if c not in self.supports:
                pytest.skip(f"{self.type} does not support {c}: {self.lacks[c]}")

    def parts(self, size: int) -> int:
        """How many part requests a file of ``size`` bytes takes (an empty file takes one)."""
        return max(1, math.ceil(size / self.part_size))

    def setup_kwargs(self, emulator: dict[str, Any] | None = None) -> dict[str, Any]:
        """Keyword arguments for :class:`tests.harness.Setup`."""
        return {
            "destination": dict(self.destination),
            "folders": [{"name": "in", "max_attempts": 50, **self.folder}],
            "emulator": {**self.emulator, **(emulator or {})},
            "daemon": {"retry_max_seconds": 1.0},
        }


LILT = Service(
    type="lilt",
    # Lilt's parts are 8 MiB by its rule; 5 MiB (S3's minimum) keeps the runs short, and the
    # harness's emulator accepts any part size S3 does.
    destination={
        "type": "lilt",
        "base_url": "{url}/lilt",
        "api_key": "env:TEST_LILT_KEY",
        "multipart_threshold": 5 * MiB,
        "part_size": 5 * MiB,
    },
    folder={"labels": LABELS, "category": CATEGORY},
    part_size=5 * MiB,
    open_op="lilt.initiate_multipart",
    part_op="lilt.put_part",
    data_ops=("lilt.put", "lilt.put_part"),
    numbered_op="lilt.sign_part",
    remote_field="key",
    parts_field="parts",
    session=("key", "key"),
    supports=frozenset({"empty", "resume", "expiry", "labels", "uuid"}),
    renewal=Renewal("lilt.sign_part", per_part=True, logged="sending it again"),
)

WRIFTAI = Service(
    type="wriftai",
    # protocol "uploads": multi-part, resumable. "urls" (one PUT, with the file name) has its
    # own tests in tests/daemon/test_e2e_wriftai.py.
    destination={
        "type": "wriftai",
        "base_url": "{url}/wriftai/v1",
        "token": "env:TEST_WRIFTAI_TOKEN",
        "protocol": "uploads",
    },
    emulator={"wriftai_part_size": 64 * KiB},  # the server dictates the part size
    part_size=64 * KiB,
    open_op="wriftai.initiate_multipart",
    part_op="wriftai.put_part",
    data_ops=("wriftai.put", "wriftai.put_part"),
    numbered_op="wriftai.put_part",
    remote_field="upload_id",
    parts_field="parts",
    session=("id", "upload_id"),
    supports=frozenset({"empty", "resume", "expiry"}),
    lacks={"labels": "WriftAI stores no labels or category", "uuid": "WriftAI stores no client id"},
    renewal=Renewal("wriftai.initiate_multipart", per_part=False, logged="starting a new upload"),
    never_in_ledger=(b"/parts/",),  # the part URLs are sealed in the resume state
)

XVID_PIPELINE = "5f3a9c0e7b1d4a2c8e6f0a1b"

XVID = Service(
    type="xvid",
    destination={
        "type": "xvid",
        "base_url": "{url}/xvid/v1",
        "client_id": "canary-client",
        "client_secret": "env:TEST_XVID_SECRET",
        "pipeline_id": XVID_PIPELINE,
        "chunk_size": "5 MiB",
        # doubled braces: the harness formats every string with {url}
        "object_key": "e2e/{{category}}/{{labels}}/{{uuid}}/{{relpath}}",
    },
    folder={"labels": LABELS, "category": CATEGORY},
    part_size=5 * MiB,
    open_op="xvid.open",
    part_op="xvid.post_chunk",
    data_ops=("xvid.post_chunk",),
    remote_field="object_key",
    parts_field="chunks",
    session=("upload_id", "upload_id"),
    supports=frozenset({"empty", "resume", "expiry"}),
    lacks={
        "labels": "Xvid has no metadata fields: labels and category travel only in "
        "object_key (tests/daemon/test_e2e_xvid.py)",
        "uuid": "Xvid has no field for the uuid: it travels only in object_key",
    },
    renewal=Renewal("xvid.open", per_part=False, logged="opening a new one"),
    never_in_ledger=(b"/_s3/",),  # not even the form's URL: it is sealed with the rest
)

APIVIDEO = Service(
    type="apivideo",
    # With api_key: tags, metadata and /status on resume. The token-only route has its own
    # tests in tests/daemon/test_e2e_apivideo.py.
    destination={
        "type": "apivideo",
        "base_url": "{url}/apivideo",
        "upload_token": "env:TEST_APIVIDEO_TOKEN",
        "api_key": "env:TEST_APIVIDEO_KEY",
        "chunk_size": "5 MiB",
    },
    folder={"labels": LABELS, "category": CATEGORY},
    part_size=5 * MiB,
    open_op="apivideo.create_video",
    part_op="apivideo.upload_source",
    data_ops=("apivideo.upload", "apivideo.upload_source"),
    remote_field="video_id",
    parts_field="chunks",
    session=("video_id", "video_id"),
    supports=frozenset({"resume", "labels", "uuid"}),
    lacks={
        "empty": "api.video cannot hold an empty video",
        "expiry": "api.video signs nothing that expires mid-upload: the API key is sent as "
        "is, and an expired upload token is fatal, not renewable",
    },
)

#: destination type -> its description. The guard test keeps this in step with REGISTRY.
SERVICES: dict[str, Service] = {s.type: s for s in (APIVIDEO, LILT, WRIFTAI, XVID)}


# -- helpers -----------------------------------------------------------------------------------

#: 20 % of the emulator's answers replaced by faults (the "faults20" runs).
FAULTS: dict[str, Any] = {"fail_rate": 0.2, "fault_kinds": ("500", "503", "429", "reset")}
CLEAN_OR_FAULTY = pytest.mark.parametrize("faults", [False, True], ids=["clean", "faults20"])


def make(
    make_setup: Callable[..., Setup],
    service: Service,
    *,
    faults: bool = False,
    seed: int = 1,
    **emulator: Any,
) -> Setup:
    """A :class:`Setup` for ``service`` (``make_setup`` is the conftest fixture), with
    ``emulator`` knobs added and, with ``faults``, 20 % of the answers faulted."""
    if faults:
        emulator = {**FAULTS, "seed": seed, **emulator}
    return make_setup(**service.setup_kwargs(emulator))


def ok(e: dict[str, Any]) -> bool:
    return bool(200 <= e["status"] < 300)


def log(s: Setup, *ops: str, since: float = 0.0) -> list[dict[str, Any]]:
    """The emulator's log entries of these ops that arrived at ``since`` or later."""
    return [e for e in s.emulator.requests() if e["op"] in ops and e["time"] >= since]


def ledger_bytes(s: Setup) -> bytes:
    """The ledger's files as they are on disk (the database, its WAL and its shared memory)."""
    return b"".join(p.read_bytes() for p in s.ledger_path.parent.glob("ledger.sqlite3*"))


def assert_sealed(s: Setup, service: Service) -> None:
    """No signed URL or form in the ledger's files, not even in free pages or the WAL."""
    raw = ledger_bytes(s)
    for marker in (b"X-Emu-Signature", b"Signature=", *service.never_in_ledger):
        assert marker not in raw, f"{marker!r} in the ledger: a signed URL was not sealed"


def assert_delivered(s: Setup, service: Service) -> None:
    """Every dropped file is done, archived intact, and stored once with the same bytes (the
    object its receipt names); a file the service cannot hold is refused as documented.
    No secret and no signed URL in the logs or the ledger."""
    assert s.integrity() == "ok"
    rows = {r.relpath: r for r in s.rows()}
    objects = {str(u[service.remote_field]): u for u in s.emulator.uploads()}
    storable = {rel: data for (_, rel), data in s.dropped.items() if data or "empty" in service.supports}
    assert len(objects) == len(storable), "one remote object per file, no more"
    for rel, data in storable.items():
        row = rows[rel]
        assert row.state == "done", (rel, row.state, row.last_error)
        assert row.sha256 == sha(data)
        assert row.location and Path(row.location).read_bytes() == data, f"{rel}: archive"
        assert row.receipt is not None
        assert row.receipt["url"] is None or "?" not in row.receipt["url"]
        obj = objects[str(row.receipt[service.receipt_field])]
        assert (obj["sha256"], obj["size"], obj["times_received"]) == (sha(data), len(data), 1)
        assert Path(obj["path"]).read_bytes() == data
        assert obj.get(service.parts_field, 1) == service.parts(len(data)), rel
        if "labels" in service.supports:
            assert (obj["labels"], obj["category"]) == (LABELS, CATEGORY), rel
        if "uuid" in service.supports:
            assert obj["uuid"] == row.uuid, rel
    for (_, rel), data in s.dropped.items():
        if rel not in storable:  # refused without a request; in failed_dir with the reason
            row = rows[rel]
            assert row.state == "failed" and "empty" in (row.last_error or ""), row
            assert (s.failed() / rel).read_bytes() == data
            assert "empty" in (s.failed() / (rel + ".error.json")).read_text()
    if "empty" not in service.supports:
        assert all(e["bytes"] > 0 for e in log(s, *service.data_ops)), "an empty request"
    assert not [p for p in s.inbox().rglob("*") if p.is_file()]
    if "uuid" in service.supports:
        s.invariants(allow_failed=len(storable) < len(s.dropped))
    assert_sealed(s, service)
    s.assert_no_secret()
