"""Per-file metadata (labels_from_path, metadata_sidecar) and on_duplicate: unit tests.

The end-to-end behaviour with the real daemon and emulator is in
tests/daemon/test_e2e_metadata.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from syncd import archive, metadata, rules, scanner
from syncd.config import loads
from syncd.destinations.base import wire_name
from syncd.errors import ConfigError
from syncd.ledger import Ledger
from syncd.metadata import SidecarError, compile_pattern, parse_sidecar, read_sidecar
from syncd.settle import Settler
from syncd.uploader import Uploader
from tests.conftest import FakeClock, make_folder, note_stat, queue_file, row_of
from tests.unit.test_uploader import FakeDestination

# -- labels_from_path -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "relpath", "labels"),
    [
        ("{client}/{project}/**", "acme/q3/a.pdf", ("acme", "q3")),
        ("{client}/{project}/**", "acme/q3/drafts/deep/b.pdf", ("acme", "q3")),
        ("{client}/{project}/**", "acme/a.pdf", None),  # ** at the end needs one more level
        ("{client}/{project}/**", "a.pdf", None),
        ("{client}/*", "acme/a.pdf", ("acme",)),
        ("{client}/*", "acme/q3/a.pdf", None),
        ("{client}/**/{kind}/*", "acme/invoices/a.pdf", ("acme", "invoices")),  # ** = zero levels
        ("{client}/**/{kind}/*", "acme/2026/05/invoices/a.pdf", ("acme", "invoices")),
        ("clients/client-{client}/**", "clients/client-acme/x/a.pdf", ("acme",)),
        ("clients/client-{client}/**", "clients/other/x/a.pdf", None),
        ("*/{year}-{month}/**", "scans/2026-05/a.pdf", ("2026", "05")),
        ("{client}/**", "ac\nme/a.pdf", None),  # a control character: no match
        ("{client}/**", "ac\x9bme/a.pdf", None),  # a C1 one too (CSI: a terminal escape)
        ("{c}/**", "a+b (1)/f", ("a+b (1)",)),  # regex characters in a name are just text
    ],
)
def test_pattern_captures(pattern: str, relpath: str, labels: tuple[str, ...] | None) -> None:
    assert compile_pattern(pattern).labels(relpath) == labels


def test_pattern_literal_text_is_not_a_regex() -> None:
    p = compile_pattern("a.b/{x}/**")
    assert p.labels("a.b/v/f") == ("v",)
    assert p.labels("axb/v/f") is None


@pytest.mark.parametrize(
    ("pattern", "relpath"),
    [
        ("{client}-{year}-{month}-{day}/**", "-" * 254),
        ("**/{y}-{m}-{d}/x/*", "/".join(["-" * 250] * 63)),
        ("**/{a}-{b}-{c}-{d}/x/*", "/".join(["-" * 250] * 8)),
        ("**/{a}/**/{b}/**/{c}/**/{d}/x", "/".join(["a"] * 63)),
    ],
)
def test_a_hostile_path_is_matched_in_linear_time(pattern: str, relpath: str) -> None:
    """The pattern was one regular expression, matched by backtracking: a folder name of
    dashes against placeholders split by dashes took seconds per file (minutes with
    directories nested under `**`), holding the interpreter's lock, so that every
    thread, the watchdog's heartbeat too, stood still while one worker looked at the
    path of a producer's file."""
    started = time.monotonic()
    assert compile_pattern(pattern).labels(relpath) is None
    assert time.monotonic() - started < 0.5


_ALPHABETS = ["a-", "a-.", "ab", "a-\x01", "x-.a", "-", "ab-.x\x01"]


@pytest.mark.parametrize("seed", range(4))
def test_labels_are_those_the_pattern_as_a_regular_expression_gives(seed: int) -> None:
    """The matcher gives the captures of the regular expression the pattern stands for
    (leftmost, each ** and placeholder as long as the rest allows), on random paths."""
    rng = random.Random(seed)
    patterns = [
        "{a}/**",
        "{a}-{b}/**",
        "{a}-{b}-{c}/*",
        "x{a}.{b}-/**",
        "**/{a}/*",
        "**/{a}-{b}/x/*",
        "{a}/**/{b}/*",
        "*/{a}/**/x-{b}/**",
        "**/{a}/**/{b}/**",
        "{a}/**/**/{b}/x",
        "a/{a}.b/*",
        "{a}--{b}/**",
        "**/-{a}-/**",
        "ab{a}ab{b}ab/*",
        "{a}.{b}.{c}.{d}/**/*",
        "-{a}/*",
    ]
    for text in patterns:
        pattern = compile_pattern(text)
        for _ in range(400):
            alphabet = rng.choice(_ALPHABETS)
            comps = [
                "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8)))
                for _ in range(rng.randint(1, 6))
            ]
            if rng.random() < 0.3:
                comps.insert(rng.randrange(len(comps) + 1), "x")
            relpath = "/".join(comps)
            m = pattern.regex.fullmatch(relpath)
            want = None if m is None else tuple(wire_name(m[n]) for n in pattern.names)
            assert pattern.labels(relpath) == want, (text, relpath)


