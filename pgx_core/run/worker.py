"""The entity protocol: what happens to one entity, on whichever process runs it.

One protocol for every executor: lease (CAS) → state ``running`` → ``Stage.process`` into staging →
gates (schema, row counts, conservation) → promotion with backup and fencing → state
``completed`` (CAS) → staging removed → lease released. The driver only plans, schedules and
aggregates the :class:`EntityOutcome` values returned here.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pgx_core import clock, failpoints
from pgx_core.errors import (
    DataError,
    FencedError,
    InterruptedRun,
    PgxError,
    StageError,
    TransientError,
    scrub,
)
from pgx_core.exitcodes import ExitCode
from pgx_core.lake import paths
from pgx_core.lake.backup import RunBackup
from pgx_core.lake.promote import Promoted, promote_object, sha256_of, verify_staged
from pgx_core.lake.storage import ObjectStore, StoreConfig, arrow_error, open_store
from pgx_core.log import get_logger
from pgx_core.run.executor import StopFlag
from pgx_core.run.resources import PeakRss
from pgx_core.run.resume import decide
from pgx_core.spec.runspec import StageParams
from pgx_core.stage import Entity, EntityResult, RunInfo, Stage, WorkContext
from pgx_core.state import LeaseKeeper, OutputRecord, PipelineState, StateStore, Step, acquire_lease

log = get_logger(__name__)


class StoreCache:
    """One store per scheme for this task (S3 clients are bucket-agnostic)."""

    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        self._stores: dict[str, ObjectStore] = {}

    def __call__(self, uri: str) -> ObjectStore:
        scheme = uri.split("://", 1)[0]
        if scheme not in self._stores:
            self._stores[scheme] = open_store(uri, self.config)
        return self._stores[scheme]


@dataclass(frozen=True)
class EntityTask:
    """Everything a worker needs to run one entity (picklable)."""

    run: RunInfo
    stage_name: str
    stage_cls: type[Stage[Any]]
    params: StageParams
    entity: Entity
    state_entity: str
    input_fingerprint: str
    config_fingerprint: str
    lease_ttl: float
    planned_state_etag: str | None = None  # the state version the driver's plan decided on


@dataclass
class EntityOutcome:
    """What the driver learns about one entity. Counts and PHI-free messages only."""

    state_entity: str
    status: str  # completed | skipped | failed | locked | interrupted | transient
    exit_code: int = ExitCode.OK
    rows_in: int = 0
    rows_out: int = 0
    rows_quarantined: int = 0
    rows_out_of_scope: int = 0
    stats: dict[str, int] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    backups: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  # stale outputs deleted (after their backup)
    error: str | None = None
    attempts: int = 1
    duration_sec: float = 0.0
    peak_rss_mb: int = 0  # of the process running the entity, sampled while it ran


def _fill(outcome: EntityOutcome, result: EntityResult) -> None:
    outcome.rows_in, outcome.rows_out = result.rows_in, result.rows_out
    outcome.rows_quarantined, outcome.rows_out_of_scope = result.rows_quarantined, result.rows_out_of_scope
    outcome.stats = dict(result.stats)


def _metrics(result: EntityResult) -> dict[str, Any]:
    return {
        "rows_in": result.rows_in,
        "rows_out": result.rows_out,
        "rows_quarantined": result.rows_quarantined,
        "rows_out_of_scope": result.rows_out_of_scope,
        "stats": dict(sorted(result.stats.items())),
    }


def _record(p: Promoted) -> OutputRecord:
    return OutputRecord(uri=p.uri, checksum=p.checksum, rows=p.rows, etag=p.etag)


def _unchanged_record(store: ObjectStore, uri: str, previous: PipelineState) -> OutputRecord:
    """Record an output the stage left as it was, reusing the previous checksum when still valid."""
    info = store.head(uri)
    if info is None:
        raise DataError(f"Output {uri} was reported unchanged but does not exist")
    for rec in previous.outputs:
        if rec.uri == uri and info.etag in {rec.etag, rec.rewritten_etag}:
            checksum = rec.checksum if info.etag == rec.etag else rec.rewritten_checksum
            return OutputRecord(uri=uri, checksum=checksum or sha256_of(store, uri), rows=rec.rows, etag=info.etag)
    return OutputRecord(uri=uri, checksum=sha256_of(store, uri), rows=-1, etag=info.etag)


def run_entity_task(task: EntityTask, stop: StopFlag | None = None) -> EntityOutcome:
    """Run one entity through the whole protocol. Never raises for per-entity failures."""
    started = clock.monotonic()
    run = task.run
    stores = StoreCache(run.store_config)
    state_store = stores(run.state_root)
    pipeline = task.stage_cls.script_name
    outcome = EntityOutcome(task.state_entity, "completed")
    if stop is not None and stop.is_set():  # queued before SIGTERM, reached after: do not start
        outcome.status, outcome.exit_code, outcome.error = "interrupted", ExitCode.TRANSIENT, "not started: stopped"
        outcome.attempts = 0
        return outcome

    got = acquire_lease(
        state_store, paths.lease_object(run.state_root, pipeline, task.state_entity), run.run_id, task.lease_ttl
    )
    if isinstance(got, dict):
        outcome.status, outcome.exit_code = "locked", ExitCode.CONFLICT
        outcome.error = f"leased by run {got.get('run_id')} until {got.get('expires_at_iso')}"
        return outcome
    lease = got
    states = StateStore(state_store, run.state_root, pipeline)
    try:
        with LeaseKeeper(lease) as keeper, PeakRss() as rss:
            _leased(task, states, stores, keeper=keeper, stop=stop, outcome=outcome)
    except PgxError as exc:
        _ended_by(exc, outcome, states, task)
    finally:
        _safe(lease.release)
        outcome.duration_sec = round(clock.monotonic() - started, 3)
        outcome.peak_rss_mb = rss.peak_mb
    return outcome


def _leased(
    task: EntityTask,
    states: StateStore,
    stores: StoreCache,
    *,
    keeper: LeaseKeeper,
    stop: StopFlag | None,
    outcome: EntityOutcome,
) -> None:
    """The protocol under the entity's lease: state running → stage → gates → backup and promote
    behind the fence → state committed → staging removed. Errors end it (:func:`_ended_by`)."""
    run, ent = task.run, task.entity
    lake_store = stores(run.lake)
    if _completed_meanwhile(states, task, lake_store):
        outcome.status, outcome.attempts = "skipped", 0
        return
    previous: PipelineState | None = None

    def begin(st: PipelineState) -> PipelineState:
        nonlocal previous
        previous = st.model_copy(deep=True)
        st.status, st.run_id, st.attempt, st.error = "running", run.run_id, st.attempt + 1, None
        return st

    outcome.attempts = states.update(task.state_entity, begin).attempt
    stage = task.stage_cls(task.params, run, stores)
    ctx = WorkContext(run, task.state_entity, stores, keeper.beat, stop)
    result = _process(stage, ent, ctx)
    _fill(outcome, result)
    failpoints.hit("after_staging")
    data_error = result.data_error or _gates(stage, ent, result, ctx, lake_store)
    if stop is not None and stop.is_set():
        raise InterruptedRun("Interrupted before promotion")
    backup = RunBackup(lake_store, run.backup_root, run.lake, run.run_id)
    promoted = _promote(result, data_error, ctx, stores=stores, backup=backup, keeper=keeper, outcome=outcome)
    assert previous is not None
    records = [_record(p) for p in promoted] + [_unchanged_record(lake_store, u, previous) for u in result.unchanged]
    outcome.outputs = [p.uri for p in promoted]
    outcome.backups = sorted({backup.prefix} if backup.backed_up and backup.prefix else set())
    keeper.renew()  # fence the commit too
    commit = _commit(task, result, data_error, records=records, backups=outcome.backups, promoted=promoted)
    states.update(task.state_entity, commit)
    failpoints.hit("after_state_commit")
    for out in result.outputs:
        lake_store.delete(ctx.staging_uri(out.uri))
    failpoints.hit("after_cleanup")
    if data_error:
        outcome.status, outcome.exit_code, outcome.error = "failed", ExitCode.DATA, data_error


def _completed_meanwhile(states: StateStore, task: EntityTask, store: ObjectStore) -> bool:
    """True when another run completed the entity between our plan and our lease.

    The plan's decision stands while the state is the version it saw; a newer version that is
    completed with our fingerprints and intact outputs means the work is done: redoing it would
    promote (and back up) the same entity twice.
    """
    got = states.read_versioned(task.state_entity)
    if got is None or got[1] == task.planned_state_etag:
        return False
    run, _ = decide(got[0], task.input_fingerprint, task.config_fingerprint, store, resume=True)
    if not run:
        log.info(
            "entity completed by another run meanwhile",
            extra={"event": "entity_done_meanwhile", "entity": task.state_entity, "by_run": got[0].run_id},
        )
    return not run


def _record_rewrite(store: ObjectStore, run: RunInfo, rewrites: tuple[str, str], p: Promoted) -> None:
    """Tell the stage that produced an object we rewrote in place what its bytes are now."""
    pipeline, entity_id = rewrites
    states = StateStore(store, run.state_root, pipeline)
    entity = paths.state_entity(run.lake, entity_id)

    def fn(s: PipelineState) -> PipelineState | None:
        hit = False
        for rec in s.outputs:
            if rec.uri == p.uri:
                rec.rewritten_checksum, rec.rewritten_etag, hit = p.checksum, p.etag, True
        return s if hit else None

    states.update(entity, fn)


def _promote(
    result: EntityResult,
    data_error: str | None,
    ctx: WorkContext,
    *,
    stores: StoreCache,
    backup: RunBackup,
    keeper: LeaseKeeper,
    outcome: EntityOutcome,
) -> list[Promoted]:
    """Promote the staged outputs (all with a passing gate; those marked ``promote_on_failure``
    without), each after its backup and behind the lease's fence; then delete stale outputs."""
    run = ctx.run
    lake_store = stores(run.lake)
    promoted: list[Promoted] = []
    for out in result.outputs:
        if data_error is not None and not out.promote_on_failure:
            continue
        staged = ctx.staging_uri(out.uri)
        checksum = ctx.checksums.get(staged) or sha256_of(lake_store, staged)
        promoted.append(
            promote_object(
                lake_store,
                staged=staged,
                final=out.uri,
                rows=out.rows,
                checksum=checksum,
                backup=backup,
                fence=keeper.renew,
            )
        )
        if out.rewrites is not None:
            _record_rewrite(stores(run.state_root), run, out.rewrites, promoted[-1])
    # Stale outputs go only with a passing gate, backed up first, and the summary names them.
    for uri in result.deletes if data_error is None else []:
        if backup.backup(uri) is not None:
            keeper.renew()
            lake_store.delete(uri)
            outcome.removed.append(uri)
    return promoted


