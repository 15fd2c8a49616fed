"""The unit under a real systemd: Debian 12 booted in systemd-nspawn, systemd as PID 1.

tests/nspawn.py boots the cached tree of ``scripts/systemd-tree.sh`` (built
on first use) without network. Inside, syncd is installed the way
docs/operations.md says: a venv in /opt/syncd from this checkout's wheel and
``constraints.txt`` (offline, wheels built on the host), ``syncd`` linked onto
the PATH, ``syncd unit --install``, ``systemd-sysusers``,
``systemd-tmpfiles``, an inbox per the permission model, the config, a
credential and its drop-in from ``syncd unit --credentials``. The bundled
emulator runs as a unit of its own in the container and accepts only the
credential's secret.

Then, in order, against the real systemd 252: start and READY after the
startup scan; the LoadCredential= secret reaching the destination; reload
with a good config (applied before ``systemctl reload`` returns) and with a
broken one (the reload fails, the daemon keeps running); the sandbox seen
from the service's own mount namespace; the watchdog restarting a SIGSTOPped
daemon; ``systemctl stop`` during a large upload, which resumes after the
next start; upload helpers (``upload_processes``) inside the unit's
sandbox; and the journal: priorities, and the secret nowhere.

Skipped, with the reason, only where the machine cannot do it: not root, no
namespaces or cgroups, no tree and no Debian mirror to build one, no package
index for the wheels. ``SYNCD_REQUIRE_LIVE_SYSTEMD=1`` turns those skips into
failures. About 35 seconds once the tree is cached (its first build, about a
minute here, more on a slow mirror); ``SYNCD_TEST_CACHE`` moves the cache from
/var/cache/syncd-test.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shlex
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests import nspawn
from tests.harness import wait_until

# The first run builds the tree (debootstrap: a few minutes, counted in the first test).
# The tests share one booted container and run in order (each goes on from the state the
# one before left): under pytest-xdist they need one worker, which make test's --dist loadfile
# gives every file.
pytestmark = [pytest.mark.process, pytest.mark.timeout(1800)]

SECRET = "live-lilt-key-" + secrets.token_hex(8)  # only the credential file and the emulator
BIG = 40 * 1024 * 1024  # 5 Lilt parts of 8 MiB
INBOX = "/srv/syncd/inbox/contracts"
ARCHIVE = "/srv/syncd/archive/contracts"
EMULATOR = "http://127.0.0.1:8790"
DROP_INS = "/etc/systemd/system/syncd.service.d"

CONFIG = f"""\
[daemon]
state_dir = "/var/lib/syncd"
drain_seconds = 2
rescan_seconds = 60

[destinations.contracts]
type = "lilt"
base_url = "{EMULATOR}/lilt"
api_key = "credential:lilt-api-key"

[[folders]]
path = "{INBOX}"
destination = "contracts"
labels = ["legal"]
category = "SOURCE"
settle_seconds = 0.5
archive_dir = "{ARCHIVE}"
failed_dir = "/srv/syncd/failed/contracts"
"""

SECOND_FOLDER = """
[[folders]]
path = "/srv/syncd/inbox/scans"
destination = "contracts"
labels = ["scan"]
settle_seconds = 0.5
archive_dir = "/srv/syncd/archive/scans"
failed_dir = "/srv/syncd/failed/scans"
"""

INSTALL = f"""\
# docs/operations.md, section 1: a venv in /opt/syncd, pinned, syncd on the PATH
python3 -m venv /opt/syncd
/opt/syncd/bin/pip install --quiet --no-index --find-links /run/syncd-wheels \\
    --constraint /run/syncd-wheels/constraints.txt /run/syncd-wheels/syncd-*.whl
