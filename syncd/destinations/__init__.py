"""The registry of destination types: config ``type`` name -> class.

Adding a service means writing ``destinations/<service>.py`` (a class that
satisfies :class:`~syncd.destinations.base.Destination`, with an ``Options``
dataclass) and adding it here. An unknown ``type`` in a config is an error
that lists these names.
"""

from __future__ import annotations

from syncd.destinations.apivideo import ApiVideoDestination
from syncd.destinations.base import Destination
from syncd.destinations.lilt import LiltDestination
from syncd.destinations.wriftai import WriftAIDestination
from syncd.destinations.xvid import XvidDestination

REGISTRY: dict[str, type[Destination]] = {
    ApiVideoDestination.TYPE: ApiVideoDestination,
    LiltDestination.TYPE: LiltDestination,
    WriftAIDestination.TYPE: WriftAIDestination,
    XvidDestination.TYPE: XvidDestination,
}


__all__ = ["REGISTRY"]
