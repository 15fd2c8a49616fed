"""The registry of destination types: config ``type`` name -> class.

Adding a service means writing ``destinations/<service>.py`` (a class that
satisfies :class:`~syncd.destinations.base.Destination`), its ``Options``
dataclass in :mod:`syncd.destinations.options` (with a line in ``OPTIONS``,
which :mod:`syncd.config` validates tables with), and a line here. An
unknown ``type`` in a config is an error that lists these names.

``REGISTRY`` is built on first use (``from syncd.destinations import
REGISTRY``): importing this package, or :mod:`.options` or :mod:`.base`,
does not import the service modules and their HTTP client and cryptography,
which the commands that only read the config and the ledger never need.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from syncd.destinations.base import Destination

    REGISTRY: dict[str, type[Destination]]


def _registry() -> dict[str, type[Destination]]:
    from syncd.destinations.apivideo import ApiVideoDestination
    from syncd.destinations.lilt import LiltDestination
    from syncd.destinations.wriftai import WriftAIDestination
    from syncd.destinations.xvid import XvidDestination

    return {
        ApiVideoDestination.TYPE: ApiVideoDestination,
        LiltDestination.TYPE: LiltDestination,
        WriftAIDestination.TYPE: WriftAIDestination,
        XvidDestination.TYPE: XvidDestination,
    }


def __getattr__(name: str) -> object:
    if name == "REGISTRY":
        return globals().setdefault("REGISTRY", _registry())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["REGISTRY"]
