"""deploy/kubernetes: every overlay renders with ``kubectl kustomize``, every manifest
validates against the Kubernetes schemas (and the ServiceMonitor and ScaledObject
against their CRDs' models), and the manifests agree with the gateway's settings."""

from __future__ import annotations

import base64
import re
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from cloudcoil.models.keda.v1alpha1 import ScaledObject
from cloudcoil.models.prometheus_operator.v1 import ServiceMonitor
from pydantic import BaseModel

from gateway.config.settings import Settings
from tests.unit.deploy.helpers import (
    DEPLOY,
    PLACEHOLDER_KEY,
    command_option,
    container_settings,
    drain_window_s,
    gateway_paths,
    tool,
    vllm_metric_names,
)

KUBERNETES_VERSION = "1.33.0"
OVERLAYS = sorted(p.parent.name
                  for p in (DEPLOY / "kubernetes/overlays").glob("*/kustomization.yaml"))
CRDS: dict[tuple[str, str], type[BaseModel]] = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): ServiceMonitor,
    ("keda.sh/v1alpha1", "ScaledObject"): ScaledObject,
}

Manifests = list[dict[str, Any]]


def render(overlay: str) -> Manifests:
    directory = DEPLOY / "kubernetes/overlays" / overlay
    out = subprocess.run([tool("kubectl"), "kustomize", str(directory)],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def manifests(request: pytest.FixtureRequest) -> Manifests:
    return render(request.param)


def one(docs: Manifests, kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} in the rendered overlay"
    return found[0]


def of_kind(docs: Manifests, kind: str) -> Manifests:
    return [d for d in docs if d["kind"] == kind]


def container(workload: dict[str, Any], name: str) -> dict[str, Any]:
    found = [c for c in workload["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    assert found, f"no container {name} in {workload['metadata']['name']}"
    return found[0]


def container_port(c: dict[str, Any], port: int | str) -> int:
    """A probe's or Service's port (a number or a port name) as the container's number."""
    if isinstance(port, int):
        return port
    numbers = [p["containerPort"] for p in c.get("ports", []) if p.get("name") == port]
    assert numbers, f"container {c['name']} has no port named {port}"
    return int(numbers[0])


def secret_value(docs: Manifests, name: str, key: str) -> str | None:
    """A value of a Secret the overlay generates (None: the operator creates it)."""
    for secret in of_kind(docs, "Secret"):
        if secret["metadata"]["name"] == name:
            if key in secret.get("stringData", {}):
                return str(secret["stringData"][key])
            return base64.b64decode(secret["data"][key]).decode()
    return None


def pod_env(docs: Manifests, workload: dict[str, Any], c: dict[str, Any]) -> dict[str, str]:
    """The container's SLUICE_* environment as the kubelet sets it ($(VAR) expanded, the
    namespace from the downward API); a Secret the operator creates stands in as a
    placeholder of the right shape."""
    env: dict[str, str] = {}
    for var in c.get("env", []):
        if "value" in var:
            value = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)),
                           var["value"])
        elif "fieldRef" in var["valueFrom"]:
            path = var["valueFrom"]["fieldRef"]["fieldPath"]
            assert path == "metadata.namespace", f"{var['name']}: {path}"
            value = workload["metadata"].get("namespace", "default")
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            found = secret_value(docs, ref["name"], ref["key"])
            value = found if found is not None else {
                "SLUICE_API_KEYS": f'["{PLACEHOLDER_KEY}"]',
                "SLUICE_REDIS__URL": "rediss://managed.example:6380/0"}[var["name"]]
        env[var["name"]] = value
    return {k: v for k, v in env.items() if k.startswith("SLUICE_")}


def gateway(docs: Manifests, tmp: Path) -> tuple[dict[str, Any], dict[str, Any], Settings]:
    """The gateway Deployment, its container and the settings it loads (its ConfigMap at
    the path SLUICE_CONFIG names, with its environment)."""
    deployment = one(docs, "Deployment", "sluice-gateway")
    c = container(deployment, "gateway")
    env = pod_env(docs, deployment, c)
    config_path = Path(env.pop("SLUICE_CONFIG", "/etc/sluice/sluice.yaml"))
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mounts = [m for m in c["volumeMounts"] if Path(m["mountPath"]) == config_path.parent]
    assert mounts, f"nothing is mounted at {config_path.parent}"
    config_map = one(docs, "ConfigMap", volumes[mounts[0]["name"]]["configMap"]["name"])
    assert config_path.name in config_map["data"], f"the ConfigMap has no {config_path.name}"
    file = tmp / config_path.name
    file.write_text(config_map["data"][config_path.name])
    return deployment, c, container_settings(file, env)


def test_every_overlay_is_found() -> None:
    assert {"gpu", "cpu-demo"} <= set(OVERLAYS)


