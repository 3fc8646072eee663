"""Benchmark: ``pgx_clean.rules.clean_partition`` vs DuckDB doing the same work in SQL.

Generates realistic synthetic silver partitions in memory (sorted as impute writes them, with
padded values, ``N/A`` sentinels, dotted/lower-case codes, NDCs in every form, ~1% exact
duplicates, some differing only in whitespace or in imputed values), then times

* pgx: ``clean_partition`` (Arrow in, Arrow out);
* DuckDB: one SQL statement with the same projection, normalization, casts, duplicate removal
  (``QUALIFY row_number() OVER (PARTITION BY <every layout column> ...)``), NDC and drug-name
  rules, drug-map join and sort, read from and returned as Arrow.

Both outputs are compared cell by cell, so the benchmark doubles as a cross-check of the rules
against an independent SQL formulation. Usage::

    PYTHONPATH=.:plugins .venv/bin/python benchmarks/bench_clean_rules.py --rows 1000000
"""

from __future__ import annotations

import argparse
import resource
import time
from collections.abc import Callable
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from pgx_apcd.layout import columns
from pgx_clean.rules import (
    Dataset,
    DrugMap,
    amount_columns,
    clean_partition,
    gold_schema,
    load_drug_map,
    medical_code_columns,
    silver_schema,
)

# --------------------------------------------------------------------------------------------
# synthetic silver


def _rand_ints(n: int, card: int, seed: int) -> pa.Array:
    return pc.cast(pc.floor(pc.multiply(pc.random(n, initializer=seed), card)), pa.int64())


def _chance(n: int, p: float, seed: int) -> pa.Array:
    return pc.less(pc.random(n, initializer=seed), p)


def _pick(vocab: list[str], n: int, seed: int) -> pa.Array:
    return pa.array(vocab, pa.string()).take(_rand_ints(n, len(vocab), seed))


_ICD = [f"{chr(65 + i % 26)}{i % 90 + 10}{j}" for i in range(260) for j in ("", "0", "1", "9", "20", "X1")]
_DRUGS = [
    f"{base} {salt}".strip()
    for base in (
        "ACETAMINOPHEN", "HYDRALAZINE", "OXYCODONE", "IBUPROFEN", "ATORVASTATIN", "LISINOPRIL",
        "METFORMIN", "AMOXICILLIN", "SERTRALINE", "GABAPENTIN", "TRAMADOL", "BUPRENORPHINE",
    )
    for salt in ("", "HYDROCHLORIDE", "HCL", "SODIUM", "5%/CODEINE", "+ NALOXONE", "ER 24HR")
]


def _column_values(name: str, n: int, claim: pa.Array | None, n_claims: int, seed: int) -> pa.Array:
    """Plausible values for one layout column; claim-level columns repeat across a claim's lines."""
    line_level = claim is None or any(
        k in name for k in ("procedure", "revenue", "cpt_mod", "total_", "place_of_service", "hcg_")
    )
    m = n if line_level else n_claims
    if name.startswith("total_"):
        cents = _rand_ints(m, 500_000, seed)
        vals = pc.binary_join_element_wise(
            pc.cast(pc.divide(cents, 100), pa.string()), pc.cast(pc.remainder(cents, 100), pa.string()), "."
        )
        vals = pc.if_else(_chance(m, 0.2, seed + 1), pa.scalar(".00"), vals)
        vals = pc.if_else(_chance(m, 0.001, seed + 2), pa.scalar("1,000.00"), vals)
    elif name.endswith("icd_diagnosis_code"):
        vals = _pick([*_ICD, "F11.20", "f1120", "J690 - PNEUMONITIS", "Unknown"], m, seed)
        vals = pc.if_else(_chance(m, 0.3 if not name.startswith("primary") else 0.0, seed + 1), None, vals)
    elif name.endswith("icd_procedure_code"):
        vals = pc.if_else(_chance(m, 0.9, seed + 1), None, _pick([f"0{i:05d}" for i in range(300)], m, seed))
    elif name in ("procedure_code",):
        vals = _pick([f"{99200 + i}" for i in range(400)] + ["j1100", "G0008"], m, seed)
    elif name.startswith("cpt_mod"):
        vals = _pick(["N/A"] * 8 + ["25", "59", "lt", "RT"], m, seed)
    elif name == "drug_code":
        vals = _pick(
            [f"{i:05d}{j:04d}{k:02d}" for i in range(40) for j in range(20) for k in range(3)]
            + ["12345-6789-01", "1234-5678-90", "12345-678-90", "12345-6789-1", "BAD", "N/A"],
            m,
            seed,
        )
    elif name in ("drug_name", "gpi_generic_name"):
        vals = _pick([*_DRUGS, *(d.lower() for d in _DRUGS), "N/A"], m, seed)
    elif name.endswith(("_desc", "_name")) or name.startswith("therapeutic"):
        vals = _pick([f"DESCRIPTION OF THING NUMBER {i}" for i in range(700)], m, seed)
    elif name.endswith(("_npi", "_tin")):
        vals = _pick([f"{1_000_000_000 + 7919 * i}" for i in range(20_000)], m, seed)
    elif name.endswith(("_zip", "_zip_code_dos")):
        vals = _pick([f"{10000 + 37 * i:05d}" for i in range(2000)], m, seed)
    elif name.endswith("_flag") or name == "hispanic_indicator":
        vals = _pick(["Y", "N", "U"], m, seed)
    else:
        vals = _pick([f"VAL{i:03d}" for i in range(150)] + ["N/A", " padded ", ""], m, seed)
    return vals if line_level or claim is None else vals.take(claim)


