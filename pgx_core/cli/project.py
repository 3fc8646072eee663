"""``pgx init`` and ``pgx demo``: a ready project folder, made of what the installed plugins add.

A project is a folder with a run spec (``pgx.yaml``; the demo's is ``demo.yaml``), a local lake
(``lake/``, raw extracts under ``lake/raw/``), the files its stages read, and a README. The core
names no stage: each plugin writes its part (:func:`pgx_core.hookspecs.pgx_init_project`) and says
which stages the spec runs, where (:func:`pgx_core.hookspecs.pgx_project_stages`).
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any

import yaml

from pgx_core.cli.ui import Ui
from pgx_core.errors import UsageError
from pgx_core.exitcodes import ExitCode
from pgx_core.extend import Project
from pgx_core.lake import paths
from pgx_core.lake.storage import open_store
from pgx_core.pluginmanager import Plugins
from pgx_core.spec.runspec import API_VERSION, KIND, load_spec

SPEC_FILE = "pgx.yaml"
DEMO_SPEC_FILE = "demo.yaml"
PROJECT_BUDGET_MB = 1024  # a laptop's share; production specs say their own


def make_project(
    root: Path,
    plugins: Plugins,
    *,
    sample_rows: int,
    seed: int = 7,
    name: str = "pgx",
    lake: str | None = None,
    executor: str = "ray",
) -> tuple[dict[str, Any], Project]:
    """Every plugin's part of a project under ``root``; returns its run spec document (not yet
    written; its lake is ``root/lake`` unless ``lake`` is given) and the project."""
    if not plugins.makes_projects:
        raise UsageError("no installed plugin adds stages to a project (see `pgx plugins`)")
    project = Project(root.resolve(), sample_rows, seed)
    project.root.mkdir(parents=True, exist_ok=True)
    stages = plugins.init_project(project)
    doc = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name},
        "spec": {
            "lake": lake or project.lake.as_uri(),
            "executor": {"type": executor, "memoryBudgetMb": PROJECT_BUDGET_MB},
            "stages": stages,
        },
    }
    return doc, project


def _readme(project: Project, spec_file: str) -> str:
    head = f"""# pgx project

- `{spec_file}`: the run spec: which stages run, on which lake (`lake/`, a local folder).
- `pgx run {spec_file}` runs every stage; a rerun resumes and skips what is done.
- `pgx status {spec_file}` shows each stage's entities; `pgx report <run id>` draws a run.
"""
    return "\n\n".join([head.strip(), *project.readme]) + "\n"


def _name(root: Path) -> str:
    """The folder's name as a run name (a DNS-1123 label), ``pgx`` if nothing of it is left."""
    label = re.sub(r"[^a-z0-9-]+", "-", root.resolve().name.lower()).strip("-")[:63].strip("-")
    return label or "pgx"


def init_project(directory: str, plugins: Plugins, *, sample_rows: int) -> tuple[Path, dict[str, Any]]:
    """``pgx init``: the project's spec, README, folders and files. Refuses a folder that already
    holds a spec (it would be overwritten)."""
    root = Path(directory)
    spec_path = root / SPEC_FILE
    if spec_path.exists():
        raise UsageError(f"{spec_path} exists already: run it with `pgx run {spec_path}`")
    doc, project = make_project(root, plugins, sample_rows=sample_rows, name=_name(root))
    spec_path.write_text(yaml.safe_dump(doc, sort_keys=False))
    readme = root / "README.md"
    if not readme.exists():
        readme.write_text(_readme(project, SPEC_FILE))
    return spec_path, doc


def run_demo(directory: str, plugins: Plugins, *, rows: int, executor: str | None, as_json: bool, ui: Ui) -> int:
    """``pgx demo``: a project with ``rows`` synthetic rows, every stage run on it, and its report.

    A rerun resumes: when nothing was left to do, the report of the run that did the work stays."""
    from pgx_core.run.runner import Runner  # noqa: PLC0415 - the runner (and Ray) only when running

    root = Path(directory).resolve()
    doc, _ = make_project(root, plugins, sample_rows=rows, name="demo", executor=executor or "ray")
    spec_path = root / DEMO_SPEC_FILE
    spec_path.write_text(yaml.safe_dump(doc, sort_keys=False))
    spec = load_spec(spec_path, plugins.registry)
    runner = Runner(spec, plugins, stop=threading.Event(), **ui.runner_hooks())
    code = runner.execute()
    ui.close()
    lake = doc["spec"]["lake"]
    report = _demo_report(lake, runner, code, spec_path)
    worked = any(t.totals["completed"] or t.totals["failed"] for t in runner.tallies)
    page = root / "report" / "report.html"
    if runner.summaries and (worked or not page.exists()):
        from pgx_core.cli.report import build_report  # noqa: PLC0415 - matplotlib is only needed here

        report["report"] = str(build_report(lake, runner.run_id, root / "report", plugins=plugins).html)
    elif page.exists():
        report["report"] = str(page)  # of the run that did the work: this one found nothing to do
    if as_json:
        print(json.dumps(report, indent=1))
        return int(code)
    lines = [f"spec:  {spec_path}", f"lake:  {lake}"]
    lines += [f"  {zone:<12} {n} objects" for zone, n in report["objects"].items()]
    lines += [f"summary: {s}" for s in report["summaries"]]
    if "report" in report:
        lines.append(f"report: {report['report']}" + ("" if worked else " (unchanged: nothing was left to do)"))
    hints = [f"open {report['report']}"] if "report" in report else []
    hints.append(f"pgx status {spec_path}")
    title = f"pgx demo: exit {int(code)} ({ExitCode(code).name.lower()}), run {runner.run_id}"
    ui.panel(title, lines, hints, ok=code == ExitCode.OK)
    return int(code)


def _demo_report(lake: str, runner: Any, code: int, spec_path: Path) -> dict[str, Any]:
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
