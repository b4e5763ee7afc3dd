"""Given no Docker and no MediaMTX, when `scripts/push.sh` publishes to a local URL where nothing
listens, then it brings up the native relay camera there, the user's own ffmpeg RECORD reaches
readers of that same URL as H.264 (not re-encoded), and stopping push.sh stops the relay too."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from support import SYSTEM_PYTHON, free_port

pytestmark = [
    pytest.mark.skipif(not shutil.which("ffmpeg") or not shutil.which("ffprobe"), reason="needs ffmpeg"),
    pytest.mark.skipif(not Path(SYSTEM_PYTHON).exists(), reason="the relay runs on Debian's python3"),
]


def _probe(url: str, timeout: float = 30.0) -> dict:
    """The first video stream ffprobe finds at `url`, retried while the relay waits for a publisher."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        result = subprocess.run(
            ["ffprobe", "-v", "error", "-rtsp_transport", "tcp", "-count_frames", "-read_intervals", "%+2"]
            + ["-select_streams", "v:0", "-show_entries", "stream=codec_name,width,height,nb_read_frames"]
            + ["-of", "json", url],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if result.returncode == 0 and json.loads(result.stdout).get("streams"):
            return json.loads(result.stdout)["streams"][0]
        last = result.stderr
        time.sleep(0.5)
    raise AssertionError(f"nothing to read at {url}: {last}")


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_push_brings_up_the_native_relay_and_readers_get_the_pushed_h264(repo, tmp_path):
    # given a free local port and the compose-style publish URL (the relay ignores credentials)
    port = free_port()
    url = f"rtsp://publisher:demo-publish@127.0.0.1:{port}/camera"
    env = {**os.environ, "URL": url, "GEN_SIZE": "320x240", "GEN_FPS": "15", "GEN_SECONDS": "4"}
    env["CACHE_DIR"] = str(tmp_path)
    push = subprocess.Popen(
        [str(repo / "scripts" / "push.sh")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        # when a reader opens the same URL the publisher pushes to
        stream = _probe(f"rtsp://viewer:demo-read@127.0.0.1:{port}/camera")
        # then it gets the clip as pushed: H.264 at the clip's size, frames decodable
        assert stream["codec_name"] == "h264"
        assert (stream["width"], stream["height"]) == (320, 240)
        assert int(stream["nb_read_frames"]) >= 10
    finally:
        push.send_signal(signal.SIGTERM)
        try:
            output, _ = push.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(push.pid, signal.SIGKILL)
            output, _ = push.communicate()
    assert "native relay on rtsp://127.0.0.1" in output, output
    assert "demo-publish" not in output, "the publish password must not be printed"
    # and the relay went with push.sh: the port is free again
    deadline = time.monotonic() + 10
    while _listening(port) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _listening(port), "push.sh left its relay camera running"


def test_relay_answers_404_until_someone_publishes(repo):
    # given the relay camera with no publisher
    port = free_port()
    relay = subprocess.Popen(
        [SYSTEM_PYTHON, str(repo / "scripts" / "test_camera.py"), "--relay", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert relay.stdout.readline().startswith("READY")
        # when a reader asks, then it is told at once that there is nothing there (as MediaMTX does)
        started = time.monotonic()
        result = subprocess.run(
            ["ffprobe", "-v", "error", "-rtsp_transport", "tcp", f"rtsp://127.0.0.1:{port}/camera"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert result.returncode != 0 and "404" in result.stderr, result.stderr
        assert time.monotonic() - started < 5
    finally:
        relay.terminate()
        relay.wait(10)
        relay.stdout.close()


def test_push_rejects_an_unknown_relay_mode(repo):
    env = {**os.environ, "RELAY": "maybe", "CLIP": "/dev/null"}
    result = subprocess.run([str(repo / "scripts" / "push.sh")], env=env, capture_output=True, text=True, timeout=10)
    assert result.returncode == 2 and "RELAY must be" in result.stderr


def test_a_second_publisher_takes_over_and_readers_get_one_stream(repo, tmp_path):
    # given the relay with one ffmpeg publishing, and a reader
    port = free_port()
    url = f"rtsp://127.0.0.1:{port}/camera"
    clip = tmp_path / "clip.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=15", "-t", "4"]
        + ["-c:v", "libx264", "-preset", "veryfast", "-g", "15", "-pix_fmt", "yuv420p", str(clip)],
        check=True,
        timeout=60,
    )
    push = ["ffmpeg", "-v", "error", "-re", "-stream_loop", "-1", "-i", str(clip), "-c", "copy"]
    push += ["-f", "rtsp", "-rtsp_transport", "tcp", url]
    relay = subprocess.Popen(
        [SYSTEM_PYTHON, str(repo / "scripts" / "test_camera.py"), "--relay", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    publishers: list[subprocess.Popen] = []
    try:
        assert relay.stdout.readline().startswith("READY")
        publishers.append(subprocess.Popen(push, stdin=subprocess.DEVNULL))
        assert 20 <= int(_probe(url)["nb_read_frames"]) <= 40  # 2 s at 15 fps
        # when a second ffmpeg publishes to the same URL (a restarted pusher whose old
        # connection is still open)
        publishers.append(subprocess.Popen(push, stdin=subprocess.DEVNULL))
        time.sleep(2)
        # then readers get one stream at the clip's rate, not the two interleaved
        assert 20 <= int(_probe(url)["nb_read_frames"]) <= 40
        assert all(p.poll() is None for p in publishers)
    finally:
        for proc in [*publishers, relay]:
            proc.terminate()
            proc.wait(10)
        relay.stdout.close()
