"""Reliability core (issue 3), on a local lake and on moto-server S3, through real `pgx run` processes."""

from __future__ import annotations

import json
import multiprocessing as mp
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pgx_core import failpoints
from pgx_core.lake import paths
from pgx_core.lake.storage import ObjectStore, StoreConfig, open_store
from tests.conftest import pgx
from tests.core.lake_helpers import (
    CANARY_KEY,
    data_objects,
    input_table,
    put_table,
    run_json,
    summaries,
    write_spec,
)


@pytest.fixture
def seeded(lake: tuple[str, StoreConfig], tmp_path: Path, teststage: Path) -> tuple[str, StoreConfig, ObjectStore]:
    uri, cfg = lake
    store = open_store(uri, cfg)
    for i in range(3):
        put_table(store, paths.join(uri, "input", f"part{i}.parquet"), input_table(50 + i, salt=i))
    return uri, cfg, store


def test_run_then_resume_writes_nothing(seeded: tuple[str, StoreConfig, ObjectStore], tmp_path: Path) -> None:
    lake, cfg, store = seeded
    spec = write_spec(tmp_path, lake, cfg)
    code, first = run_json(spec)
    assert code == 0, first
    before = {i.uri: i.etag for i in store.list(lake + "/") if "/pgx_pipeline/" not in i.uri}
    code, second = run_json(spec)
    assert code == 0
    after = {i.uri: i.etag for i in store.list(lake + "/") if "/pgx_pipeline/" not in i.uri}
    assert after == before  # no data object, state or tracker written by the resumed run
    [doc] = summaries(store, lake, second["run_id"])
    assert doc["totals"]["skipped"] == 3 and doc["totals"]["completed"] == 0
    assert doc["status"] == "success" and doc["status_code"] == 0
    assert all(e["status"] == "skipped" for e in doc["entities"])
    # Every entity carries its stats as an object, skipped ones included.
    assert all(e["stats"] == {} for e in doc["entities"])


def test_summary_has_every_field(seeded: tuple[str, StoreConfig, ObjectStore], tmp_path: Path) -> None:
    lake, cfg, store = seeded
    code, out = run_json(write_spec(tmp_path, lake, cfg))
    assert code == 0
    uri = paths.summary_object(lake, "test_copy", out["run_id"])
    doc = json.loads(store.read_bytes(uri))
    assert set(doc) >= {
        "schema_version",
        "tx",
        "script_name",
        "run_id",
        "run_name",
        "start_time",
        "end_time",
        "duration_sec",
        "status",
        "status_code",
        "totals",
        "stats",
        "entities",
        "plugin",
        "spec_fingerprint",
        "backups",
        "error",
    }
    assert doc["tx"] == "tcopy" and doc["script_name"] == "test_copy" and doc["run_name"] == "rel"
    t = doc["totals"]
    assert t["entities"] == t["completed"] + t["skipped"] + t["failed"] + t["locked"] == 3
    assert t["rows_in"] == t["rows_out"] == 50 + 51 + 52
    assert doc["plugin"] == {"name": "pgx-teststage", "version": "0.0.1"}
    assert doc["spec_fingerprint"].startswith("sha256:")
    import re

    assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{8}", doc["run_id"])
    assert doc["start_time"].endswith("Z") and doc["end_time"].endswith("Z")


def test_data_error_fails_entity_and_exits_2(seeded: tuple[str, StoreConfig, ObjectStore], tmp_path: Path) -> None:
    lake, cfg, store = seeded
    code, out = run_json(write_spec(tmp_path, lake, cfg, fail=["part1"], loseRows=["part2"]))
    assert code == 2
    [doc] = summaries(store, lake, out["run_id"])
    assert doc["status"] == "partial" and doc["status_code"] == 2
    by = {e["entity"].split("__")[-1]: e for e in doc["entities"]}
    assert by["part0"]["status"] == "completed"
    assert by["part1"]["status"] == "failed" and "failed its gate on purpose" in by["part1"]["error"]
    assert by["part2"]["status"] == "failed" and "Row conservation broken" in by["part2"]["error"]
    objs = data_objects(store, lake)
    assert sorted(objs) == ["gold/test_copy/part0.parquet"]  # nothing promoted for failing entities
    state = json.loads(
        store.read_bytes(
            paths.state_object(
                paths.join(lake, "_state"),
                "test_copy",
                "local__part2" if lake.startswith("file") else f"{paths.lake_key(lake)}__part2",
            )
        )
    )
    assert state["status"] == "failed" and "Row conservation" in state["error"]


