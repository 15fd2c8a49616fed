"""The S3 browser POST side of the Xvid emulator: the request's envelope and the answer.

:func:`read_form_post` checks what S3 checks before it reads a form (the
bucket, no ``Authorization``, a multipart body with a ``Content-Length`` under
the POST limit) and reads it; :func:`post_response` is the 201
``PostResponse``. The form's fields and policy are checked in
:mod:`syncd_emulator.xvid_rules`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from xml.sax.saxutils import escape

from syncd_emulator.forms import FormError, boundary
from syncd_emulator.messages import ApiError, Request, Response
from syncd_emulator.xvid_rules import BUCKET, FIELDS_LIMIT, MAX_POST, read_post, s3_error

S3_CODES = {
    400: "InvalidArgument",
    403: "AccessDenied",
    404: "NoSuchKey",
    411: "MissingContentLength",
    412: "PreconditionFailed",
    429: "SlowDown",
    500: "InternalError",
    503: "SlowDown",
}


def too_large() -> ApiError:
    """S3's 400 ``EntityTooLarge`` for a POST over :data:`MAX_POST`."""
    return s3_error(
        400,
        "EntityTooLarge",
        f"Your proposed upload exceeds the maximum allowed size of {MAX_POST} bytes for a POST",
    )


def read_form_post(
    request: Request, temp_path: Callable[[], Path]
) -> tuple[dict[str, str], int, str, str, Path]:
    """The form's fields, the file's size, MD5, SHA-256 and where it was written."""
    if request.params["bucket"] != BUCKET:
        raise s3_error(404, "NoSuchBucket", "The specified bucket does not exist")
    if request.headers.get("Authorization") is not None:
        raise s3_error(
            400,
            "InvalidArgument",
            "POST requires exactly one form of "
            "authentication: the policy; do not send an Authorization header",
        )
    bound = boundary(request.headers.get("Content-Type") or "")
    if bound is None:
        raise s3_error(
            412, "PreconditionFailed", "Bucket POST must be of the enclosure-type multipart/form-data"
        )
    if request.content_length is None:
        raise s3_error(411, "MissingContentLength", "You must provide the Content-Length HTTP header")
    if request.content_length > MAX_POST + FIELDS_LIMIT + 64 * 1024:
        raise too_large()
    try:
        return read_post(request, bound, temp_path)
    except FormError as exc:
        code = {"too_large": "MaxPostPreDataLengthExceeded", "encoding": "InvalidArgument"}.get(
            exc.kind, "MalformedPOSTRequest"
        )
        raise s3_error(400, code, f"The body of your POST request is not acceptable: {exc}") from None


def post_response(location: str, key: str, etag: str) -> Response:
    """S3's 201 ``PostResponse`` for a stored object, with its ``ETag`` and ``Location``."""
    xml = (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<PostResponse>'
        f"<Location>{escape(location)}</Location><Bucket>{BUCKET}</Bucket>"
        f"<Key>{escape(key)}</Key><ETag>{escape(etag)}</ETag></PostResponse>"
    )
    return Response.xml(xml, 201, {"ETag": etag, "Location": location})
