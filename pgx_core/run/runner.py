"""The driver: plans each stage, decides what resume skips, schedules entity tasks on the executor,
aggregates outcomes into the tracker and run summaries, and fires the lifecycle hooks.

The per-entity protocol itself (lease, staging, gates, promotion, state) lives in
:mod:`pgx_core.run.worker`, so it is the same on every executor.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from pgx_core import clock, failpoints
from pgx_core.errors import ArgumentError, InterruptedRun, PgxError, StorageError, TransientError, UsageError, scrub
from pgx_core.exitcodes import ExitCode, worst
from pgx_core.lake import paths
from pgx_core.lake.storage import ObjectStore, arrow_error
from pgx_core.log import bind, get_logger, safe_traceback
from pgx_core.pluginmanager import Plugins
from pgx_core.run import summary
from pgx_core.run.executor import Executor, OnDemandExecutor, make_executor
from pgx_core.run.reclaim import reclaim_orphans
from pgx_core.run.resources import measured
from pgx_core.run.resume import decide
from pgx_core.run.worker import EntityOutcome, EntityTask, StoreCache, retry_delay, run_entity_task
from pgx_core.spec.runspec import ResolvedStage, RunSpec
from pgx_core.stage import Entity, RunInfo, Stage
from pgx_core.state import GlobalTracker, Lease, LeaseKeeper, StateStore, acquire_lease

log = get_logger(__name__)
TRANSIENT_RETRIES = 3


@dataclass(frozen=True)
class Decision:
    """Whether an entity runs, and why."""

    entity: Entity
    state_entity: str
    state_etag: str | None  # version of the entity's state when planned (None: no state yet)
    run: bool
    reason: (
        str  # new | input changed | config changed | output missing | output changed | not completed | no-resume | done
    )


@dataclass
class StagePlan:
    """Every entity of a stage and whether it runs. ``limit`` (``--limit N``) caps how many of
    the entities that need work run now; the rest are ``deferred`` to a later run."""

    stage: ResolvedStage
    decisions: list[Decision] = field(default_factory=list)
    limit: int | None = None

    @property
    def needing_work(self) -> list[Decision]:
        return [d for d in self.decisions if d.run]

    @property
    def to_run(self) -> list[Decision]:
        return self.needing_work[: self.limit]

    @property
    def deferred(self) -> list[Decision]:
        return self.needing_work[self.limit :] if self.limit is not None else []

    @property
    def picks_after_prepare(self) -> bool:
        """A limited run of a stage that learns only in its preparation which entities have rows
        (impute's shuffle): it runs the first ``limit`` of those, not of :attr:`to_run`."""
        return self.limit is not None and self.stage.stage_cls.input_known_after_prepare

    @property
    def skipped(self) -> list[Decision]:
        return [d for d in self.decisions if not d.run]


@dataclass(frozen=True)
class _Chosen:
    """The entities a stage runs now, and those needing work that have input (the limit's pool)."""

    run: list[Decision]
    with_input: list[Decision]


class Runner:
    """Runs (or plans) the stages of a validated spec."""

    def __init__(
        self,
        spec: RunSpec,
        plugins: Plugins,
        *,
        stages: list[str] | None = None,
        resume: bool = True,
        limit: int | None = None,
        executor: str | None = None,
        stop: threading.Event | None = None,
        run_id: str | None = None,
        on_progress: Callable[[str, EntityOutcome | None, int, int], None] | None = None,
        on_starting: Callable[[str], AbstractContextManager[object]] | None = None,
    ) -> None:
        self.spec = spec
        self.plugins = plugins
        self.stages = spec.select(stages) if stages else spec.stages
        self.resume = resume
        self.stop = stop or threading.Event()
        self.executor_kind = executor or spec.spec.executor.type
        self.run_id = run_id or clock.run_id_from_env() or clock.new_run_id()
        lim = limit if limit is not None else spec.spec.limit
        if lim is not None and lim < 1:
            raise ArgumentError(f"--limit must be a positive number of entities, got {lim}")
        self.run = RunInfo.from_spec(spec.spec, self.run_id, spec.name, plugins.registry.producers())
        if lim != self.run.limit:
            self.run = RunInfo(**{**self.run.__dict__, "limit": lim})
        self.stores = StoreCache(self.run.store_config)
        self.on_progress = on_progress
        self.on_starting = on_starting  # wraps the executor's start (made when work first arrives)
        self.summaries: list[str] = []
        self.error: str | None = None  # what ended the run, when something did (PHI-free)
        self._current: ResolvedStage | None = None
        self._current_tally: summary.StageTally | None = None
        self._tallies: dict[str, list[summary.StageTally]] = {}

    @property
    def tallies(self) -> list[summary.StageTally]:
        """What each stage that began did, in the order the stages ran."""
        order = {rs.name: i for i, rs in enumerate(self.stages)}
        return sorted((t for ts in self._tallies.values() for t in ts), key=lambda t: order.get(t.name, len(order)))

    # --- helpers --------------------------------------------------------------------------------
    @property
    def lake_store(self) -> ObjectStore:
        return self.stores(self.run.lake)

    @property
    def state_store(self) -> ObjectStore:
        return self.stores(self.run.state_root)

    def stage(self, rs: ResolvedStage) -> Stage[Any]:
        return rs.stage_cls(rs.params, self.run, self.stores)

    def task_modules(self) -> tuple[str, ...]:
        """Modules every work item of this run imports: the worker protocol and the stages' plugins."""
        return tuple(sorted({run_entity_task.__module__, *(rs.stage_cls.__module__ for rs in self.stages)}))

    def state_entity(self, entity: Entity) -> str:
        return paths.state_entity(self.run.lake, entity.id)

    def check_store(self) -> None:
        """Refuse stores that do not enforce conditional writes unless allowed."""
        if self.spec.spec.s3.allow_unsafe_store:
            log.warning("conditional-write check skipped", extra={"event": "unsafe_store_allowed"})
            return
        for root in {self.run.state_root, self.run.lake}:
            probe = paths.probe_prefix(self.run.state_root, self.run_id)
            if root == self.run.lake:
                probe = paths.join(paths.staging_root(self.run.lake, self.run_id), "_probe") + "/"
            if not self.stores(root).check_conditional_writes(probe):
                raise UsageError(
                    f"The object store behind {root} does not enforce conditional writes "
                    "(If-None-Match / If-Match), so state and leases would be unsafe. Use a store "
                    "that does, or set spec.s3.allowUnsafeStore: true to accept the risk."
                )

    # --- planning -------------------------------------------------------------------------------
    def plan_stage(self, rs: ResolvedStage) -> StagePlan:
        stage = self.stage(rs)
        entities = stage.plan()
        _check_unique(rs.name, [self.state_entity(e) for e in entities])
        config_fp = stage.config_fingerprint()
        states = StateStore(self.state_store, self.run.state_root, rs.stage_cls.script_name)
        plan = StagePlan(rs, limit=self.run.limit)
        for ent in entities:
            se = self.state_entity(ent)
            st, etag = states.read_versioned(se) or (None, None)
            run, reason = decide(st, ent.input_fingerprint, _config_fp(config_fp, ent), self.lake_store, self.resume)
            plan.decisions.append(Decision(ent, se, etag, run, reason))
        return plan

    def plan(self) -> list[StagePlan]:
        return [self.plan_stage(rs) for rs in self.stages]

    # --- running --------------------------------------------------------------------------------
    def execute(self) -> ExitCode:
        """Run every selected stage in order; stop after a stage that did not fully succeed."""
        codes: list[ExitCode] = []
        executor: Executor | None = None
        with bind(run_id=self.run_id), contextlib.ExitStack() as held:
            try:
                held.enter_context(self._run_lease())
                self.check_store()
                reclaim_orphans(
                    self.lake_store,
                    self.state_store,
                    lake=self.run.lake,
                    state_root=self.run.state_root,
                    own_run_id=self.run_id,
                    lease_ttl=float(self.spec.spec.lease_ttl_seconds),
                )
                self.plugins.before_run(self.run, self.spec)
                kind, warm = self.executor_kind, self.task_modules()
                executor = OnDemandExecutor(
                    kind, lambda: make_executor(kind, self.stop, run=self.run, warm_modules=warm), self.on_starting
                )
                self._run_stages(executor, codes)
            except Exception as exc:
                codes.append(self._run_failed(exc))
            finally:
                if executor is not None:
                    executor.close()
                held.close()  # stops renewing the run's lease, which the staging cleanup removes last
                self._cleanup_staging()
            code = worst(codes)
            self.plugins.after_run(self.run, int(code), list(self.summaries))
            log.info("run finished", extra={"event": "run_finished", "exit_code": int(code)})
            return code

    def _run_lease(self) -> LeaseKeeper:
        """The lease on this run's staging folder, renewed while the keeper is entered, so that no
        other run takes the folder for a crashed run's leftovers (:mod:`pgx_core.run.reclaim`)."""
        uri = paths.run_lease_object(self.run.lake, self.run_id)
        got = acquire_lease(self.lake_store, uri, self.run_id, float(self.spec.spec.lease_ttl_seconds))
        if not isinstance(got, Lease):
            raise UsageError(f"Run id {self.run_id} is already in use by a live run (its lease {uri} is held)")
        return LeaseKeeper(got)

    def _run_stages(self, executor: Executor, codes: list[ExitCode]) -> None:
        """Run the stages in order, adding each one's exit code to ``codes`` as it ends (so that a
        later stage's failure does not hide an earlier stage's outcome)."""
        failed_script: str | None = None
        for rs in self.stages:
            # After a stage that did not fully succeed, only its siblings (same stage type, e.g.
            # ingest of the other data type) still run: later stages would build on incomplete inputs.
            if failed_script is not None and rs.stage_cls.script_name != failed_script:
                log.warning(
                    "stage not run",
                    extra={
                        "event": "stage_skipped",
                        "skipped_stage": rs.name,
                        "reason": "an earlier stage did not fully succeed",
                    },
                )
                break
            self._current = rs
            if self.stop.is_set():
                raise InterruptedRun(f"Stopped (SIGTERM) before stage {rs.name} started")
            with bind(stage=rs.name):
                code = self._run_stage(rs, executor)
            codes.append(code)
            self._current = None
            if code != ExitCode.OK:
                failed_script = rs.stage_cls.script_name

    def _run_failed(self, exc: Exception) -> ExitCode:
        """A failure that ended the run: recorded in the summary of the stage it hit (the first
        stage's when none had begun: store check, Ray start), logged, and kept in ``self.error``."""
        err = exc if isinstance(exc, PgxError) else arrow_error(exc)
        if err is not None:
            code, self.error = err.exit_code, str(err)
            log.error("run failed", extra={"event": "run_failed", "error": self.error, "exit_code": int(code)})
        else:
            code, self.error = ExitCode.INTERNAL, f"{type(exc).__name__}: {scrub(str(exc))}"
            log.error("run crashed", extra={"event": "run_crashed", "error": self.error, "frames": safe_traceback(exc)})
        self._stage_error(self._current or self.stages[0], code, self.error)
        self.plugins.on_run_error(self.run, exc)
        return code

    def _run_stage(self, rs: ResolvedStage, executor: Executor) -> ExitCode:
        tally = summary.StageTally(rs.name, rs.use)
        placed_before = Counter(executor.placements)
        self._current_tally = tally
        self._tallies.setdefault(rs.stage_cls.script_name, []).append(tally)
        plan = self.plan_stage(rs)
        failpoints.hit("after_plan")
        self.plugins.before_stage(self.run, rs.name, rs.use, len(plan.decisions), len(plan.to_run))
        log.info(
            "stage planned",
            extra={"event": "stage_planned", "planned": len(plan.decisions), "to_run": len(plan.to_run)},
        )
        for d in plan.skipped:
            tally.add_skipped(d.state_entity, rs.name)
        tracker = GlobalTracker(self.state_store, self.run.state_root, rs.stage_cls.script_name)
        tracker.set_status({d.state_entity: "completed" for d in plan.skipped})
        stage = self.stage(rs)
        config_fp = stage.config_fingerprint()
        chosen = self._prepare(plan, stage, functools.partial(self._fan_out, executor))
        if plan.limit is not None:
            tally.limit = plan.limit
            tally.without_input = len(plan.needing_work) - len(chosen.with_input)
            tally.deferred = len(chosen.with_input) - len(chosen.run)
        tasks = [self._task(rs, d, config_fp) for d in chosen.run]
        unstarted = len(tasks) - self._run_tasks(rs, executor, tasks, tally, tracker)
        codes = list(tally.codes)
        if unstarted and self.stop.is_set():
            codes.append(ExitCode.TRANSIENT)
        tally.exit_code = worst(codes)
        tally.placements = executor.placements - placed_before
        self._write_summary(rs)
        self.plugins.after_stage(self.run, rs.name, {"totals": dict(tally.totals), "stats": summary.nest(tally.stats)})
        return tally.exit_code

    def _task(self, rs: ResolvedStage, d: Decision, config_fp: str) -> EntityTask:
        return EntityTask(
            self.run,
            rs.name,
            rs.stage_cls,
            rs.params,
            d.entity,
            d.state_entity,
            d.entity.input_fingerprint,
            _config_fp(config_fp, d.entity),
            float(self.spec.spec.lease_ttl_seconds),
            d.state_etag,
        )

    def _run_tasks(
        self,
        rs: ResolvedStage,
        executor: Executor,
        tasks: list[EntityTask],
        tally: summary.StageTally,
        tracker: GlobalTracker,
    ) -> int:
        """Run a stage's entity tasks, recording each outcome as it arrives; returns how many ran."""
        done = 0
        if self.on_progress and tasks:  # the stage's bar from its start, at 0 of N
            self.on_progress(rs.name, None, 0, len(tasks))
        for outcome in self._execute_tasks(executor, tasks):
            done += 1
            tally.add(outcome, rs.name)
            tracker.set_status({outcome.state_entity: _tracker_status(outcome)})
            self._after_entity(rs, outcome)
            if self.on_progress:
                self.on_progress(rs.name, outcome, done, len(tasks))
        return done

    def _prepare(self, plan: StagePlan, stage: Stage[Any], fan_out: Callable[..., Iterator[Any]]) -> _Chosen:
        """Prepare the stage for the entities that run now, and return them.

        Under ``--limit N`` the first N entities needing work run, in plan order, except for a stage
        that learns only in its preparation which entities have rows (impute's shuffle): it is
        prepared for every entity needing work, and the first N that have input run; those without
        input are left to a run without a limit (they would write nothing).
        """
        if not plan.needing_work or self.stop.is_set():
            # After SIGTERM: unprepared, and the executor starts none of them (the stage ends in 75).
            return _Chosen(plan.to_run, plan.needing_work)
        if not plan.picks_after_prepare:
            stage.prepare([d.entity for d in plan.to_run], fan_out)
            return _Chosen(plan.to_run, plan.needing_work)
        stage.prepare([d.entity for d in plan.needing_work], fan_out)
        with_input = [d for d in plan.needing_work if stage.has_input(d.entity)]
        return _Chosen(with_input[: plan.limit], with_input)

    def _execute_tasks(self, executor: Executor, tasks: list[EntityTask]) -> Iterator[EntityOutcome]:
        """Run tasks; transient outcomes (and lost workers) are retried with backoff, up to a bound."""
        pending = tasks
        for attempt in range(TRANSIENT_RETRIES + 1):
            retry: list[EntityTask] = []
            results = executor.map_unordered(
                run_entity_task, pending, memory_mb=self.run.memory_budget_mb, with_stop=True, on_error=_unexpected
            )
            for i, outcome in results:
                if outcome.status == "transient" and attempt < TRANSIENT_RETRIES and not self.stop.is_set():
                    retry.append(pending[i])
                    log.warning(
                        "transient failure, will retry",
                        extra={
                            "event": "entity_retry",
                            "entity": outcome.state_entity,
                            "error": outcome.error,
                            "attempt": attempt + 1,
                        },
                    )
                    continue
                yield outcome
            if not retry:
                return
            self.stop.wait(retry_delay(attempt))
            pending = retry

    def _fan_out(self, executor: Executor, fn: Callable[[Any], Any], items: list[Any]) -> Iterator[Any]:
        tally = self._current_tally
        done = 0
        for _, (result, peak_mb) in executor.map_unordered(measured(fn), items, memory_mb=self.run.memory_budget_mb):
            done += 1
            if tally is not None:
                tally.peak_item_rss_mb = max(tally.peak_item_rss_mb, peak_mb)
            yield result
        if done < len(items):
            # The executor stops starting items after SIGTERM. The stage must not take the partial
            # results for the whole (an impute shuffle would report rows lost: a false data error).
            raise InterruptedRun(
                f"Stopped (SIGTERM) after {done} of {len(items)} work items of the stage's preparation"
            )

    def _after_entity(self, rs: ResolvedStage, o: EntityOutcome) -> None:
        extra = {
            "event": "entity_" + o.status,
            "entity": o.state_entity,
            "rows_in": o.rows_in,
            "rows_out": o.rows_out,
            "rows_quarantined": o.rows_quarantined,
            "duration_sec": o.duration_sec,
        }
        if o.error:
            extra["error"] = o.error
        # On a terminal the progress bar shows completions; the JSON line is then debug-level.
        quiet = log.debug if self.on_progress else log.info
        (quiet if o.status == "completed" else log.warning)("entity " + o.status, extra=extra)
        if o.status == "completed":
            self.plugins.after_promote(self.run, rs.name, o.state_entity, list(o.outputs))
        elif o.status in {"failed", "transient", "interrupted"}:
            self.plugins.on_stage_error(self.run, rs.name, o.state_entity, o.error or o.status)

    def _stage_error(self, rs: ResolvedStage, code: ExitCode, message: str) -> None:
        """Record a stage-level failure in its summary (crash caught at the top, plan failure…).

        A failure before the first stage began (store check, Ray start) is the first stage's.
        """
        tallies = self._tallies.setdefault(rs.stage_cls.script_name, [])
        if not tallies or tallies[-1].name != rs.name:
            tallies.append(summary.StageTally(rs.name, rs.use))
        tallies[-1].exit_code = code
        tallies[-1].error = message
        try:
            self._write_summary(rs)
        except Exception as exc:  # the store may be what failed; the log still says what happened
            log.error("summary not written", extra={"event": "summary_failed", "error": scrub(str(exc))})

    def _write_summary(self, rs: ResolvedStage) -> None:
        info = self.plugins.stage_plugin(rs.use)
        doc = summary.build(
            tx=rs.stage_cls.tx,
            script_name=rs.stage_cls.script_name,
            run_id=self.run_id,
            run_name=self.run.run_name,
            tallies=self._tallies[rs.stage_cls.script_name],
            plugin={"name": rs.stage_cls.plugin_name, "version": info.version if info else rs.stage_cls.version},
            spec_fingerprint=self.spec.fingerprint(),
        )
        uri = summary.write(self.lake_store, self.run.lake, doc)
        if uri not in self.summaries:
            self.summaries.append(uri)

    def _cleanup_staging(self) -> None:
        try:
            self.lake_store.delete_prefix(paths.staging_root(self.run.lake, self.run_id))
        except (StorageError, TransientError, OSError) as exc:
            log.warning("staging not cleaned", extra={"event": "staging_cleanup_failed", "error": scrub(str(exc))})


def _unexpected(task: EntityTask, exc: BaseException) -> EntityOutcome:
    """A work item that raised instead of returning its outcome.

    The executor reports a lost worker (after its own retries) as a :class:`TransientError`: that
    is retried and ends in 75. Anything else escaped the entity protocol itself — a bug in pgx — and
    is an internal error (1), never a transient one: retrying would only hide it.
    """
    if isinstance(exc, TransientError):
        return EntityOutcome(task.state_entity, "transient", ExitCode.TRANSIENT, error=str(exc))
    if isinstance(exc, PgxError):
        return EntityOutcome(task.state_entity, "failed", exc.exit_code, error=str(exc))
    error = f"internal error: {type(exc).__name__}: {scrub(str(exc))}"
    log.error(
        "work item crashed",
        extra={"event": "entity_crashed", "entity": task.state_entity, "frames": safe_traceback(exc)},
    )
    return EntityOutcome(task.state_entity, "failed", ExitCode.INTERNAL, error=error)


def _check_unique(stage: str, state_entities: list[str]) -> None:
    """Two entities sharing a state folder would share outputs too: one would silently win.

    Compared case-insensitively: on a case-insensitive disk (a laptop's lake) they would share it.
    """
    seen: dict[str, str] = {}
    for se in state_entities:
        if se.casefold() in seen:
            raise PgxError(
                f"Stage {stage} planned entities {seen[se.casefold()]} and {se}, which would share one state "
                "folder: entity ids must differ in more than letter case"
            )
        seen[se.casefold()] = se


def _config_fp(stage_fp: str, entity: Entity) -> str:
    return stage_fp if not entity.config_extra else f"{stage_fp}+{entity.config_extra}"


def _tracker_status(o: EntityOutcome) -> str:
    return {"completed": "completed", "skipped": "completed", "failed": "failed", "locked": "running"}.get(
        o.status, "pending"
    )


__all__ = ["Decision", "Runner", "StagePlan"]
