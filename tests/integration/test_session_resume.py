"""Sessions are desired state: on the default single replica (SQLite), a restart of the service
runs every session it ran before again, with the same id and viewer token; a stopped one stays
stopped. The real service, the GStreamer camera and the real store, restarted on one DATA_DIR."""

from __future__ import annotations

import httpx
from websockets.sync.client import connect

from support import frame_results, make_settings, run_service, running_camera, scratch_dir, start_session, wait_until


def _client(service) -> httpx.Client:
    return httpx.Client(base_url=service.base_url, headers={"apikey": service.api_key}, timeout=30)


def test_a_restart_runs_the_sessions_again_with_their_ids_and_tokens_and_not_the_stopped_ones(tiny_model_dir):
    data_dir = scratch_dir("rtdetr-resume-")
    with running_camera() as camera:
        first = run_service(make_settings(tiny_model_dir, data_dir=data_dir, session_lease_s=3.0))
        try:
            with _client(first) as http:
                kept = start_session(http, camera.url, camera="gate")
                gone = start_session(http, camera.url, camera="yard")
                assert http.post("/api/v1/video/stop", json={"session_id": gone["session_id"]}).status_code == 200
        finally:
            first.stop()

        # when the service starts again on the same data
        second = run_service(make_settings(tiny_model_dir, data_dir=data_dir, session_lease_s=3.0))
        try:
            with _client(second) as http:

                def running():
                    return [s for s in http.get("/api/v1/video/sessions").json()["sessions"] if s["state"] == "running"]

                listed = wait_until(running, timeout=20)
                # then the kept session runs again, same id, same camera; the stopped one does not
                assert [s["session_id"] for s in listed] == [kept["session_id"]]
                assert listed[0]["camera"] == "gate"
                # and a viewer holding the token from the first start still gets frames
                with connect(second.ws_base + kept["websocket_path"], open_timeout=10) as ws:
                    assert len(frame_results(ws, 3, seconds=20)) == 3
                assert http.get(f"/api/v1/video/status/{gone['session_id']}").status_code in (200, 404)
                # stopping it for good: the next restart does not run it
                assert http.post("/api/v1/video/stop", json={"session_id": kept["session_id"]}).status_code == 200
        finally:
            second.stop()
        third = run_service(make_settings(tiny_model_dir, data_dir=data_dir, session_lease_s=3.0))
        try:
            with _client(third) as http:
                # a claim round runs within a second of readiness; give it three
                assert not wait_until(
                    lambda: http.get("/api/v1/video/sessions").json()["sessions"], timeout=3, step=0.5
                )
        finally:
            third.stop()


def test_a_session_started_here_that_vanishes_without_a_stop_is_recorded_stopped_not_run_again(tiny_model_dir):
    # A start whose caller went away just as it was recorded leaves a row and no session: the
    # manager drops it; the cluster must not take that for a session to open again.
    with running_camera() as camera:
        service = run_service(
            make_settings(tiny_model_dir, data_dir=scratch_dir("rtdetr-vanish-"), session_lease_s=3.0)
        )
        try:
            with _client(service) as http:
                body = start_session(http, camera.url)
                manager, cluster = service.app.state.manager, service.app.state.cluster
                manager.drop(body["session_id"], "gone without a stop (test)")
                stopped = wait_until(
                    lambda: (r := cluster.records.get(body["session_id"])).desired == "stop" and r, timeout=5
                )
                assert stopped, cluster.records.get(body["session_id"])
                # and it stays gone: nothing opens it again
                assert not wait_until(lambda: manager.find(body["session_id"]), timeout=3, step=0.2)
        finally:
            service.stop()
