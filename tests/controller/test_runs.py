"""``pgx runs list|get|logs`` against the in-memory API server of fakeapi.py: in-process with the
real client, and through the real CLI with a kubeconfig that points at the fake server."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from pgx_core.errors import TransientError, UsageError
from pgx_core.k8s import runs
from pgx_core.k8s.controller import Controller
from tests.conftest import pgx, pgx_popen
from tests.controller.conftest import JOBS, NS, PODS, RUNS, pipelinerun
from tests.controller.fakeapi import FakeKube
from tests.controller.test_lifecycle import COMPLETE
from tests.controller.test_reconcile import run_of, wait_for

pytestmark = pytest.mark.integration

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
RUN_ID = "20260101T090000Z-3f9c2a7e"
LAKE = "s3://pgxdatalake"
STAGES = [
    {"use": "ingest", "name": "ingest-medical", "with": {"dataType": "medical"}},
    {"use": "impute"},
]


def conditions(**true: str) -> list[dict[str, Any]]:
    """The five conditions, those named True with the given reason, the others False."""
    return [
        {"type": kind, "status": "True" if kind in true else "False", "reason": true.get(kind, "NotApplicable"),
         "message": "", "lastTransitionTime": "2026-01-01T10:00:00Z", "observedGeneration": 1}
        for kind in ("Accepted", "Running", "Succeeded", "Failed", "Degraded")
    ]  # fmt: skip


# What pgx controller writes for a run that failed a gate in impute after doing most of its work.
FAILED = {
    "phase": "Failed",
    "reason": "DataError",
    "message": "pgx exited with 2: a gate failed; nothing was promoted for the failing entity",
    "observedGeneration": 1,
    "runId": RUN_ID,
    "jobName": "pgx-nightly-g1",
    "configMapName": "pgx-nightly-g1",
    "currentStage": "impute",
    "progress": "2/2",
    "entities": {"entities": 9, "completed": 5, "skipped": 2, "failed": 1, "locked": 1},
    "exitCode": 2,
    "startTime": "2026-01-01T09:00:00Z",
    "completionTime": "2026-01-01T10:00:00Z",
    "summaries": [
        {"stage": "ingest-medical", "location": f"{LAKE}/pgx_pipeline/txt_to_parquet/run_id={RUN_ID}/summary.json"},
        {"stage": "impute", "location": f"{LAKE}/pgx_pipeline/global_imputation/run_id={RUN_ID}/summary.json"},
    ],
    "problems": [],
    "conditions": conditions(Accepted="SpecValid", Failed="DataError", Degraded="PartlyDone"),
}
RUNNING = {
    "phase": "Running",
    "reason": "JobRunning",
    "observedGeneration": 1,
    "runId": "20260101T113000Z-0a1b2c3d",
    "jobName": "pgx-backfill-g1",
    "currentStage": "ingest-medical",
    "progress": "1/2",
    "entities": None,
}
SUCCEEDED = {
    "phase": "Succeeded",
    "reason": "Succeeded",
    "observedGeneration": 1,
    "currentStage": "impute",
    "progress": "2/2",
    "entities": {"entities": 4, "completed": 4, "skipped": 0, "failed": 0, "locked": 0},
}


@pytest.fixture
def api(kube: FakeKube) -> client.ApiClient:
    cfg = client.Configuration()
    cfg.host = kube.url
    return client.ApiClient(cfg)


def add_run(kube: FakeKube, name: str, status: dict[str, Any] | None, created: str, **spec: Any) -> None:
    """A PipelineRun created at ``created``, with ``status`` as pgx controller would have written it."""
    kube.create(RUNS, pipelinerun(name, stages=STAGES, **spec))
    kube.patch(RUNS, name, {"metadata": {"creationTimestamp": created}}, None)
    if status is not None:
        kube.set_status(RUNS, name, status)


def add_pod(kube: FakeKube, job: str, name: str, created: str, log: str, *, phase: str = "Running") -> None:
    """A pod of ``job`` (labelled as the Job controller labels them) whose pgx container wrote ``log``."""
    pod = {"metadata": {"name": name, "labels": {"job-name": job}}, "spec": {"containers": [{"name": "pgx"}]}}
    kube.create(PODS, pod)
    kube.patch(PODS, name, {"metadata": {"creationTimestamp": created}}, None)
    kube.set_status(PODS, name, {"phase": phase})
    kube.logs[name] = log


# --- list -----------------------------------------------------------------------------------------


def test_list_shows_each_run_with_phase_stage_progress_entities_and_age(kube: FakeKube, api: client.ApiClient) -> None:
    add_run(kube, "nightly", FAILED, "2026-01-01T09:00:00Z")
    add_run(kube, "backfill", RUNNING, "2026-01-01T11:55:00Z")
    add_run(kube, "monthly", SUCCEEDED, "2025-12-30T08:00:00Z")
    add_run(kube, "fresh", None, "2026-01-01T11:59:15Z")  # not seen by the controller yet
    kube.create(RUNS.replace(f"/{NS}/", "/elsewhere/"), pipelinerun("other"))
    found = runs.list_runs(api, NS)
    assert [r["metadata"]["name"] for r in found] == ["backfill", "fresh", "monthly", "nightly"]
    assert runs.table(found, NOW) == [
        "NAME       PHASE       STAGE            PROGRESS   ENTITIES                       AGE",
        "backfill   Running     ingest-medical   1/2        -                              5m",
        "fresh      -           -                -          -                              45s",
        "monthly    Succeeded   impute           2/2        4/4 done                       2d",
        "nightly    Failed      impute           2/2        7/9 done, 1 failed, 1 locked   3h",
    ]


def test_list_of_an_empty_namespace_and_its_json(kube: FakeKube, api: client.ApiClient) -> None:
    assert runs.list_runs(api, NS) == []
    add_run(kube, "nightly", FAILED, "2026-01-01T09:00:00Z")
    (doc,) = [runs.run_doc(r) for r in runs.list_runs(api, NS)]
    assert doc == {
        "name": "nightly", "namespace": NS, "generation": 1, "created": "2026-01-01T09:00:00Z", "status": FAILED,
    }  # fmt: skip


# --- get ------------------------------------------------------------------------------------------


def test_get_of_a_failed_run_says_what_happened_and_what_to_do_next(kube: FakeKube, api: client.ApiClient) -> None:
    add_run(kube, "nightly", FAILED, "2026-01-01T09:00:00Z")
    assert runs.describe(runs.get_run(api, NS, "nightly"), NOW) == [
        "PipelineRun nightly in namespace pgx, created 3h ago",
        "  phase:       Failed (DataError)",
        "  message:     pgx exited with 2: a gate failed; nothing was promoted for the failing entity",
        f"  run id:      {RUN_ID}",
        "  generation:  1, observed 1",
        "  job:         pgx-nightly-g1",
        "  stage:       impute (2/2 stages begun)",
        "  entities:    7/9 done, 1 failed, 1 locked (5 completed, 2 already done)",
        "  exit code:   2",
        "  started:     2026-01-01T09:00:00Z (3h ago)",
        "  completed:   2026-01-01T10:00:00Z (2h ago, after 1h0m)",
        "  conditions:",
        "    TYPE        STATUS   REASON          SINCE",
        "    Accepted    True     SpecValid       2026-01-01T10:00:00Z (2h ago)",
        "    Running     False    NotApplicable   2026-01-01T10:00:00Z (2h ago)",
        "    Succeeded   False    NotApplicable   2026-01-01T10:00:00Z (2h ago)",
        "    Failed      True     DataError       2026-01-01T10:00:00Z (2h ago)",
        "    Degraded    True     PartlyDone      2026-01-01T10:00:00Z (2h ago)",
        "  summaries:",
        f"    ingest-medical   {LAKE}/pgx_pipeline/txt_to_parquet/run_id={RUN_ID}/summary.json",
        f"    impute           {LAKE}/pgx_pipeline/global_imputation/run_id={RUN_ID}/summary.json",
        f"next: pgx report {RUN_ID} --lake {LAKE}  (the failed entities and why)",
        "next: pgx runs logs nightly  (what the pgx container wrote before it ended)",
    ]


def test_get_of_a_run_the_controller_finished_shows_conditions_and_the_report_hint(
    kube: FakeKube, api: client.ApiClient, make_controller: Callable[..., Controller]
) -> None:
    ctl = make_controller()
    kube.create(RUNS, pipelinerun("nightly"))
    ctl.reconcile(run_of(kube, "nightly"))
    kube.set_status(JOBS, "pgx-nightly-g1", COMPLETE)
    ctl.reconcile(run_of(kube, "nightly"))
    run = runs.get_run(api, NS, "nightly")
    run_id = run["status"]["runId"]
    lines = runs.describe(run)
    assert lines[1] == "  phase:       Succeeded"
    assert "  completed:   2026-01-01T01:00:00Z" in "\n".join(lines)
    table = lines[lines.index("  conditions:") + 1 : lines.index("  summaries:")]
    assert [row.split()[:3] for row in table] == [
        ["TYPE", "STATUS", "REASON"],
        ["Accepted", "True", "SpecValid"],
        ["Running", "False", "Finished"],
        ["Succeeded", "True", "Succeeded"],
        ["Failed", "False", "NotFailed"],
        ["Degraded", "False", "NotDegraded"],
    ]
    summary = f"s3://pgxdatalake/pgx_pipeline/txt_to_parquet/run_id={run_id}/summary.json"
    assert lines[lines.index("  summaries:") + 1].split() == ["ingest-medical", summary]
    assert lines[-1] == f"next: pgx report {run_id} --lake s3://pgxdatalake  (an HTML report of this run)"


def test_get_says_when_the_status_is_of_an_earlier_generation(kube: FakeKube, api: client.ApiClient) -> None:
    add_run(kube, "backfill", RUNNING, "2026-01-01T11:55:00Z")
    kube.patch(RUNS, "backfill", {"spec": {"limit": 5}}, None)  # edited; the controller has not looked yet
    lines = runs.describe(runs.get_run(api, NS, "backfill"), NOW)
    assert "  generation:  2, observed 1 (the status is of an earlier generation: pgx controller is behind)" in lines
    assert lines[-1] == "next: pgx runs logs backfill --follow  (the log of the pgx container as it runs)"


def test_get_of_an_invalid_spec_lists_its_problems(
    kube: FakeKube, api: client.ApiClient, make_controller: Callable[..., Controller]
) -> None:
    kube.create(RUNS, pipelinerun("broken", stages=[{"use": "no-such-stage"}]))
    make_controller().reconcile(run_of(kube, "broken"))
    lines = runs.describe(runs.get_run(api, NS, "broken"))
    problems = lines[lines.index("  problems:") + 1 : -1]
    assert problems and all(p.startswith("    pipelinerun/broken: spec.stages[0]") for p in problems)
    assert lines[-1].startswith("next: pgx validate FILE")
    with pytest.raises(UsageError, match=r"^PipelineRun broken has no Job: its spec is invalid"):
        list(runs.log_text(api, NS, "broken"))


def test_get_of_a_run_not_seen_yet_says_so(kube: FakeKube, api: client.ApiClient) -> None:
    add_run(kube, "fresh", None, "2026-01-01T11:59:15Z")
    assert runs.describe(runs.get_run(api, NS, "fresh"), NOW) == [
        "PipelineRun fresh in namespace pgx, created 45s ago",
        "  phase:       none yet: pgx controller has not looked at this run (is it running, in this namespace?)",
    ]


def test_get_of_an_unknown_run_is_a_usage_error(api: client.ApiClient) -> None:
    with pytest.raises(UsageError) as err:
        runs.get_run(api, NS, "nope")
    assert str(err.value) == "no PipelineRun nope in namespace pgx"
    assert err.value.exit_code == 64


# --- logs -----------------------------------------------------------------------------------------


def test_logs_are_those_of_the_newest_pod_of_the_current_job(kube: FakeKube, api: client.ApiClient) -> None:
    add_run(kube, "nightly", FAILED, "2026-01-01T09:00:00Z")
    add_pod(kube, "pgx-nightly-g1", "pgx-nightly-g1-first", "2026-01-01T09:00:00Z", "first try\n", phase="Failed")
    add_pod(kube, "pgx-nightly-g1", "pgx-nightly-g1-retry", "2026-01-01T09:10:00Z", "one\ntwo\nthree\n", phase="Failed")
    add_pod(kube, "pgx-other-g1", "pgx-other-g1-later", "2026-01-01T11:00:00Z", "another run\n")
    assert "".join(runs.log_text(api, NS, "nightly")) == "one\ntwo\nthree\n"
    assert "".join(runs.log_text(api, NS, "nightly", tail=2)) == "two\nthree\n"
    reads = [path for method, path in kube.requests if method == "GET" and "/log" in path]
    assert all("/pods/pgx-nightly-g1-retry/log?" in p and "container=pgx" in p for p in reads)
    assert "tailLines=2" in reads[-1]


def test_logs_follow_streams_until_the_container_ends(kube: FakeKube, api: client.ApiClient) -> None:
    add_run(kube, "backfill", RUNNING, "2026-01-01T11:55:00Z")
    add_pod(kube, "pgx-backfill-g1", "pgx-backfill-g1-pod", "2026-01-01T11:55:00Z", "started\n")
    seen: list[str] = []
    follower = threading.Thread(target=lambda: seen.extend(runs.log_text(api, NS, "backfill", follow=True)))
    follower.start()
    try:
        wait_for(lambda: "".join(seen) == "started\n")
        kube.logs["pgx-backfill-g1-pod"] += "stage impute\n"
        wait_for(lambda: "".join(seen) == "started\nstage impute\n")  # shown while the pod still runs
        assert follower.is_alive()
        kube.set_status(PODS, "pgx-backfill-g1-pod", {"phase": "Succeeded"})
    finally:
        follower.join(10)
    assert not follower.is_alive()
    assert "".join(seen) == "started\nstage impute\n"


def test_logs_say_why_there_is_no_log_to_read(kube: FakeKube, api: client.ApiClient) -> None:
    add_run(kube, "fresh", None, "2026-01-01T11:59:15Z")
    with pytest.raises(TransientError, match=r"^PipelineRun fresh has no Job yet \(phase not seen"):
        list(runs.log_text(api, NS, "fresh"))
    add_run(kube, "backfill", RUNNING, "2026-01-01T11:55:00Z")
    with pytest.raises(TransientError, match=r"^Job pgx-backfill-g1 of PipelineRun backfill has no pod yet"):
        list(runs.log_text(api, NS, "backfill"))
    add_pod(kube, "pgx-backfill-g1", "pgx-backfill-g1-pod", "2026-01-01T11:55:00Z", "")
    waiting = {"name": "pgx", "image": "pgx", "imageID": "", "ready": False, "restartCount": 0,
               "state": {"waiting": {"reason": "ContainerCreating"}}}  # fmt: skip
    kube.set_status(PODS, "pgx-backfill-g1-pod", {"phase": "Pending", "containerStatuses": [waiting]})
    with pytest.raises(TransientError, match=r"^container pgx of pod pgx-backfill-g1-pod has not started yet "):
        list(runs.log_text(api, NS, "backfill"))
    add_run(kube, "nightly", FAILED, "2026-01-01T09:00:00Z")  # its Job and pods removed after their TTL
    with pytest.raises(UsageError, match=r"^Job pgx-nightly-g1 of PipelineRun nightly has no pod left"):
        list(runs.log_text(api, NS, "nightly"))


# --- API failures ---------------------------------------------------------------------------------


def test_api_errors_are_one_line_naming_the_http_status(kube: FakeKube, api: client.ApiClient) -> None:
    kube.fail("GET", "/pipelineruns", times=1, status=403)
    with pytest.raises(UsageError) as refused:
        runs.list_runs(api, NS)
    assert str(refused.value) == "listing PipelineRuns in namespace pgx: HTTP 403 Forbidden: injected failure"
    kube.fail("GET", "/pipelineruns/nightly", times=1, status=503)
    with pytest.raises(TransientError) as busy:
        runs.get_run(api, NS, "nightly")
    assert str(busy.value) == (
        "reading PipelineRun nightly in namespace pgx: HTTP 503 Service Unavailable: injected failure; "
        "try again in a moment"
    )
    kube.fail("GET", "/pipelineruns", times=1, status=404)
    with pytest.raises(UsageError, match=r"is the PipelineRun CRD \(pipelineruns\.pgx\.io\) installed"):
        runs.list_runs(api, NS)
    nobody = client.Configuration()
    nobody.host = "http://127.0.0.1:9"  # nothing listens there
    nobody.retries = False
    with pytest.raises(TransientError) as silent:
        runs.list_runs(client.ApiClient(nobody), NS)
    assert str(silent.value).startswith(
        "listing PipelineRuns in namespace pgx: no answer from the Kubernetes API at http://127.0.0.1:9 ("
    )
    assert silent.value.exit_code == 75


# --- the command line -----------------------------------------------------------------------------


def kubeconfig(tmp_path: Path, server: str, namespace: str | None = NS) -> dict[str, str]:
    """Environment for a ``pgx`` subprocess whose kubeconfig's current context points at ``server``."""
    path = tmp_path / "kubeconfig"
    context = {"cluster": "fake", "user": "u", **({"namespace": namespace} if namespace else {})}
    path.write_text(
        yaml.safe_dump({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": server}}],
            "users": [{"name": "u", "user": {"token": "unused"}}],
            "contexts": [{"name": "fake", "context": context}],
            "current-context": "fake",
        })
    )  # fmt: skip
    return {"KUBECONFIG": str(path), "HOME": str(tmp_path), "KUBERNETES_SERVICE_HOST": ""}