ln -sf /opt/syncd/bin/syncd /usr/local/bin/syncd
syncd --version
# section 2: the unit, the user and the folders (from the wheel's package data)
syncd unit --install
# the monitoring files come with the wheel too
syncd unit --grafana-dashboard | python3 -c 'import json, sys; json.load(sys.stdin)'
syncd unit --prometheus-alerts | grep -q '^groups:'
systemd-sysusers
systemd-tmpfiles --create /etc/tmpfiles.d/syncd.conf
groupadd --system contracts-drop
groupadd --system scans-drop
for inbox in contracts:contracts-drop scans:scans-drop; do
    install -d -m 3770 -o syncd -g "${{inbox#*:}}" "/srv/syncd/inbox/${{inbox%%:*}}"
    install -d -m 0700 -o syncd -g syncd "/srv/syncd/archive/${{inbox%%:*}}" \\
        "/srv/syncd/failed/${{inbox%%:*}}"
done
mkdir -p {DROP_INS}
printf '[Service]\\nSupplementaryGroups=contracts-drop scans-drop\\n' > {DROP_INS}/folders.conf
# sections 3 and 4: the config, then the credential it reads, then the check
install -m 0640 -o root -g syncd /run/syncd-wheels/config.toml /etc/syncd/config.toml
install -m 0600 -o root -g root /dev/null /etc/syncd/credentials/lilt-api-key
cat /run/syncd-wheels/secret > /etc/syncd/credentials/lilt-api-key
syncd unit --credentials > {DROP_INS}/credentials.conf
CREDENTIALS_DIRECTORY=/etc/syncd/credentials syncd -c /etc/syncd/config.toml check
# section 5
systemd-analyze verify /etc/systemd/system/syncd.service
systemctl daemon-reload
systemctl enable syncd
# the emulator, a unit of its own, accepting only the credential's secret
systemd-run --unit=emulator --description="upload emulator" -p StateDirectory=emulator \\
    /opt/syncd/bin/syncd emulate --listen 127.0.0.1:8790 --data /var/lib/emulator \\
    --lilt-key "$(cat /run/syncd-wheels/secret)"
"""


def require_or_skip(reason: str) -> None:
    if os.environ.get("SYNCD_REQUIRE_LIVE_SYSTEMD") == "1":
        pytest.fail(f"live systemd test required but impossible here: {reason}")
    pytest.skip(f"live systemd test skipped: {reason}")


@pytest.fixture(scope="module")
def machine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[nspawn.Machine]:
    reason = nspawn.why_not()
    if reason:
        require_or_skip(reason)
    tmp = tmp_path_factory.mktemp("live")
    shared = tmp / "shared"
    with nspawn.exclusive():
        try:
            tree = nspawn.ensure_tree()
            nspawn.build_wheels(shared)
        except nspawn.Unavailable as exc:
            require_or_skip(str(exc))
        (shared / "config.toml").write_text(CONFIG)
        (shared / "secret").write_text(SECRET + "\n")
        m = nspawn.Machine(tree, binds_ro={shared: "/run/syncd-wheels"}, log=tmp / "nspawn.log")
        try:
            try:
                m.boot()
            except nspawn.Unavailable as exc:
                require_or_skip(str(exc))
            m.sh(INSTALL, timeout=300)
            wait(lambda: emulator(m, "/_emulator/health").get("ok"), 30, "the emulator")
            yield m
        finally:
            m.close()


# -- helpers -----------------------------------------------------------------------


def wait(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    return wait_until(cond, timeout, 0.2, what)


def show(m: nspawn.Machine, *props: str) -> dict[str, str]:
    out = m.sh(f"systemctl show syncd -p {','.join(props)}").stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def emulator(m: nspawn.Machine, path: str, method: str = "GET", body: Any = None) -> Any:
    script = (
        "import json, sys, urllib.request\n"
        "data = sys.stdin.read().encode() or None\n"
        "req = urllib.request.Request(sys.argv[1], data=data, method=sys.argv[2],"
        " headers={'Content-Type': 'application/json'})\n"
        "print(urllib.request.urlopen(req, timeout=10).read().decode())\n"
    )
    out = m.sh(
        f"python3 -c {shlex.quote(script)} {shlex.quote(EMULATOR + path)} {method}",
        check=False,
        input="" if body is None else json.dumps(body),
    )
    if out.returncode != 0:
        return {}
    return json.loads(out.stdout or "{}")


def uploads(m: nspawn.Machine) -> dict[str, dict[str, Any]]:
    return {u["filename"]: u for u in emulator(m, "/_emulator/uploads").get("uploads", [])}


def requests_of(m: nspawn.Machine, op: str) -> list[dict[str, Any]]:
    return [r for r in emulator(m, "/_emulator/requests").get("requests", []) if r["op"] == op]


def drop(m: nspawn.Machine, name: str, content: str, inbox: str = INBOX) -> None:
    """A producer's careful write: a dot-file, then a rename into place."""
    m.sh(f"cd {inbox} && printf %s {shlex.quote(content)} > .{name}.tmp && mv .{name}.tmp {name}")


