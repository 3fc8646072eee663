"""The clean-pharmacy and clean-medical stages end to end on a local lake (issue 7 acceptance).

Silver partitions are written directly (the silver schema of ``pgx_clean.rules.silver_schema``,
sorted as impute writes them) and the stages run through the in-process ``Runner``.
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pgx_apcd.layout import columns
from pgx_clean import stage as clean_stage
from pgx_clean.rules import clean_partition, gold_schema, silver_schema
from pgx_clean.stage import GoldWriter, clean_stream, plan_chunk_rows

from pgx_core.errors import SpecError
from pgx_core.lake import paths
from pgx_core.lake.promote import sha256_of
from pgx_core.lake.storage import LocalStore
from pgx_core.log import JsonFormatter
from pgx_core.pluginmanager import make_plugin_manager
from pgx_core.run.runner import Runner
from pgx_core.spec.runspec import load_spec
from pgx_core.state import PipelineState
from tests.conftest import local_spec, pgx, run_spec

SOURCES = ("age_source", "gender_source", "race_source", "zip_source", "county_source", "payer_source")
SILVER_ORDER = ("mi_person_key", "incurred_date", "_source_file", "_source_line")
CANARY = "0099887766"
BAND, YEAR = "65-74", 2019

# ================================================================================================
# synthetic silver

# A few values per generic column, with the defects clean must handle (padding, null tokens).
_VOCAB = ["A1", "B2", " C3 ", "N/A", "", "null", "VAL\t", "x y", "Unknown", "D4"]
_AMOUNTS = ["12", "12.5", ".00", "-12.00", " 7.25 ", "1,000.00", "12.", "N/A", "", "3.14159"]
_NDC = ["12345678901", "12345-6789-01", "1234-5678-90", "12345-678-90", "12345-6789-1", "BAD", "N/A"]
_DRUGS = ["ACETAMINOPHEN/CODEINE", "Tylenol", "OXYCODONE HCL", " hydralazine  hydrochloride ", "N/A", "***"]
_CODES = ["i5032", " F11.20 ", "J690", "n/a", "", "z3a", "99213", "lt"]
_NULL_KEYS = ("N/A", "null", " NULL ")


def _pick(vocab: list[str], n: int, seed: int) -> pa.Array:
    idx = pc.cast(pc.floor(pc.multiply(pc.random(n, initializer=seed), len(vocab))), pa.int64())
    return pa.array(vocab, pa.string()).take(idx)


def _variant(key: str, rnd: random.Random) -> str:
    """A raw spelling of ``key`` that normalizes back to ``key`` (stray ASCII whitespace)."""
    return rnd.choice([" " + key, key + " ", "\t" + key, key + "\r\n", " " + key + " "])


def make_silver(
    dataset: str,
    n: int,
    *,
    seed: int = 1,
    odd_rate: float = 0.02,
    null_keys: int = 3,
    dup_rate: float = 0.06,
    year: int = YEAR,
    plant: str | None = None,
) -> pa.Table:
    """``n`` rows plus exact duplicates, sorted by the raw silver order, as impute writes it.

    Keys keep leading zeros; ``odd_rate`` of the rows spell their key with stray whitespace and
    ``null_keys`` rows have a key that normalizes to NULL; duplicates come from another source
    file, a quarter of them with a re-spelled key and a quarter with a padded claim id (still
    duplicates after normalization). ``plant`` puts that member key on a few rows, plain and padded.
    """
    rnd = random.Random(seed)
    members = max(1, n // 6)
    keys = [f"{rnd.randrange(members) * 7919 % 10**9:09d}" for _ in range(n)]
    if plant is not None:
        for i in rnd.sample(range(n), min(4, n)):
            keys[i] = plant
    for i in range(n):
        if rnd.random() < odd_rate:
            keys[i] = _variant(keys[i], rnd)
    for i in rnd.sample(range(n), min(null_keys, n)):
        keys[i] = rnd.choice(_NULL_KEYS)
    cols: dict[str, Any] = {}
    for j, name in enumerate(columns(dataset)):
        s = seed * 1000 + j
        if name == "mi_person_key":
            cols[name] = pa.array(keys, pa.string())
        elif name == "incurred_date":
            cols[name] = pa.array([f"{year}{rnd.randint(1, 12):02d}{rnd.randint(1, 28):02d}" for _ in range(n)])
        elif name == "claim_id":
            cols[name] = pa.array([rnd.choice(["C1", "C2", " C3", "N/A", f"C{rnd.randrange(40)}"]) for _ in range(n)])
        elif name.startswith("total_"):
            cols[name] = _pick(_AMOUNTS, n, s)
        elif name == "drug_code":
            cols[name] = _pick(_NDC, n, s)
        elif name == "drug_name":
            cols[name] = _pick(_DRUGS, n, s)
        elif "icd" in name or "procedure" in name or name.startswith("cpt_mod"):
            cols[name] = _pick(_CODES, n, s)
        else:
            cols[name] = _pick(_VOCAB, n, s)
    cols["_source_file"] = _pick([f"{dataset}_Q1{year}", f"{dataset}_Q2{year}"], n, seed + 7)
    cols["_source_line"] = pa.array(range(2, n + 2), pa.int64())
    cols["age_imputed"] = pa.array([rnd.choice([None, *range(0, 100, 7)]) for _ in range(n)], pa.int16())
    for k, (name, vocab) in enumerate(
        [
            ("gender_imputed", ["M", "F"]),
            ("race_imputed", ["01", "02", "09"]),
            ("zip_imputed", ["10001", "02139"]),
            ("county_imputed", ["36061 - NEW YORK", "36047 - KINGS"]),
            ("payer_imputed", ["1 - COMMERCIAL", "2 - MEDICAID"]),
        ]
    ):
        cols[name] = _pick(vocab, n, seed + 8 + k)
    for k, name in enumerate(SOURCES):
        labels = ["original", "imputed_from_pharmacy", "imputed_from_medical", "unresolved"]
        cols[name] = _pick(labels, n, seed + 20 + k)
    schema = silver_schema(dataset)  # type: ignore[arg-type]
    table = pa.table(cols).select(schema.names).cast(schema)
    n_dup = int(n * dup_rate)
    if n_dup:
        dups = table.take(pa.array([rnd.randrange(n) for _ in range(n_dup)], pa.int64())).to_pydict()
        for i in range(n_dup):
            dups["_source_file"][i] = f"{dataset}_Q3{year}"
            dups["_source_line"][i] = 2 + i
            r = rnd.random()
            if r < 0.25 and dups["mi_person_key"][i] not in _NULL_KEYS:
                dups["mi_person_key"][i] = _variant(dups["mi_person_key"][i].strip(" \t\r\n"), rnd)
            elif r < 0.5:
                dups["claim_id"][i] = (dups["claim_id"][i] or "") + "  "
        table = pa.concat_tables([table, pa.table(dups, schema=schema)])
    return silver_sorted(table)


def silver_sorted(table: pa.Table) -> pa.Table:
    order = pc.sort_indices(table, sort_keys=[(k, "ascending") for k in SILVER_ORDER])
    return table.take(order).combine_chunks()


def silver_rows(dataset: str, rows: list[dict[str, Any]]) -> pa.Table:
    """A silver table from partial rows (unspecified cells get plausible defaults), raw-sorted."""
    defaults: dict[str, Any] = {
        "incurred_date": "20190115",
        "claim_id": "C1",
        "_source_file": "f1",
        "age_imputed": 70,
        "gender_imputed": "F",
        "race_imputed": "01",
        "zip_imputed": "10001",
        "county_imputed": "36061 - NEW YORK",
        "payer_imputed": "1 - COMMERCIAL",
        **dict.fromkeys(SOURCES, "original"),
    }
    schema = silver_schema(dataset)  # type: ignore[arg-type]
    data: dict[str, list[Any]] = {}
    for f in schema:
        if f.name == "_source_line":
            data[f.name] = [r.get("_source_line", i + 2) for i, r in enumerate(rows)]
        else:
            data[f.name] = [r.get(f.name, defaults.get(f.name)) for r in rows]
    return silver_sorted(pa.table(data, schema=schema))


def write_silver(
    lake: Path, dataset: str, band: str, year: int, table: pa.Table, *, row_group_size: int = 10_000
) -> Path:
    path = Path(paths.silver_object(lake.as_uri(), dataset, band, year).removeprefix("file://"))
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group_size, compression="zstd")
    return path


def gold_path(lake: Path, dataset: str, band: str, year: int) -> Path:
    return Path(paths.gold_object(lake.as_uri(), dataset, band, year).removeprefix("file://"))


# ================================================================================================
# running


def write_spec(tmp: Path, lake: Path, stages: list[dict[str, Any]], name: str = "cln", **extra: Any) -> Path:
    return local_spec(tmp, lake, stages, name, **extra)


def run(path: Path) -> tuple[int, Runner]:
    return run_spec(path)


def summary(lake: Path, script: str, run_id: str) -> dict[str, Any]:
    return json.loads((lake / "pgx_pipeline" / script / f"run_id={run_id}" / "summary.json").read_text())


def mtimes(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*.parquet")}


PHARMACY = {"use": "clean-pharmacy"}
MEDICAL = {"use": "clean-medical"}
CELLS = [("65-74", 2019), ("unknown", 2019), ("25-44", 2018)]


def one_shot_bytes(silver: pa.Table, dataset: str, drug_map: Any = None, row_group_rows: int | None = None) -> bytes:
    """Gold bytes of the whole partition cleaned in one call (the reference for streaming)."""
    buf = io.BytesIO()
    kw = {} if row_group_rows is None else {"row_group_rows": row_group_rows}
    writer = GoldWriter(buf, gold_schema(dataset), **kw)  # type: ignore[arg-type]
    writer.write(clean_partition(silver, dataset, drug_map).table)  # type: ignore[arg-type]
    writer.close()
    return buf.getvalue()


def streamed(
    path: Path, dataset: str, chunk_rows: int, drug_map: Any = None, row_group_rows: int | None = None
) -> tuple[bytes, dict[str, int]]:
    buf = io.BytesIO()
    kw = {} if row_group_rows is None else {"row_group_rows": row_group_rows}
    writer = GoldWriter(buf, gold_schema(dataset), **kw)  # type: ignore[arg-type]
    with path.open("rb") as f:
        counts = clean_stream(pq.ParquetFile(f), dataset, drug_map, chunk_rows=chunk_rows, emit=writer.write)  # type: ignore[arg-type]
    writer.close()
    return buf.getvalue(), counts


# ================================================================================================
# stage behaviour through the runner


def test_gold_schema_values_stats_and_conservation(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    silvers = {}
    for ds in ("pharmacy", "medical"):
        for i, (band, year) in enumerate(CELLS[:2]):
            silvers[ds, band] = make_silver(ds, 300, seed=10 + i, year=year)
            write_silver(lake, ds, band, year, silvers[ds, band], row_group_size=128)
    code, runner = run(write_spec(tmp_path, lake, [PHARMACY, MEDICAL], partitions={"years": [2019]}))
    assert code == 0
    for ds, script, tx in (("pharmacy", "clean_pharmacy", "clnph"), ("medical", "clean_medical", "clnmd")):
        doc = summary(lake, script, runner.run_id)
        assert doc["tx"] == tx and doc["status"] == "success" and doc["plugin"]["name"] == "pgx-clean"
        expected_stats = {"duplicates_removed", "invalid_amount"} | ({"ndc_invalid"} if ds == "pharmacy" else set())
        assert set(doc["stats"]) == expected_stats
        assert doc["totals"]["completed"] == 2 and doc["totals"]["rows_quarantined"] == 0
        assert doc["totals"]["rows_in"] == doc["totals"]["rows_out"] + doc["stats"]["duplicates_removed"]
        for ent in doc["entities"]:
            assert set(ent["stats"]) == expected_stats
            assert ent["rows_in"] == ent["rows_out"] + ent["stats"]["duplicates_removed"]
            assert ent["stats"]["duplicates_removed"] > 0 and ent["stats"]["invalid_amount"] > 0
        for band, year in CELLS[:2]:
            gold = pq.read_table(gold_path(lake, ds, band, year))
            assert pq.ParquetFile(gold_path(lake, ds, band, year)).schema_arrow == gold_schema(ds)  # type: ignore[arg-type]
            assert gold.equals(clean_partition(silvers[ds, band], ds).table)  # type: ignore[arg-type]
            assert "age_band" not in gold.column_names and "event_year" not in gold.column_names
    ids = sorted(e["entity"] for e in summary(lake, "clean_medical", runner.run_id)["entities"])
    assert ids == [
        "local__medical__age_band=65-74__event_year=2019",
        "local__medical__age_band=unknown__event_year=2019",
    ]


def test_only_the_runs_partitions_are_cleaned_and_the_rest_left_alone(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    for i, (band, year) in enumerate(CELLS):
        write_silver(lake, "pharmacy", band, year, make_silver("pharmacy", 60, seed=i, year=year))
    other = gold_path(lake, "pharmacy", "25-44", 2018)
    other.parent.mkdir(parents=True)
    other.write_bytes(b"an older gold object this run must not touch")
    before = other.stat().st_mtime_ns
    spec = write_spec(tmp_path, lake, [PHARMACY], partitions={"years": [2019], "ageBands": ["65-74", "25-44"]})
    code, runner = run(spec)
    assert code == 0
    doc = summary(lake, "clean_pharmacy", runner.run_id)
    assert [e["entity"] for e in doc["entities"]] == ["local__pharmacy__age_band=65-74__event_year=2019"]
    assert gold_path(lake, "pharmacy", "65-74", 2019).exists()
    assert not gold_path(lake, "pharmacy", "unknown", 2019).exists()  # band not in the run
    assert other.read_bytes() == b"an older gold object this run must not touch"
    assert other.stat().st_mtime_ns == before
    assert doc["backups"] == []


def test_rerun_skips_and_a_changed_partition_reruns_alone_with_backup(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    silvers = {}
    for i, (band, year) in enumerate(CELLS):
        silvers[band] = make_silver("medical", 80, seed=i, year=year)
        write_silver(lake, "medical", band, year, silvers[band])
    spec = write_spec(tmp_path, lake, [MEDICAL], partitions={"years": [2018, 2019]})
    assert run(spec)[0] == 0
    gold_root = lake / "gold"
    snapshot = mtimes(gold_root)
    assert len(snapshot) == 3
    files_before = sorted(p for p in lake.rglob("*") if p.is_file() and "pgx_pipeline" not in p.parts)

    code, again = run(spec)
    assert code == 0
    doc = summary(lake, "clean_medical", again.run_id)
    assert doc["totals"]["skipped"] == 3 and doc["totals"]["completed"] == 0 and doc["backups"] == []
    assert mtimes(gold_root) == snapshot
    files_after = sorted(p for p in lake.rglob("*") if p.is_file() and "pgx_pipeline" not in p.parts)
    assert [p for p in files_after if p not in files_before and "_state" not in p.parts] == []

    target = gold_path(lake, "medical", "unknown", 2019)
    old_gold = target.read_bytes()
    changed = silvers["unknown"].slice(0, 70)
    write_silver(lake, "medical", "unknown", 2019, changed)
    code, third = run(spec)
    assert code == 0
    doc = summary(lake, "clean_medical", third.run_id)
    assert doc["totals"]["completed"] == 1 and doc["totals"]["skipped"] == 2
    [ent] = [e for e in doc["entities"] if e["status"] == "completed"]
    assert ent["entity"] == "local__medical__age_band=unknown__event_year=2019" and ent["rows_in"] == 70
    assert [p for p, m in snapshot.items() if p.stat().st_mtime_ns != m] == [target]
    [prefix] = doc["backups"]
    backup = Path(prefix.removeprefix("file://")) / target.relative_to(lake)
    assert backup.read_bytes() == old_gold
    assert pq.read_table(target).equals(clean_partition(changed, "medical").table)


def _fake_impute_state(lake: Path, dataset: str, band: str, year: int) -> None:
    """What impute records for a silver partition it produced (its state, pipeline global_imputation)."""
    uri = paths.silver_object(lake.as_uri(), dataset, band, year)
    entity = paths.safe_id(dataset, f"age_band={band}", f"event_year={year}")
    state_entity = paths.state_entity(lake.as_uri(), entity)
    store = LocalStore()
    st = PipelineState(
        pipeline_name="global_imputation",
        entity_id=state_entity,
        status="completed",
        outputs=[{"uri": uri, "checksum": sha256_of(store, uri), "rows": 1, "etag": store.head(uri).etag}],  # type: ignore[list-item, union-attr]
    )
    store.write_bytes(paths.state_object(f"{lake.as_uri()}/_state", "global_imputation", state_entity), st.to_bytes())


def _clean_state(lake: Path, dataset: str, band: str, year: int) -> dict[str, Any]:
    entity = paths.safe_id("local", dataset, f"age_band={band}", f"event_year={year}")
    path = Path(paths.state_object(f"{lake.as_uri()}/_state", f"clean_{dataset}", entity).removeprefix("file://"))
    return dict(json.loads(path.read_text()))


def test_silver_is_fingerprinted_by_what_impute_produced(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    for i, (band, year) in enumerate(CELLS[:2]):
        write_silver(lake, "pharmacy", band, year, make_silver("pharmacy", 50, seed=i, year=year))
    _fake_impute_state(lake, "pharmacy", "65-74", 2019)  # "unknown" has no impute record: etag fallback
    spec = write_spec(tmp_path, lake, [PHARMACY], partitions={"years": [2019]})
    assert run(spec)[0] == 0
    assert _clean_state(lake, "pharmacy", "65-74", 2019)["input_fingerprint"].startswith("imputed=sha256:")
    assert _clean_state(lake, "pharmacy", "unknown", 2019)["input_fingerprint"].startswith("etag=")
    # Impute rewrites both partitions with the same bytes (new etags): only the one without a
    # record of what impute produced is cleaned again.
    for band, year in CELLS[:2]:
        p = Path(paths.silver_object(lake.as_uri(), "pharmacy", band, year).removeprefix("file://"))
        data = p.read_bytes()
        p.unlink()
        p.write_bytes(data)
        os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10**9))
    code, again = run(spec)
    assert code == 0
    doc = summary(lake, "clean_pharmacy", again.run_id)
    done = {e["entity"]: e["status"] for e in doc["entities"]}
    assert done == {
        "local__pharmacy__age_band=65-74__event_year=2019": "skipped",
        "local__pharmacy__age_band=unknown__event_year=2019": "completed",
    }


def _write_map(path: Path, entries: dict[str, str] | str) -> str:
    path.write_text(entries if isinstance(entries, str) else json.dumps(entries))
    return path.as_uri()


def test_invalid_drug_map_is_a_spec_error_naming_the_keys(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    lake.mkdir()
    bad = _write_map(
        tmp_path / "map.json",
        {"Tylenol": "acetaminophen", "TYLENOL ": "paracetamol", "oxy": "oxycodone", "oxycodone": "oxycodone_hcl"},
    )
    spec = write_spec(tmp_path, lake, [MEDICAL, {"use": "clean-pharmacy", "with": {"drugMap": bad}}])
    with pytest.raises(SpecError) as err:
        load_spec(spec, make_plugin_manager().registry)
    keys = {p.path for p in err.value.problems}
    assert keys == {"spec.stages[1].with.drugMap"}
    text = str(err.value)
    assert "'Tylenol', 'TYLENOL '" in text and "collide" in text
    assert "chain: key 'oxy'" in text and "'oxycodone'" in text
    proc = pgx("validate", str(spec))
    assert proc.returncode == 64, proc.stderr
    out = proc.stdout + proc.stderr
    assert "spec.stages[1].with.drugMap" in out and "'TYLENOL '" in out and "'oxy'" in out
    # A missing map, a repeated raw key and a non-object are reported the same way.
    for content, needle in (
        (None, "no object at"),
        ('{"a": "x", "a": "y"}', "key 'a' appears more than once"),
        ("[1, 2]", "must be a JSON object"),
        ("{", "not valid JSON"),
    ):
        target = tmp_path / "other.json"
        target.unlink(missing_ok=True)
        if content is not None:
            target.write_text(content)
        spec = write_spec(tmp_path, lake, [{"use": "clean-pharmacy", "with": {"drugMap": target.as_uri()}}])
        with pytest.raises(SpecError) as err:
            load_spec(spec, make_plugin_manager().registry)
        assert [p.path for p in err.value.problems] == ["spec.stages[0].with.drugMap"] and needle in str(err.value)


def test_a_new_drug_map_reruns_pharmacy_partitions_only(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    for ds in ("pharmacy", "medical"):
        write_silver(lake, ds, BAND, YEAR, make_silver(ds, 60, seed=4))
    drug_map = tmp_path / "drug_map.json"
    uri = _write_map(drug_map, {"Tylenol": "acetaminophen"})
    spec = write_spec(tmp_path, lake, [{"use": "clean-pharmacy", "with": {"drugMap": uri}}, MEDICAL])
    assert run(spec)[0] == 0
    gold = gold_path(lake, "pharmacy", BAND, YEAR)
    names = set(pq.read_table(gold)["standardized_drug_name"].to_pylist())
    assert "acetaminophen" in names and "tylenol" not in names
    first_fp = _clean_state(lake, "pharmacy", BAND, YEAR)["config_fingerprint"]

    code, same = run(spec)  # same map content: nothing to do
    assert code == 0 and summary(lake, "clean_pharmacy", same.run_id)["totals"]["skipped"] == 1

    _write_map(drug_map, {"Tylenol": "apap", "OXYCODONE HCL": "oxycodone"})
    code, again = run(spec)
    assert code == 0
    assert summary(lake, "clean_pharmacy", again.run_id)["totals"]["completed"] == 1
    assert summary(lake, "clean_medical", again.run_id)["totals"]["skipped"] == 1
    names = set(pq.read_table(gold)["standardized_drug_name"].to_pylist())
    assert {"apap", "oxycodone"} <= names and "acetaminophen" not in names
    assert _clean_state(lake, "pharmacy", BAND, YEAR)["config_fingerprint"] != first_fp


def test_streaming_path_through_the_runner_writes_the_same_gold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    silver = make_silver("pharmacy", 700, seed=21)
    small, big = tmp_path / "small", tmp_path / "big"
    for lake in (small, big):
        write_silver(lake, "pharmacy", BAND, YEAR, silver, row_group_size=64)
    assert run(write_spec(tmp_path, big, [PHARMACY], name="one-shot"))[0] == 0
    calls: list[int] = []

    def tiny(budget_mb: int, row_bytes: float) -> int:
        calls.append(budget_mb)
        return 90

    monkeypatch.setattr(clean_stage, "plan_chunk_rows", tiny)
    spec = write_spec(tmp_path, small, [PHARMACY], name="streamed", executor={"type": "local", "memoryBudgetMb": 64})
    code, runner = run(spec)
    assert code == 0 and calls == [64]
    ent = summary(small, "clean_pharmacy", runner.run_id)["entities"][0]
    assert ent["rows_in"] == silver.num_rows == ent["rows_out"] + ent["stats"]["duplicates_removed"]
    streamed_gold = gold_path(small, "pharmacy", BAND, YEAR).read_bytes()
    assert streamed_gold == gold_path(big, "pharmacy", BAND, YEAR).read_bytes()


def test_canary_member_key_never_leaves_the_data_objects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lake = tmp_path / "lake"
    write_silver(lake, "pharmacy", BAND, YEAR, make_silver("pharmacy", 120, seed=5, plant=CANARY))
    unsorted = make_silver("medical", 120, seed=6, plant=CANARY)
    write_silver(lake, "medical", BAND, YEAR, unsorted.take(pa.array(list(range(119, -1, -1)))))
    sink = io.StringIO()
    handler = logging.StreamHandler(sink)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("pgx")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    monkeypatch.setattr(clean_stage, "plan_chunk_rows", lambda *_: 40)
    try:
        code, runner = run(write_spec(tmp_path, lake, [PHARMACY, MEDICAL]))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    # Unsorted silver is a data error on the streaming path (never silently wrong gold).
    assert code == 2
    assert summary(lake, "clean_pharmacy", runner.run_id)["status"] == "success"
    [ent] = summary(lake, "clean_medical", runner.run_id)["entities"]
    assert ent["status"] == "failed" and "not sorted by mi_person_key" in ent["error"]
    assert not gold_path(lake, "medical", BAND, YEAR).exists()
    assert CANARY in pq.read_table(gold_path(lake, "pharmacy", BAND, YEAR))["mi_person_key"].to_pylist()
    texts = [p.read_text() for p in (lake / "pgx_pipeline").rglob("*.json")]
    texts += [p.read_text() for p in (lake / "_state").rglob("*.json")]
    assert sink.getvalue() and texts
    for text in [sink.getvalue(), *texts]:
        assert CANARY not in text and CANARY.lstrip("0") not in text


def test_empty_silver_partition_gives_an_empty_gold_object(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    write_silver(lake, "medical", BAND, YEAR, silver_schema("medical").empty_table())
    code, runner = run(write_spec(tmp_path, lake, [MEDICAL]))
    assert code == 0
    gold = pq.read_table(gold_path(lake, "medical", BAND, YEAR))
    assert gold.num_rows == 0 and gold.schema == gold_schema("medical")
    ent = summary(lake, "clean_medical", runner.run_id)["entities"][0]
    assert ent["rows_in"] == ent["rows_out"] == 0


def test_conservation_gate_is_the_spec_6_4_identity(tmp_path: Path) -> None:
    from pgx_core.errors import ConservationError
    from pgx_core.stage import Entity, EntityResult

    spec = write_spec(tmp_path, tmp_path, [MEDICAL])
    plugins = make_plugin_manager()
    runner = Runner(load_spec(spec, plugins.registry), plugins)
    stage = runner.stage(runner.stages[0])
    ent = Entity("medical__age_band=65-74__event_year=2019", "x")
    stage.check(ent, EntityResult(rows_in=10, rows_out=7, stats={"duplicates_removed": 3}))
    for bad in (
        EntityResult(rows_in=10, rows_out=7, stats={"duplicates_removed": 2}),
        EntityResult(rows_in=10, rows_out=7, rows_out_of_scope=3),  # the default identity is not enough
        EntityResult(rows_in=10, rows_out=7, rows_quarantined=1, stats={"duplicates_removed": 2}),
    ):
        with pytest.raises(ConservationError, match="silver rows 10 != gold rows 7"):
            stage.check(ent, bad)


# ================================================================================================
# the memory-bounded path


@pytest.mark.parametrize(
    ("dataset", "rows", "chunk", "row_group"),
    [("pharmacy", 900, 97, 50), ("pharmacy", 900, 400, 333), ("medical", 700, 230, 64)],
)
def test_streaming_is_byte_identical_to_one_shot(
    tmp_path: Path, dataset: str, rows: int, chunk: int, row_group: int
) -> None:
    silver = make_silver(dataset, rows, seed=rows + chunk, odd_rate=0.05)
    path = write_silver(tmp_path, dataset, BAND, YEAR, silver, row_group_size=row_group)
    assert pq.ParquetFile(path).metadata.num_rows > chunk  # really the streaming path
    reference = one_shot_bytes(silver, dataset, row_group_rows=128)
    got, counts = streamed(path, dataset, chunk, row_group_rows=128)
    assert got == reference
    assert counts == clean_partition(silver, dataset).stats  # type: ignore[arg-type]
    assert pq.ParquetFile(io.BytesIO(got)).metadata.num_row_groups == -(-counts["rows_out"] // 128)


def test_untrimmed_member_keys_keep_global_order_and_dedup(tmp_path: Path) -> None:
    """Rows whose raw key is not trimmed sit elsewhere in silver; gold is still exact."""
    amount = "total_amount_paid" if "total_amount_paid" in columns("pharmacy") else next(
        c for c in columns("pharmacy") if c.startswith("total_")
    )
    rows = [
        {"mi_person_key": "099", "claim_id": "A"},
        {"mi_person_key": "100", "claim_id": "A", amount: "1"},
        {"mi_person_key": "100", "claim_id": "B"},
        {"mi_person_key": " 100", "claim_id": "A ", amount: "1", "_source_file": "f0"},  # dup of row 2, kept
        {"mi_person_key": "100\t", "claim_id": "B", "_source_file": "f2"},  # dup of row 3, removed
        {"mi_person_key": "100 ", "claim_id": "C", "incurred_date": "20190101"},
        {"mi_person_key": "101", "claim_id": "A"},
        {"mi_person_key": "1000", "claim_id": "A"},
        {"mi_person_key": "\t1000", "claim_id": "Z"},
        {"mi_person_key": "N/A", "claim_id": "A"},
        {"mi_person_key": " null", "claim_id": "A", "_source_file": "f3"},  # NULL key, dup of the N/A row
        {"mi_person_key": "NULL", "claim_id": "B"},
        {"mi_person_key": "102", "claim_id": "A"},
        {"mi_person_key": " 098", "claim_id": "A"},
    ]
    silver = silver_rows("pharmacy", rows)
    raw_keys = silver["mi_person_key"].to_pylist()
    assert raw_keys.index(" 100") < raw_keys.index("099") < raw_keys.index("100")  # far from their members
    path = write_silver(tmp_path, "pharmacy", BAND, YEAR, silver, row_group_size=2)
    reference = one_shot_bytes(silver, "pharmacy", row_group_rows=4)
    for chunk in (1, 2, 3, 5):
        got, counts = streamed(path, "pharmacy", chunk, row_group_rows=4)
        assert got == reference, chunk
        assert counts["duplicates_removed"] == 3 and counts["rows_out"] == len(rows) - 3
    gold = pq.read_table(io.BytesIO(reference))
    assert gold["mi_person_key"].to_pylist() == [
        "098", "099", "100", "100", "100", "1000", "1000", "101", "102", None, None,
    ]
    kept = list(zip(gold["mi_person_key"].to_pylist(), gold["_source_file"].to_pylist(), strict=True))
    assert ("100", "f0") in kept and ("100", "f2") not in kept and (None, "f3") not in kept


def test_keys_that_normalize_to_null_alone_go_last(tmp_path: Path) -> None:
    rows = [{"mi_person_key": k, "claim_id": c} for k, c in
            [("01", "A"), ("N/A", "A"), ("02", "A"), ("null", "A"), ("", "B"), ("03", "A"), ("01", "B")]]
    silver = silver_rows("pharmacy", rows)
    path = write_silver(tmp_path, "pharmacy", BAND, YEAR, silver, row_group_size=2)
    got, counts = streamed(path, "pharmacy", 2, row_group_rows=3)
    assert got == one_shot_bytes(silver, "pharmacy", row_group_rows=3)
    assert counts["duplicates_removed"] == 1  # N/A and null: the same (NULL) member, same claim
    assert pq.read_table(io.BytesIO(got))["mi_person_key"].to_pylist() == ["01", "01", "02", "03", None, None]


KEY_SPELLINGS = ["01", "02", "10", "2", " 01", "02\t", "10 ", "N/A", " null"]


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(
    keys=st.lists(st.sampled_from(KEY_SPELLINGS), min_size=4, max_size=14),
    dup_picks=st.lists(st.integers(0, 15), max_size=6),
    chunk=st.integers(1, 6),
    row_group=st.integers(1, 5),
)
def test_duplicates_share_the_trimmed_key_so_chunks_never_split_them(
    tmp_path: Path, keys: list[str], dup_picks: list[int], chunk: int, row_group: int
) -> None:
    """Duplicates compare the normalized key (a layout column), so whole-member chunks hold all
    copies of a row, whatever the raw spelling of the key: streamed counts and bytes equal one-shot."""
    rows = [{"mi_person_key": k, "claim_id": f"C{i % 3}", "_source_line": i + 2} for i, k in enumerate(keys)]
    for j, pick in enumerate(dup_picks):
        src = dict(rows[pick % len(keys)])
        src["_source_file"], src["_source_line"] = "f9", 100 + j
        base = src["mi_person_key"].strip(" \t")
        if base.upper() not in {"N/A", "NULL"}:
            src["mi_person_key"] = [base, " " + base, base + "\t"][j % 3]  # same member, other spelling
        rows.append(src)
    silver = silver_rows("pharmacy", rows)
    one = clean_partition(silver, "pharmacy")

    def norm(v: str) -> str | None:
        v = v.strip(" \t")
        return None if v.upper() in {"", "N/A", "NULL"} else v

    # Only the member key and claim id vary: duplicates are the rows sharing both, normalized.
    classes = {(norm(r["mi_person_key"]), r["claim_id"]) for r in rows}
    assert one.stats["duplicates_removed"] == len(rows) - len(classes)
    path = tmp_path / f"s{chunk}_{row_group}_{len(rows)}.parquet"
    pq.write_table(silver, path, row_group_size=row_group)
    got, counts = streamed(path, "pharmacy", chunk, row_group_rows=3)
    assert counts == one.stats
    assert got == one_shot_bytes(silver, "pharmacy", row_group_rows=3)


# Runs in a fresh interpreter so that the Arrow pool's high-water mark is this clean's alone.
_PEAK_PROBE = """
import sys, pyarrow as pa, pyarrow.parquet as pq
from pgx_clean.rules import gold_schema
from pgx_clean.stage import GoldWriter, clean_stream

