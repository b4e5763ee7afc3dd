"""Shared fixtures: a real RTSP camera (gst-rtsp-server), a tiny real RT-DETRv2, a live service."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from support import RtspCamera, free_port, make_settings, run_service
from tiny_model import build as build_tiny_model


@pytest.fixture(scope="session")
def rtsp_camera():
    camera = RtspCamera(free_port())
    camera.start()
    yield camera
    camera.stop()


@pytest.fixture(scope="session")
def rtsp_url(rtsp_camera) -> str:
    return rtsp_camera.url


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("model") / "tiny-rtdetr-v2")


@pytest.fixture(scope="session")
def live_service(tiny_model_dir):
    service = run_service(make_settings(tiny_model_dir))
    yield service
    service.stop()


@pytest.fixture
def stop_sessions(live_service):
    """Stops whatever sessions a test leaves running."""
    yield
    for session in live_service.app.state.manager.list():
        live_service.app.state.manager.stop(session.id, "test cleanup")


def pytest_configure(config):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
