"""deploy/k8s: every built-in resource valid at a pinned Kubernetes version, the kustomizations
complete, and the pieces wired to each other, to the service's settings and to its metrics."""

from __future__ import annotations

import re
import shutil
import subprocess

import kubernetes_validate
import pytest
import yaml
from promql import metric_names

# The Kubernetes release the manifests are checked against (kubernetes-validate ships its schemas).
KUBERNETES_VERSION = "1.33"
# Custom resources: no schema ships for them, their structure is checked below.
CRD_KINDS = {("keda.sh/v1alpha1", "ScaledObject"), ("monitoring.coreos.com/v1", "ServiceMonitor")}
# Metrics a trigger may read that other exporters publish (NVIDIA DCGM exporter's GPU utilisation).
EXTERNAL_METRICS = {"DCGM_FI_DEV_GPU_UTIL"}
KUSTOMIZATIONS = ["base", "dev"]


def k8s_dir(repo):
    return repo / "deploy" / "k8s"


def kustomization(repo, name: str) -> dict:
    return yaml.safe_load((k8s_dir(repo) / name / "kustomization.yaml").read_text())


def resources_of(repo, name: str) -> list[dict]:
    """What `kubectl kustomize deploy/k8s/<name>` renders: the listed files' documents, bases included."""
    folder = k8s_dir(repo) / name
    docs = []
    for entry in kustomization(repo, name)["resources"]:
        path = (folder / entry).resolve()
        if path.is_dir():
            docs += resources_of(repo, str(path.relative_to(k8s_dir(repo))))
        else:
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def one(docs: list[dict], kind: str, name: str) -> dict:
    (found,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


@pytest.fixture(scope="module")
def base(repo) -> list[dict]:
    return resources_of(repo, "base")


@pytest.fixture(scope="module")
def dev(repo) -> list[dict]:
    return resources_of(repo, "dev")


@pytest.fixture(scope="module")
def deployment(base) -> dict:
    return one(base, "Deployment", "rt-detr-service")


@pytest.fixture(scope="module")
def container(deployment) -> dict:
    (found,) = deployment["spec"]["template"]["spec"]["containers"]
    return found


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_file_of_a_kustomization_is_listed_and_every_listed_one_exists(repo, name):
    folder = k8s_dir(repo) / name
    listed = kustomization(repo, name)["resources"]
    for entry in listed:
        assert (folder / entry).exists(), f"{name}/kustomization.yaml lists {entry}, which does not exist"
    files = {p.name for p in folder.glob("*.yaml")} - {"kustomization.yaml"}
    unlisted = files - set(listed)
    assert not unlisted, f"{name}: files that neither kubectl apply -k nor the validation below would see: {unlisted}"


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_built_in_resources_are_valid_at_the_pinned_kubernetes_version(repo, name):
    checked = 0
    for doc in resources_of(repo, name):
        if (doc["apiVersion"], doc["kind"]) in CRD_KINDS:
            continue
        where = f"{name}: {doc['kind']}/{doc['metadata']['name']}"
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{where}: {error.message} at {'.'.join(map(str, error.path))}")
        except kubernetes_validate.SchemaNotFoundError as error:
            pytest.fail(f"{where}: {error.message} (a custom resource? add it to CRD_KINDS and test it)")
        checked += 1
    assert checked >= 8


def test_the_validation_refuses_a_misspelt_field(deployment):
    """Guards the check above: strict schemas reject what the API server would drop or refuse."""
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    probe = broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    probe["periodSecond"] = probe.pop("periodSeconds")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


@pytest.mark.skipif(
    not shutil.which("kubectl"), reason="kubectl is not installed: the file-by-file reading above stands in"
)
@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_kubectl_kustomize_renders_what_the_tests_read(repo, name):
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(k8s_dir(repo) / name)], capture_output=True, text=True, timeout=60
    )
    assert rendered.returncode == 0, rendered.stderr
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(rendered.stdout) if d)
    assert kinds == sorted((d["kind"], d["metadata"]["name"]) for d in resources_of(repo, name))


def test_the_deployment_asks_for_a_gpu_and_probes_the_service(container, settings_cls):
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) == 1
    (port,) = container["ports"]
    assert port["containerPort"] == settings_cls.model_fields["port"].default
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    # The model loads before liveness applies: without it a slow load is killed and restarted.
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] == "/ready"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] == port["name"]


