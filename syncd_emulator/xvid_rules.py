"""Xvid's rules for what a client sends, apart from the service (:mod:`syncd_emulator.xvid`).

The token request (:func:`parse_token_request`), the object key of a new
upload (:func:`storage_key`), the S3 browser POST: its policy
(:func:`policy_document`, :func:`sign`), its form (:func:`read_post`: every
field before ``file``, none after it, none twice) and the policy check
(:func:`check_form`), and which posted objects make chunks ``0..N-1`` for
the PUT (:func:`chunk_objects`). API refusals are :func:`invalid` (400
``0x0230001``), storage refusals S3 errors (:func:`s3_error`), as the
service's module docstring describes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from syncd_emulator.forms import FormReader
from syncd_emulator.messages import ApiError, Request, parse_uint
from syncd_emulator.store import Session

BUCKET = "xvid-emulator"
ACCESS_KEY_ID = "AKIAXVIDEMULATOR0000"
MAX_TOKEN_TTL = 30 * 86400
SCOPES = frozenset(
    {
        "me",
        "mediahub",
        "mediahub_read",
        "mediahub_write",
        "mediahub_submit_jobs",
        "mediahub_download_files",
        "autograph",
    }
)
FORM_FIELDS = (
    "key",
    "acl",
    "success_action_status",
    "name",
    "filename",
    "chunk",
    "chunks",
    "policy",
    "signature",
    "AWSAccessKeyId",
)
UNSIGNED_FIELDS = frozenset({"policy", "signature", "AWSAccessKeyId", "file"})
FIELDS_LIMIT = 20 * 1024  # S3: the form fields (without the file) are at most 20 KB
MAX_POST = 5 * 1024**3  # S3: one POST takes a file of at most 5 GB
INVALID_INPUT = "0x0230001"
_PIPELINE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def invalid(message: str) -> ApiError:
    """The API's 400 ``0x0230001``."""
    return ApiError(400, f"Invalid Input: {message}", INVALID_INPUT)


def s3_error(status: int, code: str, message: str) -> ApiError:
    """A storage error, rendered as S3's XML ``<Error>`` with ``code``."""
    return ApiError(status, message, code)


# -- the token request ------------------------------------------------------------------


@dataclass(frozen=True)
class TokenRequest:
    """One validated ``POST /oauth2/token/`` (the credentials are not checked yet)."""

    client_id: str
    client_secret: str
    scopes: frozenset[str]
    ttl: int


