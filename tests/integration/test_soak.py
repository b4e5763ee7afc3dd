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

- RSS grows less than 12 MB/min over the second half (least squares). With events, snapshots and
  the webhook in the load, the allocator steps by 4-5 MB within a few seconds, flat before and
  after (seen at 8.0 and 9.3 MB/min over a 50-s half); 8 MB/min failed on such single steps. Trial runs moved by ±3 MB
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

The service runs `tests/scripted_service.py`: the real model's forward pass on every batch, its
detections replaced by walking people, so events, snapshots and webhook deliveries happen as in
production. Every event change and alert goes to a webhook receiver that misbehaves in turn
(answers 200 with a 256 MB body, trickles a chunked answer a byte each 0.5 s, never answers), and
during the churn the snapshot folder is replaced by a file for 8 s, then put back; then also:

- while the folder is a file, `/ready` stays 200 and says in words that snapshots cannot be
  written, and events are still stored (rows, without snapshots);
- within 15 s of the folder's return, snapshots are written again and the store reads `ok`;
- the receiver costs the service no memory (the RSS bound above) and the webhook output says
  in words why it is not well.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import threading
import time

import httpx
import pytest

from hostile_servers import FakeServer, http_huge_answer, http_trickle, silent
from servers import service_process, soak_native
from support import ROOT

_BEHAVIOURS = (
    http_huge_answer(declared=256 * 2**20, at_most=32 * 2**20),
    http_trickle(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", [b"1\r\na\r\n"] * 40),
    silent,
)


def _misbehaving(conn, server: FakeServer) -> None:
    """Each connection gets the next abuse: a huge answer, a trickled one, none at all."""
    _BEHAVIOURS[(server.connections - 1) % len(_BEHAVIOURS)](conn, server)


class SnapshotFault:
    """Replaces DATA_DIR/snapshots by a file for `hold_s`, then puts the folder back, watching
    /ready and the outputs every 0.5 s from a thread of its own; what it saw is kept."""

    def __init__(self, base_url: str, api_key: str, data_dir, after_s: float, hold_s: float) -> None:
        self._http = httpx.Client(base_url=base_url, headers={"apikey": api_key}, timeout=10)
        self._folder = data_dir / "snapshots"
        self._after_s, self._hold_s = after_s, hold_s
        self.failing_words: list[str] = []  # /ready warnings naming the snapshot failure
        self.ready_codes: set[int] = set()
        self.stored_during: int | None = None  # events stored while the folder was a file
        self.recovered_after_s: float | None = None  # until the store read ok with a new event's snapshot
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        self._stop.set()
        self._thread.join(60)
        self._http.close()

    def _store(self) -> dict:
        outputs = self._http.get("/api/v1/outputs").json()["outputs"]
        return next(o for o in outputs if o["name"] == "event_store")

    def _run(self) -> None:
        try:
            if self._stop.wait(self._after_s):
                return
            aside = self._folder.with_name("snapshots.aside")
            self._folder.rename(aside)
            self._folder.write_bytes(b"not a folder")
            failed_at = time.time()
            ends = time.monotonic() + self._hold_s
            while time.monotonic() < ends:
                ready = self._http.get("/ready")
                self.ready_codes.add(ready.status_code)
                self.failing_words += [w for w in ready.json().get("warnings", []) if "cannot write snapshot" in w]
                time.sleep(0.5)
            self._folder.unlink()
            aside.rename(self._folder)
            back_at, back_wall = time.monotonic(), time.time()
            events = self._http.get("/api/v1/events", params={"after": failed_at, "limit": 500}).json()["events"]
            self.stored_during = len(events)
            while time.monotonic() - back_at < 30 and not self._stop.is_set():
                store = self._store()
                since = self._http.get("/api/v1/events", params={"after": back_wall, "limit": 500}).json()["events"]
                healed = store["state"] == "ok" and any(event["has_snapshot"] for event in since)
                if healed:
                    self.recovered_after_s = time.monotonic() - back_at
                    return
                time.sleep(0.5)
        except BaseException as exc:  # noqa: BLE001 - kept for the test to report
            self.error = exc


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
        receiver = FakeServer(_misbehaving)
        parts.callback(receiver.close)
        service = service_process(
            tiny_model_dir, tmp_path, [sys.executable, str(ROOT / "tests" / "scripted_service.py")], MAX_SESSIONS="4",
            WEBHOOK_URLS=receiver.http_url, WEBHOOK_SECRET="soak-secret", WEBHOOK_TIMEOUT_S="2",
        )  # fmt: skip
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
        fault = SnapshotFault(service.base_url, service.api_key, tmp_path / "data", after_s=2.0, hold_s=8.0)
        fault.start()
        parts.callback(fault.join)
        workload.run_for(30, "load-churn")
        workload.start_stalled()
        workload.run_for(45, "load-stalled")
        workload.stop_load()
        workload.run_for(9, "settled")
        workload.finish_minutes()
        fault.join()
        with httpx.Client(base_url=service.base_url, headers={"apikey": service.api_key}) as http:
            outputs = {o["name"]: o for o in http.get("/api/v1/outputs").json()["outputs"]}

    rows = workload.rows
    failures, figures = soak.judge(rows, soak.Bounds(rss_slope_mb_per_min=12.0), sessions=2)
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
    # and the snapshot folder's absence cost snapshots only, was said in words, and healed
    assert fault.error is None, repr(fault.error)
    assert fault.ready_codes == {200} and fault.failing_words, (fault.ready_codes, fault.failing_words)
    assert fault.stored_during and fault.stored_during >= 1, fault.stored_during
    assert fault.recovered_after_s is not None and fault.recovered_after_s < 15, outputs["event_store"]
    assert outputs["event_store"]["restarts"] == 0 and outputs["event_store"]["state"] == "ok"
    # and the misbehaving receiver was tried, cost nothing (the RSS bound above), and is said in words
    webhook = outputs["webhook"]
    assert receiver.connections >= 3 and webhook["restarts"] == 0, webhook
    assert webhook["failed"] + webhook["dropped"] > 0 and webhook["last_error"], webhook


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
