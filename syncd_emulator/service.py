"""What an emulated service is made of: settings, routes, the base class, URL signing.

A service is a :class:`Service` subclass with a ``prefix`` (``/lilt``) and a
route table of :class:`Route`; the dispatcher (:mod:`syncd_emulator.dispatch`)
picks the service by prefix, matches the route, asks the fault injector
whether to misbehave, calls the handler, and logs the request.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from syncd_emulator.messages import ApiError, Request, Response, parse_uint
from syncd_emulator.store import Sessions, Store

Handler = Callable[[Request], Response]

MIB = 1024 * 1024


@dataclass(frozen=True)
class Route:
    """``pattern`` is relative to the service prefix: ``/v2/upload/{uploadId:int}``.

    ``{name}`` matches one segment, ``{name:int}`` digits, ``{name:path}`` the
    rest including slashes. ``op`` names the operation in the request log and
    in fault scripts; it may be a function of the request.
    """

    method: str
    pattern: str
    op: str | Callable[[Request], str]
    handler: Handler
    regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    _KINDS: ClassVar[dict[str, str]] = {"": "[^/]+", "int": "[0-9]+", "path": "(?s:.+)"}

    def __post_init__(self) -> None:
        def repl(m: re.Match[str]) -> str:
            return f"(?P<{m.group(1)}>{self._KINDS[m.group(2) or '']})"

        body = re.sub(r"\\\{(\w+)(?::(\w+))?\\\}", repl, re.escape(self.pattern))
        object.__setattr__(self, "regex", re.compile(f"^{body}$"))

    def op_for(self, request: Request) -> str:
        return self.op(request) if callable(self.op) else self.op


@dataclass(frozen=True)
class Settings:
    """What the emulator accepts, how long its signed URLs live, and the services' rules.

    ``clock`` (epoch seconds) is injectable so expiry can be tested
    without sleeping. The service rules are described where they apply:
    ``lilt_part_size`` in :mod:`syncd_emulator.lilt`, the ``wriftai_*`` ones
    in :mod:`syncd_emulator.wriftai`, ``apivideo_private_videos`` in
    :mod:`syncd_emulator.apivideo`.
    """

    lilt_key: str = "demo-lilt-key"
    wriftai_token: str = "demo-wriftai-token"
    xvid_client: str = "demo-client:demo-secret"
    apivideo_token: str = "to-demo-upload-token"
    apivideo_key: str = "demo-apivideo-key"
    url_ttl: float = 900.0
    clock: Callable[[], float] = time.time
    lilt_part_size: int = 8 * MIB
    wriftai_part_size: int = 5 * MIB
    wriftai_omit_etags: bool = False
    wriftai_empty_without_parts: bool = False
    apivideo_private_videos: bool = False


@dataclass(frozen=True)
class ServiceContext:
    """Everything a service is built from: settings, the shared store, the signer."""

    settings: Settings
    store: Store
    signer: UrlSigner


class Service:
    """Base class of an emulated service: one module, one prefix, one route table.

    Subclasses set ``name`` and ``prefix`` and implement :meth:`routes`; they
    override :meth:`error` to render errors (and injected faults) in the
    service's own format. The base sets up what every service uses:
    ``settings`` (credentials, url_ttl, clock, rules), the shared ``store``,
    the URL ``signer``, a ``_lock`` for the service's own state, and
    ``sessions`` (its durable multipart sessions, created on first use).
    ``routes()`` is called on the first request, so a subclass calls
    ``super().__init__`` first and then sets up its own attributes.
    """

    name: ClassVar[str] = ""
    prefix: ClassVar[str] = ""
    internal: ClassVar[bool] = False  # True: never faulted, never logged (/_emulator)

    def __init__(self, context: ServiceContext) -> None:
        self.context = context
        self.settings = context.settings
        self.store = context.store
        self.signer = context.signer
        self._lock = threading.Lock()

    @functools.cached_property
    def sessions(self) -> Sessions:
        return Sessions(self.store, self.name)

    @functools.cached_property
    def _routes(self) -> list[Route]:
        return self.routes()

    def routes(self) -> list[Route]:
        raise NotImplementedError

    def error(self, op: str, status: int, message: str, code: str = "") -> Response:
        """The service's error body for ``status``; default ``{"message": ...}``."""
        return Response.json({"message": message}, status)

    def base_url(self, request: Request) -> str:
        return request.base_url + self.prefix

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]] | None:
        """(route, params) for ``path`` below the prefix; ApiError 405/404 if none."""
        allowed = False
        for route in self._routes:
            m = route.regex.match(path)
            if m:
                if route.method == method:
                    return route, m.groupdict()
                allowed = True
        if allowed:
            raise ApiError(405, f"method {method} not allowed here")
        return None


def check_signed(
    request: Request,
    now: float,
    *,
    no_credentials: str,
    unsigned: str,
    credential_params: tuple[str, ...] = (),
) -> int:
    """A storage request to a signed URL: no API credentials (the Authorization header,
    or ``credential_params`` in the query), signed, not expired; returns its expiry.
    Every refusal is a 403 ``AccessDenied``, as S3 answers."""
    if request.headers.get("Authorization") is not None or any(
        name in request.query for name in credential_params
    ):
        raise ApiError(403, no_credentials, "AccessDenied")
    expires = parse_uint(request.arg("X-Emu-Expires"))
    if expires is None or not request.arg("X-Emu-Signature"):
        raise ApiError(403, unsigned, "AccessDenied")
    if now > expires:
        raise ApiError(403, "Request has expired", "AccessDenied")
    return expires


class UrlSigner:
    """HMAC-SHA256 signatures for presigned URLs, with a per-process secret.

    ``sign(*fields)`` and ``verify(signature, *fields)``: the caller decides
    which fields are covered (method, key, content type, expiry, ...). A
    restart changes the secret, so URLs from a previous run stop working,
    as a rotated signing key would.
    """

    def __init__(self, secret: bytes | None = None) -> None:
        import secrets

        self._secret = secret or secrets.token_bytes(32)

    def sign(self, *fields: object) -> str:
        message = "\n".join(str(f) for f in fields).encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def verify(self, signature: str, *fields: object) -> bool:
        return hmac.compare_digest(signature.encode(), self.sign(*fields).encode())
