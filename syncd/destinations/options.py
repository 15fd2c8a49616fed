"""The config keys of every destination type: one ``Options`` dataclass per type.

:data:`OPTIONS` maps each config ``type`` name to its dataclass;
:mod:`syncd.config` parses every ``[destinations.NAME]`` table with it. This
module imports no HTTP client and no cryptography, so that the commands that
only read the config and the ledger (``syncd status``, ``files``,
``explain``, ``check``) start quickly. The service modules (``lilt``,
``wriftai``, ``xvid``, ``apivideo``) take their ``Options`` from here, and
:data:`syncd.destinations.REGISTRY` maps the same names to the destination
classes.

Each field carries ``metadata={"doc": ...}`` and the checks of
:mod:`syncd._options`; a credential is declared with
``field(metadata=credential(doc))``, and a type that sends parts in parallel
takes :func:`parallel_parts_option` and :func:`max_connections_option`.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Any

from syncd.secrets import Secret

MiB = 1024 * 1024
GiB = 1024 * MiB


def credential(doc: str) -> dict[str, Any]:
    """The metadata of a credential field of a type's ``Options``
    (``field(metadata=credential(doc))``): resolved by :mod:`syncd.secrets`
    (``env:``, ``file:``), never shown, and masked in every log line."""
    return {"doc": doc, "secret": True}


def parallel_parts_option() -> Any:
    """The ``parallel_parts`` field of an ``Options`` dataclass whose files go in parts."""
    return field(
        default=1,
        metadata={"doc": "Parts of one file sent at once (multipart uploads).", "min": 1, "max": 16},
    )


def max_connections_option() -> Any:
    """The ``max_connections`` field that goes with :func:`parallel_parts_option`."""
    return field(
        default=8,
        metadata={
            "doc": "Part requests in flight to this destination across all files.",
            "min": 1,
            "max": 64,
        },
    )


# -- lilt ------------------------------------------------------------------------------------

PART_SIZE = 8 * MiB  # Lilt's documented part size (sign_upload_part)


@dataclass(frozen=True)
class LiltOptions:
    api_key: Secret = field(metadata=credential("Lilt API key (secret)."))
    base_url: str = field(default="https://api.lilt.com", metadata={"doc": "API root, without /v2."})
    multipart_threshold: int = field(
        default=8 * MiB,
        metadata={"doc": "Files larger than this use multipart upload.", "unit": "bytes", "min": 5 * MiB},
    )
    part_size: int = field(
        default=PART_SIZE,
        metadata={
            "doc": "Multipart part size: Lilt's rule is 8 MiB; change it only for a "
            "server that asks for another size.",
            "unit": "bytes",
            "min": 5 * MiB,
            "max": 5 * GiB,
        },
    )
    wait_for_scan: bool = field(
        default=False,
        metadata={"doc": "Poll GET /v2/upload until the antivirus scan leaves 'pending'."},
    )
    parallel_parts: int = parallel_parts_option()
    max_connections: int = max_connections_option()


# -- wriftai ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class WriftAIOptions:
    token: Secret = field(
        metadata=credential("WriftAI API access token (secret), sent as Authorization: Bearer.")
    )
    base_url: str = field(
        default="https://api.wrift.ai/v1",
        metadata={"doc": "API root including /v1.", "nonempty": True, "no_control": True},
    )
    protocol: str = field(
        default="uploads",
        metadata={
            "doc": 'How files are sent: "uploads" (POST /uploads, server-split parts, resumable) '
            'or "urls" (POST /files/urls and one PUT).',
            "choices": ("uploads", "urls"),
        },
    )
    resource: str = field(
        default="prediction",
        metadata={"doc": 'The resource files belong to (protocol "urls" only).', "choices": ("prediction",)},
    )
    resume_parts: bool = field(
        default=True,
        metadata={
            "doc": "Keep the part URLs of an unfinished upload in the ledger, encrypted with a key "
            "derived from token, so a crash resends only missing parts; false: a crash "
            "restarts the upload."
        },
    )
    parallel_parts: int = parallel_parts_option()
    max_connections: int = max_connections_option()

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("https://", "http://")):
            raise ValueError(f"base_url must start with https:// or http://, got {self.base_url!r}")


# -- xvid ------------------------------------------------------------------------------------

S3_POST_LIMIT = 5 * GiB  # the most one S3 form post takes
PLACEHOLDERS = ("relpath", "name", "labels", "category", "uuid", "date")
_DISTINCT = {"relpath", "name", "uuid"}  # at least one, or every file gets the same key
# The row's uuid keeps keys apart across folders that share this destination (the same
# relpath in two folders would otherwise replace one object with the other).
DEFAULT_OBJECT_KEY = "uploads/{uuid}/{relpath}"
DOT_SEGMENTS = frozenset({"", ".", ".."})  # segments a key must not have (no climbing, no '//')


def check_template(template: str) -> None:
    """Raise ValueError unless ``template`` is a usable ``object_key`` template."""
    valid = ", ".join(f"{{{p}}}" for p in PLACEHOLDERS)
    try:
        pieces = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(
            f"object_key: {exc} in {template!r} (write {{{{ or }}}} for a literal brace)"
        ) from None
    used = set()
    for _, name, spec, conversion in pieces:
        if name is None:
            continue
        if name not in PLACEHOLDERS or spec or conversion:
            shown = name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
            raise ValueError(f"object_key: unknown placeholder {{{shown}}} in {template!r} (valid: {valid})")
        used.add(name)
    if not used & _DISTINCT:
        raise ValueError(
            f"object_key: {template!r} needs {{relpath}}, {{name}} or {{uuid}}, "
            "or every file would get the same key"
        )
    if template.startswith("/"):
        raise ValueError(f"object_key: {template!r} must be relative to the pipeline root (no leading '/')")
    probe = "".join(text + ("x" if name is not None else "") for text, name, *_ in pieces)
    if any(segment in DOT_SEGMENTS for segment in probe.split("/")):
        raise ValueError(
            f"object_key: {template!r} has an empty, '.' or '..' segment; keys stay under the pipeline root"
        )


@dataclass(frozen=True)
class XvidOptions:
    client_id: str = field(
        metadata={
            "doc": "OAuth client id of your Xvid API application.",
            "nonempty": True,
            "no_control": True,
        }
    )
    client_secret: Secret = field(metadata=credential("OAuth client secret (secret)."))
    pipeline_id: str = field(
        metadata={
            "doc": "Pipeline whose root the object keys are relative to.",
            "nonempty": True,
            "no_control": True,
        }
    )
    base_url: str = field(default="https://api.xvid.com/v1", metadata={"doc": "API root, including /v1."})
    object_key: str = field(
        default=DEFAULT_OBJECT_KEY,
        metadata={
            "doc": "Template of each file's object key; placeholders {relpath} {name} "
            "{labels} {category} {uuid} {date}.",
            "nonempty": True,
            "no_control": True,
        },
    )
    chunk_size: int = field(
        default=S3_POST_LIMIT,
        metadata={
            "doc": "Files up to this size go in one form post (the default: S3's 5 GiB "
            "limit); larger ones in several, each under its own key.",
            "unit": "bytes",
            "min": 5 * MiB,
            "max": S3_POST_LIMIT,
        },
    )
    expires_at: int | None = field(
        default=None,
        metadata={
            "doc": "Epoch seconds at which Xvid deletes an object no Job used; 0 = never. "
            "Unset: Xvid's default, 7 days after upload (syncd check warns).",
            "min": 0,
        },
    )
    scope: str = field(
        default="mediahub",
        metadata={"doc": "OAuth scope(s) to ask for, comma-separated.", "nonempty": True, "no_control": True},
    )

    def __post_init__(self) -> None:
        check_template(self.object_key)


# -- apivideo --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiVideoOptions:
    upload_token: Secret | None = field(
        default=None,
        metadata=credential(
            "Delegated upload token (secret): POST /upload-tokens or the dashboard. Needed "
            "without api_key; with one, unused."
        ),
    )
    base_url: str = field(
        default="https://ws.api.video", metadata={"doc": "API root (sandbox: https://sandbox.api.video)."}
    )
    api_key: Secret | None = field(
        default=None,
        metadata=credential(
            "API key (secret): tags and metadata, resume from /status, abort. Needed without upload_token."
        ),
    )
    chunk_size: int = field(
        default=50 * MiB,
        metadata={
            "doc": "Chunk size; a file up to this size goes in one request.",
            "unit": "bytes",
            "min": 5 * MiB,
            "max": 128 * MiB,
        },
    )

    def __post_init__(self) -> None:
        if self.upload_token is None and self.api_key is None:
            raise ValueError(
                "set api_key (tags, metadata, resume) or upload_token (a delegated "
                "token: files only), or both"
            )


OPTIONS: dict[str, type] = {
    "apivideo": ApiVideoOptions,
    "lilt": LiltOptions,
    "wriftai": WriftAIOptions,
    "xvid": XvidOptions,
}
"""Config ``type`` name -> its ``Options`` dataclass (the keys of REGISTRY, each class's
``Options``)."""


__all__ = [
    "DEFAULT_OBJECT_KEY",
    "DOT_SEGMENTS",
    "OPTIONS",
    "PART_SIZE",
    "PLACEHOLDERS",
    "S3_POST_LIMIT",
    "ApiVideoOptions",
    "LiltOptions",
    "WriftAIOptions",
    "XvidOptions",
    "check_template",
    "credential",
    "max_connections_option",
    "parallel_parts_option",
]
