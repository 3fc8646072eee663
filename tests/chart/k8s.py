"""Shared checks of rendered Kubernetes objects (chart, ``pgx render``, manifests/)."""

from __future__ import annotations

import importlib.util
import re
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import kubernetes_validate
from kubernetes_validate.utils import latest_version

from pgx_core.exitcodes import ExitCode
from pgx_core.pluginmanager import make_plugin_manager
from pgx_core.runspec import RunSpec, parse_yaml, validate_document
from pgx_core.stage import StageRegistry

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "pgx"
# The chart's minimum (Chart.yaml kubeVersion: podFailurePolicy is GA in 1.31) and the newest
# Kubernetes whose schemas kubernetes-validate ships.
KUBE_VERSIONS = ("1.31.0", latest_version())
NO_RETRY = [int(ExitCode.DATA), int(ExitCode.CONFLICT), int(ExitCode.USAGE)]
SECRET_LIKE = re.compile(
    r"aws_secret_access_key|aws_access_key_id|aws_session_token|password|passwd|token|secret"
    r"|-----BEGIN [A-Z ]*KEY-----|\b(AKIA|ASIA)[0-9A-Z]{16}\b",
    re.IGNORECASE,
)
# Volume types the "restricted" Pod Security Standard allows.
RESTRICTED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret",
}  # fmt: skip


@cache
def gen_manifests() -> ModuleType:
    """scripts/gen_manifests.py, imported by path (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("gen_manifests", REPO / "scripts" / "gen_manifests.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@cache
def registry() -> StageRegistry:
    return make_plugin_manager().registry


def render_chart(
    values: dict[str, Any] | None = None, *, release: str = "pgx", namespace: str = "pgx"
) -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = gen_manifests().render_chart(values, release=release, namespace=namespace)
    return objects


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def validate_k8s(obj: dict[str, Any]) -> None:
    """Strict schema validation for every Kubernetes version of :data:`KUBE_VERSIONS`.

    An unknown kind raises (SchemaNotFoundError) instead of warning, so nothing passes unchecked.
    """
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)


def secret_like(text: str) -> list[str]:
    return [m.group(0) for m in SECRET_LIKE.finditer(text)]


def spec_of(config_map: dict[str, Any]) -> RunSpec:
    """The run spec a ConfigMap holds, validated as `pgx validate` does (raises SpecError)."""
    source = f"configmap/{config_map['metadata']['name']}:spec.yaml"
    text = config_map["data"]["spec.yaml"]
    return validate_document(parse_yaml(text, source), source, registry())


def check_job_spec(
    job: dict[str, Any], *, ray_address: str | None, service_account: str, config_maps: set[str]
) -> None:
    """Every Job and pod setting pgx requires, on one Job spec."""
    assert job["backoffLimit"] >= 0
    assert job["activeDeadlineSeconds"] > 0
    assert job["ttlSecondsAfterFinished"] >= 0
    rules = job["podFailurePolicy"]["rules"]
    assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]} in rules
    fail = [r for r in rules if r["action"] == "FailJob"]
    assert fail == [
        {"action": "FailJob", "onExitCodes": {"containerName": "pgx", "operator": "In", "values": NO_RETRY}}
    ]

    pod = job["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["serviceAccountName"] == service_account
    assert pod["automountServiceAccountToken"] is False
    for key in ("hostNetwork", "hostPID", "hostIPC", "shareProcessNamespace"):
        assert not pod.get(key), key
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True
    assert isinstance(psc["runAsUser"], int) and psc["runAsUser"] > 0
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}

    volumes = {v["name"]: v for v in pod["volumes"]}
    for v in volumes.values():
        kinds = set(v) - {"name"}
        assert kinds <= RESTRICTED_VOLUMES, f"volume {v['name']} of type {kinds} is not allowed by 'restricted'"
    assert volumes["spec"]["configMap"]["name"] in config_maps
    assert volumes["spec"]["configMap"]["items"] == [{"key": "spec.yaml", "path": "spec.yaml"}]
    assert volumes["tmp"]["emptyDir"]["sizeLimit"]
    if ray_address:
        assert "dshm" not in volumes
    else:
        assert volumes["dshm"]["emptyDir"]["medium"] == "Memory" and volumes["dshm"]["emptyDir"]["sizeLimit"]

    (container,) = pod["containers"]
    assert not pod.get("initContainers") and not pod.get("ephemeralContainers")
    assert container["name"] == "pgx"
    assert container["command"] == ["pgx"]
    assert container["args"][:2] == ["run", "/etc/pgx/spec.yaml"]
    csc = container["securityContext"]
    assert csc["allowPrivilegeEscalation"] is False
    assert csc["readOnlyRootFilesystem"] is True
    assert csc["runAsNonRoot"] is True
    assert isinstance(csc["runAsUser"], int) and csc["runAsUser"] > 0
    assert csc["capabilities"] == {"drop": ["ALL"]}
    assert csc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not csc.get("privileged")
    assert not container.get("ports")
    resources = container["resources"]
    assert resources["requests"]["memory"] and resources["limits"]["memory"]

    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/etc/pgx"]["name"] == "spec" and mounts["/etc/pgx"]["readOnly"] is True
    assert mounts["/tmp"]["name"] == "tmp"
    assert ("/dev/shm" in mounts) is not bool(ray_address)

    env = {e["name"]: e for e in container["env"]}
    assert env["TMPDIR"]["value"] == "/tmp"
    assert env["RAY_TMPDIR"]["value"].startswith("/tmp/")
    assert env["HOME"]["value"] == "/tmp"
    if ray_address:
        assert env["RAY_ADDRESS"] == {"name": "RAY_ADDRESS", "value": ray_address}
    else:
        assert "RAY_ADDRESS" not in env
    for e in container["env"]:
        # Credentials only from the AWS chain (IRSA): never a key, never a Secret.
        assert not secret_like(e["name"]), e["name"]
        assert "secretKeyRef" not in e.get("valueFrom", {})
    assert not container.get("envFrom")
