"""Failure scenarios about what a watched folder may contain (docs/guarantees.md, F15, F16).

The real daemon (subprocess) against the in-process emulator:

* F15: symlinks (to a file outside the folder, to ``/etc/passwd``, to ``/``,
  dangling), FIFOs, sockets and device nodes are skipped with one log line
  each and never opened; a regular file swapped for a symlink or a FIFO
  after it settled is refused at open time; no worker hangs. With strace,
  the daemon is shown never to open anything behind those links.
* F16: rclone's FsEncoding name corpus (every control character, dot-only
  names, leading/trailing whitespace, all ASCII punctuation, invalid UTF-8,
  a literal ``%46``), NFC and NFD spellings, 255-byte names: every file
  uploads under the documented wire name, is archived under its original
  bytes, and no name forges a log line.
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from syncd.destinations.base import wire_name
from syncd.logs import quoted_path
from tests.harness import Setup, sha, strace_problem, wait_until

pytestmark = [pytest.mark.process, pytest.mark.timeout(60)]

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ +[\w.]+: ")


def _bind_socket(path: Path) -> socket.socket:
    """A listening AF_UNIX socket file at ``path`` (bound elsewhere if the path is too long)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if len(os.fsencode(path)) < 100:
        sock.bind(os.fspath(path))
    else:  # sun_path holds 108 bytes: bind nearby, then rename the socket file into place
        short = Path(tempfile.mkdtemp(prefix="f15-", dir=path.parent.parent)) / "s"
        sock.bind(os.fspath(short))
        os.rename(short, path)
        short.parent.rmdir()
    sock.listen(1)
    return sock


def _skip_lines(log: str, path: Path) -> int:
    needle = f"skipping {quoted_path(os.fspath(path))}: it is a "
    return sum(1 for line in log.splitlines() if needle in line)


def _specials(s: Setup, outside: Path) -> dict[str, Path]:
    """Every kind of non-regular entry, created in the inbox; name -> path."""
    inbox = s.inbox()
    made = {
        "passwd-link": inbox / "passwd-link",
        "root-link": inbox / "root-link",
        "outside-link": inbox / "outside-link",
        "outside-dir-link": inbox / "outside-dir-link",
        "dangling": inbox / "dangling",
        "pipe": inbox / "pipe",
        "sock": inbox / "sock",
    }
    os.symlink("/etc/passwd", made["passwd-link"])
    os.symlink("/", made["root-link"])
    os.symlink(outside / "secret.txt", made["outside-link"])
    os.symlink(outside, made["outside-dir-link"])
    os.symlink(outside / "does-not-exist", made["dangling"])
    os.mkfifo(made["pipe"])
    return made


def _outside(tmp: Path) -> Path:
    outside = tmp / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"OUTSIDE THE WATCHED FOLDER: must never be read\n")
    (outside / "also.txt").write_bytes(b"not in the watched folder either\n")
    return outside