def archived(m: nspawn.Machine, name: str, archive: str = ARCHIVE) -> bool:
    return m.sh(f"test -f {archive}/{name}", check=False).returncode == 0


def helpers_of(m: nspawn.Machine, pid: str) -> list[str]:
    """The upload helper processes of the daemon ``pid`` (syncd/offload.py)."""
    script = (
        "import os, sys\n"
        "for p in os.listdir('/proc'):\n"
        "    try:\n"
        "        stat = open(f'/proc/{p}/stat').read().rsplit(')', 1)[1].split()\n"
        "        cmd = open(f'/proc/{p}/cmdline', 'rb').read()\n"
        "    except (OSError, ValueError):\n"
        "        continue\n"
        "    if stat[1] == sys.argv[1] and b'syncd.offload_helper' in cmd:\n"
        "        print(p)\n"
    )
    return m.sh(f"python3 -c {shlex.quote(script)} {pid}").stdout.split()


def journal(m: nspawn.Machine, *args: str) -> str:
    return m.sh("journalctl --no-pager " + " ".join(args)).stdout


def restart_clean(m: nspawn.Machine) -> None:
    """A start that the unit's StartLimitBurst= does not count against the tests."""
    m.sh("systemctl reset-failed syncd 2>/dev/null || true; systemctl restart syncd")


# -- the tests, in order -------------------------------------------------------------


def test_start_is_ready_after_the_startup_scan(machine: nspawn.Machine) -> None:
    m = machine
    drop(m, "before-start.txt", "dropped while syncd was not running")
    started = time.monotonic()
    m.sh("systemctl start syncd")  # Type=notify: returns once READY=1 arrived
    took = time.monotonic() - started
    state = show(m, "ActiveState", "SubState", "StatusText", "MainPID", "Type", "NRestarts")
    assert (state["ActiveState"], state["SubState"], state["Type"]) == ("active", "running", "notify"), state
    assert re.fullmatch(r"\d+ queued, \d+ uploading, [\d,]+ done today.*", state["StatusText"]), state
    assert int(state["MainPID"]) > 1 and took < 30  # STATUS= came with READY=1
    assert "syncd started: 1 folder(s)" in journal(m, "-u", "syncd", "-o", "cat")
    # The startup scan (queued before READY=1) finds what was dropped while it was down.
    wait(lambda: archived(m, "before-start.txt"), 30, "the file dropped before the start")


