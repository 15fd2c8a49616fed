"""A small TCP fault proxy for tests (the toxiproxy idea, in-process, loopback only).

Put it between the daemon and the emulator for the faults a server cannot
produce by itself::

    proxy = FaultProxy(("127.0.0.1", emulator_port)).start()
    base_url = f"http://127.0.0.1:{proxy.port}/lilt"
    proxy.set(bandwidth=200_000)          # bytes/second, each direction
    proxy.set(latency=0.2)                # seconds added to every forwarded chunk
    proxy.set(reset_after=50_000)         # RST the client after N upstream bytes
    proxy.set(close_after=50_000)         # close cleanly (FIN) after N upstream bytes
    proxy.set(stall_after=10_000)         # stop forwarding after N bytes, keep the socket open
    proxy.set(down=True)                  # refuse new connections (RST at accept)

A toxic applies to connections accepted after it is set, and counts bytes per
connection in the client-to-server direction (where uploads happen).
``stats`` counts connections and bytes. Everything stops with :meth:`stop`.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class Toxics:
    latency: float = 0.0
    bandwidth: int = 0  # 0 = unlimited
    reset_after: int | None = None
    close_after: int | None = None
    stall_after: int | None = None
    down: bool = False


def _rst(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    except OSError:
        pass


class FaultProxy:
    def __init__(self, upstream: tuple[str, int], host: str = "127.0.0.1", port: int = 0) -> None:
        self.upstream = upstream
        self._listener = socket.create_server((host, port))
        self.port = int(self._listener.getsockname()[1])
        self.toxics = Toxics()
        self.stats = {"connections": 0, "up_bytes": 0, "down_bytes": 0, "resets": 0}
        self._stop = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, name="faultproxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def set(self, **changes: Any) -> None:
        self.toxics = replace(self.toxics, **changes)

    def clear(self) -> None:
        self.toxics = Toxics()

    def stop(self) -> None:
        self._stop.set()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        except OSError:
            pass
        try:
            self._listener.close()
        except OSError:
            pass
        with self._lock:
            for s in list(self._sockets):
                try:
                    s.close()
                except OSError:
                    pass
        self._thread.join(2)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            toxics = self.toxics
            if toxics.down:
                _rst(client)
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
                server.settimeout(None)
            except OSError:
                _rst(client)
                continue
            with self._lock:
                self._sockets |= {client, server}
                self.stats["connections"] += 1
            threading.Thread(target=self._pump, args=(client, server, toxics, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, toxics, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, toxics: Toxics, upstream: bool) -> None:
        sent = 0
        try:
            while not self._stop.is_set():
                data = src.recv(16384)
                if not data:
                    break
                if upstream:
                    limit = min(
                        x
                        for x in (toxics.reset_after, toxics.close_after, toxics.stall_after, 1 << 62)
                        if x is not None
                    )
                    if sent + len(data) > limit:
                        data = data[: max(0, limit - sent)]
                        if data:
                            dst.sendall(data)
                            sent += len(data)
                        self._trip(src, dst, toxics)
                        return
                if toxics.latency:
                    time.sleep(toxics.latency)
                if toxics.bandwidth:
                    time.sleep(len(data) / toxics.bandwidth)
                with self._lock:  # counted before the send: the answer it brings may beat a later count
                    self.stats["up_bytes" if upstream else "down_bytes"] += len(data)
                dst.sendall(data)
                sent += len(data)
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        except OSError:
            pass
        finally:
            if not upstream:
                for s in (src, dst):
                    try:
                        s.close()
                    except OSError:
                        pass

    def _trip(self, client: socket.socket, server: socket.socket, toxics: Toxics) -> None:
        if toxics.stall_after is not None and (
            toxics.reset_after is None or toxics.stall_after <= toxics.reset_after
        ):
            while not self._stop.is_set():  # hold both ends open, forward nothing
                time.sleep(0.05)
            return
        with self._lock:
            self.stats["resets"] += 1
        if toxics.reset_after is not None:
            _rst(client)
        else:
            try:
                client.shutdown(socket.SHUT_RDWR)
                client.close()
            except OSError:
                pass
        try:
            server.close()
        except OSError:
            pass
