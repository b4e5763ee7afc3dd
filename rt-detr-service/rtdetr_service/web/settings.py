"""The service's one settings class: every floor's settings, read from the environment and `.env`.

Each floor declares what it reads beside its code; this class composes them and adds what only
the web floor reads (keys, address, body limit, log level and format). Flat fields are the upper-case field
names (`MAX_SESSIONS`); an output's nested model takes its prefix (`KAFKA_BOOTSTRAP_SERVERS` is
`kafka.bootstrap_servers`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from rtdetr_service.core.config import READ_ENV, REPO_ROOT, CommaList
from rtdetr_service.inference.settings import EmbedSettings, InferenceSettings, VlmSettings
from rtdetr_service.outputs.embeddings.settings import EmbeddingSettings
from rtdetr_service.outputs.recordings.settings import RecordingSettings
from rtdetr_service.outputs.settings import OutputSettings
from rtdetr_service.outputs.vlm.settings import VlmStageSettings
from rtdetr_service.sessions.settings import ClusterSettings, SessionSettings


class Settings(
    BaseSettings,
    SessionSettings,
    ClusterSettings,
    InferenceSettings,
    EmbedSettings,
    VlmSettings,
    OutputSettings,
    RecordingSettings,
    EmbeddingSettings,
    VlmStageSettings,
):
    """Every knob of the service; environment variables use the upper-case field names."""

    # One split at the first "_" only where a nested model's prefix starts the name: MAX_SESSIONS
    # stays max_sessions, KAFKA_SASL_MECHANISM becomes kafka.sasl_mechanism.
    # A refused value may be a credential (DATABASE_URL, BUS_URL): errors say why, never what was given.
    model_config = SettingsConfigDict(
        **READ_ENV, env_nested_delimiter="_", env_nested_max_split=1, hide_input_in_errors=True
    )

    api_keys: CommaList[SecretStr] = Field(
        default_factory=list,
        description="Comma-separated API keys for the control routes (`apikey` / `X-API-Key` header).",
    )
    auth_disabled: bool = Field(
        False,
        description="Accept control calls without a key. Only behind a gateway that authenticates (Kong).",
    )
    host: str = Field("127.0.0.1", description="Address to listen on (0.0.0.0 in containers).")
    port: int = Field(8080, ge=1, le=65535, description="HTTP port.")
    max_viewers: int = Field(16, ge=1, le=1000, description="WebSocket viewers per session.")
    frontend_dir: Path = Field(REPO_ROOT / "frontend", description="Viewer page directory served at `/`.")
    max_body_kb: int = Field(
        256, ge=4, le=16384, description="Largest control request body (KiB); larger is refused before parsing."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level.")
    log_format: Literal["text", "json"] = Field(
        "text",
        description="Log lines as text, or as JSON objects (time, level, logger, replica, session, camera, message).",
    )
    search_image_max_kb: int = Field(
        2048,
        ge=16,
        le=16384,
        description='Largest JPEG a "find this" search takes (KiB); the only body allowed past MAX_BODY_KB.',
    )
    search_image_max_pixels: int = Field(
        40_000_000,
        ge=64 * 64,
        le=200_000_000,
        description="Most pixels (width x height, read from the JPEG's header before decoding) of a search "
        "image: a small file that would decode into gigabytes is refused unread.",
    )
    ask_concurrency: int = Field(
        2,
        ge=1,
        le=64,
        description="Most POST /api/v1/ask running at once (each checks its candidates with the VLM on a "
        "thread of its own); one more is answered 429 too_many_asks at once.",
    )
    metrics_require_key: bool = Field(
        True, description="/metrics needs an API key (it lists session ids); ignored with AUTH_DISABLED=true."
    )

    def __init__(self, **values: Any) -> None:
        """Read the settings; a refused value is named as its variable is (KAFKA_EVENTS_TOPIC)."""
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise _in_env_spelling(exc, type(self)) from None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[Callable[[], dict[str, Any]], ...]:
        """Keyword arguments first, then the environment, then `.env`: each for our names only."""
        env, dotenv = _OwnNamesOnly(env_settings, cls), _OwnNamesOnly(dotenv_settings, cls)
        return init_settings, env, dotenv, file_secret_settings

    @classmethod
    def nested_models(cls) -> dict[str, type[BaseModel]]:
        """The fields read from prefixed variables (`kafka` from KAFKA_*), with their models."""
        return {
            name: field.annotation
            for name, field in cls.model_fields.items()
            if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
        }

    @classmethod
    def env_names(cls) -> list[str]:
        """Every environment variable the service reads, spelled as there (KAFKA_BOOTSTRAP_SERVERS)."""
        nested = cls.nested_models()
        names = []
        for name in cls.model_fields:
            if name in nested:
                names += [f"{name}_{sub}".upper() for sub in nested[name].model_fields]
            else:
                names.append(name.upper())
        return names

    @field_validator("api_keys")
    @classmethod
    def _keys_fit_a_header(cls, value: list[SecretStr]) -> list[SecretStr]:
        # HTTP headers carry visible ASCII; any other key could never match. Which key is bad is
        # not said: that would print it.
        for key in value:
            if not all("!" <= c <= "~" for c in key.get_secret_value()):
                raise ValueError("API_KEYS: keys must be visible ASCII characters without spaces")
        return value

    @model_validator(mode="after")
    def _auth_is_deliberate(self) -> Settings:
        if not self.api_keys and not self.auth_disabled:
            raise ValueError(
                "API_KEYS is empty: set API_KEYS=key1,key2, or AUTH_DISABLED=true only behind a gateway "
                "that checks keys itself"
            )
        if self.api_keys and self.auth_disabled:
            raise ValueError(
                "API_KEYS and AUTH_DISABLED=true are both set: keys would be silently ignored; set only one"
            )
        return self


class _OwnNamesOnly:
    """An environment source without the names under an output's prefix that are not its settings
    (KAFKA_HOME, MQTT_FOO): ignored, as every other unknown variable is."""

    def __init__(self, source: PydanticBaseSettingsSource, settings_cls: type[Settings]) -> None:
        self._source = source
        self._nested = settings_cls.nested_models()
        self.__name__ = type(source).__name__

    def __call__(self) -> dict[str, Any]:
        values = self._source()
        for name, model in self._nested.items():
            if isinstance(values.get(name), dict):
                values[name] = {key: v for key, v in values[name].items() if key in model.model_fields}
        return values


def _in_env_spelling(exc: ValidationError, settings_cls: type[Settings]) -> ValidationError:
    """`exc` with each nested location spelled as its variable: `kafka.events_topic` as
    `kafka_events_topic`, what a user typed and what docs/settings.md lists."""
    nested = settings_cls.nested_models()
    errors = exc.errors()
    if not any(error["loc"] and error["loc"][0] in nested for error in errors):
        return exc
    spelled = [
        # The message is kept as pydantic wrote it; a custom error carries it as it is.
        {"type": PydanticCustomError(e["type"], e["msg"]), "loc": _env_loc(e, nested), "input": e["input"]}
        for e in errors
    ]
    return ValidationError.from_exception_data(exc.title, spelled)


def _env_loc(error: dict, nested: dict) -> tuple:
    loc = error["loc"]
    if not loc or loc[0] not in nested:
        return loc
    if len(loc) > 1:
        return (f"{loc[0]}_{loc[1]}", *loc[2:])
    # A nested model's own check names its keys in its message, as the whole settings' checks do.
    return () if error["type"] == "value_error" else loc


# Keys of the shared `.env` that belong to docker compose, MediaMTX or Kong, not to this service.
_OTHERS_KEYS = ("MEDIAMTX_", "MTX_", "KONG_", "COMPOSE_", "PUSH_", "RTSP_BIND", "CLIP", "URL")


def unknown_env_file_keys(path: Path | str = ".env") -> list[str]:
    """Keys of an env file that neither this service nor the stack around it reads: most likely
    typos of a setting, which the service would otherwise ignore in silence."""
    from dotenv import dotenv_values

    path = Path(path)
    if not path.is_file():
        return []
    ours = set(Settings.env_names())
    return sorted(
        key for key in dotenv_values(path) if key.upper() not in ours and not key.upper().startswith(_OTHERS_KEYS)
    )
