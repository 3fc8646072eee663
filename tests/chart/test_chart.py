"""The Helm chart charts/pgx, rendered with the real Helm engine (helm-python-sdk)."""

from __future__ import annotations

import copy
from typing import Any

import helm_python as helm
import pytest
import yaml

from pgx_core import __version__
from pgx_core.render import JobSettings, render_run
from tests.chart.k8s import (
    CHART,
    KUBE_VERSIONS,
    by_kind,
    check_job_spec,
    render_chart,
    secret_like,
    spec_of,
    validate_k8s,
)

pytestmark = pytest.mark.chart

RAY = "ray://pgx-raycluster-head-svc:10001"
IRSA = {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/pgx-lake"}


def run_spec(name: str, lake: str = "s3://pgxdatalake", **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "lake": lake,
        "executor": {"maxParallel": 2},
        "stages": [{"use": "ingest", "name": "ingest-medical", "with": {"dataType": "medical"}}],
    }
    spec.update(extra)
    return {"apiVersion": "pgx.io/v1alpha1", "kind": "PipelineRun", "metadata": {"name": name}, "spec": spec}


TWO_SCHEDULES: list[dict[str, Any]] = [
    {"name": "nightly", "schedule": "0 2 * * *", "timeZone": "America/New_York", "runSpec": run_spec("nightly")},
    {
        "name": "weekly-reprocess",
        "schedule": "30 4 * * 0",
        "suspend": False,
        "extraArgs": ["--stage", "ingest-medical", "--limit", "10"],
        "activeDeadlineSeconds": 7200,
        "resources": {"requests": {"cpu": "4", "memory": "16Gi"}, "limits": {"cpu": "4", "memory": "16Gi"}},
        "runSpec": run_spec("weekly", lake="s3://pgxdatalake/test", partitions={"years": [2019]}),
    },
]
CUSTOM: dict[str, Any] = {
    "serviceAccount": {"annotations": IRSA},
    "resources": {
        "requests": {"cpu": "8", "memory": "32Gi", "ephemeral-storage": "20Gi"},
        "limits": {"cpu": "8", "memory": "32Gi", "ephemeral-storage": "40Gi"},
    },
    "tmp": {"sizeLimit": "30Gi"},
    "job": {
        "backoffLimit": 5,
        "activeDeadlineSeconds": 3600,
        "ttlSecondsAfterFinished": 60,
        "terminationGracePeriodSeconds": 300,
    },
    "cronJob": {
        "timeZone": "Europe/Berlin",
        "startingDeadlineSeconds": 120,
        "successfulJobsHistoryLimit": 1,
        "failedJobsHistoryLimit": 5,
    },
    "extraEnv": [{"name": "PGX_DISABLE_PLUGINS", "value": "linecount"}],
    "podLabels": {"team": "research"},
    "podAnnotations": {"cluster-autoscaler.kubernetes.io/safe-to-evict": "false"},
    "nodeSelector": {"workload": "batch"},
    "tolerations": [{"key": "batch", "operator": "Exists", "effect": "NoSchedule"}],
    "image": {"repository": "registry.example.com/pgx", "tag": "0.1.0-rc1", "pullPolicy": "Always"},
}
SCENARIOS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "two-schedules": {"schedules": TWO_SCHEDULES},
    "ray-address": {"ray": {"address": RAY}, "schedules": TWO_SCHEDULES},
    "custom": CUSTOM,
    "existing-serviceaccount": {"serviceAccount": {"create": False, "name": "pgx-runner"}},
    "no-schedules": {"schedules": []},
}


def merged(values: dict[str, Any]) -> dict[str, Any]:
    with helm.Chart.load(str(CHART)) as chart:
        return chart.merge_values(values)


@pytest.fixture(scope="module", params=sorted(SCENARIOS))
def scenario(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any], list[dict[str, Any]]]:
    name = request.param
    values = SCENARIOS[name]
    return name, merged(values), render_chart(values)


def test_every_object_is_valid_kubernetes(scenario: tuple[str, dict[str, Any], list[dict[str, Any]]]) -> None:
    _, _, objects = scenario
    assert objects
    for obj in objects:
        validate_k8s(obj)
        assert "namespace" not in obj["metadata"], "the chart must not hard-code a namespace"
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "pgx"
        assert labels["app.kubernetes.io/instance"] == "pgx"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/version"] == __version__


