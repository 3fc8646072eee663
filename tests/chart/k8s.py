"""Shared checks of rendered Kubernetes objects (chart, ``pgx render``, manifests/)."""

from __future__ import annotations

import importlib.util
import re
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import kubernetes_validate
import yaml
from kubernetes_validate.utils import latest_version

from pgx_core.exitcodes import ExitCode
from pgx_core.pluginmanager import make_plugin_manager
from pgx_core.spec.runspec import RunSpec, parse_yaml, validate_document
from pgx_core.stage import StageRegistry

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "pgx"
KUBERAY_CRDS = {
    "RayCluster": Path(__file__).parent / "kuberay" / "ray.io_rayclusters.yaml",
    "RayJob": Path(__file__).parent / "kuberay" / "ray.io_rayjobs.yaml",
    "RayCronJob": Path(__file__).parent / "kuberay" / "ray.io_raycronjobs.yaml",
}
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


@cache
def kuberay_schema(kind: str) -> dict[str, Any]:
    """The ``v1`` schema of a KubeRay CRD, with unknown fields refused as the API server would
    (a structural schema prunes them silently, which would hide a misspelt field)."""
    crd = yaml.safe_load(KUBERAY_CRDS[kind].read_text())
    [v1] = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]

    def closed(node: Any) -> Any:
        if isinstance(node, dict):
            out = {k: closed(v) for k, v in node.items()}
            if (
                "properties" in out
                and "additionalProperties" not in out
                and not out.get("x-kubernetes-preserve-unknown-fields")
            ):
                out["additionalProperties"] = False
            return out
        if isinstance(node, list):
            return [closed(v) for v in node]
        return node

    schema: dict[str, Any] = closed(v1["schema"]["openAPIV3Schema"])
    return schema


def validate_kuberay(obj: dict[str, Any]) -> None:
    """A ``ray.io/v1`` object against its KubeRay CRD, and every pod template in it against the
    Kubernetes schemas (as a Pod). Raises on the first error."""
    assert obj["apiVersion"] == "ray.io/v1", obj["apiVersion"]
    jsonschema.validate(obj, kuberay_schema(obj["kind"]), cls=jsonschema.Draft7Validator)
    for role, template in ray_pods(obj).items():
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"x-{role}"}, "spec": template["spec"]}
        validate_k8s(pod)


def rayjob_spec_of(obj: dict[str, Any]) -> dict[str, Any]:
    """The RayJob spec of a RayJob, or the job template of a RayCronJob."""
    spec: dict[str, Any] = obj["spec"]["jobTemplate"] if obj["kind"] == "RayCronJob" else obj["spec"]
    return spec


def ray_pods(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every pod template of a RayCluster, RayJob or RayCronJob: head, each worker group and (of a
    RayJob) the submitter."""
    pods: dict[str, dict[str, Any]] = {}
    if obj["kind"] == "RayCluster":
        cluster = obj["spec"]
    else:
        spec = rayjob_spec_of(obj)
        cluster = spec["rayClusterSpec"]
        pods["submitter"] = spec["submitterPodTemplate"]
    pods["head"] = cluster["headGroupSpec"]["template"]
    for group in cluster["workerGroupSpecs"]:
        pods[f"worker-{group['groupName']}"] = group["template"]
    return pods


def check_ray_pod(role: str, template: dict[str, Any], *, service_account: str) -> None:
    """Restricted Pod Security, the run's ServiceAccount, a read-only root with /tmp writable."""
    pod = template["spec"]
    check_restricted_pod(pod, service_account=service_account, what=role)
    (container,) = pod["containers"]
    check_restricted_container(container["securityContext"])
    assert container["resources"]["limits"]["memory"] and container["resources"]["limits"]["cpu"]
    assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/tmp"}
    check_env(container)


def check_restricted_pod(pod: dict[str, Any], *, service_account: str, what: str) -> None:
    """Pod-level restricted Pod Security: non-root, the default seccomp profile, no host namespaces,
    only the volume types the standard allows; the run's ServiceAccount without an API token."""
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["seccompProfile"] == {"type": "RuntimeDefault"}, what
    assert isinstance(psc["runAsUser"], int) and psc["runAsUser"] > 0, what
    assert pod["automountServiceAccountToken"] is False and pod["serviceAccountName"] == service_account, what
    for key in ("hostNetwork", "hostPID", "hostIPC", "shareProcessNamespace"):
        assert not pod.get(key), (what, key)
    for v in pod["volumes"]:
        kinds = set(v) - {"name"}
        assert kinds <= RESTRICTED_VOLUMES, f"{what}: volume {v['name']} of type {kinds} is not allowed by 'restricted'"


def check_restricted_container(csc: dict[str, Any]) -> None:
    assert csc["allowPrivilegeEscalation"] is False and csc["readOnlyRootFilesystem"] is True
    assert csc["capabilities"] == {"drop": ["ALL"]} and csc["runAsNonRoot"] is True
    assert isinstance(csc["runAsUser"], int) and csc["runAsUser"] > 0
    assert csc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not csc.get("privileged")


def check_env(container: dict[str, Any]) -> None:
    """No credential in clear: a secret-looking variable takes its value from a Secret, AWS keys
    not at all (they come from the AWS chain, IRSA)."""
    for e in container["env"]:
        assert not e["name"].startswith(("AWS_ACCESS_KEY", "AWS_SECRET", "AWS_SESSION")), e["name"]
        if secret_like(e["name"]):
            assert "value" not in e and "secretKeyRef" in e["valueFrom"], e["name"]
    assert not container.get("envFrom")


def secret_like(text: str) -> list[str]:
    return [m.group(0) for m in SECRET_LIKE.finditer(text)]


CREDENTIAL_VALUE = re.compile(r"-----BEGIN [A-Z ]*KEY-----|\b(AKIA|ASIA)[0-9A-Z]{16}\b")
REFERENCES = {"secretKeyRef", "secretName"}  # name a Secret; hold no credential


def literal_credentials(node: Any, path: str = "") -> list[str]:
    """Where an object holds a credential in clear: a secret-looking key, or an EnvVar with a
    secret-looking name, with a literal value; or any value shaped like an AWS key or a private key.
    References to Secrets (``secretKeyRef``, a secret volume's ``secretName``) hold none."""
    found: list[str] = []
    if isinstance(node, dict):
        if isinstance(node.get("name"), str) and "value" in node and secret_like(node["name"]):
            found.append(f"{path}[{node['name']}].value")
        for key, value in node.items():
            if key in REFERENCES:
                continue
            if isinstance(value, str | int) and not isinstance(value, bool) and secret_like(key):
                found.append(f"{path}.{key}")
            found.extend(literal_credentials(value, f"{path}.{key}"))
    elif isinstance(node, list):
        for i, item in enumerate(node):
            found.extend(literal_credentials(item, f"{path}[{i}]"))
    elif isinstance(node, str) and CREDENTIAL_VALUE.search(node):
        found.append(path)
    return found


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
    check_restricted_pod(pod, service_account=service_account, what="job")

    volumes = {v["name"]: v for v in pod["volumes"]}
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
    check_restricted_container(container["securityContext"])
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
    check_env(container)
