"""Notifications (syncd/webhook.py) against a real loopback HTTP server."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import random
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from syncd import redact
from syncd.circuit import THRESHOLD, CircuitState
from syncd.config import loads
from syncd.errors import ConfigError, FatalError, PermanentError, RetryableError
from syncd.ledger import Ledger
from syncd.secrets import Secret
from syncd.uploader import Uploader
from syncd.webhook import SIGNATURE_HEADER, Webhook, sign
from tests.conftest import FakeClock, make_folder, queue_file
from tests.faultproxy import FaultProxy
from tests.harness import wait_until
from tests.unit.test_uploader import FakeDestination

FAST = (0.05, 0.05, 0.05, 0.05)


class Receiver:
    """A webhook receiver on loopback: answers ``statuses`` in turn, then 200."""

    def __init__(self, statuses: list[int] | None = None, delay: float = 0.0) -> None:
        self.statuses = list(statuses or [])
        self.delay = delay
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.release = threading.Event()  # set to let delayed answers go at once
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                if receiver.delay:
                    receiver.release.wait(receiver.delay)
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                text = b"upstream \x1b[31mboom\x1b[0m" if status >= 400 else b"ok"
                self.send_response(status)
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/T0123/secret-path"
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.requests]

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Any]:
    made: list[Receiver] = []

    def make(statuses: list[int] | None = None, delay: float = 0.0) -> Receiver:
        r = Receiver(statuses, delay)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def hook(url: str, secret: str | None = None, **kw: Any) -> Webhook:
    return Webhook(
        Secret(url), Secret(secret) if secret else None, delays=kw.pop("delays", FAST), host="files1", **kw
    )


def test_retries_until_the_receiver_accepts_and_logs_the_streak_once(
    receiver: Any, caplog: pytest.LogCaptureFixture
) -> None:
    r = receiver([500, 503, 502])
    w = hook(r.url, "hook-signing-secret")
    caplog.set_level(logging.DEBUG, logger="syncd.webhook")
    down = CircuitState(
        "down",
        since=1_800_000_000.0,
        reason="upload: ConnectError: refused",
        next_probe_at=1_800_000_004.0,
        failures=3,
    )
    assert w.destination_down("contracts", down)
    wait_until(lambda: w.delivered == 1, 10, what="delivery")
    assert len(r.requests) == 4  # three failures, then accepted
    ids = {h["x-syncd-delivery"] for h, _ in r.requests}
    assert len(ids) == 1  # the same delivery id on every retry
    headers, body = r.requests[-1]
    assert headers["content-type"] == "application/json"
    assert headers["x-syncd-event"] == "destination_down"
    expected = "sha256=" + hmac.new(b"hook-signing-secret", body, hashlib.sha256).hexdigest()
    assert headers[SIGNATURE_HEADER.lower()] == expected == sign("hook-signing-secret", body)
    data = json.loads(body)
    assert data["event"] == "destination_down" and data["id"] in ids and data["host"] == "files1"
    assert data["destination"] == {
        "name": "contracts",
        "state": "down",
        "since": "2027-01-15T08:00:00Z",
        "reason": "upload: ConnectError: refused",
        "next_probe_at": "2027-01-15T08:00:04Z",
    }
    assert data["text"] == ("syncd on files1: destination 'contracts' is down: upload: ConnectError: refused")
    warnings = [rec.getMessage() for rec in caplog.records if rec.levelno >= logging.WARNING]
    assert len(warnings) == 2, warnings  # the streak began, and it ended
    assert "cannot deliver the destination_down notification" in warnings[0]
    assert "HTTP 500" in warnings[0] and "\x1b" not in warnings[0] and "\\x1b" in warnings[0]
    assert "secret-path" not in warnings[0]
    assert "delivering notifications again (0 given up meanwhile)" in warnings[1]
    w.close()


def test_gives_up_after_the_retries_then_reports_the_loss(
    receiver: Any, caplog: pytest.LogCaptureFixture
) -> None:
    r = receiver([500] * 5)
    w = hook(r.url)
    caplog.set_level(logging.WARNING, logger="syncd.webhook")
    w.destination_up("media", CircuitState("refused", since=time.time() - 90, reason="HTTP 401"))
    w.destination_up("videos", CircuitState("down", since=time.time() - 5, reason="HTTP 503"))
    wait_until(lambda: w.delivered == 1, 10, what="second delivery")
    assert len(r.requests) == 6 and w.failed == 1  # 5 tries of the first, 1 of the second
    first, second = r.bodies()[0], r.bodies()[-1]
    assert first["event"] == "destination_up" and first["destination"]["was"] == "refused"
    assert 89 <= first["destination"]["down_seconds"] <= 95
    assert second["destination"]["name"] == "videos"
    messages = [rec.getMessage() for rec in caplog.records]
    assert len(messages) == 2
    assert "trying 4 more time(s)" in messages[0]
    assert "delivering notifications again (1 given up meanwhile)" in messages[1]
    # what `syncd status` and the metrics show: the streak is over, the loss is counted
    assert w.health() == {"delivered": 1, "failed": 1, "dropped": 0, "pending": 0, "failing_since": None}
    w.close()


def test_health_says_since_when_deliveries_fail(receiver: Any) -> None:
    r = receiver([500] * 3)
    w = hook(r.url, delays=(0.05, 30.0))
    before = time.time()
    w.send("file_failed", {"n": 1})
    wait_until(lambda: len(r.requests) == 2, 10, what="two failed tries")
    seen = w.health()
    assert seen["delivered"] == seen["failed"] == 0 and seen["failing_since"] is not None
    assert before <= seen["failing_since"] <= time.time()
    assert "secret-path" not in json.dumps(seen)  # never the URL
    w.close(drain=0.1)


def test_a_client_error_is_not_retried(receiver: Any) -> None:
    r = receiver([404])
    w = hook(r.url)
    w.send("file_failed", {"text": "x"})
    wait_until(lambda: w.failed == 1, 10, what="giving up")
    time.sleep(0.2)
    assert len(r.requests) == 1
    w.close()


def test_sending_never_blocks_and_a_full_queue_drops(receiver: Any, caplog: pytest.LogCaptureFixture) -> None:
    r = receiver(delay=30)  # the receiver hangs
    w = hook(r.url, queue_size=2, timeout=30)
    caplog.set_level(logging.WARNING, logger="syncd.webhook")
    assert w.send("file_failed", {"n": 0})
    wait_until(lambda: len(r.requests) == 1, 10, what="the first one in flight (and hanging)")
    t0 = time.monotonic()
    results = [w.send("file_failed", {"n": i}) for i in range(1, 10)]
    assert time.monotonic() - t0 < 5.0  # never the receiver's 30 s: the sends did not block
    assert results.count(True) == 2  # the queue's size; the sender holds the first
    assert [m for m in caplog.messages if "dropping new ones" in m] and len(caplog.messages) == 1
    r.release.set()
    wait_until(lambda: w.pending() == 0, 10, what="queue drained")
    assert w.send("file_failed", {"n": 99})
    assert any("taking notifications again (7 dropped)" in m for m in caplog.messages)
    assert w.health()["dropped"] == 7  # the total stays when the streak ends
    w.close()


def test_close_gives_what_is_queued_one_try(receiver: Any) -> None:
    r = receiver([500] * 10)
    w = hook(r.url, delays=(30.0,))
    w.send("a", {})
    wait_until(lambda: len(r.requests) == 1, 10, what="first try")
    # its 500 was read (not still on the wire as close begins): it waits out the backoff
    wait_until(lambda: w.health()["failing_since"] is not None, 10, what="first failure")
    w.send("b", {})
    t0 = time.monotonic()
    w.close(drain=5)
    assert time.monotonic() - t0 < 3  # the 30 s backoff was cut short
    assert [b["event"] for b in r.bodies()] == ["a", "a", "b"]  # one last try each
    assert not w.send("c", {})


def test_bodies_carry_no_secret_and_no_raw_control_characters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    redact.register("sk-webhooktest-4f2a9c")
    sent: list[tuple[str, dict[str, Any]]] = []
    w = hook("http://127.0.0.1:9/")

    def record(event: str, fields: dict[str, Any]) -> bool:
        sent.append((event, fields))
        return True

    monkeypatch.setattr(w, "send", record)
    ledger = Ledger.open(tmp_path / "l.sqlite3")
    ledger.observe(str(tmp_path), ["bad\x1b[2Jname\udcff.pdf"], destination="d", labels=(), category=None)
    row = ledger.active_for_path(str(tmp_path), "bad\x1b[2Jname\udcff.pdf")
    assert row is not None
    reason = (
        "HTTP 400: key sk-webhooktest-4f2a9c rejected for "
        "https://s3.example/b/o?X-Amz-Signature=abcdef0123&X-Amz-Date=1 \x1b]0;owned\x07"
    )
    w.file_failed(row, reason)
    w.destination_down("d", CircuitState("refused", since=1.0, reason=reason))
    text = json.dumps(sent)
    assert "sk-webhooktest-4f2a9c" not in text and "abcdef0123" not in text
    assert "\x1b" not in text and "\\u001b" not in text and "\udcff" not in text
    event, fields = sent[0]
    assert event == "file_failed"
    assert fields["file"]["path"] == "bad\\x1b[2Jname\\xff.pdf"
    assert "***" in fields["reason"] and "\\x1b]0;owned\\x07" in fields["reason"]
    json.dumps(fields, ensure_ascii=False).encode("utf-8")  # valid UTF-8 on the wire
    ledger.close()
    w.close(0)


# -- the uploader tells it ---------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def file_failed(self, row: Any, reason: str) -> bool:
        self.events.append(("file_failed", (row, reason)))
        return True

    def destination_down(self, name: str, state: CircuitState) -> bool:
        self.events.append(("destination_down", (name, state.state)))
        return True

    def destination_up(self, name: str, before: CircuitState, now: float | None = None) -> bool:
        self.events.append(("destination_up", (name, before.state)))
        return True


@pytest.fixture
def uploader(tmp_path: Path, clock: FakeClock) -> Iterator[Any]:
    ledger = Ledger.open(tmp_path / "state" / "ledger.sqlite3", clock=clock)
    folder = make_folder(tmp_path, max_attempts=2)
    dest = FakeDestination()
    up = Uploader(
        ledger,
        lambda: {"dest": dest},
        lambda: {os.fspath(folder.path): folder},
        retry_base=1.0,
        retry_max=30.0,
        clock=clock,
        rng=random.Random(1),
    )
    rec = Recorder()
    up.set_webhook(rec)  # type: ignore[arg-type]  # a recorder, not a Webhook

    def drop(rel: str) -> int:
        return queue_file(ledger, folder, rel, b"data")

    def step() -> str:
        clock.advance(1000)
        row = ledger.claim_next(["dest"])
        assert row is not None
        return up.process(row)

    yield up, dest, rec, drop, step, tmp_path
    ledger.close()


def test_uploader_reports_a_file_failed_for_good(uploader: Any) -> None:
    up, dest, rec, drop, step, tmp_path = uploader
    drop("a.pdf")
    dest.script = [PermanentError("HTTP 415: unsupported type", status=415)]
    assert step() == "failed"
    ((event, (row, reason)),) = rec.events
    assert event == "file_failed" and "415" in reason
    assert row.state == "failed" and row.location == str(tmp_path / "failed" / "inbox" / "a.pdf")


def test_uploader_reports_down_once_and_back_once(uploader: Any) -> None:
    up, dest, rec, drop, step, _ = uploader
    for i in range(THRESHOLD + 2):
        drop(f"f{i}.txt")
    dest.down = RetryableError("ConnectError: refused", transport=True)
    for _ in range(THRESHOLD + 1):  # the third opens the circuit; the fourth is a probe
        assert step() == "retrying"
    assert rec.events == [("destination_down", ("dest", "down"))]
    dest.down = None
    assert step() == "done"
    assert rec.events[-1] == ("destination_up", ("dest", "down"))
    assert len(rec.events) == 2


def test_uploader_reports_a_refusal(uploader: Any) -> None:
    up, dest, rec, drop, step, _ = uploader
    drop("a.txt")
    dest.script = [FatalError("HTTP 401: bad key", status=401)]
    assert step() == "queued"
    assert rec.events == [("destination_down", ("dest", "refused"))]


# -- config ------------------------------------------------------------------------------------

DEST = '[destinations.d]\ntype = "lilt"\napi_key = "k-0123456789"\n'


def _config(tmp_path: Path, daemon: str) -> Any:
    return loads(
        f'[daemon]\n{daemon}\n{DEST}[[folders]]\npath = "in"\ndestination = "d"\n', base_dir=tmp_path
    )


def test_config_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_URL", "https://hooks.example.com/services/T0/B0/xyz")
    cfg = _config(tmp_path, 'webhook_url = "env:HOOK_URL"\nwebhook_secret = "s3cret-hook"')
    assert cfg.daemon.webhook_url.reveal() == "https://hooks.example.com/services/T0/B0/xyz"
    assert cfg.daemon.webhook_secret.reveal() == "s3cret-hook"
    assert redact.redact("posting to https://hooks.example.com/services/T0/B0/xyz") == "posting to ***"
    # a receiver's "no route for /services/..." must not show the token through the path
    assert redact.redact('HTTP 404: {"message": "no route for /services/T0/B0/xyz"}') == (
        'HTTP 404: {"message": "no route for ***"}'
    )
    with pytest.raises(ConfigError) as err:
        _config(tmp_path, 'webhook_url = "hooks.example.com/x"')
    assert [str(p) for p in err.value.problems] == [
        "daemon.webhook_url: must be an absolute URL starting with https:// or http:// and "
        "naming a host, got '***'"
    ]
    monkeypatch.setenv("BAD_URL", "ftp://x")
    with pytest.raises(ConfigError) as err:
        _config(tmp_path, 'webhook_url = "env:BAD_URL"')
    assert "got 'env:BAD_URL'" in str(err.value)
    cfg = _config(tmp_path, 'webhook_secret = "s3cret-hook"')
    assert [str(w) for w in cfg.warnings if "webhook" in str(w)] == [
        "daemon.webhook_secret: is not used without webhook_url"
    ]
    assert cfg.daemon.webhook_url is None


# -- the daemon, end to end ----------------------------------------------------------------------


@pytest.mark.process
def test_daemon_posts_down_and_back(make_setup: Any, receiver: Any) -> None:
    """A destination that goes down and comes back, through the real daemon: the
    receiver fails the first delivery, the webhook retries it."""
    r = receiver([503])
    proxy = FaultProxy(("127.0.0.1", 9)).start()
    proxy.set(down=True)
    try:
        s = make_setup(
            daemon={
                "webhook_url": r.url,
                "webhook_secret": "daemon-hook-secret",
                "retry_base_seconds": 0.2,
                "retry_max_seconds": 0.5,
            },
            destination={"type": "lilt", "base_url": proxy.url + "/lilt", "api_key": "env:TEST_LILT_KEY"},
        )
        proxy.upstream = ("127.0.0.1", int(s.emulator.url.rsplit(":", 1)[1].split("/")[0]))
        for i in range(3):
            s.drop(f"f{i}.txt", b"x" * 100)
        s.start()
        wait_until(
            lambda: [b["event"] for b in r.bodies()].count("destination_down") >= 2,
            30,
            what="destination_down delivered (after one 503)",
        )
        proxy.set(down=False)
        wait_until(lambda: s.all_done(3), 30, what="uploads after the outage")
        wait_until(
            lambda: "destination_up" in [b["event"] for b in r.bodies()], 30, what="destination_up delivered"
        )
        # `syncd status` shows the deliveries (down, retried once, and up), never the URL
        wait_until(
            lambda: (s.status()["daemon"].get("webhook") or {}).get("delivered") == 2,
            30,
            what="status showing both deliveries",
        )
        text = s.cli("status", check=True).stdout
        assert "webhook: 2 delivered, 0 given up, 0 dropped (queue full), 0 waiting" in text
        assert "secret-path" not in text and "FAILING" not in text
        assert s.stop() == 0
    finally:
        proxy.stop()
    events = [b["event"] for b in r.bodies()]
    assert events == ["destination_down", "destination_down", "destination_up"]
    for headers, body in r.requests:
        assert headers[SIGNATURE_HEADER.lower()] == sign("daemon-hook-secret", body)
    up = r.bodies()[-1]["destination"]
    assert up["name"] == "lilt" and up["was"] == "down" and up["down_seconds"] > 0
    log = s.log_text()
    assert log.count("webhook: cannot deliver") == 1
    assert "webhook: delivering notifications again" in log
    assert "secret-path" not in log and "daemon-hook-secret" not in log
    s.assert_no_secret(json.dumps(r.bodies()))


def test_metrics_read_the_webhook_in_force_when_scraped(receiver: Any) -> None:
    from prometheus_client import generate_latest

    from syncd.metrics import Metrics

    current: list[Webhook | None] = [None]
    m = Metrics()
    m.track_webhook(lambda: None if current[0] is None else current[0].health())
    assert b"syncd_webhook" not in generate_latest(m.registry)  # no webhook_url: no series
    r = receiver([404, 200])
    w = current[0] = hook(r.url)
    w.send("a", {})
    w.send("b", {})
    wait_until(lambda: w.delivered == 1 and w.failed == 1, 10, what="both sent")
    text = generate_latest(m.registry).decode()
    assert 'syncd_webhook_notifications_total{outcome="delivered"} 1.0' in text
    assert 'syncd_webhook_notifications_total{outcome="failed"} 1.0' in text
    assert 'syncd_webhook_notifications_total{outcome="dropped"} 0.0' in text
    assert "syncd_webhook_failing 0.0" in text and "syncd_webhook_pending 0.0" in text
    w.close()


@pytest.mark.process
def test_status_says_when_the_webhook_fails(make_setup: Any, receiver: Any) -> None:
    r = receiver([500] * 100)
    s = make_setup(
        daemon={"webhook_url": r.url, "retry_base_seconds": 0.2, "retry_max_seconds": 0.5},
        destination={"type": "lilt", "base_url": "http://127.0.0.1:9/lilt", "api_key": "env:TEST_LILT_KEY"},
    )
    for i in range(3):
        s.drop(f"f{i}.txt", b"x" * 100)
    s.start()
    wait_until(lambda: len(r.requests) >= 1, 30, what="a destination_down delivery tried")
    wait_until(
        lambda: (s.status()["daemon"].get("webhook") or {}).get("failing_since") is not None,
        30,
        what="status showing the failing webhook",
    )
    text = s.cli("status", check=True).stdout
    assert "problem: webhook failing since " in text and "; FAILING since " in text
    assert "secret-path" not in text
    assert s.stop() == 0
