"""Xvid MediaHub destination: its service-specific behaviour against the
emulator over real loopback HTTP.

The scenarios every destination shares (sizes, resume at part 2, 503, 429,
abort, ...) run in tests/destinations/conformance; this file covers what is
Xvid's own: the OAuth token (cache, refresh on 403 ``0x0000003``, never
logged), the S3 form post (every field, ``file`` last, policy and signature),
policy expiry (a new session), the sealed form in the checkpoint (resume after
a restart), the finished flag (resume only polls) and the ``object_key``
template. The emulation's own rules are in tests/emulator/test_emulator_xvid.py.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from syncd.config import loads
from syncd.destinations.base import Source, UploadItem
from syncd.destinations.xvid import (
    POLL_TIMEOUT,
    XvidDestination,
    XvidOptions,
    check_template,
    chunk_key,
    render_object_key,
    seal,
    unseal,
)
from syncd.errors import ConfigError, FatalError, PermanentError, RetryableError
from syncd.secrets import Secret
from syncd_emulator import Emulator
from syncd_emulator.xvid import XvidService
from tests.support.xvid import (  # noqa: F401 (fixtures)
    CLIENT,
    PIPELINE,
    SECRET,
    Clock,
    bearer,
    clock,
    emu,
    finish,
    get_token,
    http,
    leftovers,
    ops,
    service,
    stored,
)

pytestmark = pytest.mark.timeout(60)

MiB = 1024 * 1024
UUID = "0b7e6a2c-3f1d-4c55-9e0a-5d2f8c1b7a90"


class Monotonic:
    """The destination's clock (token cache, polling); sleep() advances it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def make_dest(emu: Emulator, http: httpx.Client) -> Callable[..., XvidDestination]:
    def make(
        *, client: httpx.Client | None = None, mono: Monotonic | None = None, secret: str = SECRET, **kw: Any
    ) -> XvidDestination:
        kw.setdefault("chunk_size", 5 * MiB)
        options = XvidOptions(
            client_id=CLIENT,
            client_secret=Secret(secret),
            pipeline_id=PIPELINE,
            base_url=emu.url + "/xvid/v1",
            **kw,
        )
        mono = mono or Monotonic()
        return XvidDestination("media", options, client or http, sleep=mono.sleep, clock=mono)

    return make


# -- helpers ------------------------------------------------------------------------------


class Checkpoints:
    """Keeps every state (JSON round-tripped, as the ledger would); may crash after one."""

    def __init__(self, crash_when: Callable[[dict[str, Any]], bool] | None = None) -> None:
        self.states: list[dict[str, Any]] = []
        self.crash_when = crash_when

    @property
    def last(self) -> dict[str, Any] | None:
        return copy.deepcopy(self.states[-1]) if self.states else None

    def __call__(self, state: dict[str, Any]) -> None:
        self.states.append(json.loads(json.dumps(state)))
        if self.crash_when is not None and self.crash_when(state):
            raise Crash()


class Crash(Exception):
    """The process dying right after a durable checkpoint."""


def make_file(tmp_path: Path, size: int, name: str = "clip.mp4") -> Path:
    path = tmp_path / "inbox" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    return path


def item_for(path: Path, relpath: str | None = None, **kw: Any) -> UploadItem:
    kw.setdefault("labels", ("legal", "review-needed"))
    kw.setdefault("category", "SOURCE")
    return UploadItem(
        uuid=UUID,
        name=path.name,
        relpath=relpath or path.name,
        size=path.stat().st_size,
        content_type="video/mp4",
        **kw,
    )


def attempt(
    dest: XvidDestination,
    path: Path,
    resume: dict[str, Any] | None = None,
    checkpoint: Callable[[dict[str, Any]], None] | None = None,
    **kw: Any,
) -> Any:
    st = path.stat()
    with Source(path, size=st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino) as source:
        return dest.upload(item_for(path, **kw), source, resume, checkpoint or Checkpoints())


# -- destination: the token ---------------------------------------------------------------------


