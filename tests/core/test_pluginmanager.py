from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from pgx_core import hookspecs
from pgx_core.errors import PluginError
from pgx_core.pluginmanager import make_plugin_manager
from pgx_core.stage import StageRegistry
from tests.support import pgx_teststage


def test_builtin_and_example_plugins_load_through_entry_points() -> None:
    plugins = make_plugin_manager()
    names = {i.name for i in plugins.infos}
    assert "linecount" in names  # the example third-party distribution, installed by `make install`
    info = next(i for i in plugins.infos if i.name == "linecount")
    assert info.distribution == "pgx-example-linecount" and info.stages == ("line-count",)
    assert plugins.registry.get("line-count") is not None


def test_plugin_raising_on_import_is_reported_by_name(plugin_site: Callable[..., Path]) -> None:
    plugin_site("pgx-broken", "broken", "pgx_broken_mod", "raise RuntimeError('boom at import')\n")
    plugins = make_plugin_manager()
    [failure] = plugins.failures
    assert failure.name == "broken" and failure.distribution == "pgx-broken"
    assert failure.error == "RuntimeError: boom at import"
    assert plugins.registry.get("line-count") is not None  # the others still load
    assert "plugin broken failed to load: RuntimeError: boom at import" in plugins.failure_note()


def test_duplicate_stage_type_is_a_clear_error(plugin_site: Callable[..., Path]) -> None:
    plugin_site("pgx-teststage", "teststage", "pgx_teststage")
    plugin_site(
        "pgx-dupe",
        "dupe",
        "pgx_dupe_mod",
        """
        from pgx_core.hookspecs import hookimpl
        from pgx_teststage import CopyTable

        class Again(CopyTable):
            pass

        @hookimpl
        def pgx_register_stages(registry):
            registry.register(Again)
    """,
    )
    with pytest.raises(PluginError, match=r"Stage type 'copy-table' is registered twice: by plugin (dupe|teststage)"):
        make_plugin_manager()


def test_disable_plugins_env(plugin_site: Callable[..., Path], monkeypatch: pytest.MonkeyPatch) -> None:
    plugin_site("pgx-teststage", "teststage", "pgx_teststage")
    assert make_plugin_manager().registry.get("copy-table") is not None
    monkeypatch.setenv("PGX_DISABLE_PLUGINS", "teststage, linecount")
    plugins = make_plugin_manager()
    assert plugins.registry.get("copy-table") is None and plugins.registry.get("line-count") is None


def test_unknown_hook_is_refused_by_check_pending() -> None:
    class Typo:
        @hookspecs.hookimpl
        def pgx_after_rnu(self) -> None:  # misspelled hook name
            pass

    with pytest.raises(Exception, match="pgx_after_rnu"):
        make_plugin_manager([("typo", Typo())], entrypoints=False)


def test_every_hookspec_is_documented() -> None:
    specs = [getattr(hookspecs, n) for n in dir(hookspecs) if n.startswith("pgx_")]
    assert len(specs) >= 7
    for fn in specs:
        doc = fn.__doc__ or ""
        assert "Runs in: driver" in doc, fn.__name__
        assert "Args:" in doc and "Returns:" in doc, fn.__name__


def test_lifecycle_hooks_fire_in_order() -> None:
    calls: list[str] = []

    class Recorder:
        @hookspecs.hookimpl
        def pgx_before_stage(self, stage_name: str) -> None:
            calls.append(f"before:{stage_name}")

    plugins = make_plugin_manager([("teststage", pgx_teststage), ("rec", Recorder())], entrypoints=False)
    plugins.before_stage(None, "x", "copy-table", 1, 1)  # type: ignore[arg-type]
    assert calls == ["before:x"]


def test_stages_declare_what_they_produce_and_the_core_resolves_it() -> None:
    from pgx_core.stage import Data

    class Produce(pgx_teststage.CopyTable):
        type_name = "produce-silver"
        produces = (Data("silver", "claims"),)

    class Consume(pgx_teststage.CopyTable):
        type_name = "consume-silver"
        consumes = (Data("silver", "claims"),)

    class Stages:
        @hookspecs.hookimpl
        def pgx_register_stages(self, registry: StageRegistry) -> None:
            registry.register(Produce)
            registry.register(Consume)

    plugins = make_plugin_manager([("third-party", Stages())])
    # The consumer never names the producer: the registry says who produces what (by script name).
    assert plugins.registry.producers()["silver/claims"] == Produce.script_name
    consumer = plugins.registry.get("consume-silver")
    assert consumer is not None and Data("silver", "claims") in consumer.consumes


def test_a_second_producer_of_the_same_data_is_refused() -> None:
    from pgx_core.stage import Data, StageRegistry

    class ImputedElsewhere(pgx_teststage.CopyTable):
        type_name = "impute-elsewhere"
        produces = (Data("silver", "pharmacy"),)

    registry = StageRegistry()
    registry._current_plugin = "impute"
    registry.register(type("Impute", (pgx_teststage.CopyTable,), {"produces": (Data("silver", "pharmacy"),)}))
    registry._current_plugin = "other"
    with pytest.raises(PluginError, match=r"produces silver/pharmacy, which stage copy-table \(plugin impute\)"):
        registry.register(ImputedElsewhere)


def test_a_stage_asking_for_data_no_stage_produces_gets_a_clear_error(tmp_path: Path) -> None:
    from pgx_core.lake.storage import StoreConfig
    from pgx_core.stage import Data, RunInfo

    run = RunInfo(
        "r", "n", tmp_path.as_uri(), tmp_path.as_uri(), tmp_path.as_uri(), StoreConfig(), (2019,), ("65-74",),
        256, None, None, producers={"silver/medical": "global_imputation"},
    )  # fmt: skip
    stage = pgx_teststage.CopyTable(pgx_teststage.Params(), run, lambda uri: None)  # type: ignore[arg-type,return-value]
    assert stage.producer(Data("silver", "medical")) == "global_imputation"
    with pytest.raises(PluginError, match="reads silver/pharmacy, which no installed stage produces"):
        stage.producer(Data("silver", "pharmacy"))
