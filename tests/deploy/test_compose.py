"""docker-compose.yml lined up with Kong, MediaMTX, the service settings, scripts and docs."""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from urllib.parse import urlsplit

import pytest

RTSP_URL = re.compile(r"rtsps?://[^\s\"'`)<>]+")


def published_ports(service: dict) -> set[int]:
    """Container ports a service publishes on the host ("[ip:]host:container" short syntax)."""
    return {int(str(p).split(":")[-1].split("/")[0]) for p in service.get("ports", [])}


def mounts(service: dict) -> list[tuple[str, str, str]]:
    out = []
    for volume in service.get("volumes", []):
        source, target, *mode = volume.rsplit(":", 2) if volume.count(":") >= 2 else (*volume.split(":"), "rw")
        out.append((source, target, mode[0] if mode else "rw"))
    return out


def users_with(mediamtx: dict, action: str) -> dict[str, str]:
    return {
        u["user"]: u["pass"]
        for u in mediamtx["authInternalUsers"]
        if any(p["action"] == action for p in u["permissions"])
    }


def mediamtx_path_exists(mediamtx: dict, name: str) -> bool:
    return name in mediamtx["paths"] or "all_others" in mediamtx["paths"] or "all" in mediamtx["paths"]


def test_images_are_pinned_to_versions(compose):
    for name, service in compose["services"].items():
        if "image" in service and "build" not in service:
            image = service["image"]
            assert ":" in image and not image.endswith(":latest"), f"{name}: pin {image}"
            assert re.search(r":v?\d+\.\d+(\.\d+)?", image), f"{name}: {image} is not a version tag"


def test_pinned_images_match_the_reference_data(compose, kong_ref, mediamtx_ref):
    services = compose["services"]
    assert services["kong"]["image"] == kong_ref["pinned_image"]
    assert services["mediamtx"]["image"] == mediamtx_ref["pinned_image"]
    assert services["pusher"]["image"].startswith(mediamtx_ref["pinned_image"] + "-")


def test_dockerfile_base_image_is_pinned(repo):
    text = (repo / "rt-detr-service" / "Dockerfile").read_text()
    bases = re.findall(r"^ARG PYTHON_IMAGE=(\S+)", text, re.M)
    assert bases and re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", bases[0])
    assert re.search(r"^USER (?!root)\S+", text, re.M), "the image must not run as root"
    assert "HEALTHCHECK" in text and "/health" in text


def test_service_is_not_published_and_listens_on_the_settings_port(compose, settings_cls):
    service = compose["services"]["rt-detr-service"]
    port = settings_cls.model_fields["port"].default
    assert not service.get("ports"), "the service must be reachable only through Kong"
    assert [str(port)] == [str(p) for p in service["expose"]]
    env = service["environment"]
    assert env["HOST"] == "0.0.0.0"
    assert int(env["PORT"]) == port
    assert env["AUTH_DISABLED"] == "true"
    assert f"127.0.0.1:{port}/health" in " ".join(service["healthcheck"]["test"])
    assert service["restart"] in {"always", "unless-stopped", "on-failure"}


def test_service_environment_names_real_settings(compose, setting_names):
    unknown = set(compose["services"]["rt-detr-service"]["environment"]) - setting_names
    assert not unknown, f"not service settings (typo?): {unknown}"


def test_models_are_mounted_read_only_where_model_points(compose, settings_cls, repo):
    service = compose["services"]["rt-detr-service"]
    model = PurePosixPath(service["environment"]["MODEL"])
    default_name = PurePosixPath(settings_cls.model_fields["model"].default).name
    assert model.name == default_name
    (models_mount,) = [m for m in mounts(service) if m[1] == str(model.parent)]
    assert models_mount == ("./models", "/app/models", "ro")
    assert (repo / "models").is_dir()


def test_event_history_lives_on_a_named_volume_where_data_dir_points(compose, repo):
    service = compose["services"]["rt-detr-service"]
    data_dir = service["environment"]["DATA_DIR"]
    (mount,) = [m for m in mounts(service) if m[1] == data_dir]
    assert mount[2] == "rw" and mount[0] in compose.get("volumes", {}), mount
    assert f"mkdir -p /app/models {data_dir}" in (repo / "rt-detr-service" / "Dockerfile").read_text()


def test_service_reserves_an_nvidia_gpu(compose):
    devices = compose["services"]["rt-detr-service"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)


def test_kong_is_db_less_with_read_only_config_and_no_admin_port(compose):
    kong = compose["services"]["kong"]
    env = kong["environment"]
    assert env["KONG_DATABASE"] == "off"
    (mount,) = mounts(kong)
    assert mount[1] == env["KONG_DECLARATIVE_CONFIG"] and mount[2] == "ro"
    assert mount[0].endswith("./kong/kong.yml}")
    assert published_ports(kong) == {8000}
    assert env["KONG_PROXY_LISTEN"].endswith(":8000")
    assert env["KONG_ADMIN_LISTEN"].startswith("127.0.0.1:"), "admin API only on the container loopback"


