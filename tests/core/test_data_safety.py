"""Data safety of the core: runs racing on one lake promote each entity once, backup prefixes are
never shared, entities never share a state folder, exit codes say what happened, and what crashed
runs leave in staging is reclaimed. Real `pgx run` processes on a local lake and on moto-server S3."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from pgx_core import clock
from pgx_core.lake import paths
from pgx_core.lake.storage import ObjectStore, StoreConfig, open_store
from tests.conftest import pgx_popen, pgx_run_paused
from tests.core.lake_helpers import data_objects, input_table, put_table, run_json, write_spec

ENTITIES = 4


def _seed(store: ObjectStore, lake: str, salt: int) -> None:
    for i in range(ENTITIES):
        put_table(store, paths.join(lake, "input", f"part{i}.parquet"), input_table(20 + i, salt=salt + i))


def _promotions(store: ObjectStore, lake: str, after_run: str) -> Counter[str]:
    """Completed steps per entity written by runs other than ``after_run`` (the seeding run)."""
    counts: Counter[str] = Counter()
    for info in store.list(paths.state_prefix(paths.join(lake, "_state"), "test_copy")):
        if info.uri.endswith("/state.json"):
            st = json.loads(store.read_bytes(info.uri))
            for step in st["completed_steps"]:
                if step["metadata"]["run_id"] != after_run and step["metadata"]["status"] == "completed":
                    counts[st["entity_id"]] += 1
    return counts


def _backup_copies(store: ObjectStore, lake: str) -> Counter[str]:
    """How many backup copies exist of each gold object, over every backup prefix."""
    counts: Counter[str] = Counter()
    for info in store.list(paths.join(lake, "_backups") + "/"):
        rel = paths.relative(info.uri, paths.join(lake, "_backups"))
        if rel.startswith("backup_") and rel.endswith(".parquet"):
            counts[rel.split("/", 1)[1]] += 1
    return counts


def _reference(lake: str, cfg: StoreConfig, tmp_path: Path) -> dict[str, bytes]:
    """The data objects one uninterrupted run makes of the second inputs, on a fresh lake."""
    ref = lake + "-ref"
    store = open_store(ref, cfg)
    _seed(store, ref, salt=100)
    assert run_json(write_spec(tmp_path, ref, cfg, name="ref"))[0] == 0
    return data_objects(store, ref)


@pytest.fixture
def replaced(lake: tuple[str, StoreConfig], tmp_path: Path, teststage: Path) -> tuple[str, StoreConfig, str]:
    """A lake whose gold was made by one run and whose inputs then changed, so that the next run
    replaces (and backs up) every gold object. Returns the lake, its config and the first run id."""
    uri, cfg = lake
    store = open_store(uri, cfg)
    _seed(store, uri, salt=0)
    code, first = run_json(write_spec(tmp_path, uri, cfg))
    assert code == 0
    _seed(store, uri, salt=100)
    return uri, cfg, first["run_id"]


def test_a_run_overtaken_after_planning_does_not_promote_again(
    replaced: tuple[str, StoreConfig, str], tmp_path: Path
) -> None:
    """B plans while nothing is done, then A does everything; B must skip, not redo."""
    lake, cfg, seed_run = replaced
    store = open_store(lake, cfg)
    spec = write_spec(tmp_path, lake, cfg)
    fp_dir = tmp_path / "fp"
    b = pgx_run_paused(spec, "after_plan", fp_dir)
    try:
        code_a, _ = run_json(spec)  # A runs while B is paused after planning
        assert code_a == 0
        (fp_dir / "after_plan.release").touch()
        out_b, err_b = b.communicate(timeout=120)
    finally:
        b.kill()
    assert b.returncode == 0, err_b[-2000:]
    [summary_b] = [json.loads(store.read_bytes(u)) for u in json.loads(out_b)["summaries"]]
    assert summary_b["totals"]["skipped"] == ENTITIES and summary_b["totals"]["completed"] == 0
    assert set(_promotions(store, lake, seed_run).values()) == {1}
    assert len(_promotions(store, lake, seed_run)) == ENTITIES
    assert set(_backup_copies(store, lake).values()) == {1}
    assert data_objects(store, lake) == _reference(lake, cfg, tmp_path)


def test_two_runs_started_together_promote_each_entity_once(
    replaced: tuple[str, StoreConfig, str], tmp_path: Path
) -> None:
    lake, cfg, seed_run = replaced
    store = open_store(lake, cfg)
    spec = write_spec(tmp_path, lake, cfg, delaySec=0.3)
    runs = [pgx_popen("run", str(spec), "--json") for _ in range(2)]
    ends = [p.communicate(timeout=180) for p in runs]
    assert {p.returncode for p in runs} <= {0, 3}, [err[-2000:] for _, err in ends]
    # Whatever one run left locked, a third run finishes; nothing is promoted twice.
    assert run_json(spec)[0] == 0
    promotions = _promotions(store, lake, seed_run)
    assert len(promotions) == ENTITIES and set(promotions.values()) == {1}, promotions
    assert set(_backup_copies(store, lake).values()) == {1}
    assert data_objects(store, lake) == _reference(lake, cfg, tmp_path)


# --- backup prefixes ------------------------------------------------------------------------------

FROZEN = "20261206T120000Z"


@pytest.fixture
def one_second(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every clock reading falls in the same second."""
    from datetime import UTC, datetime

    from pgx_core import clock

    moment = datetime.strptime(FROZEN, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    monkeypatch.setattr(clock, "utcnow", lambda: moment)


def test_many_backups_in_one_second_never_share_a_prefix(lake: tuple[str, StoreConfig], one_second: None) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from pgx_core.lake.backup import backup_s3_prefix

    uri, cfg = lake
    store = open_store(uri, cfg)
    calls = 12
    for c in range(calls):
        for k in range(3):
            store.write_bytes(paths.join(uri, "gold", f"src{c}", f"o{k}.bin"), f"{c}-{k}".encode())
    root = paths.join(uri, "_backups") + "/"
    with ThreadPoolExecutor(calls) as pool:
        prefixes = list(pool.map(lambda c: backup_s3_prefix(paths.join(uri, "gold", f"src{c}"), root, cfg), range(12)))
    assert len(set(prefixes)) == calls
    assert prefixes[0].startswith(paths.join(uri, "_backups", "backup_20261206T1200"))
    for c, prefix in enumerate(prefixes):
        got = {paths.relative(i.uri, prefix): store.read_bytes(i.uri) for i in store.list(prefix)}
        assert got == {f"o{k}.bin": f"{c}-{k}".encode() for k in range(3)}, prefix


def test_runs_and_backup_calls_in_one_second_keep_their_own_prefixes(
    lake: tuple[str, StoreConfig], one_second: None
) -> None:
    from pgx_core.lake.backup import RunBackup, backup_s3_prefix, find_run_backup

    uri, cfg = lake
    store = open_store(uri, cfg)
    root = paths.join(uri, "_backups") + "/"
    store.write_bytes(paths.join(uri, "gold", "a.bin"), b"a")
    # A prefix made before claims existed: objects and no claim. It is taken.
    legacy = paths.backup_prefix(root, FROZEN)
    store.write_bytes(legacy + "gold/old.bin", b"old")
    runs = [f"{FROZEN}-0000000{i}" for i in range(3)]
    made = [RunBackup(store, root, uri, r).ensure_prefix() for r in runs[:2]]
    made.append(backup_s3_prefix(paths.join(uri, "gold"), root, cfg))
    made.append(RunBackup(store, root, uri, runs[2]).ensure_prefix())
    assert legacy not in made and len(set(made)) == 4
    assert [find_run_backup(store, root, r) for r in runs] == [made[0], made[1], made[3]]
    assert RunBackup(store, root, uri, runs[0]).ensure_prefix() == made[0]  # a second worker of the run
    assert [i.uri for i in store.list(legacy)] == [legacy + "gold/old.bin"]


def test_a_stage_planning_two_entities_with_one_state_folder_is_an_error(tmp_path: Path, teststage: Path) -> None:
    from tests.conftest import run_spec

    lake = tmp_path / "lake"
    store = open_store(lake.as_uri())
    # copy-table names its entities by file stem: x.parquet and X.parquet collide once case is lost.
    for name in ("x", "X"):
        put_table(store, paths.join(lake.as_uri(), "input", f"{name}.parquet"), input_table(3))
    code, runner = run_spec(write_spec(tmp_path, lake.as_uri(), StoreConfig()))
    assert code == 1
    [doc] = [json.loads(store.read_bytes(u)) for u in runner.summaries]
    assert "would share one state folder" in doc["error"] and doc["totals"]["completed"] == 0
    assert not (lake / "gold").exists()


@pytest.mark.parametrize("limit", ["0", "-1"])
def test_a_limit_below_one_is_a_usage_error(limit: str, tmp_path: Path, teststage: Path) -> None:
    from tests.conftest import pgx

    lake = tmp_path / "lake"
    put_table(open_store(lake.as_uri()), paths.join(lake.as_uri(), "input", "p.parquet"), input_table(3))
    proc = pgx("run", str(write_spec(tmp_path, lake.as_uri(), StoreConfig())), "--limit", limit)
    assert proc.returncode == 64, proc.stderr[-500:]
    assert f"--limit must be a positive number of entities, got {limit}" in proc.stderr
    assert not (lake / "gold").exists()


# --- exit codes -------------------------------------------------------------------------------------


@pytest.mark.parametrize("executor", ["local", pytest.param("ray", marks=[pytest.mark.ray, pytest.mark.integration])])
def test_a_bug_in_pgx_itself_is_exit_1_not_retried_as_transient(executor: str, tmp_path: Path, teststage: Path) -> None:
    """A RuntimeError escaping the entity protocol was taken for a lost worker: retried, then 75."""
    lake = (tmp_path / "lake").as_uri()
    store = open_store(lake)
    put_table(store, paths.join(lake, "input", "p.parquet"), input_table(3))
    spec = write_spec(tmp_path, lake, StoreConfig())
    text = spec.read_text().replace("type: local", f"type: {executor}")
    spec.write_text(text)
    code, out = run_json(spec, env={"PGX_FAILPOINTS": "after_staging=raise"})
    assert code == 1, out
    [doc] = [json.loads(store.read_bytes(u)) for u in out["summaries"]]
    [entity] = doc["entities"]
    assert (
        entity["status"] == "failed"
        and entity["error"] == "internal error: RuntimeError: fail point after_staging reached"
    )
    assert doc["status_code"] == 1
    assert not [i for i in store.list(paths.join(lake, "_state") + "/") if i.uri.endswith("lease.json")]
    assert run_json(spec)[0] == 0  # the next run redoes it


def test_an_s3_outage_inside_a_stage_is_transient_not_a_stage_bug() -> None:
    """pyarrow's S3 filesystem raises a bare OSError for an outage; it failed the entity as a
    StageError (exit 1, never retried) with the library's multi-line message."""
    from pgx_core.errors import StageError, TransientError
    from pgx_core.run.worker import _process

    class Reader:
        type_name, version = "reader", "1"

        def __init__(self, exc: Exception) -> None:
            self.exc = exc

        def process(self, entity: object, ctx: object) -> None:
            raise self.exc

    ctx = type("Ctx", (), {"entity_id": "local__e"})()
    outage = OSError(
        "When getting information for key 'lake/silver/x.parquet' in bucket 'b': AWS Error NETWORK_CONNECTION "
        "during HeadObject operation: curl error 7\nrequest id: 0048151623420"
    )
    with pytest.raises(TransientError) as got:
        _process(Reader(outage), None, ctx)  # type: ignore[arg-type]
    assert str(got.value) == "S3 HeadObject failed for s3://b/lake/silver/x.parquet after retries: NETWORK_CONNECTION"
    with pytest.raises(StageError):  # any other OSError is still the stage's own failure
        _process(Reader(OSError("disk full")), None, ctx)  # type: ignore[arg-type]


# --- orphans --------------------------------------------------------------------------------------


def _staged_runs(store: ObjectStore, lake: str) -> dict[str, int]:
    """Objects per run folder under the lake's staging."""
    out: dict[str, int] = {}
    for info in store.list(paths.join(lake, "_staging") + "/"):
        run_id = paths.relative(info.uri, paths.join(lake, "_staging")).split("/", 1)[0]
        out[run_id] = out.get(run_id, 0) + 1
    return out


def test_a_crashed_runs_staging_is_reclaimed_by_the_next_run(
    lake: tuple[str, StoreConfig], tmp_path: Path, teststage: Path
) -> None:
    uri, cfg = lake
    store = open_store(uri, cfg)
    _seed(store, uri, salt=0)
    spec = write_spec(tmp_path, uri, cfg)
    crashed = subprocess.run(
        [sys.executable, "-m", "pgx_core", "run", str(spec)],
        env={**os.environ, "PGX_FAILPOINTS": "after_staging=kill@2"},
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert crashed.returncode == -9
    [dead_run] = _staged_runs(store, uri)
    staged = [i.uri for i in store.list(paths.staging_root(uri, dead_run))]
    assert any(u.endswith(".parquet") for u in staged), staged  # row data, left behind by the crash
    # A young folder without a lease (a run just starting) and another runner's files are left alone.
    young = clock.new_run_id()
    store.write_bytes(paths.staging_root(uri, young) + "gold/x.parquet", b"x")
    store.write_bytes(paths.join(uri, "_staging", "not-a-run", "keep.txt"), b"k")
    assert run_json(spec)[0] == 0
    left = _staged_runs(store, uri)
    assert dead_run not in left and left == {young: 1, "not-a-run": 1}


def test_a_live_runs_staging_is_never_reclaimed(replaced: tuple[str, StoreConfig, str], tmp_path: Path) -> None:
    lake, cfg, _ = replaced
    store = open_store(lake, cfg)
    spec = write_spec(tmp_path, lake, cfg)
    fp_dir = tmp_path / "fp"
    a = pgx_run_paused(spec, "after_plan", fp_dir)
    try:
        [live] = _staged_runs(store, lake)
        time.sleep(6)  # older than the lease's lifetime (5 s): only its renewed lease protects it
        assert run_json(spec)[0] == 0  # another run reclaims orphans, and finds this one alive
        assert live in _staged_runs(store, lake)
        (fp_dir / "after_plan.release").touch()
        _, err = a.communicate(timeout=120)
    finally:
        a.kill()
    assert a.returncode == 0, err[-2000:]
    assert _staged_runs(store, lake) == {}


def test_stale_state_probes_are_reclaimed(lake: tuple[str, StoreConfig], tmp_path: Path, teststage: Path) -> None:
    from datetime import timedelta

    uri, cfg = lake
    store = open_store(uri, cfg)
    _seed(store, uri, salt=0)
    state_root = paths.join(uri, "_state")
    old = clock.new_run_id(clock.utcnow() - timedelta(hours=2))
    recent = clock.new_run_id()
    for run_id in (old, recent):
        store.write_bytes(paths.probe_prefix(state_root, run_id) + "_pgx_probe_x_create", b"probe 1")
    assert run_json(write_spec(tmp_path, uri, cfg))[0] == 0
    left = {paths.relative(i.uri, paths.probe_prefix(state_root)) for i in store.list(paths.probe_prefix(state_root))}
    assert left == {f"{recent}/_pgx_probe_x_create"}
