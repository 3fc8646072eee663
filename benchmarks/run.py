"""End-to-end benchmark of pgx: the whole pipeline against DuckDB and the pyarrow I/O floor.

    python benchmarks/run.py --rows N [--executor ray|local] [--budget-mb M]
                             [--scaling 250000,500000,1000000] [--out benchmarks/results.json] [--skip-duckdb]

Method
------
1. **Data.** ``pgx_apcd.sample.generate`` (what ``pgx sample`` runs) writes N synthetic CP1252
   extracts (≈40 % pharmacy, 60 % medical) into ``<tmp>/lake/raw/<type>/`` — the layout and the
   small maps of ``pgx demo``. Generation is untimed.
2. **pgx.** The demo's pipeline spec (ingest ×2 → impute → clean-pharmacy → clean-medical →
   update-codes → target-frequency; the example line-count plugin is left out) with
   ``executor.type`` / ``memoryBudgetMb`` from the flags runs as a subprocess, ``pgx run SPEC --json``.
   Its peak RSS is taken from ``os.wait4`` (the rusage of that child, i.e. what
   ``getrusage(RUSAGE_CHILDREN)`` reports for it: the driver and the descendants it reaped) and,
   because Ray workers live in processes the driver does not reap, also by sampling the summed RSS
   of the whole process tree every 0.25 s (an over-estimate: shared pages, e.g. Ray's object store,
   count once per process). Per stage, from the run summaries: ``duration_sec`` (the
   stage's own wall time), ``totals.rows_in`` and ``resources.peak_item_rss_mb`` (the largest RSS
   of any one work item). rows/s = rows_in / duration; MB/s = input bytes / duration, where the
   input is raw text for ingest, bronze Parquet for impute, silver Parquet for clean and gold
   Parquet for update-codes and target-frequency (1 MB = 10^6 bytes).
3. **DuckDB**, each stage a fresh subprocess (so its peak RSS, ``VmHWM``, is its own) on the same
   input, timing the whole job (read, transform, write Parquet):
   ingest — ``read_csv(delim='|', quote='', all_varchar=true)`` → ``COPY … TO parquet`` on a UTF-8
   transcoded copy of each raw file (DuckDB has no CP1252 decoder offline; transcoding untimed);
   impute — ``bench_impute_rules._duckdb`` (imputation steps 1-6 in SQL) on the bronze tables, silver
   written with pyarrow; clean — ``bench_clean_rules.duckdb_sql`` per data type over the silver
   Parquet; update-codes — its diagnosis/procedure rule in SQL (regexp) over gold medical.
   target-frequency has no DuckDB rendering (—). Caveat: update-codes rewrites gold in place, so the
   DuckDB and floor jobs of update-codes read the gold *after* pass 2 (same size and shape, the
   rules do the same work; pass 2 is idempotent).
4. **Floor**: pyarrow reads the stage's input and writes it back as Parquet, file by file, with no
   transformation (ingest: ``pyarrow.csv`` CP1252 read + Parquet write), in a subprocess.
5. Ratios are of throughput, pgx ÷ other (> 1: pgx faster), and of peak RSS, pgx per work item ÷
   the other job (< 1: pgx leaner). DuckDB and the floor are one job per stage over all of its input,
   so their "per item" RSS is the whole stage's.
6. ``--scaling a,b,c`` repeats step 1-2 at each size (no DuckDB) and tabulates total time and peak
   memory (whole run, and the largest work item per stage): with bucketing, the per-item peak
   should stay flat while the input grows.

The machine may be shared: the 1-minute load average is recorded before and after every job.
Results go to ``--out`` (JSON); Markdown tables are printed for RESULTS.md.
"""

