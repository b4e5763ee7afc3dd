"""CPU backends through the real pipeline, side by side in one run, on the same clip and settings.

Ours (the service, one session fed by a paced 30 fps clip, one WebSocket viewer) with BACKEND=torch,
openvino (the default CPU_PRECISION=auto: bf16 where the CPU has it), openvino-fp32 and onnxruntime,
each with the service's default threads unless --cpu-threads; then the spec-style baseline
(bench/baseline.py), then ultralytics `RTDETR(pt).predict` as a user would write it, on an RT-DETR
`.pt` found on disk or else ultralytics' own rtdetr-l architecture with random weights (built from
its bundled yaml, nothing downloaded; a larger network than r18vd: the GFLOP per frame of each
network are printed and stored, so the sides compare per unit of work). Per side: frames/s inferred and
delivered, p50/p99 latency; one JSON, a table, the OpenVINO / torch frames/s ratios (target >= 3x
for the service's default) and a PNG plot.

    PYTHONPATH=rt-detr-service .venv/bin/python bench/bench_cpu.py            # what `make bench-cpu` runs
    PYTHONPATH=rt-detr-service .venv/bin/python bench/bench_cpu.py --warmup 5 --duration 10 --sides torch,openvino

Model: RT-DETRv2-S (r18vd) with conditioned random weights (as the service's fallback builds it: the
speed of a trained model), saved once so every side loads the same weights. Each side runs in a
fresh process, one after the other, so no backend's thread pool competes with another's.
Ours is measured with bench/bench_pipeline.py's own service, feed and `run_ours` (latency decode ->
viewer), once per side: that script measures a count that misses full rate twice, which on two
cores doubles the run for no new figure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(1, str(ROOT / "rt-detr-service"))

from clip import cached_clip, clip_info  # noqa: E402
from measure import percentiles_ms  # noqa: E402

# Our sides: name -> (BACKEND, CPU_PRECISION). "openvino" is what BACKEND=auto runs on a CPU with the
# default CPU_PRECISION=auto (bf16 where the CPU has it); "openvino-fp32" is the setting that keeps parity with torch.
OURS = {
    "torch": ("torch", "fp32"),
    "openvino": ("openvino", "auto"),
    "openvino-fp32": ("openvino", "fp32"),
    "onnxruntime": ("onnxruntime", "fp32"),
}
SIDES = (*OURS, "baseline", "ultralytics")
TARGET_RATIO = 3.0  # OpenVINO frames/s over torch eager's, same machine, same run


# -- inputs ---------------------------------------------------------------------------------


def conditioned_model(cache: Path) -> Path:
    """r18vd with conditioned random weights, saved once (the fallback's model, loadable by every side)."""
    path = cache / "rtdetr_v2_r18vd_conditioned"
    if not (path / "config.json").exists():
        from rtdetr_service.inference.random_weights import condition_random_weights, r18vd_config, random_weights_model

        condition_random_weights(random_weights_model(r18vd_config()).eval()).save_pretrained(path)
    return path


def random_ultralytics_pt(cache: Path) -> Path:
    """ultralytics' own rtdetr-l architecture (its bundled rtdetr-l.yaml) with random weights, saved
    once as a checkpoint: what `predict` costs, offline. ultralytics has no r18vd-sized RT-DETR."""
    path = cache / "rtdetr-l-random.pt"
    if not path.exists():
        os.environ.setdefault("YOLO_OFFLINE", "1")
        from ultralytics import RTDETR

        RTDETR("rtdetr-l.yaml").save(str(path))
    return path


def gflop_per_frame(forward, input_size: int) -> float:
    """2 x multiply-adds of `forward(pixels)` on one input_size^2 frame (torch.utils.flop_counter)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    pixels = torch.rand(1, 3, input_size, input_size)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        forward(pixels)
    return round(counter.get_total_flops() / 1e9, 1)


def model_gflop(model_dir: Path, ultralytics_pt: Path | None, input_size: int) -> dict:
    """GFLOP per frame of each network the sides run, so that sides of different models compare."""
    from transformers import AutoModelForObjectDetection

    detr = AutoModelForObjectDetection.from_pretrained(model_dir).eval()
    out = {"r18vd": gflop_per_frame(lambda x: detr(pixel_values=x), input_size)}
    if ultralytics_pt:
        from ultralytics import RTDETR

        network = RTDETR(str(ultralytics_pt)).model.eval()
        out[ultralytics_pt.name] = gflop_per_frame(network, input_size)
    return out


def find_ultralytics_pt(given: Path | None) -> tuple[Path | None, str]:
    """An RT-DETR checkpoint on disk, and where it was looked for: nothing is downloaded."""
    if given:
        return (given, f"--ultralytics-pt {given}") if given.is_file() else (None, f"{given} does not exist")
    places = [ROOT / "models", ROOT / "weights", Path.cwd()]
    try:
        from ultralytics.utils import SETTINGS

        places.append(Path(SETTINGS["weights_dir"]))
    except Exception:  # noqa: BLE001 - only one more place to look
        pass
    for place in places:
        for candidate in sorted(place.glob("rtdetr*.pt")) if place.is_dir() else []:
            return candidate, str(candidate)
    shown = ("." if p == ROOT else str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p) for p in places)
    return None, "no rtdetr*.pt in " + ", ".join(dict.fromkeys(shown)) + " (paths from the repository root)"


# -- one side, in its own process -----------------------------------------------------------


def child_ours(args) -> dict:
    """The real service with the side's BACKEND and CPU_PRECISION, one session, one viewer, one measured window."""
    import bench_pipeline as pipeline

    from rtdetr_service.web.settings import Settings

    with tempfile.TemporaryDirectory(prefix="bench-cpu-") as tmp:
        workdir = Path(tmp)
        # As bench_pipeline.sweep_ours configures it, for one session on the CPU.
        settings = Settings(
            _env_file=None,
            api_keys=pipeline.API_KEY,
            model=str(args.model_dir),
            device="cpu",
            backend=OURS[args.child][0],
            cpu_precision=OURS[args.child][1],
            input_size=args.input_size,
            max_sessions=1,
            cpu_threads=args.cpu_threads,
            port=pipeline.free_port(),
            log_level="warning",
            data_dir=workdir / "data",
        )
        clip = clip_info(args.clip)
        feed = pipeline.Feed(str(args.clip), clip["fps"], workdir, "deflate", "json")
        service = pipeline.Service(settings)
        started = time.monotonic()
        ready = service.start()
        startup_s = time.monotonic() - started
        try:
            result = pipeline.run_ours(service, feed, 1, args.warmup, args.duration)
        finally:
            service.stop()
    model = ready.get("model") or {}
    return {
        "side": f"ours {args.child}",
        "backend": model.get("backend"),
        "dtype": model.get("dtype"),
        "cpu_threads": model.get("cpu_threads"),
        "startup_s": round(startup_s, 1),
        "inferred_fps": result["inference_fps_total"],
        "delivered_fps": result["fps_mean"],
        "decoded_fps": result["decoded_fps_min"],
        "latency": "decode -> WebSocket viewer",
        "latency_ms": result["latency_ms"],
        "latency_thirds_ms": result["latency_thirds_ms"],
        "latency_bounded": result["latency_bounded"],
        "rss_mb": result["rss_mb"],
        "ready": ready,
        "run": result,
    }


def child_ultralytics(args) -> dict:
    """`RTDETR(pt).predict(source=clip, stream=True)`, as the ultralytics docs show it, over the window."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    import torch
    from ultralytics import RTDETR

    if args.cpu_threads:
        torch.set_num_threads(args.cpu_threads)
    model = RTDETR(str(args.ultralytics_pt))
    began = time.time()
    window_start = began + args.warmup
    window_end = window_start + args.duration
    done, per_frame = [], []
    while time.time() < window_end:  # the clip is shorter than a slow window: predict it again
        for result in model.predict(
            source=str(args.clip), stream=True, imgsz=args.input_size, device="cpu", conf=0.5, verbose=False
        ):
            now = time.time()
            if now >= window_end:
                break
            if now >= window_start:
                done.append(now)
                per_frame.append(sum(result.speed.values()) / 1000.0)
    fps = round(len(done) / args.duration, 2)
    return {
        "side": f"ultralytics predict {Path(args.ultralytics_pt).stem}",
        "backend": "ultralytics",
        "dtype": "float32",
        "checkpoint": str(args.ultralytics_pt),
        "inferred_fps": fps,
        "delivered_fps": fps,
        # A file source is read as fast as predict asks for frames: there is no camera to fall behind.
        "latency": "pre-process + inference + post-process per frame (file read unpaced, nothing delivered)",
        "latency_ms": percentiles_ms(per_frame),
        "torch_threads": torch.get_num_threads(),
    }


def shared_flags(args, clip: Path) -> list[str]:
    """What every side's process is told alike: the clip, the window, the input size, the threads."""
    return [
        "--clip", str(clip),
        "--warmup", str(args.warmup),
        "--duration", str(args.duration),
        "--input-size", str(args.input_size),
        "--cpu-threads", str(args.cpu_threads),
    ]  # fmt: skip


def run_baseline(args, clip: Path, model_dir: Path, workdir: Path) -> dict:
    """bench/baseline.py at one stream: thread per session, batch 1, no frame skipped."""
    out = workdir / "baseline.json"
    command = [
        sys.executable,
        str(BENCH / "baseline.py"),
        *shared_flags(args, clip),
        *("--model", str(model_dir), "--device", "cpu", "--streams", "1", "--keep-going", "--out", str(out)),
    ]
    code = subprocess.run(command).returncode
    if code != 0 or not out.exists():
        return {"side": "baseline", "error": f"baseline.py exited with {code} (its output above says why)"}
    count = json.loads(out.read_text())["counts"][0]
    return {
        "side": "baseline (spec-style)",
        "backend": "torch",
        "dtype": "float32",
        # It infers every frame it publishes, in camera order, and never skips one.
        "inferred_fps": count["fps_mean"],
        "delivered_fps": count["fps_mean"],
        "latency": "camera delivery -> JSON ready (socket send not counted)",
        "latency_ms": count["latency_ms"],
        "latency_thirds_ms": count["latency_thirds_ms"],
        "latency_bounded": count["latency_bounded"],
        "rss_mb": count["rss_mb"],
        "run": count,
    }


def run_child(args, side: str, clip: Path, model_dir: Path, workdir: Path) -> dict:
    out = workdir / f"{side}.json"
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        *shared_flags(args, clip),
        *("--child", side, "--model-dir", str(model_dir), "--json", str(out)),
    ]
    if args.ultralytics_pt:
        command += ["--ultralytics-pt", str(args.ultralytics_pt)]
    code = subprocess.run(command).returncode
    if code != 0 or not out.exists():
        return {"side": side, "error": f"the {side} side exited with {code} (its output above says why)"}
    return json.loads(out.read_text())


