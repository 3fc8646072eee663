"""Run summaries: one ``summary.json`` per script_name per run, on every ending."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pgx_core import clock
from pgx_core.exitcodes import ExitCode, worst
from pgx_core.lake import paths
from pgx_core.lake.storage import ObjectStore
from pgx_core.run.worker import EntityOutcome

SCHEMA_VERSION = 1


def nest(flat: dict[str, int]) -> dict[str, Any]:
    """``{"rejects.TOO_FEW_FIELDS": 3}`` → ``{"rejects": {"TOO_FEW_FIELDS": 3}}``."""
    out: dict[str, Any] = {}
    for key in sorted(flat):
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = node.get(leaf, 0) + flat[key]
    return out


def add_counts(into: dict[str, int], more: dict[str, int]) -> None:
    for k, v in more.items():
        into[k] = into.get(k, 0) + v


@dataclass
class StageTally:
    """Totals of one stage of the spec."""

    name: str
    type_name: str
    entities: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)
    totals: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            ("entities", "completed", "skipped", "failed", "locked", "rows_in", "rows_out", "rows_quarantined"), 0
        )
    )
    backups: set[str] = field(default_factory=set)
    removed: set[str] = field(default_factory=set)
    codes: list[ExitCode] = field(default_factory=list)  # exit code implied by each entity outcome
    exit_code: ExitCode = ExitCode.OK
    error: str | None = None
    peak_item_rss_mb: int = 0  # largest RSS of a process while it ran one of this stage's items
    limit: int | None = None  # --limit N of the run, when one was given
    deferred: int = 0  # entities with input that needed work but were left for a later run by the limit
    without_input: int = 0  # entities needing work that a limited run skipped: their input holds no rows
    outputs: list[str] = field(default_factory=list)  # objects promoted, in completion order
    placements: Counter[str] = field(default_factory=Counter)  # work items run per node (executor's count)
    # When the stage began: a summary's times are those of its script_name's stages, not the run's.
    start_time: str = field(default_factory=clock.iso)
    started_mono: float = field(default_factory=clock.monotonic)

    def add_skipped(self, entity: str, stage: str) -> None:
        self.totals["entities"] += 1
        self.totals["skipped"] += 1
        self.entities.append(
            {
                "entity": entity,
                "stage": stage,
                "status": "skipped",
                "attempts": 0,
                "rows_in": 0,
                "rows_out": 0,
                "rows_quarantined": 0,
                "stats": {},
            }
        )

    def add(self, o: EntityOutcome, stage: str) -> None:
        status = {"interrupted": "failed", "transient": "failed"}.get(o.status, o.status)
        self.totals["entities"] += 1
        self.totals[status] += 1
        self.totals["rows_in"] += o.rows_in
        self.totals["rows_out"] += o.rows_out
        self.totals["rows_quarantined"] += o.rows_quarantined
        add_counts(self.stats, o.stats)
        self.backups.update(o.backups)
        self.removed.update(o.removed)
        if status == "completed":
            self.outputs.extend(o.outputs)
        self.codes.append(ExitCode(o.exit_code))
        self.peak_item_rss_mb = max(self.peak_item_rss_mb, o.peak_rss_mb)
        entry: dict[str, Any] = {
            "entity": o.state_entity,
            "stage": stage,
            "status": status,
            "attempts": o.attempts,
            "rows_in": o.rows_in,
            "rows_out": o.rows_out,
            "rows_quarantined": o.rows_quarantined,
            "duration_sec": o.duration_sec,
            "peak_rss_mb": o.peak_rss_mb,
            "stats": nest(o.stats),
        }
        if o.removed:
            entry["removed"] = sorted(o.removed)
        if o.error:
            entry["error"] = o.error
        self.entities.append(entry)


def status_of(code: ExitCode, totals: dict[str, int], error: str | None) -> str:
    """``success``; ``partial`` when some entities were locked or failed; ``error`` when the stage
    itself failed or every entity it tried failed."""
    if code == ExitCode.OK:
        return "success"
    others = totals["completed"] + totals["skipped"] + totals["locked"]
    if error is not None or (totals["failed"] and not others):
        return "error"
    return "partial"


def _stage_doc(t: StageTally) -> dict[str, Any]:
    """One stage's part of its script's summary (``stages[]``)."""
    limited = {"limit": t.limit, "deferred": t.deferred, "without_input": t.without_input}
    return {
        "name": t.name,
        "type": t.type_name,
        "status_code": int(t.exit_code),
        "totals": t.totals,
        "stats": nest(t.stats),
        "peak_item_rss_mb": t.peak_item_rss_mb,
        "work_items_by_node": dict(sorted(t.placements.items())),
        **(limited if t.limit is not None else {}),
    }


def build(
    *,
    tx: str,
    script_name: str,
    run_id: str,
    run_name: str,
    tallies: list[StageTally],
    plugin: dict[str, str],
    spec_fingerprint: str,
) -> dict[str, Any]:
    """Merge the tallies of every stage sharing ``script_name`` into one summary document."""
    totals = dict.fromkeys(tallies[0].totals, 0)
    stats: dict[str, int] = {}
    for t in tallies:
        add_counts(totals, t.totals)
        add_counts(stats, t.stats)
    code = worst([t.exit_code for t in tallies])
    error = "; ".join(t.error for t in tallies if t.error) or None
    return {
        "schema_version": SCHEMA_VERSION,
        "tx": tx,
        "script_name": script_name,
        "run_id": run_id,
        "run_name": run_name,
        "start_time": tallies[0].start_time,
        "end_time": clock.iso(),
        "duration_sec": round(clock.monotonic() - tallies[0].started_mono, 3),
        "status": status_of(code, totals, error),
        "status_code": int(code),
        "totals": totals,
        "stats": nest(stats),
        "entities": [e for t in tallies for e in t.entities],
        "stages": [_stage_doc(t) for t in tallies],
        # Evidence that memory does not grow with the data: the largest RSS any process reached running an item.
        "resources": {
            "peak_item_rss_mb": max(t.peak_item_rss_mb for t in tallies),
            # Where the work ran: items per node ("local" in-process, else a Ray node id prefix).
            "work_items_by_node": dict(sorted(sum((t.placements for t in tallies), Counter()).items())),
        },
        "plugin": plugin,
        "spec_fingerprint": spec_fingerprint,
        "backups": sorted(set().union(*(t.backups for t in tallies))),
        # Outputs this run deleted because their input no longer yields them (backed up first).
        "removed": sorted(set().union(*(t.removed for t in tallies))),
        "error": error,
    }


def write(store: ObjectStore, lake: str, doc: dict[str, Any]) -> str:
    uri = paths.summary_object(lake, doc["script_name"], doc["run_id"])
    store.write_bytes(uri, json.dumps(doc, indent=1).encode())
    return uri


def read_run(store: ObjectStore, lake: str, run_id: str) -> list[dict[str, Any]]:
    """Every summary a run wrote (one per script_name)."""
    out = []
    for info in store.list(paths.summaries_prefix(lake)):
        if f"/run_id={run_id}/" in info.uri and info.uri.endswith("/summary.json"):
            out.append(json.loads(store.read_bytes(info.uri)))
    return out
