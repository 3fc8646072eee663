"""Project-internal test helpers (the reusable plugin-author fixtures live in pgx_testing)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

SUPPORT = Path(__file__).parent / "support"
REPO = Path(__file__).parent.parent
# Ray workers of the session-wide local Ray (pgx_testing.ray_session) import test-only stages.
os.environ.setdefault("PGX_TEST_RAY_PYTHONPATH", str(SUPPORT))


def write_plugin_dist(site: Path, dist: str, entry_name: str, module: str, source: str | None = None) -> None:
    """Make a fake installed distribution under ``site`` with a ``pgx.plugins`` entry point.

    importlib.metadata discovers ``*.dist-info`` folders on ``sys.path``, so adding ``site`` to
    PYTHONPATH "installs" it for a subprocess without pip.
    """
    info = site / f"{dist.replace('-', '_')}-0.0.1.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.0.1\n")
    (info / "entry_points.txt").write_text(f"[pgx.plugins]\n{entry_name} = {module}\n")
    if source is not None:
        (site / f"{module}.py").write_text(textwrap.dedent(source))


@pytest.fixture
def plugin_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """Returns ``add(dist, entry, module, source=None)``; the site dir is on sys.path and PYTHONPATH."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), str(SUPPORT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.syspath_prepend(str(SUPPORT))

    def add(dist: str, entry: str, module: str, source: str | None = None) -> Path:
        write_plugin_dist(site, dist, entry, module, source)
        import importlib

        importlib.invalidate_caches()
        return site

    return add


@pytest.fixture
def teststage(plugin_site: Callable[..., Path]) -> Path:
    """Install the copy-table test stage (tests/support/pgx_teststage.py) for in- and out-of-process runs."""
    return plugin_site("pgx-teststage", "teststage", "pgx_teststage")


def local_spec(tmp: Path, lake: Path, stages: list[dict[str, Any]], name: str, **spec: Any) -> Path:
    """Write a PipelineRun for a local lake (executor ``local`` unless ``spec`` says otherwise)."""
    import yaml

    doc = {
        "apiVersion": "pgx.io/v1alpha1",
        "kind": "PipelineRun",
        "metadata": {"name": name},
        "spec": {"lake": lake.as_uri(), "executor": {"type": "local"}, "stages": stages, **spec},
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def run_spec(path: Path, plugins: Any = None, **runner_options: Any) -> tuple[int, Any]:
    """Validate and run a spec in-process; ``(exit code, Runner)``."""
    from pgx_core.pluginmanager import make_plugin_manager
    from pgx_core.run.runner import Runner
    from pgx_core.spec.runspec import load_spec

    plugins = plugins or make_plugin_manager()
    runner = Runner(load_spec(path, plugins.registry), plugins, **runner_options)
    return int(runner.execute()), runner


def pgx(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300, check: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run the ``pgx`` CLI in a subprocess (the real entry point, real exit codes)."""
    cmd = [sys.executable, "-m", "pgx_core", *args]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"pgx {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def pgx_popen(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start the ``pgx`` CLI in the background (output captured as text)."""
    return subprocess.Popen(
        [sys.executable, "-m", "pgx_core", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def wait_for_file(path: Path, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    """Wait until ``path`` exists (e.g. a fail point's ``.reached`` marker) while ``proc`` runs."""
    import time

    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"pgx ended ({proc.returncode}) before {path.name} appeared")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path.name} did not appear within {timeout:.0f} s")
        time.sleep(0.05)


def pgx_run_paused(spec: Path, point: str, folder: Path) -> subprocess.Popen[str]:
    """``pgx run SPEC --json`` in the background, held at fail point ``point`` once it gets there.

    Returns when the run has reached the point; touch ``folder / f"{point}.release"`` to let it go on.
    """
    folder.mkdir(exist_ok=True)
    proc = pgx_popen(
        "run", str(spec), "--json", env={"PGX_FAILPOINTS": f"{point}=pause", "PGX_FAILPOINT_DIR": str(folder)}
    )
    try:
        wait_for_file(folder / f"{point}.reached", proc)
    except BaseException:
        proc.kill()
        raise
    return proc


def line_count_project(tmp_path: Path, raw: dict[str, bytes], stage: str = "{use: line-count}") -> tuple[Path, Path]:
    """A lake whose ``raw/`` holds ``raw`` (relative path → bytes) and a spec running the example
    plugin's ``line-count`` stage on it with the local executor: ``(lake dir, spec path)``."""
    lake = tmp_path / "lake"
    for rel, data in raw.items():
        (lake / "raw" / rel).parent.mkdir(parents=True, exist_ok=True)
        (lake / "raw" / rel).write_bytes(data)
    spec = tmp_path / "lc.yaml"
    spec.write_text(
        "apiVersion: pgx.io/v1alpha1\nkind: PipelineRun\nmetadata: {name: lc}\n"
        f"spec:\n  lake: {lake.as_uri()}\n  executor: {{type: local}}\n  stages:\n    - {stage}\n"
    )
    return lake, spec
