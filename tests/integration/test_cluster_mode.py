"""Cluster mode: one run spec fans out over a multi-node Ray cluster, from a driver that is not a
Ray node and connects through Ray Client (``ray://``), as a Job pod next to a KubeRay RayCluster
does. The cluster is a head plus two worker nodes on this machine (separate ``ray start``
processes with their own resources); the lake is moto-server S3; the result must be byte-identical
to the local executor's, and losing a worker node mid-run must not change it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pgx_core.demo import demo_spec, prepare_lake
from pgx_core.pluginmanager import make_plugin_manager
from pgx_core.storage import ObjectStore, StoreConfig, open_store
from pgx_core.testing import TEST_REGION, _s3_client
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


def _spec(tmp: Path, name: str, lake: str, maps: Path, *, endpoint: str, executor: dict[str, Any]) -> Path:
    doc = demo_spec(lake, set(make_plugin_manager().registry.names()), "ray", maps)
    doc["metadata"]["name"] = name
    doc["spec"]["executor"] = {"memoryBudgetMb": 512, **executor}
    doc["spec"]["s3"] = {"endpointUrl": endpoint, "region": TEST_REGION}
    doc["spec"]["stateRoot"] = f"{lake}/_state"
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, moto_s3_server: str) -> tuple[Path, Path, dict[str, bytes]]:
    """Raw extracts, maps, and the data objects the local executor makes of them (the reference)."""
    root = tmp_path_factory.mktemp("cluster")
    maps = prepare_lake(root, rows=ROWS)
    raw = root / "lake" / "raw"
    lake = _bucket(moto_s3_server, "pgx-cluster-reference")
    store = _seed(moto_s3_server, lake, raw)
    spec = _spec(root, "reference", lake, maps, endpoint=moto_s3_server, executor={"type": "local"})
    pgx("run", str(spec), check=True, timeout=600)
    return raw, maps, data_objects(store, lake)


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
    raw, maps, reference = demo
    lake = _bucket(moto_s3_server, "pgx-cluster-run")
    store = _seed(moto_s3_server, lake, raw)
    spec = _spec(tmp_path, "cluster", lake, maps, endpoint=moto_s3_server, executor={"address": cluster.client_address})
    proc = pgx("run", str(spec), "--json", env=cluster.env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert data_objects(store, lake) == reference
    docs = _summaries(store, lake, json.loads(proc.stdout)["run_id"])
    nodes = {n for d in docs for n in d["resources"]["work_items_by_node"]}
    assert len(nodes) == 2, nodes  # both worker nodes ran work; the head (no CPUs) none
    impute = next(d for d in docs if d["script_name"] == "global_imputation")
    assert len(impute["resources"]["work_items_by_node"]) == 2


def test_losing_a_worker_node_mid_run_changes_nothing(
    demo: tuple[Path, Path, dict[str, bytes]], cluster: Cluster, moto_s3_server: str, tmp_path: Path
) -> None:
    raw, maps, reference = demo
    lake = _bucket(moto_s3_server, "pgx-cluster-loss")
    store = _seed(moto_s3_server, lake, raw)
    spec = _spec(tmp_path, "loss", lake, maps, endpoint=moto_s3_server, executor={"address": cluster.client_address})
    proc = pgx_popen("run", str(spec), "--json", env=cluster.env)
    try:
        # Once ingest is done, impute's shuffle, buckets and assembly are under way on both nodes.
        deadline = time.monotonic() + 600
        while not any("/txt_to_parquet/" in i.uri for i in store.list(f"{lake}/pgx_pipeline/")):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "ingest did not finish"
            time.sleep(0.5)
        cluster.kill(cluster.workers[-1])
        out, err = proc.communicate(timeout=900)
    except BaseException:
        proc.kill()
        raise
    assert proc.returncode == 0, err[-3000:]
    assert data_objects(store, lake) == reference
    docs = _summaries(store, lake, json.loads(out)["run_id"])
    assert all(d["status"] == "success" for d in docs)


def test_losing_the_head_ends_a_ray_client_run_with_75_and_a_summary(
    demo: tuple[Path, Path, dict[str, bytes]], cluster: Cluster, moto_s3_server: str, tmp_path: Path
) -> None:
    """Last in this module: it takes the cluster's head down."""
    raw, maps, _reference = demo
    lake = _bucket(moto_s3_server, "pgx-cluster-head-loss")
    store = _seed(moto_s3_server, lake, raw)
    address = {"address": cluster.client_address}
    spec = _spec(tmp_path, "headloss", lake, maps, endpoint=moto_s3_server, executor=address)
    proc = pgx_popen("run", str(spec), "--json", env=cluster.env)
    try:
        deadline = time.monotonic() + 600
        while not any("/txt_to_parquet/" in i.uri for i in store.list(f"{lake}/pgx_pipeline/")):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "ingest did not finish"
            time.sleep(0.5)
        assert cluster.head is not None
        cluster.kill(cluster.head)
        out, err = proc.communicate(timeout=300)
    except BaseException:
        proc.kill()
        raise
    assert proc.returncode == 75, err[-3000:]
    docs = _summaries(store, lake, json.loads(out)["run_id"])
    failed = [d for d in docs if d["status_code"] == 75]
    assert failed and "Ray cluster unavailable" in failed[0]["error"]
