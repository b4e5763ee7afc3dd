"""kong/kong.yml: validity, authentication invariants, plugins and upstream wiring."""

from __future__ import annotations

import re
import shutil
import subprocess
from urllib.parse import urlsplit

import pytest

CONTROL_PREFIX = "/api/v1/video"


def route_matches(route: dict, path: str) -> bool:
    """Kong 3.x path matching: plain paths are prefixes, "~" paths are regexes anchored at the start."""
    for candidate in route.get("paths", []):
        if candidate.startswith("~"):
            if re.match(candidate[1:], path):
                return True
        elif path.startswith(candidate):
            return True
    return False


def all_routes(kong: dict) -> list[dict]:
    return [r for s in kong["services"] for r in s.get("routes", [])]


def plugins_of(kong: dict, route: dict) -> dict[str, dict]:
    """Plugins that apply to a route: its own, its service's and global ones (by name)."""
    found = {}
    for p in kong.get("plugins", []):
        if "route" not in p and "service" not in p:
            found[p["name"]] = p
    for service in kong["services"]:
        if route in service.get("routes", []):
            found.update({p["name"]: p for p in service.get("plugins", [])})
    found.update({p["name"]: p for p in route.get("plugins", [])})
    return {k: v for k, v in found.items() if v.get("enabled", True)}


def every_plugin(kong: dict) -> list[dict]:
    plugins = list(kong.get("plugins", []))
    for service in kong["services"]:
        plugins += service.get("plugins", [])
        for route in service.get("routes", []):
            plugins += route.get("plugins", [])
    for consumer in kong.get("consumers", []):
        plugins += consumer.get("plugins", [])
    return plugins


def test_deck_validates_the_declarative_file(repo):
    deck = shutil.which("deck")
    assert deck, "the `deck` binary is missing: apt-get install -y deck (make test installs it)"
    result = subprocess.run(
        [deck, "validate", "-s", str(repo / "kong" / "kong.yml")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_deck_rejects_a_broken_file(tmp_path):
    """Guards the check above: a dangling route must make deck fail."""
    deck = shutil.which("deck")
    assert deck, "the `deck` binary is missing: apt-get install -y deck"
    broken = tmp_path / "broken.yml"
    broken.write_text('_format_version: "3.0"\nroutes:\n- name: r\n  service: nope\n  paths: [/x]\n')
    assert subprocess.run([deck, "validate", "-s", str(broken)], capture_output=True).returncode != 0


def test_format_version_is_kong_3(kong):
    assert kong["_format_version"] == "3.0"
    assert "_transform" not in kong


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/video/start",
        "/api/v1/video/stop",
        "/api/v1/video/status/abc",
        "/api/v1/video/sessions",
        "/api/v1/video/sessions/abc/zones",
        "/api/v1/events",
        "/api/v1/events/abc/snapshot.jpg",
        "/api/v1/outputs",
    ],
)
def test_every_control_path_is_behind_header_only_key_auth(kong, path):
    matching = [r for r in all_routes(kong) if route_matches(r, path)]
    assert matching, f"no Kong route serves {path}"
    for route in matching:
        plugins = plugins_of(kong, route)
        assert "key-auth" in plugins, f"route {route['name']} serves {path} without key-auth"
        conf = plugins["key-auth"]["config"]
        assert set(conf["key_names"]) == {"apikey", "X-API-Key"}
        assert conf["hide_credentials"] is True
        assert conf["run_on_preflight"] is False
        # Keys in URLs end up in logs and browser history: headers only.
        assert conf.get("key_in_query") is False
        assert conf.get("key_in_body", False) is False
        assert "anonymous" not in conf


def test_control_route_has_rate_limit_cors_and_size_limit(kong):
    route = next(r for r in all_routes(kong) if route_matches(r, CONTROL_PREFIX + "/start"))
    plugins = plugins_of(kong, route)
    assert plugins["rate-limiting"]["config"]["policy"] == "local"
    assert any(plugins["rate-limiting"]["config"].get(k) for k in ("second", "minute", "hour"))
    origins = plugins["cors"]["config"]["origins"]
    assert origins and "*" not in origins, "CORS origins must be explicit"
    assert all(urlsplit(o).scheme in {"http", "https"} and urlsplit(o).netloc for o in origins)
    assert {"apikey", "X-API-Key"} <= set(plugins["cors"]["config"]["headers"])
    assert plugins["request-size-limiting"]["config"]["allowed_payload_size"] > 0


@pytest.mark.parametrize("path", ["/ws/stream/6f1c", "/", "/ui/app.js", "/health"])
def test_open_paths_are_routed_without_api_key(kong, path):
    matching = [r for r in all_routes(kong) if route_matches(r, path)]
    assert matching, f"no Kong route serves {path}"
    for route in matching:
        assert "key-auth" not in plugins_of(kong, route), f"{path} must not need an API key"


@pytest.mark.parametrize("path", ["/metrics", "/ready", "/api/v2/anything", "/admin"])
def test_internal_paths_are_not_routed(kong, path):
    matching = [r["name"] for r in all_routes(kong) if route_matches(r, path)]
    assert not matching, f"{path} must stay inside the compose network, routed by {matching}"


def test_no_global_or_service_wide_plugin_hides_the_per_route_design(kong):
    assert not kong.get("plugins"), "keep plugins on routes so open routes stay open"
    assert not any(s.get("plugins") for s in kong["services"])


def test_plugins_are_bundled_with_the_pinned_kong(kong, kong_ref):
    bundled = set(kong_ref["bundled_plugins"])
    assert "loadbalancing" not in bundled
    unknown = {p["name"] for p in every_plugin(kong)} - bundled
    assert not unknown, f"not bundled with Kong 3.9: {unknown}"


