"""Throughput and memory of the pure imputation rules (``pgx_impute.rules.impute_bucket``).

Builds bronze tables of both data types — by default from ``pgx_apcd.sample`` raw extracts (the
realistic generator of ``pgx sample``) parsed with pyarrow's CSV reader; ``--generator simple``
uses the small built-in generator below (low-entropy filler columns) — writes them as Parquet
(snappy), then reads them back and times one ``impute_bucket`` call over everything (one bucket)
in a fresh subprocess, so that its peak memory is the bucket's own::

    PYTHONPATH=.:plugins .venv/bin/python benchmarks/bench_impute_rules.py --rows 1000000 [--duckdb]

Prints rows/s (wall and CPU), the Arrow pool's peak and peak RSS against the bucket's Arrow, raw text
and Parquet sizes (the factors behind ``rules.estimate_bucket_count``), the pyarrow I/O floor (read
the bronze Parquet + write the silver Parquet), and with ``--duckdb`` DuckDB running the same rules
(a SQL rendering of imputation steps 1-6, wide sorted silver rows to Arrow), whose imputed values,
sources, bands, years and row order are checked against ``impute_bucket``'s.
"""

# ruff: noqa: S608  (the SQL is assembled from layout constants, never from input)
from __future__ import annotations

import argparse
import datetime as dt
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pgx_apcd.layout import DEMOGRAPHIC_COLUMNS, columns
from pgx_impute import rules

YEARS = (2016, 2017, 2018, 2019, 2020)


def _uniform_ints(n: int, high: int, seed: int) -> pa.Array:
    """n integers uniform in [0, high)."""
    return pc.floor(pc.multiply(pc.random(n, initializer=seed), high)).cast(pa.int64())


def _pick(pool: list[str], n: int, seed: int) -> pa.Array:
    return pc.take(pa.array(pool), _uniform_ints(n, len(pool), seed))


def _with_missing(values: pa.Array, rate: float, seed: int) -> pa.Array:
    """Replace a share of values by the feed's sentinels / blanks."""
    sentinels = pa.array(["Unknown", "N/A", "", "  ", "NULL", "unk"])
    hit = pc.less(pc.random(len(values), initializer=seed), rate)
    return pc.if_else(hit, pc.take(sentinels, _uniform_ints(len(values), len(sentinels), seed + 1)), values)


def generate(data_type: str, n: int, n_members: int, seed: int) -> pa.Table:
    """Bronze rows: members with stable demographics, 5 years of dates, realistic filler columns."""
    member = _uniform_ints(n, n_members, seed)
    start = dt.date(2016, 1, 1)
    dates = [(start + dt.timedelta(days=i)).strftime("%Y%m%d") for i in range(365 * 5 + 1)]
    day = _uniform_ints(n, len(dates), seed + 1)
    year = pc.cast(pc.utf8_slice_codeunits(pc.take(pa.array(dates), day), 0, 4), pa.int64())
    base_age = pc.take(_uniform_ints(n_members, 95, seed + 2), member)
    age = pc.add(base_age, pc.subtract(year, 2016)).cast(pa.string())
    keys = pc.utf8_lpad(pc.cast(pc.add(member, 1_000_000), pa.string()), 12, "0")
    per_member = {
        "member_gender": ["M", "F", "M", "F", "U"],
        "member_race": ["01", "02", "03", "04", "05", "06", "07", "08", "09"],
        "member_zip_code_dos": [f"{z:05d}" for z in range(10000, 10400)],
        "member_county_dos": [f"{f:05d} - COUNTY {f % 97}" for f in range(1000, 1120)],
        "payer_type": ["1 - COMMERCIAL", "2 - MEDICARE", "3 - MEDICAID", "4 - OTHER"],
    }
    values: dict[str, pa.Array] = {
        "incurred_date": pc.take(pa.array(dates), day),
        "mi_person_key": keys,
        "claim_id": pc.cast(pc.add(_uniform_ints(n, 10**12, seed + 3), 10**12), pa.string()),
        "member_age_dos": _with_missing(age, 0.15, seed + 4),
    }
    for i, (column, pool) in enumerate(per_member.items()):
        stable = pc.take(_pick(pool, n_members, seed + 10 + i), member)
        values[column] = _with_missing(stable, 0.15, seed + 20 + i)
    filler = ["", "N/A", "I5032", "E119", "Z0000", "36.04", ".00", "12.5", "00093-7214-01", "HCG-123",
              "ATORVASTATIN CALCIUM 10 MG", "1234567890", "Y", "N", "0", "1", "R41.0", "99213"]
    out = []
    for i, column in enumerate(columns(data_type)):
        out.append(values[column] if column in values else _pick(filler, n, seed + 100 + i))
    names = list(columns(data_type))
    table = pa.table(dict(zip(names, out, strict=True)), schema=rules.bronze_schema(data_type).remove(
        len(names) + 1).remove(len(names)))
    table = table.append_column("_source_file", pa.repeat(pa.scalar(f"{data_type}_bench"), n))
    return table.append_column("_source_line", pa.array(range(2, n + 2), pa.int64()))


