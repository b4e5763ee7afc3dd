"""docs/settings.md is written by scripts/settings_doc.py from the Settings class, and cannot drift from it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

ROOT = Path(__file__).resolve().parents[2]


def _load_script():
    spec = importlib.util.spec_from_file_location("settings_doc", ROOT / "scripts" / "settings_doc.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


settings_doc = _load_script()


class KafkaSettings(BaseModel):
    bootstrap_servers: str = Field("", max_length=2048, description="Kafka brokers to start from.")
    sasl_password: SecretStr = Field(SecretStr("hunter2"), description="Kafka sasl.password.")


class NestedSettings(BaseSettings):
    """The shape the service's settings take once each output owns its model."""

    model_config = SettingsConfigDict(env_nested_delimiter="_", env_nested_max_split=1, extra="forbid")

    api_keys: list[SecretStr] = Field(default_factory=lambda: [SecretStr("k-123")], description="API keys.")
    port: int = Field(8080, ge=1, le=65535, description="HTTP port.")
    input_size: int = Field(640, ge=320, le=1280, multiple_of=32, description="Square model input size.")
    data_dir: Path = Field(ROOT / "data", description="Where the event database and snapshots live.")
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)


def row(text: str, env: str) -> str:
    (line,) = [line for line in text.splitlines() if line.startswith(f"| `{env}` |")]
    return line


def test_docs_settings_md_is_what_the_script_writes():
    # given the service's Settings class, when the page is written, then it is the committed one
    expected = settings_doc.render()
    assert settings_doc.DOC.read_text() == expected, (
        "docs/settings.md is out of date: run `make settings-doc` (scripts/settings_doc.py)"
    )


def test_a_nested_model_is_a_group_read_from_flat_env_names(monkeypatch):
    # given settings whose Kafka fields live in a nested model
    text = settings_doc.render(NestedSettings)
    # then the page shows them under the Kafka group with the names the environment uses
    kafka = text.split("## Kafka output", 1)[1]
    assert row(kafka, "KAFKA_BOOTSTRAP_SERVERS").startswith("| `KAFKA_BOOTSTRAP_SERVERS` | (empty) | length ≤ 2048 |")
    assert "| `KAFKA` |" not in text
    # and those names are the ones pydantic-settings really reads
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka1:9092")
    assert NestedSettings().kafka.bootstrap_servers == "kafka1:9092"


def test_secrets_are_shown_without_their_defaults():
    text = settings_doc.render(NestedSettings)
    assert "hunter2" not in text and "k-123" not in text
    assert row(text, "KAFKA_SASL_PASSWORD").split(" | ")[1] == "(secret)"
    assert row(text, "API_KEYS").split(" | ")[1] == "(secret)"


def test_bounds_types_and_paths_are_shown_as_a_user_types_them():
    text = settings_doc.render(NestedSettings)
    assert row(text, "PORT") == "| `PORT` | `8080` | 1–65535 | integer | HTTP port. |"
    assert "320–1280, multiple of 32" in row(text, "INPUT_SIZE")
    # a path inside the repository is shown relative to it: the page is the same on every machine
    assert row(text, "DATA_DIR").split(" | ")[1] == "`data`"
    assert str(ROOT) not in settings_doc.render()


def test_a_setting_in_no_group_is_refused_in_words():
    class Stray(BaseSettings):
        frobnicate: int = Field(1, description="Nobody knows.")

    with pytest.raises(ValueError, match="'frobnicate' is in no group"):
        settings_doc.render(Stray)