def test_plugin_config_fields_exist_in_the_plugin_schema(kong, kong_ref):
    schemas = kong_ref["plugin_config_fields"]
    for plugin in every_plugin(kong):
        assert plugin["name"] in schemas, f"add the schema fields of {plugin['name']} to the reference data"
        unknown = set(plugin.get("config", {})) - set(schemas[plugin["name"]]["fields"])
        assert not unknown, f"{plugin['name']}: unknown config fields {unknown}"


def test_upstream_balances_on_open_connections_with_an_algorithm_kong_has(kong, kong_ref):
    (upstream,) = kong["upstreams"]
    assert upstream["algorithm"] in kong_ref["upstream_algorithms"]
    # WebSocket viewers stay connected for minutes: balance what each replica holds, not new requests.
    assert upstream["algorithm"] == "least-connections"
    assert "hash_on" not in upstream, "any replica answers any call: nothing is pinned to one"


def test_active_checks_probe_readiness_and_passive_checks_eject_only_crashes(kong):
    (upstream,) = kong["upstreams"]
    checks = upstream["healthchecks"]
    # Several targets: a replica still loading its model (/ready 503) is taken out, the others serve.
    assert checks["active"]["http_path"] == "/ready"
    assert 503 in checks["active"]["unhealthy"]["http_statuses"]
    assert checks["active"]["healthy"]["interval"] > 0 and checks["active"]["unhealthy"]["interval"] > 0
    assert checks["active"]["healthy"]["successes"] > 0, "an ejected replica must come back by itself"
    assert checks["passive"]["unhealthy"]["tcp_failures"] > 0
    # The service answers 502/503/504 about cameras and the model: never a reason to eject it.
    assert not {502, 503, 504} & set(checks["passive"]["unhealthy"].get("http_statuses", []))
    # 202 is a start recorded as pending (issue 17): a healthy answer.
    assert 202 in checks["passive"]["healthy"]["http_statuses"]


def test_the_probed_paths_are_routes_of_the_service():
    from rtdetr_service.web.routes.health import router

    assert {"/ready", "/health"} <= {route.path for route in router.routes}


def test_targets_are_names_that_resolve_to_every_replica(kong):
    (upstream,) = kong["upstreams"]
    for target in upstream["targets"]:
        host = target["target"].rpartition(":")[0]
        # A name, not an address: Kong makes one balancer entry per A record, one per replica.
        assert not re.fullmatch(r"[\d.]+|\[[0-9a-f:]+\]", host), f"{host}: list the service name, not an address"
        assert target["weight"] > 0


def test_kubernetes_target_named_in_the_comments_is_the_headless_service(repo, kong, settings_cls):
    """kong.yml tells Kubernetes users which name to list; it must be a headless Service of deploy/k8s."""
    import yaml

    text = (repo / "kong" / "kong.yml").read_text()
    (name, port) = re.search(r"([a-z0-9-]+)\.<namespace>\.svc\.cluster\.local:(\d+)", text).groups()
    path = repo / "deploy" / "k8s" / "base" / "service.yaml"
    services = {s["metadata"]["name"]: s for s in yaml.safe_load_all(path.read_text())}
    assert name in services, f"{name} is not a Service of {path}"
    spec = services[name]["spec"]
    assert spec.get("clusterIP") == "None", "a ClusterIP Service is one address: Kong would see one target"
    assert int(port) in [p["port"] for p in spec["ports"]]
    assert int(port) == settings_cls.model_fields["port"].default


def test_websocket_viewers_go_through_the_same_service_and_upstream_as_control_calls(kong):
    (service,) = kong["services"]
    routes = {r["name"]: r for r in service["routes"]}
    assert route_matches(routes["video-stream-ws"], "/ws/stream/6f1c")
    assert route_matches(routes["video-control"], CONTROL_PREFIX + "/start")
    assert service["host"] == kong["upstreams"][0]["name"]
    # A start that timed out on one replica must not be replayed on another.
    assert service["retries"] == 0


def test_no_comment_still_says_the_stack_has_one_target(repo):
    text = (repo / "kong" / "kong.yml").read_text()
    assert "ONE target" not in text and "one target" not in text.lower()


def test_upstream_target_is_the_compose_service_on_the_service_port(kong, compose, settings_cls):
    (upstream,) = kong["upstreams"]
    port = settings_cls.model_fields["port"].default
    (target,) = upstream["targets"]
    host, _, target_port = target["target"].rpartition(":")
    assert host in compose["services"], f"target host {host} is not a compose service"
    assert int(target_port) == port
    (service,) = kong["services"]
    assert service["host"] == upstream["name"]
    assert service["port"] == port
    assert str(port) in [str(p) for p in compose["services"][host]["expose"]]


def test_only_demo_credentials_are_committed(kong):
    for consumer in kong.get("consumers", []):
        assert "demo" in consumer.get("tags", []), f"consumer {consumer['username']} is not marked demo"
        for cred in consumer.get("keyauth_credentials", []):
            assert "demo" in cred["key"] and "demo" in cred.get("tags", [])


def test_demo_key_is_the_one_the_soak_script_uses(kong, repo):
    keys = [c["key"] for consumer in kong["consumers"] for c in consumer.get("keyauth_credentials", [])]
    soak = (repo / "scripts" / "soak.sh").read_text()
    default = re.search(r'API_KEY="\$\{API_KEY:-([^}]*)\}"', soak).group(1)
    assert default in keys