@pytest.mark.parametrize("point", failpoints.POINTS)
def test_crash_at_every_step_then_rerun_is_identical(
    point: str, seeded: tuple[str, StoreConfig, ObjectStore], tmp_path: Path
) -> None:
    lake, cfg, store = seeded
    spec = write_spec(tmp_path, lake, cfg)
    assert run_json(spec)[0] == 0
    # New inputs so that promotion replaces live gold objects (with backups).
    for i in range(3):
        put_table(store, paths.join(lake, "input", f"part{i}.parquet"), input_table(60 + i, salt=100 + i))
    target = paths.join(lake, "gold", "test_copy", "part1.parquet")
    old_bytes = store.read_bytes(target)
    seen: set[bytes] = set()
    missing: list[float] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            got = store.read_versioned(target)
            if got is None:
                missing.append(time.time())
            else:
                seen.add(got[0])

    reader = threading.Thread(target=poll, daemon=True)
    reader.start()
    try:
        # Crash on the second entity's pass through the point (the first one completes).
        crashed = pgx("run", str(spec), env={"PGX_FAILPOINTS": f"{point}=kill@2"})
        assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
        code, out = run_json(spec)
        assert code == 0
    finally:
        stop.set()
        reader.join()
    assert not missing, "a reader saw the final object missing"
    new_bytes = store.read_bytes(target)
    assert seen <= {old_bytes, new_bytes}, "a reader saw a torn object"
    # Byte-identical to an uninterrupted run of the same inputs on a fresh lake.
    ref_lake = lake + "-ref"
    ref_store = open_store(ref_lake, cfg)
    for i in range(3):
        put_table(ref_store, paths.join(ref_lake, "input", f"part{i}.parquet"), input_table(60 + i, salt=100 + i))
    assert run_json(write_spec(tmp_path, ref_lake, cfg, name="ref"))[0] == 0
    assert data_objects(store, lake) == data_objects(ref_store, ref_lake)
    [doc] = summaries(store, lake, out["run_id"])
    t = doc["totals"]
    assert t["entities"] == t["completed"] + t["skipped"] + t["failed"] + t["locked"] == 3
    assert t["failed"] == t["locked"] == 0
    # What the crashed run finished is skipped; the rest was redone.
    assert t["skipped"] >= 1 and t["completed"] >= 1
    # Every replaced object has a backup holding its previous bytes.
    backups = [i for i in store.list(paths.join(lake, "_backups") + "/") if i.uri.endswith("part1.parquet")]
    assert any(store.read_bytes(b.uri) == old_bytes for b in backups)
    # Staging of the finished run is gone.
    assert not [i for i in store.list(paths.join(lake, "_staging") + "/") if out["run_id"] in i.uri]


