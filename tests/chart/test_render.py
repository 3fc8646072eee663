"""pgx_core.k8s.render: the ConfigMap + Job `pgx render` prints."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from pgx_core.errors import UsageError
from pgx_core.k8s.render import DEFAULT_IMAGE, JobSettings, object_name, render_run, spec_yaml, to_yaml
from pgx_core.spec.runspec import RunSpec, parse_yaml, validate_document
from tests.chart.k8s import check_job_spec, registry, secret_like, spec_of, validate_k8s

pytestmark = pytest.mark.chart

SPEC = """\
# a comment the canonical form does not keep
apiVersion: pgx.io/v1alpha1
kind: PipelineRun
metadata:
  name: {name}
  labels: {{team: research}}
spec:
  lake: s3://pgxdatalake/prefix/
  partitions: {{years: [2020, 2019]}}
  stages:
    - use: ingest
      with: {{dataType: pharmacy}}
    - use: reprocess
      with: {{dataType: pharmacy, padMissingFields: true}}
"""


def load(name: str = "adhoc", text: str = SPEC) -> RunSpec:
    return validate_document(parse_yaml(text.format(name=name), "t.yaml"), "t.yaml", registry())


def test_configmap_and_job_are_valid_and_meet_the_pod_settings() -> None:
    spec = load()
    cm, job = render_run(spec, image="registry.example.com/pgx:0.1.0", namespace="batch")
    assert (cm["kind"], job["kind"]) == ("ConfigMap", "Job")
    for obj in (cm, job):
        validate_k8s(obj)
        assert obj["metadata"]["name"] == "pgx-adhoc"
        assert obj["metadata"]["namespace"] == "batch"
        assert obj["metadata"]["labels"]["pgx.io/run-name"] == "adhoc"
    check_job_spec(job["spec"], ray_address=None, service_account="pgx", config_maps={"pgx-adhoc"})
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example.com/pgx:0.1.0"
    assert secret_like(to_yaml([cm])) == []


def test_configmap_holds_the_canonical_form_with_the_same_fingerprint() -> None:
    spec = load()
    cm, _ = render_run(spec, image=DEFAULT_IMAGE, namespace=None)
    text = cm["data"]["spec.yaml"]
    assert text == spec_yaml(spec)
    again = spec_of(cm)
    assert again.fingerprint() == spec.fingerprint()
    assert again.canonical() == spec.canonical()
    doc = yaml.safe_load(text)
    assert doc["metadata"] == {"name": "adhoc", "labels": {"team": "research"}}
    assert doc["spec"]["lake"] == "s3://pgxdatalake/prefix"
    assert doc["spec"]["partitions"]["years"] == [2019, 2020]
    assert doc["spec"]["stages"][1]["with"]["padMissingFields"] is True
    assert doc["spec"]["stateRoot"] and doc["spec"]["backupRoot"]  # defaults written out


def test_rendering_is_deterministic() -> None:
    a = to_yaml(render_run(load(), image=DEFAULT_IMAGE, namespace="pgx"))
    b = to_yaml(render_run(load(), image=DEFAULT_IMAGE, namespace="pgx"))
    assert a == b
    assert list(yaml.safe_load_all(a)) == render_run(load(), image=DEFAULT_IMAGE, namespace="pgx")
    assert "spec.yaml: |\n" in a  # the spec reads as a block, not an escaped string


def test_namespace_defaults_to_the_spec_then_to_none() -> None:
    text = SPEC.replace("  name: {name}\n", "  name: {name}\n  namespace: from-spec\n")
    cm, job = render_run(load(text=text), image=DEFAULT_IMAGE, namespace=None)
    assert cm["metadata"]["namespace"] == job["metadata"]["namespace"] == "from-spec"
    cm, job = render_run(load(text=text), image=DEFAULT_IMAGE, namespace="given")
    assert cm["metadata"]["namespace"] == job["metadata"]["namespace"] == "given"
    cm, job = render_run(load(), image=DEFAULT_IMAGE, namespace=None)
    assert "namespace" not in cm["metadata"] and "namespace" not in job["metadata"]


def test_names_fit_63_characters_and_stay_distinct() -> None:
    assert object_name("adhoc") == "pgx-adhoc"
    exact = "a" * 59
    assert object_name(exact) == f"pgx-{exact}" and len(object_name(exact)) == 63
    long_a, long_b = "a" * 62 + "b", "a" * 62 + "c"
    for n in (long_a, long_b):
        name = object_name(n)
        assert len(name) <= 63 and name == object_name(n)
        assert name[0].isalnum() and name[-1].isalnum()
    assert object_name(long_a) != object_name(long_b)
    cm, job = render_run(load(long_a), image=DEFAULT_IMAGE, namespace=None)
    validate_k8s(job)
    assert cm["metadata"]["name"] == job["metadata"]["name"] == object_name(long_a)
    assert job["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"] == object_name(long_a)


def test_ray_address_replaces_the_local_ray() -> None:
    _, job = render_run(load(), image=DEFAULT_IMAGE, namespace=None, ray_address="ray://head:10001")
    check_job_spec(job["spec"], ray_address="ray://head:10001", service_account="pgx", config_maps={"pgx-adhoc"})


def test_settings_service_account_and_args_reach_the_job() -> None:
    settings = JobSettings(backoff_limit=0, active_deadline_seconds=60, tmp_size_limit="1Gi", run_as_user=2000)
    _, job = render_run(
        load(),
        image=DEFAULT_IMAGE,
        namespace=None,
        service_account="runner",
        extra_args=["--stage", "ingest"],
        settings=settings,
    )
    validate_k8s(job)
    check_job_spec(job["spec"], ray_address=None, service_account="runner", config_maps={"pgx-adhoc"})
    spec: dict[str, Any] = job["spec"]
    assert (spec["backoffLimit"], spec["activeDeadlineSeconds"]) == (0, 60)
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == pod["containers"][0]["securityContext"]["runAsUser"] == 2000
    assert pod["containers"][0]["args"] == ["run", "/etc/pgx/spec.yaml", "--stage", "ingest"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"image": " ", "namespace": None}, "--image must name an image"),
        ({"image": DEFAULT_IMAGE, "namespace": "Not_A_Label"}, "--namespace must be a DNS-1123 label"),
        ({"image": DEFAULT_IMAGE, "namespace": None, "service_account": "a b"}, "service account must be"),
    ],
)
def test_usage_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match=message) as info:
        render_run(load(), **kwargs)
    assert info.value.exit_code == 64
