"""Local emulator of every upload service syncd supports (``syncd emulate``).

One port, one prefix per service (``/lilt``, ``/xvid/v1``, ``/wriftai/v1``,
``/apivideo``), plus control endpoints under ``/_emulator``. Every request
goes through one dispatcher (:meth:`Emulator.respond`); the socket server
(``Emulator.start()``) and the in-process httpx transport
(:class:`EmulatorTransport`) are two shells around it.

Modules: :mod:`~syncd_emulator.emulator` (the :class:`Emulator`),
:mod:`~syncd_emulator.dispatch` (routing, faults, the request log),
:mod:`~syncd_emulator.messages` (the request/response model),
:mod:`~syncd_emulator.service` (the service base class),
:mod:`~syncd_emulator.server` (sockets), :mod:`~syncd_emulator.transport`
(in process), :mod:`~syncd_emulator.cli` (the command line), and one module
per service. To add a service: write ``syncd_emulator/<service>.py`` with a
:class:`~syncd_emulator.service.Service` subclass and append the class to
:data:`~syncd_emulator.emulator.SERVICE_CLASSES`. ``docs/emulator.md`` is the
user's guide.
"""

from __future__ import annotations

from syncd_emulator.cli import build_parser, main
from syncd_emulator.emulator import SERVICE_CLASSES, Emulator
from syncd_emulator.messages import Request, Reset, Response
from syncd_emulator.transport import IN_PROCESS_URL, EmulatorTransport

__all__ = [
    "IN_PROCESS_URL",
    "SERVICE_CLASSES",
    "Emulator",
    "EmulatorTransport",
    "Request",
    "Reset",
    "Response",
    "build_parser",
    "main",
]
