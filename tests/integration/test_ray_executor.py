"""Ray executor (issue 4): identical results to the local executor, lost workers retried, data
errors not retried, joining a separately started Ray head."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from pgx_core.lake import paths
from pgx_core.lake.storage import open_store
from pgx_core.pluginmanager import make_plugin_manager
from pgx_core.run.runner import Runner
from pgx_core.spec.runspec import load_spec
from tests.conftest import SUPPORT, pgx
from tests.core.lake_helpers import data_objects, input_table, put_table, summaries
from tests.integration.ray_head import head_env, ray_head

pytestmark = [pytest.mark.ray, pytest.mark.integration]

if str(SUPPORT) not in sys.path:
    sys.path.insert(0, str(SUPPORT))
import pgx_teststage  # noqa: E402 - imported top-level so that Ray workers unpickle the same module


def seed(lake: str, n: int = 4) -> None:
    store = open_store(lake)
    for i in range(n):
        put_table(store, paths.join(lake, "input", f"part{i}.parquet"), input_table(40 + i, salt=7 * i))


def spec_file(tmp: Path, lake: str, executor: dict[str, Any], name: str, **with_: Any) -> Path:
    doc = {
        "apiVersion": "pgx.io/v1alpha1",
        "kind": "PipelineRun",
        "metadata": {"name": name},
        "spec": {
            "lake": lake,
            "executor": executor,
            "leaseTtlSeconds": 5,
            "stages": [{"use": "copy-table", "with": with_}],
        },
    }
    p = tmp / f"{name}.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


def run_here(spec: Path) -> tuple[int, Runner]:
    plugins = make_plugin_manager([("teststage", pgx_teststage)], entrypoints=False)
    runner = Runner(load_spec(spec, plugins.registry), plugins)
    return int(runner.execute()), runner


def test_ray_and_local_give_byte_identical_lakes(ray_session: None, tmp_path: Path) -> None:
    a, b = (tmp_path / "a").as_uri(), (tmp_path / "b").as_uri()
    seed(a)
    seed(b)
    assert run_here(spec_file(tmp_path, a, {"type": "local"}, "local"))[0] == 0
    code, runner = run_here(spec_file(tmp_path, b, {"type": "ray", "maxParallel": 2}, "ray"))
    assert code == 0
    objs = data_objects(open_store(b), b)
    assert len(objs) == 4 and objs == data_objects(open_store(a), a)
    [doc] = summaries(open_store(b), b, runner.run_id)
    assert doc["totals"]["completed"] == 4


def test_data_errors_are_not_retried(ray_session: None, tmp_path: Path) -> None:
    lake = (tmp_path / "l").as_uri()
    seed(lake)
    code, runner = run_here(spec_file(tmp_path, lake, {"type": "ray"}, "dataerr", fail=["part1", "part3"]))
    assert code == 2
    [doc] = summaries(open_store(lake), lake, runner.run_id)
    by = {e["entity"].rsplit("__", 1)[-1]: e for e in doc["entities"]}
    assert by["part1"]["status"] == by["part3"]["status"] == "failed"
    assert by["part1"]["attempts"] == by["part3"]["attempts"] == 1  # failed once, never retried
    assert by["part0"]["status"] == by["part2"]["status"] == "completed"


def test_killed_worker_is_retried_and_the_lake_is_identical(ray_session: None, tmp_path: Path) -> None:
    ref, lake = (tmp_path / "ref").as_uri(), (tmp_path / "kill").as_uri()
    seed(ref)
    seed(lake)
    assert run_here(spec_file(tmp_path, ref, {"type": "local"}, "ref"))[0] == 0
    pids = tmp_path / "pids"
    pids.mkdir()
    spec = spec_file(tmp_path, lake, {"type": "ray"}, "kill", delaySec=4.0, pidDir=str(pids))
    result: dict[str, Any] = {}
    t = threading.Thread(target=lambda: result.update(zip(("code", "runner"), run_here(spec), strict=True)))
    t.start()
    deadline = time.monotonic() + 60
    victim = None
    while victim is None and time.monotonic() < deadline:
        found = sorted(pids.glob("part0.*"))
        victim = int(found[0].suffix[1:]) if found else None
        time.sleep(0.1)
    assert victim is not None, "the task never started"
    os.kill(victim, signal.SIGKILL)
    t.join(timeout=240)
    assert result["code"] == 0
    assert len(list(pids.glob("part0.*"))) >= 2  # the task ran again on another worker
    assert data_objects(open_store(lake), lake) == data_objects(open_store(ref), ref)


@pytest.mark.slow
def test_joins_a_separately_started_ray_head(tmp_path: Path, teststage: Path) -> None:
    ref, lake = (tmp_path / "ref").as_uri(), (tmp_path / "cluster").as_uri()
    seed(ref)
    seed(lake)
    assert run_here(spec_file(tmp_path, ref, {"type": "local"}, "ref"))[0] == 0
    env = head_env()
    with ray_head(env) as (port, _):
        spec = spec_file(tmp_path, lake, {"type": "ray", "address": f"127.0.0.1:{port}"}, "cluster")
        proc = None
        for _ in range(30):  # the head takes a few seconds to accept drivers
            proc = pgx("run", str(spec), "--json", env=env, timeout=240)
            if proc.returncode != 75:
                break
            time.sleep(2)
        assert proc is not None and proc.returncode == 0, proc.stderr[-3000:]
        assert '"event": "ray_join"' in proc.stderr
        assert data_objects(open_store(lake), lake) == data_objects(open_store(ref), ref)


def test_one_json_log_line_per_entity_off_a_terminal(tmp_path: Path, teststage: Path) -> None:
    lake = (tmp_path / "l").as_uri()
    seed(lake, 3)
    proc = pgx(
        "run", str(spec_file(tmp_path, lake, {"type": "local"}, "logs")), env={"PYTHONPATH": os.environ["PYTHONPATH"]}
    )
    assert proc.returncode == 0
    events = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    done = [e for e in events if e.get("event") == "entity_completed"]
    assert len(done) == 3
    for e in done:
        assert {"ts", "level", "run_id", "stage", "entity", "event", "rows_in", "rows_out"} <= set(e)


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_transient_errors_are_retried_with_backoff(ray_session: None, tmp_path: Path, executor: str) -> None:
    lake = (tmp_path / "l").as_uri()
    seed(lake, 2)
    flaky = tmp_path / "flaky"
    flaky.mkdir()
    code, runner = run_here(spec_file(tmp_path, lake, {"type": executor}, "flaky", flakyDir=str(flaky)))
    assert code == 0
    [doc] = summaries(open_store(lake), lake, runner.run_id)
    assert doc["totals"]["completed"] == 2
    assert all(e["attempts"] == 2 for e in doc["entities"])  # failed once (transient), then succeeded


def test_sigterm_on_ray_releases_leases_and_exits_75(ray_session: None, tmp_path: Path) -> None:
    lake = (tmp_path / "l").as_uri()
    seed(lake, 4)
    spec = spec_file(tmp_path, lake, {"type": "ray", "maxParallel": 1}, "term", delaySec=3.0)
    result: dict[str, Any] = {}
    plugins = make_plugin_manager([("teststage", pgx_teststage)], entrypoints=False)
    runner = Runner(load_spec(spec, plugins.registry), plugins)
    t = threading.Thread(target=lambda: result.setdefault("code", runner.execute()))
    t.start()
    time.sleep(4.5)  # the first entity is done, the second in flight
    runner.stop.set()  # what the SIGTERM handler does
    t.join(timeout=120)
    assert result["code"] == 75
    [doc] = summaries(open_store(lake), lake, runner.run_id)
    assert doc["status_code"] == 75
    assert 1 <= doc["totals"]["completed"] < 4
    store = open_store(lake)
    assert not [i for i in store.list(lake + "/") if i.uri.endswith("lease.json")]
    # What was not finished is simply done by the next run.
    code, again = run_here(spec)
    assert code == 0
    [doc2] = summaries(store, lake, again.run_id)
    assert doc2["totals"]["skipped"] + doc2["totals"]["completed"] == 4


def test_a_cluster_on_other_ray_or_python_versions_is_refused_with_both(
    ray_session: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Work items are pickled by the driver and run by the cluster: their versions must agree."""
    import ray

    from pgx_core.errors import UsageError
    from pgx_core.run import ray_executor

    @ray.remote(num_cpus=0)
    def older() -> tuple[str, str]:
        return "2.9.3", "3.10"

    monkeypatch.setattr(ray_executor, "_versions", older)
    monkeypatch.setattr(ray, "shutdown", lambda: None)  # keep the session's Ray for the other tests
    with pytest.raises(UsageError) as err:
        ray_executor.check_versions("ray://head:10001")
    assert str(err.value).startswith("The Ray cluster at ray://head:10001 runs Ray 2.9.3 on Python 3.10;")
    assert f"this driver runs Ray {ray.__version__}" in str(err.value)
    monkeypatch.undo()
    ray_executor.check_versions("ray://head:10001")  # the session's own cluster: same versions, no error