def test_manifests_validate_against_the_schemas(manifests: Manifests) -> None:
    assert manifests
    for doc in manifests:
        model = CRDS.get((doc["apiVersion"], doc["kind"]))
        if model is None:  # a core kind: Kubernetes' own schemas, unknown fields refused
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
            continue
        parsed = model.model_validate(doc)  # the CRD's model: types and required fields
        # ... and no field the CRD does not declare (the model would drop it silently)
        assert parsed.model_dump(mode="json", by_alias=True, exclude_unset=True) == doc, (
            f"{doc['kind']}/{doc['metadata']['name']} has fields its CRD does not declare")


def test_gateway_listens_where_its_probes_and_service_point(manifests: Manifests,
                                                            tmp_path: Path) -> None:
    deployment, c, settings = gateway(manifests, tmp_path)
    assert settings.host == "0.0.0.0", "a pod's gateway must listen on every interface"
    assert settings.auth_required, "the gateway takes its keys from the Secret"
    ports = {p["containerPort"] for p in c["ports"]}
    assert ports == {settings.port}, f"container ports {ports}, gateway port {settings.port}"
    paths = gateway_paths()
    probes = {kind: c[kind]["httpGet"] for kind in ("livenessProbe", "readinessProbe")}
    assert probes["livenessProbe"]["path"] == "/health"
    assert probes["readinessProbe"]["path"] == "/ready"
    for probe in probes.values():
        assert probe["path"] in paths
        assert container_port(c, probe["port"]) == settings.port
    service = one(manifests, "Service", "sluice-gateway")
    assert service["spec"]["selector"].items() <= \
        deployment["spec"]["template"]["metadata"]["labels"].items()
    for port in service["spec"]["ports"]:
        assert container_port(c, port["targetPort"]) == settings.port


def test_grace_period_outlasts_the_drain(manifests: Manifests, tmp_path: Path) -> None:
    deployment, _, settings = gateway(manifests, tmp_path)
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > drain_window_s(settings), (
        f"terminationGracePeriodSeconds {grace} <= the drain ({drain_window_s(settings)} s)")


def test_replicas_budget_and_autoscaler_agree(manifests: Manifests) -> None:
    deployment = one(manifests, "Deployment", "sluice-gateway")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    pdb = one(manifests, "PodDisruptionBudget", "sluice-gateway")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = one(manifests, "HorizontalPodAutoscaler", "sluice-gateway")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": "sluice-gateway"}
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    # the budget leaves room for one voluntary eviction at the smallest size
    smallest = hpa["spec"]["minReplicas"]
    assert pdb["spec"]["minAvailable"] < smallest <= deployment["spec"]["replicas"]
    assert "cpu" in container(deployment, "gateway")["resources"]["requests"]


def engine_capacity(docs: Manifests, statefulset: dict[str, Any]) -> int:
    """The most engine pods there can be: KEDA's maximum when it scales them."""
    for scaled in of_kind(docs, "ScaledObject"):
        if scaled["spec"]["scaleTargetRef"]["name"] == statefulset["metadata"]["name"]:
            return int(scaled["spec"]["maxReplicaCount"])
    return int(statefulset["spec"]["replicas"])


def engine_listens(statefulset: dict[str, Any]) -> int:
    """The port an engine pod listens on (its --port, else vLLM's 8000), which its
    container declares as http."""
    c = statefulset["spec"]["template"]["spec"]["containers"][0]
    listens = int(command_option([*c.get("command", []), *c.get("args", [])], "--port")
                  or 8000)
    assert container_port(c, "http") == listens
    assert c["readinessProbe"]["httpGet"]["path"] == "/health"
    return listens


def headless_service_of(docs: Manifests, service_name: str) -> dict[str, Any]:
    """The StatefulSet whose pods a headless Service names."""
    service = one(docs, "Service", service_name)
    assert service["spec"]["clusterIP"] == "None", "the engines' Service must be headless"
    for statefulset in of_kind(docs, "StatefulSet"):
        labels = statefulset["spec"]["template"]["metadata"]["labels"]
        if service["spec"]["selector"].items() <= labels.items():
            return statefulset
    raise AssertionError(f"Service {service_name} selects no StatefulSet's pods")


def test_engine_urls_are_engine_pods(manifests: Manifests, tmp_path: Path) -> None:
    deployment, _, settings = gateway(manifests, tmp_path)
    sources = settings.discovery
    engines = settings.resolved_engines()
    assert engines or sources, "the gateway's config lists no engine and no DNS source"
    for engine in engines:
        url = urlsplit(engine.url)
        pod, _, service_name = (url.hostname or "").partition(".")
        set_name, _, ordinal = pod.rpartition("-")
        statefulset = one(manifests, "StatefulSet", set_name)
        assert statefulset["spec"]["serviceName"] == service_name
        assert headless_service_of(manifests, service_name) is statefulset
        assert int(ordinal) < engine_capacity(manifests, statefulset), (
            f"{engine.url}: the StatefulSet never has that many pods")
        # a pod name resolves to the pod itself: the URL's port is the container's
        assert url.port == engine_listens(statefulset), f"{engine.url}: not the engine's port"
    namespace = deployment["metadata"].get("namespace", "default")
    for source in sources:  # A records of a headless Service: one per pod, on source.port
        service_name, _, domain = source.dns_name.partition(".")
        assert domain == f"{namespace}.svc.cluster.local", (
            f"{source.dns_name}: not a Service of the gateway's namespace {namespace}")
        assert source.record in ("A", "AAAA")
        statefulset = headless_service_of(manifests, service_name)
        assert source.port == engine_listens(statefulset), f"{source.dns_name}: port"


