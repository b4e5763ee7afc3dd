"""Pipeline benchmark: the real service against the spec's thread-per-session baseline, in one run.

For each stream count it runs N sessions of a 30 fps H.264 clip (paced at its frame rate and
looped by the service's own StreamReader as bench/file_camera.py, like `ffmpeg -re -stream_loop -1`), with one real
WebSocket viewer per session in a separate process, and measures per stream the frame_result
rate that reaches the viewer, and per frame the latency from decode to arrival at the viewer
(`receive wall time - timestamp`). A stream sustains full rate at >= 95 % of the source fps
with its reader on schedule. Then the baseline (bench/baseline.py) runs the same sweep.

    PYTHONPATH=rt-detr-service python bench/bench_pipeline.py                 # full sweep, default r18vd
    PYTHONPATH=rt-detr-service python bench/bench_pipeline.py --soak 600      # + 10-minute memory soak
    PYTHONPATH=rt-detr-service python bench/bench_pipeline.py --device cpu --model tiny --width 320 \\
        --height 240 --input-size 320 --cpu-threads 1 --streams 1,2 --keep-going --warmup 4 --duration 10   # CPU smoke

See docs/benchmarks.md for what the numbers mean and the targets they are judged against.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(1, str(ROOT / "rt-detr-service"))

from clip import cached_clip, clip_info  # noqa: E402
from measure import FULL_RATE, bounded, memory_flat, percentiles_ms, rss_mb, thirds  # noqa: E402

log = logging.getLogger("bench")

READER_ON_TIME = 0.98  # decoded fps / source fps below this means the reader fell behind its clock
TARGETS = {"streams": 16, "ratio": 8.0, "p99_ms": 100.0, "mb_per_stream": 100.0}
API_KEY = "bench"


# -- inputs ---------------------------------------------------------------------------------


def prepare_model(spec: str, cache: Path) -> str:
    """A weights directory both sides load: `r18vd` / `tiny` are random-weight models saved once."""
    if spec == "r18vd":
        path = cache / "rtdetr_v2_r18vd_random"
        if not (path / "config.json").exists():
            from rtdetr_service.inference.random_weights import r18vd_config, random_weights_model

            random_weights_model(r18vd_config()).save_pretrained(path)
        return str(path)
    if spec == "tiny":
        path = cache / "tiny_rtdetr_v2"
        if not (path / "config.json").exists():
            sys.path.insert(0, str(ROOT / "tests"))
            from tiny_model import build

            build(path)
        return str(path)
    return spec


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- the service, in this process -----------------------------------------------------------


class Service:
    """The real app under uvicorn (configured as `python -m rtdetr_service` runs it) on a loop we own,
    so sessions can be started on it with a reader that serves a local file."""

    def __init__(self, settings) -> None:
        import uvicorn

        from rtdetr_service.__main__ import server_config
        from rtdetr_service.web.app import create_app

        self.settings = settings
        self.app = create_app(settings)
        # Served exactly as `python -m rtdetr_service` serves it (no WebSocket deflate, ...).
        self.config = server_config(self.app, settings, host="127.0.0.1", log_level="warning", access_log=False)
        self.server = uvicorn.Server(self.config)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="bench-uvicorn", daemon=True)
        self.base_url = f"http://127.0.0.1:{settings.port}"

    def _run(self) -> None:
        with asyncio.Runner(loop_factory=self.config.get_loop_factory()) as runner:
            self.loop = runner.get_loop()
            runner.run(self.server.serve())

    def start(self, timeout: float = 900.0) -> dict:
        """Start serving and wait for /ready (model loaded and warmed up; torch.compile can take minutes)."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._thread.is_alive():
                raise RuntimeError("the service exited during start-up (see the log above)")
            try:
                with urllib.request.urlopen(f"{self.base_url}/ready", timeout=2) as answer:
                    return json.load(answer)
            except OSError as exc:
                body = getattr(exc, "read", lambda: b"")()
                if b"Model failed" in body:
                    raise RuntimeError(body.decode()) from exc
            time.sleep(0.5)
        raise RuntimeError(f"service not ready after {timeout:.0f} s")

    def start_session(self, clip: str):
        """A session on the clip through the manager, as POST /start makes one, but with a paced, looping
        file reader (the HTTP route only accepts network URLs)."""
        from file_camera import FileCamera

        from rtdetr_service.sessions.session import SessionOptions

        options = SessionOptions(
            stream_url=clip, enable_drawing=True, confidence_threshold=0.5, alert_rule=None, jpeg_quality=75
        )
        future = asyncio.run_coroutine_threadsafe(
            self.app.state.manager.start(options, reader_factory=FileCamera), self.loop
        )
        return future.result(timeout=60)

    def stop_sessions(self) -> None:
        manager = self.app.state.manager
        for session in manager.list():
            manager.stop(session.id, "benchmark step done")
            session.join(self.settings.read_timeout_s + 1.0)

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(30)


