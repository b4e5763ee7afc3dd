"""Failover, drain, relay latency and relay CPU of two replicas (issue 17), on this machine.

Two replicas of the real service (`python -m rtdetr_service`, as `make serve` runs it, with the tests'
tiny random-weight model on the CPU and one torch thread) share a PostgreSQL database (Debian's
server, in a temporary folder) and a NATS bus (Debian's nats-server). The GStreamer test camera
(320x240, 15 fps) feeds one session, started on r1, which therefore runs it (its owner); r2 shows it
to its own viewers by relaying it from the bus. Viewers are WebSocket clients of this script, in
the spec's JSON format. In order:

- relay CPU: CPU seconds per second of each replica's process (utime + stime, /proc/<pid>/stat)
  over `--cpu-s` seconds with no viewer at all, then with k viewers on r2 for each k of
  `--viewers`. r2's increase is what relaying one session to k viewers costs; r1's increase is
  what publishing on the bus costs the owner (it makes the bus's JPEG only while a replica reports
  a viewer of the session);
- relay latency: frame timestamp (the wall clock when the owner's reader took the frame) ->
  arrival, p50/p99, at one viewer of r1 and one of r2, side by side over `--relay-s` seconds;
- failover: a viewer on r2, SIGKILL of r1 -> the first frame at that viewer that r2 made itself
  (its copy of the session counts frames from 0 again), over `--trials` trials. Bounded below
  by SESSION_LEASE_S (`--lease`): nobody may take a session before its lease has run out;
- drain: the same with SIGTERM (r1 releases its leases, r2 claims every second), `--drains` trials.
Between trials the session is stopped and r1 is started again (a new process on a new port).

    PYTHONPATH=rt-detr-service .venv/bin/python bench/failover.py --out test-artifacts/failover.json
    PYTHONPATH=rt-detr-service .venv/bin/python bench/failover.py --trials 2 --drains 1 --cpu-s 5 --relay-s 5

Take figures with nothing else running on the machine: both replicas, the camera, PostgreSQL,
NATS and the viewers share its cores. JSON in --out (rewritten after each part), a summary on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from websockets.sync.client import connect

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(1, str(ROOT / "tests"))
sys.path.insert(2, str(ROOT / "rt-detr-service"))

from measure import cpu_seconds, percentiles_ms  # noqa: E402

from servers import NatsServer, Postgres, running_postgres, service_process, soak_native  # noqa: E402
from support import free_port, running_camera  # noqa: E402

KEY = "bench-failover-key"
CAMERA_FPS = 15


@dataclass(frozen=True)
class Arrival:
    """One frame_result at a viewer: when it came (monotonic and wall clock) and what it was."""

    mono: float
    wall: float
    timestamp: float
    index: int


class Viewer(threading.Thread):
    """A JSON viewer that keeps every frame's arrival and every status it is told, and never reconnects."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.frames: list[Arrival] = []
        self.states: list[tuple[float, str]] = []
        self.closed: str | None = None
        self._closing = threading.Event()

    def run(self) -> None:
        try:
            with connect(self.url, open_timeout=10, max_size=None) as ws:
                while not self._closing.is_set():
                    try:
                        message = json.loads(ws.recv(timeout=0.5))
                    except TimeoutError:
                        continue
                    now, wall = time.monotonic(), time.time()
                    if message["type"] == "frame_result":
                        self.frames.append(Arrival(now, wall, float(message["timestamp"]), int(message["frame_index"])))
                    elif message["type"] == "status":
                        self.states.append((now, message["state"]))
        except Exception as exc:  # noqa: BLE001 - a closed viewer is part of the figures
            self.closed = f"{type(exc).__name__}: {exc}"

    def wait_for_frame(self, after: float, timeout: float, index_below: int | None = None) -> Arrival | None:
        """The first frame that arrived after `after` (and, if given, whose index is below `index_below`)."""
        deadline, seen = time.monotonic() + timeout, 0
        while True:
            frames = self.frames[seen:]  # appended by the viewer's thread only
            seen += len(frames)
            for frame in frames:
                if frame.mono > after and (index_below is None or frame.index < index_below):
                    return frame
            if time.monotonic() >= deadline or self.closed is not None:
                return None
            time.sleep(0.01)

    def since(self, start: float) -> list[Arrival]:
        return [f for f in self.frames if f.mono >= start]

    def stop(self) -> None:
        self._closing.set()
        self.join(5)