def test_the_deployment_drains_before_it_is_killed(deployment, container):
    pod = deployment["spec"]["template"]["spec"]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    # preStop, then SIGTERM's hand-over (uvicorn's 5 s and a camera open of OPEN_TIMEOUT_S, 10 s).
    assert pod["terminationGracePeriodSeconds"] >= int(command[1]) + 30
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_the_pod_runs_as_the_images_user(repo, deployment, container):
    dockerfile = (repo / "rt-detr-service" / "Dockerfile").read_text()
    pod = deployment["spec"]["template"]["spec"]["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert f"--uid {pod['runAsUser']}" in dockerfile
    assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_env_comes_from_a_configmap_of_real_settings_and_a_secret(base, dev, container, setting_names):
    refs = {k: v["name"] for source in container["envFrom"] for k, v in source.items()}
    config = one(base, "ConfigMap", refs["configMapRef"])
    unknown = set(config["data"]) - setting_names
    assert not unknown, f"not service settings (typo?): {unknown}"
    secret = one(dev, "Secret", refs["secretRef"])
    assert not [d for d in base if d["kind"] == "Secret"], "no Secret in the base: each cluster brings its own"
    assert set(secret["stringData"]) <= setting_names
    assert "DATABASE_URL" in secret["stringData"] and "DATABASE_URL" not in config["data"]


def test_the_example_secrets_say_so_and_hold_placeholders(repo, dev):
    text = (k8s_dir(repo) / "dev" / "secret.example.yaml").read_text()
    assert text.startswith("# EXAMPLE ONLY")
    for secret in [d for d in dev if d["kind"] == "Secret"]:
        assert "placeholder" in secret["metadata"]["annotations"]["rtdetr/example"]
        for key, value in secret["stringData"].items():
            assert "change-me" in value, f"{secret['metadata']['name']}.{key} is not a marked placeholder"


def test_the_dev_database_and_bus_are_the_ones_the_service_is_given(dev):
    from urllib.parse import urlsplit

    url = urlsplit(one(dev, "Secret", "rt-detr-service-secrets")["stringData"]["DATABASE_URL"])
    postgres = one(dev, "StatefulSet", "postgres")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in postgres["env"]}
    assert url.scheme == "postgresql+psycopg" and url.username == env["POSTGRES_USER"]["value"]
    assert url.path.lstrip("/") == env["POSTGRES_DB"]["value"]
    ref = env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert one(dev, "Secret", ref["name"])["stringData"][ref["key"]] == url.password
    assert url.port in [p["port"] for p in one(dev, "Service", url.hostname)["spec"]["ports"]]
    bus = urlsplit(one(dev, "ConfigMap", "rt-detr-service-config")["data"]["BUS_URL"])
    assert bus.scheme == "nats" and bus.port in [p["port"] for p in one(dev, "Service", bus.hostname)["spec"]["ports"]]


def test_volumes_hold_the_model_read_only_and_a_shared_data_dir(base, container):
    config = one(base, "ConfigMap", "rt-detr-service-config")["data"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    model_parent = config["MODEL"].rsplit("/", 1)[0]
    assert mounts[model_parent]["readOnly"] is True
    assert config["DATA_DIR"] in mounts and not mounts[config["DATA_DIR"]].get("readOnly", False)
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in deployment_volumes(base)}
    data_claim = one(base, "PersistentVolumeClaim", claims[mounts[config["DATA_DIR"]]["name"]])
    # Snapshots written by one replica are read by any, also after their writer died.
    assert data_claim["spec"]["accessModes"] == ["ReadWriteMany"]


def deployment_volumes(base):
    pod = one(base, "Deployment", "rt-detr-service")["spec"]["template"]["spec"]
    return [v for v in pod["volumes"] if "persistentVolumeClaim" in v]