def test_one_configmap_and_cronjob_per_schedule(scenario: tuple[str, dict[str, Any], list[dict[str, Any]]]) -> None:
    _, values, objects = scenario
    schedules = values["schedules"]
    names = [f"pgx-{s['name']}" for s in schedules]
    assert [o["metadata"]["name"] for o in by_kind(objects, "ConfigMap")] == names
    assert [o["metadata"]["name"] for o in by_kind(objects, "CronJob")] == names
    kinds = ({"ConfigMap", "CronJob"} if schedules else set()) | (
        {"ServiceAccount"} if values["serviceAccount"]["create"] else set()
    )
    assert {o["kind"] for o in objects} == kinds


def test_cronjob_settings(scenario: tuple[str, dict[str, Any], list[dict[str, Any]]]) -> None:
    _, values, objects = scenario
    for schedule, cj in zip(values["schedules"], by_kind(objects, "CronJob"), strict=True):
        spec = cj["spec"]
        assert spec["schedule"] == schedule["schedule"]
        assert spec["timeZone"] == schedule.get("timeZone", values["cronJob"]["timeZone"])
        assert spec["suspend"] is bool(schedule.get("suspend", False))
        assert spec["concurrencyPolicy"] == "Forbid"
        assert spec["startingDeadlineSeconds"] == values["cronJob"]["startingDeadlineSeconds"]
        assert spec["successfulJobsHistoryLimit"] == values["cronJob"]["successfulJobsHistoryLimit"]
        assert spec["failedJobsHistoryLimit"] == values["cronJob"]["failedJobsHistoryLimit"]


def test_every_pod_template(scenario: tuple[str, dict[str, Any], list[dict[str, Any]]]) -> None:
    _, values, objects = scenario
    sa = values["serviceAccount"]["name"] or "pgx"
    config_maps = {o["metadata"]["name"] for o in by_kind(objects, "ConfigMap")}
    for schedule, cj in zip(values["schedules"], by_kind(objects, "CronJob"), strict=True):
        job = cj["spec"]["jobTemplate"]["spec"]
        check_job_spec(job, ray_address=values["ray"]["address"] or None, service_account=sa, config_maps=config_maps)
        assert job["template"]["spec"]["volumes"][0]["configMap"]["name"] == cj["metadata"]["name"]
        container = job["template"]["spec"]["containers"][0]
        # Values reach the pod: job settings, resources (a schedule's own win), image, env, scheduling.
        assert job["backoffLimit"] == values["job"]["backoffLimit"]
        assert job["activeDeadlineSeconds"] == schedule.get(
            "activeDeadlineSeconds", values["job"]["activeDeadlineSeconds"]
        )
        assert job["ttlSecondsAfterFinished"] == values["job"]["ttlSecondsAfterFinished"]
        assert container["resources"] == schedule.get("resources", values["resources"])
        assert container["args"] == ["run", "/etc/pgx/spec.yaml", *schedule.get("extraArgs", [])]
        tag = values["image"]["tag"] or __version__
        assert container["image"] == f"{values['image']['repository']}:{tag}"
        assert container["imagePullPolicy"] == values["image"]["pullPolicy"]
        pod = job["template"]["spec"]
        assert pod["securityContext"]["runAsUser"] == values["securityContext"]["runAsUser"]
        assert pod["terminationGracePeriodSeconds"] == values["job"]["terminationGracePeriodSeconds"]
        assert {v["name"]: v for v in pod["volumes"]}["tmp"]["emptyDir"]["sizeLimit"] == values["tmp"]["sizeLimit"]
        for extra in values["extraEnv"]:
            assert extra in container["env"]
        assert pod.get("nodeSelector", {}) == values["nodeSelector"]
        assert pod.get("tolerations", []) == values["tolerations"]
        labels = job["template"]["metadata"]["labels"]
        assert labels["pgx.io/run-name"] == schedule["runSpec"]["metadata"]["name"]
        assert values["podLabels"].items() <= labels.items()


def test_every_embedded_run_spec_is_valid_and_holds_nothing_secret(
    scenario: tuple[str, dict[str, Any], list[dict[str, Any]]],
) -> None:
    _, values, objects = scenario
    for schedule, cm in zip(values["schedules"], by_kind(objects, "ConfigMap"), strict=True):
        assert set(cm["data"]) == {"spec.yaml"}
        spec = spec_of(cm)  # `pgx validate` of what the pod will read; raises SpecError
        assert spec.name == schedule["runSpec"]["metadata"]["name"]
        assert yaml.safe_load(cm["data"]["spec.yaml"]) == schedule["runSpec"]
        assert secret_like(yaml.safe_dump(cm)) == []


def test_serviceaccount(scenario: tuple[str, dict[str, Any], list[dict[str, Any]]]) -> None:
    _, values, objects = scenario
    accounts = by_kind(objects, "ServiceAccount")
    if not values["serviceAccount"]["create"]:
        assert accounts == []
        return
    (sa,) = accounts
    assert sa["metadata"]["name"] == "pgx"
    assert sa["metadata"].get("annotations", {}) == values["serviceAccount"]["annotations"]
    assert sa["automountServiceAccountToken"] is False


