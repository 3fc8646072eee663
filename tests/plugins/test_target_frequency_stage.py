"""The target-frequency stage end to end on a local lake, through the in-process Runner (issue 8)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pgx_target_frequency import stage as tgtfq_stage
from pgx_target_frequency.rules import (
    ICD_FREQUENCY_SCHEMA,
    PROCEDURE_FREQUENCY_SCHEMA,
    merge_partials,
    partition_partial,
    suggested_icd_mappings,
    suppress_small_counts,
)
from pgx_update_codes.rules import load_code_map

from tests.plugins.test_update_codes_stage import (
    CANARY,
    gold_path,
    gold_table,
    put_silver,
    run,
    snapshot,
    spec,
    summary,
    write_map,
)

PARTS = [("65-74", 2019), ("0-12", 2019), ("unknown", 2020)]  # deliberately not in report order


def rows_for(i: int) -> list[dict[str, Any]]:
    """12 × I5032 (reported), 3 × F11.20 (suppressed), a code in two positions, NULLs."""
    out = [{"primary_icd_diagnosis_code": "I5032", "procedure_code": "99213"} for _ in range(12)]
    out += [{"primary_icd_diagnosis_code": "F11.20", "two_icd_diagnosis_code": "I5032"} for _ in range(3)]
    out += [{"primary_icd_diagnosis_code": "J690 - PNEUMONITIS", "ten_icd_diagnosis_code": "Unknown"}] * (i + 1)
    out += [{"primary_icd_diagnosis_code": None, "procedure_code": "j 1100"}] * 11
    return out


def seeded(tmp: Path) -> tuple[Path, dict[tuple[str, int], pa.Table]]:
    lake = tmp / "lake"
    tables = {}
    for i, (band, year) in enumerate(PARTS):
        tables[(band, year)] = gold_table("medical", rows_for(i))
        put_silver(lake, "medical", band, year, tables[(band, year)], row_group_size=7)
    assert run(spec(tmp, lake, [{"use": "fake-clean-medical"}], name="clean"))[0] == 0
    return lake, tables


def reports(lake: Path) -> tuple[pa.Table, pa.Table, dict[str, str]]:
    base = lake / "gold" / "target_code"
    return (
        pq.read_table(base / "icd_frequency_by_position.parquet"),
        pq.read_table(base / "procedure_code_frequency.parquet"),
        json.loads((base / "suggested_icd_mappings.json").read_text()),
    )


def test_reports_count_gold_medical_suppress_small_counts_and_suggest_mappings(tmp_path: Path) -> None:
    lake, tables = seeded(tmp_path)
    gold_before = {p: gold_path(lake, "medical", *p).read_bytes() for p in PARTS}
    tm = write_map(lake, "t.json", {"ZZ999": "F1120"})
    code, runner = run(spec(tmp_path, lake, [{"use": "target-frequency", "with": {"targetMap": tm}}]))
    assert code == 0
    icd, proc, suggestions = reports(lake)
    assert icd.schema.equals(ICD_FREQUENCY_SCHEMA) and proc.schema.equals(PROCEDURE_FREQUENCY_SCHEMA)
    # The same counts as the rules on whole partitions, merged, then suppressed below 11.
    whole = merge_partials(partition_partial(t, year, band) for (band, year), t in tables.items())
    assert icd.equals(suppress_small_counts(whole.icd))
    assert proc.equals(suppress_small_counts(whole.procedure))
    first = icd.slice(0, 1).to_pylist()[0]
    assert (first["event_year"], first["age_band"]) == (2019, "0-12")  # band order, not text order
    by_key = {(r["event_year"], r["age_band"], r["position"], r["code"]): r["frequency"] for r in icd.to_pylist()}
    assert by_key[(2019, "65-74", "primary", "I5032")] == 12
    assert by_key[(2019, "65-74", "primary", "F11.20")] is None  # 3 < 11: suppressed, row kept
    assert by_key[(2019, "65-74", "two", "I5032")] is None
    assert by_key[(2020, "unknown", "ten", "Unknown")] is None
    assert {r["code"]: r["frequency"] for r in proc.to_pylist() if r["age_band"] == "0-12"} == {
        "99213": 12,
        "j 1100": 11,
    }
    observed = pa.concat_arrays([whole.icd["code"].combine_chunks()])
    assert suggestions == suggested_icd_mappings(observed, load_code_map({"ZZ999": "F1120"}))
    assert suggestions == {"F11.20": "F1120", "J690 - PNEUMONITIS": "J690"}
    assert {p: gold_path(lake, "medical", *p).read_bytes() for p in PARTS} == gold_before  # read only
    doc = summary(lake, "target_frequency_analysis", runner.run_id)
    assert doc["tx"] == "tgtfq" and doc["totals"]["completed"] == 1
    assert doc["totals"]["rows_in"] == doc["totals"]["rows_out"] == sum(t.num_rows for t in tables.values())
    s = doc["stats"]
    assert s["partitions"] == 3 and s["suggested_mappings"] == 2
    assert s["report_rows"] == {"icd": icd.num_rows, "procedure": proc.num_rows}
    assert s["suppressed"]["icd"] == icd["frequency"].null_count > 0
    text = json.dumps(doc) + "".join(p.read_text() for p in (lake / "_state").rglob("*.json"))
    assert CANARY not in text


def test_rerun_skips_and_pass2_changes_trigger_a_new_report_with_backup(tmp_path: Path) -> None:
    lake, _ = seeded(tmp_path)
    tm = write_map(lake, "t.json", {"ZZ999": "F1120"})
    stages = [
        {"use": "target-frequency", "name": "before", "with": {"targetMap": tm}},
    ]
    path = spec(tmp_path, lake, stages, name="report")
    assert run(path)[0] == 0
    old_icd = (lake / "gold" / "target_code" / "icd_frequency_by_position.parquet").read_bytes()
    before = snapshot(lake)
    code, again = run(path)
    assert code == 0 and snapshot(lake) == before
    assert summary(lake, "target_frequency_analysis", again.run_id)["totals"]["skipped"] == 1
    # Pass 2 rewrites gold; the report planned after it sees new partitions and is redone.
    both = spec(
        tmp_path,
        lake,
        [{"use": "update-codes", "with": {"targetMap": tm}}, {"use": "target-frequency", "with": {"targetMap": tm}}],
        name="both",
    )
    code, runner = run(both)
    assert code == 0
    doc = summary(lake, "target_frequency_analysis", runner.run_id)
    assert doc["totals"]["completed"] == 1
    icd, _, suggestions = reports(lake)
    codes = set(icd["code"].to_pylist())
    assert "F1120" in codes and "F11.20" not in codes and "J690" in codes
    assert suggestions == {}  # after pass 2 every recognized code is already canonical
    [prefix] = doc["backups"]
    backup = Path(prefix.removeprefix("file://")) / "gold" / "target_code" / "icd_frequency_by_position.parquet"
    assert backup.read_bytes() == old_icd


def test_suppression_can_be_turned_off_and_suggestions_restricted(tmp_path: Path) -> None:
    lake, tables = seeded(tmp_path)
    with_ = {"suppressBelow": 0, "codesOfInterest": ["j69.0"]}
    assert run(spec(tmp_path, lake, [{"use": "target-frequency", "with": with_}]))[0] == 0
    icd, proc, suggestions = reports(lake)
    whole = merge_partials(partition_partial(t, year, band) for (band, year), t in tables.items())
    assert icd.equals(whole.icd) and proc.equals(whole.procedure)
    assert icd["frequency"].null_count == 0
    assert suggestions == {"J690 - PNEUMONITIS": "J690"}


def test_partials_are_counted_once_in_parallel_and_recounted_when_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake, _ = seeded(tmp_path)
    calls: list[tuple[str, int]] = []
    real = tgtfq_stage.count_partition

    def spy(store: Any, uri: str, year: int, band: str, **kw: Any) -> Any:
        calls.append((band, year))
        return real(store, uri, year, band, **kw)

    monkeypatch.setattr(tgtfq_stage, "count_partition", spy)
    path = spec(tmp_path, lake, [{"use": "target-frequency", "with": {"chunkRows": 5}}])
    code, first = run(path)
    assert code == 0 and sorted(calls) == sorted(PARTS)  # once each, in prepare's fan-out
    expected = reports(lake)
    raw = {n: (lake / "gold" / "target_code" / n).read_bytes() for n in ("icd_frequency_by_position.parquet",)}
    # Without the prepared partials (e.g. lost), process counts inline: the same bytes.
    calls.clear()
    monkeypatch.setattr(tgtfq_stage.TargetFrequencyStage, "prepare", lambda self, entities, fan_out: None)
    code, second = run(path, resume=False)
    assert code == 0 and sorted(calls) == sorted(PARTS)
    assert reports(lake) == expected
    assert (lake / "gold" / "target_code" / "icd_frequency_by_position.parquet").read_bytes() == raw[
        "icd_frequency_by_position.parquet"
    ]
    # Batch size does not change the result either.
    code, _ = run(spec(tmp_path, lake, [{"use": "target-frequency", "with": {"chunkRows": 1000}}]), resume=False)
    assert code == 0 and reports(lake) == expected
    assert first.run_id != second.run_id


def test_no_gold_medical_means_no_report_and_bad_map_is_a_spec_error(tmp_path: Path) -> None:
    from pgx_core.errors import SpecError
    from pgx_core.spec.runspec import load_spec
    from tests.plugins.test_update_codes_stage import plugins

    lake = tmp_path / "lake"
    lake.mkdir()
    code, runner = run(spec(tmp_path, lake, [{"use": "target-frequency"}]))
    assert code == 2  # no input: nothing changes, and the run says where it looked
    doc = summary(lake, "target_frequency_analysis", runner.run_id)
    assert doc["totals"]["entities"] == 0 and doc["status"] == "error"
    assert f"found no object under {lake.as_uri()}/gold/medical/" in doc["error"]
    assert not (lake / "gold" / "target_code").exists()
    bad = write_map(lake, "bad.json", {"A10": "B20", "B20": "C30"})
    with pytest.raises(SpecError) as err:
        load_spec(spec(tmp_path, lake, [{"use": "target-frequency", "with": {"targetMap": bad}}]), plugins().registry)
    assert [p.path for p in err.value.problems] == ["spec.stages[0].with.targetMap"]
