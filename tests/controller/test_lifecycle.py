"""pgx controller through a PipelineRun's life: one Job at a time, restarts between any two
writes, an API error storm, conditions, events, progress and metrics. Against the in-memory API
server of fakeapi.py, with the real client."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from pgx_core.k8s import termination
from pgx_core.k8s.controller import LABEL_RUN, Controller
from pgx_core.k8s.metrics import serve
from pgx_core.k8s.status import job_running
from pgx_core.k8s.workqueue import WorkQueue
from tests.controller.conftest import CMS, EVENTS, JOBS, PODS, RUNS, pipelinerun, running_pod
from tests.controller.fakeapi import FakeKube
from tests.controller.test_reconcile import run_of, start, wait_for

pytestmark = pytest.mark.integration

COMPLETE = {
    "active": 0,
    "succeeded": 1,
    "startTime": "2026-01-01T00:00:00Z",
    "completionTime": "2026-01-01T01:00:00Z",
    "conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": "2026-01-01T01:00:00Z"}],
}


def running(kube: FakeKube, run: str = "example") -> list[str]:
    """Names of the run's Jobs that may still write."""
    return sorted(
        j["metadata"]["name"] for j in kube.items(JOBS) if j["metadata"]["labels"][LABEL_RUN] == run and job_running(j)
    )


def reasons(kube: FakeKube, run: str = "example") -> list[str]:
    return [e["reason"] for e in kube.items(EVENTS) if e["involvedObject"]["name"] == run]


def condition(run: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in run["status"]["conditions"] if c["type"] == kind)


def start_job(kube: FakeKube, name: str) -> dict[str, Any]:
    kube.set_status(JOBS, name, {"active": 1, "startTime": "2026-01-01T00:00:00Z"})
    job = kube.get(JOBS, name)
    assert job is not None
    return job


def test_a_spec_edit_waits_for_the_running_job(kube: FakeKube, make_controller: Callable[..., Controller]) -> None:
    ctl = make_controller()
    kube.create(RUNS, pipelinerun())
    ctl.reconcile(run_of(kube))
    start_job(kube, "pgx-example-g1")
    kube.patch(RUNS, "example", {"spec": {"limit": 5}}, None)  # generation 2 while generation 1 runs
    assert ctl.reconcile(run_of(kube)) == 5.0  # looked at again soon; the Job watch also wakes it
    assert running(kube) == ["pgx-example-g1"] and kube.get(JOBS, "pgx-example-g2") is None
    st = run_of(kube)["status"]
    assert (st["phase"], st["reason"], st["observedGeneration"]) == ("Waiting", "WaitingForPreviousRun", 2)
    assert "pgx-example-g1" in st["message"]
    assert condition(run_of(kube), "Running")["status"] == "False"
    ctl.reconcile(run_of(kube))
    assert running(kube) == ["pgx-example-g1"]  # still one
    kube.set_status(JOBS, "pgx-example-g1", COMPLETE)  # generation 1 ends
    ctl.reconcile(run_of(kube))
    assert running(kube) == ["pgx-example-g2"]
    assert run_of(kube)["status"]["phase"] == "Pending" and "WaitingForPreviousRun" in reasons(kube)


def test_a_spec_edit_with_on_update_cancel_stops_the_running_job_first(
    kube: FakeKube, make_controller: Callable[..., Controller]
) -> None:
    ctl = make_controller()
    kube.create(RUNS, pipelinerun(onUpdate="cancel"))
    ctl.reconcile(run_of(kube))
    job = start_job(kube, "pgx-example-g1")
    kube.create(PODS, running_pod("pgx-example-g1", job["metadata"]["uid"]))
    kube.patch(RUNS, "example", {"spec": {"limit": 5}}, None)
    ctl.reconcile(run_of(kube))
    stopping = kube.get(JOBS, "pgx-example-g1")
    assert stopping is not None and stopping["metadata"]["deletionTimestamp"]  # its pod got SIGTERM
    assert kube.get(JOBS, "pgx-example-g2") is None  # not while the old pod may still write
    assert run_of(kube)["status"]["reason"] == "CancellingPreviousRun" and "Cancelling" in reasons(kube)
    ctl.reconcile(run_of(kube))
    assert running(kube) == ["pgx-example-g1"]
    kube.patch(PODS, "pgx-example-g1-pod", {"metadata": {"finalizers": []}}, None)  # pgx exited 75
    assert kube.get(JOBS, "pgx-example-g1") is None
    ctl.reconcile(run_of(kube))
    assert running(kube) == ["pgx-example-g2"]