# -- measuring our pipeline -----------------------------------------------------------------


def _viewers(service: Service, sessions, until: float, out: Path, compression: str, fmt: str, per_process: int = 8):
    """Viewer processes (at most `per_process` sessions each) that record every frame until `until`."""
    from rtdetr_service.web.routes.ws import viewer_path

    ws_base = service.base_url.replace("http://", "ws://")
    urls = [f"{ws_base}{viewer_path(s)}&format={fmt}" for s in sessions]
    procs = []
    for start in range(0, len(urls), per_process):
        chunk = urls[start : start + per_process]
        path = out.with_name(f"{out.stem}-{start}.npz")
        args = [
            sys.executable,
            str(BENCH / "viewers.py"),
            "--out",
            str(path),
            "--seconds",
            f"{until - time.time():.3f}",
            "--compression",
            compression,
            *chunk,
        ]
        procs.append((subprocess.Popen(args), path, len(chunk)))
    return procs


def _collect(procs) -> tuple[list[tuple[np.ndarray, np.ndarray, np.ndarray]], list[str]]:
    """Per stream (receive times, decode timestamps, frame indices), and the negotiated WS extensions."""
    streams, extensions = [], []
    for proc, path, count in procs:
        try:
            code = proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        if code != 0:
            print(f"warning: a viewer process exited with {code}; its streams count as lost frames", file=sys.stderr)
        try:
            data = np.load(path)
            data.files  # noqa: B018 - a viewer killed while writing leaves a truncated archive
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):
            print(f"warning: {path.name} missing: {count} streams count as receiving nothing", file=sys.stderr)
            empty = np.zeros(0)
            streams += [(empty, empty, empty)] * count
            extensions += [""] * count
            continue
        streams += [(data[f"r{i}"], data[f"t{i}"], data[f"f{i}"]) for i in range(count)]
        extensions += [str(data[f"x{i}"]) for i in range(count)]
        path.unlink()
    return streams, extensions


def _stages(session, hub) -> dict:
    sent, skipped = hub.delivery(session.id)
    return {
        "inferred": session.frames_inferred,
        "published": session.frames_published,
        "sent": sent,
        "skipped": skipped,
    }


def _sample_rss(until: float, every: float, samples: list) -> None:
    while time.time() < until:
        samples.append((time.time(), rss_mb()))
        time.sleep(min(every, max(0.0, until - time.time())))


@dataclass(frozen=True)
class Feed:
    """What every measured run of our side shares: the clip and its rate, and the viewers (where
    they write, what they offer and ask for)."""

    clip: str
    src_fps: float
    workdir: Path
    compression: str
    fmt: str

    def viewers(self, service: Service, sessions, until: float, name: str):
        return _viewers(service, sessions, until, self.workdir / name, self.compression, self.fmt)


