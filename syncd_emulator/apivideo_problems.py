"""How api.video answers, apart from the service (:mod:`syncd_emulator.apivideo`).

Errors are problem+json: ``{"type": "https://docs.api.video/reference/<slug>",
"title", "name", "status"}`` (and ``detail`` when there is one). A handler
raises :func:`problem` (or :func:`bad` for a 400); :func:`render` turns it,
or any other error of the core (no route, bad JSON, injected faults), into
the response. Every answer carries ``X-RateLimit-Limit``,
``X-RateLimit-Remaining`` and ``X-RateLimit-Retry-After`` from a
:class:`RateWindow` (reported, never enforced); :class:`RateHeaders` keeps
``X-RateLimit-Retry-After`` in step with a ``Retry-After`` the fault
injector adds to an injected 429.
"""

from __future__ import annotations

import email.utils
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from syncd_emulator.messages import ApiError, Response

DOCS = "https://docs.api.video/reference/"
RATE_LIMIT = 600  # per minute, reported only
_SLUGS = {
    400: "bad-request",
    401: "authentication-invalid-user-credentials",
    403: "forbidden",
    404: "resource-not-found",
    405: "method-not-allowed",
    413: "request-too-large",
    429: "too-many-requests",
}


def problem(status: int, slug: str, title: str, name: str = "", detail: str = "") -> ApiError:
    """An ApiError that :func:`render` answers with this slug, name and detail."""
    return ApiError(status, title, f"av:{slug}:{name}" + (f"\x1f{detail}" if detail else ""))


def bad(slug: str, title: str, name: str = "file", detail: str = "") -> ApiError:
    """A 400 :func:`problem`."""
    return problem(400, slug, title, name, detail)


class RateHeaders(dict[str, str]):
    """Response headers that keep ``X-RateLimit-Retry-After`` in step with a
    ``Retry-After`` the dispatcher adds to an injected 429 after ``error()``."""

    def __setitem__(self, key: str, value: str) -> None:
        super().__setitem__(key, value)
        if key.lower() == "retry-after":
            try:
                seconds = float(value)
            except ValueError:
                try:
                    seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
                except (TypeError, ValueError, IndexError):
                    seconds = 1.0
            super().__setitem__("X-RateLimit-Retry-After", str(max(0, math.ceil(seconds))))


class RateWindow:
    """Requests counted per clock minute, for the rate-limit headers of every answer."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._window = (0, 0)  # (minute, requests counted in it)

    def headers(self) -> RateHeaders:
        """Count one request; the headers that report it."""
        now = self._clock()
        minute = int(now // 60)
        with self._lock:
            count = self._window[1] + 1 if self._window[0] == minute else 1
            self._window = (minute, count)
        return RateHeaders(
            {
                "X-RateLimit-Limit": str(RATE_LIMIT),
                "X-RateLimit-Remaining": str(max(0, RATE_LIMIT - count)),
                "X-RateLimit-Retry-After": str(max(1, math.ceil((minute + 1) * 60 - now))),
            }
        )


def render(status: int, message: str, code: str, headers: RateHeaders) -> Response:
    """The problem+json answer of an error (``code`` as :func:`problem` encodes it, or
    anything else for the core's errors and injected faults)."""
    code, _, detail = code.partition("\x1f")
    if code.startswith("av:"):
        _, slug, name = code.split(":", 2)
    else:  # the core's errors (no route, bad JSON) and injected faults
        slug = _SLUGS.get(status, "internal-error" if status >= 500 else "bad-request")
        name = ""
        message = "Too many requests." if status == 429 else message
    body: dict[str, Any] = {"type": DOCS + slug, "title": message, "status": status}
    if name or status in (400, 404):
        body["name"] = name
    if detail:
        body["detail"] = detail
    headers["Content-Type"] = "application/problem+json"
    if status == 429:
        headers["X-RateLimit-Remaining"] = "0"
    return Response(status, Response.json(body).body, headers)
