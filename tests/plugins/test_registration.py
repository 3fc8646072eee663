"""What the built-in plugins register: their stages as `pgx plugins` lists them, and the data each
declares it produces and consumes (the core's own tests run with these plugins disabled)."""

from __future__ import annotations

import json

from pgx_core.pluginmanager import make_plugin_manager
from pgx_core.stage import Data
from tests.conftest import pgx


def test_plugins_json_names_each_built_in_plugin_with_its_stages() -> None:
    doc = json.loads(pgx("plugins", "--json", check=True).stdout)
    stages = {p["name"]: p["stages"] for p in doc["plugins"]}
    assert stages["ingest"] == ["ingest", "reprocess"]
    assert stages["impute"] == ["impute"]
    assert stages["linecount"] == ["line-count"]


def test_clean_and_update_codes_find_their_inputs_through_the_registry() -> None:
    producers = make_plugin_manager().registry.producers()
    # Clean finds silver's checksums in impute's state, update-codes records its rewrites in clean's:
    # neither names the other plugin's stage; the registry says who produces what.
    assert producers["silver/pharmacy"] == "global_imputation" and producers["gold/medical"] == "clean_medical"
    clean = make_plugin_manager().registry.get("clean-medical")
    assert clean is not None and Data("silver", "medical") in clean.consumes
