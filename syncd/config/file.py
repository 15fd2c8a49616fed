"""The config file itself: where it is, reading it safely, and who may change it.

:func:`read_config` reads at most ``MAX_CONFIG_BYTES`` of a regular file (a
FIFO or ``/dev/zero`` is refused, never blocked on); :func:`file_problems`
warns when group/others can write the file or another user than root or the
caller owns it (it names, or holds, the secrets).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from syncd.errors import ConfigError, Problem

DEFAULT_CONFIG_PATH = Path("/etc/syncd/config.toml")
MAX_CONFIG_BYTES = 1024 * 1024  # a config is a few KiB; this bounds what a wrong path costs


def default_config_path() -> Path:
    """``$SYNCD_CONFIG`` when set and non-empty, else ``/etc/syncd/config.toml``."""
    env = os.environ.get("SYNCD_CONFIG", "")
    return Path(env).expanduser() if env else DEFAULT_CONFIG_PATH


def read_config(path: Path) -> tuple[bytes, os.stat_result]:
    """The bytes of the config file at ``path`` and its ``fstat``.

    Raises ConfigError (naming ``path``) when it is not a regular file (a
    FIFO, a device such as ``/dev/zero``, a folder) or holds more than
    ``MAX_CONFIG_BYTES``; OSError when it cannot be opened or read. Never
    blocks on a FIFO and never reads more than the cap plus one byte.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(
                [
                    Problem(
                        "",
                        (
                            f"{path} is not a regular file (it is {_file_kind(st.st_mode)}); "
                            "point --config at the TOML file"
                        ),
                    )
                ],
                str(path),
            )
        chunks: list[bytes] = []
        left = MAX_CONFIG_BYTES + 1
        while left > 0:
            chunk = os.read(fd, min(left, 65536))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        if left <= 0:
            raise ConfigError(
                [
                    Problem(
                        "",
                        (
                            f"{path} is larger than {MAX_CONFIG_BYTES // 1024} KiB, the limit for a "
                            "config file; is it the right file?"
                        ),
                    )
                ],
                str(path),
            )
        return b"".join(chunks), st
    finally:
        os.close(fd)


def _file_kind(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((text for test, text in kinds if test(mode)), "not a regular file")


def file_problems(path: Path, st: os.stat_result) -> list[Problem]:
    """Warnings about who can change the config file (it names, or holds, the secrets)."""
    out: list[Problem] = []
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022:
        out.append(
            Problem(
                "",
                (
                    f"{path} is writable by group/others (mode {mode:04o}): they could point uploads "
                    f"elsewhere or at other secrets; run `chmod go-w {path}` (0640 root:syncd)"
                ),
                severity="warning",
            )
        )
    if st.st_uid not in (0, os.geteuid()):
        out.append(
            Problem(
                "",
                (
                    f"{path} is owned by uid {st.st_uid}, neither root nor this user: that user "
                    f"can change it; run `chown root {path}`"
                ),
                severity="warning",
            )
        )
    return out


__all__ = ["DEFAULT_CONFIG_PATH", "MAX_CONFIG_BYTES", "default_config_path", "file_problems", "read_config"]
