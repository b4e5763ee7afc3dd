"""CPU, disk and memory per recorded stream: the real reader and `Recorder` on the GStreamer camera (issue 18).

The GStreamer test camera (scripts/test_camera.py, x264 ultrafast, a keyframe every second) serves
a 1920x1080 30-fps H.264 stream over RTSP on this machine; it is one shared pipeline, so N readers
cost the camera one encode. Its pattern `pinwheel` with a 4000-kbit/s target makes about 3.9 Mbit/s
(about what clip_speed.py records) for about a fifth of a core; it kept up at 1080p30 on 2 cores
(checked here), so no pre-encoded file is needed. For each N of `--streams`, two runs, each in a
fresh child process:

- off: N `StreamReader`s (what N sessions run: each decodes every frame), recording off;
- on: the same N readers, each handing its packets to its own `Recorder` (mode continuous, so
  every segment is kept: `events` writes the same bytes and deletes later), in a temporary folder
  (`--dir`: a folder there; on the disk, not tmpfs, for disk figures).

After `--warmup` s (connected, decoding, a segment open), `--seconds` s are measured:

- CPU per thread, from /proc/self/task/<tid>/stat (user + system): each recorder thread
  (`recorder-<id>`) and each reader thread (`reader-<id>`), as ms of CPU per second of video; the
  rest of the process (the decoders' slice threads, the main thread) and the camera process. The
  kernel counts in 10-ms ticks: over 60 s a step of 0.17 ms/s (in a short run the rest of the
  process, a difference, can even dip below 0).
  The reader's extra for copying packets, two ways: its thread's ms/s on less off (a difference of
  two runs: noisy, as its decoding dominates), and timed inside the reader's hand-off
  (`_hand_packet`: the copy of the packet, the recorder's `on_packet`; thread CPU time around it).
- disk: bytes of the recording folder (segments, `.part` files, the index) grown in the window, in
  MB/s, next to the stream's own bitrate (its packets' bytes) and the bytes the process write()s
  and dirties (/proc/self/io wchar, write_bytes).
- memory: the bound of each recorder's queue in bytes at this bitrate (RECORD_QUEUE_S seconds of
  packets), the most packets it held, and the resident set: the mean over the window, `on` less
  `off` per recorder, and how it drifted from the window's first to its last second.
- delivery: decoded fps per reader (a run where a reader fell under 98 % of the camera's rate, or
  a recorder dropped packets, is flagged: the machine was too busy for the figures).

    PYTHONPATH=rt-detr-service .venv/bin/python bench/record_cost.py --dir /var/tmp \
        --out test-artifacts/record_cost.json                        # 1 and 4 streams, 60 s each run
    PYTHONPATH=rt-detr-service .venv/bin/python bench/record_cost.py --width 320 --height 240 \
        --streams 1 --seconds 4 --warmup 2 --segment-s 1             # a quick check that it runs

JSON in --out, a summary on stdout. Run it on a quiet machine: each 1080p reader's decoding took
about 50 ms of CPU a second here, the camera about 200; a busy machine shows in the figures.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT / "rt-detr-service"))

from rtdetr_service.ingest.reader import StreamReader  # noqa: E402
from rtdetr_service.outputs.recordings.index import RecordingIndex  # noqa: E402
from rtdetr_service.outputs.recordings.recorder import Recorder  # noqa: E402
from rtdetr_service.outputs.recordings.settings import RecordingSettings  # noqa: E402
from rtdetr_service.outputs.store import migrate  # noqa: E402
from rtdetr_service.outputs.store.schema import Database  # noqa: E402

SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's Python: it has the GStreamer bindings
TICKS_PER_S = os.sysconf("SC_CLK_TCK")
FULL_RATE = 0.98


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", default="1,4", help="comma-separated numbers of streams (readers, recorders)")
    parser.add_argument("--seconds", type=float, default=60.0, help="measured seconds of each run")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before the measure starts")
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--bitrate", type=int, default=4000, help="the camera's x264 target, kbit/s")
    parser.add_argument(
        "--pattern", default="pinwheel", help="videotestsrc pattern of the camera (ball makes ~1.5 Mbit/s at 1080p)"
    )
    parser.add_argument("--segment-s", type=float, default=10.0, help="RECORD_SEGMENT_S")
    parser.add_argument("--queue-s", type=float, default=5.0, help="RECORD_QUEUE_S")
    parser.add_argument("--dir", type=Path, help="make the recording folders under this one (default: the system's)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    args.streams = [int(n) for n in args.streams.split(",") if n.strip()]
    return args


# -- the camera ------------------------------------------------------------------------------------


class Camera:
    """scripts/test_camera.py as a child process on a free port."""

    def __init__(self, args: argparse.Namespace) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        command = [SYSTEM_PYTHON, str(ROOT / "scripts" / "test_camera.py"), "--port", str(port)]
        for option in ("width", "height", "fps", "bitrate", "pattern"):
            command += [f"--{option}", str(getattr(args, option))]
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("READY"):
            self.stop()
            raise RuntimeError(f"the test camera did not start: {line.strip()}")
        self.url = f"rtsp://127.0.0.1:{port}/camera"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# -- measuring ---------------------------------------------------------------------------------------


def cpu_s(stat: Path) -> float:
    """User + system CPU seconds from a /proc stat file (fields after the command's last ')')."""
    fields = stat.read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S