def run_ours(service: Service, feed: Feed, streams: int, warmup: float, seconds: float, rss_every: float = 1.0) -> dict:
    """N sessions with one viewer each: fps per stream and decode → viewer latency over the window."""
    src_fps = feed.src_fps
    sessions = [service.start_session(feed.clip) for _ in range(streams)]
    try:
        window_start = time.time() + warmup
        window_end = window_start + seconds
        procs = feed.viewers(service, sessions, window_end + 0.5, f"ours-{streams}.npz")
        time.sleep(max(0.0, window_start - time.time()))
        worker = service.app.state.manager.worker
        hub = service.app.state.hub
        decoded_start = [(s.frames_decoded, time.monotonic()) for s in sessions]
        stages_start = [_stages(s, hub) for s in sessions]
        inferred_start, batches_start = sum(s.frames_inferred for s in sessions), worker.batches
        samples: list[tuple[float, float]] = []
        _sample_rss(window_end, rss_every, samples)
        decoded_end = [(s.frames_decoded, time.monotonic()) for s in sessions]
        stages_end = [_stages(s, hub) for s in sessions]
        inferred = sum(s.frames_inferred for s in sessions) - inferred_start
        batches = worker.batches - batches_start
        server_stats = [s.snapshot().stats.as_dict() for s in sessions]
        states = [s.state.value for s in sessions]
        received, extensions = _collect(procs)
    finally:
        service.stop_sessions()
    per_stream, all_times, all_latency = [], [], []
    for (recv, stamp, _), (d0, m0), (d1, m1), stats, state, st0, st1 in zip(
        received, decoded_start, decoded_end, server_stats, states, stages_start, stages_end, strict=False
    ):
        keep = (recv >= window_start) & (recv < window_end)
        latency = recv[keep] - stamp[keep]
        all_times.append(recv[keep])
        all_latency.append(latency)
        per_stream.append(
            {
                "fps": round(int(keep.sum()) / seconds, 2),
                "decoded_fps": round((d1 - d0) / (m1 - m0), 2),
                # Where frames go missing when a count fails: per second over the window, each
                # stage's output (inferred, published, sent on the socket) and the frames a
                # viewer's socket was too slow for (replaced in its slot before it was sent).
                **{f"{k}_fps": round((st1[k] - st0[k]) / (m1 - m0), 2) for k in ("inferred", "published", "sent")},
                "socket_skipped": st1["skipped"] - st0["skipped"],
                "latency_ms": percentiles_ms(latency),
                "server_latency_ms": stats["latency_ms"],
                "dropped_frames": stats["dropped_frames"],
                "state": state,
            }
        )
    times, latency = np.concatenate(all_times), np.concatenate(all_latency)
    windows = thirds(times, latency, window_start, window_end)
    fps = [s["fps"] for s in per_stream]
    decoded = [s["decoded_fps"] for s in per_stream]
    stage_names = ("decoded_fps", "inferred_fps", "published_fps", "sent_fps", "fps")
    stages = {k: min(s[k] for s in per_stream) for k in stage_names}
    sustained = (
        min(fps) >= FULL_RATE * src_fps
        and min(decoded) >= READER_ON_TIME * src_fps
        and all(s["state"] == "running" for s in per_stream)
        and bounded(windows) is not False  # the same rule as the baseline's: no growing backlog
    )
    return {
        "streams": streams,
        "fps_min": min(fps),
        "fps_mean": round(float(np.mean(fps)), 2),
        "decoded_fps_min": min(decoded),
        "sustained": bool(sustained),
        "latency_ms": percentiles_ms(latency),
        "latency_thirds_ms": windows,
        "latency_bounded": bounded(windows),
        "rss_mb": round(float(np.mean([mb for _, mb in samples])), 1),
        "per_stream": per_stream,
        "stages_fps_min": stages,
        "socket_skipped": sum(s["socket_skipped"] for s in per_stream),
        "inference_fps_total": round(inferred / seconds, 1),
        "mean_batch": round(inferred / batches, 2) if batches else None,
        "ws_extensions": sorted(set(extensions)),
    }