def test_token_is_cached_and_replaced_before_it_expires(
    tmp_path: Path, emu: Emulator, make_dest: Callable[..., XvidDestination]
) -> None:
    mono = Monotonic()
    dest = make_dest(mono=mono)
    attempt(dest, make_file(tmp_path, 10, "a.mp4"))
    attempt(dest, make_file(tmp_path, 10, "b.mp4"))
    assert len(ops(emu, "xvid.token")) == 1
    mono.now += 7200 - 59  # within the last minute of the token's life
    attempt(dest, make_file(tmp_path, 10, "c.mp4"))
    assert len(ops(emu, "xvid.token")) == 2
    assert all(e["status"] != 403 for e in emu.requests())  # replaced before any refusal


def test_a_refused_token_is_replaced_and_the_call_repeated_once(
    tmp_path: Path, emu: Emulator, service: XvidService, make_dest: Callable[..., XvidDestination]
) -> None:
    dest = make_dest()
    attempt(dest, make_file(tmp_path, 10, "a.mp4"))
    service.expire_tokens()  # revoked or expired early: Xvid answers 403 0x0000003
    attempt(dest, make_file(tmp_path, 10, "b.mp4"))
    assert len(ops(emu, "xvid.token")) == 2
    assert [e["status"] for e in ops(emu, "xvid.open")] == [200, 403, 200]
    assert len(stored(emu)) == 2


def test_bad_credentials_and_a_refused_scope_are_fatal(
    tmp_path: Path, emu: Emulator, make_dest: Callable[..., XvidDestination]
) -> None:
    with pytest.raises(FatalError) as info:
        attempt(make_dest(secret="not-the-secret"), make_file(tmp_path, 10))
    assert info.value.status == 403 and "not-the-secret" not in str(info.value)
    with pytest.raises(FatalError) as info:
        make_dest(scope="nonsense").probe()
    assert info.value.status == 400
    assert make_dest().probe().startswith("ok, access token for scope 'mediahub'")