def labels_match(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_services_pdb_and_policy_select_the_pods(base, deployment):
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels_match(deployment["spec"]["selector"]["matchLabels"], pod_labels)
    for kind in ("Service", "PodDisruptionBudget", "NetworkPolicy"):
        for doc in [d for d in base if d["kind"] == kind]:
            spec = doc["spec"]
            selector = spec.get("selector", spec.get("podSelector"))
            selector = selector.get("matchLabels", selector)
            assert labels_match(selector, pod_labels), f"{kind}/{doc['metadata']['name']} selects no pod"
    assert one(base, "PodDisruptionBudget", "rt-detr-service")["spec"]["maxUnavailable"] == 1


def test_the_headless_service_lists_only_ready_pods_on_the_named_port(base, container):
    headless = one(base, "Service", "rt-detr-service-pods")["spec"]
    assert headless["clusterIP"] == "None" and headless["publishNotReadyAddresses"] is False
    names = {p["name"] for p in container["ports"]}
    for service in [d for d in base if d["kind"] == "Service"]:
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in names


def test_the_service_monitor_scrapes_metrics_from_exactly_one_service(base):
    monitor = one(base, "ServiceMonitor", "rt-detr-service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selected = [
        s
        for s in base
        if s["kind"] == "Service" and labels_match(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
    ]
    # Both Services front the same pods: selecting both would scrape every pod twice.
    assert [s["metadata"]["name"] for s in selected] == ["rt-detr-service"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["port"] in {p["name"] for p in selected[0]["spec"]["ports"]}


@pytest.fixture(scope="module")
def scaled(base) -> dict:
    return one(base, "ScaledObject", "rt-detr-service")


def test_keda_scales_the_deployment_within_sane_bounds(scaled, deployment):
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    target = spec["scaleTargetRef"]
    assert (target.get("apiVersion", "apps/v1"), target.get("kind", "Deployment")) == ("apps/v1", "Deployment")
    assert target["name"] == deployment["metadata"]["name"]
    # A camera of a dead or drained replica needs another replica to move to.
    assert 2 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    assert spec["minReplicaCount"] <= deployment["spec"]["replicas"] <= spec["maxReplicaCount"]
    down = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
    assert down["stabilizationWindowSeconds"] >= 300
    if "fallback" in spec:
        # KEDA accepts a fallback only when every trigger is an AverageValue one.
        assert {t["metricType"] for t in spec["triggers"]} == {"AverageValue"}
        assert spec["minReplicaCount"] <= spec["fallback"]["replicas"] <= spec["maxReplicaCount"]


def test_keda_triggers_are_prometheus_queries_with_numeric_thresholds(scaled, base):
    for trigger in scaled["spec"]["triggers"]:
        assert trigger["type"] == "prometheus"
        assert trigger["metricType"] in {"AverageValue", "Value", "Utilization"}
        meta = trigger["metadata"]
        assert meta["serverAddress"].startswith("http") and float(meta["threshold"]) > 0
        assert isinstance(meta["threshold"], str), "KEDA's metadata values are strings"
    sessions = next(t for t in scaled["spec"]["triggers"] if t["name"] == "sessions-per-replica")
    assert metric_names(sessions["metadata"]["query"]) == {"rtdetr_sessions", "rtdetr_sessions_pending"}
    # Sessions per replica: the threshold leaves room below MAX_SESSIONS for cameras moving in.
    max_sessions = int(one(base, "ConfigMap", "rt-detr-service-config")["data"]["MAX_SESSIONS"])
    assert sessions["metricType"] == "AverageValue"
    assert 0 < float(sessions["metadata"]["threshold"]) < max_sessions
    # The ServiceMonitor's job label is the Service's name.
    assert 'job="rt-detr-service"' in sessions["metadata"]["query"]


def test_keda_queries_name_only_metrics_that_exist(scaled, service_metric_names):
    for trigger in scaled["spec"]["triggers"]:
        names = metric_names(trigger["metadata"]["query"])
        unknown = names - service_metric_names - EXTERNAL_METRICS
        assert not unknown, f"trigger {trigger['name']}: {unknown} is not exported by the service"
        assert names, trigger["name"]


def doc_blocks(repo, language: str) -> list[str]:
    text = (repo / "docs" / "deploy.md").read_text()
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


def test_the_docs_show_the_queries_keda_runs(repo, scaled):
    text = (repo / "docs" / "deploy.md").read_text()
    for trigger in scaled["spec"]["triggers"]:
        assert f"`{trigger['metadata']['query']}`" in text, f"docs/deploy.md does not show {trigger['name']}'s query"


def test_the_documented_hpa_alternative_is_valid_and_reads_exported_metrics(repo, service_metric_names):
    blocks = [yaml.safe_load(b) for b in doc_blocks(repo, "yaml")]
    (hpa,) = [b for b in blocks if isinstance(b, dict) and b.get("kind") == "HorizontalPodAutoscaler"]
    kubernetes_validate.validate(hpa, KUBERNETES_VERSION, strict=True)
    (rules,) = [b for b in blocks if isinstance(b, list)]
    (rule,) = rules
    assert hpa["spec"]["metrics"][0]["external"]["metric"]["name"] == rule["name"]["as"]
    query = rule["metricsQuery"].replace("<<.LabelMatchers>>", 'job="rt-detr-service"')
    for text in (rule["seriesQuery"], query):
        assert metric_names(text) and metric_names(text) <= service_metric_names, text