class Discard:
    closed = False
    def write(self, data): return len(memoryview(data))
    def flush(self): pass
    def close(self): pass

path, dataset, chunk = sys.argv[1], sys.argv[2], int(sys.argv[3])
writer = GoldWriter(Discard(), gold_schema(dataset), row_group_rows=500)
with open(path, "rb") as f:
    clean_stream(pq.ParquetFile(f), dataset, None, chunk_rows=chunk, emit=writer.write)
writer.close()
print(pa.default_memory_pool().max_memory())
"""


def _peak(path: Path, dataset: str, chunk: int) -> int:
    proc = subprocess.run(
        [sys.executable, "-c", _PEAK_PROBE, str(path), dataset, str(chunk)], capture_output=True, text=True, check=True
    )
    return int(proc.stdout)


def test_streaming_peak_memory_follows_the_chunk_not_the_partition(tmp_path: Path) -> None:
    silver = make_silver("pharmacy", 12_000, seed=8, odd_rate=0.002)
    path = write_silver(tmp_path, "pharmacy", BAND, YEAR, silver, row_group_size=500)
    whole = _peak(path, "pharmacy", 10**9)
    chunked = _peak(path, "pharmacy", 1000)
    assert whole > silver.nbytes  # the one-shot path holds the whole partition (and more)
    assert chunked < whole / 3, (chunked, whole)


def test_a_chunk_never_holds_more_rows_than_planned_unless_one_member_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The buffer is cut at the last member boundary within the chunk's rows, not before the last
    buffered member: reads arrive a quarter chunk at a time, and cutting after them let a chunk
    reach 1.25 x its planned rows (its memory with it). Same bytes either way."""
    silver = make_silver("pharmacy", 6_000, seed=9, odd_rate=0.002)
    path = write_silver(tmp_path, "pharmacy", BAND, YEAR, silver, row_group_size=1_000)
    sizes: list[int] = []
    real = clean_stage.clean_partition

    def spy(table: pa.Table, *args: Any, **kwargs: Any) -> Any:
        sizes.append(table.num_rows)
        return real(table, *args, **kwargs)

    monkeypatch.setattr(clean_stage, "clean_partition", spy)
    got, _ = streamed(path, "pharmacy", 1_000)
    plain = sizes[1:] if len(sizes) > 1 and sizes[0] < 100 else sizes  # (the aside rows come first)
    members = max(pc.value_counts(silver["mi_person_key"]).field("counts").to_pylist())
    assert len(plain) >= 6 and max(plain) <= 1_000 and members < 1_000
    assert sum(sizes) == silver.num_rows
    monkeypatch.setattr(clean_stage, "clean_partition", real)
    assert got == one_shot_bytes(silver, "pharmacy")


