"""scripts/*.sh: shellcheck-clean, and soak.sh judges a fake service correctly."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


def test_shell_scripts_pass_shellcheck(repo):
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is missing: apt-get install -y shellcheck (make test installs it)"
    scripts = sorted((repo / "scripts").glob("*.sh"))
    assert {p.name for p in scripts} >= {"push.sh", "soak.sh"}
    result = subprocess.run([shellcheck, *map(str, scripts)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", ["push.sh", "soak.sh"])
def test_scripts_are_executable_and_document_themselves(repo, name):
    script = repo / "scripts" / name
    assert os.access(script, os.X_OK)
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=10)
    assert out.returncode == 0 and "Environment" in out.stdout


class FakeService:
    """Just enough of the control API and /metrics for soak.sh (outside the system under test)."""

    def __init__(self, inference_fps: float, rss_growth_mb: float = 0.0):
        self.inference_fps, self.rss_growth_mb = inference_fps, rss_growth_mb
        self.started, self.stopped, self.keys, self.metrics_calls = [], [], set(), 0
        self.api_calls, self.refuse_stops = 0, 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def reply(self, code: int, body):
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path == "/metrics":
                    fake.metrics_calls += 1
                    rss = (1000 + fake.rss_growth_mb * fake.metrics_calls) * 1048576
                    return self.reply(200, f"# TYPE x gauge\nprocess_resident_memory_bytes {rss:.1f}\n")
                fake.keys.add(self.headers.get("apikey"))
                fake.api_calls += 1
                stats = {
                    "source_fps": 30.0,
                    "inference_fps": fake.inference_fps,
                    "dropped_frames": 3,
                    "latency_ms": {"p50": 40.0, "p99": 80.0},
                }
                running = [f"s{n}" for n in range(len(fake.started)) if f"s{n}" not in fake.stopped]
                sessions = [{"session_id": sid, "state": "running", "stats": stats} for sid in running]
                self.reply(200, {"sessions": sessions})

            def do_POST(self):
                fake.keys.add(self.headers.get("apikey"))
                fake.api_calls += 1
                if self.path.endswith("/stop") and fake.refuse_stops:
                    fake.refuse_stops -= 1  # a gateway whose rate limit is spent
                    self.rfile.read(int(self.headers["Content-Length"]))
                    return self.reply(429, {"message": "API rate limit exceeded"})
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path.endswith("/start"):
                    sid = f"s{len(fake.started)}"
                    fake.started.append(body["stream_url"])
                    return self.reply(200, {"session_id": sid, "status": "running"})
                fake.stopped.append(body["session_id"])
                self.reply(200, {"session_id": body["session_id"], "status": "stopped"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def run_soak(repo, fake: FakeService, sessions: int = 2) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "BASE_URL": fake.url,
        "API_KEY": "k1",
        "PUSH": "none",
        "SESSIONS": str(sessions),
        "WARMUP": "0",
        "DURATION": "2",
        "INTERVAL": "1",
        "METRICS_URL": fake.url + "/metrics",
        "MAX_MEM_GROWTH_MB": "100",
        "STREAM_URL": "rtsp://viewer:demo-read@localhost:8554/camera",
    }
    return subprocess.run([str(repo / "scripts" / "soak.sh")], env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(not shutil.which("curl"), reason="soak.sh drives the API with curl")
def test_soak_passes_a_healthy_service_and_stops_its_sessions(repo):
    fake = FakeService(inference_fps=29.5)
    try:
        result = run_soak(repo, fake)
    finally:
        fake.close()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "VERDICT: PASS" in result.stdout
    assert len(fake.started) == 2 and sorted(fake.stopped) == ["s0", "s1"]
    assert fake.keys == {"k1"}


@pytest.mark.skipif(not shutil.which("curl"), reason="soak.sh drives the API with curl")
def test_soak_stays_within_a_gateway_rate_limit_and_retries_refused_stops(repo):
    # one control call per sample whatever the session count (Kong allows 120 a minute), and a
    # stop refused with 429 is tried again rather than leaving the session running
    fake = FakeService(inference_fps=29.5)
    fake.refuse_stops = 1
    try:
        result = run_soak(repo, fake, sessions=4)
    finally:
        fake.close()
    assert result.returncode == 0, result.stdout + result.stderr
    samples = result.stdout.count("\ts0\t")
    assert fake.api_calls <= 4 + samples + 4 + 1  # starts + one per sample + stops + the retried stop
    assert sorted(fake.stopped) == ["s0", "s1", "s2", "s3"]


@pytest.mark.skipif(not shutil.which("curl"), reason="soak.sh drives the API with curl")
@pytest.mark.parametrize(("fps", "growth", "reason"), [(10.0, 0.0, "inference"), (29.5, 200.0, "memory grew")])
def test_soak_fails_slow_inference_or_growing_memory(repo, fps, growth, reason):
    fake = FakeService(inference_fps=fps, rss_growth_mb=growth)
    try:
        result = run_soak(repo, fake)
    finally:
        fake.close()
    assert result.returncode == 1, result.stdout + result.stderr
    assert "VERDICT: FAIL" in result.stdout and reason in result.stdout
    assert sorted(fake.stopped) == ["s0", "s1"], "sessions must be stopped on FAIL too"