def test_load_credential_secret_reaches_the_destination(machine: nspawn.Machine) -> None:
    """The emulator accepts only SECRET, which syncd has only through LoadCredential=."""
    m = machine
    got = uploads(m)["before-start.txt"]
    assert got["labels"] == ["legal"] and got["category"] == "SOURCE"
    assert got["sha256"] == hashlib.sha256(b"dropped while syncd was not running").hexdigest()
    pid = show(m, "MainPID")["MainPID"]
    creds = m.sh(f"tr '\\0' '\\n' < /proc/{pid}/environ | grep ^CREDENTIALS_DIRECTORY=").stdout
    directory = creds.strip().split("=", 1)[1]
    listing = m.sh(f"ls -l {directory}").stdout
    assert "lilt-api-key" in listing and "-r--------" in listing, listing  # syncd's, read-only
    assert SECRET not in m.sh(f"tr '\\0' ' ' < /proc/{pid}/environ").stdout
    assert SECRET not in m.sh("systemctl show syncd; systemctl cat syncd").stdout
    # The shipped unit names no credential: the site's drop-in does.
    assert "LoadCredential" not in m.sh("grep -v '^#' /etc/systemd/system/syncd.service").stdout
    assert (
        "LoadCredential=lilt-api-key:/etc/syncd/credentials/lilt-api-key"
        in m.sh(f"cat {DROP_INS}/credentials.conf").stdout
    )


