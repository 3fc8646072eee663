"""pgx controller against an in-memory Kubernetes API (tests/controller/fakeapi.py), real client."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from pgx_core import clock
from pgx_core.k8s.controller import Controller, child_name
from tests.chart.k8s import check_job_spec, validate_k8s
from tests.controller.conftest import CMS, EVENTS, JOBS, LEASES, PODS, RUNS, pipelinerun, running_pod
from tests.controller.fakeapi import FakeKube

pytestmark = pytest.mark.integration


def wait_for(cond: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def run_of(kube: FakeKube, name: str = "example") -> dict[str, Any]:
    obj = kube.get(RUNS, name)
    assert obj is not None
    return obj


def writes(kube: FakeKube) -> list[tuple[str, str]]:
    return [r for r in kube.requests if r[0] in ("POST", "PUT", "PATCH", "DELETE")]


def test_create_then_reconcile_again_creates_nothing_twice(
    kube: FakeKube, make_controller: Callable[..., Controller]
) -> None:
    ctl = make_controller()
    kube.create(RUNS, pipelinerun())
    ctl.reconcile(run_of(kube))
    jobs, cms = kube.items(JOBS), kube.items(CMS)
    assert len(jobs) == 1 and len(cms) == 1
    job, cm = jobs[0], cms[0]
    assert job["metadata"]["name"] == cm["metadata"]["name"] == child_name("example", 1) == "pgx-example-g1"
    run = run_of(kube)
    for obj in (job, cm):
        assert obj["metadata"]["ownerReferences"] == [
            {
                "apiVersion": "pgx.io/v1alpha1",
                "kind": "PipelineRun",
                "name": "example",
                "uid": run["metadata"]["uid"],
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        stored = {k: v for k, v in obj.items() if k != "status"}
        stored["metadata"] = {
            k: v
            for k, v in obj["metadata"].items()
            if k not in ("uid", "resourceVersion", "creationTimestamp", "generation")
        }
        validate_k8s(stored)
    check_job_spec(job["spec"], ray_address=None, service_account="pgx", config_maps={"pgx-example-g1"})
    env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    status = run["status"]
    assert env["PGX_RUN_ID"] == status["runId"]
    assert clock.run_id_from_env.__module__ and len(status["runId"]) == 25
    assert status["phase"] == "Pending" and status["observedGeneration"] == 1
    assert status["summaries"] == [
        {
            "stage": "ingest-medical",
            "location": f"s3://pgxdatalake/pgx_pipeline/txt_to_parquet/run_id={status['runId']}/summary.json",
        }
    ]

    before = len(writes(kube))
    ctl.reconcile(run_of(kube))
    make_controller().reconcile(run_of(kube))  # a second controller instance (e.g. after a restart)
    assert len(kube.items(JOBS)) == 1 and len(kube.items(CMS)) == 1
    assert writes(kube)[before:] == [], "a second reconcile of the same generation wrote something"

    # Objects present but status lost (crash between create and status): 409 is fine, run id kept.
    kube.set_status(RUNS, "example", {"phase": None, "runId": None, "observedGeneration": None})
    ctl.reconcile(run_of(kube))
    assert run_of(kube)["status"]["runId"] == status["runId"]
    assert len(kube.items(JOBS)) == 1


def test_status_follows_the_job(kube: FakeKube, make_controller: Callable[..., Controller]) -> None:
    ctl = make_controller()
    kube.create(RUNS, pipelinerun())
    ctl.reconcile(run_of(kube))
    kube.set_status(JOBS, "pgx-example-g1", {"active": 1, "startTime": "2026-01-01T00:00:00Z"})
    ctl.reconcile(run_of(kube))
    st = run_of(kube)["status"]
    assert st["phase"] == "Running" and st["startTime"] == "2026-01-01T00:00:00Z"
    kube.set_status(
        JOBS,
        "pgx-example-g1",
        {
            "active": 0,
            "succeeded": 1,
            "completionTime": "2026-01-01T01:00:00Z",
            "conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": "2026-01-01T01:00:00Z"}],
        },
    )
    ctl.reconcile(run_of(kube))
    st = run_of(kube)["status"]
    assert (st["phase"], st["reason"], st["exitCode"]) == ("Succeeded", "Succeeded", 0)
    assert st["completionTime"] == "2026-01-01T01:00:00Z"
    first_run_id = st["runId"]

    # A new generation (spec edited) is a new run: a new Job, a new run id.
    kube.patch(RUNS, "example", {"spec": {"limit": 5}}, None)
    assert run_of(kube)["metadata"]["generation"] == 2
    ctl.reconcile(run_of(kube))
    assert sorted(j["metadata"]["name"] for j in kube.items(JOBS)) == ["pgx-example-g1", "pgx-example-g2"]
    st = run_of(kube)["status"]
    assert st["phase"] == "Pending" and st["observedGeneration"] == 2 and st["runId"] != first_run_id

    # podFailurePolicy FailJob on exit code 2: the reason says what that exit code means.
    kube.set_status(
        JOBS,
        "pgx-example-g2",
        {
            "failed": 1,
            "conditions": [
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "PodFailurePolicy",
                    "lastTransitionTime": "2026-01-01T02:00:00Z",
                    "message": (
                        "Container pgx for pod pgx/pgx-example-g2-abcde failed with exit code 2"
                        " matching FailJob rule at index 1"
                    ),
                }
            ],
        },
    )
    ctl.reconcile(run_of(kube))
    st = run_of(kube)["status"]
    assert (st["phase"], st["reason"], st["exitCode"]) == ("Failed", "DataError", 2)
    assert "gate failed" in st["message"]


def test_failed_job_exit_code_from_the_pod(kube: FakeKube, make_controller: Callable[..., Controller]) -> None:
    ctl = make_controller()
    kube.create(RUNS, pipelinerun())
    ctl.reconcile(run_of(kube))
    kube.create(
        PODS,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "pgx-example-g1-x", "labels": {"job-name": "pgx-example-g1"}},
            "spec": {"containers": [{"name": "pgx", "image": "pgx"}]},
            "status": {
                "containerStatuses": [
                    {
                        "name": "pgx",
                        "image": "pgx",
                        "imageID": "",
                        "ready": False,
                        "restartCount": 0,
                        "state": {"terminated": {"exitCode": 75, "finishedAt": "2026-01-01T00:00:00Z"}},
                    }
                ]
            },
        },
    )
    kube.set_status(
        JOBS,
        "pgx-example-g1",
        {
            "failed": 3,
            "conditions": [
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "BackoffLimitExceeded",
                    "message": "Job has reached the specified backoff limit",
                }
            ],
        },
    )
    ctl.reconcile(run_of(kube))
    st = run_of(kube)["status"]
    assert (st["phase"], st["reason"], st["exitCode"]) == ("Failed", "Transient", 75)


def test_invalid_spec_is_reported_and_makes_no_job(kube: FakeKube, make_controller: Callable[..., Controller]) -> None:
    ctl = make_controller()
    bad = pipelinerun(stages=[{"use": "no-such-stage"}, {"use": "ingest", "with": {"dataType": "dental"}}])
    kube.create(RUNS, bad)
    ctl.reconcile(run_of(kube))
    st = run_of(kube)["status"]
    assert (st["phase"], st["reason"]) == ("Failed", "InvalidSpec")
    assert any("spec.stages[0].use" in p and "unknown stage type" in p for p in st["problems"]), st["problems"]
    assert any("spec.stages[1].with.dataType" in p for p in st["problems"]), st["problems"]
    assert kube.items(JOBS) == [] and kube.items(CMS) == []
    before = len(writes(kube))
    ctl.reconcile(run_of(kube))
    assert writes(kube)[before:] == []


def test_deleting_the_run_stops_its_job_then_lets_it_go(
    kube: FakeKube, make_controller: Callable[..., Controller]
) -> None:
    ctl = make_controller()
    kube.create(RUNS, pipelinerun())
    kube.create(RUNS, pipelinerun("other"))
    for name in ("example", "other"):
        ctl.reconcile(run_of(kube, name))
    assert run_of(kube)["metadata"]["finalizers"] == ["pgx.io/stop-jobs"]
    job = kube.get(JOBS, "pgx-example-g1")
    assert job is not None
    # The Job's pod: it ends only when pgx has stopped (the test's own finalizer stands for that).
    kube.create(PODS, running_pod("pgx-example-g1", job["metadata"]["uid"]))
    kube.delete(RUNS, "example")
    assert run_of(kube)["metadata"]["deletionTimestamp"]  # held by the finalizer
    ctl.reconcile(run_of(kube))
    deleting = kube.get(JOBS, "pgx-example-g1")
    assert deleting is not None and deleting["metadata"]["deletionTimestamp"]  # foreground: waits for its pod
    assert kube.get(PODS, "pgx-example-g1-pod")["metadata"]["deletionTimestamp"]  # the pod got SIGTERM
    assert ctl.reconcile(run_of(kube)) == 2.0  # still stopping: looked at again soon
    assert kube.get(RUNS, "example") is not None
    kube.patch(PODS, "pgx-example-g1-pod", {"metadata": {"finalizers": []}}, None)  # pgx exited 75
    assert kube.get(JOBS, "pgx-example-g1") is None
    ctl.reconcile(run_of(kube))
    assert kube.get(RUNS, "example") is None
    assert [j["metadata"]["name"] for j in kube.items(JOBS)] == ["pgx-other-g1"]
    assert [c["metadata"]["name"] for c in kube.items(CMS)] == ["pgx-other-g1"]
    reasons = [e["reason"] for e in kube.items(EVENTS) if e["involvedObject"]["name"] == "example"]
    assert "Stopping" in reasons


def start(ctl: Controller) -> threading.Thread:
    t = threading.Thread(target=ctl.run, daemon=True)
    t.start()
    return t


def test_two_controllers_one_acts_and_the_other_takes_over(
    kube: FakeKube, make_controller: Callable[..., Controller]
) -> None:
    a = make_controller(identity="ctl-a", lease_duration_seconds=2, resync_seconds=1)
    b = make_controller(identity="ctl-b", lease_duration_seconds=2, resync_seconds=1)
    ta = start(a)
    wait_for(lambda: a.leading)
    tb = start(b)
    kube.create(RUNS, pipelinerun())
    wait_for(lambda: kube.items(JOBS))
    time.sleep(1.5)  # b renews (fails) a few times meanwhile
    assert a.leading and not b.leading
    assert len(kube.items(JOBS)) == 1
    (lease,) = kube.items(LEASES)
    assert lease["spec"]["holderIdentity"] == "ctl-a" and lease["spec"]["leaseDurationSeconds"] == 2
    # The Job's progress reaches the status through the Job watch.
    kube.set_status(
        JOBS,
        "pgx-example-g1",
        {
            "succeeded": 1,
            "completionTime": "2026-01-01T01:00:00Z",
            "conditions": [{"type": "Complete", "status": "True"}],
        },
    )
    wait_for(lambda: run_of(kube).get("status", {}).get("phase") == "Succeeded")

    a.stop.set()  # as SIGTERM does
    ta.join(5)
    assert not ta.is_alive()
    assert kube.items(LEASES)[0]["spec"].get("holderIdentity") in (None, "ctl-b")  # released
    wait_for(lambda: b.leading)
    kube.create(RUNS, pipelinerun("second"))
    wait_for(lambda: any(j["metadata"]["name"] == "pgx-second-g1" for j in kube.items(JOBS)))
    b.stop.set()
    tb.join(5)
    assert len(kube.items(JOBS)) == 2


def test_an_expired_lease_is_taken_over(kube: FakeKube, make_controller: Callable[..., Controller]) -> None:
    kube.create(
        LEASES,
        {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": "pgx-controller"},
            "spec": {"holderIdentity": "gone", "leaseDurationSeconds": 5, "renewTime": "2026-01-01T00:00:00.000000Z"},
        },
    )
    live = make_controller(identity="live")
    assert live.lease.acquire()
    assert not make_controller(identity="other").lease.acquire()
    (lease,) = kube.items(LEASES)
    assert lease["spec"]["holderIdentity"] == "live" and lease["spec"]["leaseTransitions"] == 1


def test_watch_relists_after_410_gone(kube: FakeKube, make_controller: Callable[..., Controller]) -> None:
    ctl = make_controller(identity="solo", resync_seconds=1)
    t = start(ctl)
    wait_for(lambda: ctl.leading)
    kube.create(RUNS, pipelinerun())
    wait_for(lambda: kube.items(JOBS))
    kube.compact()  # the next watch (from an older resourceVersion) gets 410 Gone
    kube.create(RUNS, pipelinerun("after"))
    wait_for(lambda: any(j["metadata"]["name"] == "pgx-after-g1" for j in kube.items(JOBS)))
    time.sleep(1.5)
    lists = [p for m, p in kube.requests if m == "GET" and p.split("?")[0] == RUNS and "watch=" not in p]
    watches = [p for m, p in kube.requests if m == "GET" and p.startswith(RUNS) and "watch=" in p]
    assert all("resourceVersion=" in p for p in watches)
    assert kube.gone >= 1 and len(lists) >= 2
    ctl.stop.set()
    t.join(5)
    assert not t.is_alive()


def test_main_stops_cleanly_on_sigterm(kube: FakeKube, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": kube.url}}],
                "users": [{"name": "u", "user": {"token": "unused"}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "u"}}],
                "current-context": "fake",
            }
        )
    )
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "HOME": str(tmp_path)}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    code = "import sys; from pgx_core.k8s.controller import main; sys.exit(main('pgx', 'registry.example.com/pgx:1'))"
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        kube.create(RUNS, pipelinerun())
        wait_for(lambda: kube.items(JOBS), timeout=30)
        (lease,) = kube.items(LEASES)
        assert lease["spec"]["holderIdentity"]
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out.decode()
    assert kube.items(LEASES)[0]["spec"].get("holderIdentity") is None
    (job,) = kube.items(JOBS)
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example.com/pgx:1"