# -- report ---------------------------------------------------------------------------------


def ratios(sides: dict, name: str = "openvino") -> dict | None:
    """An OpenVINO side's frames/s over torch eager's, both as configured (the target: the service's default)."""
    torch_side, ov_side = sides.get("torch"), sides.get(name)
    if not torch_side or not ov_side or "error" in torch_side or "error" in ov_side:
        return None
    threads = [torch_side.get("cpu_threads"), ov_side.get("cpu_threads")]
    out = {"side": name, "dtype": ov_side["dtype"], "threads": threads}
    for key in ("inferred_fps", "delivered_fps"):
        out[key] = round(ov_side[key] / torch_side[key], 2) if torch_side[key] else None
    delivered = out["delivered_fps"]
    out["target"] = f">= {TARGET_RATIO:g}x delivered frames/s"
    out["outcome"] = "not measured" if delivered is None else "PASS" if delivered >= TARGET_RATIO else "FAIL"
    return out


SHORT_DTYPE = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def describe(side: dict, short: bool = False) -> str:
    """ "openvino bfloat16 x2": backend, precision and inference threads of a side."""
    threads = side.get("cpu_threads") or side.get("torch_threads")
    dtype = SHORT_DTYPE.get(side["dtype"], side["dtype"]) if short else side["dtype"]
    text = dtype if short else f"{side['backend']} {dtype}"
    return text + (f" x{threads}" if threads else "")