def test_f15_symlinks_fifos_and_sockets_are_skipped_once_and_never_read(setup: Callable[..., Setup]) -> None:
    s = setup(folders=[{"name": "in", "settle_seconds": 0.2}], daemon={"rescan_seconds": 1})
    outside = _outside(s.tmp)
    specials = _specials(s, outside)
    sock = _bind_socket(specials["sock"])
    try:
        s.drop("good.txt", b"a regular file")
        s.start()
        s.wait_started()
        # the same kinds again while the daemon watches: the event path, not the scan
        live = {"passwd-link-2": s.inbox() / "passwd-link-2", "pipe-2": s.inbox() / "pipe-2"}
        os.symlink("/etc/passwd", live["passwd-link-2"])
        os.mkfifo(live["pipe-2"])
        specials.update(live)
        s.drop("good-2.txt", b"another regular file")
        wait_until(lambda: s.all_done(2), 20, what="the regular files")
        time.sleep(2.5)  # two or three periodic rescans walk past the specials again
        s.drop("good-3.txt", b"a third one, after the rescans")  # no worker is stuck
        wait_until(lambda: s.all_done(3), 20, what="a file after the specials")

        log = s.log_text()
        for name, path in specials.items():
            assert _skip_lines(log, path) == 1, f"{name}: expected exactly one skip line"
        kinds = {
            name: re.findall(rf"skipping {re.escape(quoted_path(os.fspath(p)))}: it is a (\w+)", log)[0]
            for name, p in specials.items()
        }
        assert kinds["pipe"] == kinds["pipe-2"] == "FIFO" and kinds["sock"] == "socket"
        assert {
            kinds[n] for n in ("passwd-link", "root-link", "outside-link", "outside-dir-link", "dangling")
        } == {"symlink"}
        # nothing but the regular files has a row or reached the server
        assert sorted(r.relpath for r in s.rows()) == ["good-2.txt", "good-3.txt", "good.txt"]
        uploaded = {u["sha256"] for u in s.emulator.uploads()}
        assert len(uploaded) == 3
        for forbidden in (outside / "secret.txt", outside / "also.txt", Path("/etc/passwd")):
            assert sha(forbidden.read_bytes()) not in uploaded
        # the specials are left exactly as they were
        assert all(os.path.islink(specials[n]) for n in ("passwd-link", "root-link", "dangling"))
        assert stat.S_ISFIFO(os.lstat(specials["pipe"]).st_mode)
        assert stat.S_ISSOCK(os.lstat(specials["sock"]).st_mode)
        assert not (s.archive() / "outside-dir-link").exists()
        assert s.proc is not None and s.proc.poll() is None
        s.invariants()
        assert s.stop() == 0
    finally:
        sock.close()


def test_f15_device_nodes_are_skipped(setup: Callable[..., Setup]) -> None:
    s = setup(folders=[{"name": "in", "settle_seconds": 0.2}])
    char, block = s.inbox() / "null-like", s.inbox() / "loop-like"
    try:
        os.mknod(char, stat.S_IFCHR | 0o600, os.makedev(1, 3))
        os.mknod(block, stat.S_IFBLK | 0o600, os.makedev(7, 0))
    except PermissionError as exc:
        pytest.skip(
            f"mknod is not permitted here ({exc.strerror}: no CAP_MKNOD), "
            "so no device node can be put in the inbox"
        )
    s.drop("good.txt", b"regular")
    s.start()
    wait_until(lambda: s.all_done(1), 20, what="the regular file")
    time.sleep(0.5)
    log = s.log_text()
    for dev in (char, block):
        assert _skip_lines(log, dev) == 1 and f"{quoted_path(os.fspath(dev))}: it is a device" in log
        assert stat.S_ISCHR(os.lstat(dev).st_mode) or stat.S_ISBLK(os.lstat(dev).st_mode)
    assert [r.relpath for r in s.rows()] == ["good.txt"]
    s.invariants()


def _state(s: Setup, rel: str) -> list[str]:
    return [r.state for r in s.rows() if r.relpath == rel]


