"""Reclaiming what crashed runs leave behind, so that no row data stays in staging for good.

A run's staging folder ``<lake>/_staging/<run_id>/`` holds staged outputs and scratch (row data).
Its first object is the run's lease (``_run.lease.json``), renewed while the run lives and removed
with the folder at the end. A run killed before its cleanup leaves the folder; the next run removes
it once nothing protects it: the lease is expired, or its holder is provably gone (same host, pid
no longer running), or there is no lease and the run started longer than a lease's lifetime ago (a
run that is just starting writes its lease first, within that time).

The conditional-write probes a run writes under the state root are deleted within seconds of its
start; those of a run killed meanwhile are removed once they are an hour old.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import timedelta

from pgx_core import clock
from pgx_core.lake import paths
from pgx_core.lake.storage import ObjectStore
from pgx_core.log import get_logger
from pgx_core.state import lease_is_stale

log = get_logger(__name__)
PROBE_MAX_AGE = timedelta(hours=1)


@dataclass
class Reclaimed:
    """What :func:`reclaim_orphans` removed: run ids and object counts (no data)."""

    staging: dict[str, int] = field(default_factory=dict)
    probes: dict[str, int] = field(default_factory=dict)


def _run_ids(store: ObjectStore, parent: str) -> list[tuple[str, str]]:
    """``(run_id, prefix)`` of the run folders under ``parent``; anything else there is left alone."""
    out = []
    for prefix in store.list_children(parent):
        name = prefix.rstrip("/").rsplit("/", 1)[-1]
        if clock.is_run_id(name):
            out.append((name, prefix))
    return out


def _orphaned(store: ObjectStore, lake: str, run_id: str, lease_ttl: float) -> bool:
    got = store.read_versioned(paths.run_lease_object(lake, run_id))
    if got is not None:
        return lease_is_stale(json.loads(got[0]))
    return clock.utcnow() - clock.run_started(run_id) > timedelta(seconds=lease_ttl)


def reclaim_orphans(
    lake_store: ObjectStore, state_store: ObjectStore, *, lake: str, state_root: str, own_run_id: str, lease_ttl: float
) -> Reclaimed:
    """Remove the staging folders of runs that hold no live lease, and stale state-root probes."""
    done = Reclaimed()
    for run_id, prefix in _run_ids(lake_store, paths.staging_parent(lake)):
        if run_id != own_run_id and _orphaned(lake_store, lake, run_id, lease_ttl):
            done.staging[run_id] = lake_store.delete_prefix(prefix)
    for run_id, prefix in _run_ids(state_store, paths.probe_prefix(state_root)):
        if run_id != own_run_id and clock.utcnow() - clock.run_started(run_id) > PROBE_MAX_AGE:
            done.probes[run_id] = state_store.delete_prefix(prefix)
    if done.staging or done.probes:
        log.info(
            "orphans of earlier runs reclaimed",
            extra={"event": "orphans_reclaimed", "staging": done.staging, "probes": done.probes},
        )
    return done
