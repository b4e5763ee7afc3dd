"""Settings: defaults, environment parsing, bounds, and errors that name the key."""

import pytest
from pydantic import ValidationError

from rtdetr_service.web.settings import Settings


def make(**values) -> Settings:
    return Settings(_env_file=None, **values)


def test_defaults_and_key_list(monkeypatch):
    monkeypatch.setenv("API_KEYS", " k1 , k2 ,")
    settings = Settings(_env_file=None)
    assert [k.get_secret_value() for k in settings.api_keys] == ["k1", "k2"]
    assert settings.port == 8080 and settings.device == "auto" and settings.max_sessions == 16
    assert settings.allowed_schemes == ["rtsp", "rtsps"]
    assert "k1" not in repr(settings)  # keys never leak through repr/logging


def test_refuses_to_run_open_by_accident():
    with pytest.raises(ValidationError, match="API_KEYS is empty"):
        make()
    assert make(auth_disabled=True).api_keys == []


@pytest.mark.parametrize(
    "key, value",
    [
        ("port", 0),
        ("port", 70000),
        ("max_sessions", 0),
        ("device", "tpu"),
        ("input_size", 641),
        ("default_confidence", 1.5),
        ("jpeg_quality", 0),
        ("allowed_schemes", "rtsp,file"),
    ],
)
def test_out_of_range_values_name_the_key(key, value):
    with pytest.raises(ValidationError) as info:
        make(api_keys="k", **{key: value})
    assert key in str(info.value)


def test_unknown_keys_are_refused():
    with pytest.raises(ValidationError, match="extra"):
        make(api_keys="k", max_sesions=3)


def test_keys_that_no_header_can_carry_are_refused_without_being_shown(monkeypatch, capsys):
    from rtdetr_service.__main__ import main

    monkeypatch.setenv("API_KEYS", "good-key,clé-secrète")
    assert main() == 2
    error = capsys.readouterr().err
    assert "API_KEYS" in error and "visible ASCII" in error and "secrète" not in error


def test_keys_and_disabled_auth_together_are_refused():
    # keys that would be silently ignored are a misconfiguration, not a choice
    with pytest.raises(ValidationError, match="set only one"):
        make(api_keys="k", auth_disabled=True)


def test_env_file_shared_with_compose_is_read_for_our_names_only(tmp_path, monkeypatch):
    monkeypatch.delenv("API_KEYS", raising=False)
    env = tmp_path / ".env"
    env.write_text("API_KEYS=k1\nMAX_SESSIONS=3\nMEDIAMTX_PUBLISH_PASS=x\nKONG_DECLARATIVE_FILE=/k.yml\n")
    settings = Settings(_env_file=env)
    assert settings.max_sessions == 3 and [k.get_secret_value() for k in settings.api_keys] == ["k1"]


def test_a_typo_in_the_shared_env_file_is_pointed_out(tmp_path):
    from rtdetr_service.web.settings import unknown_env_file_keys

    env = tmp_path / ".env"
    env.write_text("API_KEYS=k\nMAX_SESION=3\nMEDIAMTX_READ_PASS=x\nKONG_DECLARATIVE_FILE=/k.yml\nRTSP_BIND=0.0.0.0\n")
    assert unknown_env_file_keys(env) == ["MAX_SESION"]
    assert unknown_env_file_keys(tmp_path / "missing") == []


def test_environment_overrides(monkeypatch):
    monkeypatch.setenv("API_KEYS", "k")
    monkeypatch.setenv("PORT", "9000")
    monkeypatch.setenv("DEVICE", "cpu")
    monkeypatch.setenv("MAX_SESSIONS", "3")
    settings = Settings(_env_file=None)
    assert (settings.port, settings.device, settings.max_sessions) == (9000, "cpu", 3)


def test_readme_documents_every_setting():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    missing = [name for name in Settings.env_names() if f"| `{name}` |" not in readme]
    assert not missing, f"README.md settings table lacks {missing}"
