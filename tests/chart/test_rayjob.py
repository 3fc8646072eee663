"""``pgx render --target rayjob``: a ConfigMap and a KubeRay RayJob, valid against KubeRay's CRD
schema and the Kubernetes schemas, every pod under restricted Pod Security, no credentials."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

from pgx_core.errors import UsageError
from pgx_core.k8s.render import JobSettings, RayClusterSettings, render_raycluster, render_rayjob
from pgx_core.spec.runspec import RunSpec, validate_document
from tests.chart.k8s import (
    check_job_spec,
    check_ray_pod,
    literal_credentials,
    ray_pods,
    registry,
    spec_of,
    validate_k8s,
    validate_kuberay,
)
from tests.conftest import pgx

pytestmark = pytest.mark.chart
SPEC = {
    "apiVersion": "pgx.io/v1alpha1",
    "kind": "PipelineRun",
    "metadata": {"name": "nightly-2019", "namespace": "pgx"},
    "spec": {"lake": "s3://pgxdatalake", "stages": [{"use": "impute"}]},
}


def load() -> RunSpec:
    return validate_document(json.loads(json.dumps(SPEC)), "<spec>", registry())


def test_rayjob_is_valid_restricted_and_runs_the_spec_on_a_cluster_made_for_it() -> None:
    spec = load()
    config_map, rayjob = render_rayjob(spec, image="registry.example.com/pgx:0.1.0", namespace=None)
    validate_k8s(config_map)
    validate_kuberay(rayjob)
    assert spec_of(config_map).fingerprint() == spec.fingerprint()
    assert rayjob["metadata"]["name"] == config_map["metadata"]["name"] == "pgx-nightly-2019"
    assert rayjob["metadata"]["namespace"] == "pgx"
    s = rayjob["spec"]
    assert s["entrypoint"] == "pgx run /etc/pgx/spec.yaml"
    assert s["shutdownAfterJobFinishes"] is True and s["ttlSecondsAfterFinished"] > 0
    cluster = s["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__  # the image's Ray: driver and nodes agree
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # work goes to the workers
    assert cluster["authOptions"] == {"mode": "token"}  # KubeRay's token Secret: only the run's pods reach the head
    [workers] = cluster["workerGroupSpecs"]
    assert workers["replicas"] == workers["minReplicas"] == workers["maxReplicas"] == 2
    assert "enableInTreeAutoscaling" not in cluster  # a fixed size needs no autoscaler
    assert set(ray_pods(rayjob)) == {"head", "worker-workers", "submitter"}
    for role, template in ray_pods(rayjob).items():
        check_ray_pod(role, template, service_account="pgx")
    head_mounts = {m["mountPath"]: m["name"] for m in ray_pods(rayjob)["head"]["spec"]["containers"][0]["volumeMounts"]}
    assert head_mounts["/etc/pgx"] == "spec" and head_mounts["/dev/shm"] == "dshm"
    assert literal_credentials(rayjob) == []


def test_cluster_settings_shape_the_worker_group() -> None:
    settings = RayClusterSettings(
        worker_replicas=5,
        worker_resources={"requests": {"cpu": "8", "memory": "32Gi"}, "limits": {"cpu": "8", "memory": "32Gi"}},
    )
    _, rayjob = render_rayjob(
        load(), image="pgx:0.1.0", namespace="data", cluster=settings, extra_args=["--stage", "impute"]
    )
    validate_kuberay(rayjob)
    [workers] = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert workers["replicas"] == 5
    assert workers["template"]["spec"]["containers"][0]["resources"]["limits"] == {"cpu": "8", "memory": "32Gi"}
    assert rayjob["spec"]["entrypoint"] == "pgx run /etc/pgx/spec.yaml --stage impute"


def test_autoscaling_bounds_turn_on_kuberays_autoscaler_under_the_same_restrictions() -> None:
    cluster = RayClusterSettings(worker_replicas=2, min_workers=1, max_workers=10, idle_timeout_seconds=120)
    _, rayjob = render_rayjob(load(), image="pgx:0.1.0", namespace=None, cluster=cluster)
    validate_kuberay(rayjob)
    spec = rayjob["spec"]["rayClusterSpec"]
    [workers] = spec["workerGroupSpecs"]
    assert (workers["minReplicas"], workers["replicas"], workers["maxReplicas"]) == (1, 2, 10)
    assert spec["enableInTreeAutoscaling"] is True
    autoscaler = spec["autoscalerOptions"]
    assert autoscaler["idleTimeoutSeconds"] == 120
    assert autoscaler["securityContext"]["readOnlyRootFilesystem"] is True
    assert autoscaler["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    # Its writable /tmp is the head pod's emptyDir.
    head_volumes = {v["name"] for v in spec["headGroupSpec"]["template"]["spec"]["volumes"]}
    assert {m["name"] for m in autoscaler["volumeMounts"]} <= head_volumes


@pytest.mark.parametrize(("low", "replicas", "high"), [(3, 2, 5), (1, 6, 5), (0, 0, 0), (-1, 2, 2)])
def test_impossible_worker_bounds_are_refused(low: int, replicas: int, high: int) -> None:
    cluster = RayClusterSettings(worker_replicas=replicas, min_workers=low, max_workers=high)
    with pytest.raises(UsageError, match="min <= replicas <= max"):
        render_rayjob(load(), image="pgx:0.1.0", namespace=None, cluster=cluster)


def test_secrets_reach_every_ray_pod_by_reference_only() -> None:
    token = {"name": "RAY_AUTH_TOKEN", "valueFrom": {"secretKeyRef": {"name": "ray-token", "key": "auth_token"}}}
    ca = {"name": "corp-ca", "secret": {"secretName": "corp-ca"}}
    mount = {"name": "corp-ca", "mountPath": "/etc/ssl/corp", "readOnly": True}
    settings = JobSettings(extra_env=[token], extra_volumes=[ca], extra_volume_mounts=[mount])
    _, rayjob = render_rayjob(load(), image="pgx:0.1.0", namespace=None, settings=settings)
    validate_kuberay(rayjob)
    for role, template in ray_pods(rayjob).items():
        (container,) = template["spec"]["containers"]
        assert token in container["env"] and mount in container["volumeMounts"], role
        assert ca in template["spec"]["volumes"], role
        check_ray_pod(role, template, service_account="pgx")
    assert literal_credentials(rayjob) == []


def test_the_credential_scan_can_fail() -> None:
    leaky = {"env": [{"name": "RAY_AUTH_TOKEN", "value": "abc"}], "x": {"password": "p"}, "k": "AKIAABCDEFGHIJKLMNOP"}
    assert literal_credentials(leaky) == [".env[0][RAY_AUTH_TOKEN].value", ".x.password", ".k"]
    by_reference = {"env": [{"name": "RAY_AUTH_TOKEN", "valueFrom": {"secretKeyRef": {"name": "t", "key": "k"}}}]}
    assert literal_credentials(by_reference) == []


def test_the_crd_check_refuses_what_kuberay_would() -> None:
    """The schema check can fail: a misspelt field and a wrong type are refused."""
    _, rayjob = render_rayjob(load(), image="pgx:0.1.0", namespace=None)
    bad = json.loads(json.dumps(rayjob))
    bad["spec"]["shutdownAfterJobFinish"] = True
    with pytest.raises(jsonschema.ValidationError):
        validate_kuberay(bad)
    bad = json.loads(json.dumps(rayjob))
    bad["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = "two"
    with pytest.raises(jsonschema.ValidationError):
        validate_kuberay(bad)
    bad = json.loads(json.dumps(rayjob))  # a pod template the Kubernetes schema refuses
    head = bad["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    head["containers"][0]["volumeMounts"][0]["readOnly"] = "no"
    with pytest.raises(Exception, match="readOnly"):
        validate_kuberay(bad)


def test_pgx_render_target_rayjob(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(SPEC))
    proc = pgx("render", str(path), "--target", "rayjob", "--image", "pgx:0.1.0", check=True)
    docs = list(yaml.safe_load_all(proc.stdout))
    assert [d["kind"] for d in docs] == ["ConfigMap", "RayJob"]
    validate_kuberay(docs[1])
    proc = pgx("render", str(path), "--target", "rayjob", "--workers", "3", "--max-workers", "12", check=True)
    [workers] = list(yaml.safe_load_all(proc.stdout))[1]["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert (workers["minReplicas"], workers["replicas"], workers["maxReplicas"]) == (3, 3, 12)
    proc = pgx("render", str(path), "--workers", "3")
    assert proc.returncode == 64 and "--target rayjob only" in proc.stderr
    proc = pgx("render", str(path), "--target", "rayjob", "--workers", "5", "--max-workers", "2")
    assert proc.returncode == 64 and "min <= replicas <= max" in proc.stderr


def test_raycluster_to_join_has_the_pods_of_a_rayjob_and_a_token_secret() -> None:
    cluster = RayClusterSettings(worker_replicas=1, min_workers=1, max_workers=4, auth_secret="ray-token")  # noqa: S106
    raycluster = render_raycluster("pgx-raycluster", image="pgx:0.1.0", namespace="pgx", cluster=cluster)
    validate_kuberay(raycluster)
    assert raycluster["spec"]["authOptions"] == {"mode": "token", "secretName": "ray-token"}
    assert set(ray_pods(raycluster)) == {"head", "worker-workers"}
    for role, template in ray_pods(raycluster).items():
        check_ray_pod(role, template, service_account="pgx")
    head = ray_pods(raycluster)["head"]["spec"]
    assert "spec" not in {v["name"] for v in head["volumes"]}  # no run of its own: drivers join
    assert literal_credentials(raycluster) == []
    with pytest.raises(UsageError, match="DNS-1123"):
        render_raycluster("Bad_Name", image="pgx:0.1.0", namespace=None)


def test_a_job_joining_a_token_cluster_reads_the_token_from_its_secret(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(SPEC))
    address = "ray://pgx-raycluster-head-svc:10001"
    proc = pgx("render", str(path), "--ray-address", address, "--ray-token-secret", "ray-token", check=True)
    _, job = yaml.safe_load_all(proc.stdout)
    check_job_spec(job["spec"], ray_address=address, service_account="pgx", config_maps={"pgx-nightly-2019"})
    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    assert env["RAY_AUTH_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "ray-token", "key": "auth_token"}}
    assert literal_credentials(job) == []
    for args, message in [
        (["--ray-token-secret", "ray-token"], "give both"),
        (["--ray-address", address, "--ray-token-secret", "Not A Secret"], "must name a Secret"),
        (["--target", "rayjob", "--ray-address", address], "for --target job"),
    ]:
        proc = pgx("render", str(path), *args)
        assert proc.returncode == 64 and message in proc.stderr, (args, proc.stderr)
