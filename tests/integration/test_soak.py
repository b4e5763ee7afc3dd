"""A two-minute soak with the user's own tool: ffmpeg pushes, viewers churn, one viewer stalls.

Given `ffmpeg -re -stream_loop -1 -i clip.mp4 -c copy -f rtsp -rtsp_transport tcp` publishing a
320x240 15 fps clip to the native relay camera (`scripts/test_camera.py --relay`), and the real
service in a process of its own (`python -m rtdetr_service`, as `make serve` runs it) with 2
sessions reading it (drawing on), when 4 WebSocket viewers connect and leave every 1.5-4.5 s for
30 s, then a stalled viewer (upgrade done, 4 KB receive buffer, never reads) joins for 45 s more,
and then everyone leaves, then, from a CSV row every 3 s (test-artifacts/soak-short/samples.csv:
RSS, threads and fds of the service's process, which holds only the service, not the test runner
and what hundreds of earlier tests left in it; load average; fps, latency and reconnects from
GET /api/v1/video/status/{id}; frames and latency the viewers saw):

- RSS grows less than 8 MB/min over the second half (least squares). Trial runs moved by ±3 MB
  within 45 s (allocator noise); a leak of one 320x240 JPEG (~10 KB) per frame sent to the
  ~60 frames/s the viewers take would be ~36 MB/min, one 64 KB buffer per viewer connection
  (~50 a minute) ~3 MB/min, so this bound catches per-frame leaks, not slow per-connection ones
  (the 1-hour soak in docs/reliability.md holds those to 1 MB/min);
- threads and fds in the second half peak no higher than in the first (+3 threads, +6 fds: the
  service's per-viewer sockets and tasks come and go with the churn);
- after the viewers leave, threads are back to the baseline taken before they came (+2) and fds
  too (+4: pooled HTTP connections);
- no viewer is refused (no 4429: the stalled viewer must not hold slots others need) and every
  viewer connection gets frames;
- the stalled viewer does not slow the others: with it present, the frames/s the other viewers
  receive and each session's published fps stay at least 60 % of what they were without it.
  The service may close the stalled viewer (VIEWER_STALL_S, 4408) or keep it; either passes.
  60 %, not 95 %: on this shared 2-core machine other work moves 30-s means by up to a quarter,
  while a stalled viewer that blocked a session would take it to 0.
"""

from __future__ import annotations

import contextlib
import json
import shutil

import pytest

from servers import service_process, soak_native
from support import ROOT

pytestmark = pytest.mark.skipif(not shutil.which("ffmpeg"), reason="the soak publisher is ffmpeg")


def _mean(rows: list[dict], key: str) -> float:
    values = [float(r[key]) for r in rows if r.get(key) is not None]
    return sum(values) / len(values) if values else 0.0


