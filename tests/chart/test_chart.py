"""The Helm chart charts/pgx, rendered with the real Helm engine (helm-python-sdk)."""

from __future__ import annotations

import copy
from typing import Any

import helm_python as helm
import pytest
import ray
import yaml

from pgx_core import __version__
from pgx_core.k8s.render import JobSettings, RayClusterSettings, render_rayjob, render_run
from tests.chart.k8s import (
    CHART,
    KUBE_VERSIONS,
    REPO,
    by_kind,
    check_job_spec,
    check_ray_pod,
    literal_credentials,
    ray_pods,
    render_chart,
    secret_like,
    spec_of,
    validate_k8s,
    validate_kuberay,
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
RAY_TOKEN = [
    {"name": "RAY_AUTH_MODE", "value": "token"},
    {"name": "RAY_AUTH_TOKEN", "valueFrom": {"secretKeyRef": {"name": "pgx-raycluster-token", "key": "auth_token"}}},
]
CA_VOLUME = {
    "extraVolumes": [{"name": "corp-ca", "secret": {"secretName": "corp-ca-bundle"}}],
    "extraVolumeMounts": [{"name": "corp-ca", "mountPath": "/etc/ssl/corp", "readOnly": True}],
}
WORKERS = {
    "replicas": 3,
    "minReplicas": 1,
    "maxReplicas": 12,
    "idleTimeoutSeconds": 300,
    "resources": {"requests": {"cpu": "8", "memory": "32Gi"}, "limits": {"cpu": "8", "memory": "32Gi"}},
}
SCENARIOS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "two-schedules": {"schedules": TWO_SCHEDULES},
    "ray-cluster": {
        "ray": {"mode": "cluster", "address": RAY, "tokenSecret": "pgx-raycluster-token"},
        "extraEnv": [{"name": "PGX_DISABLE_PLUGINS", "value": "linecount"}],
        **CA_VOLUME,
        "schedules": TWO_SCHEDULES,
    },
    "rayjob": {"ray": {"mode": "rayjob"}, "schedules": TWO_SCHEDULES},
    "rayjob-autoscaling": {
        **CUSTOM,
        **CA_VOLUME,
        "ray": {
            "mode": "rayjob",
            "workers": WORKERS,
            "head": {"resources": {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"cpu": "2", "memory": "8Gi"}}},
            "rayJob": {"ttlSecondsAfterFinished": 600},
        },
        "schedules": TWO_SCHEDULES,
    },
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


def schedule_kind(values: dict[str, Any]) -> str:
    return "RayCronJob" if values["ray"]["mode"] == "rayjob" else "CronJob"


def test_every_object_is_valid_kubernetes(scenario: tuple[str, dict[str, Any], list[dict[str, Any]]]) -> None:
    _, _, objects = scenario
    assert objects
    for obj in objects:
        if obj["apiVersion"] == "ray.io/v1":
            validate_kuberay(obj)  # KubeRay's CRD, and each pod template as a Pod
        else:
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
    kind = schedule_kind(values)
    assert [o["metadata"]["name"] for o in by_kind(objects, "ConfigMap")] == names
    assert [o["metadata"]["name"] for o in by_kind(objects, kind)] == names
    kinds = ({"ConfigMap", kind} if schedules else set()) | (
        {"ServiceAccount"} if values["serviceAccount"]["create"] else set()
    )
    assert {o["kind"] for o in objects} == kinds


