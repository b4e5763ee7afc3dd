"""Fixtures the integration tests share: one real PostgreSQL server for the whole run, an empty
database of its own for each test that asks, and `backend`, which runs a test on SQLite and on it."""

from __future__ import annotations

import pytest

from servers import Postgres, running_postgres


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


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request) -> str:
    return request.param


@pytest.fixture
def database_url(backend, request, tmp_path) -> str:
    """An empty database of the backend: a SQLite file in the test's folder, or one on the server."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'events.db'}"
    return request.getfixturevalue("postgres_url")
