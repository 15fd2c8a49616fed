"""Safe output: server text never reaches a terminal or a log raw, secrets in any spelling never.

A server (or anything between it and syncd) chooses the bytes of its error
bodies, status messages and ids. ESC, BEL, CR, C1 controls (U+009B is CSI)
and bidi overrides in them must come out escaped (``\\x1b``) in the daemon's
log, in the ledger and in every CLI view; credentials in them, in the URLs
syncd logs at debug level and in the emulator's request log must be masked,
also when percent-encoded or in a URL's user-info.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import httpx
import pytest

from syncd import logs, redact
from syncd.cli import main
from syncd.errors import PermanentError, describe
from syncd.http import check, error_text
from syncd.ledger import Ledger, Row
from syncd_emulator import Emulator
from tests.conftest import note_stat
from tests.harness import CANARY_KEY, wait_until

pytestmark = pytest.mark.timeout(90)

# Everything that may not appear raw (newline and tab are framed by each format).
RAW = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
HOSTILE = "\x1b]0;owned\x07\x1b[2J\x1b[31mdenied\x9b\u202e"
SIG = "emusig5d41402abc4b2a76b9719d911017c592"
PASSWORD = "userinfo-pass-7c21"


def raw_controls(text: str) -> list[str]:
    return RAW.findall(text)


# -- end to end: a hostile error body ------------------------------------------------


@pytest.mark.process
def test_hostile_error_body_reaches_logs_ledger_and_cli_escaped_and_masked(make_setup: Any) -> None:
    s = make_setup(folders=[{"name": "in"}])
    body = (
        f"{HOSTILE} retry at https://evil.example/_storage/a.txt?X-Emu-Signature={SIG}"
        f"&X-Emu-Expires=1 with key {CANARY_KEY} or https://bob:{PASSWORD}@evil.example/"
    )
    s.emulator.set_faults(script=[{"op": "lilt.put", "status": 400, "message": body}])
    s.drop("a.txt", b"refused with a hostile body")
    s.start()
    wait_until(lambda: s.counts().get("failed") == 1, 30, what="the refused file failed")
    outputs = {
        " ".join(args): s.cli(*args, check=True).stdout
        for args in (
            ("files",),
            ("files", "--state", "failed"),
            ("files", "--json"),
            ("status",),
            ("status", "--json"),
            ("explain", str(s.inbox() / "a.txt")),
        )
    }
    assert s.stop() == 0
    (row,) = s.rows()
    texts = {"log": s.log_text(), "ledger last_error": row.last_error or "", **outputs}
    for name, text in texts.items():
        assert not raw_controls(text), (name, raw_controls(text))
        for secret in (SIG, PASSWORD, CANARY_KEY):
            assert secret not in text, (name, secret)
    # still there, escaped, for the operator to read
    for name in ("log", "ledger last_error", "files", "status", "explain " + str(s.inbox() / "a.txt")):
        assert "\\x1b[31mdenied\\x9b\\u202e" in texts[name], name
        assert "X-Emu-Signature=***" in texts[name] and f"bob:{redact.MASK}@" in texts[name], name


# -- the CLI, for rows written before escaping existed -----------------------------------


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    (tmp_path / "inbox").mkdir()
    path = tmp_path / "syncd.toml"
    path.write_text("""
[daemon]
state_dir = "state"

[destinations.main]
type = "lilt"
base_url = "http://127.0.0.1:9/lilt"
api_key = "literal-safe-output-key"

