"""Hostile servers for the hostile-input tests: real TCP servers on loopback that answer the way a
broken or malicious camera does (never, a byte at a time, with endless headers, with garbage, with
a redirect), a proxy that delays a real camera's answer, and webhook receivers that abuse the
sender (an endless answer, a trickled one)."""

from __future__ import annotations

import select
import socket
import threading
import time
from typing import Callable


class FakeServer:
    """Listens on `host`; runs `behaviour(conn, server)` on a thread per connection."""

    def __init__(self, behaviour: Callable[[socket.socket, FakeServer], None], host: str = "127.0.0.1") -> None:
        self.behaviour = behaviour
        self.host = host
        self.closed = threading.Event()
        self.connections = 0
        self.received = bytearray()
        self.sent = 0  # bytes a behaviour counted as sent
        self.open_for: list[float] = []  # seconds each finished connection stayed open
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, 0))
        self._sock.listen(64)
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"rtsp://{self.host}:{self.port}/camera"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}/hook"

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            with self._lock:
                self.connections += 1
                self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(0.2)
        opened = time.monotonic()
        try:
            self.behaviour(conn, self)
        except OSError:
            pass
        finally:
            conn.close()
            with self._lock:
                self.open_for.append(time.monotonic() - opened)

    def read_request(self, conn: socket.socket) -> bytes | None:
        """One RTSP request (up to its blank line), or None once the client has gone."""
        data = b""
        while b"\r\n\r\n" not in data:
            if self.closed.is_set():
                return None
            try:
                chunk = conn.recv(4096)
            except TimeoutError:
                continue
            if not chunk:
                return None
            data += chunk
            with self._lock:
                self.received += chunk
        return data

    def read_http_request(self, conn: socket.socket) -> bytes | None:
        """One HTTP request with its body (by Content-Length), or None once the client has gone."""
        request = self.read_request(conn)
        if request is None:
            return None
        head, _, body = request.partition(b"\r\n\r\n")
        lengths = [
            line.split(b":", 1)[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
        ]
        missing = int(lengths[0]) - len(body) if lengths else 0
        while missing > 0 and not self.closed.is_set():
            try:
                chunk = conn.recv(min(missing, 65536))
            except TimeoutError:
                continue
            if not chunk:
                return None
            missing -= len(chunk)
            request += chunk
        return request

    def wait(self, conn: socket.socket, seconds: float) -> bool:
        """Sleep, reading (and keeping) whatever comes; False once the client has gone."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self.closed.is_set():
            try:
                chunk = conn.recv(4096)
            except TimeoutError:
                continue
            if not chunk:
                return False
            with self._lock:
                self.received += chunk
        return not self.closed.is_set()

    def close(self) -> None:
        self.closed.set()
        self._sock.close()
        with self._lock:
            for conn in self._conns:
                try:
                    conn.close()
                except OSError:
                    pass


def _cseq(request: bytes) -> bytes:
    for line in request.split(b"\r\n"):
        if line.lower().startswith(b"cseq:"):
            return line.split(b":", 1)[1].strip()
    return b"1"


def silent(conn, server: FakeServer) -> None:
    """Accepts and never answers (a frozen camera whose kernel still accepts connections)."""
    while server.wait(conn, 1.0):
        pass


def trickle(conn, server: FakeServer) -> None:
    """Answers a byte every 0.1 s: the answer never completes, yet the socket is never silent."""
    request = server.read_request(conn)
    if request is None:
        return
    answer = b"RTSP/1.0 200 OK\r\nCSeq: " + _cseq(request) + b"\r\n" + b"X-Slow: " + b"a" * 10_000
    for byte in answer:
        conn.sendall(bytes([byte]))
        if not server.wait(conn, 0.1):
            return


def header_flood(conn, server: FakeServer) -> None:
    """Answers with headers that never end."""
    request = server.read_request(conn)
    if request is None:
        return
    conn.sendall(b"RTSP/1.0 200 OK\r\nCSeq: " + _cseq(request) + b"\r\n")
    while not server.closed.is_set():
        conn.sendall(b"X-Flood: " + b"a" * 100 + b"\r\n")
        time.sleep(0.001)


def garbage(conn, server: FakeServer) -> None:
    """Answers at once with something that is not RTSP, and hangs up."""
    if server.read_request(conn) is not None:
        conn.sendall(b"\x00\xffnot a stream at all\r\n\r\n")


def redirect_to(url: str):
    """Answers every request with `302` to `url`."""

    def behaviour(conn, server: FakeServer) -> None:
        while (request := server.read_request(conn)) is not None:
            answer = b"RTSP/1.0 302 Moved\r\nCSeq: " + _cseq(request) + b"\r\nLocation: " + url.encode()
            conn.sendall(answer + b"\r\n\r\n")

    return behaviour


def delayed_proxy(target_port: int, delay_s: float):
    """Forwards to a real camera on loopback, but only after `delay_s` (a slow camera)."""

    def behaviour(conn, server: FakeServer) -> None:
        if not server.wait(conn, delay_s):
            return
        upstream = socket.create_connection(("127.0.0.1", target_port))
        upstream.settimeout(0.2)
        # What the client sent meanwhile goes first.
        with server._lock:
            pending = bytes(server.received)
        upstream.sendall(pending)
        try:
            while not server.closed.is_set():
                ready, _, _ = select.select([conn, upstream], [], [], 0.2)
                for src in ready:
                    chunk = src.recv(65536)
                    if not chunk:
                        return
                    (upstream if src is conn else conn).sendall(chunk)
        finally:
            upstream.close()

    return behaviour


_ZEROS = bytes(64 * 1024)  # sent again and again: an endless answer costs the test nothing


def http_huge_answer(declared: int = 256 * 2**20, at_most: int = 32 * 2**20):
    """Answers `200` with `Content-Length: declared` of zeros, sending at most `at_most` bytes of it
    (counted in `server.sent`) while the client reads; then hangs up."""

    def behaviour(conn, server: FakeServer) -> None:
        if server.read_http_request(conn) is None:
            return
        conn.settimeout(5.0)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % declared)
        while server.sent < at_most and not server.closed.is_set():
            conn.sendall(_ZEROS)
            with server._lock:
                server.sent += len(_ZEROS)

    return behaviour


def http_trickle(head: bytes, pieces: list[bytes], period_s: float = 0.5):
    """Answers each request with `head` at once, then one of `pieces` every `period_s`: an answer
    that is never silent for long, yet takes len(pieces) * period_s to complete."""

    def behaviour(conn, server: FakeServer) -> None:
        while server.read_http_request(conn) is not None:
            conn.sendall(head)
            for piece in pieces:
                if not server.wait(conn, period_s):
                    return
                conn.sendall(piece)

    return behaviour
