"""Benchmark: the clean stages (silver Parquet → gold Parquet) vs DuckDB and the pyarrow I/O floor.

Generates one synthetic silver partition per dataset (``bench_clean_rules.make_silver``: sorted as
impute writes it, with padding, sentinels, every NDC form and ~1% duplicates), writes it to a local
lake, then times, each in a fresh process (so peak RSS is that engine's alone):

* ``stage``  — the real stage through the in-process ``Runner`` (local executor): plan, lease, state,
  streaming clean, staging, schema/conservation gates, promotion — with ``--budget-mb``;
* ``stream`` — the worker's data path only: ``clean_stream`` + ``GoldWriter``, file to file, chunked
  for ``--budget-mb`` (the stage minus its bookkeeping);
* ``duckdb`` — DuckDB reading the same silver file and ``COPY``-ing the same projection, casts,
  normalization, dedup, NDC/drug rules and sort to a zstd Parquet file (the SQL of
  ``bench_clean_rules.duckdb_sql``); its output is compared with the stage's gold;
* ``floor``  — pyarrow reading the silver file and writing it back (zstd), batch by batch: the I/O floor.

The box may be shared: CPU seconds (all threads of the measuring process) are the steadier figure
under contention; wall seconds are printed too. Usage::

    PYTHONPATH=.:plugins .venv/bin/python benchmarks/bench_clean_stage.py --rows 500000 --budget-mb 2048
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BAND, YEAR = "65-74", 2019


def _rss_mb() -> float:
    """Peak RSS of this process image. ``ru_maxrss`` survives fork+exec on Linux (it would report
    the parent's peak), so read the new image's high-water mark from /proc when there is one."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------------------------
# one measurement per process


def _spec(lake: Path, dataset: str, budget_mb: int, drug_map: Path | None) -> dict[str, Any]:
    params = {"drugMap": drug_map.as_uri()} if drug_map is not None else {}
    return {
        "apiVersion": "pgx.io/v1alpha1",
        "kind": "PipelineRun",
        "metadata": {"name": "bench-clean"},
        "spec": {
            "lake": lake.as_uri(),
            "executor": {"type": "local", "memoryBudgetMb": budget_mb},
            "partitions": {"years": [YEAR], "ageBands": [BAND]},
            "stages": [{"use": f"clean-{dataset}", "with": params}],
        },
    }


def measure(
    mode: str, lake: Path, dataset: str, *, budget_mb: int, drug_map: Path | None, out: Path
) -> dict[str, Any]:
    import pyarrow.parquet as pq  # noqa: I001
    from pgx_core.lake import paths

    silver = Path(paths.silver_object(lake.as_uri(), dataset, BAND, YEAR).removeprefix("file://"))
    t0, c0 = time.perf_counter(), time.process_time()
    extra: dict[str, Any] = {}
    if mode == "stage":
        from pgx_core.pluginmanager import make_plugin_manager
        from pgx_core.run.runner import Runner
        from pgx_core.spec.runspec import validate_document

        plugins = make_plugin_manager()
        spec = validate_document(_spec(lake, dataset, budget_mb, drug_map), "bench", plugins.registry)
        code = int(Runner(spec, plugins, resume=False).execute())
        assert code == 0, code
        gold = Path(paths.gold_object(lake.as_uri(), dataset, BAND, YEAR).removeprefix("file://"))
        shutil.copy(gold, out)
    elif mode == "stream":
        from pgx_clean.rules import gold_schema, load_drug_map
        from pgx_clean.stage import GoldWriter, clean_stream, plan_chunk_rows, silver_row_bytes

        dm = load_drug_map(json.loads(drug_map.read_text())) if drug_map is not None else None
        with silver.open("rb") as src, out.open("wb") as sink:
            pf = pq.ParquetFile(src, pre_buffer=False, buffer_size=8 << 20)
            chunk = plan_chunk_rows(budget_mb, silver_row_bytes(pf))
            writer = GoldWriter(sink, gold_schema(dataset))  # type: ignore[arg-type]
            clean_stream(pf, dataset, dm, chunk_rows=chunk, emit=writer.write)  # type: ignore[arg-type]
            writer.close()
        extra["chunk_rows"] = chunk
    elif mode == "duckdb":
        import duckdb
        import pyarrow as pa
        from bench_clean_rules import duckdb_sql

        con = duckdb.connect()
        entries = json.loads(drug_map.read_text()) if drug_map is not None else {}
        from pgx_clean.rules import load_drug_map

        canon = load_drug_map(entries).entries if entries else {}
        con.register(
            "drug_map",
            pa.table(
                {"variant": pa.array(list(canon), pa.string()), "target": pa.array(list(canon.values()), pa.string())}
            ),
        )
        # Paths are the benchmark's own temporary files, not input: no injection surface.
        con.execute(f"CREATE VIEW silver AS SELECT * FROM read_parquet('{silver}')")  # noqa: S608
        sql = duckdb_sql(dataset)  # type: ignore[arg-type]
        con.execute(f"COPY ({sql}) TO '{out}' (FORMAT parquet, COMPRESSION zstd)")
    elif mode == "floor":
        with silver.open("rb") as src:
            pf = pq.ParquetFile(src, pre_buffer=False, buffer_size=8 << 20)
            with pq.ParquetWriter(out, pf.schema_arrow, compression="zstd") as w:
                for batch in pf.iter_batches(batch_size=65_536):
                    w.write_batch(batch)
    else:
        raise SystemExit(f"unknown mode {mode}")
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"mode": mode, "secs": secs, "cpu": cpu, "peak_rss_mb": _rss_mb(), **extra}