def test_the_cli_lists_gets_and_shows_logs(kube: FakeKube, tmp_path: Path) -> None:
    env = kubeconfig(tmp_path, kube.url)  # the context's namespace is the default
    add_run(kube, "nightly", FAILED, "2026-01-01T09:00:00Z")
    add_run(kube, "backfill", RUNNING, "2026-01-01T11:55:00Z")
    add_pod(kube, "pgx-nightly-g1", "pgx-nightly-g1-pod", "2026-01-01T09:00:00Z", '{"msg": "a"}\n{"msg": "b"}\n')

    listed = pgx("runs", "list", env=env, check=True).stdout.splitlines()
    assert listed[0].split() == ["NAME", "PHASE", "STAGE", "PROGRESS", "ENTITIES", "AGE"]
    assert [row.split()[:4] for row in listed[1:]] == [
        ["backfill", "Running", "ingest-medical", "1/2"],
        ["nightly", "Failed", "impute", "2/2"],
    ]
    doc = json.loads(pgx("--json", "runs", "list", env=env, check=True).stdout)
    assert [(r["name"], r["namespace"], r["status"].get("phase")) for r in doc["runs"]] == [
        ("backfill", NS, "Running"), ("nightly", NS, "Failed"),
    ]  # fmt: skip
    assert doc["runs"][1]["status"] == FAILED

    got = pgx("runs", "get", "nightly", env=env, check=True).stdout
    assert got.startswith("PipelineRun nightly in namespace pgx, created ")
    assert "    Degraded    True     PartlyDone " in got
    assert got.endswith(
        f"next: pgx report {RUN_ID} --lake {LAKE}  (the failed entities and why)\n"
        "next: pgx runs logs nightly  (what the pgx container wrote before it ended)\n"
    )
    doc = json.loads(pgx("runs", "get", "nightly", "--json", env=env, check=True).stdout)
    assert doc == {
        "name": "nightly", "namespace": NS, "generation": 1, "created": "2026-01-01T09:00:00Z", "status": FAILED,
    }  # fmt: skip

    assert pgx("runs", "logs", "nightly", "--tail", "1", "--json", env=env, check=True).stdout == '{"msg": "b"}\n'
    other = pgx("runs", "list", "--namespace", "elsewhere", env=env, check=True)
    assert other.stdout == "no PipelineRuns in namespace elsewhere\n"


