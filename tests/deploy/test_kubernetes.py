"""deploy/k8s validates against the Kubernetes OpenAPI schemas, offline, and keeps the policies
docs/operations.md promises: non-root, read-only root filesystem, probes on /readyz and
/healthz, resources set, pinned images, no secret value committed.

The schemas are the ones `kubernetes-validate` bundles, in strict mode (an unknown or
misspelt field fails). `kubectl apply --dry-run=client` would need an API server for the
schemas; `kubectl kustomize` does not, and renders what `kubectl apply -k` would send.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.deploy.files import (
    K8S,
    env_of,
    final_stage,
    image_tag,
    load_yaml,
    load_yaml_documents,
    package_version,
)
from tollgate.settings import SettingsError, load_settings

# The oldest Kubernetes release still maintained upstream when these manifests were written;
# every field they use exists there (and in later releases).
KUBERNETES_VERSION = "1.31"
NAMESPACE = "tollgate"


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def manifests() -> dict[str, dict[str, Any]]:
    """Every object, keyed by kind (each kind appears once)."""
    by_kind: dict[str, dict[str, Any]] = {}
    for path in manifest_files():
        for doc in load_yaml_documents(path):
            assert doc["kind"] not in by_kind, f"two {doc['kind']} objects"
            by_kind[doc["kind"]] = doc
    return by_kind


def pod_specs() -> dict[str, dict[str, Any]]:
    objects = manifests()
    return {kind: objects[kind]["spec"]["template"]["spec"] for kind in ("Deployment", "Job")}


def containers() -> list[tuple[str, dict[str, Any]]]:
    return [(kind, c) for kind, pod in pod_specs().items() for c in pod["containers"]]


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: p.name)
def test_each_manifest_validates_against_the_kubernetes_schema(path: Path) -> None:
    for doc in load_yaml_documents(path):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_a_misspelt_field_would_fail_validation() -> None:
    """The check above can fail: strict schemas refuse a field Kubernetes does not know."""
    deployment = manifests()["Deployment"]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_kustomize_renders_the_gateway_objects_and_they_validate() -> None:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed: `kubectl kustomize` cannot render deploy/k8s")
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, check=True
    ).stdout
    docs = [doc for doc in yaml.safe_load_all(rendered) if doc]
    kinds = sorted(doc["kind"] for doc in docs)
    assert kinds == sorted(
        [
            "Namespace",
            "ConfigMap",
            "Deployment",
            "Service",
            "PodDisruptionBudget",
            "HorizontalPodAutoscaler",
        ]
    )
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == NAMESPACE


def test_every_object_lives_in_the_tollgate_namespace() -> None:
    assert load_yaml(K8S / "kustomization.yaml")["namespace"] == NAMESPACE
    for kind, doc in manifests().items():
        if kind == "Namespace":
            assert doc["metadata"]["name"] == NAMESPACE
        else:
            assert doc["metadata"]["namespace"] == NAMESPACE, kind


def test_pods_run_as_non_root_with_a_read_only_root_filesystem() -> None:
    for kind, pod in pod_specs().items():
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True, kind
        assert context["runAsUser"] != 0, kind
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}, kind
        assert pod["automountServiceAccountToken"] is False, kind
        mounts = {m["mountPath"] for c in pod["containers"] for m in c.get("volumeMounts", [])}
        assert "/tmp" in mounts, f"{kind}: a read-only root needs a writable /tmp"
    for kind, container in containers():
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True, kind
        assert context["allowPrivilegeEscalation"] is False, kind
        assert context["capabilities"] == {"drop": ["ALL"]}, kind


def test_every_container_sets_requests_and_limits() -> None:
    for kind, container in containers():
        resources = container["resources"]
        for bound in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources[bound]), f"{kind}: {bound}"


def test_images_are_pinned_to_this_version() -> None:
    version = package_version()
    for kind, container in containers():
        assert image_tag(container["image"]) == version, f"{kind}: {container['image']}"
    (image,) = load_yaml(K8S / "kustomization.yaml")["images"]
    assert image == {"name": "tollgate", "newTag": version}


def test_the_gateway_probes_readyz_and_healthz_on_its_port() -> None:
    (container,) = manifests()["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    (port,) = container["ports"]
    config = manifests()["ConfigMap"]["data"]
    assert port == {"name": "http", "containerPort": int(config["TOLLGATE_SERVER__PORT"])}
    assert container["args"] == ["serve"]


def test_the_migrate_job_runs_tollgate_migrate_with_the_gateway_settings() -> None:
    pods = pod_specs()
    (gateway,) = pods["Deployment"]["containers"]
    (migrate,) = pods["Job"]["containers"]
    assert migrate["args"] == ["migrate"]
    assert migrate["image"] == gateway["image"]
    assert migrate["envFrom"] == gateway["envFrom"]
    assert pods["Job"]["restartPolicy"] == "Never"
    assert "migrate-job.yaml" not in load_yaml(K8S / "kustomization.yaml")["resources"]


def test_service_budget_and_autoscaler_point_at_the_gateway() -> None:
    objects = manifests()
    deployment = objects["Deployment"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert objects["Service"]["spec"]["selector"].items() <= labels.items()
    assert objects["Service"]["spec"]["ports"][0]["targetPort"] == "http"
    assert objects["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= (
        labels.items()
    )
    hpa = objects["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    # The HPA owns the count (a `replicas` here would be reset by every apply) and keeps
    # several gateways, so one can stop while the others serve.
    assert "replicas" not in deployment["spec"]
    assert hpa["minReplicas"] >= 2
    assert objects["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1


def test_the_secret_template_holds_no_value_and_is_not_applied_by_kustomize() -> None:
    secret = manifests()["Secret"]
    assert secret["stringData"], "the template lists the keys to fill in"
    assert all(value == "" for value in secret["stringData"].values())
    assert "data" not in secret
    assert "secret.example.yaml" not in load_yaml(K8S / "kustomization.yaml")["resources"]
    assert "/k8s/secret.yaml" in (K8S.parent / ".gitignore").read_text().split()
    refs = {
        ref["secretRef"]["name"]
        for _, container in containers()
        for ref in container["envFrom"]
        if "secretRef" in ref
    }
    assert refs == {secret["metadata"]["name"]}


def _pod_env(secret_values: dict[str, str]) -> dict[str, str]:
    """What the container sees: the image's ENV, then the ConfigMap, then the Secret."""
    objects = manifests()
    image_env = {k: v for k, v in env_of(final_stage()).items() if k.startswith("TOLLGATE_")}
    return {**image_env, **objects["ConfigMap"]["data"], **secret_values}


def test_the_filled_in_configmap_and_secret_are_valid_settings() -> None:
    """Every key is a setting (load_settings refuses a TOLLGATE_ name that is not one)."""
    keys = manifests()["Secret"]["stringData"]
    filled = {key: "set-by-the-operator" for key in keys}
    filled.update(
        TOLLGATE_DATABASE_URL="postgresql://tollgate:pw@postgres.internal:5432/tollgate",
        TOLLGATE_REDIS__URL="redis://redis.internal:6379/0",
        TOLLGATE_OPERATOR__MASTER_KEY=base64.b64encode(bytes(32)).decode(),
    )
    settings = load_settings(env=_pod_env(filled))
    assert settings.database.url.startswith("postgresql://")
    assert settings.redis.url == "redis://redis.internal:6379/0"
    assert str(settings.data_dir) == "/data"
    assert settings.server.host == "0.0.0.0"


def test_the_secret_template_as_committed_stops_start_up_on_the_database_url() -> None:
    with pytest.raises(SettingsError, match=r"database\.url"):
        load_settings(env=_pod_env(dict(manifests()["Secret"]["stringData"])))
