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

    readme = (Path(__file__).resolve().parents[2] / "docs" / "settings.md").read_text()
    missing = [name for name in Settings.env_names() if f"| `{name}` |" not in readme]
    assert not missing, f"docs/settings.md lacks {missing}"


# Each output's settings are a nested model read from the same flat names as ever.

OUTPUTS_ENV = {
    "WEBHOOK_URLS": "https://hooks.example/a , https://hooks.example/b,",
    "WEBHOOK_SECRET": "s3cret",
    "WEBHOOK_TIMEOUT_S": "2.5",
    "MQTT_URL": "mqtt://broker:1883",
    "MQTT_TOPIC_PREFIX": "cams",
    "KAFKA_BOOTSTRAP_SERVERS": "k1:9092,k2:9092",
    "KAFKA_SASL_MECHANISM": "PLAIN",
    "KAFKA_SASL_USERNAME": "rtdetr",
    "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "KAFKA_LINGER_MS": "5",
}
FLAT_ENV = {
    "API_KEYS": "k1, k2",
    "STREAM_ALLOWED_NETWORKS": "10.0.0.0/8, 192.168.0.0/16",
    "EVENT_END_AFTER_S": "7",
    "ALLOWED_SCHEMES": "rtsp,RTMP",
    "MAX_SESSIONS": "3",
}


def assert_read_as_written(settings: Settings) -> None:
    assert [u.get_secret_value() for u in settings.webhook.urls] == [
        "https://hooks.example/a",
        "https://hooks.example/b",
    ]
    assert settings.webhook.secret.get_secret_value() == "s3cret" and settings.webhook.timeout_s == 2.5
    assert settings.mqtt.url.get_secret_value() == "mqtt://broker:1883" and settings.mqtt.topic_prefix == "cams"
    kafka = settings.kafka
    assert (kafka.bootstrap_servers, kafka.sasl_mechanism, kafka.linger_ms) == ("k1:9092,k2:9092", "PLAIN", 5)
    assert kafka.security_protocol == "SASL_SSL" and kafka.sasl_username == "rtdetr"
    # flat names with underscores are not taken for nested ones
    assert [k.get_secret_value() for k in settings.api_keys] == ["k1", "k2"]
    assert [str(n) for n in settings.stream_allowed_networks] == ["10.0.0.0/8", "192.168.0.0/16"]
    assert settings.event_end_after_s == 7.0 and settings.max_sessions == 3
    assert settings.allowed_schemes == ["rtsp", "rtmp"]


def test_output_and_flat_settings_are_read_from_the_environment(monkeypatch):
    for key, value in {**OUTPUTS_ENV, **FLAT_ENV}.items():
        monkeypatch.setenv(key, value)
    assert_read_as_written(Settings(_env_file=None))


def test_output_and_flat_settings_are_read_from_the_env_file(tmp_path, monkeypatch):
    for key in (*OUTPUTS_ENV, *FLAT_ENV):
        monkeypatch.delenv(key, raising=False)
    env = tmp_path / ".env"
    env.write_text("".join(f"{key}={value}\n" for key, value in {**OUTPUTS_ENV, **FLAT_ENV}.items()))
    assert_read_as_written(Settings(_env_file=env))


def test_names_under_an_output_prefix_that_are_not_settings_are_ignored(tmp_path, monkeypatch):
    # given variables of other programs that happen to start like an output's settings
    monkeypatch.setenv("KAFKA_HOME", "/opt/kafka")
    monkeypatch.setenv("MQTT_FOO", "1")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "k1:9092")
    env = tmp_path / ".env"
    env.write_text("API_KEYS=k\nWEBHOOK_RETRIES=9\nMQTT_TOPIC_PREFIX=cams\n")
    # when the settings are read, then they are ignored and the real ones are read
    settings = Settings(_env_file=env)
    assert settings.kafka.bootstrap_servers == "k1:9092" and settings.mqtt.topic_prefix == "cams"
    assert settings.webhook.max_retries == 3
    # and a keyword argument no output has is still refused
    with pytest.raises(ValidationError, match="extra"):
        make(api_keys="k", kafka={"bootstrap_server": "k1:9092"})


