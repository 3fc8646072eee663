"""SIGTERM at every phase of a run, under both executors: no new promotion starts, leases are
released, the running stage's summary is written, the exit code is 75, and the next run finishes
with silver byte-identical to an uninterrupted run.

The run is caught in a known phase by a fail point that pauses it (``PGX_FAILPOINTS=<point>=pause``):
the test sends SIGTERM while it waits, then lets it go on.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from pgx_apcd import layout
from pgx_apcd.sample import generate

from pgx_core import clock
from tests.conftest import local_spec, pgx_popen, pgx_run_paused, run_spec, wait_for_file
from tests.plugins.test_impute_stage import zone_digest

pytestmark = pytest.mark.integration

IMPUTE = [{"use": "impute", "with": {"buckets": 3}}]
# phase → fail point where the run is caught
PHASES = {
    "planning": "after_plan",  # the driver planned impute; nothing ran yet
    "shuffle": "impute_shuffle",  # a shuffle work item started
    "assembly": "after_staging",  # an assembled silver object is staged, not promoted
    "promotion": "after_backup",  # a promotion is under way (its old silver object backed up)
}


@pytest.fixture(scope="module")
def bronze(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A bronze lake with silver already imputed once (so promotions replace and back up), the
    bronze then changed; and the silver digest an uninterrupted impute of the new bronze gives."""
    tmp = tmp_path_factory.mktemp("sigterm")
    generate(tmp / "sample", rows=3000, seed=5, defects=False)
    lake = tmp / "lake"
    for dt in layout.DATA_TYPES:
        (lake / "raw" / dt).mkdir(parents=True)
        for f in sorted((tmp / "sample" / dt).glob("*.txt")):
            shutil.copy(f, lake / "raw" / dt / f.name)
    ingest = [{"use": "ingest", "name": f"ingest-{dt}", "with": {"dataType": dt}} for dt in layout.DATA_TYPES]
    assert run_spec(local_spec(tmp, lake, ingest, "ingest"))[0] == 0
    assert run_spec(local_spec(tmp, lake, IMPUTE, "first"))[0] == 0
    shutil.rmtree(lake / "raw")
    # New bronze: one pharmacy object dropped, so every silver object changes.
    sorted((lake / "bronze" / "pharmacy").glob("*.parquet"))[0].unlink()
    ref = tmp / "ref"
    shutil.copytree(lake, ref)
    assert run_spec(local_spec(tmp, ref, IMPUTE, "ref"))[0] == 0
    return lake, zone_digest(ref, "silver")


def _completed_after(lake: Path, run_id: str, since: str) -> int:
    """Entities ``run_id`` completed after the ISO time ``since``."""
    n = 0
    for state in (lake / "_state").rglob("state.json"):
        for step in json.loads(state.read_text())["completed_steps"]:
            meta = step["metadata"]
            n += meta["run_id"] == run_id and meta["status"] == "completed" and step["completed_at"] > since
    return n


def _terminate_held(proc: subprocess.Popen[str], fp_dir: Path, point: str) -> str:
    """SIGTERM to a pgx process held at fail point ``point``, then let it go on: it must end with
    75. Returns its standard output."""
    try:
        proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)  # the driver sees the signal while the run is held at the point
        (fp_dir / f"{point}.release").touch()
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 75, err[-3000:]
    return out


@pytest.mark.parametrize("phase", list(PHASES))
@pytest.mark.parametrize("executor", ["local", pytest.param("ray", marks=pytest.mark.ray)])
def test_sigterm_at_any_phase_ends_cleanly(
    executor: str, phase: str, bronze: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    src, reference = bronze
    lake = tmp_path / "lake"
    shutil.copytree(src, lake)
    spec = local_spec(tmp_path, lake, IMPUTE, "term", executor={"type": executor, "maxParallel": 2})
    fp_dir = tmp_path / "fp"
    point = PHASES[phase]
    proc = pgx_run_paused(spec, point, fp_dir)
    signalled_at = clock.iso()
    out = _terminate_held(proc, fp_dir, point)
    run_id = json.loads(out)["run_id"]
    doc = json.loads((lake / "pgx_pipeline" / "global_imputation" / f"run_id={run_id}" / "summary.json").read_text())
    assert doc["status_code"] == 75 and doc["status"] in {"partial", "error"}
    assert not list((lake / "_state").rglob("lease.json"))
    # No promotion starts after the signal: only those already under way finish (at most one per
    # worker: the local executor has one, the Ray one two, and only from the assembly phase on).
    under_way = {"local": int(phase == "promotion"), "ray": 2 * (phase in {"assembly", "promotion"})}
    assert _completed_after(lake, run_id, signalled_at) <= under_way[executor]
    assert run_spec(local_spec(tmp_path, lake, IMPUTE, "again"))[0] == 0
    assert zone_digest(lake, "silver") == reference


def test_sigterm_ends_a_seed_compatible_shortcut_as_cleanly_as_pgx_run(
    bronze: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    """``pgx impute`` installed no handler: SIGTERM killed it at once, with no summary."""
    src, reference = bronze
    lake = tmp_path / "lake"
    shutil.copytree(src, lake)
    fp_dir = tmp_path / "fp"
    fp_dir.mkdir()
    argv = ("impute", "--output-root", f"{lake}/silver/imputed", "--executor", "local", "--json")
    proc = pgx_popen(*argv, env={"PGX_FAILPOINTS": "after_plan=pause", "PGX_FAILPOINT_DIR": str(fp_dir)})
    wait_for_file(fp_dir / "after_plan.reached", proc)
    out = _terminate_held(proc, fp_dir, "after_plan")
    run_id = json.loads(out)["run_id"]
    doc = json.loads((lake / "pgx_pipeline" / "global_imputation" / f"run_id={run_id}" / "summary.json").read_text())
    assert doc["status_code"] == 75
    assert run_spec(local_spec(tmp_path, lake, IMPUTE, "again"))[0] == 0
    assert zone_digest(lake, "silver") == reference


def test_sigterm_while_a_limited_impute_shuffles_promotes_nothing(
    bronze: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    """A limited impute prepares for every entity before it picks N: a stop in that preparation
    must end it (75) before anything is picked or promoted."""
    src, _reference = bronze
    lake = tmp_path / "lake"
    shutil.copytree(src, lake)
    before = zone_digest(lake, "silver")
    fp_dir = tmp_path / "fp"
    fp_dir.mkdir()
    argv = ("impute", "--output-root", f"{lake}/silver/imputed", "--limit", "1", "--executor", "local", "--json")
    proc = pgx_popen(*argv, env={"PGX_FAILPOINTS": "impute_shuffle=pause", "PGX_FAILPOINT_DIR": str(fp_dir)})
    wait_for_file(fp_dir / "impute_shuffle.reached", proc)
    run_id = json.loads(_terminate_held(proc, fp_dir, "impute_shuffle"))["run_id"]
    assert zone_digest(lake, "silver") == before
    doc = json.loads((lake / "pgx_pipeline" / "global_imputation" / f"run_id={run_id}" / "summary.json").read_text())
    assert doc["status_code"] == 75 and doc["totals"]["completed"] == 0
