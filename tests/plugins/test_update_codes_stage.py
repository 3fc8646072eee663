"""The update-codes stage (pass 2) end to end on a local lake, through the in-process Runner (issue 8).

Gold is produced by a stand-in for clean (``FakeClean*`` below: same script_name and entity ids as
the clean stages, so its state is what clean's would be) which copies prepared gold tables into
place through the core — so clean's state, and clean's resume after pass 2, are the real thing.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from pgx_apcd.layout import ICD_DIAGNOSIS_COLUMNS, PROCEDURE_COLUMNS
from pgx_clean.rules import gold_schema, load_drug_map
from pgx_update_codes import stage as updcd_stage
from pgx_update_codes.rules import load_code_map, update_codes_table

from pgx_core.errors import SpecError
from pgx_core.hookspecs import hookimpl
from pgx_core.lake import paths
from pgx_core.pluginmanager import Plugins, make_plugin_manager
from pgx_core.run.runner import Runner
from pgx_core.spec.runspec import StageParams, load_spec, validate_document
from pgx_core.stage import Entity, EntityResult, Output, Stage, StageRegistry, WorkContext
from tests.conftest import local_spec, run_spec

CANARY = "0077665544"  # member-key-shaped: must never leave the data objects
MAP_V1 = {"ZZ999": "F1120", "YF1120": "F1120", "r 69": "R69"}

# --------------------------------------------------------------------------------------------
# a stand-in for clean: copies <lake>/fake_silver/<dataset>/<partition>/data.parquet to gold


class FakeCleanParams(StageParams):
    pass


class _FakeClean(Stage[FakeCleanParams]):
    dataset: ClassVar[str]
    tx = "fclen"
    version = "1"
    plugin_name = "pgx-test-fake-clean"
    Params = FakeCleanParams

    def plan(self) -> list[Entity]:
        prefix = paths.join(self.run.lake, "fake_silver", self.dataset) + "/"
        out = []
        for info in self.store_for(prefix).list(prefix):
            band, year = (p.split("=", 1)[1] for p in paths.relative(info.uri, prefix).split("/")[:2])
            out.append(
                Entity(
                    id=paths.safe_id(self.dataset, f"age_band={band}", f"event_year={year}"),
                    input_fingerprint=info.etag,
                    payload={"uri": info.uri, "band": band, "year": int(year)},
                )
            )
        return out

    def process(self, entity: Entity, ctx: WorkContext) -> EntityResult:
        src = entity.payload["uri"]
        gold = paths.gold_object(self.run.lake, self.dataset, entity.payload["band"], entity.payload["year"])
        data = ctx.store().read_bytes(src)
        with ctx.open_output(ctx.staging_uri(gold)) as f:
            f.write(data)
        rows = pq.ParquetFile(pa.BufferReader(data)).metadata.num_rows
        return EntityResult(outputs=[Output(gold, rows)], rows_in=rows, rows_out=rows)


class FakeCleanMedical(_FakeClean):
    type_name = "fake-clean-medical"
    script_name = "clean_medical"
    dataset = "medical"


class FakeCleanPharmacy(_FakeClean):
    type_name = "fake-clean-pharmacy"
    script_name = "clean_pharmacy"
    dataset = "pharmacy"


class FakeCleanPlugin:
    @hookimpl
    def pgx_register_stages(self, registry: StageRegistry) -> None:
        registry.register(FakeCleanMedical)
        registry.register(FakeCleanPharmacy)


def plugins() -> Plugins:
    return make_plugin_manager([("fakeclean", FakeCleanPlugin())])


# --------------------------------------------------------------------------------------------
# helpers


def gold_table(dataset: str, rows: list[dict[str, Any]]) -> pa.Table:
    schema = gold_schema(dataset)  # type: ignore[arg-type]
    defaults = {
        "incurred_date": "20190115",
        "mi_person_key": CANARY,
        "claim_id": "C1",
        "_source_file": "f1",
        "event_date": dt.date(2019, 1, 15),
        "member_age_dos": 70,
    }
    data = {f.name: [r.get(f.name, defaults.get(f.name)) for r in rows] for f in schema}
    data["_source_line"] = [i + 2 for i in range(len(rows))]
    return pa.table(data, schema=schema)


def medical_rows() -> list[dict[str, Any]]:
    """An example of every ICD and procedure rule path, plus the columns pass 2 must not touch."""
    return [
        {
            "primary_icd_diagnosis_code": "F11.20",
            "two_icd_diagnosis_code": "YF1120",  # map path
            "three_icd_diagnosis_code": "QF1120",  # token path
            "four_icd_diagnosis_code": "ZZ999",  # map path: the token would be Z999
            "ten_icd_diagnosis_code": "Unknown",
            "procedure_code": "j 1100",
            "cpt_mod_1_code": "lt",
            "primary_icd_procedure_code": "0dt.j4zz",
            "primary_icd_diagnosis_desc": "f11.20 text",
        },
        {"primary_icd_diagnosis_code": "J690 - PNEUMONITIS", "procedure_code": "99213", "cpt_mod_2_code": "59"},
        {"primary_icd_diagnosis_code": "I5032", "two_icd_diagnosis_code": "r69"},
    ]


def put_silver(
    lake: Path, dataset: str, band: str, year: int, table: pa.Table, *, row_group_size: int | None = None
) -> None:
    d = lake / "fake_silver" / dataset / f"age_band={band}" / f"event_year={year}"
    d.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, d / "data.parquet", compression="zstd", row_group_size=row_group_size)


def gold_path(lake: Path, dataset: str, band: str, year: int) -> Path:
    return Path(paths.gold_object(lake.as_uri(), dataset, band, year).removeprefix("file://"))


def write_map(lake: Path, name: str, mapping: dict[str, str]) -> str:
    p = lake / "maps" / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(mapping))
    return p.as_uri()


def spec(tmp: Path, lake: Path, stages: list[dict[str, Any]], name: str = "pass2", **extra: Any) -> Path:
    return local_spec(tmp, lake, stages, name, **extra)


def run(path: Path, **kw: Any) -> tuple[int, Runner]:
    return run_spec(path, plugins(), **kw)


def summary(lake: Path, script: str, run_id: str) -> dict[str, Any]:
    return json.loads((lake / "pgx_pipeline" / script / f"run_id={run_id}" / "summary.json").read_text())


def snapshot(lake: Path) -> dict[str, tuple[int, int]]:
    """Every object outside the summaries: path → (mtime_ns, size).

    Hidden files are the local store's own lock and temp files (not objects; ``list()`` skips them).
    """
    return {
        str(p.relative_to(lake)): (p.stat().st_mtime_ns, p.stat().st_size)
        for p in lake.rglob("*")
        if p.is_file() and p.relative_to(lake).parts[0] != "pgx_pipeline" and not p.name.startswith(".")
    }


PARTS = [("65-74", 2019), ("75-84", 2019), ("65-74", 2020)]


def seeded(tmp: Path, rows: list[dict[str, Any]] | None = None) -> Path:
    """A lake with three medical gold partitions produced by (fake) clean."""
    lake = tmp / "lake"
    base = rows or medical_rows()
    for i, (band, year) in enumerate(PARTS):
        extra = [{"primary_icd_diagnosis_code": "K59.00"}] if i == 2 else []  # only the last holds K59.00
        put_silver(lake, "medical", band, year, gold_table("medical", base * (i + 1) + extra))
    code, _ = run(spec(tmp, lake, [{"use": "fake-clean-medical"}], name="clean"))
    assert code == 0
    return lake


def pass2(tmp: Path, lake: Path, name: str = "pass2", **with_: Any) -> Path:
    params = {"targetMap": write_map(lake, "target_v1.json", MAP_V1), **with_}
    return spec(tmp, lake, [{"use": "update-codes", "with": params}], name=name)


# --------------------------------------------------------------------------------------------
# tests


def test_gold_is_normalized_in_place_as_the_spec_says(tmp_path: Path) -> None:
    lake = seeded(tmp_path)
    before = {p: pq.read_table(gold_path(lake, "medical", *p)) for p in PARTS}
    code, runner = run(pass2(tmp_path, lake))
    assert code == 0
    for part in PARTS:
        out = pq.read_table(gold_path(lake, "medical", *part))
        old = before[part]
        assert out.column_names == old.column_names  # order preserved
        assert out.schema.equals(old.schema)  # types preserved
        assert out.num_rows == old.num_rows
        first = out.slice(0, 3).to_pylist()
        assert [r["primary_icd_diagnosis_code"] for r in first] == ["F1120", "J690", "I5032"]
        assert first[0]["two_icd_diagnosis_code"] == "F1120"  # YF1120 through the map
        assert first[0]["three_icd_diagnosis_code"] == "F1120"  # QF1120 through the token rule
        assert first[0]["four_icd_diagnosis_code"] == "F1120"  # ZZ999 only through the map
        assert first[2]["two_icd_diagnosis_code"] == "R69"
        assert first[0]["ten_icd_diagnosis_code"] == "Unknown"  # unrecognized: left as it was
        assert first[1]["three_icd_diagnosis_code"] is None  # NULL stays NULL
        assert [r["procedure_code"] for r in first] == ["J1100", "99213", None]
        assert first[0]["cpt_mod_1_code"] == "LT"
        touched = set(ICD_DIAGNOSIS_COLUMNS) | set(PROCEDURE_COLUMNS)
        for name in old.column_names:
            if name not in touched:
                assert out[name].equals(old[name]), name  # ICD procedure codes, descriptions, …
        assert out["primary_icd_procedure_code"].to_pylist()[0] == "0dt.j4zz"
    doc = summary(lake, "update_codes", runner.run_id)
    assert doc["tx"] == "updcd" and doc["status"] == "success"
    t = doc["totals"]
    assert t["completed"] == 3 and t["rows_in"] == t["rows_out"] == 3 + 6 + 10 and t["rows_quarantined"] == 0
    s = doc["stats"]
    # F11.20 and J690 - … in each of the 6 copies of the rows, plus the last partition's K59.00
    assert s["changed"]["primary_icd_diagnosis_code"] == 2 * 6 + 1
    assert s["changed"]["procedure_code"] == 6 and s["changed"]["cpt_mod_2_code"] == 0
    assert s["unrecognized"]["ten_icd_diagnosis_code"] == 6 and s["unrecognized"]["primary_icd_diagnosis_code"] == 0
    assert s["partitions"] == {"rewritten": 3}
    assert len(doc["backups"]) == 1
    backup = Path(doc["backups"][0].removeprefix("file://"))
    for part in PARTS:  # every replaced object has its backup, byte for byte
        rel = gold_path(lake, "medical", *part).relative_to(lake)
        silver = lake / "fake_silver" / "medical" / f"age_band={part[0]}" / f"event_year={part[1]}" / "data.parquet"
        assert (backup / rel).read_bytes() == silver.read_bytes()
    text = json.dumps(doc) + "".join(p.read_text() for p in (lake / "_state").rglob("*.json"))
    assert CANARY not in text and "PNEUMONITIS" not in text


def test_rerun_with_the_same_maps_writes_nothing_and_clean_still_skips(tmp_path: Path) -> None:
    lake = seeded(tmp_path)
    path = pass2(tmp_path, lake)
    assert run(path)[0] == 0
    before = snapshot(lake)
    code, again = run(path)
    assert code == 0
    assert snapshot(lake) == before  # no data object, backup, state or tracker written
    assert summary(lake, "update_codes", again.run_id)["totals"]["skipped"] == 3
    # Clean's resume accepts the rewritten gold: a clean run skips every partition.
    code, clean = run(spec(tmp_path, lake, [{"use": "fake-clean-medical"}], name="clean"))
    assert code == 0
    assert summary(lake, "clean_medical", clean.run_id)["totals"]["skipped"] == 3
    assert snapshot(lake) == before
    # --no-resume redoes the entities but applies nothing twice: no gold object is rewritten.
    gold = {p: gold_path(lake, "medical", *p).stat().st_mtime_ns for p in PARTS}
    code, forced = run(path, resume=False)
    assert code == 0
    assert {p: gold_path(lake, "medical", *p).stat().st_mtime_ns for p in PARTS} == gold
    assert summary(lake, "update_codes", forced.run_id)["stats"]["partitions"] == {"already_current": 3}


def test_a_new_map_version_reprocesses_and_rewrites_only_what_it_affects(tmp_path: Path) -> None:
    lake = seeded(tmp_path)
    path = pass2(tmp_path, lake)
    assert run(path)[0] == 0
    mtimes = {p: gold_path(lake, "medical", *p).stat().st_mtime_ns for p in PARTS}
    write_map(lake, "target_v1.json", {**MAP_V1, "K5900": "K590"})  # a new version at the same URI
    code, runner = run(path)
    assert code == 0
    doc = summary(lake, "update_codes", runner.run_id)
    assert doc["totals"]["completed"] == 3  # the configuration changed for every medical partition
    assert doc["stats"]["partitions"] == {"rewritten": 1, "unchanged": 2}
    changed = [p for p in PARTS if gold_path(lake, "medical", *p).stat().st_mtime_ns != mtimes[p]]
    assert changed == [PARTS[2]]  # only the partition holding K59.00
    out = pq.read_table(gold_path(lake, "medical", *PARTS[2]))["primary_icd_diagnosis_code"].to_pylist()
    assert "K590" in out and "K5900" not in out
    # Clean still accepts all three; the rerun skips.
    code, clean = run(spec(tmp_path, lake, [{"use": "fake-clean-medical"}], name="clean"))
    assert summary(lake, "clean_medical", clean.run_id)["totals"]["skipped"] == 3
    assert summary(lake, "update_codes", run(path)[1].run_id)["totals"]["skipped"] == 3


def test_clean_reproducing_a_partition_triggers_pass2_for_it_only(tmp_path: Path) -> None:
    lake = seeded(tmp_path)
    path = pass2(tmp_path, lake)
    assert run(path)[0] == 0
    put_silver(lake, "medical", *PARTS[1], gold_table("medical", medical_rows()[:1]))  # new silver
    code, clean = run(spec(tmp_path, lake, [{"use": "fake-clean-medical"}], name="clean"))
    assert code == 0 and summary(lake, "clean_medical", clean.run_id)["totals"]["completed"] == 1
    assert pq.read_table(gold_path(lake, "medical", *PARTS[1]))["primary_icd_diagnosis_code"].to_pylist() == ["F11.20"]
    code, runner = run(path)
    assert code == 0
    doc = summary(lake, "update_codes", runner.run_id)
    assert doc["totals"]["completed"] == 1 and doc["totals"]["skipped"] == 2
    assert pq.read_table(gold_path(lake, "medical", *PARTS[1]))["primary_icd_diagnosis_code"].to_pylist() == ["F1120"]


def test_dry_run_writes_nothing_reports_counts_and_leaves_the_real_run_to_do(tmp_path: Path) -> None:
    lake = seeded(tmp_path)
    gold_before = {p: gold_path(lake, "medical", *p).read_bytes() for p in PARTS}
    code, dry = run(pass2(tmp_path, lake, name="dry", dryRun=True))
    assert code == 0
    assert {p: gold_path(lake, "medical", *p).read_bytes() for p in PARTS} == gold_before
    assert not (lake / "_backups").exists()
    assert not [p for p in (lake / "_staging").rglob("*") if p.is_file()]
    dry_doc = summary(lake, "update_codes", dry.run_id)
    assert dry_doc["totals"]["completed"] == 3 and dry_doc["backups"] == []
    assert dry_doc["stats"]["partitions"] == {"would_rewrite": 3}
    assert all(e["entity"].endswith("__dry_run") for e in dry_doc["entities"])
    # A second dry run reports again (it is never "already done").
    assert (
        summary(lake, "update_codes", run(pass2(tmp_path, lake, name="dry", dryRun=True))[1].run_id)["totals"][
            "completed"
        ]
        == 3
    )
    # The real run still processes everything, and changes exactly what the dry run counted.
    code, real = run(pass2(tmp_path, lake))
    assert code == 0
    real_doc = summary(lake, "update_codes", real.run_id)
    assert real_doc["totals"]["completed"] == 3
    assert real_doc["stats"]["changed"] == dry_doc["stats"]["changed"]
    assert real_doc["stats"]["unrecognized"] == dry_doc["stats"]["unrecognized"]
    # A dry run after the real one: nothing would change.
    after = summary(lake, "update_codes", run(pass2(tmp_path, lake, name="dry", dryRun=True))[1].run_id)
    assert after["stats"]["partitions"] == {"already_current": 3}
    assert all(v == 0 for v in after["stats"]["changed"].values())


def test_token_path_and_unchanged_partition_is_not_rewritten(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    put_silver(lake, "medical", "25-44", 2018, gold_table("medical", [{"primary_icd_diagnosis_code": "YF1120"}]))
    put_silver(lake, "medical", "0-12", 2018, gold_table("medical", [{"primary_icd_diagnosis_code": "I5032"}]))
    assert run(spec(tmp_path, lake, [{"use": "fake-clean-medical"}], name="clean"))[0] == 0
    clean_bytes = gold_path(lake, "medical", "0-12", 2018).read_bytes()
    mtime = gold_path(lake, "medical", "0-12", 2018).stat().st_mtime_ns
    tm = write_map(lake, "empty.json", {"R 69": "R69"})
    code, runner = run(spec(tmp_path, lake, [{"use": "update-codes", "with": {"targetMap": tm, "years": [2018]}}]))
    assert code == 0
    assert pq.read_table(gold_path(lake, "medical", "25-44", 2018))["primary_icd_diagnosis_code"].to_pylist() == [
        "F1120"
    ]
    assert gold_path(lake, "medical", "0-12", 2018).stat().st_mtime_ns == mtime  # nothing to change: no write
    assert gold_path(lake, "medical", "0-12", 2018).read_bytes() == clean_bytes
    doc = summary(lake, "update_codes", runner.run_id)
    assert doc["stats"]["partitions"] == {"rewritten": 1, "unchanged": 1}
    assert [e["entity"] for e in doc["entities"]] == [
        "local__medical__age_band=0-12__event_year=2018",
        "local__medical__age_band=25-44__event_year=2018",
    ]


def test_partition_streamed_in_small_batches_keeps_values_and_row_groups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake = tmp_path / "lake"
    rows = [{"primary_icd_diagnosis_code": f"e{i % 37}.{i % 5}", "procedure_code": f"a {i % 11}"} for i in range(750)]
    table = gold_table("medical", rows)
    put_silver(lake, "medical", "45-54", 2017, table, row_group_size=250)
    assert run(spec(tmp_path, lake, [{"use": "fake-clean-medical"}], name="clean"))[0] == 0
    seen: list[int] = []
    real = updcd_stage.update_codes_table

    def spy(batch: Any, *args: Any) -> Any:
        seen.append(batch.num_rows)
        return real(batch, *args)

    monkeypatch.setattr(updcd_stage, "update_codes_table", spy)
    tm = load_code_map({"E11": "E110"})
    expected, _ = update_codes_table(table, "medical", tm)
    target = write_map(lake, "t.json", {"E11": "E110"})
    path = spec(tmp_path, lake, [{"use": "update-codes", "with": {"targetMap": target, "chunkRows": 100}}])
    assert run(path)[0] == 0
    assert max(seen) <= 100 and sum(seen) == 750  # never more than a batch in the rules at once
    out = pq.ParquetFile(gold_path(lake, "medical", "45-54", 2017))
    assert out.read().equals(expected.replace_schema_metadata(out.schema_arrow.metadata))
    assert [out.metadata.row_group(i).num_rows for i in range(out.metadata.num_row_groups)] == [100, 100, 50] * 3
    # With batches as large as the row groups, the row-group structure is kept exactly.
    assert run(spec(tmp_path, lake, [{"use": "fake-clean-medical"}], name="clean"), resume=False)[0] == 0
    seen.clear()
    path = spec(tmp_path, lake, [{"use": "update-codes", "with": {"targetMap": target, "chunkRows": 250}}])
    assert run(path)[0] == 0
    out = pq.ParquetFile(gold_path(lake, "medical", "45-54", 2017))
    assert [out.metadata.row_group(i).num_rows for i in range(out.metadata.num_row_groups)] == [250, 250, 250]
    assert max(seen) == 250


def test_pharmacy_drug_map_rederives_names_and_medical_is_left_alone(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    rows = [
        {"drug_name": "TYLENOL 500", "standardized_drug_name": "tylenol_500"},
        {"drug_name": "Advil", "standardized_drug_name": "advil"},
    ]
    put_silver(lake, "pharmacy", "13-24", 2020, gold_table("pharmacy", rows))
    put_silver(lake, "medical", "13-24", 2020, gold_table("medical", medical_rows()))
    assert run(spec(tmp_path, lake, [{"use": "fake-clean-pharmacy"}, {"use": "fake-clean-medical"}], "clean"))[0] == 0
    medical = gold_path(lake, "medical", "13-24", 2020).read_bytes()
    dm = write_map(lake, "drugs.json", {"Tylenol 500": "acetaminophen"})
    code, runner = run(
        spec(tmp_path, lake, [{"use": "update-codes", "with": {"datasets": ["pharmacy"], "drugMap": dm}}])
    )
    assert code == 0
    out = pq.read_table(gold_path(lake, "pharmacy", "13-24", 2020))
    assert out["standardized_drug_name"].to_pylist() == ["acetaminophen", "advil"]
    assert out["drug_name"].to_pylist() == ["TYLENOL 500", "Advil"]
    assert gold_path(lake, "medical", "13-24", 2020).read_bytes() == medical
    doc = summary(lake, "update_codes", runner.run_id)
    assert doc["stats"]["changed"] == {"standardized_drug_name": 1}
    code, clean = run(spec(tmp_path, lake, [{"use": "fake-clean-pharmacy"}], name="clean"))
    assert summary(lake, "clean_pharmacy", clean.run_id)["totals"]["skipped"] == 1
    assert load_drug_map({"Tylenol 500": "acetaminophen"}).fingerprint  # the map is a valid drug map


def test_maps_are_validated_with_the_spec_naming_keys(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    chain = write_map(lake, "chain.json", {"A10": "B20", "B20": "C30"})
    bad_json = lake / "maps" / "bad.json"
    bad_json.write_text("{not json")
    stages = [
        {"use": "update-codes", "name": "a", "with": {}},
        {"use": "update-codes", "name": "b", "with": {"targetMap": chain, "procedureMap": bad_json.as_uri()}},
        {"use": "update-codes", "name": "c", "with": {"targetMap": (lake / "missing.json").as_uri()}},
        {"use": "update-codes", "name": "d", "with": {"datasets": ["pharmacy"], "procedureMap": chain}},
    ]
    with pytest.raises(SpecError) as err:
        load_spec(spec(tmp_path, lake, stages), plugins().registry)
    found = {(p.path, p.message.split(":")[0].split(" (")[0]) for p in err.value.problems}
    assert ("spec.stages[0].with.targetMap", "is required when datasets includes medical") in found
    paths_found = [p.path for p in err.value.problems]
    assert "spec.stages[1].with.targetMap" in paths_found  # the chain
    assert "spec.stages[1].with.procedureMap" in paths_found  # not JSON
    assert "spec.stages[2].with.targetMap" in paths_found  # unreadable
    assert "spec.stages[3].with.drugMap" in paths_found  # pharmacy needs a drug map
    assert "spec.stages[3].with.procedureMap" in paths_found  # medical-only map without medical
    msgs = {p.path: p.message for p in err.value.problems}
    assert "'A10'" in msgs["spec.stages[1].with.targetMap"] and "chain" in msgs["spec.stages[1].with.targetMap"]
    assert "not valid JSON" in msgs["spec.stages[1].with.procedureMap"]
    assert err.value.exit_code == 64


def test_shortcut_maps_the_legacy_command_line_to_a_valid_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pgx_core.cli import build_parser
    from pgx_core.cli.shortcuts import notes as shortcut_notes
    from pgx_core.errors import UsageError

    def parse(*argv: str) -> Any:
        return build_parser().parse_args(["update-codes", *argv])

    lake = tmp_path / "lake"
    tm = write_map(lake, "t.json", MAP_V1)
    ns = parse(
        "--resume",
        "--years",
        "2019,2020",
        "--age-bands",
        "65-74,75-84",
        "--workers-medical",
        "3",
        "--chunk-rows",
        "5000",
        "--dry-run",
        "--lake",
        str(lake),
        "--target-map",
        tm,
        "--no-merge",
        "--chunked",
        "--threads",
        "8",
    )
    shortcut = ns.command_def.shortcut
    doc = shortcut.build_spec(ns)
    assert doc["spec"]["lake"] == lake.as_uri()
    assert doc["spec"]["executor"] == {"maxParallel": 3}
    assert doc["spec"]["stages"] == [
        {
            "use": "update-codes",
            "with": {
                "datasets": ["medical"],
                "targetMap": tm,
                "years": [2019, 2020],
                "ageBands": ["65-74", "75-84"],
                "chunkRows": 5000,
                "dryRun": True,
            },
        }
    ]
    rs = validate_document(doc, "<update-codes>", plugins().registry)
    assert rs.stages[0].params.model_dump()["chunk_rows"] == 5000
    assert ns.no_resume is False and parse("--no-resume").no_resume is True
    notes = shortcut_notes(shortcut, ns)
    assert len(notes) == 3 and all(n.startswith("note: --") and "\n" not in n for n in notes)
    assert shortcut_notes(shortcut, parse()) == []
    # --workers wins over the per-dataset counts; else the largest of them. --chunk-rows 0: sized by memory.
    assert shortcut.build_spec(parse("--workers", "2", "--workers-pharmacy", "9"))["spec"]["executor"] == {
        "maxParallel": 2
    }
    assert shortcut.build_spec(parse("--workers-medical", "2", "--workers-pharmacy", "9"))["spec"]["executor"] == {
        "maxParallel": 9
    }
    assert "chunkRows" not in shortcut.build_spec(parse("--chunk-rows", "0"))["spec"]["stages"][0]["with"]
    # Without --lake / --target-map: PGX_LAKE, and the map under the lake's default repository.
    monkeypatch.setenv("PGX_LAKE", "s3://some-lake/prefix")
    doc = shortcut.build_spec(parse())
    assert doc["spec"]["lake"] == "s3://some-lake/prefix"
    assert doc["spec"]["stages"][0]["with"] == {
        "datasets": ["medical"],
        "targetMap": "s3://pgx-repository/target_mapping/target_icd_mapping.json",
    }
    monkeypatch.delenv("PGX_LAKE")
    assert shortcut.build_spec(parse())["spec"]["lake"] == "s3://pgxdatalake"
    local = shortcut.build_spec(parse("--lake", str(lake)))["spec"]["stages"][0]["with"]["targetMap"]
    assert local == (lake / "_state" / "target_mapping" / "target_icd_mapping.json").as_uri()
    with pytest.raises(UsageError, match="--years"):
        shortcut.build_spec(parse("--years", "2019,twenty"))
    # --use-suggested: the map pgx target-frequency suggests, where it writes it.
    suggested = shortcut.build_spec(parse("--lake", "s3://b", "--use-suggested"))["spec"]["stages"][0]["with"]
    assert suggested["targetMap"] == "s3://b/gold/target_code/suggested_icd_mappings.json"
    with pytest.raises(UsageError, match="give one"):
        shortcut.build_spec(parse("--use-suggested", "--target-map", tm))


@pytest.mark.s3
def test_on_s3_pass2_rewrites_once_and_clean_keeps_accepting(
    s3_lake: str, moto_s3_server: str, tmp_path: Path
) -> None:
    import io

    from pgx_core.lake.storage import StoreConfig, open_store

    cfg = StoreConfig(endpoint_url=moto_s3_server, region="us-east-1")
    store = open_store(s3_lake, cfg)
    for band, year in PARTS[:2]:
        buf = io.BytesIO()
        pq.write_table(gold_table("medical", medical_rows()), buf, compression="zstd")
        store.write_bytes(
            paths.join(s3_lake, "fake_silver", "medical", f"age_band={band}", f"event_year={year}", "data.parquet"),
            buf.getvalue(),
        )
    tm = paths.join(s3_lake, "maps", "target.json")
    store.write_bytes(tm, json.dumps(MAP_V1).encode())

    def s3_spec(name: str, stages: list[dict[str, Any]]) -> Path:
        p = tmp_path / f"{name}.yaml"
        doc = {
            "apiVersion": "pgx.io/v1alpha1",
            "kind": "PipelineRun",
            "metadata": {"name": name},
            "spec": {
                "lake": s3_lake,
                "stateRoot": paths.join(s3_lake, "_state"),
                "s3": {"endpointUrl": moto_s3_server},
                "executor": {"type": "local"},
                "stages": stages,
            },
        }
        p.write_text(yaml.safe_dump(doc))
        return p

    def objects() -> dict[str, str]:
        return {i.uri: i.etag for i in store.list(s3_lake + "/") if "/pgx_pipeline/" not in i.uri}

    clean = s3_spec("clean", [{"use": "fake-clean-medical"}])
    assert run(clean)[0] == 0
    path = s3_spec("pass2", [{"use": "update-codes", "with": {"targetMap": tm}}])
    assert run(path)[0] == 0
    gold = paths.gold_object(s3_lake, "medical", *PARTS[0])
    out = pq.read_table(pa.BufferReader(store.read_bytes(gold)))
    assert out["primary_icd_diagnosis_code"].to_pylist() == ["F1120", "J690", "I5032"]
    before = objects()
    code, again = run(path)
    assert code == 0 and objects() == before
    code, reclean = run(clean)
    assert code == 0 and objects() == before
    for runner, script in ((again, "update_codes"), (reclean, "clean_medical")):
        doc = json.loads(store.read_bytes(paths.summary_object(s3_lake, script, runner.run_id)))
        assert doc["totals"]["skipped"] == 2, script


def test_no_gold_changes_nothing_and_exits_2_naming_where_it_looked(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    lake.mkdir()
    drug_map = write_map(lake, "drugs.json", {"tylenol": "acetaminophen"})
    code, runner = run(pass2(tmp_path, lake, datasets=["medical", "pharmacy"], drugMap=drug_map))
    assert code == 2
    doc = summary(lake, "update_codes", runner.run_id)
    gold = f"{lake.as_uri()}/gold"
    assert doc["error"] == f"update-codes found no gold object under {gold}/medical/ nor under {gold}/pharmacy/"
    assert not (lake / "gold").exists()
