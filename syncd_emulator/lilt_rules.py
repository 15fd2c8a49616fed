"""Lilt's rules for what a client sends, apart from the service (:mod:`syncd_emulator.lilt`).

The API key (:func:`check_api_key`: 401 otherwise), the initiate body
(:class:`Spec`, from JSON with :func:`parse_spec` or from the query with
:func:`spec_from_query`), the part size at signing time
(:func:`check_part_size`), the body of a complete (:func:`parse_complete`)
and its parts (:func:`check_parts`: S3's order, ETag and size rules, plus
Lilt's one part size). These refusals are a 400 ``{"message"}`` naming the
S3 error or the field; a storage request without a valid presigned URL
(:func:`check_presigned`) is a 403 with S3's error code; as the service's
module docstring describes.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from dataclasses import dataclass
from typing import Any

from syncd_emulator.messages import ApiError, Request, parse_uint
from syncd_emulator.service import check_signed
from syncd_emulator.store import Session

MIB = 1024 * 1024
MIN_PART = 5 * MIB
NO_CREDENTIALS = "Storage URLs are presigned: do not send API credentials (Authorization or key=)"
NOT_PRESIGNED = "Query-string authentication needs the X-Emu-Signature and X-Emu-Expires parameters"


@dataclass(frozen=True)
class Spec:
    """One validated InitiateUploadBody."""

    filename: str
    type: str
    size: int | None = None
    labels: tuple[str, ...] = ()
    category: str | None = None
    uuid: str | None = None


def bad(message: str) -> ApiError:
    return ApiError(400, message)


def check_api_key(request: Request, expected: str) -> list[str]:
    """Check the API key; return the ``key=`` values left for the s3 key (curl form)."""
    keys, header = request.query.get("key", []), request.headers.get("Authorization")
    want = expected.encode()
    if header is not None:
        scheme, _, value = header.partition(" ")
        try:
            user, sep, password = base64.b64decode(value.strip(), validate=True).partition(b":")
        except (binascii.Error, ValueError):
            user, sep, password = b"", b"", b""
        if scheme.lower() != "basic" or not sep:
            raise ApiError(401, "Authorization must be Basic base64(KEY:KEY)")
        if not (hmac.compare_digest(user, want) and hmac.compare_digest(password, want)):
            raise ApiError(401, "Invalid API key")
        return keys
    if not keys:
        raise ApiError(401, "Missing API key: use Basic auth or the key query parameter")
    if not hmac.compare_digest(keys[0].encode(), want):
        raise ApiError(401, "Invalid API key")
    return keys[1:]


def parse_spec(obj: Any, where: str = "") -> Spec:
    """Validate one upload body; ApiError 400 naming the bad field."""
    if not isinstance(obj, dict):
        raise bad(f"{where or 'body'} must be an object")
    filename, mime, meta = obj.get("filename"), obj.get("type"), obj.get("metadata")
    if not isinstance(filename, str) or not filename:
        raise bad(f"{where}filename is required and must be a non-empty string")
    if not isinstance(mime, str) or not mime:
        raise bad(f"{where}type is required and must be a non-empty string")
    meta = {} if meta is None else meta
    if not isinstance(meta, dict):
        raise bad(f"{where}metadata must be an object")
    size, labels = meta.get("size"), meta.get("labels", [])
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise bad(f"{where}metadata.size must be an integer >= 0")
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise bad(f"{where}metadata.labels must be an array of strings")
    for name in ("category", "uuid"):
        if meta.get(name) is not None and not isinstance(meta[name], str):
            raise bad(f"{where}metadata.{name} must be a string")
    return Spec(filename, mime, size, tuple(labels), meta.get("category"), meta.get("uuid"))


def spec_from_query(request: Request) -> Spec:
    """The GET variant: ``filename``, ``type``, ``metadata.size|labels|category|uuid``."""
    size_text = request.arg("metadata.size")
    size = parse_uint(size_text)
    if size_text is not None and size is None:
        raise bad("metadata.size must be an integer >= 0")
    labels = request.arg("metadata.labels")
    return parse_spec(
        {
            "filename": request.arg("filename"),
            "type": request.arg("type"),
            "metadata": {
                "size": size,
                "labels": [x for x in (labels or "").split(",") if x],
                "category": request.arg("metadata.category"),
                "uuid": request.arg("metadata.uuid"),
            },
        }
    )


def check_part_size(rule: int, session: Session, number: int, size: int) -> None:
    """Lilt's rule at signing time: part ``number`` is ``rule`` bytes, or the rest of
    the declared ``metadata.size`` for the last part (at most ``rule`` when no size
    was declared). ``rule`` 0: any size."""
    if not rule:
        return
    declared = session.info.get("size")
    if declared is None:
        if size > rule:
            raise bad(f"InvalidPartSize: part {number} is {size} bytes; parts are {rule} bytes")
        return
    count = max(1, -(-declared // rule))
    if number > count:
        raise bad(
            f"InvalidPartSize: metadata.size {declared} makes {count} part(s) of "
            f"{rule} bytes; there is no part {number}"
        )
    want = min(rule, declared - (number - 1) * rule)
    if size != want:
        raise bad(
            f"InvalidPartSize: part {number} must be {want} bytes: parts are {rule} "
            "bytes, the last one the rest of metadata.size"
        )


def check_parts(rule: int, session: Session, parts: list[dict[str, Any]]) -> list[int]:
    """The part numbers of a complete, checked as S3 and Lilt's ``rule`` (0: S3 only)
    check them: order, ETags, sizes, total."""
    numbers = [p["PartNumber"] for p in parts]
    if any(a >= b for a, b in zip(numbers, numbers[1:], strict=False)):
        raise bad("InvalidPartOrder: the list of parts was not in ascending order")
    for part in parts:
        stored = session.parts.get(part["PartNumber"])
        if stored is None or stored["etag"] != part["ETag"]:
            raise bad(f"InvalidPart: part {part['PartNumber']} was not uploaded or its ETag does not match")
    sizes = [session.parts[n]["size"] for n in numbers]
    for number, size in zip(numbers, sizes, strict=True):
        if rule and (size > rule or (size != rule and number != numbers[-1])):
            raise bad(
                f"InvalidPartSize: part {number} is {size} bytes; every part but the "
                f"last must be {rule} bytes, and the last one at most that"
            )
    for number, size in zip(numbers[:-1], sizes[:-1], strict=True):
        if size < MIN_PART:
            raise bad(
                f"EntityTooSmall: part {number} is {size} bytes; every part but the "
                f"last must be at least {MIN_PART} bytes"
            )
        if size != sizes[0]:
            raise bad(
                f"InvalidPart: part {number} is {size} bytes; every part but the last "
                f"must be {sizes[0]} bytes like part {numbers[0]}"
            )
    declared = session.info.get("size")
    if declared is not None and sum(sizes) != declared:
        raise bad(f"IncompleteBody: the parts add up to {sum(sizes)} bytes, metadata.size was {declared}")
    return numbers


def parse_complete(body: Any) -> list[dict[str, Any]]:
    """The ``parts`` of a complete body: a non-empty array of ``{PartNumber, ETag}``."""
    parts = body.get("parts") if isinstance(body, dict) else None
    if not isinstance(parts, list) or not parts:
        raise bad("parts is required and must be a non-empty array")
    for i, part in enumerate(parts):
        if not isinstance(part, dict) or not isinstance(part.get("ETag"), str):
            raise bad(f"parts[{i}].ETag is required and must be a string")
        number = part.get("PartNumber")
        if not isinstance(number, int) or isinstance(number, bool) or number < 1:
            raise bad(f"parts[{i}].PartNumber is required and must be an integer >= 1")
    return parts


def check_presigned(request: Request, now: float) -> int:
    """A storage request: no API credentials, signed, not expired; its expiry (403 otherwise)."""
    return check_signed(
        request, now, no_credentials=NO_CREDENTIALS, unsigned=NOT_PRESIGNED, credential_params=("key",)
    )