def test_cronjob_settings(scenario: tuple[str, dict[str, Any], list[dict[str, Any]]]) -> None:
    _, values, objects = scenario
    kind = schedule_kind(values)
    for schedule, cj in zip(values["schedules"], by_kind(objects, kind), strict=True):
        spec = cj["spec"]
        assert spec["schedule"] == schedule["schedule"]
        assert spec["timeZone"] == schedule.get("timeZone", values["cronJob"]["timeZone"])
        assert spec["suspend"] is bool(schedule.get("suspend", False))
        if kind == "RayCronJob":  # no concurrency policy: an overlapping run meets leased entities (exit 3)
            continue
        assert spec["concurrencyPolicy"] == "Forbid"
        assert spec["startingDeadlineSeconds"] == values["cronJob"]["startingDeadlineSeconds"]
        assert spec["successfulJobsHistoryLimit"] == values["cronJob"]["successfulJobsHistoryLimit"]
        assert spec["failedJobsHistoryLimit"] == values["cronJob"]["failedJobsHistoryLimit"]


def test_every_pod_template(scenario: tuple[str, dict[str, Any], list[dict[str, Any]]]) -> None:
    _, values, objects = scenario
    sa = values["serviceAccount"]["name"] or "pgx"
    config_maps = {o["metadata"]["name"] for o in by_kind(objects, "ConfigMap")}
    schedules = values["schedules"] if values["ray"]["mode"] != "rayjob" else []
    for schedule, cj in zip(schedules, by_kind(objects, "CronJob"), strict=True):
        job = cj["spec"]["jobTemplate"]["spec"]
        check_job_spec(job, ray_address=values["ray"]["address"] or None, service_account=sa, config_maps=config_maps)
        env = {e["name"]: e for e in job["template"]["spec"]["containers"][0]["env"]}
        if values["ray"]["tokenSecret"]:
            ref = {"name": values["ray"]["tokenSecret"], "key": "auth_token"}
            assert env["RAY_AUTH_TOKEN"] == {"name": "RAY_AUTH_TOKEN", "valueFrom": {"secretKeyRef": ref}}
            assert env["RAY_AUTH_MODE"]["value"] == "token"
        else:
            assert "RAY_AUTH_TOKEN" not in env
        for extra in values["extraVolumes"]:
            assert extra in job["template"]["spec"]["volumes"]
        for extra in values["extraVolumeMounts"]:
            assert extra in job["template"]["spec"]["containers"][0]["volumeMounts"]
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


def test_every_ray_pod_template(scenario: tuple[str, dict[str, Any], list[dict[str, Any]]]) -> None:
    _, values, objects = scenario
    sa = values["serviceAccount"]["name"] or "pgx"
    ray, workers = values["ray"], values["ray"]["workers"]
    schedules = values["schedules"] if ray["mode"] == "rayjob" else []
    for schedule, rcj in zip(schedules, by_kind(objects, "RayCronJob"), strict=True):
        job = rcj["spec"]["jobTemplate"]
        assert job["entrypoint"] == " ".join(["pgx", "run", "/etc/pgx/spec.yaml", *schedule.get("extraArgs", [])])
        assert job["shutdownAfterJobFinishes"] is True
        assert job["ttlSecondsAfterFinished"] == ray["rayJob"]["ttlSecondsAfterFinished"]
        assert job["activeDeadlineSeconds"] == schedule.get(
            "activeDeadlineSeconds", values["job"]["activeDeadlineSeconds"]
        )
        cluster = job["rayClusterSpec"]
        assert cluster["authOptions"] == {"mode": ray["rayJob"]["authMode"]}
        [group] = cluster["workerGroupSpecs"]
        bounds = (group["minReplicas"], group["replicas"], group["maxReplicas"])
        assert bounds == (workers["minReplicas"], workers["replicas"], workers["maxReplicas"])
        assert cluster.get("enableInTreeAutoscaling", False) is (workers["minReplicas"] != workers["maxReplicas"])
        pods = ray_pods(rcj)
        head = pods["head"]["spec"]
        assert {v["name"]: v for v in head["volumes"]}["spec"]["configMap"]["name"] == rcj["metadata"]["name"]
        assert head["containers"][0]["resources"] == ray["head"]["resources"]
        worker = pods["worker-workers"]["spec"]
        assert worker["containers"][0]["resources"] == schedule.get("resources", workers["resources"])
        for role, template in pods.items():
            check_ray_pod(role, template, service_account=sa)
            pod, (container,) = template["spec"], template["spec"]["containers"]
            assert container["image"] == f"{values['image']['repository']}:{values['image']['tag'] or __version__}"
            for extra in values["extraEnv"]:
                assert extra in container["env"], role
            for extra in values["extraVolumes"]:
                assert extra in pod["volumes"], role
            for extra in values["extraVolumeMounts"]:
                assert extra in container["volumeMounts"], role
            assert pod.get("nodeSelector", {}) == values["nodeSelector"]
            assert pod.get("tolerations", []) == values["tolerations"]
            assert values["podLabels"].items() <= template["metadata"]["labels"].items()


