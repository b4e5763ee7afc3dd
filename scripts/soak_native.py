#!/usr/bin/env python3
"""Native soak: ffmpeg pushes a clip to the relay camera, the service analyses it, viewers churn.

    PYTHONPATH=rt-detr-service .venv/bin/python scripts/soak_native.py --duration 3600

Everything runs on this machine without Docker: `scripts/test_camera.py --relay` takes the RTSP
RECORD from `ffmpeg -re -stream_loop -1 -i clip.mp4 -c copy -f rtsp -rtsp_transport tcp`, the
service (`python -m rtdetr_service`, as `make serve` runs it) opens SESSIONS sessions on it,
VIEWERS WebSocket viewers connect and disconnect every few seconds, and one stalled viewer
completes the upgrade and never reads. Every INTERVAL seconds one CSV row records the service
process's RSS, threads and descriptors, the load average, each session's state, fps, latency and
reconnects, and what the viewers received; minutes.csv has the per-minute p99 of the latency the
viewers saw. At the end: a PNG of it all and a verdict (exit 0 PASS, 1 FAIL, 2 could not run).

The parts (`Workload`, `judge`, `plot`) are also what tests/integration/test_soak.py drives
against an in-process service.
"""

from __future__ import annotations

import argparse
import base64
import csv
import json
import math
import os
import random
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from websockets.sync.client import connect

ROOT = Path(__file__).resolve().parents[1]
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's Python: it has the GStreamer bindings


# -- the native stack ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_clip(path: Path, size: str = "320x240", fps: int = 15, seconds: int = 20) -> Path:
    """A testsrc2 H.264 clip with a keyframe a second (a reader joining mid-loop starts within one)."""
    if path.is_file() and path.stat().st_size > 0:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.mp4")
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={fps}"]
        + ["-t", str(seconds), "-c:v", "libx264", "-preset", "veryfast", "-tune", "zerolatency", "-g", str(fps)]
        + ["-pix_fmt", "yuv420p", str(tmp)],
        check=True,
        timeout=120,
    )
    tmp.rename(path)
    return path


class RelayCamera:
    """scripts/test_camera.py --relay: an RTSP server that takes a RECORD and serves it to readers."""

    def __init__(self, port: int, log: Path | None = None) -> None:
        self.port = port
        self.url = f"rtsp://127.0.0.1:{port}/camera"
        self._log = log
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> None:
        self.proc = subprocess.Popen(
            [SYSTEM_PYTHON, str(ROOT / "scripts" / "test_camera.py"), "--relay", "--port", str(self.port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith("READY"):
                # Drain the rest of its output so a chatty GStreamer never blocks on a full pipe.
                threading.Thread(target=self._drain, name="relay-log", daemon=True).start()
                return
            if self.proc.poll() is not None:
                break
        self.stop()
        raise RuntimeError("the relay camera did not start")

    def _drain(self) -> None:
        sink = open(self._log, "a") if self._log else None
        try:
            for line in self.proc.stdout:
                if sink:
                    sink.write(line)
                    sink.flush()
        except (ValueError, OSError):
            pass
        finally:
            if sink:
                sink.close()

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None


class Pusher:
    """The user's own soak publisher: ffmpeg loop-pushing a clip with `-c copy -f rtsp`, restarted
    (and counted) if it ever exits."""

    def __init__(
        self, clip: Path, url: str, log: Path | None = None, restart_every_s: float = 0, gone_s: float = 2.0
    ) -> None:
        self.command = ["ffmpeg", "-hide_banner", "-loglevel", "warning", "-re", "-stream_loop", "-1"]
        self.command += ["-i", str(clip), "-c", "copy", "-f", "rtsp", "-rtsp_transport", "tcp", url]
        self._log = log
        self.restarts = 0
        self.cuts = 0  # times the pusher was stopped on purpose (a camera that goes away and returns)
        self._restart_every, self._gone = restart_every_s, gone_s
        self._proc: subprocess.Popen | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pusher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with open(self._log or os.devnull, "a") as out:
                self._proc = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
                cut_at = time.monotonic() + self._restart_every if self._restart_every else math.inf
                pause = 1.0
                while self._proc.poll() is None and not self._stop.wait(0.5):
                    if time.monotonic() >= cut_at:
                        stop_process(self._proc)
                        self.cuts += 1
                        pause = self._gone
                        break
                else:
                    if not self._stop.is_set():
                        self.restarts += 1
            self._stop.wait(pause)

    def stop(self) -> None:
        self._stop.set()
        stop_process(self._proc)
        self._thread.join(10)


def stop_process(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class ServiceProcess:
    """The service as `make serve` runs it (`python -m rtdetr_service`), settings from the environment."""

    def __init__(
        self,
        model: Path,
        out: Path,
        port: int,
        extra_env: dict[str, str],
        code: Path | None = None,
        command: list[str] | None = None,
    ) -> None:
        self.port = port
        self.command = command or [sys.executable, "-m", "rtdetr_service"]
        self.base_url = f"http://127.0.0.1:{port}"
        self.api_key = "soak-" + secrets.token_hex(12)
        self.env = dict(os.environ)
        self.env.update(
            PYTHONPATH=str(code or ROOT / "rt-detr-service"),
            FRONTEND_DIR=str(ROOT / "frontend"),
            API_KEYS=self.api_key,
            MODEL=str(model),
            DEVICE="cpu",
            INPUT_SIZE="320",
            HOST="127.0.0.1",
            PORT=str(port),
            DATA_DIR=str(out / "data"),
            CPU_THREADS="1",
            LOG_LEVEL="warning",
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
        )
        self.env.update(extra_env)
        self._out = out
        self.log_path = out / "service.log"  # stdout and stderr, appended across starts
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120.0) -> None:
        log = open(self.log_path, "a")
        # cwd = the run folder: the repository's .env (if any) must not change what is soaked.
        self.proc = subprocess.Popen(self.command, cwd=self._out, env=self.env, stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the service exited ({self.proc.returncode}); see {self.log_path}")
            try:
                if httpx.get(self.base_url + "/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError("the service did not become ready")

    def stop(self) -> None:
        stop_process(self.proc)


def tiny_model(path: Path) -> Path:
    """The tests' small random-weight RT-DETRv2 (built once): soaks the pipeline, not the model."""
    if (path / "config.json").is_file():
        return path
    code = "import sys; from tiny_model import build; from pathlib import Path; build(Path(sys.argv[1]))"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "rt-detr-service"), str(ROOT / "tests")]))
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, env=env, timeout=600)
    return path