def test_two_runs_at_once_promote_each_entity_once(
    lake: tuple[str, StoreConfig], tmp_path: Path, teststage: Path
) -> None:
    uri, cfg = lake
    store = open_store(uri, cfg)
    put_table(store, paths.join(uri, "input", "only.parquet"), input_table(10))
    spec = write_spec(tmp_path, uri, cfg, delaySec=8.0)
    cmd = [sys.executable, "-m", "pgx_core", "run", str(spec), "--json"]
    a = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lease = paths.lease_object(paths.join(uri, "_state"), "test_copy", f"{paths.lake_key(uri)}__only")
    deadline = time.monotonic() + 60
    while store.head(lease) is None and time.monotonic() < deadline:  # A is working on the entity
        time.sleep(0.05)
    b = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out_a, _ = a.communicate(timeout=120)
    out_b, _ = b.communicate(timeout=120)
    assert a.returncode == 0
    assert b.returncode == 3
    run_b = json.loads(out_b)["run_id"]
    [doc_b] = summaries(store, uri, run_b)
    assert doc_b["totals"]["locked"] == 1 and doc_b["status"] == "partial" and doc_b["status_code"] == 3
    st = json.loads(
        store.read_bytes(paths.state_object(paths.join(uri, "_state"), "test_copy", f"{paths.lake_key(uri)}__only"))
    )
    runs = [s["metadata"]["run_id"] for s in st["completed_steps"]]
    assert runs == [json.loads(out_a)["run_id"]]  # promoted exactly once, by the winner
    assert not [i for i in store.list(paths.join(uri, "_staging") + "/") if run_b in i.uri]


def _bump(args: tuple[str, StoreConfig, int]) -> None:
    from pgx_core.state import GlobalTracker

    uri, cfg, worker = args
    tracker = GlobalTracker(open_store(uri, cfg), paths.join(uri, "_state"), "test_copy")
    for i in range(10):
        tracker.set_status({f"w{worker}-e{i}": "completed"})


def test_tracker_concurrent_updates_lose_nothing(lake: tuple[str, StoreConfig]) -> None:
    from pgx_core.state import GlobalTracker

    uri, cfg = lake
    with mp.get_context("spawn").Pool(8) as pool:
        pool.map(_bump, [(uri, cfg, w) for w in range(8)])
    doc = GlobalTracker(open_store(uri, cfg), paths.join(uri, "_state"), "test_copy").read()
    assert len(doc["entities"]) == 80
    assert doc["counts"] == {"completed": 80}


def test_rollback_restores_and_resume_does_not_redo(
    seeded: tuple[str, StoreConfig, ObjectStore], tmp_path: Path
) -> None:
    lake, cfg, store = seeded
    spec = write_spec(tmp_path, lake, cfg)
    assert run_json(spec)[0] == 0
    v1 = data_objects(store, lake)
    for i in range(3):
        put_table(store, paths.join(lake, "input", f"part{i}.parquet"), input_table(70, salt=500 + i))
    code, second = run_json(spec)
    assert code == 0
    assert data_objects(store, lake) != v1
    [doc] = summaries(store, lake, second["run_id"])
    assert len(doc["backups"]) == 1 and doc["backups"][0].startswith(paths.join(lake, "_backups", "backup_"))
    rb = pgx("rollback", str(spec), "--run-id", second["run_id"], "--json", check=True)
    assert len(json.loads(rb.stdout)["restored"]) == 3
    assert data_objects(store, lake) == v1  # byte-identical
    code, third = run_json(spec)
    assert code == 0
    [doc3] = summaries(store, lake, third["run_id"])
    assert doc3["totals"]["skipped"] == 3  # the rolled-back run is not silently redone
    assert data_objects(store, lake) == v1
    code, _ = run_json(spec, "--no-resume")
    assert code == 0 and data_objects(store, lake) != v1  # ...but can be, when asked


