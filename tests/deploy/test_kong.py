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


def test_upstream_is_round_robin_with_active_and_passive_checks_on_liveness(kong):
    (upstream,) = kong["upstreams"]
    assert upstream["algorithm"] == "round-robin"
    checks = upstream["healthchecks"]
    # liveness: with one target a failed readiness probe would close every route, page included
    assert checks["active"]["http_path"] == "/health"
    assert checks["active"]["healthy"]["interval"] > 0 and checks["active"]["unhealthy"]["interval"] > 0
    assert checks["passive"]["unhealthy"]["tcp_failures"] > 0
    # The service answers 502/503/504 about cameras and the model: never a reason to eject it.
    assert not {502, 503, 504} & set(checks["passive"]["unhealthy"].get("http_statuses", []))


def test_single_target_because_sessions_live_in_one_replica(kong):
    (upstream,) = kong["upstreams"]
    assert len(upstream["targets"]) == 1, "sessions are per replica: see docs/deploy.md, Scaling"


def test_upstream_target_is_the_compose_service_on_the_service_port(kong, compose, settings_cls):
    (upstream,) = kong["upstreams"]
    port = settings_cls.model_fields["port"].default
    host, _, target_port = upstream["targets"][0]["target"].rpartition(":")
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
