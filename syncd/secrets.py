"""Secret values from the config: ``env:NAME``, ``file:/path``, ``credential:NAME`` or literal.

A config value for a secret key (an API key, a token, a client secret) is a
*reference* that :func:`resolve` turns into a :class:`Secret`:

``env:NAME``
    The environment variable ``NAME``. Unset or empty is an error.
``file:PATH``
    The content of a file, with trailing newlines stripped. A relative
    ``PATH`` resolves against the config file's folder; ``~`` is expanded.
    Unreadable, empty, not UTF-8 or larger than 64 KiB is an error. A file
    readable by group or others is a warning.
``credential:NAME``
    ``$CREDENTIALS_DIRECTORY/NAME``: a systemd credential
    (``LoadCredential=``/``SetCredential=`` in the unit). Read like ``file:``.
anything else
    The value itself, a *literal* secret (``Secret.source == "literal"``).
    The prefixes are case-sensitive, so a literal cannot start with them.

Contract: no message produced here ever contains a secret's value; they
show the reference (``env:LILT_API_KEY``) or ``'***'`` instead. Every
resolved value is registered with :func:`syncd.redact.register`, so it is
masked in any log line or error text produced later.
"""

from __future__ import annotations

import hmac
import os
import stat
from pathlib import Path

from syncd import redact
from syncd.errors import Problem

ENV = "env:"
FILE = "file:"
CREDENTIAL = "credential:"
LITERAL = "literal"
MAX_SECRET_FILE_BYTES = 64 * 1024


class Secret:
    """A resolved secret. Its repr and str never show the value.

    ``source`` says where the value came from: the reference as written
    (``"env:LILT_API_KEY"``, ``"file:/etc/syncd/key"``,
    ``"credential:lilt"``) or ``"literal"``. Only :meth:`reveal` returns the
    value; call it at the last moment (building a request header), never to
    log or store it.
    """

    __slots__ = ("_value", "source")

    def __init__(self, value: str, source: str = LITERAL) -> None:
        self._value = value
        self.source = source

    def reveal(self) -> str:
        """The secret value itself."""
        return self._value

    @property
    def is_literal(self) -> bool:
        """True when the value was written into the config file itself."""
        return self.source == LITERAL

    def __repr__(self) -> str:
        return f"Secret({self.source!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return self.source == other.source and hmac.compare_digest(
            self._value.encode(), other._value.encode()
        )

    def __hash__(self) -> int:
        return hash((Secret, self.source))


def describe_ref(ref: object) -> str:
    """How a secret config value may appear in a message: the reference, or ``'***'``."""
    if isinstance(ref, str) and ref.startswith((ENV, FILE, CREDENTIAL)):
        return repr(ref)
    return "'***'"


def resolve(
    ref: str,
    *,
    key: str,
    problems: list[Problem],
    base_dir: Path,
    check_only: bool = False,
) -> Secret | None:
    """Resolve the secret reference ``ref`` found at dotted ``key``.

    Returns the :class:`Secret`, or ``None`` after appending an error
    :class:`~syncd.errors.Problem` to ``problems``. A ``file:`` secret whose
    file is readable by group or others also appends a warning.

    With ``check_only`` the reference is only checked for syntax: nothing is
    read from the environment or the disk, and the returned Secret has an
    empty value (``syncd folder add`` validates edits this way, because the
    service's environment and credentials are not those of an admin shell).
    Literal secrets keep their value either way.
    """
    if ref.startswith(ENV):
        name = ref[len(ENV) :]
        if not name or "=" in name or "\0" in name:
            problems.append(Problem(key, f"{ref!r} is not a valid environment variable name"))
            return None
        if check_only:
            return Secret("", ref)
        value = os.environ.get(name, "")
        if not value:
            problems.append(Problem(key, f"environment variable {name} is not set"))
            return None
        return _registered(value, ref)

    if ref.startswith(FILE):
        raw = ref[len(FILE) :]
        if not raw or "\0" in raw:
            problems.append(Problem(key, f"{ref!r}: expected file:PATH"))
            return None
        if check_only:
            return Secret("", ref)
        path = Path(raw).expanduser()
        if not path.is_absolute():
            path = base_dir / path
        content = _read_secret_file(path, key=key, problems=problems, what="secret file")
        return None if content is None else _registered(content, ref)

    if ref.startswith(CREDENTIAL):
        name = ref[len(CREDENTIAL) :]
        # a name systemd takes in LoadCredential=NAME:PATH: a plain file name without ":"
        # (systemd splits there), white space or control characters
        if (
            not name
            or name in (".", "..")
            or any(c in "/:" or c.isspace() or not c.isprintable() for c in name)
        ):
            problems.append(
                Problem(key, f"{ref!r}: expected credential:NAME (a plain file name, no ':' or spaces)")
            )
            return None
        if check_only:
            return Secret("", ref)
        directory = os.environ.get("CREDENTIALS_DIRECTORY", "")
        if not directory:
            problems.append(
                Problem(
                    key,
                    f"{ref!r} needs $CREDENTIALS_DIRECTORY, which systemd sets for a service "
                    f"with LoadCredential={name}:/path (or SetCredential=); it is not set here",
                )
            )
            return None
        credential = _read_secret_file(
            Path(directory) / name, key=key, problems=problems, what="credential", warn_mode=False
        )
        return None if credential is None else _registered(credential, ref)

    if not ref:
        problems.append(Problem(key, "must not be empty"))
        return None
    return _registered(ref, LITERAL)


def _registered(value: str, source: str) -> Secret:
    redact.register(value)
    return Secret(value, source)


def _read_secret_file(
    path: Path, *, key: str, problems: list[Problem], what: str, warn_mode: bool = True
) -> str | None:
    """Read one secret file; report why not (OS reason, never content) and return None."""
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                problems.append(Problem(key, f"{what} {path} is not a regular file"))
                return None
            data = fh.read(MAX_SECRET_FILE_BYTES + 1)
    except OSError as exc:
        problems.append(Problem(key, f"cannot read {what} {path}: {exc.strerror or exc}"))
        return None
    if len(data) > MAX_SECRET_FILE_BYTES:
        problems.append(Problem(key, f"{what} {path} is larger than 64 KiB; is it the right file?"))
        return None
    try:
        value = data.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        problems.append(Problem(key, f"{what} {path} is not valid UTF-8 text"))
        return None
    if not value:
        problems.append(Problem(key, f"{what} {path} is empty"))
        return None
    if warn_mode and st.st_mode & 0o044:
        problems.append(
            Problem(
                key,
                f"secret file {path} is readable by group/others "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); run `chmod 600 {path}`",
                severity="warning",
            )
        )
    return value


__all__ = ["Secret", "describe_ref", "resolve"]