def test_plan_writes_nothing_and_explains(seeded: tuple[str, StoreConfig, ObjectStore], tmp_path: Path) -> None:
    lake, cfg, store = seeded
    spec = write_spec(tmp_path, lake, cfg)
    before = sorted(i.uri for i in store.list(lake + "/"))
    proc = pgx("plan", str(spec), "--json", check=True)
    assert sorted(i.uri for i in store.list(lake + "/")) == before
    [stage] = json.loads(proc.stdout)["stages"]
    assert [d["reason"] for d in stage["run"]] == ["new"] * 3 and stage["skip"] == []
    assert run_json(spec)[0] == 0
    # Tamper with one output, delete another, change one input: exactly those three rerun.
    put_table(store, paths.join(lake, "gold", "test_copy", "part0.parquet"), input_table(1))
    store.delete(paths.join(lake, "gold", "test_copy", "part1.parquet"))
    put_table(store, paths.join(lake, "input", "part2.parquet"), input_table(5))
    put_table(store, paths.join(lake, "input", "part3.parquet"), input_table(5))
    [stage] = json.loads(pgx("plan", str(spec), "--json", check=True).stdout)["stages"]
    reasons = {d["entity"].split("__")[-1]: d["reason"] for d in stage["run"]}
    assert reasons == {"part0": "output changed", "part1": "output missing", "part2": "input changed", "part3": "new"}
    assert stage["skip"] == []
    [stage] = json.loads(pgx("plan", str(write_spec(tmp_path, lake, cfg, zone="silver")), "--json", check=True).stdout)[
        "stages"
    ]
    assert {d["reason"] for d in stage["run"]} == {"config changed", "input changed", "new"}


def test_sigterm_writes_summary_and_exits_75(seeded: tuple[str, StoreConfig, ObjectStore], tmp_path: Path) -> None:
    lake, cfg, store = seeded
    spec = write_spec(tmp_path, lake, cfg, delaySec=2.0)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgx_core", "run", str(spec), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(2.5)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 75
    run_id = json.loads(out)["run_id"]
    [doc] = summaries(store, lake, run_id)
    assert doc["status_code"] == 75 and doc["status"] in {"partial", "error"}
    # No lease is left behind, and nothing half-promoted: each gold object is whole or absent.
    leases = [i.uri for i in store.list(paths.join(lake, "_state") + "/") if i.uri.endswith("lease.json")]
    assert leases == []
    for rel, data in data_objects(store, lake).items():
        assert pq.read_table(pa.BufferReader(data)).num_rows > 0, rel


def test_unexpected_exception_writes_summary_and_exits_1(
    seeded: tuple[str, StoreConfig, ObjectStore], tmp_path: Path
) -> None:
    lake, cfg, store = seeded
    # An input that is not Parquet makes the stage's reader raise an unexpected error.
    store.write_bytes(paths.join(lake, "input", "zz_broken.parquet"), f"not parquet {CANARY_KEY}".encode())
    code, out = run_json(write_spec(tmp_path, lake, cfg))
    assert code == 1
    [doc] = summaries(store, lake, out["run_id"])
    assert doc["status_code"] == 1
    [bad] = [e for e in doc["entities"] if e["entity"].endswith("zz_broken")]
    assert bad["status"] == "failed" and "Stage copy-table (version 1) failed on entity" in bad["error"]


def test_no_data_value_in_summaries_state_or_logs(seeded: tuple[str, StoreConfig, ObjectStore], tmp_path: Path) -> None:
    lake, cfg, store = seeded
    store.write_bytes(paths.join(lake, "input", "zz_broken.parquet"), f"PAR1 {CANARY_KEY} junk".encode())
    proc = pgx("run", str(write_spec(tmp_path, lake, cfg, loseRows=["part0"])), "--json")
    assert proc.returncode in {1, 2}
    assert CANARY_KEY not in proc.stdout and CANARY_KEY not in proc.stderr
    for info in store.list(lake + "/"):
        rel = paths.relative(info.uri, lake)
        if rel.split("/")[0] in {"pgx_pipeline", "_state"}:
            assert CANARY_KEY.encode() not in store.read_bytes(info.uri), rel


