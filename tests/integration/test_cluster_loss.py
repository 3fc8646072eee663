"""Losing the Ray cluster mid-run (its head killed) ends the run like any transient failure: exit
75 with a summary naming the cause, and the next run finishes identical to an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from subprocess import Popen

import pytest

from pgx_core.lake import paths
from pgx_core.lake.storage import StoreConfig, open_store
from tests.conftest import pgx_popen
from tests.core.lake_helpers import data_objects, input_table, put_table, run_json, write_spec
from tests.integration.ray_head import head_env, ray_cluster, ray_head

pytestmark = [pytest.mark.ray, pytest.mark.integration, pytest.mark.slow]


def _seed(lake: str) -> None:
    store = open_store(lake)
    for i in range(6):
        put_table(store, paths.join(lake, "input", f"part{i}.parquet"), input_table(30 + i, salt=11 * i))


def _lose_the_head_mid_run(spec: Path, pids: Path, env: dict[str, str], head: Popen[bytes]) -> str:
    """Run ``spec`` until its work items are in flight on the cluster, kill the head node with
    everything it started, and return the run's stdout once it ends (exit 75 within a minute:
    ended by pgx, not by Ray's one-minute fatal, nor hanging)."""
    deadline = time.monotonic() + 120
    while True:  # the head takes a few seconds to accept drivers
        run = pgx_popen("run", str(spec), "--json", env=env)
        while not list(pids.iterdir()) and run.poll() is None:
            time.sleep(0.1)
        if list(pids.iterdir()):
            break
        assert time.monotonic() < deadline, run.communicate()[1][-3000:]
        time.sleep(2)
    try:
        time.sleep(1.0)  # work in flight on the cluster
        os.killpg(head.pid, signal.SIGKILL)
        started = time.monotonic()
        out, err = run.communicate(timeout=120)
    finally:
        run.kill()
    assert run.returncode == 75, err[-3000:]
    assert time.monotonic() - started < 55
    return out


def _check_summary_and_resume(tmp_path: Path, out: str, lake: str, ref: str) -> None:
    store = open_store(lake)
    [doc] = [json.loads(store.read_bytes(u)) for u in json.loads(out)["summaries"]]
    assert doc["status"] == "error" and doc["status_code"] == 75
    assert "Ray cluster unavailable" in doc["error"]
    # The workers died with the head (or lost it): their leases expire (or their holder is
    # provably gone), and the next run, here on the local executor, finishes the job.
    assert run_json(write_spec(tmp_path, lake, StoreConfig(), name="cluster"))[0] == 0
    assert data_objects(store, lake) == data_objects(open_store(ref), ref)


def _lakes(tmp_path: Path) -> tuple[str, str, Path]:
    ref, lake = (tmp_path / "ref").as_uri(), (tmp_path / "lake").as_uri()
    _seed(ref)
    _seed(lake)
    assert run_json(write_spec(tmp_path, ref, StoreConfig(), name="ref"))[0] == 0
    pids = tmp_path / "pids"
    pids.mkdir()
    return ref, lake, pids


def test_losing_the_cluster_mid_run_exits_75_with_a_summary(tmp_path: Path, teststage: Path) -> None:
    """A driver joined by GCS address (it runs a Ray node of its own)."""
    ref, lake, pids = _lakes(tmp_path)
    env = head_env()
    spec = write_spec(tmp_path, lake, StoreConfig(), name="cluster", delaySec=2.0, pidDir=str(pids))
    with ray_head(env) as (port, head):
        spec.write_text(spec.read_text().replace("type: local", f"type: ray\n    address: 127.0.0.1:{port}"))
        out = _lose_the_head_mid_run(spec, pids, env, head)
    _check_summary_and_resume(tmp_path, out, lake, ref)


def test_a_ray_client_driver_losing_the_head_exits_75_with_a_summary(tmp_path: Path, teststage: Path) -> None:
    """A driver outside the cluster, joined through Ray Client (a Job pod next to a RayCluster):
    its connection breaks, Ray Client gives up reconnecting after its grace period (30 s), and
    the run ends as above."""
    ref, lake, pids = _lakes(tmp_path)
    env = head_env()
    spec = write_spec(tmp_path, lake, StoreConfig(), name="cluster", delaySec=2.0, pidDir=str(pids))
    with ray_cluster(env, workers=1) as cluster:
        address = f"type: ray\n    address: {cluster.client_address}"
        spec.write_text(spec.read_text().replace("type: local", address))
        assert cluster.head is not None
        out = _lose_the_head_mid_run(spec, pids, env, cluster.head)
    _check_summary_and_resume(tmp_path, out, lake, ref)