def _commit(
    task: EntityTask,
    result: EntityResult,
    data_error: str | None,
    *,
    records: list[OutputRecord],
    backups: list[str],
    promoted: list[Promoted],
) -> Callable[[PipelineState], PipelineState]:
    """The state update that ends the entity: completed (or failed by a gate), with its outputs."""

    def commit(s: PipelineState) -> PipelineState:
        s.status = "failed" if data_error else "completed"
        s.error = data_error
        s.input_fingerprint, s.config_fingerprint = task.input_fingerprint, task.config_fingerprint
        s.outputs = records
        s.metrics = _metrics(result)
        s.completed_steps.append(
            Step(
                step_name=task.stage_name,
                completed_at=clock.iso(),
                metadata={
                    "run_id": task.run.run_id,
                    "status": s.status,
                    "backups": backups,
                    "backed_up": [p.backup_uri for p in promoted if p.backup_uri],
                },
            )
        )
        s.completed_steps = s.completed_steps[-20:]  # bounded history
        return s

    return commit


def _ended_by(exc: PgxError, outcome: EntityOutcome, states: StateStore, task: EntityTask) -> None:
    """The outcome of an entity an error ended, and its state: fenced (another run took the lease:
    leave the state to it), interrupted or transient (pending, for a rerun), or failed."""
    outcome.error = str(exc)
    if isinstance(exc, FencedError):
        outcome.status, outcome.exit_code = "locked", ExitCode.CONFLICT
    elif isinstance(exc, InterruptedRun):
        outcome.status, outcome.exit_code = "interrupted", ExitCode.TRANSIENT
        _mark(states, task, "pending", "interrupted before promotion")
    elif isinstance(exc, TransientError):
        outcome.status, outcome.exit_code = "transient", ExitCode.TRANSIENT
        _mark(states, task, "pending", str(exc))
    else:
        outcome.status, outcome.exit_code = "failed", exc.exit_code
        _mark(states, task, "failed", str(exc))