def test_chunk_size_fits_the_budget() -> None:
    # 2 GiB, 1 KB rows: two 64 Ki-row gold row groups reserved, the rest holds 3 copies of a chunk.
    assert plan_chunk_rows(2048, 1000.0) == int((2048 * 2**20 - 2 * 65_536 * 1000) / 3000)
    assert plan_chunk_rows(64, 5000.0) == clean_stage.MIN_CHUNK_ROWS  # tiny budget: fixed floor
    assert plan_chunk_rows(2048, 0.0) > 10**8  # empty sample: one chunk


def test_no_silver_or_silver_in_a_layout_pgx_does_not_read_is_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lake = tmp_path / "lake"
    lake.mkdir()
    code, runner = run(write_spec(tmp_path, lake, [PHARMACY], name="none"))
    assert code == 2
    prefix = f"{lake.as_uri()}/silver/imputed/pharmacy/"
    assert (
        summary(lake, "clean_pharmacy", runner.run_id)["error"]
        == f"clean-pharmacy (silver) found no object under {prefix}"
    )
    # Silver written by another tool, partitioned differently: never silently "nothing to do".
    odd = lake / "silver" / "imputed" / "pharmacy" / "2019" / "part-0.parquet"
    odd.parent.mkdir(parents=True)
    pq.write_table(make_silver("pharmacy", 10, seed=1, year=2019), odd)
    code, runner = run(write_spec(tmp_path, lake, [PHARMACY], name="odd"))
    assert code == 2
    error = summary(lake, "clean_pharmacy", runner.run_id)["error"]
    assert "found 1 objects under" in error and "age_band=<band>/event_year=<year>/pharmacy_data.parquet" in error
    assert "2019/part-0.parquet" in error and not (lake / "gold").exists()
    # Beside readable partitions, what pgx does not read is named in the log, and left alone.
    write_silver(lake, "pharmacy", "65-74", 2019, make_silver("pharmacy", 20, seed=2, year=2019))
    with caplog.at_level("WARNING", logger="pgx"):
        code, _ = run(write_spec(tmp_path, lake, [PHARMACY], name="mixed"))
    assert code == 0 and gold_path(lake, "pharmacy", "65-74", 2019).exists()
    [warning] = [r for r in caplog.records if getattr(r, "event", "") == "objects_not_read"]
    assert warning.count == 1 and warning.example == "2019/part-0.parquet"  # type: ignore[attr-defined]