# ruff: noqa: S608  (all SQL is assembled from layout constants and local paths, never from data)
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
STAGES = ("ingest", "impute", "clean-pharmacy", "clean-medical", "update-codes", "target-frequency")
SCRIPT_NAMES = {
    "ingest": "txt_to_parquet",
    "impute": "global_imputation",
    "clean-pharmacy": "clean_pharmacy",
    "clean-medical": "clean_medical",
    "update-codes": "update_codes",
    "target-frequency": "target_frequency_analysis",
}
ICD_COLUMNS = ("primary", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
PROCEDURE_COLUMNS = ("procedure_code", "cpt_mod_1_code", "cpt_mod_2_code")


# ------------------------------------------------------------------------------------------------
# helpers


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def vmhwm_mb(pid: int | str = "self") -> float:
    """A process's peak RSS (VmHWM), MiB (this process's by default; 0 once ``pid`` is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 if pid == "self" else 0.0


def tree_rss_mb(pid: int) -> float:
    """Summed RSS of ``pid`` and all its descendants, MiB (0 if it is gone)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total / 2**20


@dataclass
class ChildResult:
    returncode: int
    wall_sec: float
    maxrss_mb: float  # ru_maxrss of the reaped child (includes descendants it reaped)
    tree_peak_mb: float  # sampled peak of the summed RSS of the process tree
    own_peak_mb: float  # the child's own VmHWM, last sampled (the pgx driver, without Ray's processes)
    stdout: str
    load_before: float
    load_after: float


def run_child(cmd: list[str], env: dict[str, str] | None = None, *, with_stderr: bool = False) -> ChildResult:
    """Run ``cmd``; wall time, its own rusage (os.wait4) and the sampled peak RSS of its tree. Its
    output is stdout (with stderr too if ``with_stderr``: where pgx logs)."""
    before = load1()
    with tempfile.TemporaryFile("w+") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT if with_stderr else None, env=env)
        peak = own = 0.0
        done = threading.Event()

        def sample() -> None:
            nonlocal peak, own
            while not done.wait(0.25):
                peak = max(peak, tree_rss_mb(proc.pid))
                own = max(own, vmhwm_mb(proc.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        done.set()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()
    return ChildResult(proc.returncode, wall, usage.ru_maxrss / 1024, peak, own, text, before, load1())


def size_bytes(files: list[Path]) -> int:
    return sum(f.stat().st_size for f in files)


def parquet_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.parquet"))


# ------------------------------------------------------------------------------------------------
# data and pgx run


def prepare(root: Path, rows: int, seed: int) -> None:
    """Raw extracts into ``root/lake/raw/<type>/`` and the example maps into ``root/maps`` (untimed)."""
    from pgx_core.cli.project import make_project
    from pgx_core.pluginmanager import make_plugin_manager

    make_project(root, make_plugin_manager(), sample_rows=rows, seed=seed)


def write_spec(root: Path, executor: str, budget_mb: int) -> Path:
    """The project's pipeline (without the example plugin's line-count) at ``budget_mb``."""
    import yaml

    from pgx_core.cli.project import make_project
    from pgx_core.pluginmanager import make_plugin_manager

    doc, _ = make_project(root, make_plugin_manager(), sample_rows=0, name="bench", executor=executor)
    doc["spec"]["executor"]["memoryBudgetMb"] = budget_mb
    doc["spec"]["stages"] = [s for s in doc["spec"]["stages"] if s["use"] != "line-count"]
    path = root / "bench.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@dataclass
class StageResult:
    stage: str
    rows_in: int
    input_bytes: int
    duration_sec: float
    peak_item_rss_mb: float
    entities: int
    rows_per_sec: float = 0.0
    mb_per_sec: float = 0.0


@dataclass
class PgxRun:
    rows: int
    executor: str
    budget_mb: int
    exit_code: int
    wall_sec: float
    driver_maxrss_mb: float
    tree_peak_mb: float
    load_before: float
    load_after: float
    stages: list[StageResult] = field(default_factory=list)


def stage_inputs(lake: Path) -> dict[str, int]:
    """Input bytes per stage (gold is measured after the run: update-codes rewrites it in place)."""
    gold_medical = size_bytes(parquet_files(lake / "gold" / "medical"))
    return {
        "ingest": size_bytes(sorted((lake / "raw").rglob("*.txt"))),
        "impute": size_bytes(parquet_files(lake / "bronze")),
        "clean-pharmacy": size_bytes(parquet_files(lake / "silver" / "imputed" / "pharmacy")),
        "clean-medical": size_bytes(parquet_files(lake / "silver" / "imputed" / "medical")),
        "update-codes": gold_medical,
        "target-frequency": gold_medical,
    }


def run_pgx(root: Path, rows: int, executor: str, budget_mb: int) -> PgxRun:
    spec = write_spec(root, executor, budget_mb)
    pgx = str(Path(sys.executable).parent / "pgx")
    env = {**os.environ, "RAY_DEDUP_LOGS": "0"}
    child = run_child([pgx, "run", str(spec), "--json", "--no-resume", "--log-level", "WARNING"], env=env)
    run = PgxRun(rows, executor, budget_mb, child.returncode, child.wall_sec, child.maxrss_mb, child.tree_peak_mb,
                 child.load_before, child.load_after)
    if child.returncode != 0:
        print(f"pgx run exited {child.returncode}; output:\n{child.stdout[-4000:]}", file=sys.stderr)
    lake = root / "lake"
    inputs = stage_inputs(lake)
    for stage in STAGES:
        found = sorted((lake / "pgx_pipeline" / SCRIPT_NAMES[stage]).glob("run_id=*/summary.json"))
        if not found:
            continue
        summary: dict[str, Any] = json.loads(found[-1].read_text())
        dur = float(summary["duration_sec"])
        rows_in = int(summary["totals"]["rows_in"])
        res = StageResult(stage, rows_in, inputs[stage], dur,
                          float(summary.get("resources", {}).get("peak_item_rss_mb") or 0),
                          int(summary["totals"]["entities"]))
        res.rows_per_sec = rows_in / dur if dur else 0.0
        res.mb_per_sec = inputs[stage] / 1e6 / dur if dur else 0.0
        run.stages.append(res)
    return run


# ------------------------------------------------------------------------------------------------
# DuckDB and floor jobs (each runs in its own subprocess: ``run.py --job KIND ROOT``)


def _update_codes_sql(glob: str, target_map: dict[str, str], columns: list[str]) -> str:
    """Update-codes for gold medical: ICD diagnosis columns normalized, procedure columns upper/no spaces."""
    def key(k: str) -> str:
        return k.upper().replace(".", "").replace(" ", "").replace("'", "''")

    cases = " ".join(f"WHEN '{key(k)}' THEN '{v}'" for k, v in target_map.items())
    select = []
    icd = {f"{p}_icd_diagnosis_code" for p in ICD_COLUMNS}
    for c in columns:
        if c in icd:
            flat = f"replace(replace(upper({c}), '.', ''), ' ', '')"
            select.append(
                f"CASE WHEN {c} IS NULL THEN NULL "
                f"WHEN (CASE {flat} {cases} END) IS NOT NULL THEN (CASE {flat} {cases} END) "
                f"WHEN regexp_full_match({flat}, '[A-Z][0-9][0-9A-Z]{{1,5}}') THEN {flat} "
                f"WHEN regexp_matches({flat}, '[A-Z][0-9]{{2}}[0-9A-Z]{{0,4}}') "
                f"THEN regexp_extract({flat}, '[A-Z][0-9]{{2}}[0-9A-Z]{{0,4}}') "
                f"ELSE {c} END AS {c}")
        elif c in PROCEDURE_COLUMNS:
            select.append(f"replace(upper({c}), ' ', '') AS {c}")
        else:
            select.append(f'"{c}"')
    return f"SELECT {', '.join(select)} FROM read_parquet('{glob}', hive_partitioning = false)"


def job(kind: str, root: Path) -> dict[str, Any]:
    """One timed job; returns rows, seconds and this process's peak RSS."""
    import duckdb

    lake, out = root / "lake", root / "_job_out" / kind
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    rows = 0
    start = time.perf_counter()
    if kind == "duckdb-ingest":
        con = duckdb.connect()
        for i, path in enumerate(sorted((root / "utf8").rglob("*.txt"))):
            con.execute(f"COPY (SELECT * FROM read_csv('{path}', delim='|', quote='', escape='', all_varchar=true, "
                        f"header=true)) TO '{out / f'{i}.parquet'}' (FORMAT parquet)")
        seconds = time.perf_counter() - start
        row = con.execute(f"SELECT count(*) FROM read_parquet('{out}/*.parquet')").fetchone()
        rows = int(row[0]) if row else 0
    elif kind == "duckdb-impute":
        sys.path.insert(0, str(HERE))
        import bench_impute_rules

        bronze = {d: pq.read_table(lake / "bronze" / d) for d in ("pharmacy", "medical")}
        rows = sum(t.num_rows for t in bronze.values())
        _, silver = bench_impute_rules._duckdb(bronze)
        for d, table in silver.items():
            pq.write_table(table, out / f"{d}.parquet")
        seconds = time.perf_counter() - start
    elif kind in ("duckdb-clean-pharmacy", "duckdb-clean-medical"):
        sys.path.insert(0, str(HERE))
        import json
        from importlib import resources

        import bench_clean_rules
        from pgx_clean.rules import load_drug_map

        dataset = "pharmacy" if kind.endswith("pharmacy") else "medical"
        con = duckdb.connect()
        drug_map = json.loads((resources.files("pgx_apcd") / "maps" / "drug_map.json").read_text())
        entries = load_drug_map(drug_map).entries if dataset == "pharmacy" else {}
        con.register("drug_map", pa.table({"variant": pa.array(list(entries), pa.string()),
                                           "target": pa.array(list(entries.values()), pa.string())}))
        con.execute(f"CREATE VIEW silver AS SELECT * FROM read_parquet("
                    f"'{lake}/silver/imputed/{dataset}/*/*/*.parquet', hive_partitioning = false)")
        con.execute(f"COPY ({bench_clean_rules.duckdb_sql(dataset)}) TO '{out / 'gold.parquet'}' (FORMAT parquet)")
        seconds = time.perf_counter() - start
        row = con.execute(f"SELECT count(*) FROM read_parquet('{out / 'gold.parquet'}')").fetchone()
        rows = int(row[0]) if row else 0
    elif kind == "duckdb-update-codes":
        glob = f"{lake}/gold/medical/*/*/*.parquet"
        con = duckdb.connect()
        target_map = json.loads((root / "maps" / "target_icd_mapping.json").read_text())
        names = pq.read_schema(next(iter(parquet_files(lake / "gold" / "medical")))).names
        con.execute(f"COPY ({_update_codes_sql(glob, target_map, names)}) TO '{out / 'gold.parquet'}' "
                    "(FORMAT parquet)")
        seconds = time.perf_counter() - start
        row = con.execute(f"SELECT count(*) FROM read_parquet('{out / 'gold.parquet'}')").fetchone()
        rows = int(row[0]) if row else 0
    elif kind == "floor-ingest":
        from pgx_apcd import layout

        for i, path in enumerate(sorted((lake / "raw").rglob("*.txt"))):
            cols = list(layout.columns(path.parent.name))
            table = pcsv.read_csv(
                path, pcsv.ReadOptions(column_names=cols, skip_rows=1, encoding="cp1252"),
                pcsv.ParseOptions(delimiter="|", quote_char=False),
                pcsv.ConvertOptions(column_types=dict.fromkeys(cols, pa.string())))
            pq.write_table(table, out / f"{i}.parquet")
            rows += table.num_rows
            del table
        seconds = time.perf_counter() - start
    elif kind.startswith("floor-"):
        source = {
            "floor-impute": lake / "bronze",
            "floor-clean-pharmacy": lake / "silver" / "imputed" / "pharmacy",
            "floor-clean-medical": lake / "silver" / "imputed" / "medical",
            "floor-update-codes": lake / "gold" / "medical",
            "floor-target-frequency": lake / "gold" / "medical",
        }[kind]
        for i, path in enumerate(parquet_files(source)):
            table = pq.read_table(path)
            rows += table.num_rows
            if kind != "floor-target-frequency":  # a report stage: its output is tiny
                pq.write_table(table, out / f"{i}.parquet")
            del table
        seconds = time.perf_counter() - start
    else:
        raise SystemExit(f"unknown job {kind}")
    shutil.rmtree(out, ignore_errors=True)
    return {"kind": kind, "rows": rows, "seconds": seconds, "rss_mb": vmhwm_mb()}


@dataclass
class JobResult:
    kind: str
    rows: int
    seconds: float
    rss_mb: float
    load_before: float
    load_after: float
    ok: bool


def run_job(kind: str, root: Path) -> JobResult:
    child = run_child([sys.executable, str(Path(__file__).resolve()), "--job", kind, str(root)])
    if child.returncode != 0:
        print(f"job {kind} failed ({child.returncode})", file=sys.stderr)
        return JobResult(kind, 0, 0.0, child.maxrss_mb, child.load_before, child.load_after, False)
    data = json.loads(child.stdout.strip().splitlines()[-1])
    return JobResult(kind, int(data["rows"]), float(data["seconds"]), float(data["rss_mb"]),
                     child.load_before, child.load_after, True)


def transcode(root: Path) -> None:
    """UTF-8 copies of the raw extracts for DuckDB (untimed)."""
    for path in sorted((root / "lake" / "raw").rglob("*.txt")):
        dest = root / "utf8" / path.parent.name / path.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        with path.open("r", encoding="cp1252", newline="") as src, dest.open("w", encoding="utf-8", newline="") as dst:
            shutil.copyfileobj(src, dst, 1 << 22)


# ------------------------------------------------------------------------------------------------
# tables


def _f(x: float, digits: int = 0) -> str:
    return f"{x:,.{digits}f}" if x else "—"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if a and b else "—"


def headline_table(run: PgxRun, duck: dict[str, JobResult], floor: dict[str, JobResult]) -> str:
    lines = [
        "| stage | rows in | input MB | pgx s | pgx rows/s | DuckDB rows/s | floor rows/s | pgx÷DuckDB | pgx÷floor "
        "| pgx MB/s | DuckDB MB/s | floor MB/s | pgx peak RSS/item MiB | DuckDB peak RSS MiB | floor peak RSS MiB "
        "| RSS pgx÷DuckDB |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for s in run.stages:
        d, fl = duck.get(s.stage), floor.get(s.stage)
        d_rps = s.rows_in / d.seconds if d and d.ok and d.seconds else 0.0
        f_rps = s.rows_in / fl.seconds if fl and fl.ok and fl.seconds else 0.0
        d_mbs = s.input_bytes / 1e6 / d.seconds if d_rps and d else 0.0
        f_mbs = s.input_bytes / 1e6 / fl.seconds if f_rps and fl else 0.0
        lines.append(
            f"| {s.stage} | {s.rows_in:,} | {s.input_bytes / 1e6:,.0f} | {s.duration_sec:,.1f} | {_f(s.rows_per_sec)} "
            f"| {_f(d_rps)} | {_f(f_rps)} | {_ratio(s.rows_per_sec, d_rps)} | {_ratio(s.rows_per_sec, f_rps)} "
            f"| {_f(s.mb_per_sec, 1)} | {_f(d_mbs, 1)} | {_f(f_mbs, 1)} | {_f(s.peak_item_rss_mb)} "
            f"| {_f(d.rss_mb if d and d.ok else 0.0)} | {_f(fl.rss_mb if fl and fl.ok else 0.0)} "
            f"| {_ratio(s.peak_item_rss_mb, d.rss_mb if d and d.ok else 0.0)} |")
    duck_peak = max((j.rss_mb for j in duck.values() if j.ok), default=0.0)
    floor_peak = max((j.rss_mb for j in floor.values() if j.ok), default=0.0)
    duck_total = sum(j.seconds for j in duck.values() if j.ok)
    pgx_stage_total = sum(s.duration_sec for s in run.stages if s.stage in duck)
    lines += [
        "",
        "| whole run | wall s | peak RSS MiB |",
        "|---|--:|--:|",
        f"| pgx `pgx run` (driver + reaped children, getrusage) | {run.wall_sec:,.1f} | {run.driver_maxrss_mb:,.0f} |",
        f"| pgx process tree incl. Ray workers (sampled sum of RSS) | {run.wall_sec:,.1f} | {run.tree_peak_mb:,.0f} |",
        f"| pgx, sum of stage durations with a DuckDB rendering | {pgx_stage_total:,.1f} | — |",
        f"| DuckDB, sum of its stage jobs / largest job | {duck_total:,.1f} | {_f(duck_peak)} |",
        f"| pyarrow floor, largest job | — | {_f(floor_peak)} |",
    ]
    return "\n".join(lines)


def scaling_table(runs: list[PgxRun]) -> str:
    head = ("| rows | load 1m (before→after) | exit | wall s | sum of stage s | whole run peak RSS MiB (driver) "
            "| process tree peak MiB | max peak RSS/item MiB | " + " | ".join(f"{s} item MiB" for s in STAGES) + " |")
    lines = [head, "|" + "--:|" * (8 + len(STAGES))]
    for r in runs:
        per = {s.stage: s for s in r.stages}
        items = [_f(per[s].peak_item_rss_mb) if s in per else "—" for s in STAGES]
        lines.append(
            f"| {r.rows:,} | {r.load_before}→{r.load_after} | {r.exit_code} | {r.wall_sec:,.1f} "
            f"| {sum(s.duration_sec for s in r.stages):,.1f} | {r.driver_maxrss_mb:,.0f} | {r.tree_peak_mb:,.0f} "
            f"| {_f(max((s.peak_item_rss_mb for s in r.stages), default=0.0))} | " + " | ".join(items) + " |")
    return "\n".join(lines)


def rate_table(runs: list[PgxRun]) -> str:
    """Rows/s per stage at each size, and each size's rate ÷ the rate at 1 M rows (flat = 1.0)."""
    base = next((r for r in runs if r.rows == 1_000_000), runs[0] if runs else None)
    base_rates = {s.stage: s.rows_per_sec for s in base.stages} if base else {}
    head = " | ".join(f"{s} rows/s (÷ at {base.rows:,})" for s in STAGES) if base else ""
    lines = [f"| rows | {head} |", "|--:|" + "--:|" * len(STAGES)]
    for r in runs:
        per = {s.stage: s for s in r.stages}
        cells = [f"{per[s].rows_per_sec:,.0f} ({per[s].rows_per_sec / base_rates[s]:.2f})"
                 if s in per and base_rates.get(s) else "—" for s in STAGES]
        lines.append(f"| {r.rows:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    import ray

    try:
        import duckdb

        duckdb_version = duckdb.__version__
    except ImportError:  # only --skip-duckdb works without the bench extra
        duckdb_version = "not installed"
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem = next((int(line.split()[1]) // 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")), 0)
    return {"nproc": os.cpu_count(), "mem_total_mib": mem, "cpu": cpu, "python": platform.python_version(),
            "pyarrow": pa.__version__, "duckdb": duckdb_version, "ray": ray.__version__}


# ------------------------------------------------------------------------------------------------


def full_run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="pgx-bench-", dir=workdir))
    try:
        print(f"[bench] generating {args.rows:,} rows in {root}", file=sys.stderr)
        prepare(root, args.rows, args.seed)
        print(f"[bench] pgx run ({args.executor}, budget {args.budget_mb} MB), load {load1()}", file=sys.stderr)
        run = run_pgx(root, args.rows, args.executor, args.budget_mb)
        print(f"[bench] pgx done in {run.wall_sec:.1f}s, exit {run.exit_code}", file=sys.stderr)
        duck: dict[str, JobResult] = {}
        if not args.skip_duckdb:
            transcode(root)
            for stage in ("ingest", "impute", "clean-pharmacy", "clean-medical", "update-codes"):
                print(f"[bench] duckdb {stage}, load {load1()}", file=sys.stderr)
                duck[stage] = run_job(f"duckdb-{stage}", root)
        floor: dict[str, JobResult] = {}
        for stage in STAGES:
            print(f"[bench] floor {stage}, load {load1()}", file=sys.stderr)
            floor[stage] = run_job(f"floor-{stage}", root)
        table = headline_table(run, duck, floor)
        return {"pgx": asdict(run), "duckdb": {k: asdict(v) for k, v in duck.items()},
                "floor": {k: asdict(v) for k, v in floor.items()}, "markdown": table}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def scaling(args: argparse.Namespace, workdir: Path, sizes: list[int], reuse: PgxRun | None,
            save: Any) -> dict[str, Any]:
    """pgx alone at each size; the full run's pgx run is reused for its own size."""
    runs: list[PgxRun] = []
    for n in sizes:
        if reuse is not None and reuse.rows == n:
            runs.append(reuse)
            continue
        root = Path(tempfile.mkdtemp(prefix=f"pgx-scale-{n}-", dir=workdir))
        try:
            print(f"[bench] scaling: {n:,} rows, load {load1()}", file=sys.stderr)
            prepare(root, n, args.seed)
            runs.append(run_pgx(root, n, args.executor, args.budget_mb))
            print(f"[bench] scaling: {n:,} rows done in {runs[-1].wall_sec:.1f}s", file=sys.stderr)
            save({"runs": [asdict(r) for r in runs], "markdown": scaling_table(runs)})
        finally:
            shutil.rmtree(root, ignore_errors=True)
    return {"runs": [asdict(r) for r in runs], "markdown": scaling_table(runs) + "\n\n" + rate_table(runs)}


MIN_BUDGET_MB = 64  # the smallest executor.memoryBudgetMb a run spec takes
STANDARD_SIZES = (250_000, 1_000_000, 4_000_000, 16_000_000)  # --scaling standard
PRODUCTION_ROWS = 1_400_000_000
PRODUCTION_BUDGET_MB = 2048


def _impute_spec(root: Path, name: str, budget_mb: int, buckets: int | None) -> Path:
    import yaml

    doc = {
        "apiVersion": "pgx.io/v1alpha1",
        "kind": "PipelineRun",
        "metadata": {"name": name},
        "spec": {"lake": (root / "lake").as_uri(), "executor": {"memoryBudgetMb": budget_mb},
                 "stages": [{"use": "impute", "with": {"buckets": buckets}}]},
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _silver_digest(lake: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    for f in sorted((lake / "silver").rglob("*.parquet")):
        h.update(str(f.relative_to(lake)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def worker_baseline_mb(executor: str) -> float:
    """RSS of a work item's process before any item: a Ray worker (or, local, a Python process)
    that has imported the impute stage. The fixed overhead a budget does not cover."""
    code = """
import resource, json, sys
def rss():
    import pgx_impute.stage  # noqa: F401  (what an impute item imports)
    return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize() / 2**20
if sys.argv[1] == "ray":
    import ray
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    print(json.dumps(ray.get(ray.remote(rss).remote())))
    ray.shutdown()
else:
    print(json.dumps(rss()))
"""
    out = subprocess.run([sys.executable, "-c", code, executor], capture_output=True, text=True, check=True)
    return round(float(out.stdout.strip().splitlines()[-1]), 1)


_PHASES = {"impute_sampled": "sample", "impute_shuffled": "shuffle", "impute_bucketed": "buckets"}


def _impute_phases(log: str, seconds: float) -> dict[str, Any]:
    """Impute's phase times from its log events, the rest of the stage's time (planning, the
    assembly of the outputs, promotion) as ``assembly_and_rest``, and the pieces the buckets wrote."""
    phases: dict[str, float] = {}
    pieces = None
    for line in log.splitlines():
        try:
            event = json.loads(line)
        except ValueError:  # not a log line (Ray's own output, the closing summary's lines)
            continue
        if isinstance(event, dict) and event.get("event") in _PHASES:
            phases[_PHASES[event["event"]]] = event["duration_sec"]
            pieces = event.get("pieces", pieces)
    phases["assembly_and_rest"] = round(seconds - sum(phases.values()), 3)
    return {"phases_sec": phases, "pieces": pieces}


def scale_model(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Impute alone on ``--rows`` rows twice: with the default budget (few buckets), and with the
    bucket count 1.4 B rows need at 2 GB at the budget that makes each bucket as full as a
    production one (rows x bytes/row x peak factor / buckets). The silver of both must be
    byte-identical; rows/s and the largest work item's RSS (against budget + a worker's own RSS)
    are compared."""
    import pyarrow.parquet as pq
    from pgx_impute.rules import PEAK_FACTOR, estimate_bucket_count

    root = Path(tempfile.mkdtemp(prefix="pgx-scale-model-", dir=workdir))
    try:
        prepare(root, args.rows, args.seed)
        spec = write_spec(root, args.executor, PRODUCTION_BUDGET_MB)
        pgx = str(Path(sys.executable).parent / "pgx")
        for stage in ("ingest-pharmacy", "ingest-medical"):
            subprocess.run([pgx, "run", str(spec), "--stage", stage, "--log-level", "WARNING"], check=True)
        shutil.rmtree(root / "lake" / "raw")  # ~0.75 GB a million rows; impute's scratch needs the disk
        bronze = [f for f in parquet_files(root / "lake" / "bronze") if "_rejects" not in str(f)]
        rows = sum(pq.read_metadata(f).num_rows for f in bronze)
        first = [pq.ParquetFile(f).read_row_group(0) for f in bronze]
        row_bytes = sum(t.nbytes for t in first) / sum(t.num_rows for t in first)
        target = estimate_bucket_count(int(PRODUCTION_ROWS * row_bytes), PRODUCTION_BUDGET_MB)
        # As full as a production bucket when the rows allow it (≈ 44 M rows and more); the run
        # spec's smallest budget (64 MB) below that.
        small_budget = max(MIN_BUDGET_MB, int(rows * row_bytes * PEAK_FACTOR["arrow"] / target / 2**20))
        runs = {}
        for name, budget, buckets in (("few", PRODUCTION_BUDGET_MB, None), ("many", small_budget, target)):
            lake = root / name
            shutil.copytree(root / "lake" / "bronze", lake / "lake" / "bronze")
            child = run_child([pgx, "run", str(_impute_spec(lake, name, budget, buckets)), "--json",
                               "--log-level", "INFO"], with_stderr=True)
            if child.returncode != 0:
                sys.exit(f"impute ({name}) exited {child.returncode}: {child.stdout[-2000:]}")
            [summary] = (lake / "lake" / "pgx_pipeline" / "global_imputation").glob("run_id=*/summary.json")
            doc = json.loads(summary.read_text())
            runs[name] = {"budget_mb": budget, "buckets": buckets or "auto", "seconds": doc["duration_sec"],
                          "rows_per_sec": round(rows / doc["duration_sec"]),
                          "peak_item_rss_mb": doc.get("resources", {}).get("peak_item_rss_mb"),
                          "driver_peak_rss_mb": round(child.own_peak_mb),
                          "silver_sha256": _silver_digest(lake / "lake"),
                          **_impute_phases(child.stdout, doc["duration_sec"])}
            shutil.rmtree(lake, ignore_errors=True)
        return {"rows": rows, "arrow_bytes_per_row": round(row_bytes, 1), "target_buckets": target,
                "arithmetic": (f"ceil({PRODUCTION_ROWS:,} rows x {row_bytes:.0f} B x {PEAK_FACTOR['arrow']} / "
                               f"{PRODUCTION_BUDGET_MB} MiB); budget of the many-bucket run: max({MIN_BUDGET_MB}, "
                               f"{rows:,} x {row_bytes:.0f} B x {PEAK_FACTOR['arrow']} / {target})"
                               f" = {small_budget} MiB"),
                "worker_baseline_mb": worker_baseline_mb(args.executor),
                "runs": runs, "identical": runs["few"]["silver_sha256"] == runs["many"]["silver_sha256"],
                "speed_ratio": round(runs["many"]["rows_per_sec"] / runs["few"]["rows_per_sec"], 3)}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="total rows of the full comparison run")
    ap.add_argument("--executor", choices=("ray", "local"), default="ray")
    ap.add_argument("--budget-mb", type=int, default=256, help="executor.memoryBudgetMb of the run spec")
    ap.add_argument("--scaling", default="",
                    help="comma-separated sizes for the scaling table (pgx only); 'standard' = 250k,1M,4M,16M")
    ap.add_argument("--skip-full", action="store_true", help="only the scaling runs")
    ap.add_argument("--skip-duckdb", action="store_true")
    ap.add_argument("--scale-model", action="store_true",
                    help="impute alone at --rows with the bucket count of 1.4 B rows at 2 GB, against few buckets")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()), help="where the temp lakes go")
    ap.add_argument("--out", type=Path, default=HERE / "results.json")
    ap.add_argument("--job", nargs=2, metavar=("KIND", "ROOT"), help=argparse.SUPPRESS)  # internal: one subprocess
    args = ap.parse_args()
    if args.job:
        print(json.dumps(job(args.job[0], Path(args.job[1]))))
        return

    result: dict[str, Any] = {"machine": machine(), "argv": sys.argv, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                              time.gmtime())}
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def save_scaling(partial: dict[str, Any]) -> None:  # partial results survive an interrupted run
        result["scaling"] = partial
        args.out.write_text(json.dumps(result, indent=1))

    if args.scale_model:
        result["scale_model"] = scale_model(args, args.workdir)
        args.out.write_text(json.dumps(result, indent=1))
        print(json.dumps(result["scale_model"], indent=1))
        return
    reuse: PgxRun | None = None
    if not args.skip_full:
        result["full"] = full_run(args, args.workdir)
        args.out.write_text(json.dumps(result, indent=1))
        print(result["full"]["markdown"] + "\n", file=sys.stderr)
        pgx_run = result["full"]["pgx"]
        reuse = PgxRun(**{**pgx_run, "stages": [StageResult(**s) for s in pgx_run["stages"]]})
    if args.scaling:
        result["worker_baseline_mb"] = worker_baseline_mb(args.executor)
        sizes = (list(STANDARD_SIZES) if args.scaling == "standard"
                 else [int(x) for x in args.scaling.split(",") if x.strip()])
        result["scaling"] = scaling(args, args.workdir, sizes, reuse, save_scaling)
    result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    args.out.write_text(json.dumps(result, indent=1))
    print(f"## pgx benchmark — {result['machine']['cpu']}, {result['machine']['nproc']} CPUs\n")
    if "full" in result:
        full = result["full"]["pgx"]
        print(f"### Full run: {args.rows:,} rows, executor {args.executor}, memoryBudgetMb {args.budget_mb}, "
              f"load {full['load_before']}→{full['load_after']} (1-min)\n")
        print("Throughput ratios: pgx ÷ other, > 1 means pgx is faster. RSS ratio: < 1 means pgx is leaner.\n")
        print(result["full"]["markdown"] + "\n")
    if "scaling" in result:
        print(f"### Scaling (executor {args.executor}, memoryBudgetMb {args.budget_mb})\n")
        print(result["scaling"]["markdown"] + "\n")
    print(f"results: {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
