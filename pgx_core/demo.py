"""``pgx demo``: the embedded default. Synthetic extracts into a local lake and the whole pipeline on it.

The spec it runs is written next to the lake (``<dir>/demo.yaml``) so the same run can be
repeated, planned or rolled back with the ordinary commands.
"""

from __future__ import annotations

import json
import shutil
import sys
import threading
from pathlib import Path
from typing import Any

import yaml

from pgx_core import paths
from pgx_core.exitcodes import ExitCode
from pgx_core.pluginmanager import make_plugin_manager
from pgx_core.progress import Progress
from pgx_core.runner import Runner
from pgx_core.runspec import load_spec
from pgx_core.storage import open_store

# Small example maps (the real ones live in the team's repository bucket).
TARGET_MAP = {"F11.20": "F1120", "YF1120": "F1120", "I50.32": "I5032", "E11.9": "E119", "J69.0": "J690"}
DRUG_MAP = {"HYDRALAZINE HCL": "hydralazine_hydrochloride", "APAP/CODEINE": "acetaminophen_codeine"}


def pipeline(target_map: str, drug_map: str) -> list[dict[str, Any]]:
    """The whole pipeline, every built-in stage in order."""
    return [
        {"use": "ingest", "name": "ingest-pharmacy", "with": {"dataType": "pharmacy"}},
        {"use": "ingest", "name": "ingest-medical", "with": {"dataType": "medical"}},
        {"use": "impute"},
        {"use": "clean-pharmacy", "with": {"drugMap": drug_map}},
        {"use": "clean-medical"},
        {"use": "update-codes", "with": {"datasets": ["medical"], "targetMap": target_map}},
        {"use": "target-frequency", "with": {"targetMap": target_map}},
        {"use": "line-count"},  # the example third-party plugin, when installed
    ]


def demo_spec(lake: str, available: set[str], executor: str, maps: Path) -> dict[str, Any]:
    """The demo's run spec; stages whose plugins are not installed are left out."""
    target, drug = maps / "target_icd_mapping.json", maps / "drug_map.json"
    stages = [s for s in pipeline(target.as_uri(), drug.as_uri()) if s["use"] in available]
    return {
        "apiVersion": "pgx.io/v1alpha1",
        "kind": "PipelineRun",
        "metadata": {"name": "demo"},
        "spec": {"lake": lake, "executor": {"type": executor, "memoryBudgetMb": 1024}, "stages": stages},
    }


def prepare_lake(root: Path, *, rows: int, seed: int = 7) -> Path:
    """Synthetic raw extracts into ``root/lake/raw/<type>/`` (once) and the maps into ``root/maps``.

    Returns the maps folder. Used by ``pgx demo`` and the benchmark.
    """
    from pgx_apcd.sample import generate  # noqa: PLC0415 - the APCD domain package ships with pgx

    raw = root / "lake" / "raw"
    if not raw.exists():
        tmp = root / "_sample"
        generate(tmp, rows=rows, seed=seed)
        for data_type in ("pharmacy", "medical"):
            (raw / data_type).mkdir(parents=True, exist_ok=True)
            for f in sorted((tmp / data_type).glob("*.txt")):
                shutil.move(str(f), raw / data_type / f.name)
        shutil.rmtree(tmp)
    maps = root / "maps"
    maps.mkdir(parents=True, exist_ok=True)
    (maps / "target_icd_mapping.json").write_text(json.dumps(TARGET_MAP, indent=1))
    (maps / "drug_map.json").write_text(json.dumps(DRUG_MAP, indent=1))
    return maps


def run_demo(directory: str, *, rows: int, executor: str | None, as_json: bool) -> int:
    """Generate data, run every installed stage, print where everything landed."""
    root = Path(directory).resolve()
    lake_dir = root / "lake"
    maps = prepare_lake(root, rows=rows)
    plugins = make_plugin_manager()
    lake = lake_dir.as_uri()
    doc = demo_spec(lake, set(plugins.registry.names()), executor or "ray", maps)
    spec_path = root / "demo.yaml"
    spec_path.write_text(yaml.safe_dump(doc, sort_keys=False))
    spec = load_spec(spec_path, plugins.registry)
    stop = threading.Event()
    progress = Progress(enabled=not as_json and sys.stderr.isatty())
    runner = Runner(spec, plugins, stop=stop, on_progress=progress.update if progress.enabled else None)
    code = runner.execute()
    progress.close()
    report = _report(lake, runner, code, spec_path)
    if runner.summaries:
        from pgx_core.report import build_report  # noqa: PLC0415 - matplotlib is only needed here

        report["report"] = str(build_report(lake, runner.run_id, root / "report").html)
    if as_json:
        print(json.dumps(report, indent=1))
    else:
        print(f"\npgx demo: exit {int(code)} ({ExitCode(code).name.lower()}), run {runner.run_id}")
        print(f"  spec:  {spec_path}")
        print(f"  lake:  {lake}")
        for zone, n in report["objects"].items():
            print(f"    {zone:<12} {n} objects")
        for s in report["summaries"]:
            print(f"  summary: {s}")
        if "report" in report:
            print(f"  report: {report['report']}")
    return int(code)


def _report(lake: str, runner: Runner, code: int, spec_path: Path) -> dict[str, Any]:
    store = open_store(lake)
    counts: dict[str, int] = {}
    for info in store.list(lake + "/"):
        zone = paths.relative(info.uri, lake).split("/")[0]
        counts[zone] = counts.get(zone, 0) + 1
    return {
        "exit_code": int(code),
        "run_id": runner.run_id,
        "spec": str(spec_path),
        "lake": lake,
        "objects": dict(sorted(counts.items())),
        "summaries": runner.summaries,
    }
