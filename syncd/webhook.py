"""Notifications: a JSON POST to ``daemon.webhook_url`` when something needs a person.

Events (the ``event`` field, also the ``X-Syncd-Event`` header):

``file_failed``
    A file failed for good: a permanent error, or ``max_attempts`` used up.
    It is in ``failed_dir`` (``file.location``) with its ``.error.json``.
``destination_down``
    A destination's circuit opened (:mod:`syncd.circuit`): ``state`` is
    ``down`` (connection errors, timeouts, 5xx) or ``refused`` (401/403, a
    rejected TLS certificate). Said once per outage, not once per file.
``destination_up``
    It takes uploads again; ``was`` is the state it was in, ``down_seconds``
    how long that lasted.

Every body has ``event``, ``id`` (unique per event, the same on every retry of
it: the ``X-Syncd-Delivery`` header), ``time`` (ISO 8601, UTC), ``timestamp``
(Unix seconds), ``host``, ``syncd`` (the version) and ``text``, a one-line
summary for a person (the field chat services such as Slack and Mattermost
show), plus ``file`` and ``reason``, or ``destination``. Text that came from a
server, and file names, are escaped (:func:`syncd.logs.printable`) and
redacted (:func:`syncd.redact.redact`): no secret, token or URL signature is
ever in a body.

With ``daemon.webhook_secret`` every request carries
``X-Syncd-Signature-256: sha256=<hex>``, the HMAC-SHA256 of the exact body
bytes keyed with the secret (GitHub's scheme): a receiver recomputes it and
compares in constant time, and can refuse an ``id`` it has seen (a replay).

Delivery never holds up an upload: :meth:`Webhook.send` puts the event on a
bounded queue (:data:`QUEUE_SIZE`; when it is full the event is dropped and
that is logged) and returns. One thread posts them in order, each with up
to ``len(delays) + 1`` tries: a transport error, 408, 425, 429 or a 5xx is
tried again after the next delay (a longer Retry-After, up to
:data:`RETRY_AFTER_CAP`, is waited instead); any other answer than 2xx is
given up at once. A streak of failures is logged once, at WARNING, and its
end (with how many notifications were lost) once more; the tries between at
debug level. At shutdown what is queued gets one try each, for at most
``drain`` seconds.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import queue
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import httpx

from syncd import __version__
from syncd.circuit import CircuitState
from syncd.errors import PermanentError, RetryableError, UploadError, describe
from syncd.http import check, make_client, send
from syncd.ledger import Row
from syncd.logs import printable
from syncd.redact import redact
from syncd.secrets import Secret

log = logging.getLogger(__name__)

QUEUE_SIZE = 100  # events waiting for delivery; more are dropped (and that is logged)
DELAYS = (2.0, 5.0, 15.0, 30.0)  # seconds before each retry of one event
RETRY_AFTER_CAP = 60.0  # longest Retry-After honoured between two tries
DRAIN = 5.0  # seconds at shutdown for what is still queued
SIGNATURE_HEADER = "X-Syncd-Signature-256"
OK = tuple(range(200, 300))


def sign(secret: str, body: bytes) -> str:
    """The value of :data:`SIGNATURE_HEADER` for ``body``: ``sha256=<hex>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _clean(text: object) -> str:
    """Text for a body: redacted, then control characters escaped."""
    return printable(redact(str(text)))