def test_nothing_rendered_holds_a_credential(scenario: tuple[str, dict[str, Any], list[dict[str, Any]]]) -> None:
    _, _, objects = scenario
    for obj in objects:
        assert literal_credentials(obj) == [], obj["metadata"]["name"]


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
    with helm.Chart.load(str(CHART)) as chart:
        values = {"schedules": TWO_SCHEDULES, "ray": {"mode": "rayjob"}}
        rendered = chart.render(values=values, name="pgx", namespace="b")
    notes = rendered["pgx/templates/NOTES.txt"]
    assert "KubeRay RayCronJob" in notes and "get rayjobs" in notes and "--from=cronjob" not in notes


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
        ({"ray": {"mode": "cluster", "address": RAY}}, {"ray_address": RAY}),
        (
            {"ray": {"mode": "cluster", "address": RAY, "tokenSecret": "ray-token"}},
            {"ray_address": RAY, "ray_token_secret": "ray-token"},
        ),
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


def test_chart_and_pgx_render_make_the_same_rayjob() -> None:
    """One shape: a RayCronJob's jobTemplate equals render_rayjob's RayJob spec for the same settings."""
    head = {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"cpu": "2", "memory": "8Gi"}}
    cases: list[tuple[dict[str, Any], JobSettings, RayClusterSettings]] = [
        ({}, JobSettings(), RayClusterSettings()),
        (
            {
                "ray": {"workers": WORKERS, "head": {"resources": head}, "rayJob": {"ttlSecondsAfterFinished": 60}},
                "tmp": {"sizeLimit": "30Gi"},
                "extraEnv": RAY_TOKEN,
                **CA_VOLUME,
            },
            JobSettings(
                tmp_size_limit="30Gi",
                extra_env=RAY_TOKEN,
                extra_volumes=CA_VOLUME["extraVolumes"],
                extra_volume_mounts=CA_VOLUME["extraVolumeMounts"],
            ),
            RayClusterSettings(
                worker_replicas=3,
                min_workers=1,
                max_workers=12,
                idle_timeout_seconds=300,
                worker_resources=WORKERS["resources"],
                head_resources=head,
                ttl_seconds_after_finished=60,
            ),
        ),
    ]
    schedule = {"name": "nightly", "schedule": "0 2 * * *", "extraArgs": ["--stage", "x"]}
    schedule["runSpec"] = run_spec("nightly")
    for values, settings, cluster in cases:
        objects = render_chart({**values, "ray": {"mode": "rayjob", **values.get("ray", {})}, "schedules": [schedule]})
        (rcj,), (cm,) = by_kind(objects, "RayCronJob"), by_kind(objects, "ConfigMap")
        _, rayjob = render_rayjob(
            spec_of(cm), image=f"pgx:{__version__}", namespace=None, extra_args=["--stage", "x"],
            settings=settings, cluster=cluster,
        )  # fmt: skip
        chart_job, ours = copy.deepcopy(rcj["spec"]["jobTemplate"]), copy.deepcopy(rayjob["spec"])
        # Labels differ by design (a release vs. one run); everything else must not.
        for job in (chart_job, ours):
            for template in ray_pods({"kind": "RayJob", "spec": job}).values():
                labels = template.pop("metadata")["labels"]
                assert labels["app.kubernetes.io/component"].startswith("ray-")
        assert chart_job == ours


