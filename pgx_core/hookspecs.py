"""Hook specifications of pgx. Every hook is prefixed ``pgx_`` and runs in the driver.

Plugins implement these with ``@pgx_core.hookspecs.hookimpl``. Stages are *registered* through
:func:`pgx_register_stages`; the core then calls the Stage class directly. A plugin may also add
commands to the ``pgx`` command line (:func:`pgx_add_commands`), its part of a new project or demo
(:func:`pgx_init_project`, :func:`pgx_project_stages`) and sections of the run report
(:func:`pgx_report_sections`): the core names no plugin, so each of these exists only while its
plugin is installed and enabled. The lifecycle hooks are for cross-cutting concerns
(notifications, lineage, metrics) and each is fired in exactly one place (:mod:`pgx_core.run.runner`).
Workers never call hooks: the plugin manager stays in the driver, and the core calls every hook
through the typed methods of :class:`pgx_core.pluginmanager.Plugins`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from pgx_core.extend import Commands, Project, ReportSection
    from pgx_core.spec.runspec import RunSpec
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


@hookspec
def pgx_add_commands(commands: Commands) -> None:
    """Add this plugin's commands to the ``pgx`` command line.

    Called once per ``pgx`` invocation, before the arguments are parsed.

    Args:
        commands: ``commands.add(Command(...))`` for a command of its own, or
            ``commands.add_shortcut(module)`` for a command that turns flags into a one-stage run
            spec and runs it like ``pgx run`` (see :class:`pgx_core.extend.Commands`).

    Returns:
        Nothing.

    Runs in: driver.
    """


@hookspec
def pgx_init_project(project: Project) -> None:
    """Write this plugin's part of a new project (``pgx init``, ``pgx demo``).

    Args:
        project: the folder being set up. Add input folders and files under ``project.root``,
            name files the stages need with ``project.add_file(key, path)``, and add a paragraph
            to the project's README with ``project.add_readme(text)``. Write synthetic sample
            input only when ``project.sample_rows`` > 0.

    Returns:
        Nothing.

    Runs in: driver.
    """


@hookspec
def pgx_project_stages(project: Project) -> list[tuple[int, dict[str, Any]]]:
    """The stages this plugin adds to a new project's run spec, after every
    :func:`pgx_init_project` ran.

    Args:
        project: the project, with the files every plugin named (``project.files``).

    Returns:
        ``(position, stage)`` pairs: ``stage`` is a ``spec.stages`` entry (``use``, ``name``,
        ``with``); the spec lists every plugin's stages by position (ingest 10, impute 20,
        clean 30, update-codes 40, target-frequency 50; third-party stages usually 90).
        Leave out a stage whose files are missing.

    Runs in: driver.
    """
    raise NotImplementedError  # a specification: pluggy calls the plugins' implementations


@hookspec
def pgx_report_sections(summaries: list[dict[str, Any]]) -> list[ReportSection]:
    """Sections this plugin adds to ``pgx report`` for one run.

    Args:
        summaries: the run's summary documents (aggregate counts only, never a data value).

    Returns:
        Sections (:class:`pgx_core.extend.ReportSection`); none when the plugin's stages did not
        run. They appear after the core's rows and rejects sections, by ``position``.

    Runs in: driver.
    """
    raise NotImplementedError  # a specification: pluggy calls the plugins' implementations
