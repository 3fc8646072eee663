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
    """Counts over the entities this lake has state for, per stage of the spec (no writes)."""
    rows: list[dict[str, Any]] = []
    lake_key = paths.lake_key(runner.run.lake) + "__"
    store = runner.state_store
    seen: set[str] = set()
    for rs in runner.stages:
        pipeline = rs.stage_cls.script_name
        if pipeline in seen:
            continue
        seen.add(pipeline)
        states = StateStore(store, runner.run.state_root, pipeline)
        counts = {"completed": 0, "failed": 0, "pending": 0, "locked": 0, "running": 0}
        runs: dict[str, str] = {}
        for entity in states.list_entities():
            if not entity.startswith(lake_key):
                continue
            st = states.read(entity)
            if st is None:
                continue
            lease = store.read_versioned(paths.lease_object(runner.run.state_root, pipeline, entity))
            if lease is not None:
                doc = json.loads(lease[0])
                if doc.get("expires_at", 0) > time.time() and not holder_gone(doc.get("holder", {})):
                    counts["locked"] += 1
                    continue
            key = st.status if st.status in counts else "pending"
            counts[key if key != "running" else "pending"] += 1
            if st.run_id:
                runs[st.run_id] = st.updated_at
        counts.pop("running")
        last = sorted(runs, key=lambda r: runs[r], reverse=True)[:3]
        rows.append({"stage": rs.name, "pipeline": pipeline, "counts": counts, "last_run_ids": last})
    return rows
