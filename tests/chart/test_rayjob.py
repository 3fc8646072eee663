"""``pgx render --target rayjob``: a ConfigMap and a KubeRay RayJob, valid against KubeRay's CRD
schema and the Kubernetes schemas, every pod under restricted Pod Security, no credentials."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import yaml

from pgx_core.render import RayClusterSettings, render_rayjob
from pgx_core.runspec import validate_document
from tests.chart.k8s import RESTRICTED_VOLUMES, registry, secret_like, spec_of, validate_k8s
from tests.conftest import pgx

pytestmark = pytest.mark.chart
CRD = Path(__file__).parent / "kuberay" / "ray.io_rayjobs.yaml"
SPEC = {
    "apiVersion": "pgx.io/v1alpha1",
    "kind": "PipelineRun",
    "metadata": {"name": "nightly-2019", "namespace": "pgx"},
    "spec": {"lake": "s3://pgxdatalake", "stages": [{"use": "impute"}]},
}


@cache
def rayjob_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    [v1] = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema: dict[str, Any] = v1["schema"]["openAPIV3Schema"]
    return schema


def validate_rayjob(obj: dict[str, Any]) -> None:
    """The RayJob against KubeRay's schema, with unknown fields refused as the API server would."""

    def closed(node: Any) -> Any:  # structural schemas prune unknown fields; refuse them instead
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

    jsonschema.validate(obj, closed(rayjob_schema()), cls=jsonschema.Draft7Validator)


def pods(rayjob: dict[str, Any]) -> dict[str, dict[str, Any]]:
    cluster = rayjob["spec"]["rayClusterSpec"]
    [workers] = cluster["workerGroupSpecs"]
    return {
        "head": cluster["headGroupSpec"]["template"],
        "worker": workers["template"],
        "submitter": rayjob["spec"]["submitterPodTemplate"],
    }


def check_restricted(role: str, template: dict[str, Any]) -> None:
    pod = template["spec"]
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["seccompProfile"] == {"type": "RuntimeDefault"}, role
    assert pod["automountServiceAccountToken"] is False and pod["serviceAccountName"] == "pgx"
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.get(key)
    for v in pod["volumes"]:
        assert set(v) - {"name"} <= RESTRICTED_VOLUMES, (role, v)
    (container,) = pod["containers"]
    csc = container["securityContext"]
    assert csc["allowPrivilegeEscalation"] is False and csc["readOnlyRootFilesystem"] is True
    assert csc["capabilities"] == {"drop": ["ALL"]} and csc["runAsNonRoot"] is True
    assert container["resources"]["limits"]["memory"] and container["resources"]["limits"]["cpu"]
    assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/tmp"}
    # As a Pod, the template must pass the Kubernetes schemas too.
    validate_k8s({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"x-{role}"}, "spec": pod})


def test_rayjob_is_valid_restricted_and_runs_the_spec_on_a_cluster_made_for_it() -> None:
    spec = validate_document(json.loads(json.dumps(SPEC)), "<spec>", registry())
    config_map, rayjob = render_rayjob(spec, image="registry.example.com/pgx:0.1.0", namespace=None)
    validate_k8s(config_map)
    validate_rayjob(rayjob)
    assert spec_of(config_map).fingerprint() == spec.fingerprint()
    assert rayjob["metadata"]["name"] == config_map["metadata"]["name"] == "pgx-nightly-2019"
    assert rayjob["metadata"]["namespace"] == "pgx"
    s = rayjob["spec"]
    assert s["entrypoint"] == "pgx run /etc/pgx/spec.yaml"
    assert s["shutdownAfterJobFinishes"] is True and s["ttlSecondsAfterFinished"] > 0
    cluster = s["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__  # the image's Ray: driver and nodes agree
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # work goes to the workers
    [workers] = cluster["workerGroupSpecs"]
    assert workers["replicas"] == workers["minReplicas"] == workers["maxReplicas"] == 2
    for role, template in pods(rayjob).items():
        check_restricted(role, template)
    head_mounts = {m["mountPath"]: m["name"] for m in pods(rayjob)["head"]["spec"]["containers"][0]["volumeMounts"]}
    assert head_mounts["/etc/pgx"] == "spec" and head_mounts["/dev/shm"] == "dshm"
    text = yaml.safe_dump(rayjob).replace("automountServiceAccountToken", "")  # the one allowed "token"
    assert not secret_like(text), secret_like(text)


def test_cluster_settings_shape_the_worker_group() -> None:
    spec = validate_document(json.loads(json.dumps(SPEC)), "<spec>", registry())
    settings = RayClusterSettings(
        worker_replicas=5,
        worker_resources={"requests": {"cpu": "8", "memory": "32Gi"}, "limits": {"cpu": "8", "memory": "32Gi"}},
    )
    _, rayjob = render_rayjob(
        spec, image="pgx:0.1.0", namespace="data", cluster=settings, extra_args=["--stage", "impute"]
    )
    validate_rayjob(rayjob)
    [workers] = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert workers["replicas"] == 5
    assert workers["template"]["spec"]["containers"][0]["resources"]["limits"] == {"cpu": "8", "memory": "32Gi"}
    assert rayjob["spec"]["entrypoint"] == "pgx run /etc/pgx/spec.yaml --stage impute"


def test_the_crd_check_refuses_what_kuberay_would() -> None:
    """The schema check can fail: a misspelt field and a wrong type are refused."""
    spec = validate_document(json.loads(json.dumps(SPEC)), "<spec>", registry())
    _, rayjob = render_rayjob(spec, image="pgx:0.1.0", namespace=None)
    bad = json.loads(json.dumps(rayjob))
    bad["spec"]["shutdownAfterJobFinish"] = True
    with pytest.raises(jsonschema.ValidationError):
        validate_rayjob(bad)
    bad = json.loads(json.dumps(rayjob))
    bad["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = "two"
    with pytest.raises(jsonschema.ValidationError):
        validate_rayjob(bad)


def test_pgx_render_target_rayjob(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(SPEC))
    proc = pgx("render", str(path), "--target", "rayjob", "--image", "pgx:0.1.0", check=True)
    docs = list(yaml.safe_load_all(proc.stdout))
    assert [d["kind"] for d in docs] == ["ConfigMap", "RayJob"]
    validate_rayjob(docs[1])
