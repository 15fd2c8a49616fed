"""The registry of destination types: config ``type`` name -> class.

Adding a service means writing ``destinations/<service>.py`` (a class that
satisfies :class:`~syncd.destinations.base.Destination`), its ``Options``
dataclass in :mod:`syncd.destinations.options` (with a line in ``OPTIONS``,
which :mod:`syncd.config` validates tables with), and a line in ``_MODULES``
here. An unknown ``type`` in a config is an error that lists these names.

``REGISTRY`` imports a service's module when its class is first looked up:
importing this package, or :mod:`.options` or :mod:`.base`, imports no
service module (nor their HTTP client and cryptography), which the commands
that only read the config and the ledger never need; and a daemon, or an
upload helper process, imports only the modules of the types its config
names (each costs milliseconds of CPU at every start).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from syncd.destinations.base import Destination

# type name -> (module, class)
_MODULES = {
    "apivideo": ("syncd.destinations.apivideo", "ApiVideoDestination"),
    "lilt": ("syncd.destinations.lilt", "LiltDestination"),
    "wriftai": ("syncd.destinations.wriftai", "WriftAIDestination"),
    "xvid": ("syncd.destinations.xvid", "XvidDestination"),
}


class _Registry(Mapping[str, "type[Destination]"]):
    """``type`` name -> destination class, each module imported on its first lookup."""

    def __getitem__(self, name: str) -> type[Destination]:
        module, cls = _MODULES[name]
        found: type[Destination] = getattr(importlib.import_module(module), cls)
        return found

    def __iter__(self) -> Iterator[str]:
        return iter(_MODULES)

    def __len__(self) -> int:
        return len(_MODULES)


REGISTRY: Mapping[str, type[Destination]] = _Registry()

__all__ = ["REGISTRY"]
