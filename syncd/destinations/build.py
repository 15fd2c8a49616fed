"""The HTTP client and the destinations a configuration describes.

Built here for the daemon (:mod:`syncd.runtime`), for ``syncd check --online``
and for each upload helper process (:mod:`syncd.offload_helper`), which
imports no more of syncd than this needs.
"""

from __future__ import annotations

import os
import ssl

import httpx

from syncd import config as configmod
from syncd.destinations import REGISTRY
from syncd.destinations.base import Destination
from syncd.http import make_client
from syncd.trust import tls_context


def build_destinations(cfg: configmod.Config, client: httpx.Client) -> dict[str, Destination]:
    return {
        # the Destination protocol leaves out the constructor every service class has
        name: REGISTRY[dc.type](name, dc.options, client)  # type: ignore[call-arg]  # see above
        for name, dc in cfg.destinations.items()
    }


def tls_verify(daemon: configmod.DaemonConfig) -> bool | ssl.SSLContext:
    """What an HTTP client of this daemon verifies certificates with (``tls_verify``,
    ``ca_bundle``): False, or the trust store plus the extra bundle."""
    if not daemon.tls_verify:
        return False
    return tls_context(os.fspath(daemon.ca_bundle) if daemon.ca_bundle else None)


def build_client(cfg: configmod.Config) -> httpx.Client:
    """The client every destination shares. Its pool has a connection for each worker
    (twice: an API call beside a storage request) and for every part request each
    destination's ``max_connections`` lets be in flight: a part waiting for a connection
    past the pool timeout failed as a transport error, counted against the service."""
    d = cfg.daemon
    parts = sum(getattr(dc.options, "max_connections", 0) for dc in cfg.destinations.values())
    return make_client(
        connect=d.connect_timeout,
        read=d.io_timeout,
        write=d.io_timeout,
        max_connections=max(8, d.workers * 2) + parts,
        verify=tls_verify(d),
    )
