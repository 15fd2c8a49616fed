"""Every error syncd raises on purpose, grouped by what happens next.

::

    SyncdError
    ├── ConfigError          the config cannot be used; nothing starts (exit 2).
    │                        Carries a list of Problems, each with its dotted key
    │                        and the bad value, so *all* of them are reported at once.
    ├── LockedError          another instance holds the state-dir lock (exit 3).
    ├── LedgerError          the ledger cannot be opened or is corrupt (exit 4);
    │                        fail closed, `syncd ledger rebuild` repairs it.
    └── UploadError          one upload attempt failed; the uploader decides.
        ├── RetryableError   try again later: transport errors, 408, 429, 5xx,
        │   │                expired signatures. `retry_after` (seconds) is the
        │   │                server's own hint when it gave one; transport
        │   │                errors and 5xx pause the destination (circuit.py)
        │   │                instead of spending the file's attempts.
        │   ├── ExpiredError  a presigned URL, form policy or token expired: the
        │   │                destination renews it and retries at once; it reaches
        │   │                the uploader only when renewal keeps failing, and
        │   │                never counts as an outage (circuit.py).
        │   └── SessionLost  (syncd.destinations._chunked) the service forgot an
        │                    upload session: the chunk driver opens a new one
        │                    (once per attempt); beyond that, an ordinary retry.
        ├── PermanentError   retrying cannot help (4xx, a rejected file): the
        │                    file goes to failed_dir at once with the reason.
        ├── SourceChangedError  the local file changed while it was being read;
        │   │                the upload is discarded and the new version settles.
        │   └── SourceMovedError  renamed, deleted or replaced at its path, bytes
        │                    intact: the upload stands.
        └── FatalError       stop everything (the credentials are wrong for every
                             file, say). The daemon keeps files where they are.

HTTP status codes and httpx exceptions are mapped onto this tree in exactly
one place, :mod:`syncd.http`. Messages never carry secrets: :mod:`syncd.redact`
scrubs URLs and known secret values before any text leaves a destination, and
:func:`describe` escapes control characters in whatever the server said.
"""

from __future__ import annotations

from dataclasses import dataclass


class SyncdError(Exception):
    """Base of every deliberate syncd error."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config: where (dotted key) and what."""

    key: str
    message: str
    severity: str = "error"  # "error" stops startup, "warning" is only reported

    def __str__(self) -> str:
        return f"{self.key}: {self.message}" if self.key else self.message


class ConfigError(SyncdError):
    """The config cannot be used. ``problems`` lists every error found."""

    def __init__(self, problems: list[Problem], source: str = "") -> None:
        self.problems = problems
        self.source = source
        head = f"{source}: " if source else ""
        lines = [str(p) for p in problems]
        if len(lines) == 1:
            text = head + lines[0]
        else:
            text = head + f"{len(lines)} problems:\n" + "\n".join("  " + x for x in lines)
        super().__init__(text)


class LockedError(SyncdError):
    """Another syncd process holds the lock on this state directory."""


class LedgerError(SyncdError):
    """The ledger database is unusable (not a database, corrupt, wrong schema)."""


class LedgerUnreachable(LedgerError):
    """The ledger cannot be used for a reason outside it (its disk full, its file system
    read-only, its directory not writable by this user): nothing is wrong with it, and it
    must not be rebuilt (exit 1, which systemd restarts, not 4)."""


class LedgerDiskFull(LedgerUnreachable):
    """The ledger cannot be opened because its disk is full."""


class UploadError(SyncdError):
    """One upload attempt failed. Subclasses say what the uploader does next."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RetryableError(UploadError):
    """Transient: retry later with backoff, or after ``retry_after`` seconds.

    ``transport`` is True when no HTTP answer came at all (connection refused
    or reset, DNS, timeouts): with a 5xx, that is an outage of the service,
    not a failure of the file (:mod:`syncd.circuit`). ``min_wait`` is the
    least wait the service documents after this answer (Lilt's 60 s after a
    429 that names no wait): ``retry_max_seconds`` caps ``retry_after``, never
    this. ``garbled`` is True for an answer that says nothing about the file
    (not the JSON the protocol names, a success or a redirect it does not
    name): the service, or a proxy or captive portal in front of it, is not
    right; the circuit counts it like a 5xx.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        transport: bool = False,
        min_wait: float = 0.0,
        garbled: bool = False,
    ) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after
        self.transport = transport
        self.min_wait = min_wait
        self.garbled = garbled


class ExpiredError(RetryableError):
    """A presigned URL, form policy or token expired: renew it and retry at once.

    Destinations normally handle this themselves (re-sign the missing parts);
    it reaches the uploader only when renewal itself keeps failing.
    """


class PermanentError(UploadError):
    """Retrying cannot help; the file is moved to failed_dir with this reason."""


class SourceChangedError(UploadError):
    """The file changed (size, mtime, inode) while it was being uploaded."""


class SourceMovedError(SourceChangedError):
    """The bytes read are intact, but the path no longer leads to them.

    The file was renamed, deleted, or replaced by a new file at the same path
    while it was being uploaded. The upload stands (it is of a complete,
    settled version); the uploader archives the file wherever it went.
    """


class FatalError(UploadError):
    """Nothing can be uploaded to this destination until an operator acts."""


def describe(exc: BaseException) -> str:
    """A one-line, secret-free, printable description of an exception for logs and the ledger.

    Server text inside the message (an error body, a status) is redacted, then
    its control characters and bidi overrides are escaped (``\\x1b``), so what
    the ledger stores and ``syncd files``/``status`` print is safe as it is.
    """
    from syncd.logs import printable
    from syncd.redact import redact

    name = type(exc).__name__
    text = str(exc).replace("\n", " ").strip()
    return printable(redact(f"{name}: {text}" if text else name))
