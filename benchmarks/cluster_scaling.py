"""Cluster mode on one machine: the demo pipeline over 1, 2 and 3 Ray worker nodes.

    .venv/bin/python benchmarks/cluster_scaling.py --rows 200000 --nodes 1,2,3 --out benchmarks/cluster_scaling.json

For each node count: a fresh Ray cluster on this machine (a head with no CPUs for work, plus N worker
nodes of one CPU and 3 GiB each, separate ``ray start`` processes, as tests/integration/ray_head.py
starts them), a fresh local lake with the same synthetic raw extracts, and one ``pgx run`` of the
demo spec from a driver that is not a Ray node (``executor.address: ray://…``). Reported per run:
wall time of the whole ``pgx run`` process (connecting included), the sum of the stages' durations
from their summaries, raw rows per second on both, Ray Client connection retries, each stage's
duration, and the work items each node ran. One measurement per point, no repeats.

On a machine with fewer cores than worker nodes the nodes share the cores: the figures then
measure contention, not scale-out (docs/scaling.md says how to read them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pgx_core.cli.project import make_project  # noqa: E402
from pgx_core.pluginmanager import make_plugin_manager  # noqa: E402
from tests.integration.ray_head import head_env, ray_cluster  # noqa: E402


def one_run(data: Path, project: Path, nodes: int, budget_mb: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="pgx-scaling-"))
    try:
        shutil.copytree(data, work / "lake" / "raw")
        env = head_env()
        with ray_cluster(env, workers=nodes) as cluster:
            doc, _ = make_project(project, make_plugin_manager(), sample_rows=0, lake=(work / "lake").as_uri())
            doc["spec"]["executor"] = {"address": cluster.client_address, "memoryBudgetMb": budget_mb}
            spec = work / "spec.yaml"
            spec.write_text(yaml.safe_dump(doc, sort_keys=False))
            started = time.monotonic()
            proc = subprocess.run(
                [sys.executable, "-m", "pgx_core", "run", str(spec), "--json"],
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            wall = time.monotonic() - started
        if proc.returncode != 0:
            raise SystemExit(f"pgx run on {nodes} nodes exited {proc.returncode}:\n{proc.stderr[-3000:]}")
        summaries = [json.loads(p.read_text()) for p in sorted((work / "lake" / "pgx_pipeline").rglob("summary.json"))]
        rows = sum(s["totals"]["rows_in"] for s in summaries if s["script_name"] == "txt_to_parquet")
        by_node: dict[str, int] = {}
        for s in summaries:
            for node, n in s["resources"]["work_items_by_node"].items():
                by_node[node] = by_node.get(node, 0) + n
        stages = {s["script_name"]: s["duration_sec"] for s in summaries}
        return {
            "worker_nodes": nodes,
            "wall_sec": round(wall, 1),
            "stages_total_sec": round(sum(stages.values()), 1),
            "raw_rows": rows,
            "rows_per_sec": round(rows / wall),
            "rows_per_sec_in_stages": round(rows / sum(stages.values())),
            # Ray Client connections tried again (each costs Ray's 30 s wait): part of the wall time.
            "client_connect_retries": proc.stderr.count('"ray_join_retry"'),
            "stages_sec": stages,
            "work_items_by_node": by_node,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--nodes", default="1,2,3")
    parser.add_argument("--budget-mb", type=int, default=512)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="pgx-scaling-data-"))
    try:
        make_project(root, make_plugin_manager(), sample_rows=args.rows)
        runs = [one_run(root / "lake" / "raw", root, int(n), args.budget_mb) for n in args.nodes.split(",")]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"nproc": os.cpu_count(), "python": platform.python_version()},
        "rows": args.rows,
        "memory_budget_mb": args.budget_mb,
        "runs": runs,
    }
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