def thread_cpu(names: list[str]) -> dict[str, float]:
    """CPU seconds of this process's threads with these Python names (Python 3.11 does not pass
    them to the kernel: found by native id)."""
    ids = {t.name: t.native_id for t in threading.enumerate()}
    return {name: cpu_s(Path(f"/proc/self/task/{ids[name]}/stat")) for name in names}


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def io_bytes() -> dict[str, int]:
    """wchar (bytes passed to write()) and write_bytes (bytes dirtied for storage), if readable."""
    try:
        lines = Path("/proc/self/io").read_text().splitlines()
    except OSError:
        return {}
    values = dict(line.split(": ") for line in lines)
    return {key: int(values[key]) for key in ("wchar", "write_bytes") if key in values}


def folder_bytes(folder: Path) -> int:
    total = 0
    for path in folder.rglob("*"):
        try:
            if path.is_file():
                total += path.stat().st_size
        except OSError:  # a .part renamed meanwhile
            pass
    return total


class TimedReader(StreamReader):
    """The real reader; its packet hand-off (copy + the recorder's on_packet) timed in thread CPU time."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.frames = 0
        self.handoff_ns = 0
        self.packets = 0
        self.packet_bytes = 0

    def _hand_packet(self, packet, stream, template):
        began = time.thread_time_ns()
        template = super()._hand_packet(packet, stream, template)
        self.handoff_ns += time.thread_time_ns() - began
        self.packets += 1
        self.packet_bytes += packet.size
        return template


def snapshot(names: list[str], readers: list[TimedReader], folder: Path, camera_pid: int) -> dict:
    return {
        "wall": time.monotonic(),
        "threads": thread_cpu(names),
        "process": cpu_s(Path("/proc/self/stat")),
        "camera": cpu_s(Path(f"/proc/{camera_pid}/stat")),
        "frames": [r.frames for r in readers],
        "handoff_ns": [r.handoff_ns for r in readers],
        "packet_bytes": [r.packet_bytes for r in readers],
        "folder": folder_bytes(folder),
        "io": io_bytes(),
    }


def run(url: str, camera_pid: int, streams: int, record: bool, args: argparse.Namespace, folder: str) -> dict:
    """One run in this (child) process: `streams` readers, each with a recorder when `record`."""
    folder = Path(folder)
    settings = RecordingSettings(
        record="continuous",
        record_segment_s=args.segment_s,
        record_segment_max_s=max(30.0, args.segment_s),
        record_queue_s=args.queue_s,
    )
    db = Database(None, folder, 5.0)
    migrate.upgrade(db)
    index = RecordingIndex(db, folder)
    readers, recorders, names = [], [], []
    for i in range(streams):
        session_id = str(uuid.uuid4())
        names.append(f"reader-{session_id[:8]}")
        if record:
            names.append(f"recorder-{session_id[:8]}")  # the recorder's own thread name
        recorder = None
        if record:
            recorder = Recorder(
                session_id, f"bench-{i}", mode="continuous", settings=settings, data_dir=folder, index=index
            )
            recorders.append(recorder)
        reader = TimedReader(
            url,
            on_frame=lambda frame, i=i: _count(readers[i]),
            on_state=lambda state, error: None,
            open_timeout=10,
            read_timeout=5,
            reconnect_min=0.5,
            reconnect_max=2,
            name=names[-2 if record else -1],
            on_packet=recorder.on_packet if recorder else None,
            on_connect=recorder.on_connect if recorder else None,
        )
        readers.append(reader)
    try:
        for recorder in recorders:
            recorder.start()
        for reader in readers:
            reader.open()
            reader.start()
        time.sleep(args.warmup)
        before = snapshot(names, readers, folder, camera_pid)
        rss, queued = [], [0] * len(recorders)
        while time.monotonic() - before["wall"] < args.seconds:
            time.sleep(0.25)
            rss.append((time.monotonic() - before["wall"], rss_mb()))
            queued = [max(q, rec.stats().queued) for q, rec in zip(queued, recorders, strict=True)]
        after = snapshot(names, readers, folder, camera_pid)
        stats = [rec.stats() for rec in recorders]
        reconnects = sum(r.reconnects for r in readers)
    finally:
        for reader in readers:
            reader.stop(2.0)
        for recorder in recorders:
            recorder.stop(5.0)
        db.dispose()
    return figures(before, after, rss, queued, stats, reconnects, args)


def _count(reader: TimedReader) -> None:
    reader.frames += 1


def figures(before: dict, after: dict, rss: list, queued: list, stats: list, reconnects: int, args) -> dict:
    """A run's figures from its two snapshots: per stream, then for the process."""
    seconds = after["wall"] - before["wall"]
    video_s = seconds  # each stream delivers a second of video a second (checked by its fps)

    def ms_per_s(name: str) -> float:
        return (after["threads"][name] - before["threads"][name]) * 1000 / video_s

    readers = [n for n in after["threads"] if n.startswith("reader-")]
    recorders = [n for n in after["threads"] if n.startswith("recorder-")]
    fps = [(a - b) / seconds for a, b in zip(after["frames"], before["frames"], strict=True)]
    bitrate = [(a - b) * 8 / seconds / 1e6 for a, b in zip(after["packet_bytes"], before["packet_bytes"], strict=True)]
    handoff = [(a - b) / 1e6 / video_s for a, b in zip(after["handoff_ns"], before["handoff_ns"], strict=True)]
    threads_s = sum(after["threads"][n] - before["threads"][n] for n in readers + recorders)
    first = [mb for t, mb in rss if t < 1.0] or [rss[0][1]]
    last = [mb for t, mb in rss if t >= seconds - 1.0] or [rss[-1][1]]
    result = {
        "seconds": round(seconds, 1),
        "fps_per_reader": [round(f, 1) for f in fps],
        "kept_up": all(f >= FULL_RATE * args.fps for f in fps) and reconnects == 0,
        "reader_ms_per_s": [round(ms_per_s(n), 1) for n in readers],
        "rest_of_process_ms_per_s": round(
            ((after["process"] - before["process"]) - threads_s) * 1000 / seconds / len(readers), 1
        ),
        "camera_ms_per_s": round((after["camera"] - before["camera"]) * 1000 / seconds, 1),
        "rss_mb": round(statistics.mean(mb for _, mb in rss), 1),
        "rss_drift_mb": round(statistics.mean(last) - statistics.mean(first), 1),
        "reconnects": reconnects,
    }
    if recorders:
        written = (after["folder"] - before["folder"]) / seconds / 1e6 / len(recorders)
        io = {k: (after["io"][k] - before["io"][k]) / seconds / 1e6 / len(recorders) for k in after["io"]}
        mean_bitrate = statistics.mean(bitrate)
        result |= {
            "recorder_ms_per_s": [round(ms_per_s(n), 2) for n in recorders],
            "handoff_ms_per_s": [round(h, 3) for h in handoff],
            "stream_mbit_s": [round(b, 2) for b in bitrate],
            "folder_mb_per_s": round(written, 3),
            "io_mb_per_s": {k: round(v, 3) for k, v in io.items()},
            "queue_bound_packets": round(args.queue_s * args.fps),
            "queue_bound_mb": round(args.queue_s * mean_bitrate / 8, 2),
            "queue_max_packets": max(queued),
            "segments": sum(s.segments for s in stats),
            "dropped_packets": sum(s.dropped_packets for s in stats),
            "dropped_segments": sum(s.dropped_segments for s in stats),
        }
        result["kept_up"] = result["kept_up"] and result["dropped_packets"] == 0
    return result