def test_f15_file_swapped_for_a_symlink_or_fifo_after_settling_is_refused(
    setup: Callable[..., Setup],
) -> None:
    """TOCTOU: the settle stage saw a regular file; by the time a worker opens it, it is a
    symlink to a file outside the folder (or a FIFO). O_NOFOLLOW|O_NONBLOCK and fstat refuse it."""
    s = setup(folders=[{"name": "in", "settle_seconds": 0.2}], daemon={"workers": 1})
    outside = _outside(s.tmp)
    s.emulator.set_faults(script=[{"op": "lilt.put", "kind": "slow", "delay": 2.0, "count": 1}])
    s.drop("first.txt", b"holds the only worker for two seconds")
    s.start()
    wait_until(lambda: _state(s, "first.txt") == ["uploading"], 15, what="the first upload")
    victims = {
        "to-link.txt": s.drop("to-link.txt", b"regular when it settled"),
        "to-fifo.txt": s.drop("to-fifo.txt", b"regular when it settled, too"),
    }
    wait_until(
        lambda: all(_state(s, v) == ["queued"] for v in victims),
        15,
        what="both victims queued behind the busy worker",
    )
    os.unlink(victims["to-link.txt"])
    os.symlink(outside / "secret.txt", victims["to-link.txt"])
    os.unlink(victims["to-fifo.txt"])
    os.mkfifo(victims["to-fifo.txt"])
    for v in victims:
        del s.dropped[("in", v)]
    wait_until(
        lambda: all(_state(s, v) == ["vanished"] for v in victims), 20, what="both swapped files refused"
    )
    s.drop("after.txt", b"the worker is free again")
    wait_until(lambda: s.all_done(2), 20, what="the files around the swap")

    log = s.log_text()
    assert "the file was replaced by a symlink" in log
    assert "the path is no longer a regular file" in log
    for v, path in victims.items():
        assert _skip_lines(log, path) == 1, f"{v}: expected one skip line"
    uploads = s.emulator.uploads()
    assert sorted(u["filename"] for u in uploads) == ["after.txt", "first.txt"]
    assert sha((outside / "secret.txt").read_bytes()) not in {u["sha256"] for u in uploads}
    assert os.path.islink(victims["to-link.txt"]) and stat.S_ISFIFO(os.lstat(victims["to-fifo.txt"]).st_mode)
    s.invariants()
    assert s.stop() == 0


def test_f15_strace_shows_nothing_behind_a_link_is_opened(
    setup: Callable[..., Setup], tmp_path: Path
) -> None:
    problem = strace_problem()
    if problem:
        pytest.skip(problem)
    s = setup(folders=[{"name": "in", "settle_seconds": 0.1}])
    outside = _outside(s.tmp)
    specials = _specials(s, outside)
    sock = _bind_socket(specials["sock"])
    trace = tmp_path / "open.trace"
    try:
        s.drop("good.txt", b"regular")
        proc = s.start(
            "once", wrapper=["strace", "-f", "-qq", "-e", "trace=open,openat,openat2", "-o", os.fspath(trace)]
        )
        assert proc.wait(60) == 0, s.log_text()[-2000:]
    finally:
        sock.close()
    opened = re.findall(r'open(?:at2?)?\((?:[^,]+, )?"((?:[^"\\]|\\.)*)"', trace.read_text())
    assert opened, "strace recorded no open at all"
    # the trace does see the daemon: the file is opened relative to its folder's descriptor
    assert any(p == "good.txt" or p.endswith("/inbox/in/good.txt") for p in opened), opened
    for path in opened:
        assert not path.startswith(os.fspath(outside)), f"opened {path} outside the folder"
        assert path not in ("/etc/passwd", "/"), f"opened {path} (behind a link in the inbox)"
        for name, special in specials.items():
            assert path != os.fspath(special), f"opened the {name} {path}"
    assert s.counts() == {"done": 1}
    assert sha((outside / "secret.txt").read_bytes()) not in {u["sha256"] for u in s.emulator.uploads()}


# -- F16 ----------------------------------------------------------------------------------