[[folders]]
path = "inbox"
destination = "main"
""")
    path.chmod(0o600)
    return path


@contextlib.contextmanager
def _claimed(cfg: Path) -> Iterator[tuple[Ledger, Row]]:
    """The config's ledger with inbox/a.txt claimed for upload, for the test to finish;
    closed after."""
    ledger = Ledger.open(cfg.parent / "state" / "ledger.sqlite3")
    root = str(cfg.parent / "inbox")
    ledger.observe(root, ["a.txt"], destination="main")
    row = ledger.active_for_path(root, "a.txt")
    assert row is not None
    note_stat(ledger, row.id, size=1, mtime_ns=1, inode=1)
    ledger.promote(row.id)
    ledger.claim_next()
    try:
        yield ledger, row
    finally:
        ledger.close()


def test_cli_escapes_and_masks_ledger_text_it_prints(cfg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = str(cfg.parent / "inbox")
    with _claimed(cfg) as (ledger, row):
        ledger.mark_failed(row.id, error=f"HTTP 400: {HOSTILE} ?X-Emu-Signature={SIG}", location=None)
    for argv in (["files"], ["status"], ["explain", f"{root}/a.txt"]):
        assert main(["-c", str(cfg), *argv]) == 0
        out = capsys.readouterr().out
        assert not raw_controls(out), (argv, out)
        assert SIG not in out and "\\x1b[31mdenied\\x9b\\u202e" in out, (argv, out)


def test_files_json_and_receipt_escape_and_mask_a_hostile_receipt(
    cfg: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A remote id the server chose, with controls, a bidi override, a signature and the
    API key echoed in it: `files --json` and `files --receipt` printed it raw (U+202E and
    C1 controls reached the terminal) and in full."""
    key = "literal-safe-output-key"
    remote_id = f"uploads/a.txt{HOSTILE}?X-Emu-Signature={SIG}&key={key} café"
    with _claimed(cfg) as (ledger, row):
        ledger.mark_uploaded(row.id, sha256="ab" * 32, receipt={"remote_id": remote_id, "bare": key})
    for argv in (["files", "--json"], ["files", "--receipt", str(row.id)]):
        assert main(["-c", str(cfg), *argv]) == 0
        out = capsys.readouterr().out
        assert not raw_controls(out), (argv, out)
        assert SIG not in out and key not in out, (argv, out)
        data = json.loads(out)  # still JSON, with the text readable once decoded
        receipt = data[0]["receipt"] if argv[1] == "--json" else data
        assert receipt["remote_id"] == f"uploads/a.txt{HOSTILE}?X-Emu-Signature=***&key=*** café", argv
        assert "café" in out, argv
    assert receipt["bare"] == "***"  # the config's key, known to --receipt


def test_a_receipt_that_echoes_a_credential_is_stored_masked() -> None:
    """A service that puts the API key (or a signed URL) into the id it answers: the
    receipt went into the ledger as it came (promise 6: not in the ledger either).
    Sealed values are opaque and stored as they are."""
    from syncd.destinations.base import Receipt

    key = "receipt-echoed-key-5d1e"
    redact.register(key)
    stored = Receipt(
        remote_id=f"uploads/{key}/a.txt",
        url=f"https://store.example/a.txt?X-Amz-Signature={SIG}",
        details={"sealed": {"v": 1, "box": "QUJD+/="}, "parts": [f"token={key}"]},
    ).to_json()
    assert key not in json.dumps(stored) and SIG not in json.dumps(stored)
    assert stored["remote_id"] == "uploads/***/a.txt"
    assert stored["sealed"] == {"v": 1, "box": "QUJD+/="}


# -- the boundary: error bodies become messages -----------------------------------------


def test_error_text_escapes_controls_and_masks_before_cutting() -> None:
    secret = "cut-secret-3f9a0c7e21b4"
    redact.register(secret)
    request = httpx.Request("PUT", "https://storage.example/x")
    # the secret straddles the 300-character cut: masking after the cut missed its head
    body = HOSTILE + "." * (290 - len(HOSTILE)) + secret + " tail"
    response = httpx.Response(400, text=body, request=request)
    text = error_text(response)
    assert not raw_controls(text) and text.startswith("\\x1b]0;owned\\x07")
    assert secret[:8] not in text
    with pytest.raises(PermanentError) as info:
        check(response, what="lilt: upload")
    message = describe(info.value)
    assert not raw_controls(message) and secret[:8] not in message


def test_describe_escapes_what_a_server_put_in_an_exception() -> None:
    text = describe(PermanentError(f"lilt: the server said {HOSTILE}\rforged line"))
    assert not raw_controls(text)
    assert text == (
        "PermanentError: lilt: the server said "
        "\\x1b]0;owned\\x07\\x1b[2J\\x1b[31mdenied\\x9b\\u202e\\rforged line"
    )


# -- redaction: encoded secrets, user-info, the emulator's signature ---------------------


def test_percent_encoded_forms_of_a_registered_secret_are_masked() -> None:
    secret = "pct/Secret+with=all 9e1f"
    redact.register(secret)
    forms = {
        "quote": quote(secret, safe=""),
        "quote, / kept": quote(secret),
        "quote_plus": quote_plus(secret),
        "lower-case hex": re.sub("%[0-9A-F]{2}", lambda m: m.group().lower(), quote(secret, safe="")),
        "httpx params": str(httpx.URL("https://h/x", params={"k": secret})),
    }
    for name, form in forms.items():
        assert form != secret, name
        text = redact.redact(f"GET https://h/x?q={form}&n=1 and again {form}.")
        assert "Secret" not in text and "9e1f" not in text, (name, text)


def test_url_user_info_is_masked() -> None:
    r = redact.redact
    assert (
        r(f"cannot reach https://bob:{PASSWORD}@files.example/up")
        == "cannot reach https://bob:***@files.example/up"
    )
    assert r("proxy http://tok_9f8e7d6c@proxy.example:3128/") == "proxy http://***@proxy.example:3128/"
    # not user-info: ports, '@' after the host, e-mail addresses
    for plain in ("http://127.0.0.1:8790/lilt", "https://h/p/a@b?x=y", "mail ops@example.com"):
        assert r(plain) == plain


