"""Test helpers: the GStreamer RTSP test camera, settings for tests, the service under a real uvicorn,
waiting, starting sessions and viewing them."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import httpx
import uvicorn
from websockets.sync.client import connect

from rtdetr_service.__main__ import server_config
from rtdetr_service.web.app import create_app
from rtdetr_service.web.settings import Settings

ROOT = Path(__file__).resolve().parents[1]

SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's Python: it has the GStreamer bindings
API_KEY = "test-key-0123456789"
STORE_NOW = 1_780_000_000.0  # the clock of the event stores `make_store` makes (integration/conftest.py)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout: float = 15.0, step: float = 0.05):
    """Poll `predicate` until it returns something truthy (returned), or `timeout` seconds pass
    (then its last value). A deadline for behaviour, not a speed figure."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(step)
    return predicate()


def frame_results(ws, count: int, seconds: float = 60.0, recv_timeout: float = 10.0) -> list[dict]:
    """Up to `count` frame_result messages from a JSON-format viewer socket within `seconds`;
    the other messages (stream_info, status, alerts) are passed over."""
    frames: list[dict] = []
    deadline = time.monotonic() + seconds
    while len(frames) < count and time.monotonic() < deadline:
        message = json.loads(ws.recv(timeout=recv_timeout))
        if message["type"] == "frame_result":
            frames.append(message)
    return frames


def start_session(client: httpx.Client, stream_url: str, **options) -> dict:
    """POST /api/v1/video/start with `options`; the answer's body (the test fails unless it is 200)."""
    response = client.post("/api/v1/video/start", json={"stream_url": stream_url, **options})
    assert response.status_code == 200, response.text
    return response.json()


def never_reading_viewer(url: str):
    """A WebSocket viewer that completes the upgrade and never reads, with a tiny receive buffer so
    that the server's sends block."""
    host, port = url.split("//")[1].split("/")[0].split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    return connect(url, sock=sock, max_queue=1, open_timeout=10)


class RtspCamera:
    """The GStreamer test camera as a subprocess that can be stopped and restarted on its port."""

    def __init__(
        self, port: int, width: int = 320, height: int = 240, fps: int = 15, pattern: str = "ball", codec: str = "h264"
    ) -> None:
        self.port = port
        self.args = [
            "--port",
            str(port),
            "--width",
            str(width),
            "--height",
            str(height),
            "--fps",
            str(fps),
            "--pattern",
            pattern,
            "--codec",
            codec,
        ]
        self.url = f"rtsp://127.0.0.1:{port}/camera"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> None:
        self.proc = subprocess.Popen(
            [SYSTEM_PYTHON, str(ROOT / "scripts" / "test_camera.py"), *self.args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + timeout
        line = ""
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith("READY"):
                return
            if self.proc.poll() is not None:
                break
        output = line + (self.proc.stdout.read() if self.proc.poll() is not None else "")
        self.stop()
        raise RuntimeError(f"test camera did not start: {output.strip()}")

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGCONT)  # a camera a test froze (SIGSTOP) must hear SIGTERM
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc.stdout.close()
            self.proc = None


@contextlib.contextmanager
def running_camera(**options) -> Iterator[RtspCamera]:
    """A test camera (RtspCamera options) on a free port, started; stopped at the end, frozen or not."""
    camera = RtspCamera(free_port(), **options)
    camera.start()
    try:
        yield camera
    finally:
        camera.stop()


def scratch_dir(prefix: str) -> Path:
    """A temporary folder removed when the test process ends."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, True)
    return path


def make_settings(model_dir: Path, **overrides) -> Settings:
    values = dict(
        # Never the repository's data/: each service of the tests keeps its events apart.
        data_dir=scratch_dir("rtdetr-data-"),
        api_keys=API_KEY,
        model=str(model_dir),
        device="cpu",
        input_size=320,
        port=free_port(),
        open_timeout_s=5.0,
        read_timeout_s=2.0,
        reconnect_min_s=0.2,
        reconnect_max_s=1.0,
        max_sessions=4,
        cpu_threads=1,
    )
    values.update(overrides)
    return Settings(_env_file=None, **values)


@dataclass
class LiveService:
    base_url: str
    api_key: str
    app: object
    server: uvicorn.Server
    thread: threading.Thread

    @property
    def ws_base(self) -> str:
        return self.base_url.replace("http://", "ws://")

    def client(self, **kwargs) -> httpx.Client:
        headers = {"apikey": self.api_key}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=30, **kwargs)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def run_service(settings: Settings, detector_factory=None, embedder_factory=None, vlm_factory=None) -> LiveService:
    """The real app under a real uvicorn on a free port, in a thread of the test process (the image
    encoder from EMBED_* unless `embedder_factory` builds another, the VLM from VLM_* unless
    `vlm_factory` does)."""
    factories = {}
    if detector_factory is not None:
        factories["detector_factory"] = detector_factory
    if embedder_factory is not None:
        factories["embedder_factory"] = embedder_factory
    if vlm_factory is not None:
        factories["vlm_factory"] = vlm_factory
    app = create_app(settings, **factories)
    config = server_config(app, settings, host="127.0.0.1", log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    base_url = f"http://127.0.0.1:{settings.port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base_url}/ready", timeout=2).status_code == 200:
                return LiveService(base_url, API_KEY, app, server, thread)
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.should_exit = True
    raise RuntimeError("service did not become ready")


def nal_units(data: bytes) -> list[bytes]:
    """The NAL units of an access unit, from Annex B (what RTSP gives) or 4-byte lengths (MP4's)."""
    if data.startswith(b"\x00\x00\x01") or data.startswith(b"\x00\x00\x00\x01"):
        units, i = [], 0
        starts = []
        while (i := data.find(b"\x00\x00\x01", i)) != -1:
            starts.append(i + 3)
            i += 3
        for n, start in enumerate(starts):
            end = starts[n + 1] - 3 if n + 1 < len(starts) else len(data)
            units.append(data[start:end].rstrip(b"\x00") if n + 1 < len(starts) else data[start:end])
        return units
    units, i = [], 0
    while i < len(data):
        size = int.from_bytes(data[i : i + 4], "big")
        units.append(data[i + 4 : i + 4 + size])
        i += 4 + size
    return units


def read_segment(path: Path) -> tuple[av.video.stream.VideoStream, list[av.Packet], int]:
    """The file's stream, its packets and how many pictures decode from them."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        info = (stream.codec_context.name, stream.codec_context.width, stream.codec_context.height)
        packets, pictures = [], 0
        for packet in container.demux(stream):
            if packet.size:
                packets.append((bytes(packet), packet.is_keyframe, packet.pts, packet.time_base))
                pictures += len(packet.decode())
    return info, packets, pictures