def parse_token_request(request: Request, default_ttl: int) -> TokenRequest:
    """The form-encoded token request; 400 ``0x0230001`` naming what is wrong."""
    ctype = (request.headers.get("Content-Type") or "").split(";")[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        raise invalid("the token request must be application/x-www-form-urlencoded")
    try:
        form = parse_qs(request.read_all(64 * 1024).decode(), keep_blank_values=True, strict_parsing=True)
    except (UnicodeDecodeError, ValueError):
        raise invalid("the token request body is not form-encoded") from None

    def one(name: str, required: bool = True) -> str | None:
        values = form.get(name)
        if values is None and not required:
            return None
        if values is None or len(values) != 1 or not values[0]:
            raise invalid(f"{name} is required (once)")
        return values[0]

    grant = one("grant_type")
    if grant != "client_credential":
        raise invalid(f"grant_type must be client_credential, not {grant!r}")
    client_id, client_secret = one("client_id"), one("client_secret")
    scopes = frozenset(s.strip() for s in (one("scope") or "").split(","))
    if not scopes <= SCOPES:
        raise invalid(f"unknown scope(s) {sorted(scopes - SCOPES)}")
    ttl_text = one("expires_in", required=False)
    ttl = default_ttl if ttl_text is None else parse_uint(ttl_text)
    if ttl is None or not 1 <= ttl <= MAX_TOKEN_TTL:
        raise invalid(f"expires_in must be 1 to {MAX_TOKEN_TTL} seconds")
    return TokenRequest(client_id or "", client_secret or "", scopes, ttl)


# -- a new upload -----------------------------------------------------------------------


def storage_key(object_key: str | None, pipeline_id: str | None) -> str:
    """``tmp/<pipeline_id>/<object_key>``, the key a new upload's form posts to; 400 when
    either is missing or malformed, or the key would leave the pipeline root."""
    if not object_key or object_key.startswith("/") or _CONTROL.search(object_key):
        raise invalid("object_key is required: a key relative to the pipeline root")
    if any(segment in ("", ".", "..") for segment in object_key.split("/")):
        raise invalid(
            "object_key must not have empty, '.' or '..' segments: it stays under the pipeline root"
        )
    if not pipeline_id or not _PIPELINE.fullmatch(pipeline_id):
        raise invalid("pipeline_id is required")
    key = f"tmp/{pipeline_id}/{object_key}"
    if len(key.encode()) > 1024:
        raise invalid("object_key is too long (S3 keys are at most 1024 bytes)")
    return key


# -- the S3 browser POST ----------------------------------------------------------------


def _iso(epoch: float) -> str:
    moment = datetime.fromtimestamp(epoch, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _parse_iso(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def policy_document(pipeline_id: str, expires: float) -> str:
    """The base64 POST policy of an upload in ``pipeline_id``, valid until ``expires``."""
    document = {
        "expiration": _iso(expires),
        "conditions": [
            {"bucket": BUCKET},
            ["starts-with", "$name", ""],
            ["starts-with", "$key", f"tmp/{pipeline_id}/"],
            ["starts-with", "$filename", ""],
            ["starts-with", "$chunk", ""],
            ["starts-with", "$chunks", ""],
            {"acl": "private"},
            {"success_action_status": "201"},
        ],
    }
    return base64.b64encode(json.dumps(document).encode()).decode()


def sign(secret: bytes, policy: str) -> str:
    """The policy's signature, AWS signature v2 style: base64 HMAC-SHA1."""
    return base64.b64encode(hmac.new(secret, policy.encode(), hashlib.sha1).digest()).decode()


def read_post(
    request: Request, bound: bytes, temp_path: Callable[[], Path]
) -> tuple[dict[str, str], int, str, str, Path]:
    """The form's text fields and its file (streamed to a temp file): fields, size, MD5,
    SHA-256, path. S3's way: every field before ``file``, none after it, no field twice.
    FormError for a malformed body."""
    reader = FormReader(request.body, bound)
    fields: dict[str, str] = {}
    part = reader.next_part()
    while part is not None and part[0] != "file":
        if part[0] in fields:
            raise s3_error(400, "InvalidArgument", f"The form field {part[0]!r} appears twice")
        fields[part[0]] = reader.read_value(FIELDS_LIMIT - sum(map(len, fields.values())))
        part = reader.next_part()
    if part is None:
        raise s3_error(400, "InvalidArgument", "POST requires a field named 'file'")
    path = temp_path()
    try:
        size, md5, sha256 = reader.read_file(path)
        after = reader.next_part()
        if after is not None:
            raise s3_error(
                400,
                "InvalidArgument",
                f"The file must be the last field of the form "
                f"(found {after[0]!r} after it; S3 ignores fields after the file)",
            )
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return fields, size, md5, sha256, path


def check_form(bucket: str, fields: dict[str, str], secret: bytes, now: float) -> tuple[int, int]:
    """Check the fields like S3 checks a POST policy; the form's ``(chunk, chunks)``."""
    missing = [f for f in FORM_FIELDS if f not in fields]
    if missing:
        raise s3_error(
            400,
            "InvalidArgument",
            f"Bucket POST must contain the field(s) {missing} (send every form_post_params entry)",
        )
    if fields["AWSAccessKeyId"] != ACCESS_KEY_ID:
        raise s3_error(403, "InvalidAccessKeyId", "The AWS Access Key Id does not exist in our records")
    if not hmac.compare_digest(fields["signature"].encode(), sign(secret, fields["policy"]).encode()):
        raise s3_error(
            403,
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided",
        )
    document = json.loads(base64.b64decode(fields["policy"]))  # signed by us: well-formed
    if now > _parse_iso(document["expiration"]):
        raise s3_error(403, "AccessDenied", "Invalid according to Policy: Policy expired.")
    covered = set()
    for condition in document["conditions"]:
        name, ok = _condition(condition, {**fields, "bucket": bucket})
        covered.add(name)
        if not ok:
            raise s3_error(
                403,
                "AccessDenied",
                f"Invalid according to Policy: Policy Condition failed: {json.dumps(condition)}",
            )
    extra = sorted(set(fields) - covered - UNSIGNED_FIELDS)
    extra = [f for f in extra if not f.lower().startswith("x-ignore-")]
    if extra:
        raise s3_error(403, "AccessDenied", f"Invalid according to Policy: Extra input fields: {extra}")
    chunk, chunks = parse_uint(fields["chunk"]), parse_uint(fields["chunks"])
    if chunk is None or chunks is None or not 0 <= chunk < chunks:
        raise s3_error(400, "InvalidArgument", "chunk and chunks must be integers with 0 <= chunk < chunks")
    return chunk, chunks


def _condition(condition: Any, fields: dict[str, str]) -> tuple[str, bool]:
    """(field name, satisfied) for one POST policy condition."""
    if isinstance(condition, dict) and len(condition) == 1:
        ((name, value),) = condition.items()
        return name, fields.get(name) == value
    if not (isinstance(condition, list) and len(condition) == 3 and isinstance(condition[1], str)):
        return "", False  # e.g. content-length-range: never in an Xvid policy
    op, name, value = condition
    name = name.lstrip("$")
    if op == "eq":
        return name, fields.get(name) == value
    if op == "starts-with":
        return name, name in fields and fields[name].startswith(value)
    return name, False


# -- the PUT ----------------------------------------------------------------------------


def chunk_objects(session: Session, nb: int) -> list[int]:
    """The stored objects (part slots) that make chunks ``0..nb-1``, in chunk order;
    400 when they do not (PUT's rules in the service's module docstring)."""

    def wanted(key: str) -> bool:
        return key == session.key if nb == 1 else key.startswith(session.key)

    by_chunk: dict[int, list[tuple[int, dict[str, Any]]]] = {}
    for slot, part in sorted(session.parts.items()):
        if wanted(part.get("key", session.key)):
            by_chunk.setdefault(part.get("chunk", slot - 1), []).append((slot, part))
    got = sorted(by_chunk)
    twice = {c: [p.get("key") for _, p in found] for c, found in by_chunk.items() if len(found) > 1}
    wrong = sorted(c for c, found in by_chunk.items() if any(p.get("chunks") != nb for _, p in found))
    if got != list(range(nb)) or twice or wrong:
        raise invalid(
            f"nb_chunks is {nb} but the objects posted for this upload hold chunks {got}"
            + (f" (chunks posted under more than one key: {twice})" if twice else "")
            + (f" (chunks {wrong} were posted with another chunks count)" if wrong else "")
            + (
                " (one object per key: chunks posted under one key replace each other)"
                if nb > 1 and len(got) < nb
                else ""
            )
        )
    return [by_chunk[c][0][0] for c in range(nb)]
