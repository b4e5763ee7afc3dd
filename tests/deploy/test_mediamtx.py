"""mediamtx/mediamtx.yml: only keys of the pinned release, and a locked-down RTSP plane."""

from __future__ import annotations


def valid_keys(ref: dict, section: str) -> set[str]:
    """Keys every reference snapshot has (the configuration must load on all of them)."""
    sets = [set(snap[section]) for snap in ref["snapshots"].values()]
    return set.intersection(*sets)


def test_every_global_key_exists_in_the_reference(mediamtx, mediamtx_ref):
    unknown = set(mediamtx) - valid_keys(mediamtx_ref, "global")
    assert not unknown, f"MediaMTX would refuse to start on {unknown}"


def test_every_user_and_permission_key_exists(mediamtx, mediamtx_ref):
    user_keys = valid_keys(mediamtx_ref, "auth_user")
    perm_keys = valid_keys(mediamtx_ref, "auth_permission")
    for user in mediamtx["authInternalUsers"]:
        assert set(user) <= user_keys, set(user) - user_keys
        for perm in user["permissions"]:
            assert set(perm) <= perm_keys, set(perm) - perm_keys


def test_every_path_key_exists(mediamtx, mediamtx_ref):
    path_keys = valid_keys(mediamtx_ref, "path")
    for name, conf in {**mediamtx["paths"], "pathDefaults": mediamtx.get("pathDefaults") or {}}.items():
        unknown = set(conf or {}) - path_keys
        assert not unknown, f"path {name}: unknown keys {unknown}"


def test_reference_check_catches_a_typo(mediamtx_ref):
    assert "rtspTransport" not in valid_keys(mediamtx_ref, "global")  # path key, not global
    assert "apiAllowOrigins" not in valid_keys(mediamtx_ref, "global")  # newer releases only


def test_rtsp_only_over_tcp_on_8554(mediamtx):
    assert mediamtx["rtsp"] is True
    assert mediamtx["rtspTransports"] == ["tcp"]
    assert mediamtx["rtspAddress"] == ":8554"
    for proto in ("rtmp", "hls", "webrtc", "srt", "playback", "pprof"):
        assert mediamtx.get(proto) is False, f"{proto} should be off"


def test_api_and_metrics_on_their_ports(mediamtx):
    assert mediamtx["api"] is True and mediamtx["apiAddress"] == ":9997"
    assert mediamtx["metrics"] is True and mediamtx["metricsAddress"] == ":9998"


def test_nobody_publishes_or_reads_anonymously(mediamtx):
    for user in mediamtx["authInternalUsers"]:
        actions = {p["action"] for p in user["permissions"]}
        if user["user"] == "any":
            assert not actions & {"publish", "read", "playback"}, "anonymous media access"
            assert user["ips"], "anonymous api/metrics must be limited by IP"
        else:
            assert user["pass"], f"user {user['user']} has no password"


def test_camera_path_and_catch_all(mediamtx):
    assert mediamtx["paths"]["camera"]["source"] == "publisher"
    assert mediamtx["paths"]["all_others"]["source"] == "publisher"
