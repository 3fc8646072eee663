"""Fixtures: the in-memory API server of fakeapi.py and controllers talking to it with the real client."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client

from pgx_core.k8s.controller import Controller
from tests.chart.k8s import registry
from tests.controller.fakeapi import FakeKube

NS = "pgx"
RUNS = f"/apis/pgx.io/v1alpha1/namespaces/{NS}/pipelineruns"
JOBS = f"/apis/batch/v1/namespaces/{NS}/jobs"
CMS = f"/api/v1/namespaces/{NS}/configmaps"
PODS = f"/api/v1/namespaces/{NS}/pods"
LEASES = f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases"
EVENTS = f"/api/v1/namespaces/{NS}/events"


def pipelinerun(name: str = "example", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "lake": "s3://pgxdatalake",
        "executor": {"maxParallel": 2},
        "stages": [{"use": "ingest", "name": "ingest-medical", "with": {"dataType": "medical"}}],
    }
    body.update(spec)
    return {"apiVersion": "pgx.io/v1alpha1", "kind": "PipelineRun", "metadata": {"name": name}, "spec": body}


def running_pod(job: str, job_uid: str) -> dict[str, Any]:
    """The running pod of a Job, owned by it. Its finalizer stands for pgx still stopping: a
    delete marks it, and it goes when the test removes the finalizer."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{job}-pod",
            "labels": {"job-name": job},
            "finalizers": ["pgx-test/stopping"],
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": job, "uid": job_uid}],
        },
        "spec": {"containers": [{"name": "pgx", "image": "pgx"}]},
        "status": {"phase": "Running"},
    }


@pytest.fixture
def kube() -> Iterator[FakeKube]:
    server = FakeKube().start()
    yield server
    server.close()


@pytest.fixture
def make_controller(kube: FakeKube) -> Callable[..., Controller]:
    def make(**kw: Any) -> Controller:
        cfg = client.Configuration()
        cfg.host = kube.url
        return Controller(
            namespace=NS, image="registry.example.com/pgx:test", registry=registry(), api=client.ApiClient(cfg), **kw
        )

    return make
