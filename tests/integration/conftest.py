"""Fixtures the integration tests share: `backend`, which runs a test on SQLite and on the real
PostgreSQL server (tests/conftest.py starts it, once per run, for the tests that ask)."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request) -> str:
    return request.param


@pytest.fixture
def database_url(backend, request, tmp_path) -> str:
    """An empty database of the backend: a SQLite file in the test's folder, or one on the server."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'events.db'}"
    return request.getfixturevalue("postgres_url")