class Replicas:
    """r1 and r2: the service as its own process each, sharing the database and the bus."""

    def __init__(self, model: Path, folder: Path, database_url: str, bus_url: str, lease_s: float) -> None:
        self.model, self.folder = model, folder
        self.env = dict(
            API_KEYS=KEY, DATABASE_URL=database_url, BUS_URL=bus_url, SESSION_LEASE_S=str(lease_s), MAX_SESSIONS="2"
        )
        self.running: dict[str, object] = {}

    def start(self, name: str) -> None:
        folder = self.folder / f"{name}-{time.monotonic_ns()}"  # a log of its own per start
        folder.mkdir(parents=True)
        self.running[name] = service_process(self.model, folder, REPLICA_ID=name, **self.env)

    def pid(self, name: str) -> int:
        return self.running[name].proc.pid

    def http(self, name: str) -> httpx.Client:
        return httpx.Client(base_url=self.running[name].base_url, headers={"apikey": KEY}, timeout=30)

    def viewer(self, name: str, session: dict) -> Viewer:
        viewer = Viewer(self.running[name].base_url.replace("http", "ws", 1) + session["websocket_path"])
        viewer.start()
        return viewer

    def start_session(self, camera_url: str) -> dict:
        """A session started on r1 (which then runs it); its start answer."""
        with self.http("r1") as http:
            answer = http.post("/api/v1/video/start", json={"stream_url": camera_url})
        if answer.status_code != 200:
            raise RuntimeError(f"r1 did not run the session: {answer.status_code} {answer.text}")
        return answer.json()

    def stop_session(self, name: str, session: dict) -> None:
        with self.http(name) as http:
            http.post("/api/v1/video/stop", json={"session_id": session["session_id"]})

    def stop_all(self) -> None:
        for service in self.running.values():
            service.stop()


def cpu_rates(pids: dict[str, int], seconds: float) -> dict[str, float]:
    """CPU seconds per second of each process over the next `seconds`."""
    before, start = {name: cpu_seconds(pid) for name, pid in pids.items()}, time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - start
    return {name: round((cpu_seconds(pid) - before[name]) / elapsed, 4) for name, pid in pids.items()}


def watched(viewers: list[Viewer], timeout: float = 20.0) -> None:
    """Wait until every viewer has had a frame (the relay subscribes after r2's presence reaches r1)."""
    start = time.monotonic()
    for viewer in viewers:
        if viewer.wait_for_frame(start - 60, timeout) is None:
            raise RuntimeError(f"a viewer got no frame within {timeout:g} s ({viewer.closed or 'still open'})")


def relay_cpu(replicas: Replicas, session: dict, counts: list[int], seconds: float) -> dict:
    """Each replica's CPU with no viewer, then with k viewers of the session on r2, for each k."""
    pids = {"r1": replicas.pid("r1"), "r2": replicas.pid("r2")}
    idle = cpu_rates(pids, seconds)
    rows = []
    for k in counts:
        viewers = [replicas.viewer("r2", session) for _ in range(k)]
        try:
            watched(viewers)
            time.sleep(2.0)
            start = time.monotonic()
            rates = cpu_rates(pids, seconds)
            fps = [len(v.since(start)) / seconds for v in viewers]
        finally:
            for viewer in viewers:
                viewer.stop()
        extra = {name: round(rates[name] - idle[name], 4) for name in pids}
        rows.append(
            {
                "viewers_on_r2": k,
                "cpu_s_per_s": rates,
                "extra_cpu_s_per_s": extra,
                "relay_cpu_s_per_s_per_viewer": round(extra["r2"] / k, 4),
                "fps_per_viewer_min": round(min(fps), 2),
            }
        )
    return {"seconds": seconds, "no_viewer_cpu_s_per_s": idle, "with_viewers": rows}


def relay_latency(replicas: Replicas, session: dict, seconds: float) -> dict:
    """Frame timestamp -> arrival at a viewer of the owner (r1) and one of r2, in the same run."""
    viewers = {"owner_r1": replicas.viewer("r1", session), "relayed_r2": replicas.viewer("r2", session)}
    try:
        watched(list(viewers.values()))
        time.sleep(2.0)
        start = time.monotonic()
        time.sleep(seconds)
    finally:
        for viewer in viewers.values():
            viewer.stop()
    return {
        name: dict(percentiles_ms([f.wall - f.timestamp for f in viewer.since(start)]), closed=viewer.closed)
        for name, viewer in viewers.items()
    }


def handover(replicas: Replicas, camera_url: str, how: signal.Signals, timeout: float) -> dict:
    """A session on r1 watched from r2; `how` sent to r1; the time to the first frame of r2's own copy
    at r2's viewer. Should r2 close that viewer meanwhile (it should not), a new viewer of r2 takes
    its place at once, as the viewer page would, and the trial says so: `kept_connection` false."""
    session = replicas.start_session(camera_url)
    viewers = [replicas.viewer("r2", session)]
    figure: dict = {}
    try:
        watched(viewers)
        time.sleep(1.0)
        last_index = viewers[0].frames[-1].index  # r1's copy has counted well past 0 by now
        sent = time.monotonic()
        replicas.running["r1"].proc.send_signal(how)
        first = viewers[0].wait_for_frame(sent, timeout, index_below=last_index)
        while first is None and viewers[-1].closed is not None and time.monotonic() < sent + timeout:
            time.sleep(0.1)
            viewers.append(replicas.viewer("r2", session))
            first = viewers[-1].wait_for_frame(sent, sent + timeout - time.monotonic(), index_below=last_index)
        kept = viewers[0]
        old = [f for f in kept.frames if f.mono > sent and (first is None or f.mono < first.mono)]
        figure = {
            "seconds": round(first.mono - sent, 3) if first else None,
            "kept_connection": first is not None and len(viewers) == 1,
            "old_owner_frames_after_signal": len(old),
            "states_seen": _changes([state for t, state in kept.states if t > sent]),
            "viewer_closed": kept.closed,
        }
    finally:
        for viewer in viewers:
            viewer.stop()
        replicas.running["r1"].proc.wait(60)
        replicas.stop_session("r2", session)
        replicas.start("r1")  # for the next trial
    return figure