def test_undecodable_folder_name_becomes_wire_text() -> None:
    rel = os.fsdecode(b"cl\xfeient/q/a.pdf")
    assert compile_pattern("{client}/{p}/**").labels(rel) == ("cl\u201bFEient", "q")


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("", "empty"),
        ("/{a}/**", "leading '/'"),
        ("{a}//**", "empty part"),
        ("{a}/**/", "empty part"),
        ("{client}/{client}/**", "{client} appears twice"),
        ("{a}{b}/**", "need text between them"),
        ("{a/**", "unbalanced"),
        ("a}/{b}/**", "unbalanced"),
        ("{1x}/**", "placeholder name"),
        ("{}/**", "placeholder name"),
        ("{a}/file?.pdf", "'?' inside"),
        ("{a}/[ab]/**", "'[' inside"),
        ("{a}*/**", "'*' inside"),
        ("{a}/../**", "not allowed"),
        ("{a}/{name}", "last part matches the file name"),
        ("{a}/{name}.pdf", "last part matches the file name"),
        ("a/b/**", "captures nothing"),
    ],
)
def test_bad_patterns_are_refused(pattern: str, message: str) -> None:
    with pytest.raises(ValueError, match=None) as err:
        compile_pattern(pattern)
    assert message in str(err.value)


def _config(tmp_path: Path, folder: str) -> str:
    return f"""
[daemon]
state_dir = "{tmp_path / "state"}"
[destinations.d]
type = "lilt"
base_url = "https://api.lilt.com"
api_key = "literal-key-for-test-0000"
[[folders]]
path = "{tmp_path / "in"}"
destination = "d"
{folder}
"""


def test_config_keys_default_and_load(tmp_path: Path) -> None:
    cfg = loads(_config(tmp_path, ""), base_dir=tmp_path)
    f = cfg.folders[0]
    assert (f.labels_from_path, f.metadata_sidecar, f.on_duplicate) == (None, False, "upload")
    cfg = loads(
        _config(
            tmp_path,
            'labels_from_path = "{client}/{project}/**"\nmetadata_sidecar = true\non_duplicate = "skip"',
        ),
        base_dir=tmp_path,
    )
    f = cfg.folders[0]
    assert (f.labels_from_path, f.metadata_sidecar, f.on_duplicate) == ("{client}/{project}/**", True, "skip")


@pytest.mark.parametrize(
    ("line", "key", "text"),
    [
        (
            'labels_from_path = "{client}/{client}/**"',
            "folders[0].labels_from_path",
            "{client} appears twice; each name may be used once; got '{client}/{client}/**'",
        ),
        ('labels_from_path = "{a}/x?y/**"', "folders[0].labels_from_path", "got '{a}/x?y/**'"),
        ('labels_from_path = ""', "folders[0].labels_from_path", "empty"),
        ('on_duplicate = "ignore"', "folders[0].on_duplicate", "'ignore'"),
        ("metadata_sidecar = 1", "folders[0].metadata_sidecar", ""),
    ],
)
def test_config_errors_name_the_key_and_value(tmp_path: Path, line: str, key: str, text: str) -> None:
    with pytest.raises(ConfigError) as err:
        loads(_config(tmp_path, line), base_dir=tmp_path)
    problems = [p for p in err.value.problems if p.key == key]
    assert problems, err.value
    assert text in problems[0].message


# -- sidecars ---------------------------------------------------------------------------------


def test_parse_sidecar_accepts_labels_and_category() -> None:
    assert parse_sidecar(b'{"labels": ["x", "y", "x"], "category": "FIN"}') == (("x", "y"), "FIN")
    assert parse_sidecar(b"{}") == ((), None)
    assert parse_sidecar(b'{"category": null}') == ((), None)
    assert parse_sidecar('{"labels": ["\u00e9t\u00e9"]}'.encode()) == (("\u00e9t\u00e9",), None)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not valid JSON"),
        (b'{"labels": ["a"]', "not valid JSON"),
        (b"\xff{}", "not valid UTF-8"),
        (b'["a"]', "expected a JSON object"),
        (b'{"label": ["a"]}', "unknown key 'label'"),
        (b'{"labels": "a"}', '"labels" must be an array of strings, got a string'),
        (b'{"labels": [1]}', '"labels"[0] must be a string, got a number'),
        (b'{"labels": [""]}', '"labels"[0] is empty'),
        (b'{"labels": ["a\\nb"]}', "control character"),
        (b'{"labels": ["\\ud800"]}', "lone surrogate"),
        (b'{"category": 5}', '"category" must be a string'),
        (b'{"category": " "}', '"category" is empty'),
        (b'{"labels": [' + b",".join(b'"l%d"' % i for i in range(65)) + b"]}", "at most 64"),
        (b'{"category": "' + b"x" * 300 + b'"}', "longer than 256"),
        (b'{"labels": []}' + b" " * (64 * 1024), "larger than 64 KiB"),
        (b"[" * 60000, "nested too deeply"),  # a RecursionError: a traceback, "internal error"
        (b'{"labels": [' + b"1" * 5000 + b"]}", "not usable JSON"),  # Python's 4,300-digit limit
    ],
)
def test_parse_sidecar_refuses_malformed(data: bytes, message: str) -> None:
    with pytest.raises(SidecarError) as err:
        parse_sidecar(data)
    assert message in str(err.value)


