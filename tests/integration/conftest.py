"""Fixtures the integration tests share: `backend`, which runs a test on SQLite and on the real
PostgreSQL server (tests/conftest.py starts it, once per run, for the tests that ask), and
`make_store`, real event stores on the backend."""

from __future__ import annotations

import pytest

from rtdetr_service.outputs.store.event_store import EventStore

from support import STORE_NOW


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request) -> str:
    return request.param


@pytest.fixture
def database_url(backend, request, tmp_path) -> str:
    """An empty database of the backend: a SQLite file in the test's folder, or one on the server."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'events.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def store_url(backend, request) -> str:
    """ "" for the embedded default (SQLite under the data dir); an empty database on the server."""
    return "" if backend == "sqlite" else request.getfixturevalue("postgres_url")


@pytest.fixture
def make_store(store_url, tmp_path):
    """Builds started event stores on one data dir (a second call is a restart); stops them all at the end."""
    stores: list[EventStore] = []

    def make(start: bool = True, **kwargs) -> EventStore:
        kwargs.setdefault("clock", lambda: STORE_NOW)
        store = EventStore(store_url, tmp_path / "data", **kwargs)
        stores.append(store)
        if start:
            store.start()
        return store

    yield make
    for store in stores:
        store.stop(timeout=5.0)
