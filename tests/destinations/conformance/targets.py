"""The conformance suite's table of targets: one entry per destination type (style.md §5).

Every destination type in :data:`syncd.destinations.REGISTRY` gets one entry
in :data:`TARGETS`: a factory that builds the destination pointed at the
emulator (``emulator.url``: in process, or a loopback port when started), and
says how to read back what the server stored. The
scenarios in ``test_destination_conformance.py`` are written once and run for
every entry; ``test_every_registered_type_has_a_target`` fails when a type is
registered without one.

Adding a service: write ``_<service>(emulator, client, bad_credentials)``
returning a :class:`Target`, add it to :data:`TARGETS`, and list in
``supports`` only what the service can do (a missing capability skips the
scenario; it never fails it).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from syncd.destinations.apivideo import ApiVideoDestination, ApiVideoOptions
from syncd.destinations.base import Destination
from syncd.destinations.lilt import LiltDestination, LiltOptions
from syncd.destinations.wriftai import WriftAIDestination, WriftAIOptions
from syncd.destinations.xvid import XvidDestination, XvidOptions
from syncd.secrets import Secret
from syncd_emulator import Emulator
from syncd_emulator.apivideo import ApiVideoService

MiB = 1024 * 1024

#: Capabilities a scenario may require (see Target.supports).
CAPABILITIES = frozenset(
    {
        "empty",  # 0-byte files
        "multipart",  # files larger than one part go in several requests
        "resume",  # a checkpointed upload resumes without re-sending confirmed parts
        "abort",  # abort(resume) releases everything the server held
        "labels",
        "category",
        "uuid",  # metadata the server stores and the emulator lists
    }
)


@dataclass
class Target:
    """One destination type, configured against the emulator.

    ``first_op`` is the request-log op of the first request of a small
    upload; ``part_op`` the op that carries one part of a multi-part upload
    (both are what fault scripts aim at). ``part_size`` is the part size the
    destination was configured with. ``leftovers()`` lists what the server
    still holds for unfinished uploads (open sessions, stored parts).
    """

    type: str
    dest: Destination
    emulator: Emulator
    service: str
    part_size: int
    first_op: str
    part_op: str
    leftovers: Callable[[], list[str]]
    supports: frozenset[str]

    def stored(self) -> list[dict[str, Any]]:
        """What the emulator stored for this service, oldest first."""
        return [u for u in self.emulator.uploads() if u["service"] == self.service]

    def log(self, op: str | None = None) -> list[dict[str, Any]]:
        return [
            e
            for e in self.emulator.requests()
            if e.get("service") == self.service and (op is None or e.get("op") == op)
        ]

    def require(self, *capabilities: str) -> None:
        unknown = set(capabilities) - CAPABILITIES
        assert not unknown, f"unknown capability {unknown}"
        missing = [c for c in capabilities if c not in self.supports]
        if missing:
            pytest.skip(f"{self.type} does not support {', '.join(missing)}")


TargetFactory = Callable[[Emulator, httpx.Client, bool], Target]

LILT_KEY = "conformance-lilt-key"

WRIFTAI_TOKEN = "conformance-wriftai-token"

#: Keyword arguments for the suite's Emulator: the credentials it accepts.
#: Non-default values prove that destinations send what they were configured with.
#: Lilt's parts are 8 MiB by Lilt's rule; the suite's 5 MiB parts (fast) are told to the
#: emulator, which otherwise refuses them.
EMULATOR_OPTIONS: dict[str, Any] = {
    "lilt_key": LILT_KEY,
    "wriftai_token": WRIFTAI_TOKEN,
    "lilt_part_size": 5 * MiB,
}


def _active_sessions(emulator: Emulator, service: str) -> list[str]:
    """Multipart sessions on the emulator's disk that are still open or hold parts."""
    root = Path(emulator.store.root) / "sessions" / service
    found = []
    for meta in sorted(root.glob("*/session.json")):
        data = json.loads(meta.read_text())
        parts = list(meta.parent.glob("part-*"))
        if data.get("state") == "active" or parts:
            found.append(f"{service} session {data.get('id')} ({data.get('state')}, {len(parts)} parts)")
    return found