def print_table(results: dict) -> None:
    print(
        f"\n{'side':<24} {'backend/dtype':<22} {'inferred/s':>10} {'delivered/s':>11} {'p50 ms':>9} {'p99 ms':>9} "
        f"{'p99 thirds ms':>24} {'wall s':>7}"
    )
    for side in results["sides"].values():
        if "error" in side:
            print(f"{side['side']:<24} ERROR: {side['error']}")
            continue
        lat = side["latency_ms"]
        thirds = " / ".join(str(t["p99"]) for t in side.get("latency_thirds_ms", [])) or "-"
        print(
            f"{side['side']:<24} {describe(side):<22} {side['inferred_fps']:>10.2f} "
            f"{side['delivered_fps']:>11.2f} {lat['p50']!s:>9} {lat['p99']!s:>9} {thirds:>24} {side['wall_s']:>7.0f}"
        )
    for name, why in results["skipped"].items():
        print(f"{name:<24} skipped: {why}")
    for ratio in filter(None, [results["ratio_openvino_over_torch"], results.get("ratio_openvino_fp32_over_torch")]):
        print(
            f"\n{ratio['side']} ({ratio['dtype']}, {ratio['threads'][1]} threads) / torch eager "
            f"({ratio['threads'][0]} threads), same run: {ratio['delivered_fps']}x frames/s delivered, "
            f"{ratio['inferred_fps']}x inferred (target {ratio['target']}): {ratio['outcome']}"
        )
    env = results["environment"]
    print(f"load average before {env['load_before']}, after {env['load_after']}; {env['host_cpus']} CPUs")


