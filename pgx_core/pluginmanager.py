"""Plugin manager factory. There is no global manager: each command builds one.

Plugins are found through the ``pgx.plugins`` entry-point group — the built-in stages too.
``PGX_DISABLE_PLUGINS=a,b`` blocks plugins by entry-point or distribution name. A plugin that
fails to import or to register is recorded with its name and cause instead of crashing the
command; a spec that needs one of its stages then fails validation naming it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any, cast

import pluggy

from pgx_core import hookspecs
from pgx_core.errors import HookError, PgxError, PluginError, scrub
from pgx_core.extend import Command, Commands, Project, ReportSection
from pgx_core.log import get_logger
from pgx_core.stage import StageRegistry

if TYPE_CHECKING:
    from pgx_core.spec.runspec import RunSpec
    from pgx_core.stage import RunInfo

GROUP = "pgx.plugins"
log = get_logger(__name__)


@dataclass(frozen=True)
class PluginInfo:
    name: str  # entry-point name
    distribution: str
    version: str
    stages: tuple[str, ...]
    error: str | None = None  # set when the plugin failed to load


class Plugins:
    """A loaded plugin manager with its stage registry and a typed facade over the hooks."""

    def __init__(self, pm: pluggy.PluginManager, registry: StageRegistry, infos: list[PluginInfo]) -> None:
        self.pm = pm
        self.registry = registry
        self.infos = infos

    @property
    def failures(self) -> list[PluginInfo]:
        return [i for i in self.infos if i.error]

    def failure_note(self) -> str:
        """One line naming every plugin that failed to load (for validation messages)."""
        return "; ".join(f"plugin {i.name} failed to load: {i.error}" for i in self.failures)

    def stage_plugin(self, stage_type: str) -> PluginInfo | None:
        return next((i for i in self.infos if stage_type in i.stages), None)

    # --- lifecycle hooks (each fired in one place of the runner) -------------------------------
    def before_run(self, run: RunInfo, spec: RunSpec) -> None:
        self._fire("pgx_before_run", must_succeed=True, run=run, spec=spec)

    def after_run(self, run: RunInfo, exit_code: int, summaries: list[str]) -> None:
        self._fire("pgx_after_run", run=run, exit_code=exit_code, summaries=summaries)

    def on_run_error(self, run: RunInfo, error: BaseException) -> None:
        self._fire("pgx_on_run_error", run=run, error=error)

    def before_stage(self, run: RunInfo, stage_name: str, stage_type: str, planned: int, to_run: int) -> None:
        self._fire(
            "pgx_before_stage",
            must_succeed=True,
            run=run,
            stage_name=stage_name,
            stage_type=stage_type,
            planned=planned,
            to_run=to_run,
        )

    def after_stage(self, run: RunInfo, stage_name: str, summary: dict[str, Any]) -> None:
        self._fire("pgx_after_stage", run=run, stage_name=stage_name, summary=summary)

    def on_stage_error(self, run: RunInfo, stage_name: str, entity: str, error: str) -> None:
        self._fire("pgx_on_stage_error", run=run, stage_name=stage_name, entity=entity, error=error)

    def after_promote(self, run: RunInfo, stage_name: str, entity: str, outputs: list[str]) -> None:
        self._fire("pgx_after_promote", run=run, stage_name=stage_name, entity=entity, outputs=outputs)

    def _fire(self, hook: str, *, must_succeed: bool = False, **kwargs: Any) -> None:
        """Observer hooks never break a run: their errors are logged; ``must_succeed`` ones abort it."""
        try:
            getattr(self.pm.hook, hook)(**kwargs)
        except Exception as exc:
            if must_succeed:
                raise HookError(f"Hook {hook} failed: {type(exc).__name__}: {scrub(str(exc))}") from exc
            log.error(
                "hook failed",
                extra={"event": "hook_failed", "hook": hook, "error": f"{type(exc).__name__}: {scrub(str(exc))}"},
            )

    # --- what plugins add beside stages ----------------------------------------------------------
    def commands(self, reserved: Sequence[str]) -> list[Command]:
        """Every enabled plugin's commands (names in ``reserved`` are the core's own)."""
        commands = Commands(reserved)
        for impl in self.pm.hook.pgx_add_commands.get_hookimpls():
            commands._plugin = impl.plugin_name
            try:
                impl.function(commands=commands)
            except Exception as exc:  # the command line works without this plugin's commands
                self._failed(impl.plugin_name, f"its commands: {type(exc).__name__}: {scrub(str(exc))}")
        return list(commands)

    def _failed(self, plugin: str, cause: str) -> None:
        """Record a plugin that failed after loading: ``pgx plugins`` shows it, the log says it."""
        self.infos = [replace(i, error=cause) if i.name == plugin else i for i in self.infos]
        log.error("plugin failed", extra={"event": "plugin_failed", "plugin": plugin, "error": cause})

    @property
    def makes_projects(self) -> bool:
        """Whether any plugin adds stages to a new project (``pgx init`` and ``pgx demo`` need one)."""
        return bool(self.pm.hook.pgx_project_stages.get_hookimpls())

    def init_project(self, project: Project) -> list[dict[str, Any]]:
        """Every plugin's part of ``project``; returns the spec's stages, in position order."""
        self.pm.hook.pgx_init_project(project=project)
        placed = [pair for pairs in self.pm.hook.pgx_project_stages(project=project) for pair in pairs]
        return [stage for _, stage in sorted(placed, key=lambda pair: pair[0])]

    def report_sections(self, summaries: list[dict[str, Any]]) -> list[ReportSection]:
        """Every plugin's report sections for one run, in position order. A plugin whose sections
        fail is logged and left out: the rest of the report still gets drawn."""
        found: list[ReportSection] = []
        for impl in self.pm.hook.pgx_report_sections.get_hookimpls():
            try:
                found.extend(cast(list[ReportSection], impl.function(summaries=summaries)))
            except Exception as exc:
                log.error(
                    "report section failed",
                    extra={
                        "event": "report_section_failed",
                        "plugin": impl.plugin_name,
                        "error": f"{type(exc).__name__}: {scrub(str(exc))}",
                    },
                )
        return sorted(found, key=lambda s: s.position)


def _disabled() -> set[str]:
    return {p.strip() for p in os.environ.get("PGX_DISABLE_PLUGINS", "").split(",") if p.strip()}


def _dist(ep: EntryPoint) -> tuple[str, str]:
    dist = ep.dist
    return (dist.name, dist.version) if dist is not None else ("?", "?")


def make_plugin_manager(extra_plugins: list[tuple[str, object]] | None = None, *, entrypoints: bool = True) -> Plugins:
    """Build a plugin manager: load entry points, register stages, check pending hooks.

    ``extra_plugins`` registers in-process plugin objects (tests, embedding) as ``(name, obj)``.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    disabled = _disabled()
    loaded: list[tuple[str, str, str]] = []  # (name, distribution, version)
    infos: list[PluginInfo] = []
    if entrypoints:
        for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
            dist, version = _dist(ep)
            if ep.name in disabled or dist in disabled:
                pm.set_blocked(ep.name)
                continue
            try:
                obj = ep.load()
                pm.register(obj, name=ep.name)
            except Exception as exc:
                # str(exc) of an import error is code, not data; scrub anyway, it is cheap.
                cause = f"{type(exc).__name__}: {scrub(str(exc))}"
                infos.append(PluginInfo(ep.name, dist, version, (), cause))
                log.error(
                    "plugin failed to load", extra={"event": "plugin_load_failed", "plugin": ep.name, "error": cause}
                )
                continue
            loaded.append((ep.name, dist, version))
    for name, obj in extra_plugins or []:
        if name not in disabled:
            pm.register(obj, name=name)
            loaded.append((name, name, "0"))

    registry = StageRegistry()
    by_plugin: dict[str, list[str]] = {}
    for impl in pm.hook.pgx_register_stages.get_hookimpls():
        before = set(registry.names())
        registry._current_plugin = impl.plugin_name
        try:
            impl.function(registry=registry)
        except PgxError:
            raise
        except Exception as exc:
            cause = f"{type(exc).__name__}: {scrub(str(exc))}"
            raise PluginError(f"Plugin {impl.plugin_name} failed to register its stages: {cause}") from exc
        by_plugin[impl.plugin_name] = sorted(set(registry.names()) - before)
    pm.check_pending()
    for name, dist, version in loaded:
        infos.append(PluginInfo(name, dist, version, tuple(by_plugin.get(name, ()))))
    infos.sort(key=lambda i: i.name)
    return Plugins(pm, registry, infos)