def test_gpu_engines_are_vllm_with_lora(manifests: Manifests, tmp_path: Path) -> None:
    _, _, settings = gateway(manifests, tmp_path)
    statefulset = one(manifests, "StatefulSet", "vllm")
    c = statefulset["spec"]["template"]["spec"]["containers"][0]
    if not c["image"].startswith("vllm/vllm-openai:"):
        pytest.skip("this overlay's engines are simulators")
    resources = c["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"]
    assert "--enable-lora" in c["args"]
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    assert env.get("VLLM_ALLOW_RUNTIME_LORA_UPDATING") == "True"
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert "/models" in mounts
    assert settings.lora.roots, "adapter paths are not bound to the engines' volume"
    for root in settings.lora.roots:  # where registered adapters must lie
        assert any(Path(root).is_relative_to(m) for m in mounts), (
            f"lora.roots {root} is not mounted in the engines")


def test_redis_url_names_a_redis_of_the_overlay(manifests: Manifests, tmp_path: Path) -> None:
    _, c, settings = gateway(manifests, tmp_path)
    env = {v["name"]: v for v in c["env"]}
    if "valueFrom" in env.get("SLUICE_REDIS__URL", {}):
        pytest.skip("an external Redis: its URL is the operator's Secret")
    url = env["SLUICE_REDIS__URL"]["value"] if "SLUICE_REDIS__URL" in env else settings.redis.url
    assert url, "the replicas share nothing without Redis"
    for host_port in urlsplit(url).netloc.rpartition("@")[2].split(","):
        host, _, port = host_port.partition(":")
        pod, _, service_name = host.partition(".")
        service = one(manifests, "Service", service_name or pod)
        assert int(port) in {p["port"] for p in service["spec"]["ports"]}, (
            f"{url}: Service {service['metadata']['name']} has no port {port}")
    assert settings.redis.url == url


def test_service_monitors_scrape_metrics(manifests: Manifests, tmp_path: Path) -> None:
    monitors = of_kind(manifests, "ServiceMonitor")
    if not monitors:
        pytest.skip("this overlay has no Prometheus Operator")
    _, _, settings = gateway(manifests, tmp_path)
    services = of_kind(manifests, "Service")
    scraped = set()
    for monitor in monitors:
        selector = monitor["spec"]["selector"]["matchLabels"]
        matched = [s for s in services
                   if selector.items() <= s["metadata"].get("labels", {}).items()]
        assert matched, f"ServiceMonitor {monitor['metadata']['name']} selects no Service"
        for service in matched:
            scraped.add(service["metadata"]["name"])
            names = {p.get("name") for p in service["spec"]["ports"]}
            for endpoint in monitor["spec"]["endpoints"]:
                assert endpoint["port"] in names
                assert endpoint.get("path", "/metrics") == "/metrics"
                if service["metadata"]["name"] == "sluice-gateway":
                    assert endpoint["path"] in gateway_paths()
                    keyless = settings.observability.open or not settings.auth_required
                    assert keyless or "authorization" in endpoint, (
                        "the gateway's /metrics needs a key: the ServiceMonitor sends none")
    assert {"sluice-gateway", "vllm"} <= scraped


def test_engines_scale_on_their_queue(manifests: Manifests) -> None:
    scaled = of_kind(manifests, "ScaledObject")
    if not scaled:
        pytest.skip("this overlay has no KEDA")
    for obj in scaled:
        target = obj["spec"]["scaleTargetRef"]
        one(manifests, target["kind"], target["name"])
        queries = [t["metadata"]["query"] for t in obj["spec"]["triggers"]
                   if t["type"] == "prometheus"]
        assert queries, "the ScaledObject has no Prometheus trigger"
        assert all("vllm:num_requests_waiting" in q for q in queries)
    assert "vllm:num_requests_waiting" in vllm_metric_names()


def test_gateway_environment_names_settings(manifests: Manifests) -> None:
    """A misspelt SLUICE_* variable would be ignored silently: each names a setting."""
    deployment = one(manifests, "Deployment", "sluice-gateway")
    c = container(deployment, "gateway")
    for name in pod_env(manifests, deployment, c):
        if name == "SLUICE_CONFIG":  # the CLI's --config
            continue
        model: Any = Settings
        for part in name.removeprefix("SLUICE_").lower().split("__"):
            fields = model.model_fields
            assert part in fields, f"{name}: {model.__name__} has no field {part}"
            model = fields[part].annotation