def test_read_sidecar_safely(tmp_path: Path) -> None:
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    good = root / "sub" / "a.pdf.meta.json"
    good.write_text('{"labels": ["x"]}')
    sc = read_sidecar(str(good), [str(root)])
    assert sc is not None and sc.labels == ("x",) and sc.size == good.stat().st_size
    assert sc.sha256 == hashlib.sha256(good.read_bytes()).hexdigest()
    assert read_sidecar(str(root / "sub" / "none.meta.json"), [str(root)]) is None
    secret = tmp_path / "secret.json"
    secret.write_text('{"labels": ["leaked"]}')
    (root / "l.pdf.meta.json").symlink_to(secret)
    with pytest.raises(SidecarError, match="symlink"):
        read_sidecar(str(root / "l.pdf.meta.json"), [str(root)])
    (root / "linkdir").symlink_to(root / "sub")
    with pytest.raises(SidecarError, match="symlink"):
        read_sidecar(str(root / "linkdir" / "a.pdf.meta.json"), [str(root)])
    os.mkfifo(root / "f.pdf.meta.json")
    with pytest.raises(SidecarError, match="not a regular file"):
        read_sidecar(str(root / "f.pdf.meta.json"), [str(root)])
    big = root / "big.meta.json"
    big.write_bytes(b"{}" + b" " * (70 * 1024))
    with pytest.raises(SidecarError, match="larger than 64 KiB"):
        read_sidecar(str(big), [str(root)])


def test_a_file_whose_sidecar_name_would_be_too_long_has_none(tmp_path: Path) -> None:
    """A 250-byte file name: NAME.meta.json cannot exist (over 255 bytes). The lookup's
    ENAMETOOLONG was an error to retry, and the file failed after its attempts."""
    name = "x" * 246 + ".pdf"
    (tmp_path / name).write_bytes(b"pdf")
    assert read_sidecar(str(tmp_path / f"{name}.meta.json"), [str(tmp_path)]) is None


def test_rules_pass_over_sidecars_only_when_enabled() -> None:
    assert rules.judge("a.pdf.meta.json").accepted
    verdict = rules.judge("sub/a.pdf.meta.json", sidecars=True)
    assert not verdict.accepted and "metadata sidecar of 'a.pdf'" in verdict.reason
    assert rules.judge(".meta.json", sidecars=True, ignore_junk=False).accepted
    assert rules.judge("a.pdf", sidecars=True).accepted


def test_scan_skips_sidecars(tmp_path: Path, ledger: Ledger) -> None:
    folder = make_folder(tmp_path, metadata_sidecar=True)
    (folder.path / "a.pdf").write_bytes(b"a")
    (folder.path / "a.pdf.meta.json").write_text("{}")
    assert scanner.scan_folder(ledger, folder) == 1
    assert [r.relpath for r in ledger.rows()] == ["a.pdf"]


# -- settle ------------------------------------------------------------------------------------


@pytest.fixture
def ledger(tmp_path: Path, clock: FakeClock) -> Any:
    led = Ledger.open(tmp_path / "state" / "ledger.sqlite3", clock=clock)
    yield led
    led.close()


def _settling_with_a_sidecar_being_written(
    tmp_path: Path, ledger: Ledger, clock: FakeClock
) -> tuple[Any, Path, Settler]:
    """a.pdf, quiet, beside a.pdf.meta.json still being written; scanned and looked at once."""
    folder = make_folder(tmp_path, settle_seconds=2.0, metadata_sidecar=True)
    (folder.path / "a.pdf").write_bytes(b"data")
    side = folder.path / "a.pdf.meta.json"
    side.write_text('{"labels": [')
    scanner.scan_folder(ledger, folder)
    settler = Settler(ledger, lambda: {os.fspath(folder.path): folder}, clock=clock)
    settler.tick()
    return folder, side, settler


def test_settle_waits_for_a_changing_sidecar(tmp_path: Path, ledger: Ledger, clock: FakeClock) -> None:
    folder, side, settler = _settling_with_a_sidecar_being_written(tmp_path, ledger, clock)
    for n in range(3):  # the data file is quiet; the sidecar is still being written
        clock.advance(1.5)
        with open(side, "a") as f:
            f.write(f'"l{n}", ')
        assert settler.tick() == 0
    side.write_text('{"labels": ["done"]}')
    clock.advance(1.5)
    assert settler.tick() == 0
    clock.advance(2.1)
    assert settler.tick() == 1


