"""Hook specifications of pgx. Every hook is prefixed ``pgx_`` and runs in the driver.

Plugins implement these with ``@pgx_core.hookspecs.hookimpl``. Stages are *registered* through
:func:`pgx_register_stages`; the core then calls the Stage class directly. The lifecycle hooks are
for cross-cutting concerns (notifications, lineage, metrics) and each is fired in exactly one place
(:mod:`pgx_core.runner`). Workers never call hooks: the plugin manager stays in the driver.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from pgx_core.runspec import RunSpec
    from pgx_core.stage import RunInfo, StageRegistry

PROJECT = "pgx"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def pgx_register_stages(registry: StageRegistry) -> None:
    """Add this plugin's Stage classes to the registry.

    Called once when the plugin manager is built, before any spec is validated.

    Args:
        registry: call ``registry.register(StageClass)`` for each stage type the plugin provides.
            Registering a type name another plugin already registered is an error.

    Returns:
        Nothing.

    Runs in: driver.
    """


@hookspec
def pgx_before_run(run: RunInfo, spec: RunSpec) -> None:
    """Called once per ``pgx run``, after the spec is validated and before the first stage.

    Args:
        run: run-wide facts (run id, lake, roots, partitions, executor budget).
        spec: the validated run spec.

    Returns:
        Nothing. Raising aborts the run before anything is written (exit 1).

    Runs in: driver.
    """


@hookspec
def pgx_after_run(run: RunInfo, exit_code: int, summaries: list[str]) -> None:
    """Called once when a run ends for any reason, after every summary was written.

    Args:
        run: run-wide facts.
        exit_code: the process exit code the run will return (:class:`pgx_core.exitcodes.ExitCode`).
        summaries: URIs of the summary objects written by this run.

    Returns:
        Nothing. Exceptions are logged and ignored.

    Runs in: driver.
    """


@hookspec
def pgx_on_run_error(run: RunInfo, error: BaseException) -> None:
    """Called when a run ends with an unexpected exception (exit 1) or transient failure (exit 75).

    Args:
        run: run-wide facts.
        error: the exception; its message is PHI-free by pgx's error contract.

    Returns:
        Nothing. Exceptions are logged and ignored.

    Runs in: driver.
    """


@hookspec
def pgx_before_stage(run: RunInfo, stage_name: str, stage_type: str, planned: int, to_run: int) -> None:
    """Called before a stage's entities are processed, after planning and the resume check.

    Args:
        run: run-wide facts.
        stage_name: the stage's name in the spec.
        stage_type: the stage type (``use:``).
        planned: number of entities the stage planned.
        to_run: number of those that will run (the rest are skipped as already done).

    Returns:
        Nothing. Raising aborts the run (exit 1).

    Runs in: driver.
    """


@hookspec
def pgx_after_stage(run: RunInfo, stage_name: str, summary: dict[str, Any]) -> None:
    """Called after a stage finished and its run summary was written.

    Args:
        run: run-wide facts.
        stage_name: the stage's name in the spec.
        summary: the stage's own totals and stats (PHI-free aggregate counts).

    Returns:
        Nothing. Exceptions are logged and ignored.

    Runs in: driver.
    """


@hookspec
def pgx_on_stage_error(run: RunInfo, stage_name: str, entity: str, error: str) -> None:
    """Called for each entity that failed (data error, internal error or exhausted retries).

    Args:
        run: run-wide facts.
        stage_name: the stage's name in the spec.
        entity: the state entity id.
        error: the PHI-free error message recorded in state.

    Returns:
        Nothing. Exceptions are logged and ignored.

    Runs in: driver.
    """


@hookspec
def pgx_after_promote(run: RunInfo, stage_name: str, entity: str, outputs: list[str]) -> None:
    """Called after an entity's outputs were promoted and its state committed as completed.

    Args:
        run: run-wide facts.
        stage_name: the stage's name in the spec.
        entity: the state entity id.
        outputs: final URIs of the objects promoted for the entity.

    Returns:
        Nothing. Exceptions are logged and ignored.

    Runs in: driver (after the worker reported the promotion).
    """