def test_no_rbac_objects(scenario: tuple[str, dict[str, Any], list[dict[str, Any]]]) -> None:
    # Nothing in a run uses the Kubernetes API, so the chart grants nothing.
    _, _, objects = scenario
    assert not {o["kind"] for o in objects} & {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_lint_is_clean(name: str) -> None:
    for version in KUBE_VERSIONS:
        report = helm.lint(str(CHART), SCENARIOS[name], strict=True, kube_version=f"v{version}")
        problems = [m for m in report["messages"] if m["severity"] >= 2]
        assert report["errors"] == [] and problems == [], report


def test_defaults_schedule_is_a_suspended_example() -> None:
    values = merged({})
    (schedule,) = values["schedules"]
    assert schedule["suspend"] is True
    (cj,) = by_kind(render_chart(), "CronJob")
    assert cj["spec"]["suspend"] is True


def test_notes_say_where_summaries_land() -> None:
    with helm.Chart.load(str(CHART)) as chart:
        notes = chart.render(values={"schedules": TWO_SCHEDULES}, name="pgx", namespace="batch")[
            "pgx/templates/NOTES.txt"
        ]
    assert "<lake>/pgx_pipeline/<script_name>/run_id=<run_id>/summary.json" in notes
    assert "pgx-nightly" in notes and "pgx-weekly-reprocess" in notes
    assert "kubectl -n batch create job --from=cronjob/" in notes


def test_release_name_prefixes_names_and_namespace_comes_from_the_release() -> None:
    objects = render_chart({"schedules": TWO_SCHEDULES}, release="prod", namespace="elsewhere")
    assert {o["metadata"]["name"] for o in objects} == {"prod-pgx", "prod-pgx-nightly", "prod-pgx-weekly-reprocess"}
    for cj in by_kind(objects, "CronJob"):
        pod = cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == "prod-pgx"
        assert pod["volumes"][0]["configMap"]["name"] == cj["metadata"]["name"]
    selector = {"app.kubernetes.io/name": "pgx", "app.kubernetes.io/instance": "prod"}
    for obj in objects:
        assert selector.items() <= obj["metadata"]["labels"].items()


def test_chart_and_pgx_render_make_the_same_job() -> None:
    """One shape: the chart's jobTemplate equals render_run's Job for the same spec and settings."""
    cases: list[tuple[dict[str, Any], dict[str, Any]]] = [
        ({}, {}),
        ({"ray": {"address": RAY}}, {"ray_address": RAY}),
        (
            {k: CUSTOM[k] for k in ("resources", "tmp", "job", "extraEnv")},
            {
                "settings": JobSettings(
                    backoff_limit=5,
                    active_deadline_seconds=3600,
                    ttl_seconds_after_finished=60,
                    termination_grace_period_seconds=300,
                    resources=CUSTOM["resources"],
                    tmp_size_limit="30Gi",
                    extra_env=CUSTOM["extraEnv"],
                )
            },
        ),
    ]
    for values, kwargs in cases:
        schedule = {"name": "nightly", "schedule": "0 2 * * *", "runSpec": run_spec("nightly")}
        (cj,) = by_kind(render_chart({**values, "schedules": [schedule]}), "CronJob")
        chart_job = copy.deepcopy(cj["spec"]["jobTemplate"]["spec"])
        (cm,) = by_kind(render_chart({**values, "schedules": [schedule]}), "ConfigMap")
        _, job = render_run(spec_of(cm), image=f"pgx:{__version__}", namespace=None, **kwargs)
        ours = copy.deepcopy(job["spec"])
        # Names and labels differ by design (a release vs. one run); everything else must not.
        chart_labels = chart_job["template"].pop("metadata")["labels"]
        our_labels = ours["template"].pop("metadata")["labels"]
        for key in ("app.kubernetes.io/name", "app.kubernetes.io/component", "pgx.io/run-name"):
            assert chart_labels[key] == our_labels[key]
        assert chart_job["template"]["spec"]["volumes"][0]["configMap"]["name"] == "pgx-nightly"
        assert ours["template"]["spec"]["volumes"][0]["configMap"]["name"] == "pgx-nightly"
        assert chart_job == ours


def test_jobsettings_defaults_are_the_values_defaults() -> None:
    v = merged({})
    assert JobSettings() == JobSettings(
        backoff_limit=v["job"]["backoffLimit"],
        active_deadline_seconds=v["job"]["activeDeadlineSeconds"],
        ttl_seconds_after_finished=v["job"]["ttlSecondsAfterFinished"],
        termination_grace_period_seconds=v["job"]["terminationGracePeriodSeconds"],
        resources=v["resources"],
        tmp_size_limit=v["tmp"]["sizeLimit"],
        shm_size_limit=v["ray"]["shmSizeLimit"],
        run_as_user=v["securityContext"]["runAsUser"],
        run_as_group=v["securityContext"]["runAsGroup"],
        fs_group=v["securityContext"]["fsGroup"],
        image_pull_policy=v["image"]["pullPolicy"],
        extra_env=tuple(v["extraEnv"]),
    )


def test_chart_version_follows_pgx() -> None:
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert meta["appVersion"] == __version__


def test_values_are_documented_and_camel_case() -> None:
    """Every key has a `# --` comment, or sits under a key that has one (helm-docs style)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, bool]] = []  # (indent, documented) of the enclosing keys
    comments: list[str] = []
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("#"):
            comments.append(stripped)
            continue
        if not stripped:
            comments = []
            continue
        indent = len(line) - len(line.lstrip())
        while stack and stack[-1][0] >= indent:
            stack.pop()
        inherited = any(documented for _, documented in stack)
        documented = any(c.startswith("# --") for c in comments)
        comments = []
        if inherited or stripped.startswith("-"):
            stack.append((indent, True))
            continue
        key = stripped.split(":", 1)[0]
        assert key[:1].islower() and "_" not in key and "-" not in key, f"values.yaml key {key!r} is not camelCase"
        following = next((ln for ln in lines[i + 1 :] if ln.strip() and not ln.strip().startswith("#")), "")
        section = stripped.endswith(":") and len(following) - len(following.lstrip()) > indent
        assert documented or section, f"values.yaml key {key!r} (line {i + 1}) has no '# --' comment"
        stack.append((indent, documented))


# --- values.schema.json and template guards ------------------------------------------------------


def schema_error(values: dict[str, Any]) -> str:
    with helm.Chart.load(str(CHART)) as chart, pytest.raises(helm.HelmValuesError) as info:
        chart.validate_schema(values)
    return str(info.value)


def test_schema_accepts_every_scenario() -> None:
    with helm.Chart.load(str(CHART)) as chart:
        for values in SCENARIOS.values():
            chart.validate_schema(values)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"imagTag": "x"}, "imagTag"),
        ({"securityContext": {"runAsUser": 0, "runAsGroup": 1, "fsGroup": 1}}, "runAsUser"),
        ({"extraEnv": [{"name": "AWS_SECRET_ACCESS_KEY", "value": "x"}]}, "extraEnv"),
        ({"extraEnv": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}, "extraEnv"),
        ({"schedules": [{"name": "n", "schedule": "0 2 * * *"}]}, "runSpec"),
        ({"schedules": [{"name": "Bad_Name", "schedule": "0 2 * * *", "runSpec": run_spec("x")}]}, "name"),
        ({"schedules": [{"name": "n", "schedule": "0 2 * * *", "runSpec": {**run_spec("x"), "kind": "Job"}}]}, "kind"),
        ({"job": {"backoffLimit": -1}}, "backoffLimit"),
        ({"ray": {"address": "not an address"}}, "address"),
    ],
)
def test_schema_refuses(values: dict[str, Any], expected: str) -> None:
    assert expected in schema_error(values)


def test_repeated_schedule_names_fail() -> None:
    twice = [TWO_SCHEDULES[0], {**TWO_SCHEDULES[0], "schedule": "0 3 * * *"}]
    with pytest.raises(helm.HelmRenderError, match="used twice"):
        render_chart({"schedules": twice})


def test_names_too_long_for_a_cronjob_fail() -> None:
    long = {**TWO_SCHEDULES[0], "name": "a" * 48}
    with pytest.raises(helm.HelmRenderError, match="longer than 52"):
        render_chart({"schedules": [long]}, release="a-long-release-name")


def test_secret_scan_catches_a_planted_secret() -> None:
    # The scan must be able to fail: a spec with a password in a stage's `with:` block.
    spec = run_spec("leaky")
    spec["spec"]["stages"][0]["with"]["password"] = "hunter2"  # noqa: S105 - planted on purpose
    (cm,) = by_kind(
        render_chart({"schedules": [{"name": "leaky", "schedule": "0 2 * * *", "runSpec": spec}]}), "ConfigMap"
    )
    assert secret_like(yaml.safe_dump(cm)) == ["password"]
    assert secret_like("key: AKIAABCDEFGHIJKLMNOP\n-----BEGIN RSA PRIVATE KEY-----") == [
        "AKIAABCDEFGHIJKLMNOP",
        "-----BEGIN RSA PRIVATE KEY-----",
    ]