def test_the_cli_follows_a_log_as_it_is_written(kube: FakeKube, tmp_path: Path) -> None:
    add_run(kube, "backfill", RUNNING, "2026-01-01T11:55:00Z")
    add_pod(kube, "pgx-backfill-g1", "pgx-backfill-g1-pod", "2026-01-01T11:55:00Z", "started\n")
    proc = pgx_popen("runs", "logs", "backfill", "--follow", env=kubeconfig(tmp_path, kube.url))
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "started\n"
        kube.logs["pgx-backfill-g1-pod"] += "stage impute\n"
        assert proc.stdout.readline() == "stage impute\n"  # printed while the container still runs
        kube.set_status(PODS, "pgx-backfill-g1-pod", {"phase": "Succeeded"})
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_the_cli_refuses_in_one_line(kube: FakeKube, tmp_path: Path) -> None:
    env = kubeconfig(tmp_path, kube.url, namespace=None)  # no namespace in the context: default
    unknown = pgx("runs", "get", "nope", env=env)
    assert unknown.returncode == 64 and unknown.stdout == ""
    assert unknown.stderr == "pgx: no PipelineRun nope in namespace default\n"
    kube.fail("GET", "/pipelineruns", times=1, status=503)
    busy = pgx("runs", "list", env=env)
    assert busy.returncode == 75
    assert busy.stderr == (
        "pgx: listing PipelineRuns in namespace default: HTTP 503 Service Unavailable: injected failure; "
        "try again in a moment\n"
    )
    bad = pgx("runs", "logs", "nightly", "--tail", "-1", env=env)
    assert bad.returncode == 64 and "argument --tail: expected a number of lines (0 or more), got '-1'" in bad.stderr


def test_the_cli_without_kubeconfig_is_one_line(tmp_path: Path) -> None:
    proc = pgx(
        "runs", "list", env={"HOME": str(tmp_path), "KUBECONFIG": str(tmp_path / "none"), "KUBERNETES_SERVICE_HOST": ""}
    )
    assert proc.returncode == 64
    assert proc.stderr == (
        "pgx: pgx runs: no Kubernetes configuration: not running in a cluster (no service account token) and no "
        "usable kubeconfig (set KUBECONFIG or write ~/.kube/config)\n"
    )