def test_signature_parameter_names_are_masked_and_other_parameters_kept() -> None:
    url = (
        f"http://127.0.0.1:8790/lilt/_storage/k?X-Emu-Expires=1800000000&X-Emu-Size=5"
        f"&X-Emu-Signature={SIG}&s3Key=uploads/a.txt&csrf_token=c5f1&X-Goog-Signature={SIG}"
    )
    assert redact.redact(url) == (
        "http://127.0.0.1:8790/lilt/_storage/k?X-Emu-Expires=1800000000&X-Emu-Size=5"
        "&X-Emu-Signature=***&s3Key=uploads/a.txt&csrf_token=***&X-Goog-Signature=***"
    )
    assert redact.redact(f'{{"X-Emu-Signature": "{SIG}"}}') == '{"X-Emu-Signature": "***"}'
    assert (
        redact.redact("DELETE /apivideo/upload-tokens/to1a2b3c4d HTTP/1.1")
        == "DELETE /apivideo/upload-tokens/*** HTTP/1.1"
    )


@pytest.mark.parametrize("form", ["go-json", "percent", "percent-twice"])
def test_a_signed_url_echoed_escaped_or_percent_encoded_in_an_error_is_masked(form: str) -> None:
    """A server echoing the URL in Go-style JSON (``&`` as ``\\u0026``) or percent-encoded
    (a login page's ``?next=``): the name had to follow a literal ?, & or ;, so the
    signature and the key reached the log, the ledger and ``syncd files``."""
    from urllib.parse import quote

    url = (
        f"http://127.0.0.1:8790/lilt/_storage/k?X-Emu-Expires=1800000000&X-Emu-Size=5"
        f"&X-Emu-Signature={SIG}&s3Key=uploads/a.txt&key=k3y-0f-the-api&X-Amz-Credential=AKIA%2F2026"
    )
    if form == "go-json":
        body = json.dumps({"message": f"denied: {url}"}).replace("&", "\\u0026")
    else:
        once = quote(url, safe="")
        body = json.dumps(
            {"message": "see /login?next=" + (once if form == "percent" else quote(once, safe=""))}
        )
    response = httpx.Response(
        400, headers={"Content-Type": "application/json"}, text=body, request=httpx.Request("PUT", url)
    )
    with pytest.raises(PermanentError) as info:
        check(response, what="lilt: PUT to storage")
    text = str(info.value)
    for secret in (SIG, "k3y-0f-the-api", "AKIA"):
        assert secret not in text, (secret, text)
    for kept in ("X-Emu-Expires", "1800000000", "s3Key", "uploads", "X-Emu-Signature"):
        assert kept in text, (kept, text)
    assert text.count("***") == 3


def test_httpx_debug_lines_for_emulator_urls_carry_no_signature(
    tmp_path: Path, restore_logging: None
) -> None:
    out = tmp_path / "debug.log"
    with Emulator(tmp_path / "data") as emu, open(out, "w") as stream:
        logs.setup("debug", "text", stream, journal=False)
        with httpx.Client(
            base_url=emu.url + "/lilt", auth=("demo-lilt-key", "demo-lilt-key"), timeout=10
        ) as api:
            r = api.post(
                "/v2/upload/s3/params",
                json={"filename": "a.txt", "type": "text/plain", "metadata": {"size": 5}},
            )
            url = r.json()["url"]
            signature = httpx.URL(url).params["X-Emu-Signature"]
            put = httpx.put(
                url, content=b"hello", headers={"Content-Type": "text/plain"}, timeout=10
            )  # a presigned URL: no Authorization header
            assert put.status_code == 200
    text = out.read_text()
    assert "HTTP Request: PUT" in text and "X-Emu-Signature=***" in text
    assert signature not in text
    assert "X-Emu-Expires=" in text and "X-Emu-Expires=***" not in text  # not a credential


# -- the log formatters, as a last line of defence --------------------------------------


@pytest.mark.parametrize("fmt", ["text", "json", "journal"])
def test_every_log_format_escapes_control_characters(tmp_path: Path, restore_logging: None, fmt: str) -> None:
    out = tmp_path / f"{fmt}.log"
    with open(out, "w") as stream:
        logs.setup("info", "json" if fmt == "json" else "text", stream, journal=fmt == "journal")
        logging.getLogger("syncd.test").warning("remote said %s\u2028\x85next", HOSTILE)
    text = out.read_text()
    assert not raw_controls(text), raw_controls(text)
    assert len(text.splitlines()) == 1
    message = json.loads(text)["message"] if fmt == "json" else text
    assert "\\x1b]0;owned\\x07\\x1b[2J\\x1b[31mdenied\\x9b\\u202e\\u2028\\x85next" in message


