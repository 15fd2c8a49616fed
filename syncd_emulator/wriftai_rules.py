"""WriftAI's rules for what a client sends, apart from the service (:mod:`syncd_emulator.wriftai`).

How the server splits a file into parts (:func:`split_parts`); the API
bodies, validated the way FastAPI does (:func:`parse_body`,
:func:`urls_request`, :func:`upload_request`, :func:`etags_request`: 422
listing every bad field, :func:`invalid`); the etags of a complete
(:func:`check_etags`); and what a signed storage request must carry
(:func:`check_signed`, :func:`check_body`). The rules themselves are
described in the service's module docstring.
"""

from __future__ import annotations

import json
from typing import Any

from syncd_emulator import service
from syncd_emulator.messages import ApiError, Request
from syncd_emulator.store import Session

MIB = 1024 * 1024
DEFAULT_PART_SIZE = 5 * MIB
MAX_PARTS = 10_000
RESOURCES = ("prediction",)
NO_CREDENTIALS = "Signed URLs take no Authorization header"
NOT_SIGNED = "Query-string authentication needs the X-Emu-Signature and X-Emu-Expires parameters"
NO_LENGTH = "You must provide the Content-Length HTTP header"


def split_parts(size: int, min_part_size: int = DEFAULT_PART_SIZE) -> tuple[int, int]:
    """``(part_size, count)`` the emulator dictates for a file of ``size`` bytes.

    The part size is the smallest multiple of ``min_part_size`` that needs at
    most 10,000 parts; a file that fits in one part is one part of its own
    size (an empty file: one empty part, part size 0).
    """
    floor = max(1, min_part_size)
    needed = -(-size // MAX_PARTS)
    part = max(floor, -(-needed // floor) * floor)
    if size <= part:
        return size, 1
    return part, -(-size // part)


# -- API bodies, validated the FastAPI way ----------------------------------------------


def problem(field: str | None, kind: str, msg: str, value: Any = None) -> dict[str, Any]:
    """One FastAPI/pydantic validation error."""
    return {"type": kind, "loc": ["body", field] if field else ["body"], "msg": msg, "input": value}


def invalid(problems: list[dict[str, Any]]) -> ApiError:
    """The 422 listing ``problems`` (rendered by ``WriftAIService.error``)."""
    return ApiError(422, "; ".join(p["msg"] for p in problems), json.dumps(problems))


def _require(body: dict[str, Any], problems: list[dict[str, Any]], name: str, kind: type) -> Any:
    """``body[name]`` if it is a valid ``kind`` (str: non-empty; int: >= 0), else None."""
    if name not in body:
        problems.append(problem(name, "missing", "Field required", body))
        return None
    value = body[name]
    if kind is int:
        if not isinstance(value, int) or isinstance(value, bool):
            problems.append(problem(name, "int_type", "Input should be a valid integer", value))
            return None
        if value < 0:
            problems.append(
                problem(name, "greater_than_equal", "Input should be greater than or equal to 0", value)
            )
            return None
        return value
    if not isinstance(value, str):
        problems.append(problem(name, "string_type", "Input should be a valid string", value))
        return None
    if not value:
        problems.append(problem(name, "string_too_short", "String should have at least 1 character", value))
        return None
    return value


def parse_body(request: Request) -> dict[str, Any]:
    """The request's JSON object; 422 when it is not JSON or not an object."""
    try:
        body = request.json()
    except ApiError:
        raise invalid([problem(None, "json_invalid", "JSON decode error")]) from None
    if not isinstance(body, dict):
        raise invalid([problem(None, "model_attributes_type", "Input should be a valid dictionary", body)])
    return body


def urls_request(body: dict[str, Any]) -> tuple[str, int, str, str]:
    """``POST /files/urls``: ``(name, size, resource, mime_type)``."""
    problems: list[dict[str, Any]] = []
    name = _require(body, problems, "name", str)
    size = _require(body, problems, "size", int)
    resource = body.get("resource")
    if "resource" not in body:
        problems.append(problem("resource", "missing", "Field required", body))
    elif resource not in RESOURCES:
        problems.append(problem("resource", "literal_error", "Input should be 'prediction'", resource))
    mime = _require(body, problems, "mime_type", str)
    if problems:
        raise invalid(problems)
    return name, size, str(resource), mime


def upload_request(body: dict[str, Any]) -> tuple[int, str]:
    """``POST /uploads``: ``(size, mime_type)``."""
    problems: list[dict[str, Any]] = []
    size = _require(body, problems, "size", int)
    mime = _require(body, problems, "mime_type", str)
    if problems:
        raise invalid(problems)
    return size, mime


def etags_request(body: dict[str, Any]) -> list[str]:
    """``POST /uploads/{id}/complete``: the ``etags`` list."""
    etags = body.get("etags")
    if "etags" not in body:
        raise invalid([problem("etags", "missing", "Field required", body)])
    if not isinstance(etags, list):
        raise invalid([problem("etags", "list_type", "Input should be a valid list", etags)])
    bad = [i for i, e in enumerate(etags) if not isinstance(e, str)]
    if bad:
        raise invalid(
            [
                {
                    "type": "string_type",
                    "loc": ["body", "etags", i],
                    "msg": "Input should be a valid string",
                    "input": etags[i],
                }
                for i in bad
            ]
        )
    return etags


def check_etags(session: Session, etags: list[str]) -> None:
    """Every part uploaded, and one etag per part answered with one, in order; 400 otherwise."""
    count = int(session.info["count"])
    missing = [n for n in range(1, count + 1) if n not in session.parts]
    if missing:
        raise ApiError(400, f"Part {missing[0]} of {count} has not been uploaded")
    # Parts answered without an etag are not listed (the SDK drops them).
    expected = [n for n in range(1, count + 1) if session.parts[n].get("answered", True)]
    if len(etags) != len(expected):
        raise ApiError(
            400,
            f"Expected {len(expected)} etags, one per part answered with "
            f"an etag, in the order of the upload's urls; got {len(etags)}",
        )
    for i, (number, etag) in enumerate(zip(expected, etags, strict=True)):
        if session.parts[number]["etag"].strip('"') != etag.strip('"'):
            raise ApiError(400, f"etags[{i}] does not match the etag of part {number}")


# -- signed storage ---------------------------------------------------------------------


def check_signed(request: Request, now: float) -> int:
    """Refuse credentials, unsigned and expired requests; return the expiry."""
    return service.check_signed(request, now, no_credentials=NO_CREDENTIALS, unsigned=NOT_SIGNED)


def check_body(request: Request, mime: str, size: int, what: str) -> None:
    """The declared type and length, exactly; 411/403 otherwise."""
    length = request.content_length
    if length is None:
        raise ApiError(411, NO_LENGTH, "MissingContentLength")
    sent = request.headers.get("Content-Type")
    if sent != mime:
        raise ApiError(
            403,
            f"Content-Type {sent!r} does not match the declared mime_type {mime!r}",
            "SignatureDoesNotMatch",
        )
    if length != size:
        raise ApiError(
            403, f"Content-Length {length} does not match the {what} {size}", "SignatureDoesNotMatch"
        )
