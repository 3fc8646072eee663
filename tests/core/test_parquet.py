from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pgx_core.parquet import FixedRowGroupWriter, row_parquet_options


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
