"""Fixtures the integration tests share: one real PostgreSQL server for the whole run, and an empty
database of its own for each test that asks."""

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