def _fs_encoding_corpus() -> list[bytes]:
    """rclone's FsEncoding list (fstests.go), plus Unicode spellings and NAME_MAX names."""
    names: list[str | bytes] = []
    for c in [*range(0x01, 0x20), 0x7F]:  # every control character but NUL
        names.append(f"ctl-{c:02X}-{chr(c)}-end.txt")
    names += ["\x01", "\n", "\r", "\t", "\x0b", "\x7f"]  # a control character alone
    names += ["...", "....", ". .", ".. ", " .", ".leading dot", "trailing dot.", "..x"]
    names += [
        " leading space",
        "trailing space ",
        "\rleading CR",
        "trailing CR\r",
        "\nleading LF",
        "trailing LF\n",
        "\tleading HT",
        "trailing HT\t",
        "\x0bleading VT",
        "trailing VT\x0b",
        "~leading tilde",
        "--help",
        "-n",
    ]
    names.append("".join(chr(c) for c in range(0x21, 0x7F) if not chr(c).isalnum() and c != 0x2F))
    names += ["test%46.txt", "%2F-not-a-slash", "%00", "a+b=c&d.txt"]
    names += [b"invalid utf8\xfe", b"\xfe", b"\xff\xfe\xfd-three", b"half \xc3 a char"]
    names += [
        "\u00e9t\u00e9-nfc.txt",
        "e\u0301te\u0301-nfd.txt",
        "\u00e9t\u00e9.txt",
        "e\u0301te\u0301.txt",
        "\u212b-angstrom",
        "\u00c5-a-ring",
    ]
    names += ["n" * 255, "\u00e9" * 127 + "y", "\U0001f600" * 63 + "abc", b"\xfe" * 255, "\u4e2d" * 85]
    out = [n if isinstance(n, bytes) else n.encode("utf-8") for n in names]
    assert all(len(n) <= 255 for n in out) and len(set(out)) == len(out)
    return out


def _put(s: Setup, name: bytes, data: bytes) -> None:
    """Write a file under its exact name (no temp name: some are 255 bytes long)."""
    path = os.path.join(os.fsencode(s.inbox()), name)
    with open(path, "wb") as f:
        f.write(data)
    s.dropped[("in", os.fsdecode(name))] = data


def test_f16_rclone_encoding_corpus_uploads_and_archives_with_original_bytes(
    setup: Callable[..., Setup],
) -> None:
    s = setup(folders=[{"name": "in", "settle_seconds": 0.3, "ignore_junk": False}])
    corpus = _fs_encoding_corpus()
    half = len(corpus) // 2
    for i, name in enumerate(corpus[:half]):  # found by the startup scan
        _put(s, name, b"file %d: %r" % (i, name))
    s.start()
    s.wait_started()
    for i, name in enumerate(corpus[half:], half):  # reported by inotify events
        _put(s, name, b"file %d: %r" % (i, name))
    wait_until(lambda: s.all_done(len(corpus)), 60, 0.2, "every name done")
    s.invariants()

    # archived under exactly the original bytes, nothing left in the inbox
    assert set(os.listdir(os.fsencode(s.archive()))) == set(corpus)
    assert os.listdir(os.fsencode(s.inbox())) == []
    # the server got each file under its wire name (undecodable bytes as rclone's ‛XX)
    uploads = {u["uuid"]: u for u in s.emulator.uploads()}
    rows = s.rows()
    assert len(rows) == len(corpus) and all(r.state == "done" for r in rows)
    for r in rows:
        rel = r.relpath
        up = uploads[r.uuid]
        assert up["filename"] == wire_name(rel), (rel, up["filename"])
        assert up["sha256"] == sha(s.dropped[("in", rel)])
        assert up["times_received"] == 1
    assert uploads[[r.uuid for r in rows if r.relpath == os.fsdecode(b"\xfe")][0]]["filename"] == "\u201bFE"
    nfc = [u for u in uploads.values() if u["filename"] == "\u00e9t\u00e9.txt"]
    nfd = [u for u in uploads.values() if u["filename"] == "e\u0301te\u0301.txt"]
    assert len(nfc) == len(nfd) == 1 and nfc[0]["sha256"] != nfd[0]["sha256"]  # not normalised

    # no name forged a log line: every line is a record of its own, one "archived" per file
    log = s.log_text()
    for line in log.splitlines():
        assert LOG_LINE.match(line), f"forged or unprefixed log line: {line!r}"
    assert sum(1 for line in log.splitlines() if " archived '" in line) == len(corpus)
    out = s.cli("files", "--json", check=True)
    assert len(json.loads(out.stdout)) == len(corpus)
    assert s.stop() == 0