# --------------------------------------------------------------------------------------------
# driver


def _child(
    mode: str, lake: Path, dataset: str, *, budget_mb: int, drug_map: Path | None, out: Path
) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--_measure", mode, "--_lake", str(lake), "--datasets", dataset,
           "--budget-mb", str(budget_mb), "--_out", str(out)]
    if drug_map is not None:
        cmd += ["--_drug-map", str(drug_map)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def _fresh_lake(root: Path, silver_file: Path, dataset: str, i: int) -> Path:
    from pgx_core.lake import paths

    lake = root / f"lake-{dataset}-{i}"
    target = Path(paths.silver_object(lake.as_uri(), dataset, BAND, YEAR).removeprefix("file://"))
    target.parent.mkdir(parents=True, exist_ok=True)
    os.link(silver_file, target)
    return lake


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=500_000)
    ap.add_argument("--datasets", default="pharmacy,medical")
    ap.add_argument("--budget-mb", type=int, default=2048)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--modes", default="floor,duckdb,stream,stage")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--_measure", help=argparse.SUPPRESS)
    ap.add_argument("--_lake", help=argparse.SUPPRESS)
    ap.add_argument("--_out", help=argparse.SUPPRESS)
    ap.add_argument("--_drug-map", dest="drug_map", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._measure:
        res = measure(args._measure, Path(args._lake), args.datasets, budget_mb=args.budget_mb,
                      drug_map=Path(args.drug_map) if args.drug_map else None, out=Path(args._out))
        print(json.dumps(res))
        return

    import duckdb
    import pyarrow as pa
    import pyarrow.parquet as pq
    from bench_clean_rules import make_drug_map, make_silver

    root = Path(args.workdir or tempfile.mkdtemp(prefix="pgx-bench-clean-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"cpus={os.cpu_count()} rows={args.rows:,} budget={args.budget_mb} MB pyarrow={pa.__version__} "
          f"duckdb={duckdb.__version__} workdir={root}")
    for dataset in args.datasets.split(","):
        table = make_silver(dataset, args.rows)  # type: ignore[arg-type]
        silver_file = root / f"silver-{dataset}.parquet"
        # Impute's writer settings are not fixed yet: 1 Mi-row row groups, zstd.
        pq.write_table(table, silver_file, compression="zstd", row_group_size=1 << 20)
        rows, arrow_mb, file_mb = table.num_rows, table.nbytes / 1e6, silver_file.stat().st_size / 1e6
        del table
        drug_map = None
        if dataset == "pharmacy":
            drug_map = root / "drug_map.json"
            drug_map.write_text(json.dumps(dict(make_drug_map().entries)))
        print(f"\n{dataset}: {rows:,} silver rows, {arrow_mb:,.0f} MB in Arrow, {file_mb:,.0f} MB on disk")
        results: dict[str, dict[str, Any]] = {}
        for mode in args.modes.split(","):
            best: dict[str, Any] | None = None
            for i in range(args.repeat):
                lake = _fresh_lake(root, silver_file, dataset, len(results) * 100 + i)
                out = root / f"gold-{dataset}-{mode}.parquet"
                res = _child(mode, lake, dataset, budget_mb=args.budget_mb, drug_map=drug_map, out=out)
                shutil.rmtree(lake)
                if best is None or res["secs"] < best["secs"]:
                    best = res
            assert best is not None
            results[mode] = best
            extra = f" chunk_rows={best['chunk_rows']:,}" if "chunk_rows" in best else ""
            print(f"  {mode:7s} wall {best['secs']:7.2f}s {rows / best['secs']:9,.0f} rows/s "
                  f"{file_mb / best['secs']:5.1f} MB/s | cpu {best['cpu']:7.2f}s {rows / best['cpu']:9,.0f} rows/cpu-s "
                  f"| peak RSS {best['peak_rss_mb']:5.0f} MB{extra}")
        if "stage" in results and "duckdb" in results:
            ours = pq.read_table(root / f"gold-{dataset}-stage.parquet")
            duck = pq.read_table(root / f"gold-{dataset}-duckdb.parquet")
            same = duck.cast(ours.schema).equals(ours)
            print(f"  stage vs duckdb: {results['duckdb']['secs'] / results['stage']['secs']:.2f}x faster wall, "
                  f"{results['duckdb']['cpu'] / results['stage']['cpu']:.2f}x less cpu (identical output: {same})")
        if "stage" in results and "floor" in results:
            print(f"  stage vs I/O floor: {results['stage']['secs'] / results['floor']['secs']:.2f}x the floor's wall, "
                  f"{results['stage']['cpu'] / results['floor']['cpu']:.2f}x its cpu")
    if not args.workdir:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