def test_an_output_given_in_part_keeps_the_rest_from_the_environment(monkeypatch):
    monkeypatch.setenv("KAFKA_LINGER_MS", "7")
    settings = make(api_keys="k", kafka={"bootstrap_servers": "k1:9092"})
    assert (settings.kafka.bootstrap_servers, settings.kafka.linger_ms) == ("k1:9092", 7)


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("KAFKA_EVENTS_TOPIC", "no spaces allowed", "KAFKA_EVENTS_TOPIC: String should match pattern"),
        ("KAFKA_SASL_MECHANISM", "GSSAPI", "KAFKA_SASL_MECHANISM: Input should be"),
        ("WEBHOOK_TIMEOUT_S", "0", "WEBHOOK_TIMEOUT_S: Input should be greater than 0"),
        ("MQTT_TOPIC_PREFIX", "a/#", "MQTT_TOPIC_PREFIX: String should match pattern"),
        ("KAFKA_SECURITY_PROTOCOL", "SASL_SSL", "settings: Value error, KAFKA_SECURITY_PROTOCOL=SASL_SSL needs"),
        ("WEBHOOK_URLS", "https://hooks.example/a", "settings: Value error, WEBHOOK_SECRET is required"),
        ("STREAM_DENIED_NETWORKS", "10.0.0.0/8,not-a-net", "STREAM_DENIED_NETWORKS.1: value is not a valid"),
        ("RECONNECT_MIN_S", "20", "settings: Value error, RECONNECT_MAX_S must be >= RECONNECT_MIN_S"),
    ],
)
def test_startup_errors_name_the_variable_as_it_was_typed(key, value, words, tmp_path, monkeypatch, capsys):
    from rtdetr_service.__main__ import main

    monkeypatch.chdir(tmp_path)  # no .env here
    monkeypatch.setenv("API_KEYS", "k")
    monkeypatch.setenv(key, value)
    assert main() == 2
    assert f"configuration error: {words}" in capsys.readouterr().err


def test_errors_of_a_nested_setting_carry_its_variable_name():
    with pytest.raises(ValidationError) as info:
        make(api_keys="k", kafka={"events_topic": "no spaces allowed"}, max_sessions=0)
    locations = {error["loc"] for error in info.value.errors()}
    assert locations == {("kafka_events_topic",), ("max_sessions",)}


def test_a_typo_of_an_output_setting_in_the_env_file_is_pointed_out(tmp_path):
    from rtdetr_service.web.settings import unknown_env_file_keys

    env = tmp_path / ".env"
    env.write_text(
        "API_KEYS=k\nKAFKA_BOOTSTRAP_SERVERS=k:9092\nWEBHOOK_URLS=\nMQTT_TOPIC_PREFIX=x\nKAFKA_BOOTSTRAP=k\n"
    )
    assert unknown_env_file_keys(env) == ["KAFKA_BOOTSTRAP"]


def test_one_comma_list_type_reads_every_list_setting():
    from rtdetr_service.core.config import split_commas

    assert split_commas(" a, ,b ,") == ["a", "b"] and split_commas(["a b"]) == ["a b"]
    settings = make(
        api_keys=" k1 ,k2",
        allowed_schemes="rtsp, srt",
        stream_denied_networks="10.0.0.0/8,",
        webhook={"urls": "https://a.example/x,", "secret": "s"},
    )
    assert [k.get_secret_value() for k in settings.api_keys] == ["k1", "k2"]
    assert settings.allowed_schemes == ["rtsp", "srt"]
    assert [str(n) for n in settings.stream_denied_networks] == ["10.0.0.0/8"]
    assert [u.get_secret_value() for u in settings.webhook.urls] == ["https://a.example/x"]
    assert "a.example" not in repr(settings)  # webhook URLs carry tokens: never in a repr


def test_each_floor_checks_its_own_settings():
    from rtdetr_service.ingest.settings import StreamSettings
    from rtdetr_service.outputs.settings import KafkaSettings, WebhookSettings

    with pytest.raises(ValidationError, match="RECONNECT_MAX_S must be >= RECONNECT_MIN_S"):
        StreamSettings(reconnect_min_s=5, reconnect_max_s=1)
    with pytest.raises(ValidationError, match="ALLOWED_SCHEMES may only name network protocols"):
        StreamSettings(allowed_schemes="file")
    with pytest.raises(ValidationError, match="WEBHOOK_SECRET is required"):
        WebhookSettings(urls="https://a.example/x")
    with pytest.raises(ValidationError, match="KAFKA_SSL_CA_LOCATION is set"):
        KafkaSettings(bootstrap_servers="k:9092", ssl_ca_location="/ca.pem")
    assert KafkaSettings(bootstrap_servers="k:9092", security_protocol="SSL", ssl_ca_location="/ca.pem")


def test_export_reads_only_the_inference_settings(tmp_path, monkeypatch):
    from rtdetr_service.inference.export_cli import ExportSettings

    # given no API key and output settings that the service would refuse: exporting needs neither
    monkeypatch.delenv("API_KEYS", raising=False)
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("BACKEND", "openvino")
    env = tmp_path / ".env"
    env.write_text("MODEL=models/elsewhere\nMAX_SESSIONS=3\n")
    settings = ExportSettings(_env_file=env)
    assert (settings.model, settings.backend) == ("models/elsewhere", "openvino")
    with pytest.raises(ValidationError, match="input_size"):
        ExportSettings(_env_file=None, input_size=333)