def test_mediamtx_publishes_rtsp_only_and_reads_the_repo_config(compose, mediamtx):
    service = compose["services"]["mediamtx"]
    rtsp_port = int(mediamtx["rtspAddress"].rsplit(":", 1)[1])
    assert published_ports(service) == {rtsp_port}
    api_port = int(mediamtx["apiAddress"].rsplit(":", 1)[1])
    metrics_port = int(mediamtx["metricsAddress"].rsplit(":", 1)[1])
    assert {api_port, metrics_port} <= {int(p) for p in service["expose"]}
    assert ("./mediamtx/mediamtx.yml", "/mediamtx.yml", "ro") in mounts(service)


def test_mediamtx_password_overrides_target_the_right_users(compose, mediamtx):
    env = compose["services"]["mediamtx"]["environment"]
    users = mediamtx["authInternalUsers"]
    for key in env:
        index = int(re.fullmatch(r"MTX_AUTHINTERNALUSERS_(\d+)_PASS", key).group(1))
        assert users[index]["user"] != "any"
    assert users[0]["permissions"][0]["action"] == "publish"
    assert users[1]["permissions"][0]["action"] == "read"


def test_pusher_profile_publishes_to_an_existing_path(compose, mediamtx):
    pusher = compose["services"]["pusher"]
    assert pusher["profiles"] == ["pusher"]
    url = urlsplit(re.sub(r"\$\{[^}]*:-([^}]*)\}", r"\1", pusher["environment"]["PUSH_URL"]))
    assert url.hostname == "mediamtx" and url.hostname in compose["services"]
    assert url.port == int(mediamtx["rtspAddress"].rsplit(":", 1)[1])
    assert url.path.lstrip("/") in mediamtx["paths"]
    assert users_with(mediamtx, "publish").get(url.username) == url.password
    command = " ".join(pusher["command"])
    for flag in ("-re", "-stream_loop -1", "-c copy", "-f rtsp", "-rtsp_transport tcp"):
        assert flag in command


def rtsp_urls_in(text: str) -> list[str]:
    return [u.rstrip(".,;") for u in RTSP_URL.findall(text)]


@pytest.mark.parametrize("source", ["README.md", "docs/deploy.md", "scripts/soak.sh", "scripts/push.sh"])
def test_documented_stream_urls_exist_and_carry_valid_credentials(repo, compose, mediamtx, source):
    text = (repo / source).read_text()
    urls = rtsp_urls_in(text)
    assert urls, f"{source} shows no RTSP URL"
    rtsp_port = int(mediamtx["rtspAddress"].rsplit(":", 1)[1])
    readers, publishers = users_with(mediamtx, "read"), users_with(mediamtx, "publish")
    for raw in urls:
        if "<" in raw or "$" in raw or "***" in raw or "..." in raw or "your-camera" in raw:
            continue  # placeholders and templated URLs
        url = urlsplit(raw)
        if url.hostname not in {"mediamtx", "localhost", "127.0.0.1"}:
            continue  # a camera of the user's own
        if url.hostname == "127.0.0.1" and url.username is None:
            continue  # the GStreamer test camera of `make run`: no MediaMTX, no users
        assert url.port == rtsp_port, raw
        assert mediamtx_path_exists(mediamtx, url.path.lstrip("/")), raw
        if url.hostname == "mediamtx":
            assert url.hostname in compose["services"]
        creds = {**readers, **publishers}
        assert url.username in creds and creds[url.username] == url.password, f"{raw}: bad credentials"


