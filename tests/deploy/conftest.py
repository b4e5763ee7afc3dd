"""Shared loaders for the deployment-configuration tests (no Docker needed)."""

from __future__ import annotations

import sys
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
