"""The replica's identity and the settings of replicas sharing sessions: REPLICA_ID, SESSION_LEASE_S,
BUS_URL (issue 17). Read and checked only; nothing uses the lease or the bus yet."""

from __future__ import annotations

import re
import socket

import pytest
from pydantic import ValidationError

from rtdetr_service.sessions.settings import ClusterSettings, default_replica_id
from rtdetr_service.web.settings import Settings

BUS_PASSWORD = "bus-pass-4471"


def make(**values) -> Settings:
    return Settings(_env_file=None, api_keys="k", **values)


def test_the_default_replica_id_is_the_host_name_and_a_suffix_made_once_per_process():
    replica = make().replica_id
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:56]
    assert re.fullmatch(re.escape(host) + r"-[0-9a-f]{6}", replica), replica
    assert make().replica_id == ClusterSettings().replica_id == default_replica_id() == replica


def test_a_host_name_too_long_or_odd_still_gives_a_valid_replica_id(monkeypatch):
    monkeypatch.setattr(socket, "gethostname", lambda: "caméra host/" + "x" * 80)
    default_replica_id.cache_clear()
    try:
        replica = default_replica_id()
    finally:
        default_replica_id.cache_clear()
    assert len(replica) <= 63 and re.fullmatch(r"cam-ra-host-x+-[0-9a-f]{6}", replica), replica
    assert ClusterSettings(replica_id=replica).replica_id == replica


@pytest.mark.parametrize("value", ["pod-7", "gpu-a.b_c", "x" * 63])
def test_a_replica_id_of_letters_digits_and_dashes_dots_underscores_is_taken(value, monkeypatch):
    monkeypatch.setenv("REPLICA_ID", value)
    assert make().replica_id == value


@pytest.mark.parametrize("value", ["", "x" * 64, "pod 7", "pod/7", "réplica"])
def test_any_other_replica_id_is_refused_in_words(value):
    with pytest.raises(ValidationError, match="REPLICA_ID must be 1 to 63 letters, digits"):
        make(replica_id=value)


def test_the_session_lease_is_ten_seconds_by_default_and_bounded(monkeypatch):
    assert make().session_lease_s == 10.0
    monkeypatch.setenv("SESSION_LEASE_S", "30")
    assert make().session_lease_s == 30.0
    for value in (2.9, 301):
        with pytest.raises(ValidationError, match="session_lease_s"):
            make(session_lease_s=value)


def test_the_bus_is_off_by_default_and_takes_nats_and_tls_urls(monkeypatch):
    assert make().bus_url.get_secret_value() == ""
    for url in (f"nats://rtdetr:{BUS_PASSWORD}@nats:4222", "tls://nats.example:4222", "NATS://nats"):
        monkeypatch.setenv("BUS_URL", url)
        settings = make()
        assert settings.bus_url.get_secret_value() == url
        assert BUS_PASSWORD not in repr(settings) and BUS_PASSWORD not in str(settings.model_dump())


@pytest.mark.parametrize(
    "url, words",
    [
        (
            f"http://rtdetr:{BUS_PASSWORD}@nats:4222",
            "BUS_URL must start with nats:// or tls:// (a NATS server), not http://",
        ),
        (f"rtdetr:{BUS_PASSWORD}@nats:4222", "BUS_URL must start with nats:// or tls:// (a NATS server)"),
        (f"redis://:{BUS_PASSWORD}@cache", "not redis://"),
        ("nats://", "BUS_URL names no host"),
        (f"nats://rtdetr:{BUS_PASSWORD}@", "BUS_URL names no host"),
    ],
)
def test_any_other_bus_url_is_refused_in_words_that_never_repeat_it(url, words):
    with pytest.raises(ValidationError) as info:
        make(bus_url=url)
    assert words in str(info.value)
    assert BUS_PASSWORD not in str(info.value)  # what a traceback would print


def test_a_refused_bus_url_stops_the_service_without_printing_its_password(monkeypatch, tmp_path, capsys):
    from rtdetr_service.__main__ import main

    monkeypatch.chdir(tmp_path)  # no .env here
    monkeypatch.setenv("API_KEYS", "k")
    monkeypatch.setenv("BUS_URL", f"https://rtdetr:{BUS_PASSWORD}@nats:4222")
    assert main() == 2
    error = capsys.readouterr().err
    assert "configuration error: BUS_URL: Value error, BUS_URL must start with nats://" in error, error
    assert BUS_PASSWORD not in error


def test_the_log_format_is_text_unless_json_is_asked_for(monkeypatch):
    assert make().log_format == "text"
    monkeypatch.setenv("LOG_FORMAT", "json")
    assert make().log_format == "json"
    with pytest.raises(ValidationError, match="log_format"):
        make(log_format="xml")