def soak_ours(service: Service, feed: Feed, streams: int, warmup: float, seconds: float) -> dict:
    """The best count for a long run: RSS every 10 s, latency per minute, memory flat or not."""
    src_fps = feed.src_fps
    sessions = [service.start_session(feed.clip) for _ in range(streams)]
    try:
        window_start = time.time() + warmup
        window_end = window_start + seconds
        procs = feed.viewers(service, sessions, window_end + 0.5, "soak.npz")
        samples: list[tuple[float, float]] = []
        _sample_rss(window_end, 10.0, samples)
        received, _ = _collect(procs)
    finally:
        service.stop_sessions()
    in_window = [(r >= window_start) & (r < window_end) for r, _, _ in received]
    times = np.concatenate([r[k] for (r, _, _), k in zip(received, in_window, strict=False)])
    latency = np.concatenate([(r - t)[k] for (r, t, _), k in zip(received, in_window, strict=False)])
    fps = [float(k.sum()) / seconds for k in in_window]
    minutes = []
    for lo in np.arange(window_start, window_end, 60.0):
        sel = (times >= lo) & (times < min(lo + 60.0, window_end))
        minutes.append(percentiles_ms(latency[sel])["p99"])
    memory = memory_flat(samples, window_start, window_end)
    windows = thirds(times, latency, window_start, window_end)
    return {
        "streams": streams,
        "seconds": seconds,
        "fps_min": round(min(fps), 2),
        "sustained": bool(min(fps) >= FULL_RATE * src_fps),
        "latency_ms": percentiles_ms(latency),
        "latency_thirds_ms": windows,
        "p99_per_minute_ms": minutes,
        "latency_bounded": bounded(windows),
        "memory": memory,
        "rss_samples": [(round(t - window_start, 1), round(mb, 1)) for t, mb in samples],
    }


def _memory_per_stream(counts: list[dict], idle_mb: float) -> dict:
    """Host memory per added stream: least-squares slope of RSS over the measured stream counts.

    The idle point is left out of the slope: the first session also pays one-off costs (allocator
    pools, the first frames of a new size, encoder set-up) that the next ones do not."""
    points = [(c["streams"], c["rss_mb"]) for c in counts if c.get("rss_mb") is not None]
    first = round(points[0][1] - idle_mb, 1) if points else None
    if len(points) < 2:
        return {"mb_per_added_stream": None, "first_count_over_idle_mb": first}
    x, y = np.array(points, np.float64).T
    return {"mb_per_added_stream": round(float(np.polyfit(x, y, 1)[0]), 1), "first_count_over_idle_mb": first}


