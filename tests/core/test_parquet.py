from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pgx_core.lake.parquet import FixedRowGroupWriter, row_parquet_options


def _stats(path: Path) -> dict[str, bool]:
    group = pq.ParquetFile(path).metadata.row_group(0)
    return {group.column(i).path_in_schema: group.column(i).is_stats_set for i in range(group.num_columns)}


def test_claim_rows_keep_statistics_on_order_and_provenance_columns_only(tmp_path: Path) -> None:
    table = pa.table(
        {
            "mi_person_key": ["007", "010"],
            "claim_id": ["c1", "c2"],
            "incurred_date": ["20180101", "20180102"],
            "_source_file": ["f", "f"],
            "_source_line": pa.array([2, 3], pa.int64()),
        }
    )
    path = tmp_path / "rows.parquet"
    with path.open("wb") as sink:
        writer = FixedRowGroupWriter(sink, table.schema)
        writer.write(table)
        writer.close()
    assert _stats(path) == {
        "mi_person_key": True,
        "claim_id": False,
        "incurred_date": True,
        "_source_file": True,
        "_source_line": True,
    }
    assert pq.ParquetFile(path).metadata.row_group(0).column(0).statistics.min == "007"


def test_rows_without_order_columns_have_no_statistics(tmp_path: Path) -> None:
    table = pa.table({"code": ["A", "B"]})
    path = tmp_path / "codes.parquet"
    pq.write_table(table, path, **row_parquet_options(table.schema))
    assert _stats(path) == {"code": False}


def test_thousands_of_small_tables_write_the_same_bytes_without_piling_up(tmp_path: Path) -> None:
    """An impute output assembled from thousands of buckets arrives as thousands of small tables;
    each table costs ~100 KB of objects whatever its rows, so the writer must not keep them all
    (400 MB for 24,000 rows of 115 columns before). Row groups and bytes stay as for one table."""
    table = pa.table({f"c{i}": [f"v{r}-{i}" for r in range(5000)] for i in range(40)})

    def write(parts: list[pa.Table], name: str) -> tuple[bytes, int]:
        path = tmp_path / name
        most = 0
        with path.open("wb") as sink:
            writer = FixedRowGroupWriter(sink, table.schema, row_group_rows=4096)
            for part in parts:
                writer.write(part)
                most = max(most, len(writer._pending))
            writer.close()
        return path.read_bytes(), most

    whole, _ = write([table], "whole.parquet")
    pieces, most = write([table.slice(i, 3) for i in range(0, table.num_rows, 3)], "pieces.parquet")
    assert pieces == whole
    assert most <= 65  # MAX_PENDING_TABLES + the one just written
    assert pq.ParquetFile(tmp_path / "pieces.parquet").metadata.num_row_groups == 2
