"""Losing the Ray cluster mid-run (its head killed) ends the run like any transient failure: exit
75 with a summary naming the cause, and the next run finishes identical to an uninterrupted one."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from pgx_core import paths
from pgx_core.storage import StoreConfig, open_store
from tests.conftest import SUPPORT
from tests.core.lake_helpers import data_objects, input_table, put_table, run_json, write_spec

pytestmark = [pytest.mark.ray, pytest.mark.integration, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _seed(lake: str) -> None:
    store = open_store(lake)
    for i in range(6):
        put_table(store, paths.join(lake, "input", f"part{i}.parquet"), input_table(30 + i, salt=11 * i))


def test_losing_the_cluster_mid_run_exits_75_with_a_summary(tmp_path: Path, teststage: Path) -> None:
    ref, lake = (tmp_path / "ref").as_uri(), (tmp_path / "lake").as_uri()
    _seed(ref)
    _seed(lake)
    assert run_json(write_spec(tmp_path, ref, StoreConfig(), name="ref"))[0] == 0
    port = _free_port()
    # A private home (no ~/.ray/auth_token: no token auth) and a short private temp dir (Ray's
    # socket paths must stay under 107 bytes).
    home = tmp_path / "home"
    home.mkdir()
    ray_tmp = tempfile.mkdtemp(prefix="pgxray", dir="/tmp")
    env = {
        **os.environ,
        "HOME": str(home),
        "PYTHONPATH": os.pathsep.join([str(SUPPORT), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--node-ip-address=127.0.0.1",
            "--num-cpus=2",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={ray_tmp}",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    pids = tmp_path / "pids"
    pids.mkdir()
    spec = write_spec(tmp_path, lake, StoreConfig(), name="cluster", delaySec=2.0, pidDir=str(pids))
    text = spec.read_text().replace("type: local", f"type: ray\n    address: 127.0.0.1:{port}")
    spec.write_text(text)
    run = None
    try:
        deadline = time.monotonic() + 120
        while True:  # the head takes a few seconds to accept drivers
            run = subprocess.Popen(
                [sys.executable, "-m", "pgx_core", "run", str(spec), "--json"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            while not list(pids.iterdir()) and run.poll() is None:
                time.sleep(0.1)
            if list(pids.iterdir()):
                break
            assert time.monotonic() < deadline, run.communicate()[1][-3000:]
            time.sleep(2)
        time.sleep(1.0)  # work in flight on the cluster
        os.killpg(head.pid, signal.SIGKILL)  # the head node and everything it started
        started = time.monotonic()
        out, err = run.communicate(timeout=120)
        assert run.returncode == 75, err[-3000:]
        assert time.monotonic() - started < 55  # ended by pgx, not by Ray's one-minute fatal
    finally:
        if run is not None:
            run.kill()
        if head.poll() is None:
            os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=60)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    store = open_store(lake)
    [doc] = [json.loads(store.read_bytes(u)) for u in json.loads(out)["summaries"]]
    assert doc["status"] == "error" and doc["status_code"] == 75
    assert "Ray cluster unavailable" in doc["error"]
    # The workers died with the head: their leases expire (or their holder is provably gone), and
    # the next run, here on the local executor, finishes the job.
    assert run_json(write_spec(tmp_path, lake, StoreConfig(), name="cluster"))[0] == 0
    assert data_objects(store, lake) == data_objects(open_store(ref), ref)