def test_joining_by_gcs_address_without_a_local_ray_node_points_to_ray_client(monkeypatch: pytest.MonkeyPatch) -> None:
    from pgx_core.errors import UsageError
    from pgx_core.run import ray_executor

    def no_node(**_options: object) -> None:
        raise RuntimeError("Failed to get node info: No node info found for the given node IP address")

    monkeypatch.setattr(ray_executor, "_init_keeping_handlers", no_node)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray_executor.ray, "is_initialized", lambda: False)
    with pytest.raises(UsageError, match=r"this machine runs no Ray node\. Connect through Ray Client instead"):
        ray_executor.ensure_ray("head.ray.svc:6379")


def test_a_ray_client_connection_the_head_fails_to_start_is_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray 2.60's client server sometimes loses the server process it starts for a new driver."""
    from pgx_core.run import ray_executor

    calls: list[str] = []

    def flaky(**options: str) -> None:
        calls.append(options["address"])
        if len(calls) == 1:
            raise ConnectionAbortedError("Initialization failure from server")

    monkeypatch.setattr(ray_executor, "_init_keeping_handlers", flaky)
    monkeypatch.setattr(ray_executor.ray, "shutdown", lambda: None)
    ray_executor._connect_client("ray://head:10001")
    assert calls == ["ray://head:10001", "ray://head:10001"]
    calls.clear()
    monkeypatch.setattr(ray_executor, "CLIENT_CONNECT_ATTEMPTS", 1)
    with pytest.raises(ConnectionAbortedError):
        ray_executor._connect_client("ray://head:10001")


def _assigned(_item: int) -> dict[str, float]:
    import ray

    return dict(ray.get_runtime_context().get_assigned_resources())


def test_each_work_item_asks_ray_for_the_specs_cpus_and_memory(ray_session: None) -> None:
    """The scheduler places work items by what they ask for: ``cpusPerItem`` and ``memoryBudgetMb``."""
    from types import SimpleNamespace

    from pgx_core.run.ray_executor import RayExecutor

    run: Any = SimpleNamespace(max_parallel=None, ray_address=None, cpus_per_item=0.5)
    executor = RayExecutor(threading.Event(), run)
    try:
        results = [r for _, r in executor.map_unordered(_assigned, [1, 2], memory_mb=64)]
    finally:
        executor.close()
    assert results == [{"CPU": 0.5, "memory": 64 * 1024 * 1024}] * 2
