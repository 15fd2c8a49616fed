"""Logging: one line per meaningful event, secrets redacted, names escaped.

``setup`` installs a single stderr handler with :class:`~syncd.redact.RedactingFilter`.
Under journald (``JOURNAL_STREAM`` set) lines carry a syslog priority prefix
(``<6>``) and no timestamp, since the journal adds its own; ``log_format =
"json"`` emits one JSON object per line for log shippers. httpx's own INFO
lines (full URLs) are demoted to DEBUG noise but still pass the redactor.

:func:`qp` quotes a path for a log line: control characters, newlines and
undecodable bytes are escaped, so a file name can never forge a log line.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

from syncd.redact import RedactingFilter

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
             logging.CRITICAL: 2}


def qp(path: str | bytes) -> str:
    """A path as a safe, quoted, single-line string."""
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    text = path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return repr(text)


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{_PRIORITY.get(record.levelno, 6)}>"
        return prefix + _one_line(super().format(record))


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return _one_line(super().format(record))


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_text:
            data["exception"] = record.exc_text
        return json.dumps(data, ensure_ascii=False)


def _one_line(text: str) -> str:
    # Tracebacks stay multi-line but every continuation line is indented, so
    # nothing after the first line can look like a new record.
    return text.replace("\r", "\\r").replace("\n", "\n    ")


def setup(level: str = "info", fmt: str = "text", stream: object = None) -> None:
    """Configure the root logger once (again on reload: handlers are replaced)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_syncd", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    handler._syncd = True  # type: ignore[attr-defined]
    handler.addFilter(RedactingFilter())
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    elif os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(_JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(_TextFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    for noisy in ("httpx", "httpcore", "watchdog"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
