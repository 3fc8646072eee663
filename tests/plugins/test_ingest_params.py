"""Ingest's and reprocess's parameters: a spec is refused at validation for a delimiter or an
encoding their readers cannot read, and accepted for every one they can."""

from __future__ import annotations

import pytest
from pgx_ingest import plugin as ingest_plugin

from pgx_core.errors import SpecError
from pgx_core.pluginmanager import Plugins, make_plugin_manager
from pgx_core.spec.runspec import validate_document


@pytest.fixture
def plugins() -> Plugins:
    return make_plugin_manager([("ingest", ingest_plugin)], entrypoints=False)


def doc(stage: dict[str, object]) -> dict[str, object]:
    spec = {"lake": "file:///tmp/lake", "stages": [stage]}
    return {"apiVersion": "pgx.io/v1alpha1", "kind": "PipelineRun", "metadata": {"name": "t"}, "spec": spec}


@pytest.mark.parametrize(
    ("use", "key", "value"),
    [
        ("ingest", "delimiter", '"'),
        ("ingest", "delimiter", "\n"),
        ("ingest", "delimiter", "\u00a6"),
        ("ingest", "encoding", "utf-16"),
        ("ingest", "encoding", "shift_jis"),
        ("ingest", "encoding", "rot13"),
        ("ingest", "encoding", "idna"),
        ("ingest", "encoding", "no-such-codec"),
        ("reprocess", "delimiter", '"'),
        ("reprocess", "encoding", "utf-16"),
        ("reprocess", "encoding", "cp037"),
        ("reprocess", "encoding", "rot13"),
        ("reprocess", "encoding", "no-such-codec"),
    ],
)
def test_ingest_and_reprocess_refuse_what_their_readers_cannot_read(
    plugins: Plugins, use: str, key: str, value: str
) -> None:
    bad = doc({"use": use, "with": {"dataType": "pharmacy", key: value}})
    with pytest.raises(SpecError) as err:
        validate_document(bad, "x", plugins.registry)
    assert {p.path for p in err.value.problems} == {f"spec.stages[0].with.{key}"}


@pytest.mark.parametrize(
    ("use", "key", "value"),
    [
        ("ingest", "delimiter", ","),
        ("ingest", "delimiter", "\t"),
        ("ingest", "encoding", "latin-1"),
        ("ingest", "encoding", "utf-8"),
        ("reprocess", "encoding", "latin-1"),
        ("reprocess", "encoding", "shift_jis"),  # repair decodes a whole line before splitting it
        ("reprocess", "delimiter", ";"),
    ],
)
def test_ingest_and_reprocess_accept_what_their_readers_read(plugins: Plugins, use: str, key: str, value: str) -> None:
    ok = doc({"use": use, "with": {"dataType": "pharmacy", key: value}})
    assert validate_document(ok, "x", plugins.registry).stages[0].use == use
