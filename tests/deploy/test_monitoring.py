"""Prometheus and Grafana of the compose stack: the scrape config finds every replica, and the
dashboard's queries name only metrics the real service exports."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from promql import grafana_variable_metrics, metric_names

# What docs/deploy.md promises the dashboard shows, each by the metrics it needs.
PROMISED = {
    "sessions per replica": {"rtdetr_sessions"},
    "inference fps": {"rtdetr_session_inference_fps"},
    "batch size": {"rtdetr_batch_size_sum", "rtdetr_batch_size_count"},
    "latency p99": {"rtdetr_frame_latency_seconds_bucket"},
    "dropped frames": {"rtdetr_session_frames_dropped_total"},
    "sink drops, failures and restarts": {
        "rtdetr_sink_dropped_total",
        "rtdetr_sink_failed_total",
        "rtdetr_sink_restarts_total",
    },
    "reconnects": {"rtdetr_session_reconnects_total"},
}
# Suffixes of series that only grow: rate() and increase() over anything else mean nothing.
COUNTER_SUFFIXES = ("_total", "_bucket", "_sum", "_count")


@pytest.fixture(scope="module")
def dashboard(repo) -> dict:
    return json.loads((repo / "deploy" / "grafana" / "dashboard.json").read_text())


@pytest.fixture(scope="module")
def prometheus_config(repo) -> dict:
    return yaml.safe_load((repo / "deploy" / "prometheus" / "prometheus.yml").read_text())


def query_panels(dashboard) -> list[dict]:
    return [p for p in dashboard["panels"] if p["type"] not in {"text", "row"}]


def expressions(dashboard) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in query_panels(dashboard) for t in p["targets"]]


def test_every_panel_queries_prometheus_through_the_datasource_variable(dashboard):
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert query_panels(dashboard)
    for panel in query_panels(dashboard):
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["expr"].strip(), f"panel {panel['title']!r}: empty query"
            assert target["datasource"]["uid"] == "${datasource}"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_every_query_names_only_metrics_the_service_exports(dashboard, service_metric_names):
    for title, expr in expressions(dashboard):
        names = metric_names(expr)
        assert names, f"{title}: no metric in {expr!r}"
        unknown = names - service_metric_names
        assert not unknown, f"panel {title!r}: {sorted(unknown)} not in the service's /metrics"
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            unknown = grafana_variable_metrics(variable["query"]["query"]) - service_metric_names
            assert not unknown, f"variable {variable['name']}: {sorted(unknown)} not exported"


def test_the_metric_check_refuses_a_name_the_service_does_not_export(service_metric_names):
    """Guards the check above: a plausible name the service does not export is refused."""
    assert "rtdetr_sessions" in service_metric_names and "rtdetr_sessions_pending" in service_metric_names
    assert "rtdetr_frame_latency_seconds_bucket" in service_metric_names
    assert not metric_names("sum(rtdetr_sessions_waiting)") <= service_metric_names
    assert not metric_names("rate(rtdetr_session_frames_dropped[5m])") <= service_metric_names  # no _total


def test_rates_are_taken_of_counters_only(dashboard):
    for title, expr in expressions(dashboard):
        for inner in re.findall(r"\b(?:rate|irate|increase)\(([^()]*)\)", expr):
            for name in metric_names(inner):
                assert name.endswith(COUNTER_SUFFIXES), f"panel {title!r}: rate of {name}, which is not a counter"


def test_the_dashboard_shows_what_the_docs_promise(dashboard):
    used = set().union(*(metric_names(expr) for _, expr in expressions(dashboard)))
    for subject, names in PROMISED.items():
        assert names <= used, f"no panel shows {subject}"
    latency = [expr for _, expr in expressions(dashboard) if "rtdetr_frame_latency_seconds_bucket" in expr]
    # p99 across a replica's sessions: the buckets summed, keeping `le`.
    assert any(re.search(r"histogram_quantile\(\s*0\.99\s*,", e) and re.search(r"by \([^)]*\ble\b", e) for e in latency)


def test_per_replica_panels_group_by_the_replica_label(dashboard):
    for panel in query_panels(dashboard):
        if "per replica" in panel["title"]:
            assert all("by (instance)" in t["expr"] for t in panel["targets"]), panel["title"]


def test_prometheus_finds_every_replica_by_the_service_name(prometheus_config, compose, kong, settings_cls):
    (job,) = prometheus_config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    (sd,) = job["dns_sd_configs"]
    # One A record per replica of `docker compose up --scale`: the name Kong balances over too.
    assert sd["type"] == "A"
    assert sd["names"] == ["rt-detr-service"] and "rt-detr-service" in compose["services"]
    assert kong["upstreams"][0]["targets"][0]["target"] == f"{sd['names'][0]}:{sd['port']}"
    assert sd["port"] == settings_cls.model_fields["port"].default
    # /metrics is scraped without a key: only where the compose service turns keys off (behind Kong).
    assert compose["services"]["rt-detr-service"]["environment"]["AUTH_DISABLED"] == "true"


def test_compose_mounts_the_prometheus_config_where_prometheus_reads_it(compose):
    service = compose["services"]["prometheus"]
    config = next(a.split("=", 1)[1] for a in service["command"] if a.startswith("--config.file="))
    assert f"./deploy/prometheus/prometheus.yml:{config}:ro" in service["volumes"]


def test_grafana_is_provisioned_with_the_datasource_and_the_dashboard(repo, compose, dashboard):
    grafana = compose["services"]["grafana"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"]}
    assert mounts["/etc/grafana/provisioning"] == "./deploy/grafana/provisioning"
    provisioning = repo / "deploy" / "grafana" / "provisioning"
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    host, port = source["url"].removeprefix("http://").split(":")
    assert host in compose["services"] and port in compose["services"][host]["expose"]
    datasource = next(v for v in dashboard["templating"]["list"] if v["name"] == "datasource")
    assert datasource["current"]["value"] == source["uid"]
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "rtdetr.yml").read_text())["providers"]
    folder = provider["options"]["path"]
    (dashboard_mount,) = [target for target, src in mounts.items() if src == "./deploy/grafana/dashboard.json"]
    assert dashboard_mount.rsplit("/", 1)[0] == folder