# -- the load -----------------------------------------------------------------------------------


def process_figures(pid: int | str = "self") -> dict[str, float]:
    """RSS (MB), threads and open descriptors of one process, from /proc."""
    rss_kb, threads = 0, 0
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss_kb = int(line.split()[1])
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    return {"rss_mb": round(rss_kb / 1024, 1), "threads": threads, "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[rank]


@dataclass
class Tally:
    """What the viewers saw, shared by their threads; `take()` hands over and resets an interval."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    frames: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    connects: int = 0
    refused: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    stalled_opened: int = 0
    stalled_refused: int = 0

    def frame(self, latency_ms: float | None) -> None:
        with self.lock:
            self.frames += 1
            if latency_ms is not None:
                self.latencies_ms.append(latency_ms)

    def take(self) -> tuple[int, list[float]]:
        with self.lock:
            frames, latencies = self.frames, self.latencies_ms
            self.frames, self.latencies_ms = 0, []
        return frames, latencies


class ChurnViewer(threading.Thread):
    """A viewer that connects, reads frames for a few seconds, leaves, and comes back, forever."""

    def __init__(self, ws_url: str, tally: Tally, stop: threading.Event, hold_s: float, seed: int) -> None:
        super().__init__(name=f"soak-viewer-{seed}", daemon=True)
        self._url, self._tally, self._halt, self._hold = ws_url, tally, stop, hold_s
        self._random = random.Random(seed)

    def run(self) -> None:
        while not self._halt.is_set():
            hold = self._hold * self._random.uniform(0.5, 1.5)
            try:
                with connect(self._url, open_timeout=10, close_timeout=2, max_size=2**24) as ws:
                    with self._tally.lock:
                        self._tally.connects += 1
                    until = time.monotonic() + hold
                    while time.monotonic() < until and not self._halt.is_set():
                        self._read(ws.recv(timeout=10))
            except TimeoutError:
                self._refused("recv timeout")
            except Exception as exc:  # noqa: BLE001 - a soak counts every way a viewer fails, by kind
                reason = getattr(getattr(exc, "rcvd", None), "code", None)
                self._refused(f"close {reason}" if reason else type(exc).__name__)
            self._halt.wait(self._random.uniform(0.1, 0.5))

    def _read(self, message) -> None:
        if isinstance(message, bytes):
            return
        body = json.loads(message)
        if body.get("type") == "frame_result":
            stamp = body.get("timestamp")
            latency = (time.time() - stamp) * 1000.0 if isinstance(stamp, (int, float)) else None
            self._tally.frame(latency)

    def _refused(self, reason: str) -> None:
        with self._tally.lock:
            self._tally.refused[reason] += 1


class StalledViewer(threading.Thread):
    """A viewer that completes the WebSocket upgrade with a tiny receive buffer and never reads.

    It holds its connection for `hold_s`, then opens a new one, so a stall timeout (if the service
    has one) is met again and again, and a slot it never gives back would show as refused viewers.
    """

    def __init__(self, base_url: str, path: str, tally: Tally, stop: threading.Event, hold_s: float) -> None:
        super().__init__(name="soak-stalled-viewer", daemon=True)
        self._host, self._port = base_url.split("//", 1)[1].split(":")
        self._path, self._tally, self._halt, self._hold = path, tally, stop, hold_s

    def run(self) -> None:
        while not self._halt.is_set():
            sock = socket.socket()
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.settimeout(10)
                sock.connect((self._host, int(self._port)))
                key = base64.b64encode(os.urandom(16)).decode()
                sock.sendall(
                    (
                        f"GET {self._path} HTTP/1.1\r\nHost: {self._host}:{self._port}\r\nUpgrade: websocket\r\n"
                        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                    ).encode()
                )
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = sock.recv(1)  # byte by byte: not one byte past the 101 is read
                    if not chunk:
                        break
                    head += chunk
                with self._tally.lock:
                    if head.startswith(b"HTTP/1.1 101"):
                        self._tally.stalled_opened += 1
                    else:
                        self._tally.stalled_refused += 1
                self._halt.wait(self._hold)
            except OSError:
                with self._tally.lock:
                    self._tally.stalled_refused += 1
                self._halt.wait(1.0)
            finally:
                sock.close()


SESSION_FIELDS = ["state", "source_fps", "inference_fps", "published_fps", "p99_ms", "reconnects", "viewers"]
CSV_FIELDS = ["elapsed_s", "phase", "rss_mb", "threads", "fds", "load1", "load5"]
CSV_FIELDS += ["viewer_frames", "viewer_fps", "viewer_p50_ms", "viewer_p99_ms", "viewer_connects", "viewer_refused"]
CSV_FIELDS += ["stalled_opened", "stalled_refused", "pusher_restarts", "pusher_cuts"]
MINUTE_FIELDS = ["minute", "viewer_frames", "viewer_p50_ms", "viewer_p99_ms", "viewer_max_ms", "service_p99_ms"]
MINUTE_FIELDS += ["reconnects", "viewer_connects", "viewer_refused", "rss_mb", "threads", "fds", "load1"]


class Workload:
    """Sessions on one stream, churning viewers, a stalled viewer, and a sampler writing CSV rows."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        stream_url: str,
        out: Path,
        pid: int | str = "self",
        sessions: int = 2,
        viewers: int = 4,
        hold_s: float = 4.0,
        stall_hold_s: float = 90.0,
        interval_s: float = 5.0,
        pusher: Pusher | None = None,
    ) -> None:
        self.base_url, self.api_key, self.stream_url = base_url, api_key, stream_url
        self.pid, self.n_sessions, self.n_viewers = pid, sessions, viewers
        self.hold_s, self.stall_hold_s, self.interval_s = hold_s, stall_hold_s, interval_s
        self.pusher = pusher
        out.mkdir(parents=True, exist_ok=True)
        self.csv_path, self.minutes_path = out / "samples.csv", out / "minutes.csv"
        self.rows: list[dict] = []
        self.minutes: list[dict] = []
        self.session_ids: list[str] = []
        self.ws_paths: list[str] = []
        self.tally = Tally()
        self.phase = "warmup"
        self._http = httpx.Client(base_url=base_url, headers={"apikey": api_key}, timeout=30)
        self._viewers_stop = threading.Event()
        self._stalled_stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._stalled: StalledViewer | None = None
        self._t0 = time.monotonic()
        self._minute: dict = {"latencies": [], "frames": 0, "rows": []}
        self._csv = None
        self._minutes_csv = None

    @property
    def ws_base(self) -> str:
        return self.base_url.replace("http://", "ws://")

    def start_sessions(self, timeout: float = 60.0) -> None:
        for _ in range(self.n_sessions):
            deadline = time.monotonic() + timeout
            while True:  # the relay answers 404 until the pusher's first packets arrive
                response = self._http.post(
                    "/api/v1/video/start", json={"stream_url": self.stream_url, "enable_drawing": True}
                )
                if response.status_code == 200 or time.monotonic() > deadline:
                    break
                time.sleep(1.0)
            if response.status_code != 200:
                raise RuntimeError(f"start failed: HTTP {response.status_code} {response.text[:300]}")
            body = response.json()
            self.session_ids.append(body["session_id"])
            self.ws_paths.append(body["websocket_path"])

    def start_viewers(self) -> None:
        for i in range(self.n_viewers):
            url = self.ws_base + self.ws_paths[i % len(self.ws_paths)]
            viewer = ChurnViewer(url, self.tally, self._viewers_stop, self.hold_s, seed=i)
            viewer.start()
            self._threads.append(viewer)

    def start_stalled(self) -> None:
        self._stalled = StalledViewer(
            self.base_url, self.ws_paths[0], self.tally, self._stalled_stop, self.stall_hold_s
        )
        self._stalled.start()

    def stop_load(self) -> None:
        """Viewers and the stalled viewer leave (the sessions go on)."""
        self._viewers_stop.set()
        self._stalled_stop.set()
        for thread in [*self._threads, *([self._stalled] if self._stalled else [])]:
            thread.join(20)
        self._threads, self._stalled = [], None

    def stop_sessions(self) -> None:
        for session_id in self.session_ids:
            try:
                self._http.post("/api/v1/video/stop", json={"session_id": session_id})
            except httpx.HTTPError:
                pass
        self.session_ids = []

    def close(self) -> None:
        self.stop_load()
        self.stop_sessions()
        self._http.close()
        for handle in (self._csv, self._minutes_csv):
            if handle:
                handle.close()

    # -- sampling
    def run_for(self, seconds: float, phase: str) -> None:
        """Sample every interval for `seconds`, tagging rows with `phase`."""
        self.phase = phase
        until = time.monotonic() + seconds
        next_at = time.monotonic()
        while time.monotonic() < until:
            next_at += self.interval_s
            time.sleep(max(0.0, min(next_at, until) - time.monotonic()))
            self.sample()

    def sample(self) -> dict:
        elapsed = time.monotonic() - self._t0
        frames, latencies = self.tally.take()
        since = self.rows[-1]["elapsed_s"] if self.rows else 0.0
        row: dict = {"elapsed_s": round(elapsed, 1), "phase": self.phase, **process_figures(self.pid)}
        row["load1"], row["load5"], _ = (round(x, 2) for x in os.getloadavg())
        row["viewer_frames"] = frames
        row["viewer_fps"] = round(frames / max(1e-6, elapsed - since), 2)
        row["viewer_p50_ms"] = _round(percentile(latencies, 50))
        row["viewer_p99_ms"] = _round(percentile(latencies, 99))
        with self.tally.lock:
            row["viewer_connects"] = self.tally.connects
            row["viewer_refused"] = sum(self.tally.refused.values())
            row["stalled_opened"] = self.tally.stalled_opened
            row["stalled_refused"] = self.tally.stalled_refused
        row["pusher_restarts"] = self.pusher.restarts if self.pusher else ""
        row["pusher_cuts"] = self.pusher.cuts if self.pusher else ""
        for i, session_id in enumerate(self.session_ids):
            row.update({f"s{i}_{k}": v for k, v in self._session_figures(session_id).items()})
        self.rows.append(row)
        self._write_row(row)
        self._minute_add(row, latencies)
        return row

    def _session_figures(self, session_id: str) -> dict:
        try:
            response = self._http.get(f"/api/v1/video/status/{session_id}", timeout=10)
            status = response.json() if response.status_code == 200 else {"state": f"http_{response.status_code}"}
        except httpx.HTTPError as exc:
            status = {"state": type(exc).__name__}
        stats = status.get("stats") or {}
        return {
            "state": status.get("state"),
            "source_fps": stats.get("source_fps"),
            "inference_fps": stats.get("inference_fps"),
            "published_fps": stats.get("published_fps"),
            "p99_ms": (stats.get("latency_ms") or {}).get("p99"),
            "reconnects": stats.get("reconnects"),
            "viewers": stats.get("viewers"),
        }

    def _write_row(self, row: dict) -> None:
        if self._csv is None:
            fields = CSV_FIELDS + [f"s{i}_{k}" for i in range(self.n_sessions) for k in SESSION_FIELDS]
            self._csv = open(self.csv_path, "w", newline="")
            self._writer = csv.DictWriter(self._csv, fieldnames=fields, extrasaction="ignore")
            self._writer.writeheader()
        self._writer.writerow(row)
        self._csv.flush()

    def _minute_add(self, row: dict, latencies: list[float]) -> None:
        minute = int(row["elapsed_s"] // 60)
        current = self._minute
        if current["rows"] and int(current["rows"][0]["elapsed_s"] // 60) != minute:
            self._minute_close()
            current = self._minute
        current["rows"].append(row)
        current["latencies"].extend(latencies)
        current["frames"] += row["viewer_frames"]

    def _minute_close(self) -> None:
        rows, latencies = self._minute["rows"], self._minute["latencies"]
        if not rows:
            return
        first, last = rows[0], rows[-1]
        previous = self.minutes[-1]["_last"] if self.minutes else None
        service_p99 = [r[f"s{i}_p99_ms"] for r in rows for i in range(self.n_sessions) if r.get(f"s{i}_p99_ms")]
        record = {
            "minute": int(first["elapsed_s"] // 60),
            "viewer_frames": self._minute["frames"],
            "viewer_p50_ms": _round(percentile(latencies, 50)),
            "viewer_p99_ms": _round(percentile(latencies, 99)),
            "viewer_max_ms": _round(max(latencies) if latencies else None),
            "service_p99_ms": _round(max(service_p99) if service_p99 else None),
            "reconnects": total_reconnects(last, self.n_sessions)
            - (total_reconnects(previous, self.n_sessions) if previous else 0),
            "viewer_connects": last["viewer_connects"] - (previous["viewer_connects"] if previous else 0),
            "viewer_refused": last["viewer_refused"] - (previous["viewer_refused"] if previous else 0),
            "rss_mb": max(r["rss_mb"] for r in rows),
            "threads": max(r["threads"] for r in rows),
            "fds": max(r["fds"] for r in rows),
            "load1": round(sum(r["load1"] for r in rows) / len(rows), 2),
            "_last": last,
        }
        self.minutes.append(record)
        if self._minutes_csv is None:
            self._minutes_csv = open(self.minutes_path, "w", newline="")
            self._minutes_writer = csv.DictWriter(self._minutes_csv, fieldnames=MINUTE_FIELDS, extrasaction="ignore")
            self._minutes_writer.writeheader()
        self._minutes_writer.writerow(record)
        self._minutes_csv.flush()
        self._minute = {"latencies": [], "frames": 0, "rows": []}

    def finish_minutes(self) -> None:
        self._minute_close()


def total_reconnects(row: dict | None, sessions: int) -> int:
    if not row:
        return 0
    return sum(int(row.get(f"s{i}_reconnects") or 0) for i in range(sessions))


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


# -- the verdict --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bounds:
    """What a soak may show and still pass; the reasons are in docs/reliability.md."""

    rss_slope_mb_per_min: float = 1.0  # least-squares RSS slope over the second half
    threads_margin: int = 3  # second-half peak over first-half peak
    fds_margin: int = 6
    settle_threads_margin: int = 2  # after the load leaves, against the baseline before it
    settle_fds_margin: int = 4


def slope_per_min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope (units per minute) of (seconds, value) points."""
    if len(points) < 3:
        return 0.0
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var = sum((x - mean_x) ** 2 for x, _ in points)
    if var == 0:
        return 0.0
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / var * 60.0


def judge(rows: list[dict], bounds: Bounds, sessions: int) -> tuple[list[str], dict]:
    """Failures (empty = PASS) and the figures they were judged on, over the rows of the load."""
    loaded = [r for r in rows if r["phase"] not in ("warmup", "baseline", "settled")]
    figures: dict = {}
    failures: list[str] = []
    if len(loaded) < 4:
        return ["too few samples under load to judge"], figures
    half = len(loaded) // 2
    first, second = loaded[:half], loaded[half:]
    figures["rss_first_mb"] = loaded[0]["rss_mb"]
    figures["rss_last_mb"] = loaded[-1]["rss_mb"]
    figures["rss_peak_mb"] = max(r["rss_mb"] for r in loaded)
    figures["rss_slope_second_half_mb_per_min"] = round(
        slope_per_min([(r["elapsed_s"], r["rss_mb"]) for r in second]), 3
    )
    figures["threads_first_half_peak"] = max(r["threads"] for r in first)
    figures["threads_second_half_peak"] = max(r["threads"] for r in second)
    figures["fds_first_half_peak"] = max(r["fds"] for r in first)
    figures["fds_second_half_peak"] = max(r["fds"] for r in second)
    if figures["rss_slope_second_half_mb_per_min"] > bounds.rss_slope_mb_per_min:
        failures.append(
            f"RSS grows {figures['rss_slope_second_half_mb_per_min']} MB/min over the second half "
            f"(bound {bounds.rss_slope_mb_per_min})"
        )
    if figures["threads_second_half_peak"] > figures["threads_first_half_peak"] + bounds.threads_margin:
        failures.append(f"threads grow: {figures['threads_first_half_peak']} -> {figures['threads_second_half_peak']}")
    if figures["fds_second_half_peak"] > figures["fds_first_half_peak"] + bounds.fds_margin:
        failures.append(f"descriptors grow: {figures['fds_first_half_peak']} -> {figures['fds_second_half_peak']}")
    baseline = [r for r in rows if r["phase"] == "baseline"]
    settled = [r for r in rows if r["phase"] == "settled"]
    if baseline and settled:
        figures["threads_baseline"], figures["threads_settled"] = baseline[-1]["threads"], settled[-1]["threads"]
        figures["fds_baseline"], figures["fds_settled"] = baseline[-1]["fds"], settled[-1]["fds"]
        if figures["threads_settled"] > figures["threads_baseline"] + bounds.settle_threads_margin:
            failures.append(
                f"threads not back after the load: {figures['threads_baseline']} -> {figures['threads_settled']}"
            )
        if figures["fds_settled"] > figures["fds_baseline"] + bounds.settle_fds_margin:
            failures.append(
                f"descriptors not back after the load: {figures['fds_baseline']} -> {figures['fds_settled']}"
            )
    states = {r.get(f"s{i}_state") for r in loaded for i in range(sessions)}
    figures["session_states"] = sorted(str(s) for s in states)
    figures["reconnects"] = total_reconnects(loaded[-1], sessions) - total_reconnects(loaded[0], sessions)
    latencies = [r["viewer_p99_ms"] for r in loaded if r["viewer_p99_ms"] is not None]
    figures["viewer_p99_ms_worst_interval"] = max(latencies) if latencies else None
    figures["viewer_connects"] = loaded[-1]["viewer_connects"] - loaded[0]["viewer_connects"]
    figures["viewer_refused"] = loaded[-1]["viewer_refused"] - loaded[0]["viewer_refused"]
    figures["load1_mean"] = round(sum(r["load1"] for r in loaded) / len(loaded), 2)
    return failures, figures


# -- the plot -----------------------------------------------------------------------------------


def plot(rows: list[dict], minutes: list[dict], sessions: int, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r["elapsed_s"] / 60 for r in rows]
    fig, axes = plt.subplots(5, 1, figsize=(10, 13), sharex=True)
    rss = [r["rss_mb"] for r in rows]
    axes[0].plot(t, rss, color="tab:blue")
    axes[0].set_ylabel("service RSS (MB)")
    low, high = min(rss), max(rss)
    if high - low < 50:  # a few MB of allocator noise must not look like a slope
        axes[0].set_ylim(low - 25, high + 25)
    axes[1].plot(t, [r["threads"] for r in rows], label="threads")
    axes[1].plot(t, [r["fds"] for r in rows], label="open fds")
    axes[1].set_ylabel("count")
    axes[1].legend(loc="upper left")
    m = [(x["minute"] + 0.5) for x in minutes]
    axes[2].plot(m, [x["viewer_p99_ms"] for x in minutes], marker=".", label="viewer-seen p99 per minute")
    axes[2].plot(m, [x["viewer_p50_ms"] for x in minutes], marker=".", label="viewer-seen p50 per minute")
    axes[2].plot(m, [x["service_p99_ms"] for x in minutes], marker=".", label="service p99 (last 1024 results)")
    axes[2].set_ylabel("latency (ms)")
    axes[2].legend(loc="upper left", fontsize=8)
    for i in range(sessions):
        axes[3].plot(t, [r.get(f"s{i}_inference_fps") or 0 for r in rows], label=f"session {i} inference fps")
    axes[3].plot(t, [r["viewer_fps"] for r in rows], label="frames to all viewers /s", alpha=0.6)
    reconnects = [total_reconnects(r, sessions) for r in rows]
    ax_r = axes[3].twinx()
    ax_r.step(t, reconnects, color="black", where="post", label="reconnects (total)")
    ax_r.set_ylabel("reconnects")
    cuts = [
        r["elapsed_s"] / 60
        for prev, r in zip(rows, rows[1:], strict=False)
        if (r.get("pusher_cuts") or 0) > (prev.get("pusher_cuts") or 0)
    ]
    for i, at in enumerate(cuts):
        axes[3].axvline(at, color="grey", linestyle=":", label="publisher cut" if i == 0 else None)
    axes[3].set_ylabel("fps")
    axes[3].legend(loc="upper left", fontsize=8)
    axes[4].plot(t, [r["load1"] for r in rows], color="tab:red", label="load average (1 min), 2 cores")
    axes[4].set_ylabel("load")
    axes[4].set_xlabel("minutes")
    axes[4].legend(loc="upper left", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def markdown_table(minutes: list[dict], every: int = 10) -> str:
    """Per-`every`-minutes summary of minutes.csv rows, as a Markdown table (docs/reliability.md)."""

    def worst(values: list[float]) -> str:
        return f"{max(values):.0f}" if values else "–"

    lines = [
        "| minutes | RSS MB (min–max) | threads (max) | fds (max) | viewer p99 ms (worst minute) "
        "| viewer p50 ms (median minute) | service p99 ms (max) | reconnects | viewer connects | refused | load avg |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for start in range(0, len(minutes), every):
        chunk = minutes[start : start + every]
        p50 = sorted(m["viewer_p50_ms"] for m in chunk if m.get("viewer_p50_ms") is not None)
        cells = [
            f"{chunk[0]['minute']}–{chunk[-1]['minute'] + 1}",
            f"{min(m['rss_mb'] for m in chunk):.0f}–{max(m['rss_mb'] for m in chunk):.0f}",
            str(max(m["threads"] for m in chunk)),
            str(max(m["fds"] for m in chunk)),
            worst([m["viewer_p99_ms"] for m in chunk if m.get("viewer_p99_ms") is not None]),
            f"{p50[len(p50) // 2]:.0f}" if p50 else "–",
            worst([m["service_p99_ms"] for m in chunk if m.get("service_p99_ms") is not None]),
            str(sum(int(m["reconnects"] or 0) for m in chunk)),
            str(sum(int(m["viewer_connects"] or 0) for m in chunk)),
            str(sum(int(m["viewer_refused"] or 0) for m in chunk)),
            f"{sum(m['load1'] for m in chunk) / len(chunk):.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def read_rows(path: Path) -> list[dict]:
    """CSV rows back as numbers (for a re-plot of a run, partial or whole)."""
    rows = []
    with open(path) as handle:
        for raw in csv.DictReader(handle):
            row: dict = {}
            for key, value in raw.items():
                if value in ("", None):
                    row[key] = None
                    continue
                try:
                    row[key] = float(value) if "." in value else int(value)
                except ValueError:
                    row[key] = value
            rows.append(row)
    return rows


# -- main -----------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600, help="seconds of load after the warm-up")
    parser.add_argument("--warmup", type=float, default=30)
    parser.add_argument("--interval", type=float, default=5)
    parser.add_argument("--sessions", type=int, default=2)
    parser.add_argument("--viewers", type=int, default=4, help="churning viewers (spread over the sessions)")
    parser.add_argument("--hold", type=float, default=5.0, help="mean seconds a viewer stays")
    parser.add_argument("--stall-hold", type=float, default=90.0, help="seconds each stalled connection is held")
    parser.add_argument(
        "--cut-every", type=float, default=0, help="stop the pusher every N s for ~2 s (0 = never): reconnects"
    )
    parser.add_argument("--cut-for", type=float, default=8.0, help="seconds the pusher stays away at each cut")
    parser.add_argument("--size", default="320x240")
    parser.add_argument("--fps", type=int, default=15)
    parser.add_argument("--model", type=Path, help="model folder (default: the tests' tiny random-weight RT-DETRv2)")
    parser.add_argument("--out", type=Path, default=ROOT / "test-artifacts" / "soak")
    parser.add_argument("--plot", type=Path, help="PNG path (default OUT/soak.png)")
    parser.add_argument(
        "--snapshot", action="store_true", help="run a copy of rt-detr-service taken at the start (long soaks)"
    )
    parser.add_argument("--replot", action="store_true", help="only redraw OUT's CSVs (a run still going, or done)")
    parser.add_argument("--title", help="plot title (with --replot)")
    parser.add_argument("--max-rss-slope", type=float, default=Bounds.rss_slope_mb_per_min, help="MB/min")
    args = parser.parse_args()
    out = args.out.resolve()
    png = args.plot or out / "soak.png"
    if args.replot:
        rows, minutes = read_rows(out / "samples.csv"), read_rows(out / "minutes.csv")
        title = args.title or f"native soak (replot), {rows[-1]['elapsed_s'] / 60:.0f} min"
        plot(rows, minutes, args.sessions, png, title)
        print(json.dumps(judge(rows, Bounds(rss_slope_mb_per_min=args.max_rss_slope), args.sessions), indent=1))
        print(markdown_table(minutes))
        return 0
    out.mkdir(parents=True, exist_ok=True)

    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    camera = RelayCamera(free_port(), out / "relay.log")
    pusher = service = workload = None
    try:
        model = args.model or tiny_model(ROOT / ".run" / "tiny-rtdetr-v2")
        clip = make_clip(ROOT / ".run" / "clips" / f"testsrc2-{args.size}-{args.fps}.mp4", args.size, args.fps)
        camera.start()
        pusher = Pusher(clip, camera.url, out / "push.log", restart_every_s=args.cut_every, gone_s=args.cut_for)
        pusher.start()
        code = None
        if args.snapshot:
            # The code soaked is the code at the start, whatever is edited in the tree meanwhile.
            code = out / "code"
            shutil.rmtree(code, ignore_errors=True)
            shutil.copytree(ROOT / "rt-detr-service", code, ignore=shutil.ignore_patterns("__pycache__"))
            revision = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
            dirty = subprocess.run(
                ["git", "-C", str(ROOT), "status", "--short", "rt-detr-service"], capture_output=True, text=True
            )
            (out / "code.txt").write_text(f"HEAD {revision.stdout.strip()}\n{dirty.stdout}")
        service = ServiceProcess(model, out, free_port(), {}, code=code)
        service.start()
        workload = Workload(
            service.base_url, service.api_key, camera.url, out, pid=service.proc.pid, sessions=args.sessions,
            viewers=args.viewers, hold_s=args.hold, stall_hold_s=args.stall_hold, interval_s=args.interval,
            pusher=pusher,
        )  # fmt: skip
        workload.start_sessions()
        print(f"soak: {args.sessions} session(s) on {camera.url}, output in {out}", flush=True)
        workload.run_for(args.warmup, "warmup")
        workload.run_for(2 * args.interval, "baseline")
        workload.start_viewers()
        workload.start_stalled()
        workload.run_for(args.duration, "load")
        workload.stop_load()
        workload.run_for(max(15.0, 3 * args.interval), "settled")
        workload.finish_minutes()
    except (RuntimeError, subprocess.SubprocessError, OSError, httpx.HTTPError) as exc:
        print(f"soak: could not run: {exc}", file=sys.stderr)
        return 2
    finally:
        # Every part is stopped, even when one of them fails to stop: no orphan camera or service.
        stops = [workload.close] if workload else []
        stops += [part.stop for part in (pusher, service, camera) if part]
        for stop in stops:
            try:
                stop()
            except Exception as exc:  # noqa: BLE001 - reported, and the next part is still stopped
                print(f"soak: stopping {stop.__qualname__} failed: {exc!r}", file=sys.stderr)

    bounds = Bounds(rss_slope_mb_per_min=args.max_rss_slope)
    failures, figures = judge(workload.rows, bounds, args.sessions)
    figures.update(
        started=started,
        command=" ".join(sys.argv),
        pusher_restarts=pusher.restarts,
        pusher_cuts=pusher.cuts,
        stalled_opened=workload.tally.stalled_opened,
        stalled_refused=workload.tally.stalled_refused,
        viewer_refused_by_kind=dict(workload.tally.refused),
        minutes=len(workload.minutes),
        viewer_p99_ms_worst_minute=max((m["viewer_p99_ms"] or 0 for m in workload.minutes), default=None),
        failures=failures,
    )
    (out / "summary.json").write_text(json.dumps(figures, indent=1) + "\n")
    plot(
        workload.rows,
        workload.minutes,
        args.sessions,
        png,
        f"native soak, {args.duration / 60:.0f} min, started {started}",
    )
    print(json.dumps(figures, indent=1))
    print("VERDICT: " + ("FAIL" if failures else "PASS"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