def from_sample(rows: int, seed: int, tmp: Path) -> dict[str, pa.Table]:
    """Bronze tables parsed from ``pgx_apcd.sample`` raw extracts (no defects, so no rejects)."""
    import pyarrow.csv as pcsv
    from pgx_apcd import sample

    sample.generate(tmp / "raw", rows=rows, seed=seed)
    out: dict[str, pa.Table] = {}
    for data_type in ("pharmacy", "medical"):
        names = list(columns(data_type))
        parts = []
        for path in sorted((tmp / "raw" / data_type).glob("*.txt")):
            table = pcsv.read_csv(
                path,
                read_options=pcsv.ReadOptions(encoding="cp1252", column_names=names, skip_rows=1),
                parse_options=pcsv.ParseOptions(delimiter="|", quote_char=False),
                convert_options=pcsv.ConvertOptions(
                    column_types=dict.fromkeys(names, pa.string()), strings_can_be_null=False,
                    quoted_strings_can_be_null=False),
            )
            table = table.append_column("_source_file", pa.repeat(pa.scalar(path.stem), table.num_rows))
            parts.append(table.append_column("_source_line", pa.array(range(2, table.num_rows + 2), pa.int64())))
        out[data_type] = pa.concat_tables(parts)
    return out


def _rss_mb() -> float:
    """Peak RSS of this process. VmHWM, because ru_maxrss survives fork+exec from the generator."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(folder: Path, with_duckdb: bool) -> None:
    """Read the bronze Parquet in ``folder`` and time impute_bucket (run in a fresh process)."""
    info = json.loads((folder / "info.json").read_text())
    rss_start = _rss_mb()
    bronze = {d: pq.read_table(folder / f"{d}.parquet") for d in ("pharmacy", "medical")}
    rows = sum(t.num_rows for t in bronze.values())
    arrow_bytes = sum(t.nbytes for t in bronze.values())
    pool = pa.default_memory_pool()
    start, cpu = time.perf_counter(), time.process_time()
    result = rules.impute_bucket(bronze, YEARS, 5)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak = pool.max_memory()
    silver = sum(result.silver[d].num_rows for d in bronze)
    print(f"rows {rows:,} ({bronze['pharmacy'].num_rows:,} pharmacy + {bronze['medical'].num_rows:,} medical), "
          f"generator {info['generator']}, silver rows {silver:,}")
    print(f"impute_bucket: {seconds:.2f} s wall = {rows / seconds:,.0f} rows/s; {cpu:.2f} s CPU "
          f"= {rows / cpu:,.0f} rows/CPU-s")
    print(f"input: arrow {arrow_bytes / 2**20:.0f} MiB, raw text {info['raw_bytes'] / 2**20:.0f} MiB, "
          f"parquet {info['parquet_bytes'] / 2**20:.0f} MiB")
    raw = f"{peak / info['raw_bytes']:.2f}x raw text, " if info["raw_bytes"] else ""
    print(f"arrow pool peak {peak / 2**20:.0f} MiB = {peak / arrow_bytes:.2f}x arrow input, "
          f"{raw}{peak / info['parquet_bytes']:.1f}x parquet")
    rss = _rss_mb()
    print(f"peak RSS {rss:.0f} MiB = {rss * 2**20 / arrow_bytes:.2f}x arrow input "
          f"(interpreter + imports: {rss_start:.0f} MiB)")
    for field in rules.FIELDS:
        counts = {k.rsplit(".", 1)[1]: v for k, v in result.stats["medical"].items()
                  if k.startswith(f"sources.{field}.")}
        print(f"  medical sources.{field}: {counts}")

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for d in bronze:
            pq.read_table(folder / f"{d}.parquet")
            pq.write_table(result.silver[d], Path(tmp) / f"{d}.parquet")
    floor = time.perf_counter() - start
    print(f"pyarrow I/O floor (read bronze + write silver Parquet): {floor:.2f} s = {rows / floor:,.0f} rows/s; "
          f"impute_bucket / floor = {seconds / floor:.2f}")
    if with_duckdb:
        duck_seconds, duck_silver = _duckdb(bronze)
        print(f"duckdb, same rules to sorted wide Arrow silver: {duck_seconds:.2f} s = "
              f"{rows / duck_seconds:,.0f} rows/s; impute_bucket / duckdb = {seconds / duck_seconds:.2f}")
        compared = [*rules.IMPUTED_COLUMNS, *rules.SOURCE_COLUMNS, "age_band", "event_year", "_source_line"]
        for d in bronze:
            same = duck_silver[d].select(compared).equals(result.silver[d].select(compared))
            print(f"  duckdb {d} silver equals impute_bucket's: {same}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="total rows, both data types")
    parser.add_argument("--rows-per-member", type=int, default=20, help="simple generator only")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--generator", choices=("sample", "simple"), default="sample")
    parser.add_argument("--duckdb", action="store_true", help="also time DuckDB on the same rules")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # internal: the subprocess
    args = parser.parse_args()
    if args.measure:
        measure(args.measure, args.duckdb)
        return

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        raw_bytes = 0
        if args.generator == "sample":
            generated = from_sample(args.rows, args.seed, folder)
            raw_bytes = sum(p.stat().st_size for p in (folder / "raw").rglob("*.txt"))
        else:
            n_members = max(1, args.rows // args.rows_per_member)
            n_pharmacy = args.rows * 5 // 14  # the feed's ~0.5 B : 0.9 B split
            generated = {
                "pharmacy": generate("pharmacy", n_pharmacy, n_members, args.seed + 8),
                "medical": generate("medical", args.rows - n_pharmacy, n_members, args.seed + 7),
            }
        parquet_bytes = 0
        for data_type, table in generated.items():
            pq.write_table(table, folder / f"{data_type}.parquet")
            parquet_bytes += (folder / f"{data_type}.parquet").stat().st_size
        del generated
        info = {"generator": args.generator, "raw_bytes": raw_bytes, "parquet_bytes": parquet_bytes}
        (folder / "info.json").write_text(json.dumps(info))
        command = [sys.executable, __file__, "--measure", str(folder)] + (["--duckdb"] if args.duckdb else [])
        subprocess.run(command, check=True)


def _duckdb(bronze: dict[str, pa.Table]) -> tuple[float, dict[str, pa.Table]]:
    """Imputation steps 1-6 in DuckDB SQL, ending with sorted wide silver rows as Arrow tables."""
    import duckdb

    ws = "' ' || chr(9) || chr(10) || chr(11) || chr(12) || chr(13)"
    sentinels = "('NULL','UNKNOWN','UNK','N/A','NA','NONE')"

    def norm(field: str, column: str) -> str:
        t = f"trim({column}, {ws})"
        missing = f"({t} = '' OR upper({t}) IN {sentinels}" + (f" OR upper({t}) = 'U'" if field == "gender" else "")
        missing += ")"
        if field == "age":
            return (f"CASE WHEN regexp_full_match({t}, '[0-9]+') AND TRY_CAST({t} AS INTEGER) <= 114 "
                    f"THEN CAST({t} AS SMALLINT) END AS _age")
        value = f"upper({t})" if field == "gender" else t
        return f"CASE WHEN {column} IS NULL OR {missing} THEN NULL ELSE {value} END AS _{field}"

    con = duckdb.connect()
    for name, table in bronze.items():
        con.register(f"bronze_{name}", table)
    years = ", ".join(str(y) for y in YEARS)
    fields = rules.FIELDS
    start = time.perf_counter()
    for d in bronze:
        con.execute(f"""CREATE TEMP TABLE valid_{d} AS
            SELECT b.*, trim(mi_person_key, {ws}) AS _m, CAST(substr(incurred_date, 1, 4) AS SMALLINT) AS _y,
                   {", ".join(norm(f, c) for f, c in DEMOGRAPHIC_COLUMNS.items())}
            FROM bronze_{d} b
            WHERE length(trim(mi_person_key, {ws})) > 0 AND regexp_full_match(incurred_date, '[0-9]{{8}}')
              AND try_strptime(incurred_date, '%Y%m%d') IS NOT NULL""")
    narrow = " UNION ALL ".join(
        f"SELECT _m, _y, '{d}' AS _t, incurred_date, {', '.join('_' + f for f in fields)} FROM valid_{d}"
        for d in bronze)
    con.execute(f"CREATE TEMP TABLE narrow AS {narrow}")
    modes = " ".join(f"""LEFT JOIN (SELECT _m, _y, _t, _{f} FROM (
             SELECT *, row_number() OVER (PARTITION BY _m, _y, _t ORDER BY c DESC, md DESC, _{f}) AS rn
             FROM (SELECT _m, _y, _t, _{f}, count(*) AS c, max(incurred_date) AS md
                   FROM narrow WHERE _{f} IS NOT NULL GROUP BY _m, _y, _t, _{f}))
             WHERE rn = 1) USING (_m, _y, _t)""" for f in fields)
    con.execute(f"""CREATE TEMP TABLE profiles AS SELECT g._m, g._y, g._t, {", ".join('_' + f for f in fields)}
        FROM (SELECT _m, _y, _t FROM narrow GROUP BY ALL) g {modes}""")
    picks = []
    for f in fields:
        value = "p._age - (p._y - t._y)" if f == "age" else f"p._{f}"
        ok = f"p._{f} IS NOT NULL" + (f" AND {value} BETWEEN 0 AND 114" if f == "age" else "")
        rank = "abs(p._y - t._y) * 4 + (p._t <> t._t)::INT * 2 + (p._y > t._y)::INT"
        picks.append(f"arg_min({value}, {rank}) FILTER (WHERE {ok}) AS v_{f}, "
                     f"arg_min(p._t, {rank}) FILTER (WHERE {ok}) AS t_{f}")
    con.execute(f"""CREATE TEMP TABLE targets AS
        SELECT t._m, t._y, t._t, {", ".join(picks)}
        FROM (SELECT DISTINCT _m, _y, _t FROM narrow WHERE _y IN ({years})) t
        JOIN profiles p ON p._m = t._m AND abs(p._y - t._y) <= 5
        GROUP BY ALL""")
    out: dict[str, pa.Table] = {}
    for d, table in bronze.items():
        imputed = ", ".join(
            f"CAST(coalesce(v._{f}, t.v_{f}) AS {'SMALLINT' if f == 'age' else 'VARCHAR'}) AS {f}_imputed"
            for f in fields)
        sources = ", ".join(
            f"CASE WHEN v._{f} IS NOT NULL THEN 'original' WHEN t.t_{f} IS NOT NULL "
            f"THEN 'imputed_from_' || t.t_{f} ELSE 'unresolved' END AS {f}_source" for f in fields)
        a = "age_imputed"
        band = (f"CASE WHEN {a} IS NULL THEN 'unknown' WHEN {a} <= 12 THEN '0-12' WHEN {a} <= 24 THEN '13-24' "
                f"WHEN {a} <= 44 THEN '25-44' WHEN {a} <= 54 THEN '45-54' WHEN {a} <= 64 THEN '55-64' "
                f"WHEN {a} <= 74 THEN '65-74' WHEN {a} <= 84 THEN '75-84' WHEN {a} <= 94 THEN '85-94' "
                "ELSE '95-114' END")
        bronze_cols = ", ".join(f'v."{c}"' for c in table.column_names)
        out[d] = con.sql(f"""
            SELECT {", ".join(f'"{c}"' for c in table.column_names)}, {", ".join(rules.IMPUTED_COLUMNS)},
                   {", ".join(rules.SOURCE_COLUMNS)},
                   {band} AS age_band,
                   _y AS event_year
            FROM (SELECT {bronze_cols}, {imputed}, {sources}, v._y
                  FROM valid_{d} v JOIN targets t ON t._m = v._m AND t._y = v._y AND t._t = '{d}')
            ORDER BY event_year, age_band, mi_person_key, incurred_date, _source_file, _source_line
        """).to_arrow_table()
    return time.perf_counter() - start, out


if __name__ == "__main__":
    main()
