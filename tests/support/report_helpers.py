"""For the report's tests: synthetic run summaries (one run of several stages: ingest, impute,
update-codes and a third-party stage, plus an older run, written where pgx writes summaries) and
the charts a page embeds."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

from pgx_core.lake import paths
from pgx_core.lake.storage import StoreConfig, open_store

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CORE_CHARTS = ("rows", "rejects", "partitions", "stage_durations", "entity_durations")  # drawn by pgx itself
_IMG = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')

RUN = "20261126T101500Z-3f9c2a7e"
OLDER = "20261125T101500Z-00000000"


def images(page: str) -> list[bytes]:
    """The PNG charts embedded in a report page, decoded."""
    return [base64.b64decode(m) for m in _IMG.findall(page)]


def summary(
    script: str,
    tx: str,
    *,
    elapsed: float,
    status: str = "success",
    code: int = 0,
    stats: dict[str, Any] | None = None,
    entities: list[dict[str, Any]] | None = None,
    run_id: str = RUN,
    run_name: str = "nightly",
) -> dict[str, Any]:
    ents = entities or []
    return {
        "schema_version": 1,
        "tx": tx,
        "script_name": script,
        "run_id": run_id,
        "run_name": run_name,
        "start_time": "2026-11-26T10:15:00.000Z",
        "end_time": "2026-11-26T10:16:00.000Z",
        "duration_sec": elapsed,
        "status": status,
        "status_code": code,
        "totals": {
            "entities": len(ents),
            "completed": sum(e["status"] == "completed" for e in ents),
            "skipped": sum(e["status"] == "skipped" for e in ents),
            "failed": sum(e["status"] == "failed" for e in ents),
            "locked": 0,
            "rows_in": sum(e.get("rows_in", 0) for e in ents),
            "rows_out": sum(e.get("rows_out", 0) for e in ents),
            "rows_quarantined": 0,
        },
        "stats": stats or {},
        "entities": ents,
        "stages": [{"name": script, "type": tx}],
        "plugin": {"name": "p", "version": "1"},
        "spec_fingerprint": "sha256:abc",
        "backups": [],
        "error": None,
    }


def ent(entity: str, status: str = "completed", rows: int = 10, **extra: Any) -> dict[str, Any]:
    return {
        "entity": entity,
        "stage": "s",
        "status": status,
        "attempts": 1,
        "rows_in": rows,
        "rows_out": rows,
        "duration_sec": 0.5,
        **extra,
    }


def synthetic_run(lake: str, config: StoreConfig) -> None:
    store = open_store(lake, config)
    docs = [
        summary(
            "txt_to_parquet",
            "txtpq",
            elapsed=2.0,
            status="partial",
            code=2,
            stats={"SCHEMA_MISMATCH": 1, "rejects": {"TOO_FEW_FIELDS": 3}},
            entities=[
                ent("bkt__x__pharmacy__Q1"),
                ent("bkt__x__medical__Q2", "failed", 0, error="SCHEMA_MISMATCH in Q2: header differs"),
            ],
        ),
        summary(
            "global_imputation",
            "glimp",
            elapsed=5.0,
            stats={"sources": {"age": {"original": 90, "imputed_from_medical": 10}}},
            entities=[
                ent("bkt__x__medical__age_band=65-74__event_year=2019", rows=7),
                ent("bkt__x__medical__age_band=unknown__event_year=2020", rows=3),
                ent("bkt__x__medical__quarantine", rows=0),
            ],
        ),
        summary(
            "update_codes",
            "updcd",
            elapsed=6.5,
            stats={"changed": {"primary_icd_diagnosis_code": 4}, "unrecognized": {"primary_icd_diagnosis_code": 1}},
        ),
        summary("line_count", "lncnt", elapsed=7.0, stats={"lines": 1003}, entities=[ent("local__a")]),
        summary("txt_to_parquet", "txtpq", elapsed=1.0, run_id=OLDER),
    ]
    for doc in docs:
        store.write_bytes(paths.summary_object(lake, doc["script_name"], doc["run_id"]), json.dumps(doc).encode())