def test_reload_good_and_broken_config(machine: nspawn.Machine) -> None:
    m = machine
    pid = show(m, "MainPID")["MainPID"]
    good = CONFIG + SECOND_FOLDER
    m.sh("cat > /etc/syncd/config.toml", input=good)
    out = m.sh("systemctl reload syncd", check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    # Applied before `systemctl reload` returned: the new folder is watched already.
    drop(m, "right-after-reload.txt", "new folder", inbox="/srv/syncd/inbox/scans")
    wait(
        lambda: archived(m, "right-after-reload.txt", "/srv/syncd/archive/scans"),
        30,
        "a file in the folder the reload added",
    )
    assert "configuration reloaded: 2 folder(s)" in journal(m, "-u", "syncd", "-o", "cat")

    for broken in (
        good.replace("settle_seconds = 0.5", "settle_seconds = -1", 1),
        good + "\nthis is [ not TOML\n",
    ):
        m.sh("cat > /etc/syncd/config.toml", input=broken)
        out = m.sh("systemctl reload syncd", check=False)
        assert out.returncode != 0, "systemctl reload accepted a broken config"
        state = show(m, "ActiveState", "SubState", "StatusText", "MainPID")
        assert state["ActiveState"] == "active" and state["MainPID"] == pid, state
        assert state["StatusText"].startswith("reload failed, running the previous config: "), state
    log = journal(m, "-u", "syncd", "-o", "cat")
    assert (
        "reload refused, still running the previous configuration: "
        "folders[0].settle_seconds: must be >= 0, got -1" in log
    )
    assert "invalid TOML" in log
    drop(m, "after-refusal.txt", "still running on the previous config")
    wait(lambda: archived(m, "after-refusal.txt"), 30, "an upload after two refused reloads")

    m.sh("cat > /etc/syncd/config.toml", input=good)
    m.sh("systemctl reload syncd")
    state = show(m, "StatusText", "MainPID")
    assert not state["StatusText"].startswith("reload failed") and state["MainPID"] == pid


def test_sandbox_is_in_force(machine: nspawn.Machine) -> None:
    m = machine
    pid = show(m, "MainPID")["MainPID"]
    status = m.sh(f"cat /proc/{pid}/status").stdout
    fields = dict(re.findall(r"^(\w+):\s*(.*)$", status, re.M))
    assert fields["NoNewPrivs"] == "1" and fields["Seccomp"] == "2", fields  # filter mode
    assert fields["CapEff"] == fields["CapPrm"] == fields["CapBnd"] == "0" * 16, fields
    uid = m.sh("id -u syncd").stdout.strip()
    assert fields["Uid"].split()[0] == uid

    m.sh("mkdir -p /srv/other /opt/other && echo private > /srv/other/data && echo x > /tmp/host-tmp-file")
    # The daemon's own view: its mount namespace, its user and groups.
    as_syncd = f"nsenter -t {pid} -m -S {uid} -G {uid} --"

    def inside(cmd: str, user: str = as_syncd) -> int:
        return m.sh(f"{user} sh -c {shlex.quote(cmd)}", check=False).returncode

    assert inside("touch /var/lib/syncd/probe && rm /var/lib/syncd/probe") == 0  # StateDirectory=
    assert inside(f"touch {ARCHIVE}/probe && rm {ARCHIVE}/probe") == 0  # BindPaths=/srv/syncd
    assert inside("touch /tmp/probe && rm /tmp/probe") == 0  # PrivateTmp=
    as_root = f"nsenter -t {pid} -m --"
    for path in ("/etc/syncd/probe", "/usr/local/probe", "/var/probe", "/srv/probe"):
        assert inside(f"touch {path}") != 0, path  # ProtectSystem=strict, even for root:
        err = m.sh(f"{as_root} touch {path}", check=False)
        assert err.returncode != 0 and "Read-only file system" in err.stderr, (path, err.stderr)
    assert inside("test -e /srv/other/data") != 0  # TemporaryFileSystem=/srv:ro
    assert m.sh(f"{as_root} ls /opt").stdout.split() == ["syncd"]  # BindReadOnlyPaths=
    assert m.sh(f"{as_root} ls /srv").stdout.split() == ["syncd"]
    assert inside("test -e /tmp/host-tmp-file") != 0  # PrivateTmp=
    assert inside("cat /etc/syncd/credentials/lilt-api-key") != 0  # root's, 0700
    m.sh("rm -rf /srv/other /opt/other /tmp/host-tmp-file")


def test_watchdog_restarts_a_wedged_daemon(machine: nspawn.Machine) -> None:
    m = machine
    m.sh(
        "mkdir -p /run/systemd/system/syncd.service.d && printf '%s\\n' '[Service]' "
        "WatchdogSec=2s TimeoutAbortSec=2s RestartSec=1s "
        "> /run/systemd/system/syncd.service.d/zz-watchdog-test.conf && systemctl daemon-reload"
    )
    try:
        restart_clean(m)
        before = show(m, "MainPID", "NRestarts", "WatchdogUSec")
        assert before["WatchdogUSec"] == "2s", before
        time.sleep(3)  # pings keep it alive past WatchdogSec while it is healthy
        assert show(m, "MainPID")["MainPID"] == before["MainPID"]
        m.sh(f"kill -STOP {before['MainPID']}")
        after = wait(
            lambda: (
                (s := show(m, "MainPID", "NRestarts", "ActiveState"))["MainPID"]
                not in ("0", before["MainPID"])
                and s["ActiveState"] == "active"
                and s
            ),
            30,
            "systemd to restart the wedged daemon",
        )
        assert int(after["NRestarts"]) == int(before["NRestarts"]) + 1, after
        assert "Watchdog timeout" in journal(m, "-u", "syncd", "-o", "cat")
        drop(m, "after-watchdog.txt", "uploaded by the restarted daemon")
        wait(lambda: archived(m, "after-watchdog.txt"), 30, "an upload after the restart")
    finally:
        m.sh("rm -f /run/systemd/system/syncd.service.d/zz-watchdog-test.conf && systemctl daemon-reload")
        restart_clean(m)


def test_stop_during_a_large_upload_then_resume(machine: nspawn.Machine) -> None:
    m = machine
    emulator(m, "/_emulator/reset-log", "POST", {})
    emulator(
        m,
        "/_emulator/faults",
        "POST",
        {"script": [{"op": "lilt.put_part", "kind": "slow", "delay": 2.0, "count": 100}]},
    )
    m.sh(f"head -c {BIG} /dev/urandom > {INBOX}/.big.bin.tmp && mv {INBOX}/.big.bin.tmp {INBOX}/big.bin")
    digest = m.sh(f"sha256sum {INBOX}/big.bin").stdout.split()[0]
    wait(
        lambda: len([r for r in requests_of(m, "lilt.put_part") if r["status"] == 200]) >= 2,
        60,
        "two parts confirmed",
    )
    started = time.monotonic()
    m.sh("systemctl stop syncd")
    took = time.monotonic() - started
    state = show(m, "ActiveState", "Result", "ExecMainStatus")
    assert state == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}, state
    assert took < 2 + 10, took  # drain_seconds = 2, then interrupted with its parts kept
    assert m.sh(f"test -f {INBOX}/big.bin", check=False).returncode == 0  # not archived
    sent_before = len([r for r in requests_of(m, "lilt.put_part") if r["status"] == 200])
    assert 2 <= sent_before < 5
    emulator(m, "/_emulator/faults", "DELETE")
    m.sh("systemctl reset-failed syncd 2>/dev/null || true; systemctl start syncd")
    wait(lambda: archived(m, "big.bin"), 90, "the large file after the restart")
    got = uploads(m)["big.bin"]
    assert got["size"] == BIG and got["sha256"] == digest and got["times_received"] == 1
    assert len(requests_of(m, "lilt.initiate_multipart")) == 1  # resumed, not started over
    parts = [r for r in requests_of(m, "lilt.put_part") if r["status"] == 200]
    assert len(parts) <= 5 + 1, parts  # at most the part in flight at the stop sent again