def _process(stage: Stage[Any], ent: Entity, ctx: WorkContext) -> EntityResult:
    """Call the plugin, wrapping anything that is not a PgxError at this one boundary."""
    try:
        return stage.process(ent, ctx)
    except PgxError:
        raise
    except (ConnectionError, TimeoutError) as exc:
        raise TransientError(f"{type(exc).__name__}: {scrub(str(exc))}") from exc
    except Exception as exc:
        # pyarrow's S3 filesystem (ObjectStore.arrow_fs) reports every S3 failure as a bare OSError.
        raise arrow_error(exc) or StageError(stage.type_name, stage.version, ctx.entity_id, exc) from exc


def _gates(stage: Stage[Any], ent: Entity, result: EntityResult, ctx: WorkContext, store: ObjectStore) -> str | None:
    """Schema, row-count and conservation gates. Returns the PHI-free failure or None."""
    try:
        for out in result.outputs:
            verify_staged(store, ctx.staging_uri(out.uri), out.rows, stage.output_schema(out))
        stage.check(ent, result)
    except DataError as exc:
        return str(exc)
    return None


def _mark(states: StateStore, task: EntityTask, status: str, error: str) -> None:
    def fn(s: PipelineState) -> PipelineState:
        s.status = status  # type: ignore[assignment]
        s.error = error
        return s

    _safe(lambda: states.update(task.state_entity, fn))


def _safe(fn: Callable[[], Any]) -> None:
    """Best-effort cleanup: a failure here must not hide the outcome already decided, so it is
    logged (a later run repairs what it left: reclaim, resume) and the outcome stands."""
    try:
        fn()
    except Exception as exc:
        log.warning(
            "cleanup failed",
            extra={"event": "cleanup_failed", "error": f"{type(exc).__name__}: {scrub(str(exc))}"},
        )


def retry_delay(attempt: int, base: float = 0.5, cap: float = 30.0) -> float:
    """Exponential backoff with full jitter for transient retries."""
    return random.uniform(0, min(cap, base * 2**attempt))