# -- the emulator's request log ------------------------------------------------------------


def test_emulator_request_log_masks_tokens_and_escapes_paths(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import base64

    token, key = "to-reqlog-token-1b2c", "reqlog-key-8e7f"
    basic = {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}
    with (
        Emulator(tmp_path / "data", apivideo_token=token, apivideo_key=key, quiet=False) as emu,
        httpx.Client(base_url=emu.url + "/apivideo", timeout=10) as http,
    ):
        minted = http.post("/upload-tokens", json={"ttl": 60}, headers=basic).json()["token"]
        assert http.get(f"/upload-tokens/{minted}", headers=basic).status_code == 200
        assert http.get(f"/upload-tokens/{token}", headers=basic).status_code == 200
        assert http.delete(f"/upload-tokens/{minted}", headers=basic).status_code == 204
        assert (
            http.post(
                "/upload",
                params={"token": token},
                files={"file": ("a.mp4", b"x")},
                headers={"Content-Range": "bytes 0-0/1"},
            ).status_code
            == 201
        )
        assert httpx.get(emu.url + "/lilt/%1B%5B2J%07x").status_code == 404
        # a private video's asset URL carries its token in the path
        private = "pv-reqlog-token-4d5e"
        assert http.get(f"/vod/vi404/token/{private}/mp4/source.mp4").status_code == 404
        listed = httpx.get(emu.url + "/_emulator/requests").text
        entries = emu.requests()
    echoed = capsys.readouterr().err
    for name, text in (
        ("GET /_emulator/requests", listed),
        ("requests()", json.dumps(entries)),
        ("--verbose lines", echoed),
    ):
        for secret in (token, minted, key, private):
            assert secret not in text, (name, secret)
    assert [(e["op"], e["path"], e["status"]) for e in entries[1:4]] == [
        ("apivideo.get_token", "/apivideo/upload-tokens/***", 200),
        ("apivideo.get_token", "/apivideo/upload-tokens/***", 200),
        ("apivideo.delete_token", "/apivideo/upload-tokens/***", 204),
    ]
    assert entries[4]["op"] == "apivideo.upload" and entries[4]["bytes"] > 0
    assert "/apivideo/upload-tokens/*** -> 200 apivideo.get_token" in echoed
    assert not raw_controls(echoed) and "/lilt/\\x1b[2J\\x07x -> 404" in echoed
    assert "/apivideo/vod/vi404/token/***/mp4/source.mp4 -> 404" in echoed


def test_fault_script_message_validation() -> None:
    from syncd_emulator.faults import FaultInjector

    faults = FaultInjector()
    with pytest.raises(ValueError):
        faults.configure(script=[{"status": 400, "message": 7}])
    faults.configure(script=[{"status": 400, "message": "custom"}])
    fault = faults.decide("x")
    assert fault is not None and fault.message == "custom"


def test_redact_looks_for_each_shape_only_where_it_could_match() -> None:
    """redact() skips a shape whose literal the text lacks (most log lines hold none):
    on random mixes of every shape's pieces it masks exactly what every pattern would."""
    import random

    def every_pattern(text: str) -> str:
        for pattern, repl in (
            (redact._QUERY_RE, rf"\1{redact.MASK}"),
            (redact._ENCODED_QUERY_RE, rf"\1{redact.MASK}"),
            (redact._ESCAPED_QUERY_RE, rf"\1{redact.MASK}"),
            (redact._USERINFO_RE, redact._mask_userinfo),
            (redact._PATH_RE, rf"\1{redact.MASK}"),
            (
                redact._AUTH_RE,
                lambda m: f"{m.group(1)}{(m.group(2) + ' ') if m.group(2) else ''}{redact.MASK}",
            ),
            (redact._SCHEME_RE, lambda m: f"{m.group(1)} {redact.MASK}"),
            (redact._JSON_RE, rf"\1{redact.MASK}"),
        ):
            text = pattern.sub(repl, text)  # type: ignore[arg-type]
        return text

    pieces = [
        "https://", "u:pw@", "host", "/x", "?", "&", ";", "token=", "X-Amz-Signature=", "abc123",
        "%26", "%3D", "%3F", "\\u0026", "\\U003F", "/upload-tokens/", "/TOKEN/", "Authorization: ",
        "BEARER ", "basic ", "abcdefghijkl", '"apiKey"', ": ", '"', "'", " ", "key=", "@", ":",
    ]  # fmt: skip
    rng = random.Random(7)
    for _ in range(3000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 12)))
        assert redact.redact(text) == every_pattern(text), text