def _lilt(emulator: Emulator, client: httpx.Client, bad_credentials: bool) -> Target:
    part = 5 * MiB  # Lilt's (S3's) minimum part size keeps the suite fast
    options = LiltOptions(
        api_key=Secret("not-the-key" if bad_credentials else LILT_KEY),
        base_url=emulator.url + "/lilt",
        multipart_threshold=part,
        part_size=part,
    )
    return Target(
        type="lilt",
        dest=LiltDestination("conformance-lilt", options, client),
        emulator=emulator,
        service="lilt",
        part_size=part,
        first_op="lilt.initiate",
        part_op="lilt.put_part",
        leftovers=lambda: _active_sessions(emulator, "lilt"),
        supports=frozenset({"empty", "multipart", "resume", "abort", "labels", "category", "uuid"}),
    )


def _wriftai(emulator: Emulator, client: httpx.Client, bad_credentials: bool) -> Target:
    # protocol "urls": it carries the file name, which test_metadata_delivered checks.
    # The default "uploads" protocol (no name) runs these scenarios in
    # tests/destinations/test_wriftai_destination.py.
    options = WriftAIOptions(
        token=Secret("not-the-key" if bad_credentials else WRIFTAI_TOKEN),
        base_url=emulator.url + "/wriftai/v1",
        protocol="urls",
    )
    return Target(
        type="wriftai",
        dest=WriftAIDestination("conformance-wriftai", options, client),
        emulator=emulator,
        service="wriftai",
        part_size=256 * 1024,
        first_op="wriftai.initiate",
        part_op="wriftai.put_part",
        leftovers=lambda: _active_sessions(emulator, "wriftai"),
        supports=frozenset({"empty"}),
    )


APIVIDEO_TOKEN = "conformance-apivideo-token"
APIVIDEO_KEY = "conformance-apivideo-key"
EMULATOR_OPTIONS.update(apivideo_token=APIVIDEO_TOKEN, apivideo_key=APIVIDEO_KEY)


def _apivideo(emulator: Emulator, client: httpx.Client, bad_credentials: bool) -> Target:
    # With api_key: tags, metadata, resume from /status and abort. The token-only
    # configuration runs the same kind of scenarios in
    # tests/destinations/test_apivideo_destination.py.
    (service,) = [s for s in emulator.services if isinstance(s, ApiVideoService)]
    bad = "not-the-key" if bad_credentials else None
    options = ApiVideoOptions(
        upload_token=Secret(bad or APIVIDEO_TOKEN),
        api_key=Secret(bad or APIVIDEO_KEY),
        base_url=emulator.url + "/apivideo",
        chunk_size=5 * MiB,
    )
    return Target(
        type="apivideo",
        dest=ApiVideoDestination("conformance-apivideo", options, client),
        emulator=emulator,
        service="apivideo",
        part_size=5 * MiB,
        first_op="apivideo.list_videos",
        part_op="apivideo.upload_source",
        leftovers=service.unfinished,
        supports=frozenset({"multipart", "resume", "abort", "labels", "category", "uuid"}),
    )


XVID_CLIENT, XVID_SECRET = "conformance-xvid-client", "conformance-xvid-secret"
XVID_PIPELINE = "5f3a9c0e7b1d4a2c8e6f0a1b"  # no "conformance-": checkpoints carry the pipeline id
EMULATOR_OPTIONS.update(xvid_client=f"{XVID_CLIENT}:{XVID_SECRET}")


def _xvid(emulator: Emulator, client: httpx.Client, bad_credentials: bool) -> Target:
    # first_op is the session open: the token request comes first only once per destination.
    # Labels, category and uuid reach Xvid only inside object_key
    # (tests/destinations/test_xvid_destination.py).
    options = XvidOptions(
        client_id=XVID_CLIENT,
        client_secret=Secret("not-the-key" if bad_credentials else XVID_SECRET),
        pipeline_id=XVID_PIPELINE,
        base_url=emulator.url + "/xvid/v1",
        chunk_size=5 * MiB,
    )
    return Target(
        type="xvid",
        dest=XvidDestination("conformance-xvid", options, client, sleep=lambda s: None),
        emulator=emulator,
        service="xvid",
        part_size=5 * MiB,
        first_op="xvid.open",
        part_op="xvid.post_chunk",
        leftovers=lambda: _active_sessions(emulator, "xvid"),
        supports=frozenset({"empty", "multipart", "resume", "abort"}),
    )


#: destination type -> factory. The guard test keeps this in step with REGISTRY.
TARGETS: dict[str, TargetFactory] = {
    "apivideo": _apivideo,
    "lilt": _lilt,
    "wriftai": _wriftai,
    "xvid": _xvid,
}