def sweep_ours(args, clip: str, model_dir: str, src_fps: float, workdir: Path, progress=lambda results: None) -> dict:
    """The sweep (and the soak) of our side; `progress(results)` is called whenever a result is
    added, so that a run cut short by a time limit still leaves what it measured."""
    from rtdetr_service.web.settings import Settings

    counts = [] if args.soak_only else args.stream_counts
    settings = Settings(
        _env_file=None,
        api_keys=API_KEY,
        model=model_dir,
        device=args.device,
        compile=args.compile,
        backend=args.backend,
        input_size=args.input_size,
        max_sessions=max(*counts, args.soak_streams or 0, 1),
        max_batch=args.max_batch,
        batch_wait_ms=args.batch_wait_ms,
        cpu_threads=args.cpu_threads,
        port=free_port(),
        log_level="warning",
        # The event store runs as deployed, on a database of the run's own.
        data_dir=workdir / "data",
    )
    feed = Feed(clip, src_fps, workdir, args.viewer_compression, args.viewer_format)
    service = Service(settings)
    ready = service.start()
    time.sleep(1.0)
    idle_mb = rss_mb()
    results: dict = {"ready": ready, "idle_rss_mb": round(idle_mb, 1), "counts": []}
    try:
        for streams in counts:
            result = run_ours(service, feed, streams, args.warmup, args.duration)
            if not result["sustained"]:
                stages = " -> ".join(f"{k.removesuffix('_fps')} {v}" for k, v in result["stages_fps_min"].items())
                print(f"ours     {streams:>3} streams: fps per stage (slowest stream): {stages}", flush=True)
                # One hiccup must not end a one-shot sweep: a count fails only if it fails twice.
                print(f"ours     {streams:>3} streams: not sustained ({result['fps_min']} fps min); again", flush=True)
                first, result = result, run_ours(service, feed, streams, args.warmup, args.duration)
                result["first_attempt"] = {k: first[k] for k in ("fps_min", "decoded_fps_min", "latency_ms")}
            results["counts"].append(result)
            progress(results)
            lat = result["latency_ms"]
            print(
                f"ours     {streams:>3} streams: {result['fps_min']:.1f} fps/stream (min), p50 {lat['p50']} ms, "
                f"p99 {lat['p99']} ms, RSS {result['rss_mb']:.0f} MB, sustained={result['sustained']}",
                flush=True,
            )
            if not result["sustained"] and not args.keep_going:
                break
        results.update(_memory_per_stream(results["counts"], idle_mb))
        best = max((c["streams"] for c in results["counts"] if c["sustained"]), default=0)
        soak_streams = args.soak_streams or best
        if args.soak and soak_streams:
            print(f"soak: {soak_streams} streams for {args.soak:.0f} s ...", flush=True)
            results["soak"] = soak_ours(service, feed, soak_streams, args.soak_warmup, args.soak)
            progress(results)
    finally:
        service.stop()
    return results


# -- the baseline, in its own process --------------------------------------------------------


def sweep_baseline(args, clip: str, model_dir: str, workdir: Path) -> dict:
    out = workdir / "baseline.json"
    command = [
        sys.executable,
        str(BENCH / "baseline.py"),
        "--clip",
        clip,
        "--model",
        model_dir,
        "--device",
        args.device,
        "--streams",
        ",".join(map(str, args.stream_counts)),
        "--warmup",
        str(args.warmup),
        "--duration",
        str(args.duration),
        "--input-size",
        str(args.input_size),
        "--cpu-threads",
        str(args.cpu_threads),
        "--out",
        str(out),
    ]
    if args.keep_going:
        command.append("--keep-going")
    code = subprocess.run(command).returncode
    # baseline.py rewrites its file after every count: a crash keeps what it measured.
    results = json.loads(out.read_text()) if out.exists() else {"counts": []}
    if code != 0:
        results["error"] = f"baseline.py exited with {code} (its output above says why)"
        print(f"warning: {results['error']}", file=sys.stderr)
    return results


# -- report ---------------------------------------------------------------------------------


def _best(side: dict | None) -> int:
    if not side:
        return 0
    return max((c["streams"] for c in side["counts"] if c["sustained"]), default=0)


def print_table(title: str, side: dict | None, src_fps: float) -> None:
    if not side:
        return
    print(f"\n{title}")
    print(
        f"{'streams':>7} {'fps/stream min':>14} {'mean':>6} {'sustained':>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'p99 1st/3rd third':>18} {'RSS MB':>7}"
    )
    for c in side["counts"]:
        lat, th = c["latency_ms"], c["latency_thirds_ms"]
        rss = f"{c['rss_mb']:.0f}" if c.get("rss_mb") is not None else "-"
        print(
            f"{c['streams']:>7} {c['fps_min']:>14.1f} {c['fps_mean']:>6.1f} {'yes' if c['sustained'] else 'NO':>9} "
            f"{lat['p50']!s:>8} {lat['p99']!s:>8} {(str(th[0]['p99']) + ' / ' + str(th[-1]['p99'])):>18} {rss:>7}"
        )
    print(f"full rate = >= {FULL_RATE * src_fps:.1f} fps per stream on every stream")