# The writes of a first reconcile, in order: a controller killed right after any of them (its
# write applied, its answer lost) is followed by another that must make nothing twice.
WRITES = [
    ("PATCH", "/pipelineruns/{name}"),  # the finalizer
    ("PATCH", "/pipelineruns/{name}/status"),  # the run id, before anything is created
    ("POST", "/configmaps"),
    ("POST", "/jobs"),
]  # Events are not among them: recording one is best effort, its failure stops nothing.


@pytest.mark.parametrize(("method", "path"), WRITES, ids=[f"{m} {p}" for m, p in WRITES])
def test_a_restart_after_any_write_makes_nothing_twice(
    kube: FakeKube, make_controller: Callable[..., Controller], method: str, path: str
) -> None:
    kube.create(RUNS, pipelinerun())
    kube.cut_after(method, path.format(name="example"))
    with pytest.raises(Exception):  # noqa: B017 - the connection drops: whatever the client raises
        make_controller().reconcile(run_of(kube))
    assert not kube.cuts, "the write was not reached"
    after = make_controller()  # the restarted controller
    for _ in range(2):
        after.reconcile(run_of(kube))
    jobs, cms = kube.items(JOBS), kube.items(CMS)
    assert [j["metadata"]["name"] for j in jobs] == ["pgx-example-g1"] and len(cms) == 1
    env = {e["name"]: e.get("value") for e in jobs[0]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["PGX_RUN_ID"] == run_of(kube)["status"]["runId"]
    assert run_of(kube)["metadata"]["finalizers"] == ["pgx.io/stop-jobs"]


class RecordingQueue(WorkQueue):
    def __init__(self) -> None:
        super().__init__(base=0.05, cap=2.0)
        self.delays: list[float] = []

    def retry(self, name: str) -> float:
        delay = super().retry(name)
        self.delays.append(delay)
        return delay


def test_an_api_error_storm_backs_off_then_succeeds(kube: FakeKube, make_controller: Callable[..., Controller]) -> None:
    queue = RecordingQueue()
    ctl = make_controller(identity="solo", resync_seconds=60, queue=queue)
    kube.fail("POST", "/jobs", times=5)  # 503 Service Unavailable, five times in a row
    t = start(ctl)
    try:
        kube.create(RUNS, pipelinerun())
        wait_for(lambda: kube.items(JOBS), timeout=20)
        wait_for(lambda: run_of(kube).get("status", {}).get("reason") == "JobPending")
    finally:
        ctl.stop.set()
        t.join(10)
    assert len(queue.delays) == 5
    for i, delay in enumerate(queue.delays):  # base × 2^i, times a jitter factor in [0.5, 1)
        assert 0.05 * 2**i * 0.5 <= delay < 0.05 * 2**i, queue.delays
    assert queue.failures("example") == 0  # forgotten after the success
    assert ctl.metrics.api_errors.labels("503")._value.get() == 5
    assert reasons(kube).count("ReconcileError") == 1  # one Warning per streak, not one per retry
    assert len(kube.items(JOBS)) == 1


def test_conditions_events_stage_progress_and_counts(
    kube: FakeKube, make_controller: Callable[..., Controller]
) -> None:
    stages = [
        {"use": "ingest", "name": "ingest-medical", "with": {"dataType": "medical"}},
        {"use": "ingest", "name": "ingest-pharmacy", "with": {"dataType": "pharmacy"}},
        {"use": "impute"},
    ]
    ctl = make_controller()
    kube.create(RUNS, pipelinerun(stages=stages))
    ctl.reconcile(run_of(kube))
    run = run_of(kube)
    assert run["status"]["phase"] == "Pending" and condition(run, "Accepted")["status"] == "True"
    accepted_at = condition(run, "Accepted")["lastTransitionTime"]
    job = start_job(kube, "pgx-example-g1")
    kube.create(PODS, running_pod("pgx-example-g1", job["metadata"]["uid"]))
    kube.logs["pgx-example-g1-pod"] = (
        '{"level": "info", "msg": "stage planned", "stage": "ingest-medical"}\n'
        '{"level": "info", "msg": "entity completed", "stage": "ingest-pharmacy"}\n'
        "Ray printed this line itself\n"
    )
    assert ctl.reconcile(run_of(kube)) == ctl.poll_seconds
    run = run_of(kube)
    assert (run["status"]["phase"], run["status"]["currentStage"], run["status"]["progress"]) == (
        "Running", "ingest-pharmacy", "2/3")  # fmt: skip
    assert condition(run, "Running")["status"] == "True" and condition(run, "Succeeded")["status"] == "False"
    assert condition(run, "Accepted")["lastTransitionTime"] == accepted_at  # unchanged status, unchanged time
    assert all(c["observedGeneration"] == 1 for c in run["status"]["conditions"])

    # It ends with exit 2 in impute, some entities done: Failed, DataError, and Degraded.
    run_id = run["status"]["runId"]
    totals = {"entities": 9, "completed": 7, "skipped": 1, "failed": 1, "locked": 0}
    message = termination.message(
        run_id, 2, [("ingest-medical", totals), ("impute", dict.fromkeys(totals, 0))], "s3://pgxdatalake/pgx_pipeline/"
    )
    ended = {"exitCode": 2, "message": message, "finishedAt": "2026-01-01T00:30:00Z"}
    container = {"name": "pgx", "image": "pgx", "imageID": "", "ready": False, "restartCount": 0}
    pod = {"phase": "Failed", "containerStatuses": [{**container, "state": {"terminated": ended}}]}
    kube.set_status(PODS, "pgx-example-g1-pod", pod)
    failed = {"type": "Failed", "status": "True", "reason": "PodFailurePolicy", "message": "failed with exit code 2",
              "lastTransitionTime": "2026-01-01T00:30:00Z"}  # fmt: skip
    kube.set_status(JOBS, "pgx-example-g1", {"active": 0, "failed": 1, "conditions": [failed]})
    assert ctl.reconcile(run_of(kube)) is None  # finished: nothing to poll
    st = run_of(kube)["status"]
    assert (st["phase"], st["reason"], st["exitCode"], st["currentStage"], st["progress"]) == (
        "Failed", "DataError", 2, "impute", "3/3")  # fmt: skip
    assert st["entities"] == {"entities": 9, "completed": 7, "skipped": 1, "failed": 1, "locked": 0}
    conds = {c["type"]: c["status"] for c in st["conditions"]}
    assert conds == {"Accepted": "True", "Running": "False", "Succeeded": "False", "Failed": "True", "Degraded": "True"}
    assert reasons(kube) == ["JobCreated", "JobPending", "JobRunning", "DataError"]
    warning = next(e for e in kube.items(EVENTS) if e["reason"] == "DataError")
    assert warning["type"] == "Warning" and warning["source"]["component"] == "pgx-controller"


def test_an_invalid_spec_is_not_accepted(kube: FakeKube, make_controller: Callable[..., Controller]) -> None:
    ctl = make_controller()
    kube.create(RUNS, pipelinerun(stages=[{"use": "no-such-stage"}]))
    ctl.reconcile(run_of(kube))
    run = run_of(kube)
    assert condition(run, "Accepted")["status"] == "False" and condition(run, "Accepted")["reason"] == "InvalidSpec"
    assert condition(run, "Failed")["status"] == "True" and reasons(kube) == ["InvalidSpec"]


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - a local test server
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_metrics_and_probes_are_served(kube: FakeKube, make_controller: Callable[..., Controller]) -> None:
    ctl = make_controller(identity="m", resync_seconds=1)
    server = serve(ctl.metrics, 0, host="127.0.0.1")
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert _get(base + "/readyz")[0] == 503  # no API call has succeeded yet
        t = start(ctl)
        wait_for(lambda: ctl.leading)
        assert _get(base + "/readyz")[0] == 200 and _get(base + "/healthz")[0] == 200
        kube.create(RUNS, pipelinerun())
        wait_for(lambda: kube.items(JOBS))
        kube.set_status(JOBS, "pgx-example-g1", COMPLETE)
        wait_for(lambda: run_of(kube).get("status", {}).get("phase") == "Succeeded")
        wait_for(lambda: 'pgx_controller_pipelineruns{phase="Succeeded"} 1.0' in _get(base + "/metrics")[1])
        code, text = _get(base + "/metrics")
        assert code == 200
        assert "pgx_controller_leader 1.0" in text
        assert 'pgx_controller_run_duration_seconds_count{phase="Succeeded"} 1.0' in text
        assert 'pgx_controller_run_duration_seconds_sum{phase="Succeeded"} 3600.0' in text
        assert "pgx_controller_queue_depth" in text and "pgx_controller_api_errors_total" in text
        success = next(
            line for line in text.splitlines() if line.startswith('pgx_controller_reconciles_total{result="success"}')
        )
        assert float(success.split()[-1]) >= 2
        ctl.stop.set()
        t.join(10)
        ctl.metrics.beat -= 3600  # a loop that stopped going round: liveness fails
        assert _get(base + "/healthz")[0] == 503
    finally:
        ctl.stop.set()
        server.shutdown()


def test_a_restart_while_cancelling_neither_deletes_twice_nor_starts_early(
    kube: FakeKube, make_controller: Callable[..., Controller]
) -> None:
    kube.create(RUNS, pipelinerun(onUpdate="cancel"))
    make_controller().reconcile(run_of(kube))
    job = start_job(kube, "pgx-example-g1")
    kube.create(PODS, running_pod("pgx-example-g1", job["metadata"]["uid"]))
    kube.patch(RUNS, "example", {"spec": {"limit": 5}}, None)
    make_controller().reconcile(run_of(kube))  # asks for the delete, then the controller is gone
    after = make_controller()
    after.reconcile(run_of(kube))
    assert running(kube) == ["pgx-example-g1"] and kube.get(JOBS, "pgx-example-g2") is None
    deletes = [p for m, p in kube.requests if m == "DELETE"]
    assert len(deletes) == 1  # the Job already being deleted is not deleted again
    kube.patch(PODS, "pgx-example-g1-pod", {"metadata": {"finalizers": []}}, None)
    after.reconcile(run_of(kube))
    assert running(kube) == ["pgx-example-g2"]


def test_a_pod_whose_log_is_not_readable_yet_does_not_stop_the_status(
    kube: FakeKube, make_controller: Callable[..., Controller]
) -> None:
    ctl = make_controller()
    kube.create(RUNS, pipelinerun())
    ctl.reconcile(run_of(kube))
    job = start_job(kube, "pgx-example-g1")
    kube.create(PODS, running_pod("pgx-example-g1", job["metadata"]["uid"]))
    kube.fail("GET", "/pods/pgx-example-g1-pod/log", times=1, status=400)  # container still starting
    assert ctl.reconcile(run_of(kube)) == ctl.poll_seconds
    status = run_of(kube)["status"]
    assert status["phase"] == "Running" and status.get("currentStage") is None
