"""Rates and latency summaries, with time passed in."""

from rtdetr_service.core.stats import LatencyWindow, RateMeter


def test_rate_of_a_steady_stream():
    meter = RateMeter(window_s=5.0)
    for i in range(300):  # 30 fps for 10 s
        meter.mark(now=i / 30)
    assert abs(meter.rate(now=10.0) - 30.0) < 0.5


def test_slow_rates_are_not_rounded_to_zero():
    meter = RateMeter(window_s=5.0)
    for t in (0.0, 1.4, 2.8, 4.2, 5.6, 7.0):  # 0.7 per second
        meter.mark(now=t)
    assert 0.55 <= meter.rate(now=7.1) <= 0.85


def test_early_rate_uses_the_time_since_the_first_event():
    meter = RateMeter(window_s=5.0)
    for i in range(30):
        meter.mark(now=100 + i / 30)
    assert abs(meter.rate(now=101.0) - 30.0) < 1.5


def test_rate_decays_when_events_stop():
    meter = RateMeter(window_s=5.0)
    for i in range(60):
        meter.mark(now=i / 30)
    assert meter.rate(now=2.0 + 5.1) == 0.0
    assert RateMeter().rate(now=3.0) == 0.0


def test_latency_percentiles_in_ms():
    window = LatencyWindow(size=100)
    assert window.percentiles_ms() == {"p50": None, "p99": None}
    for ms in range(1, 101):
        window.add(ms / 1000)
    summary = window.percentiles_ms()
    assert 49 <= summary["p50"] <= 52 and 98 <= summary["p99"] <= 100
