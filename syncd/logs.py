"""Logging: one line per meaningful event, secrets redacted, names escaped.

:func:`setup` installs a single stderr handler with
:class:`~syncd.redact.RedactingFilter`, in one of three formats:

text
    ``2026-11-21 08:40:01,123 INFO    syncd.uploader: uploaded ...`` for a
    terminal or a plain log file.
journal
    chosen automatically when stderr *is* the stream systemd connected to
    journald (``$JOURNAL_STREAM`` names its device and inode): no timestamp,
    since the journal adds its own, and a syslog priority prefix (``<6>``,
    ``<4>``, ``<3>``) on every line, so ``journalctl -p warning`` works and
    the lines of a traceback keep their record's priority.
json
    ``log_format = "json"``: one JSON object per line for log shippers, with
    ``time``, ``level``, ``logger``, ``message`` and ``exception``.

The redacting filter sits on the handler, so it also sees httpx's own
``HTTP Request: PUT https://...?X-Amz-Signature=...`` lines and the text of
every exception and traceback. httpx's request lines are only let through at
``log_level = "debug"``; httpcore and watchdog stay at WARNING.

:func:`quoted_path` quotes a path for a log line: control characters, newlines and
undecodable bytes are escaped, so a file name can never forge a log line.
:func:`printable` is the one escape for text syncd did not write itself
(server error bodies, status messages, remote ids): C0/C1 controls and bidi
overrides appear as ``\\x1b`` or ``\\u202e``, never raw. Every formatter applies
it to the whole record too (keeping only the newlines and tabs of a
multi-line record, which each format frames), so nothing reaches a terminal
or a log file raw.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from typing import IO, Any

from syncd.redact import RedactingFilter

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def quoted_path(path: str | bytes) -> str:
    """A path as a safe, quoted, single-line string."""
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    text = path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return repr(text)


# C0 controls, DEL, C1 controls (U+0085 NEL, U+009B CSI ...), the bidi marks,
# embeddings, overrides and isolates, and the Unicode line/paragraph separators:
# everything that can move a terminal's cursor, recolour it, ring it, reorder
# what follows it, or start a new line in a log viewer.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(m: re.Match[str]) -> str:
    ch = m.group()
    code = ord(ch)
    return _SHORT.get(ch) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def printable(text: str, keep: str = "") -> str:
    """``text`` safe for a terminal, a log line or a JSON string read by a person.

    Undecodable bytes (surrogate escapes) become ``\\xff``; control characters
    (C0, DEL, C1) and Unicode bidi controls and line separators become
    ``\\x1b``, ``\\u202e``, ``\\r`` ... so server-provided text (error bodies,
    status messages, remote ids) and file names can neither drive the terminal
    nor forge a line. Characters in ``keep`` (say ``"\\n\\t"``) pass through.
    This is the one escape function for output; the log formatters apply it to
    every record as a last line of defence.
    """
    try:
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that is no escaped byte
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if keep:
        return _UNSAFE.sub(lambda m: m.group() if m.group() in keep else _escape(m), text)
    return _UNSAFE.sub(_escape, text)


# What printable() escapes that json.dumps(ensure_ascii=False) leaves raw (it escapes C0
# itself), and lone surrogates (a file name's undecodable bytes), which no terminal shows.
_UNSAFE_IN_JSON = re.compile(
    "[\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)


def printable_json(value: Any, **dumps: Any) -> str:
    """``json.dumps(value, **dumps)`` safe for a terminal, and still valid JSON.

    Text stays readable (``café``, not ``caf\\u00e9``), but every character
    :func:`printable` would escape is written as a ``\\u202e`` escape, so
    server-chosen text in a ``--json`` view can neither drive the terminal nor
    reorder what follows it.
    """
    text = json.dumps(value, ensure_ascii=False, **dumps)
    return _UNSAFE_IN_JSON.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


_KEEP = "\n\t"  # records may span lines (tracebacks); each formatter frames them


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{_PRIORITY.get(record.levelno, 6)}>"
        text = printable(super().format(record), _KEEP)
        # journald stores each line as its own entry: every line carries the priority.
        return "\n".join(
            prefix + (line if i == 0 else "    " + line) for i, line in enumerate(text.split("\n"))
        )


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return _one_line(printable(super().format(record), _KEEP))


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": printable(record.getMessage(), _KEEP),
        }
        if record.exc_info and not record.exc_text:  # a handler without the redacting filter
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            data["exception"] = printable(record.exc_text, _KEEP)
        return json.dumps(data, ensure_ascii=False)


def _one_line(text: str) -> str:
    # Tracebacks stay multi-line but every continuation line is indented, so
    # nothing after the first line can look like a new record.
    return text.replace("\r", "\\r").replace("\n", "\n    ")


def journal_stream(stream: Any, environ: Any = None) -> bool:
    """Whether ``stream`` is the journald stream systemd gave this service.

    ``$JOURNAL_STREAM`` is ``DEVICE:INODE`` of that stream; it is inherited
    by children whose stderr may point elsewhere, so the stream is compared
    too (as sd_journal_stream_fd(3) recommends).
    """
    env = os.environ if environ is None else environ
    value = env.get("JOURNAL_STREAM", "")
    if not value:
        return False
    try:
        dev, ino = (int(x) for x in value.split(":", 1))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


class _Handler(logging.StreamHandler[IO[str]]):
    """syncd's handler on the root logger; the ``_syncd`` mark finds it again (reload, tests)."""

    _syncd = True


def setup(
    level: str = "info", fmt: str = "text", stream: IO[str] | None = None, *, journal: bool | None = None
) -> None:
    """Configure the root logger (again on reload: syncd's handler is replaced).

    ``fmt`` is ``"text"`` or ``"json"``; ``journal`` forces (True) or
    disables (False) the journald format, which is otherwise detected.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_syncd", False):
            root.removeHandler(handler)
    out = stream or sys.stderr
    handler = _Handler(out)
    handler.addFilter(RedactingFilter())
    if journal is None:
        journal = journal_stream(out)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    elif journal:
        handler.setFormatter(_JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(_TextFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root.addHandler(handler)
    numeric = getattr(logging, level.upper(), logging.INFO)
    root.setLevel(numeric)
    # httpx logs every request with its full URL at INFO: useful when debugging
    # (the filter masks signatures and keys), noise otherwise.
    httpx_level = logging.INFO if numeric <= logging.DEBUG else logging.WARNING
    logging.getLogger("httpx").setLevel(httpx_level)
    for noisy in ("httpcore", "watchdog"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