def test_stale_lease_takeover_fences_the_old_holder(lake: tuple[str, StoreConfig]) -> None:
    from pgx_core.errors import FencedError
    from pgx_core.state import Lease, acquire_lease

    uri, cfg = lake
    store = open_store(uri, cfg)
    lease_uri = paths.join(uri, "_state", "lease.json")
    first = acquire_lease(store, lease_uri, "run-a", ttl=0.5)
    assert isinstance(first, Lease)
    live = acquire_lease(store, lease_uri, "run-b", ttl=5)
    assert isinstance(live, dict) and live["run_id"] == "run-a"  # live lease: locked
    time.sleep(0.7)
    second = acquire_lease(store, lease_uri, "run-b", ttl=5)
    assert isinstance(second, Lease)  # expired: taken over
    with pytest.raises(FencedError):
        first.renew()  # the stale holder can no longer renew, so it cannot promote
    second.renew()
    second.release()
    assert store.head(lease_uri) is None


def test_lease_of_a_dead_process_is_taken_over_at_once(lake: tuple[str, StoreConfig]) -> None:
    from pgx_core.state import Lease, acquire_lease

    uri, cfg = lake
    store = open_store(uri, cfg)
    lease_uri = paths.join(uri, "_state", "dead", "lease.json")
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    import socket

    store.write_bytes(
        lease_uri,
        json.dumps(
            {
                "run_id": "gone",
                "holder": {"host": socket.gethostname(), "pid": child.pid},
                "expires_at": time.time() + 600,
            }
        ).encode(),
    )
    assert isinstance(acquire_lease(store, lease_uri, "run-c", ttl=5), Lease)
    other_host = {"run_id": "remote", "holder": {"host": "elsewhere", "pid": 1}, "expires_at": time.time() + 600}
    store.write_bytes(lease_uri, json.dumps(other_host).encode())
    assert isinstance(acquire_lease(store, lease_uri, "run-d", ttl=5), dict)


def test_store_without_conditional_writes_is_refused(
    tmp_path: Path, teststage: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pgx_core.lake.storage import ObjectStore as Base
    from pgx_core.pluginmanager import make_plugin_manager
    from pgx_core.run.runner import Runner
    from pgx_core.spec.runspec import load_spec

    monkeypatch.setattr(Base, "check_conditional_writes", lambda self, probe: False)
    lake = (tmp_path / "lake").as_uri()
    spec = write_spec(tmp_path, lake, StoreConfig())
    plugins = make_plugin_manager()
    code = Runner(load_spec(spec, plugins.registry), plugins).execute()
    assert code == 64
    text = spec.read_text().replace("leaseTtlSeconds: 5", "leaseTtlSeconds: 5\n  s3: {allowUnsafeStore: true}")
    spec.write_text(text)
    assert Runner(load_spec(spec, plugins.registry), plugins).execute() == 0


def test_backup_command_copies_a_prefix(lake: tuple[str, StoreConfig], tmp_path: Path) -> None:
    uri, cfg = lake
    store = open_store(uri, cfg)
    for i in range(4):
        store.write_bytes(paths.join(uri, "gold", "x", f"o{i}.bin"), bytes([i]) * 10)
    args = ["backup", paths.join(uri, "gold") + "/", paths.join(uri, "bk") + "/", "--json"]
    if cfg.endpoint_url:
        args += ["--endpoint-url", cfg.endpoint_url]
    proc = pgx(*args, check=True)
    prefix = json.loads(proc.stdout)["backup_prefix"]
    assert prefix.startswith(paths.join(uri, "bk", "backup_"))
    got = {paths.relative(i.uri, prefix): store.read_bytes(i.uri) for i in store.list(prefix)}
    assert got == {f"x/o{i}.bin": bytes([i]) * 10 for i in range(4)}


def test_run_ids_are_unique_within_a_second() -> None:
    from pgx_core import clock

    ts = clock.utcnow()
    ids = {clock.new_run_id(ts) for _ in range(1000)}
    assert len(ids) == 1000


def test_exit_code_enum_matches_spec() -> None:
    from pgx_core.exitcodes import ExitCode

    assert {c.name: int(c) for c in ExitCode} == {
        "OK": 0,
        "INTERNAL": 1,
        "DATA": 2,
        "CONFLICT": 3,
        "USAGE": 64,
        "TRANSIENT": 75,
    }
