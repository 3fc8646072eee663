"""Chart: controller.enabled deploys pgx controller with exact namespaced RBAC, probes, metrics, a
PodDisruptionBudget and (crds.install) its CRD."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import yaml

from pgx_core.k8s.controller import Controller
from tests.chart.k8s import CHART, by_kind, render_chart, secret_like, validate_k8s
from tests.controller.conftest import JOBS, PODS, RUNS, pipelinerun, running_pod
from tests.controller.fakeapi import FakeKube
from tests.controller.test_reconcile import run_of, start, wait_for

pytestmark = pytest.mark.integration

ENABLED: dict[str, Any] = {"controller": {"enabled": True}}


def test_disabled_by_default() -> None:
    objects = render_chart()
    assert not [o for o in objects if o["metadata"]["name"].endswith("-controller")]
    assert yaml.safe_load((CHART / "values.yaml").read_text())["controller"]["enabled"] is False


def test_every_controller_object_is_valid_kubernetes() -> None:
    objects = render_chart(ENABLED)
    kinds = sorted(o["kind"] for o in objects if o["metadata"]["name"] == "pgx-controller")
    assert kinds == ["Deployment", "PodDisruptionBudget", "Role", "RoleBinding", "ServiceAccount"]
    (service,) = [o for o in objects if o["metadata"]["name"] == "pgx-controller-metrics"]
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}]
    (pdb,) = by_kind(objects, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1  # a drain is never blocked, one replica at a time
    (crd,) = by_kind(objects, "CustomResourceDefinition")
    assert crd["metadata"]["name"] == "pipelineruns.pgx.io"
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}  # uninstall keeps the runs
    for obj in objects:
        validate_k8s(obj)


@pytest.mark.parametrize(
    ("values", "crd"),
    [({}, False), (ENABLED, True), ({"controller": {"enabled": True}, "crds": {"install": False}}, False)],
    ids=["controller off", "controller on", "crds.install false"],
)
def test_the_crd_comes_with_the_controller_unless_told_not_to(values: dict[str, Any], crd: bool) -> None:
    assert bool(by_kind(render_chart(values), "CustomResourceDefinition")) is crd


def test_service_monitor_and_switches() -> None:
    values = {"controller": {"enabled": True, "metrics": {"serviceMonitor": {
        "enabled": True, "interval": "15s", "labels": {"release": "prometheus"}}}}}  # fmt: skip
    objects = render_chart(values)
    (monitor,) = [o for o in objects if o["kind"] == "ServiceMonitor"]
    assert (
        monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["metadata"]["labels"]["release"] == "prometheus"
    )
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "15s"}]
    (service,) = by_kind(objects, "Service")
    assert monitor["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    bare = {"controller": {"enabled": True, "metrics": {"service": False}, "podDisruptionBudget": {"enabled": False}}}
    assert not by_kind(render_chart(bare), "Service") and not by_kind(render_chart(bare), "PodDisruptionBudget")
    # Every object of every switch is valid Kubernetes (the ServiceMonitor's CRD is not among the
    # schemas here: its shape is checked above).
    other = {"controller": {"enabled": True, "replicas": 2, "metricsPort": 9102, "runImage": "r.example/pgx:2"}}
    for variant in (values, bare, other):
        for obj in render_chart(variant):
            if obj["kind"] != "ServiceMonitor":
                validate_k8s(obj)
    (dep,) = by_kind(render_chart(other), "Deployment")
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] == 9102


def test_deployment_is_restricted_and_probed() -> None:
    (dep,) = by_kind(render_chart(ENABLED), "Deployment")
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "pgx-controller"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.get(key)
    (c,) = pod["containers"]
    assert c["command"] == ["pgx"] and c["args"][:3] == ["controller", "--namespace", "pgx"]
    assert c["args"][3:] == ["--image", "pgx:0.1.0", "--metrics-port", "8080"]
    assert c["ports"] == [{"name": "metrics", "containerPort": 8080, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert set(c["resources"]) == {"requests", "limits"}
    csc = c["securityContext"]
    assert csc["allowPrivilegeEscalation"] is False and csc["readOnlyRootFilesystem"] is True
    assert csc["capabilities"] == {"drop": ["ALL"]} and csc["runAsNonRoot"] is True
    assert {v["name"]: set(v) - {"name"} for v in pod["volumes"]} == {"tmp": {"emptyDir"}}
    for e in c["env"]:  # no credentials: the API token is the ServiceAccount's, AWS is not needed
        assert not secret_like(e["name"]) and "secretKeyRef" not in e.get("valueFrom", {})
    assert not c.get("envFrom")


def granted(role_name: str = "pgx-controller") -> set[tuple[str, str, str]]:
    """``(group, resource, verb)`` the chart's Role ``role_name`` grants, checked namespaced and
    wildcard-free (the controller's Role also checked bound to the controller's ServiceAccount)."""
    objects = render_chart(ENABLED)
    assert not by_kind(objects, "ClusterRole") and not by_kind(objects, "ClusterRoleBinding")
    (role,) = [r for r in by_kind(objects, "Role") if r["metadata"]["name"] == role_name]
    if role_name == "pgx-controller":
        (binding,) = by_kind(objects, "RoleBinding")
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role_name}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "pgx-controller", "namespace": "pgx"}]
    out = set()
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for res in rule["resources"]:
                assert "*" not in (group, res) and "*" not in rule["verbs"]
                out |= {(group, res, verb) for verb in rule["verbs"]}
    assert not [g for g in out if g[1].startswith("secrets")]
    return out


def used(requests: list[tuple[str, str]]) -> set[tuple[str, str, str]]:
    """``(group, resource, verb)`` of each API request, as RBAC names them."""
    out = set()
    for method, full in requests:
        path, _, query = full.partition("?")
        parts = path.strip("/").split("/")
        group = "" if parts[0] == "api" else parts[1]
        rest = parts[parts.index("namespaces") + 2 :]
        resource = rest[0] + (f"/{rest[2]}" if len(rest) > 2 else "")
        named = len(rest) > 1
        verb = {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}.get(method)
        if verb is None:
            verb = "get" if named else ("watch" if "watch=" in query else "list")
        out.add((group, resource, verb))
    return out


def test_the_role_grants_exactly_what_the_controller_uses(
    kube: FakeKube, make_controller: Callable[..., Controller]
) -> None:
    """A whole life against the test API server: lead, watch, create, follow a running pod's log,
    cancel a generation, stop the deleted run. Every call is granted, and every grant is used."""
    ctl = make_controller(identity="rbac", resync_seconds=1, poll_seconds=0.2)
    t = start(ctl)
    try:
        kube.create(RUNS, pipelinerun(onUpdate="cancel"))
        wait_for(lambda: kube.get(JOBS, "pgx-example-g1"))
        job = kube.get(JOBS, "pgx-example-g1")
        assert job is not None
        kube.create(PODS, running_pod("pgx-example-g1", job["metadata"]["uid"]))
        kube.logs["pgx-example-g1-pod"] = '{"stage": "ingest-medical"}\n'
        kube.set_status(JOBS, "pgx-example-g1", {"active": 1, "startTime": "2026-01-01T00:00:00Z"})
        wait_for(lambda: run_of(kube).get("status", {}).get("currentStage") == "ingest-medical")
        kube.patch(RUNS, "example", {"spec": {"limit": 3}}, None)  # cancel generation 1
        wait_for(lambda: (kube.get(JOBS, "pgx-example-g1") or {}).get("metadata", {}).get("deletionTimestamp"))
        kube.patch(PODS, "pgx-example-g1-pod", {"metadata": {"finalizers": []}}, None)
        wait_for(lambda: kube.get(JOBS, "pgx-example-g2"))
        kube.delete(RUNS, "example")
        wait_for(lambda: kube.get(RUNS, "example") is None)
    finally:
        ctl.stop.set()
        t.join(10)
    # Admission checks this one on every object created with blockOwnerDeletion (no request of ours).
    implicit = {("pgx.io", "pipelineruns/finalizers", "update")}
    assert used(kube.requests) | implicit == granted()


def test_values_schema_rejects_unknown_controller_keys() -> None:
    import helm_python as helm

    with helm.Chart.load(str(CHART)) as chart, pytest.raises(Exception, match=r"(?i)additional|not allowed|schema"):
        chart.render(values={"controller": {"enabled": True, "bogus": 1}}, name="pgx", namespace="pgx")


def test_the_viewer_role_grants_exactly_what_pgx_runs_reads(kube: FakeKube) -> None:
    from kubernetes import client

    from pgx_core.k8s import runs

    kube.create(RUNS, pipelinerun())
    kube.set_status(RUNS, "example", {"phase": "Running", "jobName": "pgx-example-g1"})
    pod = running_pod("pgx-example-g1", "uid")
    kube.create(PODS, pod)
    kube.set_status(PODS, pod["metadata"]["name"], {"phase": "Running"})
    kube.logs[pod["metadata"]["name"]] = '{"stage": "ingest-medical"}\n'
    cfg = client.Configuration()
    cfg.host = kube.url
    api = client.ApiClient(cfg)
    kube.requests.clear()
    assert runs.list_runs(api, "pgx") and runs.get_run(api, "pgx", "example")
    assert "".join(runs.log_text(api, "pgx", "example", tail=5)) == '{"stage": "ingest-medical"}\n'
    assert used(kube.requests) == granted("pgx-runs-viewer")
    roles = by_kind(render_chart({"controller": {"enabled": True, "viewerRole": False}}), "Role")
    assert [r["metadata"]["name"] for r in roles] == ["pgx-controller"]