def test_settle_waits_for_a_sidecar_it_had_no_descriptor_to_look_at(
    tmp_path: Path, ledger: Ledger, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The look at a file's sidecar needs a descriptor. Out of them (EMFILE), it was taken
    for "no sidecar": a quiet file was queued while its sidecar was still being written.
    The file now stays settling, looked at again shortly, and the shortage is said once."""
    import errno

    folder, side, settler = _settling_with_a_sidecar_being_written(tmp_path, ledger, clock)
    real_lstat = metadata.safefs.lstat
    short = [True]

    def lstat_short(root: Any, rel: str) -> os.stat_result:
        if short[0] and metadata.is_sidecar(rel):
            raise OSError(errno.EMFILE, "Too many open files")
        return real_lstat(root, rel)

    monkeypatch.setattr(metadata.safefs, "lstat", lstat_short)
    for n in range(3):  # the data file is quiet; the sidecar is still being written
        clock.advance(5.0)
        with open(side, "a") as f:
            f.write(f'"l{n}", ')
        assert settler.tick() == 0
    assert ledger.rows()[0].state == "settling"
    assert any(p.startswith("out of file descriptors") for p in settler.shortages.describe())
    short[0] = False
    side.write_text('{"labels": ["done"]}')
    clock.advance(10.0)
    assert settler.tick() == 0  # the sidecar changed since it was last seen: its quiet time
    clock.advance(2.1)
    assert settler.tick() == 1


def test_a_sidecar_that_never_stops_changing_holds_its_file_back_only_so_long(
    tmp_path: Path, ledger: Ledger, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A sidecar rewritten every second (a producer that keeps it as a status file) kept
    its quiet file settling for ever, without a word; docs/configuration.md bounds the
    wait: ten minutes after the file was first seen the sidecar is taken as it is."""
    folder = make_folder(tmp_path, settle_seconds=10.0, metadata_sidecar=True)
    (folder.path / "a.pdf").write_bytes(b"data")
    side = folder.path / "a.pdf.meta.json"
    side.write_text('{"labels": []}')
    scanner.scan_folder(ledger, folder)
    settler = Settler(ledger, lambda: {os.fspath(folder.path): folder}, clock=clock)
    settler.tick()
    start, queued_at = clock(), None
    for n in range(200):
        clock.advance(9.0)
        side.write_text(f'{{"labels": ["l{n}"]}}')
        if settler.tick():
            queued_at = clock() - start
            break
    # its next look after the bound is at most a settle time (and a tick) later
    assert queued_at is not None and metadata.SIDECAR_PATIENCE <= queued_at <= metadata.SIDECAR_PATIENCE + 20
    said = [r for r in caplog.records if "still changing" in r.getMessage()]
    assert len(said) == 1 and said[0].levelname == "WARNING"


def test_settle_without_sidecar_or_with_a_quiet_one_is_not_delayed(
    tmp_path: Path, ledger: Ledger, clock: FakeClock
) -> None:
    folder = make_folder(tmp_path, settle_seconds=2.0, metadata_sidecar=True)
    (folder.path / "a.pdf").write_bytes(b"a")
    (folder.path / "b.pdf").write_bytes(b"b")
    (folder.path / "b.pdf.meta.json").write_text("{}")
    scanner.scan_folder(ledger, folder)
    settler = Settler(ledger, lambda: {os.fspath(folder.path): folder}, clock=clock)
    settler.tick()  # the first look at each file is also the first look at b's sidecar
    clock.advance(1.0)
    assert settler.tick() == 0
    clock.advance(1.1)
    assert settler.tick() == 2  # a, and b: its quiet sidecar's time ran alongside its own


# -- the uploader --------------------------------------------------------------------------------


@pytest.fixture
def up(tmp_path: Path, ledger: Ledger, clock: FakeClock) -> Any:
    """``(make, dest)``: ``make(**folder keys)`` returns ``(folder, uploader, drop, step)``."""
    dest = FakeDestination()

    def make(**kw: Any) -> tuple[Any, Uploader, Any, Any]:
        kw.setdefault("labels", ("base",))
        kw.setdefault("category", "SOURCE")
        folder = make_folder(tmp_path, **kw)
        uploader = Uploader(
            ledger,
            lambda: {"dest": dest},
            lambda: {os.fspath(folder.path): folder},
            retry_base=1.0,
            retry_max=30.0,
            clock=clock,
            rng=random.Random(1),
        )

        def drop(rel: str, data: bytes = b"payload", sidecar: Any = None) -> int:
            path = folder.path / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            if sidecar is not None:
                side = Path(f"{path}.meta.json")
                side.write_bytes(sidecar if isinstance(sidecar, bytes) else json.dumps(sidecar).encode())
            return queue_file(ledger, folder, rel)

        def step() -> str:
            row = ledger.claim_next(["dest"])
            assert row is not None
            return uploader.process(row)

        return folder, uploader, drop, step

    return make, dest


def test_path_and_sidecar_labels_are_sent_and_recorded(up: Any, ledger: Ledger, tmp_path: Path) -> None:
    make, dest = up
    folder, _, drop, step = make(labels_from_path="{client}/{project}/**", metadata_sidecar=True)
    a = drop("acme/q3/a.pdf", b"A", sidecar={"labels": ["inv", "acme"], "category": "FIN"})
    b = drop("acme/b.pdf", b"B")
    c = drop("globex/q1/c.pdf", b"C")
    assert [step(), step(), step()] == ["done", "done", "done"]
    sent = {item.name: (item.labels, item.category) for item, _ in dest.received}
    assert sent == {
        "a.pdf": (("base", "acme", "q3", "inv"), "FIN"),
        "b.pdf": (("base",), "SOURCE"),
        "c.pdf": (("base", "globex", "q1"), "SOURCE"),
    }
    row = ledger.get(a)
    assert row is not None and row.meta is not None
    assert row.meta["labels"] == ["base", "acme", "q3", "inv"] and row.meta["category"] == "FIN"
    assert row.labels == ("base",)  # the folder's, for a later version of the file
    arch = tmp_path / "archive" / "inbox" / "acme" / "q3"
    assert (arch / "a.pdf").read_bytes() == b"A"
    assert json.loads((arch / "a.pdf.meta.json").read_text())["category"] == "FIN"
    assert row.sidecar_path == str(arch / "a.pdf.meta.json")
    assert not (folder.path / "acme" / "q3" / "a.pdf.meta.json").exists()
    assert row_of(ledger, b).sidecar_path is None
    meta = row_of(ledger, c).meta
    assert meta is not None and meta["sidecar"] is None


def test_sidecar_follows_a_suffixed_archive_name(up: Any, tmp_path: Path) -> None:
    make, _ = up
    _, _, drop, step = make(metadata_sidecar=True)
    arch = tmp_path / "archive" / "inbox"
    arch.mkdir(parents=True)
    (arch / "a.pdf").write_bytes(b"older")
    (arch / "a (1).pdf.meta.json").write_bytes(b"someone else's")
    drop("a.pdf", b"new", sidecar={"labels": ["x"]})
    assert step() == "done"
    assert (arch / "a (1).pdf").read_bytes() == b"new"
    assert (arch / "a (1).pdf.meta.json").read_bytes() == b"someone else's"
    assert json.loads((arch / "a (1).pdf.meta (1).json").read_text()) == {"labels": ["x"]}


def test_a_sidecar_caught_half_written_waits_instead_of_failing_its_file(
    up: Any, ledger: Ledger, clock: FakeClock
) -> None:
    """The producer is still writing the sidecar when its file's turn comes: it is not
    malformed yet, only young. Failing the file moved both to failed_dir, where the
    producer then finished writing."""
    make, dest = up
    folder, _, drop, step = make(metadata_sidecar=True, settle_seconds=2.0)
    row_id = drop("a.pdf", b"A", sidecar=b'{"labels": ["ok",')
    side = folder.path / "a.pdf.meta.json"
    os.utime(side, (clock() - 0.5, clock() - 0.5))
    assert step() == "retrying"
    row = ledger.get(row_id)
    assert row is not None and row.attempts == 0 and "moments ago" in (row.last_error or "")
    side.write_bytes(b'{"labels": ["ok"]}')  # finished
    os.utime(side, (clock() - 10, clock() - 10))
    clock.advance(3)
    assert step() == "done" and dest.received[-1][0].labels == ("base", "ok")
    # one touched for good is not waited for without end: after a while it is what it is
    forever = drop("b.pdf", b"B", sidecar=b'{"labels": ["ok",')
    for _ in range(3):
        os.utime(folder.path / "b.pdf.meta.json", (clock(), clock()))
        assert step() == "retrying"
        clock.advance(3)
    clock.advance(600)
    os.utime(folder.path / "b.pdf.meta.json", (clock(), clock()))
    assert step() == "failed" and "malformed" in (ledger.get(forever).last_error or "")


def test_malformed_sidecar_fails_the_file_with_both_in_failed_dir(
    up: Any, ledger: Ledger, tmp_path: Path
) -> None:
    make, dest = up
    folder, _, drop, step = make(metadata_sidecar=True)
    row_id = drop("sub/a.pdf", b"A", sidecar=b'{"labels": "x"}')
    assert step() == "failed"
    assert dest.calls == 0
    row = ledger.get(row_id)
    assert row is not None and row.state == "failed"
    assert "metadata sidecar 'a.pdf.meta.json' is malformed" in (row.last_error or "")
    assert '"labels" must be an array of strings' in (row.last_error or "")
    failed_sub = tmp_path / "failed" / "inbox" / "sub"
    assert (failed_sub / "a.pdf").read_bytes() == b"A"
    assert (failed_sub / "a.pdf.meta.json").read_bytes() == b'{"labels": "x"}'
    reason = json.loads((failed_sub / "a.pdf.error.json").read_text())["reason"]
    assert "malformed" in reason
    assert not any((folder.path / "sub").iterdir())
    # fixed in failed_dir, retried: the sidecar beside it is read, then archived with it
    (failed_sub / "a.pdf.meta.json").write_text('{"labels": ["fixed"]}')
    ledger.requeue_failed([row_id])
    assert step() == "done"
    assert dest.received[0][0].labels == ("base", "fixed")
    arch = tmp_path / "archive" / "inbox" / "sub"
    assert (arch / "a.pdf").read_bytes() == b"A"
    assert json.loads((arch / "a.pdf.meta.json").read_text()) == {"labels": ["fixed"]}
    assert not (failed_sub / "a.pdf.meta.json").exists()


def test_symlinked_sidecar_fails_the_file_and_is_not_followed(
    up: Any, ledger: Ledger, tmp_path: Path
) -> None:
    make, dest = up
    folder, _, drop, step = make(metadata_sidecar=True)
    secret = tmp_path / "secret.json"
    secret.write_text('{"labels": ["leak"]}')
    row_id = drop("a.pdf", b"A")
    (folder.path / "a.pdf.meta.json").symlink_to(secret)
    assert step() == "failed"
    assert "symlink" in (row_of(ledger, row_id).last_error or "")
    assert dest.calls == 0 and secret.read_text() == '{"labels": ["leak"]}'
    assert (folder.path / "a.pdf.meta.json").is_symlink()  # never moved: not a regular file


def test_sidecar_written_moments_ago_defers_without_an_attempt(
    up: Any, ledger: Ledger, clock: FakeClock
) -> None:
    make, dest = up
    folder, _, drop, step = make(metadata_sidecar=True, settle_seconds=2.0)
    row_id = drop("a.pdf", b"A", sidecar={"labels": ["x"]})
    moments_ago = int((clock() - 0.5) * 1e9)
    os.utime(folder.path / "a.pdf.meta.json", ns=(moments_ago, moments_ago))
    assert step() == "retrying"
    row = ledger.get(row_id)
    assert row is not None and row.attempts == 0 and "sidecar" in (row.last_error or "")
    # deferred in the ledger too: not due again at once (the workers spun on it)
    assert row.state == "retrying" and row.next_attempt_at is not None and row.next_attempt_at > clock()
    assert ledger.claim_next() is None
    clock.advance(2.0)
    assert step() == "done" and dest.received[0][0].labels == ("base", "x")


def test_sidecar_changed_after_upload_stays_in_place(up: Any, ledger: Ledger, tmp_path: Path) -> None:
    make, dest = up
    folder, _, drop, step = make(metadata_sidecar=True)
    side = folder.path / "a.pdf.meta.json"

    def rewrite(_source: object) -> None:
        side.write_text('{"labels": ["changed after it was read"]}')
        os.utime(side, ns=(1, 1))

    dest.script = [rewrite]
    drop("a.pdf", b"A", sidecar={"labels": ["x"]})
    assert step() == "done"
    assert dest.received[0][0].labels == ("base", "x")
    assert (tmp_path / "archive" / "inbox" / "a.pdf").exists()
    assert side.exists() and not (tmp_path / "archive" / "inbox" / "a.pdf.meta.json").exists()


def _later_file(folder: Any, ledger: Ledger, data: bytes = b"a later, unrelated file") -> int:
    """A new file under the name an earlier one left the inbox from (the same producer's
    next export of that name, say)."""
    (folder.path / "a.pdf").write_bytes(data)
    return queue_file(ledger, folder, "a.pdf")


@pytest.mark.parametrize("after_upload", ["archive", "delete"])
@pytest.mark.parametrize("how", ["changed", "late", "file gone"])
def test_a_sidecar_left_in_the_inbox_is_not_given_to_a_later_file_of_that_name(
    up: Any, ledger: Ledger, tmp_path: Path, after_upload: str, how: str
) -> None:
    """A sidecar that stays in the inbox once its file has left it (changed after the
    upload, written after it, or its file removed by the producer before the archive
    move) belonged to that file. A later, unrelated file of the same name was sent with
    its labels and category without a word; it now fails with the reason, the sidecar
    beside it in failed_dir, and nothing is sent."""
    make, dest = up
    folder, _, drop, step = make(metadata_sidecar=True, after_upload=after_upload)
    side = folder.path / "a.pdf.meta.json"

    def during_upload(_source: object) -> None:
        if how == "file gone":
            (folder.path / "a.pdf").unlink()
            return
        side.write_text('{"labels": ["for the first a.pdf"], "category": "OLD"}')
        os.utime(side, ns=(1, 1))

    dest.script = [during_upload]
    first = drop("a.pdf", b"A", sidecar={"labels": ["x"]} if how != "late" else None)
    assert step() == "done"
    assert side.exists()  # left in place, as documented
    later = _later_file(folder, ledger)
    assert step() == "failed"
    assert dest.calls == 1  # the later file is not sent with the earlier one's metadata
    row = row_of(ledger, later)
    assert f"#{first}" in (row.last_error or "") and "a.pdf.meta.json" in (row.last_error or "")
    failed = tmp_path / "failed" / "inbox"
    assert (failed / "a.pdf").read_bytes() == b"a later, unrelated file"
    assert (failed / "a.pdf.meta.json").exists() and not side.exists()


def test_a_sidecar_written_again_after_its_file_left_is_the_next_files(
    up: Any, ledger: Ledger, tmp_path: Path
) -> None:
    """Only the sidecar as it was left is refused: written again (or touched) after its
    file left, it is the producer's sidecar for the next file of that name."""
    make, dest = up
    folder, _, drop, step = make(metadata_sidecar=True)
    side = folder.path / "a.pdf.meta.json"

    def late(_source: object) -> None:
        side.write_text('{"labels": ["late"]}')

    dest.script = [late]
    drop("a.pdf", b"A")
    assert step() == "done"
    side.write_text('{"labels": ["next"]}')
    os.utime(side, ns=(1, 1))  # an old mtime: the sidecar is not waited for
    _later_file(folder, ledger)
    assert step() == "done"
    assert dest.received[-1][0].labels == ("base", "next")
    assert json.loads((tmp_path / "archive" / "inbox" / "a (1).pdf.meta.json").read_text()) == {
        "labels": ["next"]
    }


def test_delete_and_keep_take_the_sidecar_along(up: Any, tmp_path: Path) -> None:
    make, _ = up
    folder, _, drop, step = make(metadata_sidecar=True, after_upload="delete", name="del")
    drop("a.pdf", b"A", sidecar={})
    assert step() == "done"
    assert not any(folder.path.iterdir())
    folder, _, drop, step = make(metadata_sidecar=True, after_upload="keep", name="keep")
    drop("a.pdf", b"A", sidecar={})
    assert step() == "done"
    assert sorted(p.name for p in folder.path.iterdir()) == ["a.pdf", "a.pdf.meta.json"]


def test_interrupted_sidecar_move_is_finished(
    up: Any, ledger: Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make, _ = up
    folder, _, drop, step = make(metadata_sidecar=True)
    row_id = drop("a.pdf", b"A", sidecar={"labels": ["x"]})
    real = archive.finish_sidecar

    def fail(*args: Any) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(archive, "finish_sidecar", fail)
    assert step() == "uploaded"  # the file is archived; its sidecar could not follow yet
    arch = tmp_path / "archive" / "inbox"
    assert (arch / "a.pdf").exists() and (folder.path / "a.pdf.meta.json").exists()
    monkeypatch.setattr(archive, "finish_sidecar", real)
    row = ledger.get(row_id)
    assert row is not None and row.state == "uploaded"
    archive.finish(ledger, row, folder)  # what the daemon's sweep / startup does
    assert row_of(ledger, row_id).state == "done"
    assert (arch / "a.pdf.meta.json").exists() and not (folder.path / "a.pdf.meta.json").exists()


# -- on_duplicate ----------------------------------------------------------------------------


def test_duplicate_is_skipped_archived_and_points_at_the_upload(
    up: Any, ledger: Ledger, tmp_path: Path
) -> None:
    make, dest = up
    folder, uploader, drop, step = make(on_duplicate="skip")
    first = drop("a.pdf", b"same bytes")
    assert step() == "done"
    second = drop("sub/copy.pdf", b"same bytes")
    other = drop("b.pdf", b"other bytes")
    assert step() == "done" and step() == "done"
    assert [item.name for item, _ in dest.received] == ["a.pdf", "b.pdf"]
    row = ledger.get(second)
    assert row is not None and row.state == "skipped" and row.duplicate_of == first
    assert row.sha256 == hashlib.sha256(b"same bytes").hexdigest()
    assert row.receipt == {"duplicate_of": first, "remote_id": "obj/a.pdf", "url": "http://x/obj"}
    assert row.location == str(tmp_path / "archive" / "inbox" / "sub" / "copy.pdf")
    assert Path(row.location).read_bytes() == b"same bytes"
    assert row_of(ledger, other).state == "done"
    assert uploader.stats.uploaded == 2
    assert ledger.counts()["skipped"] == 1


def test_upload_mode_uploads_duplicates(up: Any, ledger: Ledger) -> None:
    make, dest = up
    _, _, drop, step = make()
    drop("a.pdf", b"same")
    drop("b.pdf", b"same")
    assert step() == "done" and step() == "done"
    assert len(dest.received) == 2 and ledger.counts()["skipped"] == 0


def test_duplicate_of_another_destination_or_folder_is_uploaded(ledger: Ledger) -> None:
    sha = hashlib.sha256(b"x").hexdigest()
    ledger.observe("/in", ["a"], destination="one")
    row = ledger.rows()[0]
    note_stat(ledger, row.id, size=1, mtime_ns=1, inode=1)
    ledger.promote(row.id)
    ledger.claim_next()
    ledger.mark_uploaded(row.id, sha256=sha, receipt={"remote_id": "r"})
    assert ledger.uploaded_copy("/in", sha, destination="one") is not None
    assert ledger.uploaded_copy("/in", sha, destination="two") is None
    assert ledger.uploaded_copy("/other", sha, destination="one") is None
    assert ledger.uploaded_copy("/in", sha, destination="one", exclude=row.id) is None


def test_skip_is_durable_before_the_move_and_finished_after_a_crash(
    up: Any, ledger: Ledger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make, dest = up
    folder, uploader, drop, step = make(on_duplicate="skip")
    first = drop("a.pdf", b"same")
    assert step() == "done"
    second = drop("b.pdf", b"same")
    seen: list[str] = []

    def crash(*args: Any, **kw: Any) -> None:
        row = ledger.get(second)
        assert row is not None
        seen.append(row.state)  # what is on disk when the move starts
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(archive, "move", crash)
    assert step() == "uploaded"
    assert seen == ["uploaded"]
    row = ledger.get(second)
    assert row is not None and row.duplicate_of == first and (folder.path / "b.pdf").exists()
    monkeypatch.undo()
    archive.finish(ledger, row, folder)  # startup recovery of "uploaded" rows
    row = ledger.get(second)
    assert row is not None and row.state == "skipped"
    assert (tmp_path / "archive" / "inbox" / "b.pdf").read_bytes() == b"same"
    assert len(dest.received) == 1


def test_skip_keeps_labels_metadata_and_moves_the_sidecar(up: Any, ledger: Ledger, tmp_path: Path) -> None:
    make, dest = up
    _, _, drop, step = make(on_duplicate="skip", metadata_sidecar=True)
    drop("a.pdf", b"same")
    assert step() == "done"
    second = drop("b.pdf", b"same", sidecar={"labels": ["dup"]})
    assert step() == "done"
    row = ledger.get(second)
    assert row is not None and row.state == "skipped" and row.meta is not None
    assert row.meta["labels"] == ["base", "dup"]
    assert (tmp_path / "archive" / "inbox" / "b.pdf.meta.json").exists()
    assert len(dest.received) == 1


# -- ledger ------------------------------------------------------------------------------------


def test_duplicate_lookup_uses_the_index(ledger: Ledger) -> None:
    conn = sqlite3.connect(ledger.path)  # raw SQLite: the query plan is what is checked
    try:
        plan = conn.execute(
            "EXPLAIN QUERY PLAN SELECT * FROM files WHERE folder = ? AND sha256 = ? AND"
            " destination = ? AND state IN ('uploaded', 'done') AND duplicate_of IS NULL"
            " AND receipt IS NOT NULL AND id != ? ORDER BY id LIMIT 1",
            ("/in", "00", "d", -1),
        ).fetchall()
    finally:
        conn.close()
    assert any("files_sha256" in str(r[-1]) for r in plan), plan


def test_a_malformed_sidecar_syncd_had_no_descriptor_to_look_at_fails_no_file(
    up: Any, ledger: Ledger, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sidecar that does not parse is looked at again, to tell a half-written one (the
    file waits) from a malformed one (the file fails). Out of file descriptors for that
    look (EMFILE), it was taken for "no sidecar": the file failed, moved to failed_dir
    with a sidecar its producer was still writing. It now waits, using no attempt."""
    import errno

    make, dest = up
    folder, uploader, drop, step = make(metadata_sidecar=True, settle_seconds=2.0)
    row_id = drop("a.pdf", b"A", sidecar=b'{"labels": ["ok",')
    os.utime(folder.path / "a.pdf.meta.json", (clock() - 0.5, clock() - 0.5))

    def lstat_short(root: Any, rel: str) -> os.stat_result:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(metadata.safefs, "lstat", lstat_short)
    assert step() == "retrying"
    row = row_of(ledger, row_id)
    assert row.attempts == 0 and "out of file descriptors" in (row.last_error or "")
    assert (folder.path / "a.pdf").exists() and not dest.received


def test_metadata_sidecar_path_helpers() -> None:
    assert metadata.is_sidecar("a/b.pdf.meta.json") and not metadata.is_sidecar("a/.meta.json")
    assert metadata.sidecar_path("/in/a.pdf") == "/in/a.pdf.meta.json"


def test_a_sidecars_mtime_is_never_read_through_a_linked_directory(tmp_path: Path) -> None:
    """The deferral check read the sidecar's mtime by path: a directory on the way swapped
    for a link to elsewhere made it read a file outside the folder."""
    inbox, outside = tmp_path / "inbox", tmp_path / "outside"
    (inbox / "sub").mkdir(parents=True)
    outside.mkdir()
    (inbox / "sub" / "a.bin.meta.json").write_text("{}")
    (outside / "a.bin.meta.json").write_text("{}")
    sidecar = os.fspath(inbox / "sub" / "a.bin.meta.json")
    assert metadata.sidecar_mtime(sidecar, [inbox]) == os.stat(sidecar).st_mtime_ns
    os.rename(inbox / "sub", inbox / "moved")
    os.symlink(outside, inbox / "sub")
    assert metadata.sidecar_mtime(sidecar, [inbox]) is None
