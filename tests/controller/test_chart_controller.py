"""Chart: controller.enabled deploys pgx controller with minimal namespaced RBAC (issue 11)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.chart.k8s import CHART, by_kind, render_chart, secret_like, validate_k8s

pytestmark = pytest.mark.integration

ENABLED: dict[str, Any] = {"controller": {"enabled": True}}


def test_disabled_by_default() -> None:
    objects = render_chart()
    assert not [o for o in objects if o["metadata"]["name"].endswith("-controller")]
    assert yaml.safe_load((CHART / "values.yaml").read_text())["controller"]["enabled"] is False


def test_every_controller_object_is_valid_kubernetes() -> None:
    objects = render_chart(ENABLED)
    kinds = sorted(o["kind"] for o in objects if o["metadata"]["name"] == "pgx-controller")
    assert kinds == ["Deployment", "Role", "RoleBinding", "ServiceAccount"]
    for obj in objects:
        validate_k8s(obj)
    # The CRD is installed from crds/ (Helm installs it before the templates).
    crds = [d for p in sorted((CHART / "crds").glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]
    assert [c["metadata"]["name"] for c in crds] == ["pipelineruns.pgx.io"]
    for crd in crds:
        validate_k8s(crd)


def test_deployment_is_restricted() -> None:
    (dep,) = by_kind(render_chart(ENABLED), "Deployment")
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "pgx-controller"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.get(key)
    (c,) = pod["containers"]
    assert c["command"] == ["pgx"] and c["args"][:3] == ["controller", "--namespace", "pgx"]
    assert c["args"][3:] == ["--image", "pgx:0.1.0"]
    csc = c["securityContext"]
    assert csc["allowPrivilegeEscalation"] is False and csc["readOnlyRootFilesystem"] is True
    assert csc["capabilities"] == {"drop": ["ALL"]} and csc["runAsNonRoot"] is True
    assert {v["name"]: set(v) - {"name"} for v in pod["volumes"]} == {"tmp": {"emptyDir"}}
    for e in c["env"]:  # no credentials: the API token is the ServiceAccount's, AWS is not needed
        assert not secret_like(e["name"]) and "secretKeyRef" not in e.get("valueFrom", {})
    assert not c.get("envFrom")


def test_rbac_is_minimal_and_namespaced() -> None:
    objects = render_chart(ENABLED)
    assert not by_kind(objects, "ClusterRole") and not by_kind(objects, "ClusterRoleBinding")
    (role,) = by_kind(objects, "Role")
    (binding,) = by_kind(objects, "RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "pgx-controller", "namespace": "pgx"}]
    grants = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for res in rule["resources"]:
                assert "*" not in (group, res) and "*" not in rule["verbs"]
                grants[(group, res)] = set(rule["verbs"])
    assert grants == {
        ("pgx.io", "pipelineruns"): {"get", "list", "watch"},
        ("pgx.io", "pipelineruns/status"): {"get", "patch", "update"},
        ("pgx.io", "pipelineruns/finalizers"): {"update"},
        ("batch", "jobs"): {"create", "get", "list", "watch", "delete"},
        ("", "configmaps"): {"create", "get", "list", "watch", "delete"},
        ("", "pods"): {"get", "list"},
        ("coordination.k8s.io", "leases"): {"get", "create", "update"},
    }
    assert not [k for k in grants if k[1].startswith("secrets")]


def test_values_schema_rejects_unknown_controller_keys() -> None:
    import helm_python as helm

    with helm.Chart.load(str(CHART)) as chart, pytest.raises(Exception, match=r"(?i)additional|not allowed|schema"):
        chart.render(values={"controller": {"enabled": True, "bogus": 1}}, name="pgx", namespace="pgx")