def test_config_error_is_not_restarted(machine: nspawn.Machine) -> None:
    """RestartPreventExitStatus=2 4: a broken config fails the start once, no restart loop."""
    m = machine
    m.sh(
        "mkdir -p /run/systemd/system/syncd.service.d && printf '[Service]\\nRestartSec=1s\\n' "
        "> /run/systemd/system/syncd.service.d/zz-fast-restart.conf && systemctl daemon-reload "
        "&& cp /etc/syncd/config.toml /root/config.good"
    )
    try:
        m.sh("sed -i 's/settle_seconds = 0.5/settle_seconds = -1/' /etc/syncd/config.toml")
        out = m.sh("systemctl reset-failed syncd 2>/dev/null || true; systemctl restart syncd", check=False)
        assert out.returncode != 0
        time.sleep(3)  # three RestartSec= periods
        state = show(m, "ActiveState", "Result", "ExecMainStatus", "NRestarts")
        assert state == {
            "ActiveState": "failed",
            "Result": "exit-code",
            "ExecMainStatus": "2",
            "NRestarts": "0",
        }, state
    finally:
        m.sh(
            "cp /root/config.good /etc/syncd/config.toml && "
            "rm -f /run/systemd/system/syncd.service.d/zz-fast-restart.conf && "
            "systemctl daemon-reload"
        )
        restart_clean(m)
    assert show(m, "ActiveState")["ActiveState"] == "active"


def test_missing_credential_file_fails_the_start_with_243(machine: nspawn.Machine) -> None:
    """A LoadCredential= whose file does not exist (operations.md, troubleshooting)."""
    m = machine
    m.sh(
        f"printf '[Service]\\nLoadCredential=wriftai-token:/etc/syncd/credentials/wriftai-token"
        f"\\n' > {DROP_INS}/other-site.conf && systemctl daemon-reload"
    )
    try:
        out = m.sh("systemctl reset-failed syncd 2>/dev/null || true; systemctl restart syncd", check=False)
        assert out.returncode != 0
        state = show(m, "ExecMainStatus", "Result")
        assert state == {"ExecMainStatus": "243", "Result": "exit-code"}, state
        # said by the process systemd forked for the unit, gone at once: journald cannot
        # always tell its unit (`-u syncd` then misses the lines), and takes them a moment
        # after the unit's state is set; systemd starts each with the unit's name
        wait(
            lambda: all(
                f"syncd.service: {line}" in journal(m, "-o", "cat")
                for line in ("Failed to set up credentials", "Failed at step CREDENTIALS")
            ),
            15,
            "the credentials failure in the journal",
        )
    finally:
        m.sh(f"rm -f {DROP_INS}/other-site.conf && systemctl daemon-reload")
        restart_clean(m)
    assert show(m, "ActiveState")["ActiveState"] == "active"


