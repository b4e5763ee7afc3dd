"""What every floor's settings share: the repository root, one comma-list type, one base model.

Each floor declares the settings it owns beside its code (`ingest/settings.py`,
`inference/settings.py`, `outputs/settings.py`, `sessions/settings.py`); `web/settings.py`
composes them into the one class the environment and `.env` are read into.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict
from pydantic_settings import NoDecode, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[3]  # rt-detr-service/rtdetr_service/core/config.py

# `.env` is shared with docker compose (MEDIAMTX_*, KONG_*, RTSP_BIND): like the environment, it
# is read for a settings class's own names only. Unknown keyword arguments are still refused.
READ_ENV = SettingsConfigDict(env_file=".env", dotenv_filtering="only_existing", extra="forbid", validate_default=True)

T = TypeVar("T")


def split_commas(value: object) -> object:
    """`"a, b,"` as `["a", "b"]`; anything but a string is left to the list's own validation."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


# A list read from one comma-separated variable (`API_KEYS=k1,k2`), not from JSON.
CommaList = Annotated[list[T], NoDecode, BeforeValidator(split_commas)]


class SettingsModel(BaseModel):
    """One floor's settings: every field typed, bounded and described; unknown names refused."""

    model_config = ConfigDict(extra="forbid", validate_default=True)