def test_no_token_secret_or_signature_in_logs_or_checkpoints(
    tmp_path: Path,
    emu: Emulator,
    service: XvidService,
    make_dest: Callable[..., XvidDestination],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    issued: list[str] = []  # every policy and signature the emulator hands out
    sign = service._sign_policy

    def recording_sign(pipeline_id: str) -> tuple[str, str]:
        policy, signature = sign(pipeline_id)
        issued.extend((policy, signature))
        return policy, signature

    monkeypatch.setattr(service, "_sign_policy", recording_sign)
    dest = make_dest()
    checkpoints = Checkpoints()
    attempt(dest, make_file(tmp_path, 5 * MiB + 10), checkpoint=checkpoints)
    tokens = list(service._tokens)
    service.expire_tokens()  # the second upload gets a 403 and a new token
    attempt(dest, make_file(tmp_path, 10, "second.mp4"), checkpoint=checkpoints)
    tokens += list(service._tokens)
    assert len(tokens) == 2 and len(issued) == 4
    saved = json.dumps(checkpoints.states)
    for secret in [SECRET, *tokens, *issued]:
        assert secret not in caplog.text
        assert secret not in saved
    assert "policy" not in saved and "signature" not in saved and "://" not in saved


# -- destination: the form post ------------------------------------------------------------------


class Capture(httpx.BaseTransport):
    """A real transport that keeps a copy of every request (bodies read into memory)."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.requests: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def form_fields(request: httpx.Request) -> list[tuple[str, bytes]]:
    boundary = request.headers["Content-Type"].split("boundary=")[1].encode()
    fields = []
    for part in request.content.split(b"--" + boundary)[1:-1]:
        head, _, value = part[2:].partition(b"\r\n\r\n")
        name = head.split(b'name="')[1].split(b'"')[0].decode()
        fields.append((name, value[:-2]))
    return fields


def test_the_form_post_sends_every_field_then_the_file_last(
    tmp_path: Path, emu: Emulator, make_dest: Callable[..., XvidDestination]
) -> None:
    capture = Capture()
    with httpx.Client(transport=capture, timeout=20) as client:
        path = make_file(tmp_path, 5 * MiB + 3)
        attempt(make_dest(client=client), path)
    opened = next(r for r in capture.requests if r.url.path.endswith("/files/uploads/"))
    posts = [r for r in capture.requests if "/_s3/" in r.url.path]
    assert len(posts) == 2
    data = path.read_bytes()
    for index, post in enumerate(posts):
        assert "Authorization" not in post.headers and "Content-Length" in post.headers
        names = [n for n, _ in form_fields(post)]
        assert names == [
            "key",
            "acl",
            "success_action_status",
            "name",
            "filename",
            "chunk",
            "chunks",
            "policy",
            "signature",
            "AWSAccessKeyId",
            "file",
        ]
        fields = dict(form_fields(post))
        assert (fields["chunk"], fields["chunks"]) == (str(index).encode(), b"2")
        # Each chunk its own S3 object: <form key>.chunkNNNNN (the documented assumption).
        assert fields["key"] == f"tmp/{PIPELINE}/uploads/{UUID}/clip.mp4.chunk{index:05d}".encode()
        assert fields["file"] == data[index * 5 * MiB : (index + 1) * 5 * MiB]
    put = next(r for r in capture.requests if r.method == "PUT")
    assert json.loads(put.content) == {"upload": {"nb_chunks": 2}}
    assert put.headers["Content-Type"] == "application/json"
    assert opened.url.params["pipeline_id"] == PIPELINE and "expires_at" not in opened.url.params


def test_expires_at_is_sent_when_set(
    tmp_path: Path, emu: Emulator, make_dest: Callable[..., XvidDestination]
) -> None:
    attempt(make_dest(expires_at=0), make_file(tmp_path, 1))
    assert stored(emu)[0]["expires_at"] == 0


def test_an_expired_policy_opens_a_new_session_within_the_call(
    tmp_path: Path, emu: Emulator, clock: Clock, make_dest: Callable[..., XvidDestination]
) -> None:
    path = make_file(tmp_path, 2 * 5 * MiB + 100)
    expired: list[bool] = []

    def checkpoint(state: dict[str, Any]) -> None:
        if len(state["parts"]) == 1 and not expired:  # chunk 0 confirmed: the policy (60 s) ends
            clock.advance(61)
            expired.append(True)

    receipt = attempt(make_dest(), path, checkpoint=checkpoint)
    (row,) = stored(emu)
    assert row["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert row["times_received"] == 1
    assert [e["status"] for e in ops(emu, "xvid.post_chunk")] == [201, 403, 201, 201, 201]
    assert len(ops(emu, "xvid.open")) == 2 and len(ops(emu, "xvid.delete", 200)) == 1
    assert leftovers(emu) == []
    assert receipt.details["upload_id"] == row["upload_id"]


# -- destination: resume -----------------------------------------------------------------------


def test_a_restarted_daemon_resumes_with_the_sealed_form(
    tmp_path: Path, emu: Emulator, make_dest: Callable[..., XvidDestination]
) -> None:
    path = make_file(tmp_path, 3 * 5 * MiB + 1)
    crashing = Checkpoints(crash_when=lambda s: len(s["parts"]) == 2)
    with pytest.raises(Crash):
        attempt(make_dest(), path, checkpoint=crashing)
    saved = crashing.last
    assert saved is not None and saved["session"]["sealed"]
    emu.reset_log()
    attempt(make_dest(), path, saved)  # a new instance: nothing in memory survived
    assert [e["bytes"] for e in ops(emu, "xvid.post_chunk", 201)] == [5 * MiB, 1]
    assert len(ops(emu, "xvid.open")) == 0
    (row,) = stored(emu)
    assert row["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_form_that_cannot_be_unsealed_means_a_new_session(
    tmp_path: Path, emu: Emulator, make_dest: Callable[..., XvidDestination]
) -> None:
    path = make_file(tmp_path, 2 * 5 * MiB + 1)
    crashing = Checkpoints(crash_when=lambda s: len(s["parts"]) == 1)
    with pytest.raises(Crash):
        attempt(make_dest(), path, checkpoint=crashing)
    saved = crashing.last
    assert saved is not None
    sealed = saved["session"]["sealed"]
    saved["session"]["sealed"] = sealed[:-3] + ("A" if sealed[-3] != "A" else "B") + sealed[-2:]
    emu.reset_log()
    attempt(make_dest(), path, saved)
    assert len(ops(emu, "xvid.post_chunk", 201)) == 3  # every chunk again, in the new session
    assert len(ops(emu, "xvid.delete", 200)) == 1 and leftovers(emu) == []
    assert len(stored(emu)) == 1


def test_seal_is_bound_to_the_secret_and_the_upload() -> None:
    form = {
        "url": "https://s3.example/bucket/",
        "fields": {"key": "tmp/p/x", "policy": "cG9s", "signature": "c2ln"},
    }
    sealed = seal("secret-1", "upload-1", form)
    assert "c2ln" not in sealed and "s3.example" not in sealed
    assert unseal("secret-1", "upload-1", sealed) == form
    assert unseal("secret-2", "upload-1", sealed) is None
    assert unseal("secret-1", "upload-2", sealed) is None
    assert unseal("secret-1", "upload-1", "not base64!") is None
    assert seal("secret-1", "upload-1", form) != sealed  # a fresh nonce every time


def test_after_the_put_a_resume_only_polls(
    tmp_path: Path, emu: Emulator, make_dest: Callable[..., XvidDestination]
) -> None:
    path = make_file(tmp_path, 5 * MiB + 1)
    crashing = Checkpoints(crash_when=lambda s: s["session"].get("finished") is True)
    with pytest.raises(Crash):
        attempt(make_dest(), path, checkpoint=crashing)
    saved = crashing.last
    assert saved is not None and "sealed" not in saved["session"]
    emu.reset_log()
    receipt = attempt(make_dest(), path, saved)
    assert {e["op"] for e in emu.requests()} <= {"xvid.token", "xvid.status", "xvid.file"}
    assert receipt.remote_id == f"uploads/{UUID}/clip.mp4"
    assert receipt.details["status"] == "COMPLETED"
    assert stored(emu)[0]["times_received"] == 1


def test_a_long_completion_is_retried_by_polling_only(
    tmp_path: Path,
    emu: Emulator,
    service: XvidService,
    monkeypatch: pytest.MonkeyPatch,
    make_dest: Callable[..., XvidDestination],
) -> None:
    path = make_file(tmp_path, 100)
    checkpoints = Checkpoints()
    mono = Monotonic()
    with monkeypatch.context() as patch:
        patch.setattr(service, "_status", lambda session, poll: "COMPLETING")
        with pytest.raises(RetryableError, match="still COMPLETING"):
            attempt(make_dest(mono=mono), path, checkpoint=checkpoints)
    assert len(ops(emu, "xvid.status")) >= 5  # polled with growing delays ...
    assert 0.8 * POLL_TIMEOUT <= mono.now - 1000 <= POLL_TIMEOUT  # ... for at most POLL_TIMEOUT
    emu.reset_log()
    attempt(make_dest(), path, checkpoints.last)
    assert {e["op"] for e in emu.requests()} <= {"xvid.token", "xvid.status", "xvid.file"}


def test_abort_leaves_a_finished_upload_alone(
    tmp_path: Path, emu: Emulator, make_dest: Callable[..., XvidDestination]
) -> None:
    dest = make_dest()
    checkpoints = Checkpoints()
    attempt(dest, make_file(tmp_path, 10), checkpoint=checkpoints)
    assert checkpoints.last is not None
    dest.abort(checkpoints.last)  # finished: the file stays
    assert ops(emu, "xvid.delete") == []
    assert len(stored(emu)) == 1


# -- the object_key template ---------------------------------------------------------------


def test_object_key_placeholders(tmp_path: Path) -> None:
    item = UploadItem(
        uuid=UUID,
        name="a b.mov",
        relpath="sub/dir/a b.mov",
        size=1,
        content_type="video/quicktime",
        labels=("legal", "review/needed", "a,b"),
        category="SOURCE",
    )
    mtime_ns = 1_767_225_600 * 1_000_000_000  # 2026-01-01T00:00:00Z
    template = "{category}/{labels}/{date}/{uuid}/{relpath}|{name}"
    assert render_object_key(template, item, mtime_ns) == (
        f"SOURCE/legal,review_needed,a_b/2026-01-01/{UUID}/sub/dir/a b.mov|a b.mov"
    )
    bare = UploadItem(uuid=UUID, name="x\ny", relpath="x\ny", size=1, content_type="t")
    assert render_object_key("uploads/{category}/{labels}/{relpath}", bare, 0) == "uploads/none/none/x_y"
    assert render_object_key("{{literal}}/{name}", bare, 0) == "{literal}/x_y"


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("uploads/{relpath}/{foo}", "unknown placeholder {foo}"),
        ("uploads/{name:>10}", "unknown placeholder {name:>10}"),
        ("uploads/{name!r}", "unknown placeholder {name!r}"),
        ("uploads/{relpath", "literal brace"),
        ("uploads/{category}/{labels}", "needs {relpath}, {name} or {uuid}"),
        ("/uploads/{relpath}", "relative to the pipeline root"),
        ("uploads/{}", "unknown placeholder {}"),
    ],
)
def test_object_key_template_validation(template: str, message: str) -> None:
    with pytest.raises(ValueError, match="object_key: ") as info:
        check_template(template)
    assert message in str(info.value)


def test_a_bad_template_is_a_config_error_with_its_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XVID_TEST_SECRET", SECRET)
    text = f"""
[destinations.media]
type = "xvid"
client_id = "{CLIENT}"
client_secret = "env:XVID_TEST_SECRET"
pipeline_id = "{PIPELINE}"
object_key = "uploads/{{labelz}}/{{relpath}}"
chunk_size = "4 MiB"

[[folders]]
path = "inbox"
destination = "media"
"""
    with pytest.raises(ConfigError) as info:
        loads(text, base_dir=tmp_path)
    text_out = str(info.value)
    assert "destinations.media.chunk_size: must be >= " in text_out
    good = text.replace('chunk_size = "4 MiB"', 'chunk_size = "8 MiB"')
    with pytest.raises(ConfigError) as info:
        loads(good, base_dir=tmp_path)
    assert "destinations.media: object_key: unknown placeholder {labelz}" in str(info.value)
    cfg = loads(good.replace("{labelz}", "{labels}"), base_dir=tmp_path)
    options = cfg.destinations["media"].options
    assert options.chunk_size == 8 * MiB and options.expires_at is None
    assert options.base_url == "https://api.xvid.com/v1" and options.scope == "mediahub"


def test_the_object_key_carries_labels_and_category(
    tmp_path: Path, emu: Emulator, make_dest: Callable[..., XvidDestination]
) -> None:
    dest = make_dest(object_key="media/{category}/{labels}/{uuid}/{relpath}")
    path = make_file(tmp_path, 10)
    receipt = attempt(dest, path, relpath="2026/clip.mp4")
    (row,) = stored(emu)
    expected = f"media/SOURCE/legal,review-needed/{UUID}/2026/clip.mp4"
    assert row["object_key"] == expected == receipt.remote_id
    assert row["filename"] == "clip.mp4"


@pytest.mark.parametrize(
    "name", ["ünïcödé file.mp4", 'quote"d.mp4', "per%46cent+plus.mp4", "a\u201bFE.mp4", "semi;colon&amp.mp4"]
)
def test_weird_names_reach_the_object_key_intact(
    tmp_path: Path, emu: Emulator, make_dest: Callable[..., XvidDestination], name: str
) -> None:
    path = make_file(tmp_path, 10, name)
    receipt = attempt(make_dest(), path, relpath=f"dir with space/{name}")
    (row,) = stored(emu)
    assert row["object_key"] == f"uploads/{UUID}/dir with space/{name}" == receipt.remote_id
    assert row["filename"] == name


# -- issue 10: one post by default, safe keys, redirects, statuses, expiry ------------------


def test_a_file_is_one_form_post_up_to_5_gib_by_default(
    tmp_path: Path, emu: Emulator, make_dest: Callable[..., XvidDestination]
) -> None:
    options = XvidOptions(client_id=CLIENT, client_secret=Secret(SECRET), pipeline_id=PIPELINE)
    assert options.chunk_size == 5 * 1024**3  # S3's POST limit: chunking only when it must
    path = make_file(tmp_path, 12 * MiB)
    receipt = attempt(make_dest(chunk_size=options.chunk_size), path)
    (post,) = ops(emu, "xvid.post_chunk")
    assert post["bytes"] == 12 * MiB and receipt.details["chunks"] == 1
    assert stored(emu)[0]["chunks"] == 1


def test_multi_chunk_uploads_put_each_chunk_under_its_own_key(
    tmp_path: Path, emu: Emulator, make_dest: Callable[..., XvidDestination]
) -> None:
    path = make_file(tmp_path, 2 * 5 * MiB + 7)
    attempt(make_dest(), path)
    (row,) = stored(emu)
    assert row["chunks"] == 3 and Path(row["path"]).read_bytes() == path.read_bytes()
    assert chunk_key("tmp/p/a.mp4", 2) == "tmp/p/a.mp4.chunk00002"


@pytest.mark.parametrize(
    "template",
    ["uploads/../{relpath}", "uploads//{name}", "{name}/", "./{relpath}", "a/./{uuid}", "..{name}/../x"],
)
def test_object_key_templates_cannot_climb_or_leave_empty_segments(template: str) -> None:
    with pytest.raises(ValueError, match="empty, '.' or '..' segment"):
        check_template(template)


def test_object_key_values_cannot_climb(
    tmp_path: Path, emu: Emulator, http: httpx.Client, make_dest: Callable[..., XvidDestination]
) -> None:
    item = UploadItem(
        uuid=UUID, name="a.mp4", relpath="a.mp4", size=1, content_type="t", labels=("..",), category="."
    )
    assert render_object_key("in/{labels}/{category}/{name}", item, 0) == "in/__/_/a.mp4"
    assert render_object_key(".{category}/{name}", item, 0) == "._/a.mp4"  # never ".."
    dots = UploadItem(
        uuid=UUID, name="a.mp4", relpath="../x/./a.mp4", size=1, content_type="t"
    )  # not a path a watched folder can hold; still safe
    assert render_object_key("in/{relpath}", dots, 0) == "in/__/x/_/a.mp4"
    receipt = attempt(make_dest(object_key="in/{labels}/{name}"), make_file(tmp_path, 3), labels=("..",))
    assert receipt.remote_id == "in/__/clip.mp4"
    auth = bearer(http, emu)
    r = http.post(
        emu.url + "/xvid/v1/files/uploads/",
        headers=auth,
        params={"object_key": "a/../../b", "pipeline_id": PIPELINE},
    )
    assert r.status_code == 400 and "'..'" in r.json()["error"]["error_message"]


def test_the_default_key_keeps_folders_sharing_a_destination_apart() -> None:
    options = XvidOptions(client_id=CLIENT, client_secret=Secret(SECRET), pipeline_id=PIPELINE)
    a = UploadItem(uuid=UUID, name="r.mp4", relpath="2026/r.mp4", size=1, content_type="t")
    b = UploadItem(
        uuid="7f0c1d2e-0000-4000-8000-000000000001",
        name="r.mp4",
        relpath="2026/r.mp4",
        size=1,
        content_type="t",
    )  # same relpath, other folder
    keys = {render_object_key(options.object_key, item, 0) for item in (a, b)}
    assert keys == {f"uploads/{UUID}/2026/r.mp4", "uploads/7f0c1d2e-0000-4000-8000-000000000001/2026/r.mp4"}


def test_the_upload_path_without_slash_redirects_and_the_api_follows(
    http: httpx.Client, emu: Emulator, make_dest: Callable[..., XvidDestination]
) -> None:
    auth = bearer(http, emu)
    r = http.post(
        emu.url + "/xvid/v1/files/uploads",
        headers=auth,
        params={"object_key": "a.mp4", "pipeline_id": PIPELINE},
    )
    assert r.status_code == 301
    assert r.headers["Location"] == (
        f"{emu.url}/xvid/v1/files/uploads/?object_key=a.mp4&pipeline_id={PIPELINE}"
    )
    data = make_dest().api.call(
        "POST", "/files/uploads", what="open", params={"object_key": "b.mp4", "pipeline_id": PIPELINE}
    )
    assert data["upload"]["object_key"] == "b.mp4"  # the same POST, query kept, at the slash
    assert [e["status"] for e in emu.requests() if e["op"] in ("xvid.redirect", "xvid.open")] == [
        301,
        301,
        200,
    ]


def test_redirects_keep_the_method_and_never_leave_the_host(tmp_path: Path) -> None:
    seen: list[tuple[str, str, bytes, str | None]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        request.read()
        seen.append((request.method, str(request.url), request.content, request.headers.get("Authorization")))
        if request.url.path == "/v1/oauth2/token/":
            return httpx.Response(200, json={"access_token": "tok-1234", "expires_in": "7200"})
        if request.url.path == "/v1/files/uploads/x":
            return httpx.Response(307, headers={"Location": "/v1/files/uploads/x/"})
        if request.url.path == "/v1/files/uploads/x/":
            return httpx.Response(200, json={"ok": True})
        return httpx.Response(301, headers={"Location": "https://elsewhere.example/v1/steal"})

    options = XvidOptions(
        client_id=CLIENT,
        client_secret=Secret(SECRET),
        pipeline_id=PIPELINE,
        base_url="https://xvid.example/v1",
    )
    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        dest = XvidDestination("media", options, client)
        assert dest.api.call("PUT", "/files/uploads/x", what="finish", body={"upload": {"nb_chunks": 1}}) == {
            "ok": True
        }
        method, url, body, _ = seen[-1]
        assert (method, url) == ("PUT", "https://xvid.example/v1/files/uploads/x/")
        assert json.loads(body) == {"upload": {"nb_chunks": 1}}
        with pytest.raises(FatalError, match="elsewhere.example/v1/steal"):  # base_url moved: pause
            dest.api.call("GET", "/files/y", what="status")
    assert all("elsewhere" not in url for _, url, _, _ in seen)


@pytest.mark.parametrize("status", [302, 303, 307])
def test_a_captive_portals_redirect_is_the_services_trouble_not_the_files(
    tmp_path: Path, status: int
) -> None:
    """Once the token was cached, a portal answering every call with a redirect to its
    login page on another host failed each waiting file for good; Lilt's circuit opened.
    The token request redirected there is the service's trouble too."""
    from syncd.circuit import is_outage

    portal = {"on": False}
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        request.read()
        seen.append(str(request.url))
        if portal["on"]:
            return httpx.Response(
                status,
                headers={"Location": "http://portal.example.net/login?next=x", "Content-Type": "text/html"},
                text="<html>Please log in</html>",
            )
        return httpx.Response(200, json={"access_token": "tok-1234", "expires_in": "7200"})

    options = XvidOptions(
        client_id=CLIENT,
        client_secret=Secret(SECRET),
        pipeline_id=PIPELINE,
        base_url="https://xvid.example/v1",
    )
    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        dest = XvidDestination("media", options, client)
        dest.auth.token()  # cached
        portal["on"] = True
        with pytest.raises(RetryableError) as info:
            attempt(dest, make_file(tmp_path, 10))
        assert is_outage(info.value) and info.value.status == status
        assert "portal.example.net/login" in str(info.value)
        dest.auth.forget()
        with pytest.raises(RetryableError) as info:
            dest.auth.token()
        assert is_outage(info.value)
    assert all("portal" not in url for url in seen)


def test_an_undocumented_final_status_without_a_file_is_retried_then_reported(
    tmp_path: Path, emu: Emulator, service: XvidService, make_dest: Callable[..., XvidDestination]
) -> None:
    """Only UPLOADING and COMPLETING are documented: FAILED is not read as "start over"."""
    path = make_file(tmp_path, 5 * MiB + 1)
    checkpoints = Checkpoints()
    service.failure_status = "FAILED"
    with pytest.raises(RetryableError, match="'FAILED', which Xvid does not document") as info:
        attempt(make_dest(), path, checkpoint=checkpoints)
    assert "unknown" in str(info.value)
    assert len(ops(emu, "xvid.open")) == 1 and ops(emu, "xvid.delete") == []
    assert checkpoints.last is not None and checkpoints.last["session"]["finished"] is True
    service.failure_status = "READY"  # an unknown name, but the file is there ... not yet
    with pytest.raises(RetryableError):
        attempt(make_dest(), path, checkpoints.last)
    service.failure_status = None
    emu.reset_log()
    receipt = attempt(make_dest(), path, checkpoints.last)  # the retry only polls
    assert receipt.details["status"] == "COMPLETED"
    assert {e["op"] for e in emu.requests()} <= {"xvid.token", "xvid.status", "xvid.file"}


def test_a_file_record_of_another_size_is_not_an_upload(
    tmp_path: Path, emu: Emulator, service: XvidService, make_dest: Callable[..., XvidDestination]
) -> None:
    """Xvid has a file record from the start of the session: a status Xvid does not
    document and a record of 0 bytes was taken for a finished upload, and the local file
    archived."""
    path = make_file(tmp_path, 100)
    service.failure_status = None
    service.reported_size = 0
    with pytest.raises(RetryableError, match="a file of 0 bytes, not 100: not uploaded"):
        attempt(make_dest(), path)
    service.reported_size = None
    assert attempt(make_dest(), make_file(tmp_path, 100, name="b.bin")).details["status"] == "COMPLETED"


def test_a_400_to_the_put_is_not_read_as_already_finished(
    tmp_path: Path, emu: Emulator, make_dest: Callable[..., XvidDestination]
) -> None:
    emu.set_faults(script=[{"op": "xvid.finish", "status": 400}])
    with pytest.raises(PermanentError, match="refused nb_chunks=1"):
        attempt(make_dest(), make_file(tmp_path, 100))
    assert len(ops(emu, "xvid.open")) == 1 and stored(emu) == []


def test_a_put_whose_answer_was_lost_is_not_sent_again(
    http: httpx.Client, tmp_path: Path, emu: Emulator, make_dest: Callable[..., XvidDestination]
) -> None:
    path = make_file(tmp_path, 5 * MiB + 1)
    crashing = Checkpoints(crash_when=lambda s: len(s.get("parts") or {}) == 2)
    with pytest.raises(Crash):
        attempt(make_dest(), path, checkpoint=crashing)
    saved = crashing.last
    assert saved is not None and not saved["session"].get("finished")
    # The PUT reached Xvid, but its answer never reached syncd.
    r = finish(http, emu, bearer(http, emu), saved["session"]["upload_id"], 2)
    assert r.status_code == 200
    emu.reset_log()
    attempt(make_dest(), path, saved)
    assert ops(emu, "xvid.finish") == [] and stored(emu)[0]["times_received"] == 1


def test_check_warns_when_objects_will_expire(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from syncd import cli

    monkeypatch.setenv("XVID_TEST_SECRET", SECRET)
    (tmp_path / "inbox").mkdir()

    def check(expires: str) -> str:
        config = tmp_path / "syncd.toml"
        config.write_text(f"""
[destinations.media]
type = "xvid"
client_id = "{CLIENT}"
client_secret = "env:XVID_TEST_SECRET"
pipeline_id = "{PIPELINE}"
{expires}

[[folders]]
path = "inbox"
destination = "media"
""")
        capsys.readouterr()
        assert cli.main(["-c", str(config), "check"]) == 0
        return capsys.readouterr().out

    out = check("")
    assert (
        "warning: xvid deletes the objects uploaded from this folder 7 days after upload" in out
        and "moves each local file to the archive" in out
        and "expires_at = 0" in out
    )
    assert "2001-09-09T01:46:40Z" in check("expires_at = 1000000000")  # and it has passed
    assert "has passed" in check("expires_at = 1000000000")
    assert "deletes the objects" not in check("expires_at = 0")
    assert (
        XvidDestination.check_warnings(
            XvidOptions(client_id=CLIENT, client_secret=Secret(SECRET), pipeline_id=PIPELINE, expires_at=0),
            None,
        )
        == []
    )


def test_the_receipt_says_when_the_object_expires(
    tmp_path: Path, make_dest: Callable[..., XvidDestination]
) -> None:
    kept = attempt(make_dest(expires_at=0), make_file(tmp_path, 3, "a.mp4"))
    assert kept.details["expires"] == "never"
    default = attempt(make_dest(), make_file(tmp_path, 3, "b.mp4"))
    assert default.details["expires"].endswith("unless a Job uses it (Xvid's default: 7 days)")
