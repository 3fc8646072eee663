"""The migration aid ``helpers_1997_13``: the older helper names, as adapters over pgx's modules."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import pytest
from helpers_1997_13 import s3_utils
from helpers_1997_13.pipeline_state import GlobalPipelineTracker, PipelineState

from pgx_core.lake import paths
from pgx_core.lake.storage import StoreConfig, open_store
from pgx_core.state import StateStore

CANARY = "0048151623420"  # a member-key-shaped canary: never stored by pgx's state


def test_path_helpers_are_pgxs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGX_LAKE", raising=False)
    assert s3_utils.zone_root(" Silver ") == paths.zone_root("silver") == "s3://pgxdatalake/silver/"
    assert s3_utils.build_zone_path("silver", "medical", "65-74", 2019) == (
        "s3://pgxdatalake/silver/imputed/medical/age_band=65-74/event_year=2019/"
    )
    assert (
        s3_utils.build_zone_path("GOLD", "pharmacy", suffix="x.parquet") == "s3://pgxdatalake/gold/pharmacy/x.parquet"
    )
    assert s3_utils.convert_raw_to_imputed_path(
        "s3://b/silver/imputed/medical_partitioned/**/*.parquet", "medical"
    ) == ("s3://b/silver/imputed/medical/")
    with pytest.raises(ValueError, match="bronze, silver, gold"):
        s3_utils.zone_root("brass")
    monkeypatch.setenv("PGX_LAKE", "file:///data/lake")
    assert s3_utils.zone_root("gold") == "file:///data/lake/gold/"


def test_backup_s3_prefix_keeps_its_signature_and_copies_byte_for_byte(
    lake: tuple[str, StoreConfig], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    uri, cfg = lake
    if cfg.endpoint_url:  # the older helper takes no endpoint: the standard AWS variable gives it
        monkeypatch.setenv("AWS_ENDPOINT_URL", cfg.endpoint_url)
    store = open_store(uri, cfg)
    src = f"{uri}/silver/imputed/medical/age_band=65-74/event_year=2019/"
    store.write_bytes(src + "medical_data.parquet", b"PAR1 payload")
    logger = logging.getLogger("notebook")
    with caplog.at_level(logging.INFO, logger="notebook"):
        prefix = s3_utils.backup_s3_prefix(src, f"{uri}/backups/", logger)
    assert prefix.startswith(f"{uri}/backups/backup_") and prefix.endswith("Z/")
    assert store.read_bytes(prefix + "medical_data.parquet") == b"PAR1 payload"
    assert f"backed up {src} to {prefix}" in caplog.text


def test_pipeline_state_writes_pgx_state_with_compare_and_swap(tmp_path: Path) -> None:
    root = (tmp_path / "repo").as_uri()
    st = PipelineState("pharmacy_clean", "55-64/2020", state_root=root)
    assert st.entity_id == "55-64_2020" and not st.is_step_completed("load")
    # Two notebooks checkpointing the same entity at once: no step is lost.
    others = [PipelineState("pharmacy_clean", "55-64/2020", state_root=root) for _ in range(8)]
    threads = [
        threading.Thread(target=o.mark_step_completed, args=(f"step{i}", {"rows": i})) for i, o in enumerate(others)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(st.get_progress()["step_names"]) == [f"step{i}" for i in range(8)]
    st.mark_step_completed("step0")  # already done: not recorded twice
    assert st.get_progress()["completed_steps"] == 8
    st.mark_step_failed("normalize", f"bad member {CANARY} in row")
    doc = StateStore(open_store(root), root, "pharmacy_clean").read("55-64_2020")
    assert doc is not None and doc.status == "failed" and CANARY not in doc.model_dump_json()
    assert st.get_progress()["failed_steps"] == 1
    meta = {"rows": 3, "first_member": CANARY, "member_id": int(CANARY), "dob": 19600101, "output": "s3://b/x.parquet"}
    st.mark_step_completed("load", meta)
    st.mark_pipeline_completed({"final_rows": 12, "claim": 990012345678, f"k{CANARY}": True})
    assert st.state.status == "completed"
    assert st.state.metrics == {"final_rows": 12, "claim": "<n>", "k<n>": True}
    assert st.state.completed_steps[-1].metadata == {
        "rows": 3,
        "first_member": "<n>",
        "member_id": "<n>",
        "dob": "<n>",
        "output": "s3://b/x.parquet",
    }
    stored = (tmp_path / "repo" / "pgx-pipeline-status" / "pharmacy_clean" / "55-64_2020" / "state.json").read_text()
    assert CANARY not in stored and "19600101" not in stored and "990012345678" not in stored
    st.reset()
    assert st.get_progress() == {
        "pipeline_name": "pharmacy_clean",
        "entity_id": "55-64_2020",
        "status": "pending",
        "completed_steps": 0,
        "failed_steps": 0,
        "step_names": [],
    }
    state_json = tmp_path / "repo" / "pgx-pipeline-status" / "pharmacy_clean" / "55-64_2020" / "state.json"
    assert json.loads(state_json.read_text())["pipeline_name"] == "pharmacy_clean"
    assert PipelineState.check_output_exists(state_json.as_uri())
    assert not PipelineState.check_output_exists((tmp_path / "nothing.parquet").as_uri())


def test_global_tracker_counts_statuses_and_keeps_no_metadata(tmp_path: Path) -> None:
    root = (tmp_path / "repo").as_uri()
    tracker = GlobalPipelineTracker("create_cohort", state_root=root)
    tracker.register_entity("a_65-74_2019", {"note": CANARY})
    tracker.register_entity("b_65-74_2019")
    tracker.update_entity_status("a_65-74_2019", "running")
    tracker.register_entity("a_65-74_2019")  # known already: stays running
    tracker.update_entity_status("b_65-74_2019", "failed", {"error": CANARY})
    assert tracker.get_summary() == {
        "pipeline_name": "create_cohort",
        "total_entities": 2,
        "pending": 0,
        "running": 1,
        "completed": 0,
        "failed": 1,
        "entities": ["a_65-74_2019", "b_65-74_2019"],
    }
    stored = (tmp_path / "repo" / "pgx-pipeline-status" / "create_cohort" / "global_tracker.json").read_text()
    assert CANARY not in stored


def test_the_default_state_root_follows_the_lake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGX_LAKE", (tmp_path / "lake").as_uri())
    PipelineState("p", "e").mark_step_completed("s")
    assert (tmp_path / "lake" / "_state" / "pgx-pipeline-status" / "p" / "e" / "state.json").exists()


def test_the_distribution_ships_the_migration_aid() -> None:
    """``helpers_1997_13`` is among the packages the pgx distribution is built from (pyproject's
    package finder, as setuptools runs it for the wheel and the image)."""
    import tomllib

    from setuptools import find_packages

    from tests.conftest import REPO

    found = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = {p for where in found["where"] for p in find_packages(str(REPO / where), include=found["include"])}
    assert {"helpers_1997_13", "pgx_core", "pgx_impute"} <= packages
