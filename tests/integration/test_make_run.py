"""Given `make run`'s script on a free port with the GStreamer camera, when a newcomer copies the
lines it prints, then they work as printed: the curl start line starts a session, its WebSocket
path streams annotated frames, and the status and stop lines answer; Ctrl-C leaves nothing."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

from websockets.sync.client import connect

from support import ROOT, frame_results, free_port


def _lines(proc) -> queue.Queue:
    lines: queue.Queue = queue.Queue()

    def pump():
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _shell(*lines: str) -> subprocess.CompletedProcess:
    """The lines pasted one after the other into one bash."""
    return subprocess.run(["bash", "-c", "\n".join(lines)], capture_output=True, text=True, timeout=60, check=True)


def test_make_run_prints_lines_that_work_as_printed(tmp_path, tiny_model_dir):
    port, camera_port = free_port(), free_port()
    env = dict(
        os.environ,
        PORT=str(port),
        CAMERA_PORT=str(camera_port),
        CAMERA="gstreamer",
        MODEL=str(tiny_model_dir),
        DEVICE="cpu",
        INPUT_SIZE="320",
        CPU_THREADS="1",
        RUN_DIR=str(tmp_path),
        PY=sys.executable,
    )
    env.pop("API_KEYS", None)
    proc = subprocess.Popen(
        ["bash", "scripts/run-native.sh"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    printed: list[str] = []
    try:
        lines = _lines(proc)
        deadline = time.monotonic() + 180
        while not any(line.strip().startswith("Stop:") for line in printed):
            assert time.monotonic() < deadline and proc.poll() is None, "\n".join(printed[-30:])
            try:
                printed.append(lines.get(timeout=1))
            except queue.Empty:
                pass
        banner = "\n".join(printed)
        # the README's sample of this banner has the same lines, in the same order
        readme = (ROOT / "README.md").read_text().split("<!-- make-run-banner -->", 1)[1].split("```")[1]
        labels = [" ".join(line.split()[:2])[:12] for line in readme.strip().splitlines() if line.strip()]
        shown = [" ".join(line.split()) for line in printed if line.strip()]
        positions = [next(i for i, line in enumerate(shown) if line.startswith(label)) for label in labels]
        assert positions == sorted(positions), (labels, shown)
        key = re.search(r"API key:\s+(\S+)", banner).group(1)
        # the generated key is kept for the next run, readable by its owner only
        assert (tmp_path / "api_key").read_text().strip() == key
        assert oct((tmp_path / "api_key").stat().st_mode & 0o777) == "0o600"
        start_line = next(line.strip() for line in printed if "/api/v1/video/start" in line)
        status_line = next(line.split("Status:", 1)[1].strip() for line in printed if "Status:" in line)
        stop_line = next(line.split("Stop:", 1)[1].strip() for line in printed if "Stop:" in line)
        # nothing for the shell to read as a redirect or leave to fill in by hand
        assert not any("<" in line for line in (start_line, status_line, stop_line))

        # the start line shows the answer and keeps the id in SID
        start = _shell(start_line, 'echo "$SID"')
        started = json.loads(start.stderr)
        assert started["status"] == "running", started
        session_id = started["session_id"]
        assert start.stdout.strip() == session_id
        with connect(f"ws://127.0.0.1:{port}{started['websocket_path']}", open_timeout=10) as ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "stream_info"
            assert frame_results(ws, 1, seconds=30)
        # and the status and stop lines work as pasted after it, in the same shell
        status = json.loads(_shell(f"SID={session_id}", status_line).stdout)
        assert status["state"] == "running" and status["stats"]["frames_inferred"] > 0
        stopped = json.loads(_shell(f"SID={session_id}", stop_line).stdout)
        assert stopped["status"] == "stopped"
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    # and Ctrl-C leaves no process of its own behind
    leftovers = subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert not leftovers, leftovers
