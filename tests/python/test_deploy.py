"""The deployment artifacts: the kustomize base (deploy/kubernetes), the Helm chart
(deploy/helm/shepherd) and the compose file (deploy/compose).

Every Kubernetes object, rendered by the real ``kubectl kustomize`` and ``helm template``, is
validated against the Kubernetes API schemas (``kubernetes-validate``, strict: unknown fields are
errors) of the oldest supported and a recent Kubernetes; the Prometheus Operator objects, which
have no schema there, are checked field by field. Then what matters for Shepherd is asserted:
probes on /healthz and /readyz, a termination grace above shutdown_grace, the preStop sleep,
the security context, unbuffered long-lived ingress for streams, the alert rules equal to
deploy/prometheus/alerts.yml, the config rendered from the chart's values. The compose file is
validated against the Compose Specification schema and its Prometheus config with ``promtool``.

The tools come from ``scripts/deploy-tools.sh`` (helm and kubectl in ``.tools/bin``, the compose
schema in ``.tools/share``, ``kubernetes-validate`` in the venv); ``HELM``, ``KUBECTL`` and
``COMPOSE_SPEC_SCHEMA`` override their paths. One test runs the gateway binary: `shepherd check` on
every config the artifacts ship.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterable

import pytest
import yaml

from conftest import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
KUSTOMIZE = DEPLOY / "kubernetes"
CHART = DEPLOY / "helm" / "shepherd"
REPLICATED_VALUES = CHART / "ci" / "replicated-values.yaml"
COMPOSE_DIR = DEPLOY / "compose"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "shepherd.json"
TOOLS = Path(os.environ.get("SHEPHERD_TOOLS_DIR", REPO_ROOT / ".tools"))
INSTALL_HINT = "run scripts/deploy-tools.sh (scripts/test does)"

# The oldest Kubernetes the manifests support (the preStop `sleep` action) and a recent one.
K8S_VERSIONS = ("1.30.0", "1.35.0")
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}
IMAGE_UID = 65532
RELEASE = "shepherd"

SSE_ANNOTATIONS = {
    "nginx.ingress.kubernetes.io/proxy-buffering": "off",
    "nginx.ingress.kubernetes.io/proxy-request-buffering": "off",
    "nginx.ingress.kubernetes.io/proxy-http-version": "1.1",
}
LONG_TIMEOUT_ANNOTATIONS = (
    "nginx.ingress.kubernetes.io/proxy-read-timeout",
    "nginx.ingress.kubernetes.io/proxy-send-timeout",
)
# A stream may last as long as the config's total timeout (10m in these configs); an hour covers it.
MIN_STREAM_SECONDS = 3600


@pytest.fixture(autouse=True)
def reset_mock():
    """Overrides conftest's autouse fixture: these tests start no mock upstream."""
    return None


# --------------------------------------------------------------------------------------
# Tools
# --------------------------------------------------------------------------------------


def _executable(env: str, default: Path) -> str:
    path = Path(os.environ.get(env) or default)
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"{path.name} not found at {path} (or ${env}): {INSTALL_HINT}", pytrace=False)
    return str(path)


@pytest.fixture(scope="module")
def helm_env(tmp_path_factory) -> dict[str, str]:
    """Helm with its cache, config and data in a temporary folder (nothing in $HOME)."""
    home = tmp_path_factory.mktemp("helm")
    env = dict(os.environ)
    env.update(HELM_CACHE_HOME=str(home / "cache"), HELM_CONFIG_HOME=str(home / "config"),
               HELM_DATA_HOME=str(home / "data"))
    return env


