"""Ingest parse benchmark: pgx ``ingest_stream`` against the pyarrow I/O floor and DuckDB.

    PYTHONPATH=.:plugins .venv/bin/python benchmarks/bench_ingest_parse.py --rows 1000000

Generates raw extracts with ``pgx_apcd.sample.generate`` (untimed), then times per file:
(a) the pyarrow floor: ``pyarrow.csv.read_csv`` (CP1252, ``|``, no quoting, all columns string)
    + ``pyarrow.parquet.write_table``, no checks;
(b) DuckDB: ``read_csv(delim='|', quote='', all_varchar=true, header=true)`` → ``COPY TO parquet``
    on a UTF-8 transcoded copy (DuckDB has no CP1252 decoder offline; transcoding is untimed);
(c) pgx: ``ingest_stream`` + a ParquetWriter for rows and one for rejects.
With ``--defects`` the floor and DuckDB (which have no line checks and would fail or mis-load)
read copies without the injected bad lines; pgx reads the originals.
Prints rows/s, MB/s (raw input bytes), peak RSS and the ratios pgx/floor and pgx/DuckDB.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
from pgx_apcd import layout
from pgx_apcd.sample import generate
from pgx_ingest.parse import REJECTS_SCHEMA, bronze_schema, ingest_stream


def floor(path: Path, data_type: str, out: Path) -> int:
    cols = layout.columns(data_type)
    table = pcsv.read_csv(
        path, pcsv.ReadOptions(column_names=cols, skip_rows=1, encoding="cp1252"),
        pcsv.ParseOptions(delimiter="|", quote_char=False),
        pcsv.ConvertOptions(column_types=dict.fromkeys(cols, pa.string())))
    pq.write_table(table, out)
    return int(table.num_rows)


def duck(path: Path, data_type: str, out: Path) -> int:
    con = duckdb.connect()
    con.execute(f"SET threads TO {pa.cpu_count()}")
    sql = (f"COPY (SELECT * FROM read_csv('{path}', delim='|', quote='', escape='', all_varchar=true, "  # noqa: S608
           f"header=true)) TO '{out}' (FORMAT parquet)")
    con.execute(sql)
    rows = con.execute(f"SELECT count(*) FROM read_parquet('{out}')").fetchone()  # noqa: S608
    con.close()
    return int(rows[0]) if rows else 0


def pgx(path: Path, data_type: str, out: Path) -> int:
    with (pq.ParquetWriter(out, bronze_schema(data_type)) as rows_w,
          pq.ParquetWriter(out.with_suffix(".rejects.parquet"), REJECTS_SCHEMA) as rej_w,
          open(path, "rb") as src):
        result = ingest_stream(src, data_type=data_type, source_stem=path.stem,
                               on_rows=rows_w.write_batch, on_rejects=rej_w.write_batch)
    return result.rows


def run(name: str, fn: Callable[[Path, str, Path], int], files: list[tuple[Path, str]], work: Path) -> float:
    start = time.perf_counter()
    rows = sum(fn(p, t, work / f"{name}-{p.stem}.parquet") for p, t in files)
    elapsed = time.perf_counter() - start
    size = sum(p.stat().st_size for p, _ in files)
    print(f"{name:6s} {rows:>10,d} rows {elapsed:7.2f} s {rows / elapsed:>10,.0f} rows/s "
          f"{size / elapsed / 1e6:7.1f} MB/s")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--type", choices=["mix", *layout.DATA_TYPES], default="mix")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--defects", action="store_true", help="include the injected defects (bad files excluded)")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="pgx-bench-"))
    start = time.perf_counter()
    manifest = generate(work / "raw", rows=args.rows, seed=args.seed, defects=args.defects)
    gen = time.perf_counter() - start
    print(f"generate: {args.rows:,d} rows in {gen:.1f} s ({args.rows / gen:,.0f} rows/s)")
    chosen = [f for f in manifest.files if f.status is None and args.type in ("mix", f.data_type)]
    files = [(work / "raw" / f.path, f.data_type) for f in chosen]
    # The floor and DuckDB have no line checks: they read copies without the rejected lines
    # (prepared outside the timing); DuckDB's copy is also transcoded to UTF-8.
    plain, utf8 = [], []
    for f in chosen:
        lines = (work / "raw" / f.path).read_bytes().split(b"\n")
        bad = {no for no, _ in f.row_defects}
        data = b"\n".join(line for no, line in enumerate(lines, start=1) if no not in bad)
        for copies, folder, body in ((plain, "plain", data), (utf8, "utf8", data.decode("cp1252").encode())):
            q = work / folder / Path(f.path).name
            q.parent.mkdir(exist_ok=True)
            q.write_bytes(body)
            copies.append((q, f.data_type))
    out = work / "out"
    out.mkdir(exist_ok=True)
    size = sum(p.stat().st_size for p, _ in files)
    print(f"input: {len(files)} files, {size / 1e6:.1f} MB")
    t_floor = run("floor", floor, plain, out)
    t_duck = run("duckdb", duck, utf8, out)
    t_pgx = run("pgx", pgx, files, out)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"pgx speed vs floor: {t_floor / t_pgx:.2f}x   vs duckdb: {t_duck / t_pgx:.2f}x   "
          f"peak RSS (whole process) {peak:.0f} MB")
    if not args.workdir:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