def verdict(results: dict) -> list[tuple[str, str, str]]:
    """(target, measured, PASS/FAIL/not measured) rows."""
    ours, base = results.get("ours"), results.get("baseline")
    rows = []
    ours_best, base_best = _best(ours), _best(base)
    src_fps = results["environment"]["clip"]["fps"]
    if ours and results["environment"]["device"] == "cuda":
        ready = ours.get("ready") or {}
        dtype, jpeg = (ready.get("model") or {}).get("dtype"), ready.get("jpeg_encoder")
        rows.append(
            (
                "the service ran as deployed: fp16 and nvJPEG",
                f"{dtype}, {jpeg}",
                "PASS" if (dtype, jpeg) == ("float16", "nvjpeg") else "FAIL (figures are not the deployed set-up)",
            )
        )
    if ours and not ours.get("counts"):
        ours_sweep = None  # a soak-only run: no sweep rows
    else:
        ours_sweep = ours
    if ours_sweep:
        rows.append(
            (
                f">= {TARGETS['streams']} streams at full rate",
                f"{ours_best}",
                "PASS" if ours_best >= TARGETS["streams"] else "FAIL",
            )
        )
    if ours_sweep and base and base.get("counts"):
        ratio = ours_best / base_best if base_best else float("inf") if ours_best else 0.0
        rows.append(
            (
                f">= {TARGETS['ratio']:g}x the baseline's count",
                f"{ours_best} vs {base_best} ({ratio:.1f}x)",
                "PASS" if ratio >= TARGETS["ratio"] else "FAIL",
            )
        )
        # The count ratio is infinite whenever the baseline sustains no stream at all; frames
        # delivered per second say how far apart the two really are.
        base_fps = max(c["fps_mean"] * c["streams"] for c in base["counts"])
        ours_fps = ours_best * src_fps
        times = f" ({ours_fps / base_fps:.1f}x)" if base_fps else ""
        rows.append(
            (
                "frames/s delivered at full rate, ours vs the baseline's most (informational)",
                f"{ours_fps:.0f} vs {base_fps:.0f}{times}",
                "-",
            )
        )
    if ours_sweep:
        at = next((c for c in ours["counts"] if c["streams"] == ours_best), None)
        p99 = at["latency_ms"]["p99"] if at else None
        rows.append(
            (
                f"p99 <= {TARGETS['p99_ms']:g} ms at that count",
                f"{p99} ms" if p99 is not None else "-",
                "not measured" if p99 is None else "PASS" if p99 <= TARGETS["p99_ms"] else "FAIL",
            )
        )
        at_target = next((c for c in ours["counts"] if c["streams"] == TARGETS["streams"]), None)
        if at_target and ours_best != TARGETS["streams"]:
            p99_target = at_target["latency_ms"]["p99"]
            rows.append(
                (
                    f"p99 <= {TARGETS['p99_ms']:g} ms at {TARGETS['streams']} streams",
                    f"{p99_target} ms",
                    "PASS" if p99_target is not None and p99_target <= TARGETS["p99_ms"] else "FAIL",
                )
            )
        mb = ours.get("mb_per_added_stream")
        rows.append(
            (
                f"<= {TARGETS['mb_per_stream']:g} MB host memory per added stream",
                f"{mb} MB" if mb is not None else f"first count +{ours.get('first_count_over_idle_mb')} MB over idle",
                "not measured (needs 2 counts)" if mb is None else "PASS" if mb <= TARGETS["mb_per_stream"] else "FAIL",
            )
        )
    if ours:
        soak = ours.get("soak")
        if soak:
            mem = soak["memory"]
            rows.append(
                (
                    f"memory flat over the {soak['seconds']:.0f} s soak ({soak['streams']} streams)",
                    f"{mem['first_mb']} -> {mem['last_mb']} MB, {mem['slope_mb_per_min']} MB/min",
                    "not measured (needs a soak of 3 minutes or more)"
                    if mem["flat"] is None
                    else "PASS"
                    if mem["flat"]
                    else "FAIL",
                )
            )
            rows.append(
                (
                    "p99 bounded over the soak",
                    f"p99 per minute {soak['p99_per_minute_ms']} ms",
                    "PASS" if soak["latency_bounded"] else "FAIL",
                )
            )
        else:
            rows.append(("memory flat over a 10-minute run", "-", "not measured (use --soak 600)"))
        one = next((c for c in ours.get("counts", []) if c["streams"] == 1), None)
        if one:
            th = one["latency_thirds_ms"]
            rows.append(
                (
                    "1 stream: latency bounded (no growing backlog)",
                    f"p99 by thirds {th[0]['p99']} / {th[1]['p99']} / {th[2]['p99']} ms",
                    "PASS" if one["latency_bounded"] else "FAIL",
                )
            )
    return rows


