"""Losing the Ray cluster mid-run (its head killed) ends the run like any transient failure: exit
75 with a summary naming the cause, and the next run finishes identical to an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from pgx_core import paths
from pgx_core.storage import StoreConfig, open_store
from tests.conftest import pgx_popen
from tests.core.lake_helpers import data_objects, input_table, put_table, run_json, write_spec
from tests.integration.ray_head import head_env, ray_head

pytestmark = [pytest.mark.ray, pytest.mark.integration, pytest.mark.slow]


def _seed(lake: str) -> None:
    store = open_store(lake)
    for i in range(6):
        put_table(store, paths.join(lake, "input", f"part{i}.parquet"), input_table(30 + i, salt=11 * i))


def test_losing_the_cluster_mid_run_exits_75_with_a_summary(tmp_path: Path, teststage: Path) -> None:
    ref, lake = (tmp_path / "ref").as_uri(), (tmp_path / "lake").as_uri()
    _seed(ref)
    _seed(lake)
    assert run_json(write_spec(tmp_path, ref, StoreConfig(), name="ref"))[0] == 0
    env = head_env()
    pids = tmp_path / "pids"
    pids.mkdir()
    spec = write_spec(tmp_path, lake, StoreConfig(), name="cluster", delaySec=2.0, pidDir=str(pids))
    with ray_head(env) as (port, head):
        spec.write_text(spec.read_text().replace("type: local", f"type: ray\n    address: 127.0.0.1:{port}"))
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
            os.killpg(head.pid, signal.SIGKILL)  # the head node and everything it started
            started = time.monotonic()
            out, err = run.communicate(timeout=120)
        finally:
            run.kill()
    assert run.returncode == 75, err[-3000:]
    assert time.monotonic() - started < 55  # ended by pgx, not by Ray's one-minute fatal
    store = open_store(lake)
    [doc] = [json.loads(store.read_bytes(u)) for u in json.loads(out)["summaries"]]
    assert doc["status"] == "error" and doc["status_code"] == 75
    assert "Ray cluster unavailable" in doc["error"]
    # The workers died with the head: their leases expire (or their holder is provably gone), and
    # the next run, here on the local executor, finishes the job.
    assert run_json(write_spec(tmp_path, lake, StoreConfig(), name="cluster"))[0] == 0
    assert data_objects(store, lake) == data_objects(open_store(ref), ref)
