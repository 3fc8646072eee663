"""docs/formats.md says what pgx writes: every key of the JSON documents real runs leave in the
lake and state root is in its table, and every key in a table is one pgx writes."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from pgx_core.lake import paths
from pgx_core.lake.storage import open_store
from pgx_core.pluginmanager import make_plugin_manager
from pgx_core.state import acquire_lease
from tests.conftest import REPO, local_spec, run_spec
from tests.core.lake_helpers import input_table, put_table
from tests.support import pgx_teststage

FORMATS = REPO / "docs" / "formats.md"
# Written only when it happens: an entity's output that its input no longer yields (impute's
# partitions), which the copy-table stage used here cannot make.
RARE = {"summary.json": {"entities[].removed"}}


def documented() -> dict[str, dict[str, str]]:
    """``{section: {key: type}}`` of every ``## …`` section's key table."""
    out: dict[str, dict[str, str]] = {}
    for section in re.split(r"^## ", FORMATS.read_text(encoding="utf-8"), flags=re.M)[1:]:
        title = section.splitlines()[0].replace("&lt;", "<").replace("&gt;", ">")
        rows = re.findall(r"^\| `([^`]+)` \| ([^|]+) \|", section, re.M)
        if rows:
            out[title] = {key: kind.strip() for key, kind in rows}
    return out


def keys_of(doc: Any, table: dict[str, str], prefix: str = "") -> set[str]:
    """Every key path of ``doc`` (``a.b``, ``list[].c``). A key with no documented key below it
    holds free-form names (a ``map``: counts by reason, entities by id) and is not descended into."""
    found: set[str] = set()
    for key, value in doc.items():
        path = prefix + key
        found.add(path)
        if not any(k.startswith((path + ".", path + "[].")) for k in table):
            continue
        if isinstance(value, dict):
            found |= keys_of(value, table, path + ".")
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, dict):
                    found |= keys_of(item, table, path + "[].")
    return found


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """The documents of a copy-table lake after runs that complete, fail, skip, stop at a limit and
    replace (and back up) outputs; plus a lease, which a finished run never leaves behind."""
    tmp = tmp_path_factory.mktemp("formats")
    lake = tmp / "lake"
    store = open_store(lake.as_uri())
    for i in range(3):
        put_table(store, paths.join(lake.as_uri(), "input", f"part{i}.parquet"), input_table(5 + i, salt=i))
    plugins = make_plugin_manager([("teststage", pgx_teststage)], entrypoints=False)

    def run(name: str, **options: Any) -> int:
        spec = local_spec(tmp, lake, [{"use": "copy-table", "with": options.pop("with_", {})}], name)
        return run_spec(spec, plugins, **options)[0]

    assert run("fails", with_={"fail": ["part1"]}) == 2  # two completed, one failed
    assert run("limited", limit=1) == 0  # two skipped, the failed one done
    put_table(store, paths.join(lake.as_uri(), "input", "part0.parquet"), input_table(9, salt=50))
    assert run("replaces") == 0  # part0 changed: its output is backed up and replaced
    state_root = paths.default_state_root(lake.as_uri())
    acquire_lease(store, paths.lease_object(state_root, "test_copy", "probe"), "20261207T000000Z-00000000", 60)

    def docs(suffix: str) -> list[dict[str, Any]]:
        return [json.loads(store.read_bytes(o.uri)) for o in store.list(lake.as_uri() + "/") if o.uri.endswith(suffix)]

    return {
        "summary.json": docs("/summary.json"),
        "state.json": docs("/state.json"),
        "global_tracker.json": docs("/global_tracker.json"),
        "lease.json and _run.lease.json": docs("/lease.json"),
        "backup_<stamp>.claim.json": docs(".claim.json"),
    }


@pytest.mark.parametrize(
    "section", ["summary.json", "state.json", "global_tracker.json", "lease.json and _run.lease.json",
                "backup_<stamp>.claim.json"],
)  # fmt: skip
def test_the_documented_keys_are_the_written_keys(written: dict[str, list[dict[str, Any]]], section: str) -> None:
    table = documented()[section]
    docs = written[section]
    assert docs, f"the runs wrote no {section}"
    seen = set().union(*(keys_of(d, table) for d in docs))
    assert seen - set(table) == set(), f"{section}: written but not documented"
    assert set(table) - seen - RARE.get(section, set()) == set(), f"{section}: documented but never written"


def test_a_key_pgx_does_not_write_is_caught() -> None:
    """The check bites both ways: an extra key in a document, a stale row in a table."""
    table = documented()["global_tracker.json"]
    doc = {"pipeline_name": "p", "counts": {"completed": 1}, "entities": {"e": "completed"}, "updated_at": "t"}
    assert keys_of(doc, table) == set(table)
    assert keys_of({**doc, "owner": "x"}, table) - set(table) == {"owner"}
    assert set(table) - keys_of({k: v for k, v in doc.items() if k != "updated_at"}, table) == {"updated_at"}
