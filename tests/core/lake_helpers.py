"""Shared helpers of the reliability and data-safety tests: a copy-table lake, specs, summaries."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from pgx_core.lake import paths
from pgx_core.lake.storage import ObjectStore, StoreConfig
from tests.conftest import pgx

CANARY_KEY = "0048151623420"  # a member-key-shaped canary: must never leave the data objects


def put_table(store: ObjectStore, uri: str, table: pa.Table) -> None:
    with store.open_output(uri) as f:
        pq.write_table(table, f)


def input_table(n: int, salt: int = 0) -> pa.Table:
    return pa.table({"x": list(range(salt, salt + n)), "member": [CANARY_KEY] * n})


def write_spec(tmp: Path, lake: str, cfg: StoreConfig, name: str = "rel", **with_: Any) -> Path:
    spec: dict[str, Any] = {
        "apiVersion": "pgx.io/v1alpha1",
        "kind": "PipelineRun",
        "metadata": {"name": name},
        "spec": {
            "lake": lake,
            "stateRoot": paths.join(lake, "_state"),
            "executor": {"type": "local"},
            "leaseTtlSeconds": 5,
            "stages": [{"use": "copy-table", "with": with_}],
        },
    }
    if cfg.endpoint_url:
        spec["spec"]["s3"] = {"endpointUrl": cfg.endpoint_url, "region": cfg.region}
    p = tmp / f"{name}-{abs(hash(lake)) % 10**6}.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


def data_objects(store: ObjectStore, lake: str) -> dict[str, bytes]:
    """Every data object of the lake (not state, summaries, staging or backups) → bytes."""
    out = {}
    for info in store.list(lake.rstrip("/") + "/"):
        rel = paths.relative(info.uri, lake)
        if rel.split("/")[0] in {"gold", "silver", "bronze"}:
            out[rel] = store.read_bytes(info.uri)
    return out


def summaries(store: ObjectStore, lake: str, run_id: str | None = None) -> list[dict[str, Any]]:
    docs = [json.loads(store.read_bytes(i.uri)) for i in store.list(paths.summaries_prefix(lake))]
    return [d for d in docs if run_id is None or d["run_id"] == run_id]


def run_json(spec: Path, *extra: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    proc = pgx("run", str(spec), "--json", *extra, env=env)
    doc = json.loads(proc.stdout) if proc.stdout.strip().startswith("{") else {}
    return proc.returncode, doc