def test_upload_helpers_work_in_the_units_sandbox(machine: nspawn.Machine) -> None:
    """upload_processes = 2 under the shipped unit (its system call filter, namespaces and
    NoNewPrivileges): the helpers start, send the files, and go with a restart."""
    m = machine
    previous = m.sh("cat /etc/syncd/config.toml").stdout
    helped = previous.replace("rescan_seconds = 60\n", "rescan_seconds = 60\nupload_processes = 2\n", 1)
    assert "upload_processes = 2" in helped
    m.sh("cat > /etc/syncd/config.toml", input=helped)
    m.sh("systemctl reload syncd")
    pid = show(m, "MainPID")["MainPID"]
    assert helpers_of(m, pid) == []  # none until there are files to send
    drop(m, "helped-first.txt", "starts the helpers")
    wait(lambda: len(helpers_of(m, pid)) == 2, 30, "two upload helpers")
    names = [f"helped-{i}.txt" for i in range(6)]
    for name in names:
        drop(m, name, f"sent by an upload helper: {name}")
    wait(lambda: all(archived(m, name) for name in names), 60, "the files the helpers sent")
    got = uploads(m)
    assert all(got[name]["labels"] == ["legal"] for name in names)

    def counts() -> dict[str, Any]:
        out = m.sh(
            "CREDENTIALS_DIRECTORY=/etc/syncd/credentials syncd -c /etc/syncd/config.toml status --json"
        )
        return json.loads(out.stdout)["daemon"].get("upload_helpers") or {}

    helpers = wait(lambda: (c := counts()).get("sent", 0) >= 1 and c, 20, "the helpers' counts in status")
    assert helpers["running"] == 2 and helpers["failed"] == 0 and not helpers["given_up"], helpers
    log = journal(m, "-u", "syncd", "-o", "cat")
    assert "did not start" not in log and "exited while idle" not in log, log[-2000:]
    old = helpers_of(m, pid)
    restart_clean(m)
    assert not [p for p in old if m.sh(f"test -e /proc/{p}", check=False).returncode == 0]
    m.sh("cat > /etc/syncd/config.toml", input=previous)
    m.sh("systemctl reload syncd")


def test_journal_has_priorities_and_no_secret(machine: nspawn.Machine) -> None:
    m = machine
    entries = [
        json.loads(line)
        for line in journal(
            m, "-u", "syncd", "-o", "json", "--output-fields=MESSAGE,PRIORITY,_PID,SYSLOG_IDENTIFIER"
        ).splitlines()
        if line.strip()
    ]
    own = [e for e in entries if e.get("_PID") != "1" and isinstance(e.get("MESSAGE"), str)]
    by_priority: dict[str, list[str]] = {}
    for e in own:
        by_priority.setdefault(e["PRIORITY"], []).append(e["MESSAGE"])
    started = [msg for msg in by_priority.get("6", []) if "syncd started:" in msg]
    assert started and not re.match(r"\d{4}-\d\d-\d\d", started[0]), started  # no timestamps
    assert any("reload refused" in msg for msg in by_priority.get("3", [])), by_priority.keys()
    assert any("reloaded its configuration" in msg for msg in by_priority.get("6", []))
    # The whole journal, but the emulator's own entries (its command line carries the key).
    everything = [
        line
        for line in journal(m, "-o", "json").splitlines()
        if '"_SYSTEMD_UNIT":"emulator.service"' not in line
    ]
    assert len(everything) > len(entries) and not [e for e in everything if SECRET in e]
    leaks = m.sh(f"grep -ral -- {shlex.quote(SECRET)} /var/lib/syncd /srv/syncd", check=False)
    assert leaks.returncode == 1 and leaks.stdout == "", leaks.stdout  # grep: no match
