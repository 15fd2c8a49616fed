"""A fast local stand-in for an upload service: nginx, configured by the benchmarks.

syncd's own emulator is Python and would be the bottleneck; nginx is not.
It speaks just enough of Lilt's protocol for syncd's Lilt destination (JSON
answers from ``return``), and stores bytes with WebDAV ``PUT``, which is
also what curl and rclone send to, so every client is measured against the
same server::

    POST /lilt/v2/upload/s3/params                  -> {"url": "/dav/<id>", "key", "method": "PUT"}
    POST /lilt/v2/upload/s3/multipart               -> {"uploadId", "key"}
    GET  /lilt/v2/upload/s3/multipart/<id>/<n>      -> {"url": "/dav/<id>-<n>", "method": "PUT"}
    POST /lilt/v2/upload/s3/multipart/<id>/complete -> {"success": true}
    PUT  /dav/<anything>                            (WebDAV; ETag in the answer)

Needs Debian's ``nginx-light`` and ``libnginx-mod-http-dav-ext`` (rclone's
WebDAV backend lists with PROPFIND); :func:`missing` says what to install.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

DAV_EXT = "/usr/lib/nginx/modules/ngx_http_dav_ext_module.so"

CONFIG = """
{user}
load_module {dav_ext};
worker_processes 2;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    client_max_body_size 0;
    client_body_buffer_size 1m;
    keepalive_requests 100000;
    sendfile on;
    server {{
        listen 127.0.0.1:{port};
        default_type application/json;
        location = /lilt/v2/upload/s3/params {{
            return 200
                '{{"url": "http://127.0.0.1:{port}/dav/$request_id", "key": "$request_id", "method": "PUT"}}';
        }}
        location = /lilt/v2/upload/s3/multipart {{
            return 200 '{{"uploadId": "$request_id", "key": "$request_id"}}';
        }}
        location ~ ^/lilt/v2/upload/s3/multipart/([^/]+)/complete$ {{
            return 200 '{{"success": true}}';
        }}
        location ~ ^/lilt/v2/upload/s3/multipart/([^/]+)/(\\d+)$ {{
            return 200 '{{"url": "http://127.0.0.1:{port}/dav/$1-$2", "method": "PUT"}}';
        }}
        location = /lilt/v2/upload {{
            return 200 '[]';
        }}
        location /dav/ {{
            root {data};
            dav_methods PUT DELETE MKCOL COPY MOVE;
            dav_ext_methods PROPFIND OPTIONS;
            create_full_put_path on;
            add_header ETag '"$request_id"' always;
        }}
    }}
}}
"""


def missing() -> str | None:
    """What to install for these benchmarks, or None when nginx, rclone and curl are here."""
    need = []
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        need.append("nginx-light")
    if not Path(DAV_EXT).exists():
        need.append("libnginx-mod-http-dav-ext")
    for tool in ("curl", "rclone"):
        if shutil.which(tool) is None:
            need.append(tool)
    if need:
        return "apt-get install -y " + " ".join(need)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FastServer:
    """nginx on a loopback port; ``data`` is where PUT bytes land (under ``dav/``)."""

    def __init__(self, base: Path | None = None) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="syncd-fast-", dir=base))
        self.data = self.tmp / "data"
        (self.data / "dav").mkdir(parents=True)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> FastServer:
        conf = self.tmp / "nginx.conf"
        # as root, nginx would switch its workers to an unprivileged user who cannot
        # reach this private temp tree; they run as whoever runs the benchmark
        user = "user root;" if os.geteuid() == 0 else ""
        conf.write_text(
            CONFIG.format(user=user, dav_ext=DAV_EXT, tmp=self.tmp, port=self.port, data=self.data)
        )
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.proc = subprocess.Popen(
            [nginx, "-c", str(conf), "-p", str(self.tmp), "-g", "daemon off;"], stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                    raise RuntimeError(f"nginx did not start: {err}") from None
                time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def cpu_seconds(self) -> float:
        """CPU time (user + system) nginx's processes have used so far: the master and
        its workers, read from /proc (clock ticks)."""
        assert self.proc is not None
        tick = os.sysconf("SC_CLK_TCK")
        total = 0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            pid, ppid = int(entry), int(fields[1])
            if self.proc.pid in (pid, ppid):
                total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / tick

    def stored(self) -> list[Path]:
        return [p for p in (self.data / "dav").rglob("*") if p.is_file()]

    def clear(self) -> None:
        for p in self.stored():
            os.unlink(p)


def syncd_config(
    work: Path,
    url: str,
    *,
    daemon: str = "",
    destination: str = "",
    folder: str = "",
    state_dir: Path | None = None,
) -> Path:
    """A syncd config in ``work`` with one Lilt destination at ``url`` (this server) and one
    folder ``work/inbox`` (created); the strings are extra TOML lines for each table. The
    ledger is in ``work/state`` unless ``state_dir`` puts it elsewhere."""
    (work / "inbox").mkdir(parents=True, exist_ok=True)
    cfg = work / "syncd.toml"
    cfg.write_text(f"""
[daemon]
state_dir = "{state_dir or "state"}"
{daemon}
[destinations.fast]
type = "lilt"
base_url = "{url}/lilt"
api_key = "bench-key-not-secret"
{destination}
[[folders]]
path = "inbox"
destination = "fast"
{folder}
""")
    cfg.chmod(0o600)
    return cfg