def print_verdict(results: dict) -> None:
    env = results["environment"]
    print("\nVerdict against the targets")
    if not env["target_setup"]:
        print(
            "  (informational: the targets are for CUDA + RT-DETRv2-S r18vd fp16 + 1920x1080 at 30 fps; "
            f"this run is {env['device']} / {env['model']} / {env['clip']['width']}x{env['clip']['height']} "
            f"at {env['clip']['fps']:g} fps)"
        )
    for target, measured, outcome in verdict(results):
        print(f"  {target:<52} {measured:<48} {outcome}")


# -- main -----------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", default="1,2,4,8,12,16,24,32", help="stream counts to sweep, in order")
    p.add_argument("--keep-going", action="store_true", help="do not stop a sweep at the first count that fails")
    p.add_argument("--warmup", type=float, default=10.0, help="seconds ignored after sessions start")
    p.add_argument("--duration", type=float, default=30.0, help="measured seconds per stream count")
    p.add_argument("--soak", type=float, default=0.0, help="then run the best count this long (e.g. 600)")
    p.add_argument("--soak-streams", type=int, default=0, help="stream count for the soak (default: the best)")
    p.add_argument("--soak-warmup", type=float, default=30.0, help="seconds ignored before the soak's first minute")
    p.add_argument(
        "--soak-only", action="store_true", help="no sweep: only the soak, at --soak-streams (our side only)"
    )
    p.add_argument("--only", choices=("both", "ours", "baseline"), default="both")
    p.add_argument("--clip", help="use this video file instead of the synthetic clip")
    p.add_argument("--width", type=int, default=1920)
    p.add_argument("--height", type=int, default=1080)
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--clip-seconds", type=float, default=20.0)
    p.add_argument(
        "--model",
        default="r18vd",
        help="r18vd (random-weight RT-DETRv2-S, default), tiny (test model), or a weights dir / hub id",
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--compile", action="store_true", help="Settings.compile: torch.compile the service's model")
    p.add_argument(
        "--backend",
        choices=("torch", "auto", "openvino", "onnxruntime", "tensorrt"),
        default="torch",
        help="Settings.backend of our side (torch: the reference; auto: what the service would pick)",
    )
    p.add_argument("--input-size", type=int, default=640)
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--batch-wait-ms", type=float, default=2.0)
    p.add_argument("--cpu-threads", type=int, default=0, help="torch CPU threads on both sides (0 = default)")
    p.add_argument(
        "--viewer-compression",
        choices=("deflate", "none"),
        default="deflate",
        help="permessage-deflate offer of the viewers (browsers offer it)",
    )
    p.add_argument(
        "--viewer-format",
        choices=("json", "binary"),
        default="json",
        help="what the viewers ask for: the spec's JSON with a base64 JPEG (default), or the page's binary frames",
    )
    p.add_argument("--cache", type=Path, default=BENCH / ".cache", help="clip and model cache")
    p.add_argument("--json", type=Path, help="write every result here")
    args = p.parse_args(argv)
    args.stream_counts = [int(c) for c in args.streams.split(",") if c.strip()]
    if not args.stream_counts or min(args.stream_counts) < 1:
        p.error("--streams needs positive counts, e.g. 1,2,4")
    if args.soak_only and (not args.soak or not args.soak_streams or args.only != "ours"):
        p.error("--soak-only needs --soak SECONDS, --soak-streams N and --only ours")
    return args


def environment(args, clip: dict, model_dir: str) -> dict:
    import torch

    cuda = torch.cuda.is_available() and args.device != "cpu"
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host_cpus": os.cpu_count(),
        "device": "cuda" if cuda else "cpu",
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "torch": torch.__version__,
        "model": args.model,
        "model_dir": model_dir,
        "compile": args.compile,
        "input_size": args.input_size,
        "clip": clip,
        "target_setup": bool(
            cuda
            and args.model == "r18vd"
            and (clip["width"], clip["height"]) == (1920, 1080)
            and round(clip["fps"]) == 30
        ),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    args.cache.mkdir(parents=True, exist_ok=True)
    clip_path = (
        Path(args.clip)
        if args.clip
        else cached_clip(args.cache, width=args.width, height=args.height, fps=args.fps, seconds=args.clip_seconds)
    )
    clip = clip_info(clip_path)
    model_dir = prepare_model(args.model, args.cache)
    results = {
        "environment": environment(args, clip, model_dir),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    print(
        f"clip {clip['width']}x{clip['height']} {clip['codec']} {clip['fps']:g} fps, {clip['bitrate_kbps']} kb/s; "
        f"model {args.model}; device {results['environment']['device']} {results['environment']['gpu'] or ''}",
        flush=True,
    )

    def save() -> None:
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            partial = args.json.with_name(args.json.name + ".partial")
            partial.write_text(json.dumps(results, indent=2))
            partial.replace(args.json)

    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        workdir = Path(tmp)
        if args.only in ("both", "ours"):

            def progress(ours: dict) -> None:
                results["ours"] = ours
                save()

            results["ours"] = sweep_ours(args, str(clip_path.resolve()), model_dir, clip["fps"], workdir, progress)
            save()
        if args.only in ("both", "baseline"):
            results["baseline"] = sweep_baseline(args, str(clip_path.resolve()), model_dir, workdir)
            save()
    print_table("Our pipeline (batched service, latency decode -> WebSocket viewer)", results.get("ours"), clip["fps"])
    if results.get("ours"):
        ours = results["ours"]
        last = ours["counts"][-1] if ours["counts"] else {}
        print(
            f"idle RSS {ours['idle_rss_mb']} MB (first count +{ours.get('first_count_over_idle_mb')} MB); "
            f"{ours.get('mb_per_added_stream')} MB per added stream; "
            f"at {last.get('streams')} streams: {last.get('inference_fps_total')} frames/s inferred, "
            f"mean batch {last.get('mean_batch')}; viewer WebSocket extensions: {last.get('ws_extensions') or 'none'}"
        )
        soak = results["ours"].get("soak")
        if soak:
            print(
                f"soak {soak['streams']} streams x {soak['seconds']:.0f} s: fps min {soak['fps_min']}, "
                f"p99 {soak['latency_ms']['p99']} ms, p99 per minute {soak['p99_per_minute_ms']}, "
                f"RSS {soak['memory']['first_mb']} -> {soak['memory']['last_mb']} MB (flat={soak['memory']['flat']})"
            )
    print_table(
        "Baseline (thread per session, batch 1, latency camera delivery -> JSON ready)",
        results.get("baseline"),
        clip["fps"],
    )
    results["verdict"] = [{"target": t, "measured": m, "outcome": o} for t, m, o in verdict(results)]
    print_verdict(results)
    save()
    if args.json:
        print(f"\nresults written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
