"""The benchmark's judging rules (bench/measure.py, the verdict of bench/bench_pipeline.py): the GPU
figures will be taken in one go, so the rules that turn samples into PASS/FAIL are checked here."""

from __future__ import annotations

import pytest
from bench_pipeline import verdict  # bench/ is on pytest's pythonpath (pytest.ini)
from measure import bounded, memory_flat


def _rss(mb_per_min: float, base: float = 4000.0, seconds: int = 600, every: int = 10):
    return [(float(t), base + mb_per_min * t / 60.0) for t in range(0, seconds + 1, every)]


def test_a_flat_process_is_flat():
    memory = memory_flat(_rss(0.0), 0.0, 600.0)
    assert memory["flat"] is True and memory["slope_mb_per_min"] == 0.0


def test_a_slow_leak_in_a_big_process_is_caught():
    # 3 MB a minute is 30 MB over ten minutes: under any "5 % of 4 GB" rule, and a real leak
    memory = memory_flat(_rss(3.0), 0.0, 600.0)
    assert memory["flat"] is False and memory["slope_mb_per_min"] == pytest.approx(3.0, abs=0.01)


def test_pools_filling_in_the_first_minute_are_not_a_leak():
    samples = [(float(t), 4000.0 + (200.0 if t >= 30 else 0.0)) for t in range(0, 601, 10)]
    memory = memory_flat(samples, 0.0, 600.0)
    assert memory["slope_mb_per_min"] == 0.0
    # but the step itself is reported (and judged against the 50 MB bound)
    assert memory["growth_mb"] > 50 and memory["flat"] is False


def test_a_soak_too_short_to_judge_says_so():
    assert memory_flat(_rss(0.0, seconds=30), 0.0, 30.0)["flat"] is None


def test_latency_bounded_rule():
    assert bounded([{"p99": 80.0}, {"p99": 85.0}, {"p99": 90.0}]) is True
    assert bounded([{"p99": 80.0}, {"p99": 900.0}, {"p99": 2000.0}]) is False
    assert bounded([{"p99": None}, {"p99": 1.0}, {"p99": 1.0}]) is None


def _count(streams: int, sustained: bool, p99: float = 50.0, fps: float = 30.0) -> dict:
    thirds = [{"p99": p99}] * 3
    return {
        "streams": streams,
        "sustained": sustained,
        "fps_mean": fps,
        "latency_ms": {"p50": p99 / 2, "p99": p99},
        "latency_thirds_ms": thirds,
        "latency_bounded": True,
    }


def _results(ours_counts, base_counts, device="cuda", dtype="float16", jpeg="nvjpeg") -> dict:
    return {
        "environment": {"device": device, "clip": {"fps": 30.0}},
        "ours": {
            "ready": {"model": {"dtype": dtype}, "jpeg_encoder": jpeg},
            "counts": ours_counts,
            "mb_per_added_stream": 40.0,
        },
        "baseline": {"counts": base_counts},
    }


def _rows(results) -> dict:
    return {target: (measured, outcome) for target, measured, outcome in verdict(results)}


def test_verdict_on_a_run_that_meets_the_targets():
    rows = _rows(
        _results(
            [_count(8, True), _count(16, True, p99=70.0), _count(24, False, p99=400.0)],
            [_count(1, False, p99=4000.0, fps=21.0)],
        )
    )
    assert rows[">= 16 streams at full rate"] == ("16", "PASS")
    assert rows[">= 8x the baseline's count"] == ("16 vs 0 (infx)", "PASS")
    # an infinite count ratio is put in proportion by frames delivered
    assert (
        rows["frames/s delivered at full rate, ours vs the baseline's most (informational)"][0] == "480 vs 21 (22.9x)"
    )
    assert rows["p99 <= 100 ms at that count"] == ("70.0 ms", "PASS")
    assert rows["the service ran as deployed: fp16 and nvJPEG"][1] == "PASS"


def test_verdict_when_the_service_fell_back_from_nvjpeg():
    rows = _rows(_results([_count(16, True)], [_count(1, False)], jpeg="opencv"))
    assert rows["the service ran as deployed: fp16 and nvJPEG"][1].startswith("FAIL")


def test_verdict_judges_p99_at_16_streams_too_when_more_were_sustained():
    rows = _rows(_results([_count(16, True, p99=130.0), _count(24, True, p99=90.0)], [_count(1, False)]))
    assert rows["p99 <= 100 ms at that count"] == ("90.0 ms", "PASS")
    assert rows["p99 <= 100 ms at 16 streams"] == ("130.0 ms", "FAIL")


def test_a_soak_only_run_is_not_judged_on_a_sweep_it_did_not_make():
    results = _results([], [])
    del results["baseline"]
    soak = {
        "seconds": 600.0,
        "streams": 16,
        "memory": {"first_mb": 4000.0, "last_mb": 4010.0, "slope_mb_per_min": 0.2, "flat": True},
        "p99_per_minute_ms": [80.0] * 10,
        "latency_bounded": True,
    }
    results["ours"]["soak"] = soak
    rows = _rows(results)
    assert ">= 16 streams at full rate" not in rows
    assert rows["memory flat over the 600 s soak (16 streams)"][1] == "PASS"