def _iso(at: float | None) -> str | None:
    if at is None:
        return None
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Webhook:
    """Posts events to one URL from its own thread (see the module docstring)."""

    def __init__(
        self,
        url: Secret,
        secret: Secret | None = None,
        *,
        verify: bool | ssl.SSLContext = True,
        timeout: float = 10.0,
        delays: Sequence[float] = DELAYS,
        queue_size: int = QUEUE_SIZE,
        host: str | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._url = url
        self._secret = secret
        self._verify = verify
        self._timeout = timeout
        self._client: httpx.Client | None = None
        self._stale = False  # the settings changed: the thread makes a new client
        self.delays = tuple(delays)
        self.host = host or socket.gethostname()
        self._queue: queue.Queue[dict[str, Any]] = queue.Queue(queue_size)
        self._closing = threading.Event()
        self._lost = 0  # notifications given up on in the current streak
        self._dropping = False  # in a streak of events dropped for a full queue
        self._dropped = 0
        self._failing_since: float | None = None  # in a streak of failed deliveries: since when
        self.delivered = 0
        self.failed = 0  # given up on after every retry, in total
        self.dropped = 0  # never queued (the queue was full), in total
        self._thread = threading.Thread(target=self._run, name="webhook", daemon=True)
        self._thread.start()

    # configuration ------------------------------------------------------------------

    def configure(
        self,
        url: Secret,
        secret: Secret | None,
        *,
        verify: bool | ssl.SSLContext = True,
        timeout: float = 10.0,
    ) -> None:
        """New settings (a reload); what is queued goes to the new URL."""
        with self._lock:
            if (url, secret, timeout) != (
                self._url,
                self._secret,
                self._timeout,
            ) or verify is not self._verify:
                self._url, self._secret, self._timeout = url, secret, timeout
                self._verify = verify
                self._stale = True

    # events -------------------------------------------------------------------------

    def file_failed(self, row: Row, reason: str) -> bool:
        """A file was given up on and moved to failed_dir (``row`` after the move)."""
        path = printable(row.relpath)
        text = (
            f"syncd on {self.host}: {path} (folder {printable(row.folder)}) failed for "
            f"good, it is in {printable(row.location or row.folder)}: {_clean(reason)}"
        )
        return self.send(
            "file_failed",
            {
                "text": text,
                "file": {
                    "id": row.id,
                    "uuid": row.uuid,
                    "folder": printable(row.folder),
                    "path": path,
                    "size": row.size,
                    "sha256": row.sha256,
                    "destination": printable(row.destination),
                    "attempts": row.attempts,
                    "location": printable(row.location) if row.location else None,
                },
                "reason": _clean(reason),
            },
        )

    def destination_down(self, name: str, state: CircuitState) -> bool:
        """Destination ``name`` went down or began refusing uploads (``state`` now)."""
        what = "refuses uploads" if state.state == "refused" else "is down"
        reason = _clean(state.reason or "")
        return self.send(
            "destination_down",
            {
                "text": f"syncd on {self.host}: destination {printable(name)!r} {what}: {reason}",
                "destination": {
                    "name": printable(name),
                    "state": state.state,
                    "since": _iso(state.since),
                    "reason": reason,
                    "next_probe_at": _iso(state.next_probe_at),
                },
            },
        )

    def destination_up(self, name: str, before: CircuitState, now: float | None = None) -> bool:
        """Destination ``name`` takes uploads again; ``before``: its state until now."""
        now = time.time() if now is None else now
        lasted = None if before.since is None else max(0.0, now - before.since)
        took = "" if lasted is None else f" after {lasted:.0f}s"
        return self.send(
            "destination_up",
            {
                "text": f"syncd on {self.host}: destination {printable(name)!r} is back{took} "
                f"(was {before.state})",
                "destination": {
                    "name": printable(name),
                    "state": "up",
                    "was": before.state,
                    "since": _iso(before.since),
                    "down_seconds": lasted,
                    "reason": _clean(before.reason or ""),
                },
            },
        )

    def send(self, event: str, fields: dict[str, Any]) -> bool:
        """Queue one event; False when it was dropped (queue full, or closing)."""
        if self._closing.is_set():
            return False
        now = time.time()
        body = {
            "event": event,
            "id": str(uuid.uuid4()),
            "time": _iso(now),
            "timestamp": round(now, 3),
            "host": self.host,
            "syncd": __version__,
            **fields,
        }
        try:
            self._queue.put_nowait(body)
        except queue.Full:
            with self._lock:
                self._dropped += 1
                self.dropped += 1
                first, self._dropping = not self._dropping, True
            if first:
                log.warning(
                    "webhook: %d notifications are waiting already; dropping new ones "
                    "until the queue drains (the receiver is slow or down)",
                    self._queue.maxsize,
                )
            return False
        with self._lock:
            if self._dropping:
                log.warning("webhook: taking notifications again (%d dropped)", self._dropped)
                self._dropping, self._dropped = False, 0
        return True

    # delivery -----------------------------------------------------------------------

    def close(self, drain: float = DRAIN) -> None:
        """Take no more events; give what is queued one try each for up to ``drain`` s."""
        self._closing.set()
        self._thread.join(max(0.0, drain))
        if self._thread.is_alive():
            left = self._queue.qsize()
            if left:
                log.warning("webhook: %d notification(s) not delivered at shutdown", left)
        else:
            self._close_client()

    def health(self) -> dict[str, Any]:
        """Counts since start and whether deliveries fail now (`syncd status`, metrics);
        never the URL, which may hold a token."""
        with self._lock:
            return {
                "delivered": self.delivered,
                "failed": self.failed,
                "dropped": self.dropped,
                "pending": self._queue.qsize(),
                "failing_since": self._failing_since,
            }

    def pending(self) -> int:
        """Events queued, not yet delivered or given up on."""
        return self._queue.unfinished_tasks

    def _run(self) -> None:
        while True:
            try:
                body = self._queue.get(timeout=0.2)
            except queue.Empty:
                if self._closing.is_set():
                    return
                continue
            try:
                self._deliver(body)
            except Exception:  # never let the thread die
                log.exception("webhook: unexpected error while posting a notification")
            finally:
                self._queue.task_done()

    def _client_now(self) -> tuple[httpx.Client, Secret, Secret | None]:
        with self._lock:
            if self._client is None or self._stale:
                old, self._client = (
                    self._client,
                    make_client(
                        connect=self._timeout,
                        read=self._timeout,
                        write=self._timeout,
                        pool=self._timeout,
                        max_connections=2,
                        verify=self._verify,
                    ),
                )
                self._stale = False
                if old is not None:
                    old.close()
            return self._client, self._url, self._secret

    def _close_client(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def _deliver(self, body: dict[str, Any]) -> None:
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        tries = 1 if self._closing.is_set() else len(self.delays) + 1
        for attempt in range(1, tries + 1):
            client, url, secret = self._client_now()
            headers = {
                "Content-Type": "application/json",
                "X-Syncd-Event": body["event"],
                "X-Syncd-Delivery": body["id"],
            }
            if secret is not None and secret.reveal():
                headers[SIGNATURE_HEADER] = sign(secret.reveal(), data)
            try:
                response = send(client, "POST", url.reveal(), what="webhook", content=data, headers=headers)
                check(response, what="webhook", ok=OK, auth_fatal=False)
            except UploadError as exc:
                final = (
                    isinstance(exc, PermanentError)
                    or not isinstance(exc, RetryableError)
                    or attempt >= tries
                    or self._closing.is_set()
                )
                why = (
                    _clean(describe(exc))
                    if not isinstance(exc, PermanentError) or exc.status is not None
                    else "the URL is not valid"
                )
                self._failed_try(body["event"], why, final, attempt, tries)
                if final:
                    return
                delay = self.delays[attempt - 1]
                hint = getattr(exc, "retry_after", None)
                if hint is not None:
                    delay = max(delay, min(hint, RETRY_AFTER_CAP))
                if self._closing.wait(delay):
                    tries = attempt + 1  # closing: one last try, at once
                continue
            self._delivered()
            return

    def _failed_try(self, event: str, why: str, final: bool, attempt: int, tries: int) -> None:
        with self._lock:
            first = self._failing_since is None
            if first:
                self._failing_since = time.time()
            if final:
                self._lost += 1
                self.failed += 1
        if first:
            log.warning(
                "webhook: cannot deliver the %s notification (%s); %s further "
                "failures are logged at debug level until one gets through",
                event,
                why,
                "giving it up;" if final else f"trying {tries - attempt} more time(s);",
            )
        elif final:
            log.debug("webhook: gave up the %s notification after %d tries (%s)", event, attempt, why)
        else:
            log.debug("webhook: try %d of %d of the %s notification failed (%s)", attempt, tries, event, why)

    def _delivered(self) -> None:
        with self._lock:
            self.delivered += 1
            streak, lost = self._failing_since is not None, self._lost
            self._lost, self._failing_since = 0, None
        if streak:
            log.warning("webhook: delivering notifications again (%d given up meanwhile)", lost)


__all__ = ["DELAYS", "QUEUE_SIZE", "SIGNATURE_HEADER", "Webhook", "sign"]