def test_chart_names_the_ray_of_the_image() -> None:
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    lock = (REPO / "scripts" / "image" / "requirements.lock").read_text()
    assert f"\nray=={ray.__version__} " in lock  # the image's Ray is the tests' Ray
    assert meta["annotations"]["pgx.io/ray-version"] == ray.__version__


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
        extra_volumes=tuple(v["extraVolumes"]),
        extra_volume_mounts=tuple(v["extraVolumeMounts"]),
    )
    ray_values, cluster = v["ray"], RayClusterSettings()
    w = ray_values["workers"]
    low, high = cluster.bounds
    assert (low, cluster.worker_replicas, high) == (w["minReplicas"], w["replicas"], w["maxReplicas"])
    assert (cluster.worker_resources, cluster.idle_timeout_seconds) == (w["resources"], w["idleTimeoutSeconds"])
    assert cluster.head_resources == ray_values["head"]["resources"]
    assert cluster.shm_size_limit == ray_values["shmSizeLimit"]
    assert cluster.ttl_seconds_after_finished == ray_values["rayJob"]["ttlSecondsAfterFinished"]
    assert cluster.auth_mode == ray_values["rayJob"]["authMode"]


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


SECRET_REF = {"name": "s", "key": "k"}


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
        ({"extraEnv": [{"name": "AWS_SESSION_TOKEN", "valueFrom": {"secretKeyRef": SECRET_REF}}]}, "extraEnv"),
        ({"extraEnv": [{"name": "RAY_AUTH_TOKEN", "value": "in-clear"}]}, "extraEnv"),
        ({"extraEnv": [{"name": "DB_PASSWORD", "value": "in-clear"}]}, "extraEnv"),
        ({"extraVolumes": [{"name": "host", "hostPath": {"path": "/"}}]}, "extraVolumes"),
        ({"extraVolumes": [{"name": "tmp", "emptyDir": {}}]}, "extraVolumes"),
        ({"extraVolumeMounts": [{"name": "x", "mountPath": "/tmp"}]}, "extraVolumeMounts"),
        ({"ray": {"mode": "kuberay"}}, "mode"),
        ({"ray": {"workers": {"maxReplicas": 0}}}, "maxReplicas"),
        ({"schedules": [{"name": "n", "schedule": "0 2 * * *"}]}, "runSpec"),
        ({"schedules": [{"name": "Bad_Name", "schedule": "0 2 * * *", "runSpec": run_spec("x")}]}, "name"),
        ({"schedules": [{"name": "n", "schedule": "0 2 * * *", "runSpec": {**run_spec("x"), "kind": "Job"}}]}, "kind"),
        ({"job": {"backoffLimit": -1}}, "backoffLimit"),
        ({"ray": {"address": "not an address"}}, "address"),
    ],
)
def test_schema_refuses(values: dict[str, Any], expected: str) -> None:
    assert expected in schema_error(values)


@pytest.mark.parametrize(
    ("ray", "message"),
    [
        ({"mode": "cluster"}, "set ray.address"),
        ({"address": RAY}, "set ray.mode: cluster"),
        ({"mode": "rayjob", "address": RAY}, "set ray.mode: cluster"),
        ({"tokenSecret": "ray-token"}, "set ray.mode: cluster"),
        ({"mode": "rayjob", "workers": {"replicas": 1, "minReplicas": 2, "maxReplicas": 4}}, "minReplicas <= replicas"),
        ({"mode": "rayjob", "workers": {"replicas": 5, "minReplicas": 2, "maxReplicas": 4}}, "minReplicas <= replicas"),
    ],
)
def test_ray_settings_that_cannot_work_fail(ray: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmRenderError, match=message):
        render_chart({"ray": ray})


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
