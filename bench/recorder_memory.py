"""Recorder memory check (issue 18): N real `Recorder`s, each fed from its own thread at 30 packets a
second with the packets of recorded 1080p30 H.264 segments (bench/clip_speed.py makes them under
/var/tmp/clip-bench), writing SQLite-indexed segments; prints seconds, RSS growth (MB) and segments
written, every 15 s.

    PYTHONPATH=rt-detr-service .venv/bin/python bench/recorder_memory.py --recorders 4 --seconds 120

2026-12-04, 2 cores, 4 recorders: before the fix the resident set grew 62 MB in 2 minutes (about
3 MB per segment written), with or without MALLOC_ARENA_MAX=2. The cause: each segment's stream was
made with `add_stream(codec)`, which gave it a libx264 encoder that PyAV opened when muxing started
(tens of MB of encoder buffers a segment, for packets that are only copied), freed on the recorder's
thread; glibc's heaps kept the pages. Streams are now copied from a template and never opened: the
same run stays within +2 MB for 4 minutes. A growth here again is a regression.
"""

from __future__ import annotations

import argparse
import glob
import tempfile
import threading
import time
import uuid
from pathlib import Path

import av

from rtdetr_service.core.types import VideoPacket, VideoTemplate
from rtdetr_service.outputs.recordings.index import RecordingIndex
from rtdetr_service.outputs.recordings.recorder import Recorder
from rtdetr_service.outputs.recordings.settings import RecordingSettings
from rtdetr_service.outputs.store import migrate
from rtdetr_service.outputs.store.schema import Database


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def packets(folder: str) -> tuple[VideoTemplate, list[tuple]]:
    """The template and (data, pts, dts, keyframe, time_base) of the first three segments there."""
    files = sorted(glob.glob(f"{folder}/**/*.mp4", recursive=True))[:3]
    if not files:
        raise SystemExit(f"no segments under {folder}: run bench/clip_speed.py --dir {folder} first")
    template, found = None, []
    for name in files:
        with av.open(name) as container:
            stream = container.streams.video[0]
            if template is None:
                cc = stream.codec_context
                template = VideoTemplate(
                    codec=cc.name,
                    width=cc.width,
                    height=cc.height,
                    time_base=stream.time_base,
                    average_rate=stream.average_rate,
                    extradata=bytes(cc.extradata or b""),
                )
            for packet in container.demux(stream):
                if packet.size:
                    found.append((bytes(packet), packet.pts, packet.dts, packet.is_keyframe, stream.time_base))
    return template, found


def feed(recorder: Recorder, source: list[tuple]) -> None:
    offset = 0
    while True:
        for data, pts, dts, keyframe, time_base in source:
            recorder.on_packet(VideoPacket(data, pts + offset, dts + offset, time_base, keyframe, time.time()))
            time.sleep(1 / 30)
        offset += source[-1][1] + 3000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recorders", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--segments", default="/var/tmp/clip-bench")
    args = parser.parse_args()
    template, source = packets(args.segments)
    folder = Path(tempfile.mkdtemp(prefix="recorder-memory-", dir="/var/tmp"))
    db = Database(None, folder, 5.0)
    migrate.upgrade(db)
    index = RecordingIndex(db, folder)
    settings = RecordingSettings(record="continuous", record_segment_s=10, record_segment_max_s=30, record_queue_s=5)
    recorders = [
        Recorder(str(uuid.uuid4()), f"c{i}", mode="continuous", settings=settings, data_dir=folder, index=index)
        for i in range(args.recorders)
    ]
    for recorder in recorders:
        recorder.start()
        recorder.on_connect(template)
        threading.Thread(target=feed, args=(recorder, source), daemon=True).start()
    began, base = time.time(), rss_mb()
    while time.time() - began < args.seconds:
        time.sleep(15)
        written = sum(r.segments for r in recorders)
        print(f"{time.time() - began:5.0f} s  RSS +{rss_mb() - base:6.1f} MB  {written} segments", flush=True)


if __name__ == "__main__":
    main()