# -- the runs ------------------------------------------------------------------------------------------


def compare(off: dict, on: dict, streams: int) -> dict:
    """What recording adds per stream: the recorder's thread, the reader's extra, disk, memory."""
    return {
        "streams": streams,
        "recorder_ms_per_s": round(statistics.mean(on["recorder_ms_per_s"]), 2),
        "reader_extra_ms_per_s_by_difference": round(
            statistics.mean(on["reader_ms_per_s"]) - statistics.mean(off["reader_ms_per_s"]), 2
        ),
        "reader_extra_ms_per_s_timed": round(statistics.mean(on["handoff_ms_per_s"]), 3),
        "process_extra_ms_per_s_by_difference": round(
            on["rest_of_process_ms_per_s"] - off["rest_of_process_ms_per_s"], 2
        ),
        "stream_mbit_s": round(statistics.mean(on["stream_mbit_s"]), 2),
        "disk_mb_per_s": on["folder_mb_per_s"],
        "queue_bound_mb": on["queue_bound_mb"],
        "rss_growth_mb_per_recorder": round((on["rss_mb"] - off["rss_mb"]) / streams, 1),
        "rss_drift_mb": on["rss_drift_mb"],
        "kept_up": off["kept_up"] and on["kept_up"],
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    camera = Camera(args)
    result = {
        "camera": f"{args.width}x{args.height}@{args.fps} H.264 (x264 ultrafast, target {args.bitrate} kbit/s, "
        f"keyframe every second, pattern {args.pattern})",
        "segment_s": args.segment_s,
        "queue_s": args.queue_s,
        "runs": {},
        "per_stream": [],
    }
    print(f"camera {result['camera']} at {camera.url}", flush=True)
    context = multiprocessing.get_context("spawn")
    try:
        for streams in args.streams:
            runs = {}
            for record in (False, True):
                label = f"{streams} stream(s), recording {'on' if record else 'off'}"
                print(f"{label}: {args.warmup:g} s warm-up, {args.seconds:g} s measured", flush=True)
                with tempfile.TemporaryDirectory(prefix="record-cost-", dir=args.dir) as folder:
                    # A fresh process per run: the resident sets of `off` and `on` compare.
                    with ProcessPoolExecutor(1, mp_context=context) as child:
                        runs[record] = child.submit(run, camera.url, camera.proc.pid, streams, record, args, folder)
                        runs[record] = runs[record].result()
                print(f"  {json.dumps(runs[record])}", flush=True)
            result["runs"][streams] = {"off": runs[False], "on": runs[True]}
            per_stream = compare(runs[False], runs[True], streams)
            result["per_stream"].append(per_stream)
            print(summary_line(per_stream), flush=True)
    finally:
        camera.stop()
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def summary_line(p: dict) -> str:
    flag = "" if p["kept_up"] else "  (NOT KEPT UP: a reader fell behind or packets were dropped; busy machine?)"
    return (
        f"{p['streams']} stream(s), per stream: recorder {p['recorder_ms_per_s']} ms CPU/s of video, reader's "
        f"extra {p['reader_extra_ms_per_s_timed']} ms/s timed ({p['reader_extra_ms_per_s_by_difference']} by "
        f"difference), disk {p['disk_mb_per_s']} MB/s for a {p['stream_mbit_s']} Mbit/s stream, queue bound "
        f"{p['queue_bound_mb']} MB, RSS +{p['rss_growth_mb_per_recorder']} MB per recorder "
        f"(drift {p['rss_drift_mb']} MB){flag}"
    )


if __name__ == "__main__":
    sys.exit(main())
