"""Rollback: put back every object a run replaced, from that run's backup prefix."""

from __future__ import annotations

from dataclasses import dataclass

from pgx_core import clock
from pgx_core.errors import UsageError
from pgx_core.lake import paths
from pgx_core.lake.backup import backup_objects, find_run_backup
from pgx_core.lake.promote import sha256_of
from pgx_core.lake.storage import ObjectStore
from pgx_core.spec.runspec import RunSpec
from pgx_core.state import PipelineState, StateStore, Step


@dataclass(frozen=True)
class RollbackReport:
    run_id: str
    backup_prefix: str
    restored: list[str]
    states_updated: int


def rollback_run(spec: RunSpec, run_id: str, lake_store: ObjectStore, state_store: ObjectStore) -> RollbackReport:
    """Restore, atomically per object, everything ``run_id`` replaced; record it in state.

    State entities whose outputs were restored keep status ``completed`` with the restored
    checksums and a ``rollback`` step, so a later resume does not silently redo the rolled-back
    run; ``pgx run --no-resume`` (or a changed input/config) does.
    """
    s = spec.spec
    assert s.backup_root is not None and s.state_root is not None
    prefix = find_run_backup(lake_store, s.backup_root, run_id)
    if prefix is None:
        raise UsageError(f"Run {run_id} has no backups under {s.backup_root}: it replaced nothing (or never ran here)")
    restored: dict[str, tuple[str, str]] = {}  # final uri -> (checksum, etag)
    for backup_uri, rel in backup_objects(lake_store, prefix):
        final = paths.join(s.lake, rel)
        info = lake_store.copy(backup_uri, final)  # copy, not rename: the backup stays
        restored[final] = (sha256_of(lake_store, final), info.etag)

    updated = 0
    lake_key = paths.state_entity_prefix(s.lake)
    for pipeline in sorted({st.stage_cls.script_name for st in spec.stages}):
        states = StateStore(state_store, s.state_root, pipeline)
        for entity in states.list_entities():
            if not entity.startswith(lake_key):
                continue
            st = states.read(entity)
            if st is None or not any(o.uri in restored for o in st.outputs):
                continue

            def fn(cur: PipelineState) -> PipelineState:
                for o in cur.outputs:
                    if o.uri in restored:
                        o.checksum, o.etag = restored[o.uri]
                        o.rewritten_checksum = o.rewritten_etag = None
                cur.completed_steps.append(
                    Step(
                        step_name="rollback",
                        completed_at=clock.iso(),
                        metadata={"rolled_back_run_id": run_id, "backup_prefix": prefix},
                    )
                )
                return cur

            states.update(entity, fn)
            updated += 1
    return RollbackReport(run_id, prefix, sorted(restored), updated)
