"""Pass 2 killed at every step of the core's promotion protocol, through real ``pgx run`` processes.

For each fail point: gold is never missing, partial or duplicated (a reader polling a partition
only ever sees the old or the new bytes); the rerun completes and leaves gold byte-identical to an
uninterrupted pass 2; every replaced object has a backup of its pre-pass-2 bytes; clean's resume
still accepts every partition; and ``pgx rollback`` of the pass-2 runs (newest first) restores the
pre-pass-2 gold byte for byte, after which a resumed pass 2 does not redo the rolled-back work.
"""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path

import pytest

from pgx_core import failpoints
from pgx_core.lake.storage import open_store
from pgx_core.run.rollback import rollback_run
from pgx_core.spec.runspec import load_spec
from tests.conftest import pgx
from tests.plugins.test_update_codes_stage import (
    PARTS,
    gold_path,
    pass2,
    plugins,
    run,
    seeded,
    spec,
    summary,
)

pytestmark = pytest.mark.integration


def gold_files(lake: Path) -> dict[str, bytes]:
    """Every visible file under gold/ (hidden files are the local store's temp and lock files)."""
    return {
        str(p.relative_to(lake)): p.read_bytes()
        for p in (lake / "gold").rglob("*")
        if p.is_file() and not p.name.startswith(".")
    }


def backup_runs(lake: Path) -> list[str]:
    """Run ids owning a backup prefix, oldest first."""
    markers = sorted((lake / "_backups").glob("backup_*.claim.json"))
    return [json.loads(m.read_text())["run_id"] for m in markers]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """Gold before pass 2, and after an uninterrupted pass 2 (bytes depend on content, not on the lake)."""
    tmp = tmp_path_factory.mktemp("ref")
    lake = seeded(tmp)
    pre = gold_files(lake)
    assert run(pass2(tmp, lake))[0] == 0
    post = gold_files(lake)
    assert len(pre) == len(PARTS) and post.keys() == pre.keys() and all(post[k] != pre[k] for k in pre)
    return pre, post


@pytest.mark.parametrize("point", failpoints.POINTS)
def test_pass2_killed_at_any_step_recovers_completely(
    point: str, tmp_path: Path, reference: tuple[dict[str, bytes], dict[str, bytes]]
) -> None:
    pre, post = reference
    lake = seeded(tmp_path / "a")
    assert gold_files(lake) == pre

    path = pass2(tmp_path / "a", lake)
    watched = gold_path(lake, "medical", *PARTS[1])
    seen: set[bytes] = set()
    missing: list[int] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(0.002):  # a short pause leaves the CPU to the pgx processes
            try:
                seen.add(watched.read_bytes())
            except FileNotFoundError:
                missing.append(1)

    reader = threading.Thread(target=poll, daemon=True)
    reader.start()
    try:
        # Killed on the second partition's pass through the point (the first one completes).
        crashed = pgx("run", str(path), env={"PGX_FAILPOINTS": f"{point}=kill@2"})
        assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
        after_crash = gold_files(lake)
        assert after_crash.keys() == pre.keys()  # nothing missing, nothing extra
        assert all(after_crash[k] in (pre[k], post[k]) for k in pre)  # never partial or mixed
        code, rerun = run(path)  # in-process: the same protocol, without another interpreter start
        assert code == 0
    finally:
        stop.set()
        reader.join()
    assert not missing, "a reader saw a gold partition missing"
    rel = str(watched.relative_to(lake))
    assert seen <= {pre[rel], post[rel]}, "a reader saw a torn gold object"
    assert gold_files(lake) == post  # byte-identical to the uninterrupted run
    doc = summary(lake, "update_codes", rerun.run_id)
    t = doc["totals"]
    assert t["failed"] == t["locked"] == 0 and t["completed"] + t["skipped"] == len(PARTS)
    if point == "after_replace":
        # The second partition was replaced but neither its rewrite nor its state was recorded:
        # its footer provenance identifies it, and it is re-published as is (not normalized twice).
        by = {e["entity"].split("__", 1)[1]: e for e in doc["entities"]}
        assert by["medical__age_band=75-84__event_year=2019"]["stats"]["partitions"] == {"already_current": 1}

    # Every replaced object has a backup holding its pre-pass-2 bytes.
    backups = list((lake / "_backups").rglob("*.parquet"))
    for k, old in pre.items():
        assert any(b.read_bytes() == old for b in backups if str(b).endswith(k)), k

    # Clean's resume still accepts every rewritten partition.
    code, clean = run(spec(tmp_path / "a", lake, [{"use": "fake-clean-medical"}], name="clean"))
    assert code == 0
    assert summary(lake, "clean_medical", clean.run_id)["totals"]["skipped"] == len(PARTS)
    assert gold_files(lake) == post

    # Rolling back the pass-2 runs, newest first, restores pre-pass-2 gold byte for byte. Through
    # the CLI once; in-process (the same function) for the other points, to keep the suite fast.
    runs = list(reversed(backup_runs(lake)))
    assert len(runs) == 2  # the killed run replaced at least the first partition
    for run_id in runs:
        if point == "after_replace":
            pgx("rollback", str(path), "--run-id", run_id, "--json", check=True)
        else:
            pm = plugins()
            rollback_run(load_spec(path, pm.registry), run_id, open_store(lake.as_uri()), open_store(lake.as_uri()))
    assert gold_files(lake) == pre
    code, resumed = run(path)
    assert code == 0
    assert summary(lake, "update_codes", resumed.run_id)["totals"]["skipped"] == len(PARTS)
    assert gold_files(lake) == pre  # the rolled-back work is not silently redone
