"""``pgx status``: per stage, entities completed / failed / pending / locked and the last run ids."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from pgx_core.lake import paths
from pgx_core.state import StateStore, holder_gone

if TYPE_CHECKING:
    from pgx_core.run.runner import Runner


def stage_status(runner: Runner) -> list[dict[str, Any]]:
    """Counts over the entities this lake has state for, per stage of the spec (no writes).

    Stages of one type share their state (``ingest`` of pharmacy and of medical): each such stage
    counts the entities it plans now, and the first of them also those it no longer plans."""
    rows: list[dict[str, Any]] = []
    lake_key = paths.state_entity_prefix(runner.run.lake)
    store = runner.state_store
    by_pipeline: dict[str, list[Any]] = {}
    for rs in runner.stages:
        by_pipeline.setdefault(rs.stage_cls.script_name, []).append(rs)
    for pipeline, stages in by_pipeline.items():
        owner = _owners(runner, stages)
        states = StateStore(store, runner.run.state_root, pipeline)
        counts = {rs.name: dict.fromkeys(("completed", "failed", "pending", "locked"), 0) for rs in stages}
        runs: dict[str, dict[str, str]] = {rs.name: {} for rs in stages}
        for entity in states.list_entities():
            st = states.read(entity) if entity.startswith(lake_key) else None
            if st is None:
                continue
            name = owner.get(entity, stages[0].name)
            lease = store.read_versioned(paths.lease_object(runner.run.state_root, pipeline, entity))
            doc = json.loads(lease[0]) if lease is not None else {}
            if doc.get("expires_at", 0) > time.time() and not holder_gone(doc.get("holder", {})):
                counts[name]["locked"] += 1
                continue
            counts[name][st.status if st.status in ("completed", "failed") else "pending"] += 1
            if st.run_id:
                runs[name][st.run_id] = st.updated_at
        for rs in stages:
            last = sorted(runs[rs.name], key=lambda r: runs[rs.name][r], reverse=True)[:3]
            rows.append({"stage": rs.name, "pipeline": pipeline, "counts": counts[rs.name], "last_run_ids": last})
    return rows


def _owners(runner: Runner, stages: list[Any]) -> dict[str, str]:
    """Which stage plans each state entity, when stages share a pipeline (else none needed)."""
    if len(stages) < 2:
        return {}
    return {runner.state_entity(e): rs.name for rs in stages for e in runner.stage(rs).plan()}
