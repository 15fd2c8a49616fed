"""Streaming ``multipart/form-data`` for the emulated services (Xvid, api.video).

:class:`FormReader` is a pull reader: :meth:`~FormReader.next_part` gives
each part's field name and file name (None after the closing delimiter),
then exactly one of :meth:`~FormReader.read_value` (small text, in memory,
bounded) or :meth:`~FormReader.read_file` (streamed to disk, hashed) consumes
its body. Services that care about field order (S3 form posts need ``file``
last) drive it directly; :func:`read_form` collects a whole form.

Malformed input raises :class:`FormError`; each service renders it in its own
error format. A truncated body raises the body reader's own error.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from email.parser import HeaderParser
from pathlib import Path
from typing import Any

from syncd_emulator.messages import Body

CHUNK = 256 * 1024
PREAMBLE_LIMIT = 64 * 1024
HEADER_LIMIT = 16 * 1024


class FormError(Exception):
    """Not acceptable multipart/form-data. ``kind``: malformed, too_large or encoding."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def boundary(content_type: str) -> bytes | None:
    """The multipart boundary of a ``multipart/form-data`` Content-Type, or None."""
    message = HeaderParser().parsestr(f"Content-Type: {content_type}\r\n\r\n")
    value = message.get_param("boundary")
    if message.get_content_type() != "multipart/form-data" or not isinstance(value, str):
        return None
    return value.encode("latin-1") if 1 <= len(value) <= 70 else None


def _unescape(text: str) -> str:
    # Browsers and urllib3 escape '"', CR and LF in names the WHATWG way.
    return text.replace("%22", '"').replace("%0D", "\r").replace("%0A", "\n")


class FormReader:
    """See the module docstring."""

    def __init__(self, body: Body, boundary: bytes) -> None:
        self._body = body
        self._delimiter = b"\r\n--" + boundary
        self._buffer = b"\r\n"  # so that the first boundary line is a delimiter like the others
        self._skip(self._delimiter, lambda data: None, PREAMBLE_LIMIT)  # the preamble
        self._ended = False

    def _fill(self) -> None:
        data = self._body.read(CHUNK)
        if not data:
            raise FormError("malformed", "the multipart body ends before its closing boundary")
        self._buffer += data

    def _skip(self, marker: bytes, sink: Callable[[bytes], Any], limit: int | None) -> None:
        """Pass everything before ``marker`` to ``sink``, then drop the marker."""
        seen = 0
        while True:
            at = self._buffer.find(marker)
            if at >= 0:
                seen += at
                if limit is not None and seen > limit:
                    raise FormError("too_large", "a form field or header is too large")
                sink(self._buffer[:at])
                self._buffer = self._buffer[at + len(marker) :]
                return
            keep = len(marker) - 1
            if len(self._buffer) > keep:
                head, self._buffer = self._buffer[:-keep], self._buffer[-keep:]
                seen += len(head)
                if limit is not None and seen > limit:
                    raise FormError("too_large", "a form field or header is too large")
                sink(head)
            self._fill()

    def next_part(self) -> tuple[str, str | None] | None:
        """(field name, file name or None) of the next part, or None after the last."""
        if self._ended:
            return None
        while len(self._buffer) < 2:
            self._fill()
        if self._buffer.startswith(b"--"):
            self._ended = True
            self._body.drain()  # the epilogue
            return None
        self._skip(b"\r\n", lambda data: None, 1024)  # transport padding, then the line end
        raw = bytearray()
        self._skip(b"\r\n\r\n", raw.extend, HEADER_LIMIT)
        headers = HeaderParser().parsestr(raw.decode("utf-8", "replace") + "\r\n\r\n")
        name = headers.get_param("name", header="content-disposition")
        filename = headers.get_param("filename", header="content-disposition")
        disposition = (headers.get("Content-Disposition") or "").split(";")[0].strip().lower()
        if disposition != "form-data" or not isinstance(name, str) or not name:
            raise FormError("malformed", "every part needs Content-Disposition: form-data with a name")
        return _unescape(name), _unescape(filename) if isinstance(filename, str) else None

    def read_value(self, limit: int) -> str:
        value = bytearray()
        self._skip(self._delimiter, value.extend, max(limit, 0))
        try:
            return value.decode()
        except UnicodeDecodeError:
            raise FormError("encoding", "a form field is not valid UTF-8") from None

    def read_file(self, path: Path) -> tuple[int, str, str]:
        """Stream this part's body into ``path``: (size, md5 hex, sha256 hex)."""
        md5, sha = hashlib.md5(), hashlib.sha256()
        size = 0
        with open(path, "wb") as out:

            def write(data: bytes) -> None:
                nonlocal size
                out.write(data)
                md5.update(data)
                sha.update(data)
                size += len(data)

            self._skip(self._delimiter, write, None)
        return size, md5.hexdigest(), sha.hexdigest()


@dataclass
class FilePart:
    """One received file field, streamed to ``path`` in the store's tmp folder."""

    name: str
    filename: str
    path: Path
    size: int = 0
    md5: str = ""
    sha256: str = ""


@dataclass
class Form:
    fields: dict[str, list[str]] = field(default_factory=dict)
    files: list[FilePart] = field(default_factory=list)

    def discard(self) -> None:
        for f in self.files:
            f.path.unlink(missing_ok=True)


def read_form(
    body: Body,
    boundary_: bytes,
    temp_path: Callable[[], Path],
    *,
    field_limit: int,
    file_fields: tuple[str, ...] = ("file",),
) -> Form:
    """Read a whole form: parts with a file name (or named in ``file_fields``) to
    temp files, the rest as text. On any error every temp file is removed."""
    form = Form()
    try:
        reader = FormReader(body, boundary_)
        while (part := reader.next_part()) is not None:
            name, filename = part
            if filename is not None or name in file_fields:
                file_part = FilePart(name, filename or "", temp_path())
                form.files.append(file_part)  # registered first, so discard() finds it
                file_part.size, file_part.md5, file_part.sha256 = reader.read_file(file_part.path)
            else:
                form.fields.setdefault(name, []).append(reader.read_value(field_limit))
    except BaseException:
        form.discard()
        raise
    return form