def plot(results: dict, path: Path) -> None:
    """Bars: frames/s per side (inferred, delivered) and p50/p99 latency (log scale: the baseline's is seconds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    sides = [s for s in results["sides"].values() if "error" not in s]
    breaks = {" (spec-style)": "\n(spec-style)", "ours ": "ours\n", " predict ": "\npredict\n"}

    def label(side: dict) -> str:
        name = side["side"]
        for old, new in breaks.items():
            name = name.replace(old, new)
        return name + "\n" + describe(side, short=True)

    names = [label(s) for s in sides]
    x = range(len(sides))
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    for axis, keys, labels, unit in (
        (left, ("inferred_fps", "delivered_fps"), ("inferred", "delivered to the viewer"), "frames/s"),
        (right, ("p50", "p99"), ("p50", "p99"), "latency ms (log)"),
    ):
        for k, (key, label) in enumerate(zip(keys, labels, strict=True)):
            values = [s[key] if key.endswith("fps") else s["latency_ms"][key] for s in sides]
            bars = axis.bar([i + (k - 0.5) * 0.38 for i in x], values, 0.38, label=label)
            axis.bar_label(bars, labels=[f"{v:.2f}" if unit == "frames/s" else f"{v:.0f}" for v in values], fontsize=8)
        axis.set_xticks(list(x), names, fontsize=8)
        axis.set_ylabel(unit)
        axis.margins(y=0.2)  # room for the legend above the bars' labels
        axis.legend(fontsize=8, loc="upper left")
    right.set_yscale("log")
    right.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    right.yaxis.set_minor_formatter(ticker.NullFormatter())
    env = results["environment"]
    ratio = results["ratio_openvino_over_torch"]
    left.set_title(
        "frames/s, one 1280x720 30 fps stream" + (f" (OpenVINO / torch {ratio['delivered_fps']}x)" if ratio else ""),
        fontsize=10,
    )
    right.set_title("latency (ours: decode -> viewer; baseline: camera -> JSON)", fontsize=10)
    fig.suptitle(
        f"RT-DETRv2-S r18vd on {env['host_cpus']} CPUs, {env['date'][:16].replace('T', ' ')} UTC, "
        f"load {env['load_before'][0]:.1f} -> {env['load_after'][0]:.1f}",
        fontsize=11,
    )
    skipped = "; ".join(f"{name} skipped: {why}" for name, why in results["skipped"].items())
    if skipped:
        fig.text(0.5, 0.01, skipped, ha="center", fontsize=7)
    fig.tight_layout(rect=(0, 0.03 if skipped else 0, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- main -----------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sides", default=",".join(SIDES), help="which sides, in order: " + ",".join(SIDES))
    p.add_argument("--warmup", type=float, default=15.0, help="seconds ignored after each side starts streaming")
    p.add_argument("--duration", type=float, default=40.0, help="measured seconds per side")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--clip-seconds", type=float, default=20.0)
    p.add_argument("--clip", type=Path, help="use this video file instead of the synthetic clip")
    p.add_argument("--input-size", type=int, default=640)
    p.add_argument(
        "--cpu-threads", type=int, default=0, help="inference threads on every side (0 = each one's default)"
    )
    p.add_argument("--ultralytics-pt", type=Path, help="an RT-DETR .pt for the ultralytics side (else looked for)")
    p.add_argument("--cache", type=Path, default=BENCH / ".cache", help="clip and model cache")
    p.add_argument("--json", type=Path, default=ROOT / "test-artifacts" / "bench-cpu.json")
    p.add_argument("--plot", type=Path, default=ROOT / "docs" / "img" / "bench-cpu.png")
    p.add_argument("--child", choices=(*OURS, "ultralytics"), help=argparse.SUPPRESS)
    p.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.side_list = [s.strip() for s in args.sides.split(",") if s.strip()]
    unknown = set(args.side_list) - set(SIDES)
    if unknown:
        p.error(f"unknown sides {sorted(unknown)}; choose from {','.join(SIDES)}")
    return args


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "transformers", "openvino", "onnxruntime", "ultralytics", "av"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if args.child:
        measured = child_ultralytics(args) if args.child == "ultralytics" else child_ours(args)
        args.json.write_text(json.dumps(measured, indent=2))
        return 0

    args.cache.mkdir(parents=True, exist_ok=True)
    clip_path = args.clip or cached_clip(
        args.cache, width=args.width, height=args.height, fps=args.fps, seconds=args.clip_seconds
    )
    clip_path = clip_path.resolve()
    clip = clip_info(clip_path)
    model_dir = conditioned_model(args.cache)
    results = {
        "environment": {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "host_cpus": os.cpu_count(),
            "load_before": [round(v, 2) for v in os.getloadavg()],
            "versions": versions(),
            "clip": clip,
            "model": "r18vd, conditioned random weights",
            "model_dir": str(model_dir),
            "input_size": args.input_size,
            "cpu_threads": args.cpu_threads,
            "warmup_s": args.warmup,
            "duration_s": args.duration,
        },
        "sides": {},
        "skipped": {},
    }
    if "ultralytics" in args.side_list:
        args.ultralytics_pt, where = find_ultralytics_pt(args.ultralytics_pt)
        if not args.ultralytics_pt:
            # No trained checkpoint offline: ultralytics' own rtdetr-l with random weights (a larger network).
            args.ultralytics_pt = random_ultralytics_pt(args.cache)
            results["environment"]["ultralytics_checkpoint"] = (
                f"{args.ultralytics_pt.name}: rtdetr-l.yaml with random weights ({where}; none downloaded)"
            )
    results["environment"]["gflop_per_frame"] = model_gflop(
        model_dir, args.ultralytics_pt if "ultralytics" in args.side_list else None, args.input_size
    )
    print(
        f"clip {clip['width']}x{clip['height']} {clip['codec']} {clip['fps']:g} fps; model r18vd (conditioned random "
        f"weights); sides {', '.join(args.side_list)}; {args.warmup:g} s warmup + {args.duration:g} s each",
        flush=True,
    )
    for name, why in results["skipped"].items():
        print(f"{name}: skipped: {why}", flush=True)
    if "ultralytics_checkpoint" in results["environment"]:
        print(f"ultralytics: {results['environment']['ultralytics_checkpoint']}", flush=True)
    gflop = ", ".join(f"{name} {value:g}" for name, value in results["environment"]["gflop_per_frame"].items())
    print(f"GFLOP per {args.input_size}x{args.input_size} frame: {gflop}", flush=True)

    def save() -> None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        partial = args.json.with_name(args.json.name + ".partial")
        partial.write_text(json.dumps(results, indent=2))
        partial.replace(args.json)

    with tempfile.TemporaryDirectory(prefix="bench-cpu-") as tmp:
        for side in args.side_list:
            load = [round(v, 2) for v in os.getloadavg()]
            print(f"{side}: starting (load {load[0]:.2f})", flush=True)
            started = time.monotonic()
            if side == "baseline":
                measured = run_baseline(args, clip_path, model_dir, Path(tmp))
            else:
                measured = run_child(args, side, clip_path, model_dir, Path(tmp))
            measured["load_at_start"] = load
            measured["wall_s"] = round(time.monotonic() - started, 1)  # the whole process: load, warm-up, window
            results["sides"][side] = measured
            if "error" not in measured:
                lat = measured["latency_ms"]
                print(
                    f"{side}: {measured['inferred_fps']} frames/s inferred, {measured['delivered_fps']} delivered, "
                    f"p50 {lat['p50']} ms, p99 {lat['p99']} ms",
                    flush=True,
                )
            save()
    results["environment"]["load_after"] = [round(v, 2) for v in os.getloadavg()]
    results["ratio_openvino_over_torch"] = ratios(results["sides"])
    results["ratio_openvino_fp32_over_torch"] = ratios(results["sides"], "openvino-fp32")
    save()
    print_table(results)
    if any("error" not in s for s in results["sides"].values()):
        plot(results, args.plot)
        print(f"plot written to {args.plot}")
    print(f"results written to {args.json}")
    return 0 if all("error" not in s for s in results["sides"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