def test_short_soak_memory_threads_fds_flat_and_a_stalled_viewer_harms_nobody(tiny_model_dir, tmp_path):
    soak = soak_native()  # the same load the 1-hour soak runs
    out = ROOT / "test-artifacts" / "soak-short"
    shutil.rmtree(out, ignore_errors=True)
    # given the user's publisher pushing to the native relay, and the service reading it twice
    clip = soak.make_clip(tmp_path / "clip.mp4", "320x240", 15, 10)
    with contextlib.ExitStack() as parts:  # stopped in reverse order, each even if another fails
        camera = soak.RelayCamera(soak.free_port(), tmp_path / "relay.log")
        camera.start()
        parts.callback(camera.stop)
        pusher = soak.Pusher(clip, camera.url, tmp_path / "push.log")
        pusher.start()
        parts.callback(pusher.stop)
        service = service_process(tiny_model_dir, tmp_path, MAX_SESSIONS="4")
        parts.callback(service.stop)
        workload = soak.Workload(
            service.base_url, service.api_key, camera.url, out, pid=service.proc.pid, sessions=2, viewers=4,
            hold_s=3.0, stall_hold_s=60.0, interval_s=3.0, pusher=pusher,
        )  # fmt: skip
        parts.callback(workload.close)
        workload.start_sessions()
        workload.run_for(12, "warmup")
        workload.run_for(6, "baseline")
        # when viewers churn, then a stalled viewer joins them, then all leave
        workload.start_viewers()
        workload.run_for(30, "load-churn")
        workload.start_stalled()
        workload.run_for(45, "load-stalled")
        workload.stop_load()
        workload.run_for(9, "settled")
        workload.finish_minutes()

    rows = workload.rows
    failures, figures = soak.judge(rows, soak.Bounds(rss_slope_mb_per_min=8.0), sessions=2)
    churn = [r for r in rows if r["phase"] == "load-churn"][1:]  # the first row has viewers still joining
    stalled = [r for r in rows if r["phase"] == "load-stalled"]
    figures["viewer_fps_churn"], figures["viewer_fps_stalled"] = (
        _mean(churn, "viewer_fps"),
        _mean(stalled, "viewer_fps"),
    )
    figures["refused"] = dict(workload.tally.refused)
    figures["stalled_opened"] = workload.tally.stalled_opened
    soak.plot(rows, workload.minutes, 2, out / "soak.png", "short soak (make test)")
    (out / "summary.json").write_text(json.dumps(figures, indent=1) + "\n")
    detail = json.dumps(figures, indent=1)

    # then nothing grows, and threads and descriptors come back
    assert not failures, f"{failures}\n{detail}"
    # and every viewer got in and got frames; the stalled one really connected
    assert workload.tally.stalled_opened >= 1, detail
    assert not workload.tally.refused, detail
    assert figures["viewer_connects"] >= 20, detail
    # and the stalled viewer did not slow the others or the sessions
    assert figures["viewer_fps_churn"] > 0, detail
    assert figures["viewer_fps_stalled"] >= 0.6 * figures["viewer_fps_churn"], detail
    for i in range(2):
        before, during = _mean(churn, f"s{i}_published_fps"), _mean(stalled, f"s{i}_published_fps")
        assert before > 0 and during >= 0.6 * before, (i, before, during, detail)
    assert (out / "samples.csv").read_text().count("\n") == len(rows) + 1


def _rows(rss_per_min: float = 0.0, threads_after: int = 30, fds_after: int = 40) -> list[dict]:
    rows = [{"elapsed_s": 0.0, "phase": "baseline", "rss_mb": 900.0, "threads": 30, "fds": 40, "load1": 1.0}]
    for step in range(1, 41):
        t = step * 3.0
        rows.append({"elapsed_s": t, "phase": "load", "rss_mb": 900.0 + rss_per_min * t / 60, "threads": 36, "fds": 50})
    rows.append({"elapsed_s": 130.0, "phase": "settled", "rss_mb": 900.0, "threads": threads_after, "fds": fds_after})
    for row in rows:
        row.update(load1=1.0, viewer_p99_ms=50.0, viewer_connects=0, viewer_refused=0)
    return rows


@pytest.mark.parametrize(
    ("rows", "reason"),
    [
        (_rows(rss_per_min=20.0), "RSS grows"),
        (_rows(threads_after=36), "threads not back"),
        (_rows(fds_after=50), "descriptors not back"),
    ],
)
def test_the_soak_verdict_fails_on_growth(rows, reason):
    # given samples that show a leak, when judged, then the soak fails and says which
    failures, _ = soak_native().judge(rows, soak_native().Bounds(rss_slope_mb_per_min=8.0), sessions=0)
    assert any(reason in f for f in failures), failures


def test_the_soak_verdict_passes_flat_samples():
    failures, figures = soak_native().judge(_rows(), soak_native().Bounds(rss_slope_mb_per_min=8.0), sessions=0)
    assert failures == [] and figures["rss_slope_second_half_mb_per_min"] == 0.0