def _helm(helm_env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    helm = _executable("HELM", TOOLS / "bin" / "helm")
    return subprocess.run([helm, *args], capture_output=True, text=True, env=helm_env, timeout=120)


def _helm_template(helm_env: dict[str, str], *args: str) -> list[dict[str, Any]]:
    done = _helm(helm_env, "template", RELEASE, str(CHART), "--namespace", "shepherd", *args)
    assert done.returncode == 0, f"helm template {' '.join(args)} failed:\n{done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def _kubernetes_validate():
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail(f"the Python package kubernetes-validate is missing: {INSTALL_HINT}", pytrace=False)
    return kubernetes_validate


# --------------------------------------------------------------------------------------
# Rendered objects
# --------------------------------------------------------------------------------------

VARIANTS = ("kustomize", "helm-default", "helm-replicated")


@pytest.fixture(scope="module")
def rendered(helm_env) -> dict[str, list[dict[str, Any]]]:
    kubectl = _executable("KUBECTL", TOOLS / "bin" / "kubectl")
    done = subprocess.run([kubectl, "kustomize", str(KUSTOMIZE)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"kubectl kustomize {KUSTOMIZE} failed:\n{done.stderr}"
    return {
        "kustomize": [doc for doc in yaml.safe_load_all(done.stdout) if doc],
        "helm-default": _helm_template(helm_env),
        "helm-replicated": _helm_template(helm_env, "-f", str(REPLICATED_VALUES)),
    }


def _objects(docs: Iterable[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc.get("kind") == kind]


def _one(docs: Iterable[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [doc for doc in _objects(docs, kind) if name is None or doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}{' ' + name if name else ''}, found {len(found)}"
    return found[0]


def _gateway(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The Deployment whose pods run the `shepherd` container."""
    found = [d for d in _objects(docs, "Deployment")
             if any(c["name"] == "shepherd" for c in d["spec"]["template"]["spec"]["containers"])]
    assert len(found) == 1, f"expected one gateway Deployment, found {len(found)}"
    return found[0]


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "shepherd")


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _config_of(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The shepherd.yaml the gateway pods mount, parsed."""
    deployment = _gateway(docs)
    container = _container(deployment)
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    path = env.get("SHEPHERD_CONFIG")
    assert path, "the gateway container sets no SHEPHERD_CONFIG"
    mount = next((m for m in container["volumeMounts"] if path.startswith(m["mountPath"].rstrip("/") + "/")), None)
    assert mount, f"SHEPHERD_CONFIG={path} is on no volume mount"
    volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    assert "configMap" in volume, f"the config volume {mount['name']} is not a ConfigMap"
    configmap = _one(docs, "ConfigMap", volume["configMap"]["name"])
    key = path[len(mount["mountPath"].rstrip("/")) + 1:]
    assert key in configmap.get("data", {}), f"ConfigMap {configmap['metadata']['name']} has no {key}"
    config = yaml.safe_load(configmap["data"][key])
    assert isinstance(config, dict) and "server" in config, f"{key} is not a Shepherd config"
    return config


def _variables(node: Any) -> set[str]:
    """The environment variables a config reads: ${VAR} in its values (not ${VAR:-default})."""
    if isinstance(node, dict):
        return set().union(*map(_variables, node.values())) if node else set()
    if isinstance(node, list):
        return set().union(*map(_variables, node)) if node else set()
    return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", node)) if isinstance(node, str) else set()


def _seconds(duration: str) -> float:
    """A humantime duration of the config ("30s", "1m30s", "500ms") in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+)\s*(ms|s|m|h)", str(duration))
    assert parts and "".join(n + u for n, u in parts) == str(duration).replace(" ", ""), f"duration {duration!r}"
    return sum(int(n) * units[u] for n, u in parts)


def _port(listen: str) -> int:
    return int(str(listen).rsplit(":", 1)[1])


def _nginx_size(size: str) -> int:
    m = re.fullmatch(r"(\d+)([kKmMgG]?)", str(size))
    assert m, f"nginx size {size!r}"
    return int(m.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[m.group(2).lower()]


def _config_size(size: str) -> int:
    m = re.fullmatch(r"(\d+)\s*(B|KiB|MiB|GiB|KB|MB|GB)?", str(size))
    assert m, f"size {size!r}"
    factor = {None: 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "KB": 1000, "MB": 10**6, "GB": 10**9}
    return int(m.group(1)) * factor[m.group(2)]


# --------------------------------------------------------------------------------------
# Helm lint, schemas
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("values", [None, REPLICATED_VALUES], ids=["default", "replicated"])
def test_helm_lint_is_clean(helm_env, values):
    args = ["lint", "--strict", str(CHART)] + (["-f", str(values)] if values else [])
    done = _helm(helm_env, *args)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "0 chart(s) failed" in output, output
    assert "[WARNING]" not in output and "[ERROR]" not in output, output


def _check_crd(doc: dict[str, Any]) -> None:
    """The Prometheus Operator objects, structurally (kubernetes-validate has no CRD schemas)."""
    name = f"{doc['kind']} {doc.get('metadata', {}).get('name')}"
    assert set(doc) <= {"apiVersion", "kind", "metadata", "spec"}, f"{name}: unexpected top-level fields"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"]), name
    spec = doc["spec"]
    if doc["kind"] == "ServiceMonitor":
        assert set(spec) <= {"selector", "endpoints", "namespaceSelector", "jobLabel", "targetLabels"}, name
        assert spec["selector"]["matchLabels"], f"{name}: empty selector"
        assert spec["endpoints"], f"{name}: no endpoints"
        for endpoint in spec["endpoints"]:
            assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme", "honorLabels"}, name
            assert isinstance(endpoint["port"], str) and endpoint["port"], f"{name}: an endpoint names no port"
            for field in ("interval", "scrapeTimeout"):
                if field in endpoint:
                    assert re.fullmatch(r"(\d+(ms|s|m|h))+", endpoint[field]), f"{name}: {field}"
    else:
        assert set(spec) == {"groups"}, f"{name}: spec must hold groups only"
        for group in spec["groups"]:
            assert isinstance(group["name"], str) and group["rules"], f"{name}: group {group}"
            for rule in group["rules"]:
                assert ("alert" in rule) != ("record" in rule), f"{name}: rule {rule}"
                assert isinstance(rule["expr"], (str, int)), f"{name}: rule {rule}"
                assert set(rule) <= {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}
                for field in ("labels", "annotations"):
                    assert all(isinstance(v, str) for v in rule.get(field, {}).values()), f"{name}: {field}"


def _validate_all(docs: list[dict[str, Any]], what: str) -> None:
    kv = _kubernetes_validate()
    problems = []
    for doc in docs:
        name = f"{what}: {doc.get('kind')} {doc.get('metadata', {}).get('name')}"
        if (doc.get("apiVersion"), doc.get("kind")) in CRD_KINDS:
            _check_crd(doc)
            continue
        for version in K8S_VERSIONS:
            try:
                kv.validate(doc, version, strict=True)
            except kv.SchemaNotFoundError:
                problems.append(f"{name}: no schema in Kubernetes {version}")
            except kv.ValidationError as e:
                problems.append(f"{name} (Kubernetes {version}): {e}")
            except Exception as e:  # e.g. a kubernetes-validate without this version's schemas
                problems.append(f"{name} (Kubernetes {version}): {type(e).__name__}: {e} ({INSTALL_HINT})")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_object_validates_against_the_kubernetes_schemas(rendered, variant):
    docs = rendered[variant]
    assert docs
    _validate_all(docs, variant)


def test_the_secret_example_validates_and_feeds_every_variable_of_the_kustomize_config(rendered):
    secret = yaml.safe_load((KUSTOMIZE / "secret.example.yaml").read_text())
    _validate_all([secret], "secret.example.yaml")
    text = (KUSTOMIZE / "secret.example.yaml").read_text()
    assert "EXAMPLE ONLY" in text and "placeholder" in text
    assert all("CHANGE-ME" in str(v) for v in secret["stringData"].values())
    # The pods read this Secret, and it holds every ${VAR} of the config.
    container = _container(_gateway(rendered["kustomize"]))
    assert {"secretRef": {"name": secret["metadata"]["name"]}} in container["envFrom"]
    variables = _variables(yaml.safe_load((KUSTOMIZE / "shepherd.yaml").read_text()))
    assert variables and variables <= set(secret["stringData"]), variables - set(secret["stringData"])


def test_the_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((KUSTOMIZE / "kustomization.yaml").read_text())
    used = set(kustomization["resources"])
    used |= {f for gen in kustomization.get("configMapGenerator", []) for f in gen.get("files", [])}
    present = {p.name for p in KUSTOMIZE.glob("*.yaml")} - {"kustomization.yaml"}
    assert present - used == {"secret.example.yaml"}, f"not in kustomization.yaml: {present - used}"
    assert used <= present, f"listed but missing: {used - present}"


# --------------------------------------------------------------------------------------
# The gateway's Deployment, Service and config
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_probes_hit_healthz_and_readyz_on_the_api_port(rendered, variant):
    docs = rendered[variant]
    config = _config_of(docs)
    container = _container(_gateway(docs))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    api_port = _port(config["server"]["listen"])
    assert not config["server"]["listen"].startswith("127."), "the API must listen beyond loopback"
    assert ports["http"] == api_port

    def target(probe: dict[str, Any]) -> tuple[str, int]:
        get = probe["httpGet"]
        port = get["port"]
        return get["path"], ports[port] if isinstance(port, str) else port

    assert target(container["livenessProbe"]) == ("/healthz", api_port)
    assert target(container["readinessProbe"]) == ("/readyz", api_port)
    # A shorter period on readiness: a draining pod leaves the endpoints quickly.
    assert container["readinessProbe"]["periodSeconds"] <= container["livenessProbe"]["periodSeconds"]
    telemetry = config.get("telemetry", {})
    if telemetry.get("metrics_listen"):
        assert ports["metrics"] == _port(telemetry["metrics_listen"])
    if config["server"].get("admin_listen"):
        assert ports["admin"] == _port(config["server"]["admin_listen"])


@pytest.mark.parametrize("variant", VARIANTS)
def test_termination_grace_covers_the_prestop_sleep_and_shutdown_grace(rendered, variant):
    docs = rendered[variant]
    config = _config_of(docs)
    pod = _gateway(docs)["spec"]["template"]["spec"]
    container = _container(_gateway(docs))
    pre_stop = container["lifecycle"]["preStop"]
    # The image has no shell: a sleep action, not `exec: sh -c "sleep 5"`.
    assert set(pre_stop) == {"sleep"}, pre_stop
    sleep = pre_stop["sleep"]["seconds"]
    assert sleep >= 1
    grace = _seconds(config["server"].get("shutdown_grace", "30s"))
    assert pod["terminationGracePeriodSeconds"] > sleep + grace, (pod["terminationGracePeriodSeconds"], sleep, grace)


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_pods_run_locked_down(rendered, variant):
    deployment = _gateway(rendered[variant])
    pod = deployment["spec"]["template"]["spec"]
    container = _container(deployment)
    psc, csc = pod["securityContext"], container["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] == IMAGE_UID
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert csc["readOnlyRootFilesystem"] is True
    assert csc["allowPrivilegeEscalation"] is False
    assert csc["capabilities"]["drop"] == ["ALL"] and not csc["capabilities"].get("add")
    assert pod["automountServiceAccountToken"] is False
    # A writable /tmp on a read-only root.
    volumes = {v["name"]: v for v in pod["volumes"]}
    tmp = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
    assert "emptyDir" in volumes[tmp["name"]]
    # No command override: the image's entrypoint is `shepherd serve`.
    assert "command" not in container and "args" not in container
    resources = container["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"] and resources["limits"]["memory"]
    assert container["image"] == "ghcr.io/shepherd-gateway/shepherd:0.1.0"


@pytest.mark.parametrize("variant", VARIANTS)
def test_pods_spread_over_zones_and_nodes(rendered, variant):
    deployment = _gateway(rendered[variant])
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    constraints = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    keys = {c["topologyKey"] for c in constraints}
    assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    for c in constraints:
        assert c["maxSkew"] == 1 and _selects(c["labelSelector"]["matchLabels"], labels)


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_service_pdb_and_hpa_point_at_the_gateway(rendered, variant):
    docs = rendered[variant]
    deployment = _gateway(docs)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert _selects(deployment["spec"]["selector"]["matchLabels"], labels)
    services = [s for s in _objects(docs, "Service") if _selects(s["spec"]["selector"], labels)]
    assert len(services) == 1
    service_ports = {p["name"]: p for p in services[0]["spec"]["ports"]}
    assert service_ports["http"]["targetPort"] == "http"
    pdb = _one(docs, "PodDisruptionBudget")
    assert _selects(pdb["spec"]["selector"]["matchLabels"], labels)
    assert pdb["spec"]["maxUnavailable"] == 1
    hpas = _objects(docs, "HorizontalPodAutoscaler")
    if variant == "helm-default":
        assert not hpas and deployment["spec"]["replicas"] == 1
        return
    hpa = _one(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": deployment["metadata"]["name"]}
    assert hpa["spec"]["minReplicas"] == 3 and hpa["spec"]["maxReplicas"] > 3
    assert {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}} \
        in hpa["spec"]["metrics"]
    # The HPA owns the count: a `replicas` field would reset it on every apply.
    assert "replicas" not in deployment["spec"]


@pytest.mark.parametrize("variant", ["kustomize", "helm-replicated"])
def test_replicas_share_state_through_redis_and_postgresql(rendered, variant):
    docs = rendered[variant]
    state = _config_of(docs)["state"]
    assert re.fullmatch(r"redis://[a-z0-9.-]+:6379", state["redis"]), state
    # PostgreSQL, from the Secret (the URL holds a password).
    assert state["database"] == "${SHEPHERD_DATABASE_URL}"
    assert state["on_redis_failure"] in ("open", "closed")
    assert _config_of(docs)["cache"]["backend"] == "redis"


def test_the_kustomize_redis_is_the_one_the_config_names(rendered):
    docs = rendered["kustomize"]
    host = re.match(r"redis://([^:/]+):(\d+)", _config_of(docs)["state"]["redis"])
    service = _one(docs, "Service", host.group(1))
    assert int(host.group(2)) in [p["port"] for p in service["spec"]["ports"]]
    redis = next(d for d in _objects(docs, "Deployment") if _selects(service["spec"]["selector"],
                                                                       d["spec"]["template"]["metadata"]["labels"]))
    pod = redis["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True and pod["securityContext"]["runAsNonRoot"]
    # Its config: bounded memory, least recently used keys evicted, nothing written to disk.
    conf_volume = next(v for v in pod["volumes"] if "configMap" in v)
    conf = _one(docs, "ConfigMap", conf_volume["configMap"]["name"])["data"]["redis.conf"]
    settings = dict(line.split(None, 1) for line in conf.splitlines() if line.strip())
    assert settings["maxmemory-policy"] == "allkeys-lru"
    assert settings["maxmemory"] == "200mb" and settings["appendonly"] == "no" and settings["save"] == '""'
    assert any(a.endswith("redis.conf") for a in container["args"])


def _coalesce(base: Any, override: Any) -> Any:
    """Helm's merge of a values file over the chart's: maps merge, null deletes, lists replace."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = copy.deepcopy(base)
        for key, value in override.items():
            if value is None:
                out.pop(key, None)
            else:
                out[key] = _coalesce(out.get(key), value)
        return out
    return copy.deepcopy(override)


def test_the_chart_renders_its_config_values_into_the_configmap(rendered):
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    replicated = yaml.safe_load(REPLICATED_VALUES.read_text())
    assert _config_of(rendered["helm-default"]) == defaults["config"]
    config = _config_of(rendered["helm-replicated"])
    assert config == _coalesce(defaults["config"], replicated["config"])
    # What the replicated values set, as written (numbers stay integers, not 2e+06).
    assert config["state"]["redis"] == replicated["config"]["state"]["redis"]
    assert config["keys"][0]["limits"]["tpm"] == 2000000
    assert config["server"]["admin_listen"] == "0.0.0.0:8081"
    # The demo provider and model of the defaults are dropped.
    assert "demo" not in config["providers"] and "mock-gpt" not in config["models"]
    assert set(config["providers"]) == {"openai", "anthropic"}


def test_the_default_chart_config_needs_no_secret(rendered):
    """The default install starts as it is: every ${VAR} of its config has a default."""
    docs = rendered["helm-default"]
    text = yaml.safe_dump(_config_of(docs))
    variables = re.findall(r"\$\{([^}]*)\}", text)
    assert variables and all(":-" in v for v in variables), variables
    assert _config_of(docs)["state"]["database"].startswith("sqlite:///data/")
    pod = _gateway(docs)["spec"]["template"]["spec"]
    data = next(m for m in _container(_gateway(docs))["volumeMounts"] if m["mountPath"] == "/data")
    assert any(v["name"] == data["name"] for v in pod["volumes"])
    assert "envFrom" not in _container(_gateway(docs))


def test_the_replicated_chart_reads_its_secret(rendered):
    container = _container(_gateway(rendered["helm-replicated"]))
    replicated = yaml.safe_load(REPLICATED_VALUES.read_text())
    assert container["envFrom"] == [{"secretRef": {"name": replicated["secrets"]["existingSecret"]}}]


def test_a_config_change_rolls_the_pods(helm_env, rendered):
    before = _gateway(rendered["helm-default"])["spec"]["template"]["metadata"]["annotations"]
    docs = _helm_template(helm_env, "--set", "config.server.shutdown_grace=60s")
    after = _gateway(docs)["spec"]["template"]["metadata"]["annotations"]
    assert re.fullmatch(r"[0-9a-f]{64}", before["checksum/config"])
    assert after["checksum/config"] != before["checksum/config"]
    # And the termination grace follows shutdown_grace: 60 + the 5 s preStop sleep + 10.
    assert _gateway(docs)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 75
    # A Secret made by the chart rolls them too.
    docs = _helm_template(helm_env, "--set", "secrets.values.SHEPHERD_DEMO_KEY=sk-shepherd-other")
    annotations = _gateway(docs)["spec"]["template"]["metadata"]["annotations"]
    assert re.fullmatch(r"[0-9a-f]{64}", annotations["checksum/secret"])
    secret = _one(docs, "Secret")
    assert secret["stringData"] == {"SHEPHERD_DEMO_KEY": "sk-shepherd-other"}
    assert {"secretRef": {"name": secret["metadata"]["name"]}} in _container(_gateway(docs))["envFrom"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "replicaCount=3"], "config.state.redis"),
        (["--set", "autoscaling.enabled=true", "--set", "config.state.redis=redis://r:6379"], "PostgreSQL"),
        (["--set", "terminationGracePeriodSeconds=30"], "must be above shutdown_grace"),
        (["--set", "config.server.listen=127.0.0.1:8080"], "config.server.listen"),
    ],
    ids=["replicas-without-redis", "replicas-on-sqlite", "grace-too-short", "loopback-listen"],
)
def test_the_chart_refuses_unsafe_values(helm_env, args, message):
    done = _helm(helm_env, "template", RELEASE, str(CHART), *args)
    assert done.returncode != 0, f"helm template {args} rendered"
    assert message in done.stderr, done.stderr


# --------------------------------------------------------------------------------------
# Ingress, monitoring, network policy
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["kustomize", "helm-replicated"])
def test_the_ingress_streams_unbuffered_with_long_reads(rendered, variant):
    docs = rendered[variant]
    ingress = _one(docs, "Ingress")
    annotations = ingress["metadata"]["annotations"]
    for key, value in SSE_ANNOTATIONS.items():
        assert annotations.get(key) == value, f"{key}: {annotations.get(key)!r}, want {value!r}"
    for key in LONG_TIMEOUT_ANNOTATIONS:
        assert int(annotations[key]) >= MIN_STREAM_SECONDS, f"{key}: {annotations[key]}"
    config = _config_of(docs)
    # Not below the gateway's own body limit (the gateway answers 413 with its own error).
    assert _nginx_size(annotations["nginx.ingress.kubernetes.io/proxy-body-size"]) >= \
        _config_size(config["server"]["max_body"])
    assert MIN_STREAM_SECONDS >= _seconds(config["server"]["timeouts"]["total"])
    assert ingress["spec"]["ingressClassName"] == "nginx"
    service = _one(docs, "Service", ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"])
    for rule in ingress["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["name"] == service["metadata"]["name"] and backend["port"] == {"name": "http"}
    assert ingress["spec"]["tls"][0]["hosts"] == [ingress["spec"]["rules"][0]["host"]]


def test_the_chart_ingress_defaults_are_the_streaming_ones():
    annotations = yaml.safe_load((CHART / "values.yaml").read_text())["ingress"]["annotations"]
    for key, value in SSE_ANNOTATIONS.items():
        assert annotations[key] == value
    for key in LONG_TIMEOUT_ANNOTATIONS:
        assert int(annotations[key]) >= MIN_STREAM_SECONDS


def _alert_groups() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    assert sum(len(g["rules"]) for g in groups) == 9
    return groups


@pytest.mark.parametrize("variant", ["kustomize", "helm-replicated"])
def test_the_prometheus_rule_carries_exactly_the_alert_rules(rendered, variant):
    rule = _one(rendered[variant], "PrometheusRule")
    assert rule["spec"]["groups"] == _alert_groups(), (
        "the PrometheusRule differs from deploy/prometheus/alerts.yml: regenerate "
        "deploy/kubernetes/prometheusrule.yaml (command in its header) and copy alerts.yml to "
        "deploy/helm/shepherd/files/alerts.yml")


def test_the_chart_ships_a_true_copy_of_the_alert_rules():
    assert (CHART / "files" / "alerts.yml").read_bytes() == ALERTS.read_bytes(), (
        "cp deploy/prometheus/alerts.yml deploy/helm/shepherd/files/alerts.yml")


@pytest.mark.parametrize("variant", ["kustomize", "helm-replicated"])
def test_the_service_monitor_scrapes_the_metrics_listener(rendered, variant):
    docs = rendered[variant]
    config = _config_of(docs)
    monitor = _one(docs, "ServiceMonitor")
    services = [s for s in _objects(docs, "Service")
                if _selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
    assert len(services) == 1, "the ServiceMonitor must select exactly the gateway's Service"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    port = next(p for p in services[0]["spec"]["ports"] if p["name"] == endpoint["port"])
    container_ports = {p["name"]: p["containerPort"] for p in _container(_gateway(docs))["ports"]}
    assert container_ports[port["targetPort"]] == _port(config["telemetry"]["metrics_listen"])
    assert config["telemetry"]["metrics"] is True


def _peer_namespaces(rule: dict[str, Any]) -> set[str]:
    return {p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
            for p in rule.get("from", []) if "namespaceSelector" in p}


@pytest.mark.parametrize("variant", ["kustomize", "helm-replicated"])
def test_the_network_policy_lets_in_only_the_ingress_and_monitoring(rendered, variant):
    docs = rendered[variant]
    config = _config_of(docs)
    labels = _gateway(docs)["spec"]["template"]["metadata"]["labels"]
    (policy,) = [p for p in _objects(docs, "NetworkPolicy") if _selects(p["spec"]["podSelector"]["matchLabels"], labels)]
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    allowed = {}
    for rule in policy["spec"]["ingress"]:
        assert rule.get("from"), "an ingress rule open to every source"
        for port in rule["ports"]:
            allowed.setdefault(port["port"], set()).update(_peer_namespaces(rule))
    assert allowed == {
        _port(config["server"]["listen"]): {"ingress-nginx"},
        _port(config["telemetry"]["metrics_listen"]): {"monitoring"},
    }
    egress = {(p["port"], p.get("protocol", "TCP")) for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert egress == {(53, "UDP"), (53, "TCP"), (6379, "TCP"), (5432, "TCP"), (443, "TCP")}


# --------------------------------------------------------------------------------------
# Compose
# --------------------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    return yaml.safe_load((COMPOSE_DIR / "compose.yaml").read_text())


def _compose_validator():
    from jsonschema import Draft201909Validator

    path = Path(os.environ.get("COMPOSE_SPEC_SCHEMA") or TOOLS / "share" / "compose_spec.json")
    if not path.is_file():
        pytest.fail(f"the Compose Specification schema is not at {path} (or $COMPOSE_SPEC_SCHEMA): {INSTALL_HINT}",
                    pytrace=False)
    schema = json.loads(path.read_text())
    Draft201909Validator.check_schema(schema)
    return Draft201909Validator(schema)


def test_the_compose_file_follows_the_compose_specification():
    validator = _compose_validator()
    compose = _compose()
    errors = [f"at {'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert not errors, "\n".join(errors)
    # The schema is strict: a misspelt field is caught.
    broken = copy.deepcopy(compose)
    broken["services"]["shepherd"]["healthchek"] = broken["services"]["shepherd"]["healthcheck"]
    assert list(validator.iter_errors(broken)), "the compose schema accepted an unknown field"


def test_compose_services_wait_for_healthy_dependencies():
    services = _compose()["services"]
    assert set(services) == {"shepherd", "redis", "postgres", "prometheus", "grafana"}
    shepherd = services["shepherd"]
    # The image has neither a shell nor curl: its own binary probes readiness.
    assert shepherd["healthcheck"]["test"] == ["CMD", "shepherd", "health", "http://127.0.0.1:8080/readyz"]
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert services["postgres"]["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    assert shepherd["depends_on"] == {"redis": {"condition": "service_healthy"},
                                      "postgres": {"condition": "service_healthy"}}
    command = services["redis"]["command"]
    assert command[command.index("--maxmemory-policy") + 1] == "allkeys-lru"


def test_compose_shepherd_is_locked_down_and_drains_on_stop():
    shepherd = _compose()["services"]["shepherd"]
    config_path = shepherd["environment"]["SHEPHERD_CONFIG"]
    mounts = dict(reversed(v.rsplit(":", 2)[:2]) for v in shepherd["volumes"])
    assert config_path in mounts, "SHEPHERD_CONFIG is not mounted"
    config = yaml.safe_load((COMPOSE_DIR / mounts[config_path]).read_text())
    assert _seconds(shepherd["stop_grace_period"]) > _seconds(config["server"]["shutdown_grace"])
    assert shepherd["user"] == f"{IMAGE_UID}:{IMAGE_UID}" and shepherd["read_only"] is True
    assert shepherd["cap_drop"] == ["ALL"] and "no-new-privileges:true" in shepherd["security_opt"]
    assert shepherd["ports"] == [f"127.0.0.1:{_port(config['server']['listen'])}:{_port(config['server']['listen'])}"]
    # Shared state on the compose services, the database URL from the environment.
    assert config["state"]["redis"] == "redis://redis:6379"
    assert config["state"]["database"] == "${SHEPHERD_DATABASE_URL}"
    assert "@postgres:5432/" in shepherd["environment"]["SHEPHERD_DATABASE_URL"]
    # Every ${VAR} of the config is in the service's environment.
    variables = _variables(config)
    assert variables <= set(shepherd["environment"]), variables - set(shepherd["environment"])


def test_compose_keeps_redis_and_postgres_on_an_internal_network():
    compose = _compose()
    assert compose["networks"]["backend"]["internal"] is True
    for name in ("redis", "postgres"):
        service = compose["services"][name]
        assert service["networks"] == ["backend"] and "ports" not in service
    for name in ("shepherd", "prometheus", "grafana"):
        assert "backend" in compose["services"][name]["networks"]
        assert all(p.startswith("127.0.0.1:") for p in compose["services"][name]["ports"])


def test_every_compose_bind_mount_exists():
    for name, service in _compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (COMPOSE_DIR / source).exists(), f"{name}: {source} does not exist"


def _mount_target(service: dict[str, Any], source: Path) -> str:
    for volume in service["volumes"]:
        src, target = volume.split(":")[:2]
        if src.startswith(".") and (COMPOSE_DIR / src).resolve() == source.resolve():
            return target
    raise AssertionError(f"{source} is not mounted")


def test_compose_prometheus_config_passes_promtool_and_loads_the_repository_alerts():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("`promtool` not found: install Debian's `prometheus` package (scripts/test does)")
    config_file = COMPOSE_DIR / "prometheus.yml"
    done = subprocess.run([promtool, "check", "config", str(config_file)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 9 rules found" in done.stdout, done.stdout
    config = yaml.safe_load(config_file.read_text())
    (rule_file,) = config["rule_files"]
    # In the repository: the rule file is deploy/prometheus/alerts.yml...
    assert (config_file.parent / rule_file).resolve() == ALERTS.resolve()
    # ...and in the container, where compose mounts both with the same relative layout.
    prometheus = _compose()["services"]["prometheus"]
    config_target = _mount_target(prometheus, config_file)
    assert f"--config.file={config_target}" in prometheus["command"]
    assert os.path.normpath(os.path.join(os.path.dirname(config_target), rule_file)) == \
        _mount_target(prometheus, ALERTS)
    # It scrapes the metrics listener of the compose config.
    shepherd_config = yaml.safe_load((COMPOSE_DIR / "shepherd.yaml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "shepherd"]
    assert job["static_configs"][0]["targets"] == [f"shepherd:{_port(shepherd_config['telemetry']['metrics_listen'])}"]


def test_compose_grafana_provisions_the_datasource_and_the_dashboard():
    grafana = _compose()["services"]["grafana"]
    provisioning = COMPOSE_DIR / "grafana" / "provisioning"
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    assert source["url"] == "http://prometheus:9090"
    assert _mount_target(grafana, provisioning / "datasources") == "/etc/grafana/provisioning/datasources"
    assert _mount_target(grafana, provisioning / "dashboards") == "/etc/grafana/provisioning/dashboards"
    dashboards = yaml.safe_load((provisioning / "dashboards" / "shepherd.yaml").read_text())
    (provider,) = dashboards["providers"]
    dashboard_target = _mount_target(grafana, DASHBOARD)
    assert os.path.dirname(dashboard_target) == provider["options"]["path"]
    assert grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == dashboard_target
    assert json.loads(DASHBOARD.read_text())["uid"] == "shepherd-gateway"


# --------------------------------------------------------------------------------------
# The guide
# --------------------------------------------------------------------------------------


def test_the_deploy_guide_names_real_files_and_commands():
    guide = (REPO_ROOT / "docs" / "deploy.md").read_text()
    for command in ("kubectl apply -k deploy/kubernetes", "helm upgrade --install",
                    "-f deploy/helm/shepherd/ci/replicated-values.yaml", "docker compose up -d",
                    "podman compose up -d"):
        assert command in guide, command
    paths = set(re.findall(r"\b((?:deploy|scripts|examples|docs)/[A-Za-z0-9_./-]*[A-Za-z0-9_])", guide))
    assert len(paths) >= 10
    made_by_the_user = {"deploy/compose/.env"}
    missing = sorted(p for p in paths - made_by_the_user if not (REPO_ROOT / p).exists())
    assert not missing, f"docs/deploy.md names missing paths: {missing}"


# --------------------------------------------------------------------------------------
# The gateway accepts every config the artifacts ship
# --------------------------------------------------------------------------------------

def _env_for(text: str) -> dict[str, str]:
    """A value for every ${VAR} the config reads: a PostgreSQL URL for database URLs, else a
    long placeholder (secrets must be at least 16 characters)."""
    env = dict(os.environ)
    for name in set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-[^}]*)?\}", text)):
        env[name] = ("postgres://shepherd@postgres:5432/shepherd" if "DATABASE" in name
                     else "placeholder-value-0123456789")
    return env


@pytest.mark.parametrize("variant", [*VARIANTS, "compose"])
def test_shepherd_check_accepts_the_shipped_config(rendered, variant, tmp_path):
    from conftest import _binary

    if variant == "compose":
        text = (COMPOSE_DIR / "shepherd.yaml").read_text()
    else:
        text = yaml.safe_dump(_config_of(rendered[variant]))
    path = tmp_path / "shepherd.yaml"
    path.write_text(text)
    done = subprocess.run([_binary("shepherd"), "check", "--config", str(path)],
                          capture_output=True, text=True, env=_env_for(text), timeout=60)
    assert done.returncode == 0, f"{variant}: shepherd check refused the shipped config:\n{done.stderr}"
    assert ": ok (" in done.stdout, done.stdout