def make_silver(dataset: Dataset, rows: int, seed: int = 7, dup_rate: float = 0.01) -> pa.Table:
    """A synthetic silver partition (event year 2019) with realistic defects and duplicates."""
    base_rows = int(rows / (1 + dup_rate))
    n = base_rows
    members = max(1, n // 25)
    if dataset == "medical":
        n_claims = max(1, (n + 3) // 4)
        claim = pc.cast(pc.divide(pa.array(range(n), pa.int64()), 4), pa.int64())
    else:
        n_claims, claim = n, None
    claim_member = _rand_ints(n_claims, members, seed)
    claim_day = _rand_ints(n_claims, 365, seed + 1)
    if claim is not None:
        claim_member, claim_day = claim_member.take(claim), claim_day.take(claim)
    day = pc.add(pc.cast(pa.scalar(17897, pa.int32()), pa.date32()).cast(pa.int32()), pc.cast(claim_day, pa.int32()))
    dates = pc.strftime(pc.cast(day, pa.date32()), format="%Y%m%d")
    cols: dict[str, pa.Array] = {}
    for i, name in enumerate(columns(dataset)):
        if name == "incurred_date":
            cols[name] = dates
        elif name == "mi_person_key":
            cols[name] = pc.utf8_lpad(pc.cast(claim_member, pa.string()), width=9, padding="0")
        elif name == "claim_id":
            ids = pa.array(range(n_claims), pa.int64())
            cid = pc.binary_join_element_wise("C", pc.cast(ids, pa.string()), "")
            cols[name] = cid.take(claim) if claim is not None else cid
        elif name == "member_age_dos":
            ages = pc.cast(_rand_ints(n, 90, seed + i), pa.string())
            cols[name] = pc.if_else(_chance(n, 0.1, seed + 100 + i), "", ages)
        elif name == "member_gender":
            cols[name] = _pick(["M", "F", "U", " f", "N/A"], n, seed + i)
        else:
            cols[name] = _column_values(name, n, claim, n_claims, seed + 1000 * i)
    # padding on a few columns (trim must undo it)
    for name in ("claim_status", "payer_lob", "billing_provider_state"):
        padded = pc.binary_join_element_wise(" ", cols[name], "\t", "")
        cols[name] = pc.if_else(_chance(n, 0.05, seed + 55), padded, cols[name])
    cols["_source_file"] = pc.if_else(
        _chance(n, 0.5, seed + 3), pa.scalar(f"{dataset}_Q12019"), pa.scalar(f"{dataset}_Q22019")
    )
    cols["_source_line"] = pc.add(pa.array(range(n), pa.int64()), 2)
    age = pc.cast(_rand_ints(n, 90, seed + 4), pa.int16())
    cols["age_imputed"] = pc.if_else(_chance(n, 0.01, seed + 5), pa.scalar(None, pa.int16()), age)
    cols["gender_imputed"] = _pick(["M", "F"], n, seed + 6)
    cols["race_imputed"] = _pick(["01", "02", "03", "09"], n, seed + 7)
    cols["zip_imputed"] = _pick([f"{10000 + 37 * i:05d}" for i in range(500)], n, seed + 8)
    cols["county_imputed"] = _pick(["36061 - NEW YORK", "36047 - KINGS"], n, seed + 9)
    cols["payer_imputed"] = _pick(["1 - COMMERCIAL", "2 - MEDICAID", "3 - MEDICARE"], n, seed + 10)
    for j, f in enumerate(("age", "gender", "race", "zip", "county", "payer")):
        labels = ["original"] * 8 + ["imputed_from_pharmacy", "imputed_from_medical"]
        cols[f"{f}_source"] = _pick(labels, n, seed + 20 + j)
    table = pa.table(cols).select(silver_schema(dataset).names).cast(silver_schema(dataset))
    # duplicates: exact copies from another file, some with padding or other imputed values
    n_dup = rows - base_rows
    if n_dup > 0:
        dups = table.take(_rand_ints(n_dup, n, seed + 11))
        dups = dups.set_column(dups.schema.get_field_index("_source_file"), "_source_file",
                               pa.array([f"{dataset}_Q32019"] * n_dup, pa.string()))
        dups = dups.set_column(dups.schema.get_field_index("_source_line"), "_source_line",
                               pc.add(pa.array(range(n_dup), pa.int64()), 2))
        pad = _chance(n_dup, 0.3, seed + 12)
        i = dups.schema.get_field_index("claim_status")
        padded = pc.binary_join_element_wise(dups["claim_status"], "  ", "")
        dups = dups.set_column(i, "claim_status", pc.if_else(pad, padded, dups["claim_status"]))
        table = pa.concat_tables([table, dups])
    silver_order = ("mi_person_key", "incurred_date", "_source_file", "_source_line")  # as impute writes silver
    order = pc.sort_indices(table, sort_keys=[(k, "ascending") for k in silver_order])
    return table.take(order).combine_chunks()


def make_drug_map() -> DrugMap:
    return load_drug_map(
        {"Tylenol": "acetaminophen", "OXYCODONE HCL": "oxycodone_hydrochloride", "hcl": "hydrochloride"}
    )


# --------------------------------------------------------------------------------------------
# DuckDB formulation


# RE2 (DuckDB's regex engine too) for the ASCII trim set; faster in DuckDB than trim(x, chars).
_TRIM_RE = r"^[\x09-\x0d ]+|[\x09-\x0d ]+$"


def duckdb_sql(dataset: Dataset) -> str:
    """One SQL statement doing clean_partition's work on registered Arrow tables ``silver``, ``drug_map``."""
    layout = columns(dataset)
    demo = {
        "member_age_dos": "age_imputed", "member_gender": "gender_imputed", "member_race": "race_imputed",
        "member_zip_code_dos": "zip_imputed", "member_county_dos": "county_imputed", "payer_type": "payer_imputed",
    }
    amounts = set(amount_columns(dataset))
    upper = set(medical_code_columns()) if dataset == "medical" else set()
    strings = [*layout, *(v for v in demo.values() if v != "age_imputed")]
    sources = ", ".join(f"{f}_source" for f in ("age", "gender", "race", "zip", "county", "payer"))
    trimmed = ", ".join(f"regexp_replace({c}, '{_TRIM_RE}', '', 'g') AS {c}" for c in strings)
    nulled = ", ".join(f"CASE WHEN upper({c}) IN ('', 'N/A', 'NULL') THEN NULL ELSE {c} END AS {c}" for c in strings)
    keys = ", ".join(layout)
    select = []
    for c in layout:
        if c in demo:
            select.append(f"{demo[c]} AS {c}")
        elif c in amounts:
            select.append(
                f"CASE WHEN regexp_full_match({c}, '-?(?:0*[0-9]{{1,14}}(?:\\.[0-9]{{1,4}})?|\\.[0-9]{{1,4}})') "
                f"THEN CAST({c} AS DECIMAL(18,4)) END AS {c}"
            )
        elif c in upper:
            select.append(f"upper({c}) AS {c}")
        else:
            select.append(c)
    select += ["_source_file", "_source_line", sources, "CAST(strptime(incurred_date, '%Y%m%d') AS DATE) AS event_date"]
    joins = canon_col = ""
    if dataset == "pharmacy":
        select.append(
            "CASE WHEN regexp_full_match(drug_code, '[0-9]{11}') THEN drug_code "
            "WHEN regexp_full_match(drug_code, '[0-9]{5}-[0-9]{4}-[0-9]{2}') THEN replace(drug_code, '-', '') "
            "WHEN regexp_full_match(drug_code, '[0-9]{4}-[0-9]{4}-[0-9]{2}') THEN '0' || replace(drug_code, '-', '') "
            "WHEN regexp_full_match(drug_code, '[0-9]{5}-[0-9]{3}-[0-9]{2}') "
            "THEN regexp_replace(drug_code, '^([0-9]{5})-([0-9]{3})-([0-9]{2})$', '\\10\\2\\3') "
            "WHEN regexp_full_match(drug_code, '[0-9]{5}-[0-9]{4}-[0-9]') "
            "THEN regexp_replace(drug_code, '^([0-9]{5})-([0-9]{4})-([0-9])$', '\\1\\20\\3') END AS ndc11"
        )
        canon = (
            "nullif(trim(regexp_replace(regexp_replace(regexp_replace(lower(drug_name), '[+/]', ' ', 'g'), "
            "'[^a-z0-9.%_\\x09-\\x0d \\p{Z}-]', '', 'g'), '[\\x09-\\x0d \\p{Z}_]+', '_', 'g'), '_'), '')"
        )
        select.append("coalesce(dm.target, d.canon) AS standardized_drug_name")
        joins = "LEFT JOIN drug_map dm ON dm.variant = d.canon"
        canon_col = f", {canon} AS canon"
    # Identifiers come from the fixed layout, not from input: no injection surface.
    return f"""
    WITH t AS (SELECT {trimmed}, age_imputed, _source_file, _source_line, {sources} FROM silver),
    n AS (SELECT {nulled}, age_imputed, _source_file, _source_line, {sources} FROM t),
    k AS (SELECT min({{'f': _source_file, 'l': _source_line}}) AS m FROM n GROUP BY {keys}),
    d AS (SELECT n.*{canon_col} FROM n SEMI JOIN k ON n._source_file = k.m.f AND n._source_line = k.m.l)
    SELECT {", ".join(select)} FROM d {joins}
    ORDER BY mi_person_key, incurred_date, claim_id, _source_file, _source_line
    """  # noqa: S608


def run_duckdb(silver: pa.Table, dataset: Dataset, drug_map: DrugMap | None, threads: int | None) -> pa.Table:
    con = duckdb.connect()
    if threads:
        con.execute(f"SET threads = {threads}")
    entries = drug_map.entries if drug_map else {}
    con.register("drug_map", pa.table({"variant": pa.array(list(entries), pa.string()),
                                       "target": pa.array(list(entries.values()), pa.string())}))
    con.register("silver", silver)
    return con.sql(duckdb_sql(dataset)).to_arrow_table()


# --------------------------------------------------------------------------------------------


def _timed(fn: Callable[[], Any], repeat: int) -> tuple[float, float, Any]:
    """Best wall-clock and process-CPU seconds over ``repeat`` runs (the box may be shared: CPU
    seconds are the steadier figure under contention), and the last result."""
    best_wall, best_cpu, result = float("inf"), float("inf"), None
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        best_wall = min(best_wall, time.perf_counter() - w0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    return best_wall, best_cpu, result


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--datasets", default="pharmacy,medical")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--duckdb-threads", type=int, default=None)
    ap.add_argument("--no-duckdb", action="store_true")
    args = ap.parse_args()
    print(f"cpus={pa.cpu_count()} rows={args.rows:,} pyarrow={pa.__version__} duckdb={duckdb.__version__}")
    for dataset in args.datasets.split(","):
        ds: Dataset = "pharmacy" if dataset == "pharmacy" else "medical"
        silver = make_silver(ds, args.rows)
        mb = silver.nbytes / 1e6
        dm = make_drug_map() if ds == "pharmacy" else None
        wall, cpu, res = _timed(lambda s=silver, d=ds, m=dm: clean_partition(s, d, m), args.repeat)
        assert res.table.schema == gold_schema(ds)
        print(f"{ds:9s} pgx    wall {wall:7.2f}s cpu {cpu:7.2f}s {silver.num_rows / wall:10,.0f} rows/s "
              f"{mb / wall:7.1f} MB/s  stats={res.stats}")
        if args.no_duckdb:
            continue
        dwall, dcpu, duck = _timed(lambda s=silver, d=ds, m=dm: run_duckdb(s, d, m, args.duckdb_threads), args.repeat)
        same = duck.cast(res.table.schema).equals(res.table)
        print(f"{ds:9s} duckdb wall {dwall:7.2f}s cpu {dcpu:7.2f}s {silver.num_rows / dwall:10,.0f} rows/s "
              f"{mb / dwall:7.1f} MB/s  rows={duck.num_rows} identical={same} "
              f"speedup wall {dwall / wall:.1f}x cpu {dcpu / cpu:.1f}x")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