def _changes(states: list[str]) -> list[str]:
    return [s for i, s in enumerate(states) if i == 0 or states[i - 1] != s]


def trials_summary(trials: list[dict]) -> dict:
    seconds = [t["seconds"] for t in trials if t.get("seconds") is not None]
    return {
        "trials": trials,
        "p50_s": round(statistics.median(seconds), 2) if seconds else None,
        "max_s": round(max(seconds), 2) if seconds else None,
        "missed": len(trials) - len(seconds),
        "kept_connection": sum(bool(t.get("kept_connection")) for t in trials),
    }


def summary(results: dict) -> str:
    lines = [f"SESSION_LEASE_S={results['lease_s']:g}, one session (camera 320x240 at {CAMERA_FPS} fps)"]
    if cpu := results.get("relay_cpu"):
        idle = cpu["no_viewer_cpu_s_per_s"]
        lines.append(f"CPU s/s without viewers: owner r1 {idle['r1']:.3f}, r2 {idle['r2']:.3f}")
        for row in cpu["with_viewers"]:
            extra = row["extra_cpu_s_per_s"]
            lines.append(
                f"  {row['viewers_on_r2']} viewer(s) on r2: r2 {extra['r2']:+.3f} "
                f"({row['relay_cpu_s_per_s_per_viewer']:+.3f} per viewer), owner r1 {extra['r1']:+.3f}, "
                f"min {row['fps_per_viewer_min']:.1f} fps per viewer"
            )
    if latency := results.get("relay_latency"):
        for name, figures in latency.items():
            lines.append(f"latency at {name}: p50 {figures['p50']} ms, p99 {figures['p99']} ms ({figures['n']} frames)")
    for name in ("failover_sigkill", "drain_sigterm"):
        if part := results.get(name):
            lines.append(
                f"{name}: p50 {part['p50_s']} s, max {part['max_s']} s, "
                f"{part['missed']} of {len(part['trials'])} without a frame, "
                f"{part['kept_connection']} of {len(part['trials'])} on the viewer's first connection"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=10, help="failover trials (SIGKILL)")
    parser.add_argument("--drains", type=int, default=5, help="drain trials (SIGTERM)")
    parser.add_argument("--lease", type=float, default=10.0, help="SESSION_LEASE_S (the service's default)")
    parser.add_argument("--viewers", default="1,4", help="viewer counts on r2 for the relay CPU, comma-separated")
    parser.add_argument("--cpu-s", type=float, default=20.0, help="seconds of each relay CPU measurement")
    parser.add_argument("--relay-s", type=float, default=30.0, help="seconds of the relay latency comparison")
    parser.add_argument("--out", type=Path, default=ROOT / "test-artifacts" / "failover.json")
    args = parser.parse_args()
    if Postgres.binaries() is None:
        sys.exit("PostgreSQL server binaries are not installed (/usr/lib/postgresql/*/bin): apt install postgresql")

    folder = Path(tempfile.mkdtemp(prefix="bench-failover-"))
    results: dict = {"lease_s": args.lease, "cpu_count": os.cpu_count(), "model": "tiny (tests/tiny_model.py)"}

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")

    with contextlib.ExitStack() as stack:
        postgres = stack.enter_context(running_postgres())
        bus = NatsServer(free_port(), folder)
        bus.start()
        stack.callback(bus.kill)
        camera = stack.enter_context(running_camera(fps=CAMERA_FPS))
        model = soak_native().tiny_model(folder / "tiny-rtdetr-v2")
        replicas = Replicas(model, folder, postgres.url(postgres.new_database()), bus.url, args.lease)
        stack.callback(replicas.stop_all)
        replicas.start("r1")
        replicas.start("r2")
        print(f"replicas up; logs under {folder}", flush=True)

        session = replicas.start_session(camera.url)
        time.sleep(3.0)  # the session settles (the model's first calls) before the idle figure
        results["relay_cpu"] = relay_cpu(replicas, session, [int(k) for k in args.viewers.split(",")], args.cpu_s)
        save()
        results["relay_latency"] = relay_latency(replicas, session, args.relay_s)
        save()
        replicas.stop_session("r1", session)

        for name, how, count, timeout in (
            ("failover_sigkill", signal.SIGKILL, args.trials, args.lease + 30),
            ("drain_sigterm", signal.SIGTERM, args.drains, 30),
        ):
            trials = []
            for _ in range(count):
                trials.append(handover(replicas, camera.url, how, timeout))
                print(name, trials[-1], flush=True)
                results[name] = trials_summary(trials)
                save()
    print(summary(results))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
