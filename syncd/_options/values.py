"""Single config values: sizes, paths, URLs, and how keys and values appear in messages.

Used by :mod:`syncd._options.parse` for every field, and directly by
:mod:`syncd.config` (its own keys and cross-checks), :mod:`syncd.bandwidth`
and :mod:`syncd.config_edit`. None of these reads a table: that is
:func:`syncd._options.parse_options`.
"""

from __future__ import annotations

import json
import re
import stat
import unicodedata
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
_SIZE_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": KiB,
    "mib": MiB,
    "gib": GiB,
    "tib": 1024 * GiB,
}
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*\Z")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+\Z")


# -- keys and values in messages -----------------------------------------------------------


def dotted(prefix: str, key: str) -> str:
    """``prefix.key``, quoting ``key`` the TOML way when it is not a bare key."""
    part = key if _BARE_KEY.match(key) else json.dumps(key)
    return f"{prefix}.{part}" if prefix else part


def suggest(word: str, candidates: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest candidate, or ``""``."""
    import difflib  # here: only a config with a mistake needs it, not every start

    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown(word: str, candidates: Sequence[str], what: str = "key") -> str:
    """The message for an unknown key: a suggestion, or the list of valid ones."""
    hint = suggest(word, candidates)
    if hint:
        return f"unknown {what}{hint}"
    return f"unknown {what} (valid: {', '.join(candidates) or 'none'})"


def show(value: object) -> str:
    """A config value as it may appear in a message (TOML-ish, truncated)."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, dict):
        text = "a table"
    elif isinstance(value, str | int | float | list):
        text = repr(value)
    elif hasattr(value, "isoformat"):
        text = f"a date/time ({value.isoformat()})"
    else:
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# -- sizes -----------------------------------------------------------------------------------


def parse_size(text: str) -> int:
    """Bytes in ``"8 MiB"``, ``"5MB"``, ``"512 KiB"``, ``"100"``; ValueError otherwise.

    ``KB``/``MB``/``GB``/``TB`` are powers of 1000, ``KiB``/``MiB``/``GiB``/``TiB``
    powers of 1024; unit names are case-insensitive; the result must be whole bytes.
    """
    from decimal import Decimal, InvalidOperation  # here: most configs give no size as text

    match = _SIZE_RE.match(text)
    if not match:
        raise ValueError('expected a size like 8388608, "8 MiB", "5MB" or "512 KiB"')
    number, unit = match.groups()
    factor = _SIZE_UNITS.get(unit.lower())
    if factor is None:
        raise ValueError(f"unknown unit {unit!r} (valid: B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)")
    try:
        total = Decimal(number) * factor
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only decimals
        raise ValueError("not a number") from exc
    if total != total.to_integral_value():
        raise ValueError("is not a whole number of bytes")
    return int(total)


def format_size(n: int) -> str:
    """``8388608`` -> ``"8 MiB"``; sizes that are not whole KiB/MiB/GiB stay in bytes."""
    for name, factor in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n and n % factor == 0:
            return f"{n // factor} {name}"
    return f"{n} bytes"


# -- paths -----------------------------------------------------------------------------------


def resolve_path(raw: str, base_dir: Path) -> Path:
    """``raw`` with ``~`` expanded, joined to ``base_dir`` when relative, resolved.

    The path need not exist. Raises ValueError (with a reason) when it cannot
    be resolved: an embedded NUL, an unknown ``~user``, a symlink loop.
    """
    if "\0" in raw:
        raise ValueError("contains a NUL character")
    try:
        path = Path(raw).expanduser()
        if not path.is_absolute():
            path = base_dir / path
        return path.resolve()
    except (OSError, RuntimeError) as exc:
        raise ValueError(str(exc)) from exc


def path_kind(path: Path) -> str:
    """One of file, dir, other, missing, or unknown (when it cannot be looked at)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return "missing"
    except OSError:
        return "unknown"
    if stat.S_ISREG(st.st_mode):
        return "file"
    return "dir" if stat.S_ISDIR(st.st_mode) else "other"


# -- text and URLs ---------------------------------------------------------------------------


def has_control(text: str) -> bool:
    """Whether ``text`` holds a control character (Unicode category Cc)."""
    return any(unicodedata.category(ch) == "Cc" for ch in text)


def is_http_url(text: str) -> bool:
    """Whether ``text`` is an absolute http(s) URL with a host (and a valid port, if any)."""
    if not text or text != text.strip() or has_control(text) or " " in text:
        return False
    try:
        parts = urllib.parse.urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return False
    host = parts.hostname
    if not (text.startswith(("http://", "https://")) and host):
        return False
    if host.isascii() and "xn--" not in host:
        return True
    import idna  # only for such a host (httpx refuses what IDNA refuses: a zero-width space...)

    try:
        idna.decode(idna.encode(host)) if host.isascii() else idna.encode(host)
    except ValueError:  # idna.IDNAError
        return False
    return True
