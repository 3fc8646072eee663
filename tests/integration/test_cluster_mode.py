"""Cluster mode: one run spec fans out over a multi-node Ray cluster, from a driver that is not a
Ray node and connects through Ray Client (``ray://``), as a Job pod next to a KubeRay RayCluster
does. The cluster is a head plus two worker nodes on this machine (separate ``ray start``
processes with their own resources); the lake is moto-server S3; the result must be byte-identical
to the local executor's, and losing a worker node mid-run must not change it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pgx_core.cli.project import make_project
from pgx_core.lake.storage import ObjectStore, StoreConfig, open_store
from pgx_core.pluginmanager import make_plugin_manager
from pgx_testing import TEST_REGION, _s3_client
from tests.conftest import pgx, pgx_popen
from tests.core.lake_helpers import data_objects
from tests.integration.ray_head import Cluster, head_env, ray_cluster

pytestmark = [pytest.mark.integration, pytest.mark.ray, pytest.mark.s3]

ROWS = 8_000


def _bucket(endpoint: str, name: str) -> str:
    client = _s3_client(endpoint)
    client.create_bucket(Bucket=name)
    return f"s3://{name}/lake"


def _seed(endpoint: str, lake: str, raw: Path) -> ObjectStore:
    store = open_store(lake, StoreConfig(endpoint, TEST_REGION))
    for f in sorted(raw.rglob("*.txt")):
        store.write_bytes(f"{lake}/raw/{f.parent.name}/{f.name}", f.read_bytes())
    return store


def _spec(tmp: Path, name: str, lake: str, project: Path, *, endpoint: str, executor: dict[str, Any]) -> Path:
    """The run spec of the project at ``project`` (made by the module's fixture), on ``lake``."""
    doc, _ = make_project(project, make_plugin_manager(), sample_rows=ROWS, name=name, lake=lake)
    doc["spec"]["executor"] = {"memoryBudgetMb": 512, **executor}
    doc["spec"]["s3"] = {"endpointUrl": endpoint, "region": TEST_REGION}
    doc["spec"]["stateRoot"] = f"{lake}/_state"
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, moto_s3_server: str) -> tuple[Path, Path, dict[str, bytes]]:
    """Raw extracts, the project folder (its maps) and the data objects the local executor makes (the reference)."""
    root = tmp_path_factory.mktemp("cluster")
    make_project(root, make_plugin_manager(), sample_rows=ROWS)
    raw = root / "lake" / "raw"
    lake = _bucket(moto_s3_server, "pgx-cluster-reference")
    store = _seed(moto_s3_server, lake, raw)
    spec = _spec(root, "reference", lake, root, endpoint=moto_s3_server, executor={"type": "local"})
    pgx("run", str(spec), check=True, timeout=600)
    return raw, root, data_objects(store, lake)


@pytest.fixture(scope="module")
def cluster(moto_s3_server: str) -> Iterator[Cluster]:
    # After moto: the nodes' processes inherit the test credentials the S3 workers need.
    with ray_cluster(head_env(), workers=2) as c:
        yield c


def _summaries(store: ObjectStore, lake: str, run_id: str) -> list[dict[str, Any]]:
    return [
        json.loads(store.read_bytes(i.uri))
        for i in store.list(f"{lake}/pgx_pipeline/")
        if f"/run_id={run_id}/" in i.uri
    ]


def test_a_driver_outside_the_cluster_spreads_the_demo_over_worker_nodes_byte_identical(
    demo: tuple[Path, Path, dict[str, bytes]], cluster: Cluster, moto_s3_server: str, tmp_path: Path
) -> None:
    raw, project, reference = demo
    lake = _bucket(moto_s3_server, "pgx-cluster-run")
    store = _seed(moto_s3_server, lake, raw)
    address = {"address": cluster.client_address}
    spec = _spec(tmp_path, "cluster", lake, project, endpoint=moto_s3_server, executor=address)
    proc = pgx("run", str(spec), "--json", env=cluster.env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert data_objects(store, lake) == reference
    docs = _summaries(store, lake, json.loads(proc.stdout)["run_id"])
    nodes = {n for d in docs for n in d["resources"]["work_items_by_node"]}
    assert len(nodes) == 2, nodes  # both worker nodes ran work; the head (no CPUs) none
    impute = next(d for d in docs if d["script_name"] == "global_imputation")
    assert len(impute["resources"]["work_items_by_node"]) == 2


def _run_losing(
    cluster: Cluster,
    name: str,
    demo: tuple[Path, Path, dict[str, bytes]],
    *,
    endpoint: str,
    tmp: Path,
    victim: Callable[[], Any],
) -> tuple[int, list[dict[str, Any]], ObjectStore, str]:
    """A run of the demo on the cluster that loses a node (``victim()`` names it) once impute's
    shuffle has begun: its shuffle, bucket and assembly items then run on every node. Returns
    the exit code, the run's summaries, the lake's store and the lake."""
    raw, project, _reference = demo
    lake = _bucket(endpoint, f"pgx-cluster-{name}")
    store = _seed(endpoint, lake, raw)
    spec = _spec(tmp, name, lake, project, endpoint=endpoint, executor={"address": cluster.client_address})
    proc = pgx_popen("run", str(spec), "--json", env=cluster.env)
    try:
        deadline = time.monotonic() + 600
        while not any("/_scratch/impute/shuffle/" in i.uri for i in store.list(f"{lake}/_staging/")):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "impute's shuffle did not begin"
            time.sleep(0.2)
        cluster.kill(victim())
        out, err = proc.communicate(timeout=900)
    except BaseException:
        proc.kill()
        raise
    assert out.strip().startswith("{"), err[-3000:]
    return proc.returncode, _summaries(store, lake, json.loads(out)["run_id"]), store, lake


def test_losing_a_worker_node_mid_run_changes_nothing(
    demo: tuple[Path, Path, dict[str, bytes]], cluster: Cluster, moto_s3_server: str, tmp_path: Path
) -> None:
    code, docs, store, lake = _run_losing(
        cluster, "loss", demo, endpoint=moto_s3_server, tmp=tmp_path, victim=lambda: cluster.workers[-1]
    )
    assert code == 0, docs
    assert data_objects(store, lake) == demo[2]  # the local executor's
    assert all(d["status"] == "success" for d in docs)
