"""Shared loaders for the deployment-configuration tests (no Docker needed)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DATA = Path(__file__).resolve().parent / "data"


def load_yaml(path: Path) -> dict:
    """Parse one YAML file of the repository."""
    with path.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def kong() -> dict:
    return load_yaml(REPO / "kong" / "kong.yml")


@pytest.fixture(scope="session")
def compose() -> dict:
    return load_yaml(REPO / "docker-compose.yml")


@pytest.fixture(scope="session")
def mediamtx() -> dict:
    return load_yaml(REPO / "mediamtx" / "mediamtx.yml")


@pytest.fixture(scope="session")
def kong_ref() -> dict:
    return load_yaml(DATA / "kong-3.9-reference.yml")


@pytest.fixture(scope="session")
def mediamtx_ref() -> dict:
    return load_yaml(DATA / "mediamtx-reference-keys.yml")


@pytest.fixture(scope="session")
def settings_cls():
    """The service's real settings class, so ports and names are compared to the source."""
    service_dir = str(REPO / "rt-detr-service")
    if service_dir not in sys.path:
        sys.path.insert(0, service_dir)
    from rtdetr_service.web.settings import Settings

    return Settings


@pytest.fixture(scope="session")
def setting_names(settings_cls) -> set[str]:
    """The environment variables the service reads: all that deployment files may set."""
    return set(settings_cls.env_names())


@pytest.fixture(scope="session")
def service_metric_names(live_service, rtsp_url) -> set[str]:
    """Every series name the real service's /metrics offers while a session runs on the test camera
    (after its first published frame), with the suffixes prometheus_client gives each type."""
    from promql import exposition_names

    with live_service.client() as client:
        started = client.post("/api/v1/video/start", json={"stream_url": rtsp_url})
        assert started.status_code == 200, started.text
        session_id = started.json()["session_id"]
        try:
            deadline = time.monotonic() + 60
            text = client.get("/metrics").text
            while "rtdetr_frame_latency_seconds_bucket{" not in text:
                assert time.monotonic() < deadline, "the session published no frame within 60 s"
                time.sleep(0.2)
                text = client.get("/metrics").text
        finally:
            client.post("/api/v1/video/stop", json={"session_id": session_id})
    return exposition_names(text)
