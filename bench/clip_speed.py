"""Time to first byte and total time of a 60-s clip and a 10-min export, from recorded segments (issue 18).

The segments are made once: a moving pattern with grain, 1920x1080 at 30 fps, encoded with libx264
(preset ultrafast, 4 Mbit/s, a keyframe every 2 s, no B-frames: what an IP camera sends), then cut at
keyframes into ~10-s MP4 segments by the copying remux the tests use (tests/segment_files.py), in a
temporary folder, or in `--dir`, where they are kept and reused by the next run. Then `--repeats`
times each, `clip_chunks` (outputs/recordings/clips.py) of a `--clip-s` range starting in the middle
of a segment, and of an `--export-s` range, each read to its end as the HTTP route would send it:

- time to first byte: the call until its first chunk (the segments opened, the keyframe found, the
  MP4 header and first fragment muxed);
- total: the call until its last chunk; MB of MP4 and MB/s; CPU seconds of this process;
- memory: the peak resident set during the clip less the resident set before it (the peak is reset
  through /proc/self/clear_refs before each clip; the segments are made in a child process), against
  the clip's size: the clip is streamed, never held whole.

The segments are in the page cache after they were written (or read by the first repetition): these
are warm-cache figures; a cold disk adds its read time. Only this process runs the clips (one thread).

    PYTHONPATH=rt-detr-service .venv/bin/python bench/clip_speed.py --dir /var/tmp/clip-bench \
        --out test-artifacts/clip_speed.json
    PYTHONPATH=rt-detr-service .venv/bin/python bench/clip_speed.py --width 320 --height 240 \
        --clip-s 6 --export-s 20 --segment-s 4 --repeats 1  # a quick check that it runs

JSON in --out, a summary on stdout.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(1, str(ROOT / "tests"))
sys.path.insert(2, str(ROOT / "rt-detr-service"))

from rtdetr_service.outputs.recordings.clips import SegmentFile, clip_chunks  # noqa: E402

from segment_files import T0, encode_to, write_segments  # noqa: E402

MANIFEST = "segments.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--bitrate", type=int, default=4_000_000, help="bits per second of the recording")
    parser.add_argument("--keyint-s", type=float, default=2.0, help="seconds between keyframes")
    parser.add_argument("--segment-s", type=float, default=10.0)
    parser.add_argument("--clip-s", type=float, default=60.0)
    parser.add_argument("--export-s", type=float, default=600.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chunk-kb", type=int, default=256, help="chunk_bytes of clip_chunks, in KiB")
    parser.add_argument("--dir", type=Path, help="keep the segments here and reuse them (default: a temporary folder)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    return parser.parse_args(argv)


def recording(args: argparse.Namespace, folder: Path) -> list[SegmentFile]:
    """The segments in `folder`, made now unless a manifest of the same recording is there."""
    wanted = {
        "width": args.width,
        "height": args.height,
        "fps": args.fps,
        "bitrate": args.bitrate,
        "keyint_s": args.keyint_s,
        "segment_s": args.segment_s,
        "seconds": max(args.clip_s, args.export_s) + 2 * args.segment_s,
    }
    manifest = folder / MANIFEST
    if manifest.exists():
        saved = json.loads(manifest.read_text())
        if saved["recording"] == wanted:
            print(f"reusing the segments in {folder}", flush=True)
            return [SegmentFile(Path(p), s, e) for p, s, e in saved["segments"]]
    print(f"making {wanted['seconds']:.0f} s of {args.width}x{args.height}@{args.fps} in {folder}", flush=True)
    began = time.perf_counter()
    source = folder / "source.mp4"
    encode_to(
        source,
        "libx264",
        width=args.width,
        height=args.height,
        fps=args.fps,
        seconds=wanted["seconds"],
        keyint=round(args.keyint_s * args.fps),
        preset="ultrafast",
        bit_rate=args.bitrate,
        noise=12,
    )
    segments = write_segments(source, folder / "segments", segment_s=args.segment_s)
    source.unlink()
    manifest.write_text(
        json.dumps({"recording": wanted, "segments": [[str(s.path), s.start_time, s.end_time] for s in segments]})
    )
    print(f"  {len(segments)} segments in {time.perf_counter() - began:.0f} s", flush=True)
    return segments


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
        return True
    except OSError:
        return False


def one_clip(segments: list[SegmentFile], start: float, end: float, chunk_bytes: int) -> dict:
    """One clip read to its end: time to first byte, total time, size, CPU and memory."""
    peak_known = _reset_peak()
    rss_before = _status_kb("VmRSS")
    cpu0, t0 = time.process_time(), time.perf_counter()
    clip = clip_chunks(segments, start, end, chunk_bytes=chunk_bytes)
    size, first = 0, None
    for chunk in clip:
        if first is None:
            first = time.perf_counter() - t0
        size += len(chunk)
    total = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    return {
        "first_byte_ms": round(first * 1000, 1),
        "total_s": round(total, 3),
        "mb": round(size / 1e6, 1),
        "mb_per_s": round(size / 1e6 / total, 1),
        "cpu_s": round(cpu, 3),
        "peak_rss_growth_mb": round((_status_kb("VmHWM") - rss_before) / 1024, 1) if peak_known else None,
    }


def summary(runs: list[dict]) -> dict:
    """Median and worst of the repetitions."""
    out = {"runs": runs}
    for key in ("first_byte_ms", "total_s", "mb_per_s", "cpu_s", "peak_rss_growth_mb"):
        values = [r[key] for r in runs if r[key] is not None]
        if values:
            out[key] = {"median": round(statistics.median(values), 3), "max": max(values), "min": min(values)}
    out["mb"] = runs[0]["mb"]
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="clip-bench-") as scratch:
        folder = args.dir or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        # Made in a child process, so that the encoder's memory does not hide the clips' in this one.
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
            segments = child.submit(recording, args, folder).result()
        middle = T0 + args.segment_s / 2 + 0.3  # between two keyframes: the clip starts at the one before
        ranges = {
            "clip": (middle, middle + args.clip_s),
            "export": (T0 + 0.5, T0 + 0.5 + args.export_s),
        }
        result = {
            "recording": f"{args.width}x{args.height}@{args.fps} H.264 {args.bitrate / 1e6:g} Mbit/s, "
            f"keyframe every {args.keyint_s:g} s, {args.segment_s:g}-s segments ({len(segments)})",
            "chunk_kb": args.chunk_kb,
            "repeats": args.repeats,
        }
        for name, (start, end) in ranges.items():
            runs = [one_clip(segments, start, end, args.chunk_kb * 1024) for _ in range(args.repeats)]
            result[name] = {"seconds": end - start, **summary(runs)}
            figures = result[name]
            print(
                f"{name} ({end - start:.0f} s, {figures['mb']} MB): first byte "
                f"{figures['first_byte_ms']['median']} ms, total {figures['total_s']['median']} s "
                f"({figures['mb_per_s']['median']} MB/s), CPU {figures['cpu_s']['median']} s, "
                f"peak RSS +{figures.get('peak_rss_growth_mb', {}).get('median')} MB "
                f"(median of {args.repeats})",
                flush=True,
            )
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