def test_soak_defaults_point_at_kong_and_the_compose_camera(repo, compose, mediamtx):
    soak = (repo / "scripts" / "soak.sh").read_text()
    base = urlsplit(re.search(r'BASE_URL="\$\{BASE_URL:-([^}]*)\}"', soak).group(1))
    assert base.port in published_ports(compose["services"]["kong"])
    default = re.search(r'^STREAM_URL="\$\{STREAM_URL:-(.*)\}"$', soak, re.MULTILINE).group(1)
    # the password part is itself "${MEDIAMTX_READ_PASS:-demo-read}": take its default
    stream = urlsplit(re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", default))
    assert stream.hostname == "mediamtx"
    assert users_with(mediamtx, "read").get(stream.username) == stream.password


def test_mosquitto_is_optional_pinned_on_loopback_and_reads_the_repo_config(compose, repo):
    mosquitto = compose["services"]["mosquitto"]
    assert re.fullmatch(r"eclipse-mosquitto:2\.0\.\d+", mosquitto["image"]), mosquitto["image"]
    assert mosquitto["profiles"] == ["mqtt"], "a broker nobody asked for must not start with `make up`"
    for port in mosquitto.get("ports", []):
        assert str(port).startswith("127.0.0.1:"), f"mosquitto published beyond loopback: {port}"
    (config,) = [m for m in mounts(mosquitto) if m[1] == "/mosquitto/config/mosquitto.conf"]
    assert config[0] == "./mosquitto/mosquitto.conf" and config[2] == "ro"
    lines = [line.split() for line in (repo / "mosquitto" / "mosquitto.conf").read_text().splitlines()]
    settings = {words[0]: words[1:] for words in lines if words and not words[0].startswith("#")}
    assert settings["listener"] == ["1883"] and 1883 in {int(p) for p in mosquitto["expose"]}
    # The service reaches the broker only when asked to: it does not wait for a profile's service.
    assert "mosquitto" not in compose["services"]["rt-detr-service"].get("depends_on", {})


def test_outputs_are_passed_through_to_the_service_and_off_by_default(compose):
    env = compose["services"]["rt-detr-service"]["environment"]
    for name in ("WEBHOOK_URLS", "WEBHOOK_SECRET", "MQTT_URL", "KAFKA_BOOTSTRAP_SERVERS"):
        assert env[name] == f"${{{name}:-}}", f"{name}: pass it through, empty by default"


def default_of(value: str) -> str:
    """The value a compose interpolation gives when no variable is set: `${A:-x${B:-y}z}` is `xyz`."""
    while True:
        replaced = re.sub(r"\$\{\w+:-([^${}]*)\}", r"\1", value)
        if replaced == value:
            return value
        value = replaced


def test_the_service_scales_with_docker_compose(compose):
    """`docker compose up --scale rt-detr-service=N`: nothing in the service may be one of a kind."""
    service = compose["services"]["rt-detr-service"]
    assert "container_name" not in service, "a fixed container name allows one replica"
    assert not service.get("ports"), "a fixed host port allows one replica"
    assert "hostname" not in service, "every replica needs its own host name (the default REPLICA_ID)"
    for name, other in compose["services"].items():
        assert "rt-detr-service" not in str(other.get("links", "")), f"{name}: links pin one replica"


def test_postgres_and_nats_are_pinned_internal_and_ready_before_the_service(compose):
    services = compose["services"]
    # PostgreSQL with pgvector (event search), both versions pinned
    assert re.fullmatch(r"pgvector/pgvector:\d+\.\d+\.\d+-pg\d+", services["postgres"]["image"])
    assert re.fullmatch(r"nats:2\.\d+\.\d+", services["nats"]["image"])
    for name in ("postgres", "nats"):
        assert not services[name].get("ports"), f"{name} must stay inside the compose network"
        assert "profiles" not in services[name], f"every replica needs {name}: it starts with the stack"
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"]
    depends = services["rt-detr-service"]["depends_on"]
    assert depends["postgres"]["condition"] == "service_healthy"
    assert "nats" in depends
    assert "postgres-data" in compose["volumes"]


def test_nats_monitoring_port_is_the_one_it_serves_and_internal(compose):
    nats = compose["services"]["nats"]
    command = nats["command"]
    client = int(command[command.index("--port") + 1])
    monitoring = int(command[command.index("--http_port") + 1])
    assert {client, monitoring} == {int(p) for p in nats["expose"]}
    assert monitoring == 8222 and client == 4222


def test_service_reaches_postgres_and_nats_by_their_compose_names(compose):
    env = compose["services"]["rt-detr-service"]["environment"]
    postgres = compose["services"]["postgres"]["environment"]
    url = urlsplit(default_of(env["DATABASE_URL"]))
    assert url.scheme == "postgresql+psycopg"
    assert url.hostname == "postgres" and url.hostname in compose["services"]
    assert url.port == 5432 and str(url.port) in compose["services"]["postgres"]["expose"]
    assert url.username == postgres["POSTGRES_USER"] and url.path.lstrip("/") == postgres["POSTGRES_DB"]
    # One password for both, from the environment or .env.
    assert url.password == default_of(postgres["POSTGRES_PASSWORD"])
    assert "${POSTGRES_PASSWORD:-" in env["DATABASE_URL"] and "${POSTGRES_PASSWORD:-" in postgres["POSTGRES_PASSWORD"]
    assert env["DATABASE_URL"].startswith("${DATABASE_URL:-"), "an own server stays one variable away"
    bus = urlsplit(default_of(env["BUS_URL"]))
    assert (bus.scheme, bus.hostname, bus.port) == ("nats", "nats", 4222)
    assert env["BUS_URL"].startswith("${BUS_URL:-")


def test_default_passwords_are_marked_for_change(compose):
    env = {**compose["services"]["postgres"]["environment"], **compose["services"]["grafana"]["environment"]}
    for name in ("POSTGRES_PASSWORD", "GF_SECURITY_ADMIN_PASSWORD"):
        assert "change-me" in default_of(env[name]), f"{name}: a public default must say so"


def test_monitoring_is_a_profile_on_loopback(compose):
    for name in ("prometheus", "grafana"):
        service = compose["services"][name]
        assert service["profiles"] == ["monitoring"], f"{name} starts only with --profile monitoring"
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} published beyond loopback: {port}"
        assert re.fullmatch(r"[\w/.-]+:v?\d+\.\d+\.\d+", service["image"]), service["image"]
    assert "prometheus" not in compose["services"]["rt-detr-service"].get("depends_on", {})
