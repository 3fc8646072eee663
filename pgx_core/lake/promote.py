"""Promotion: staged object → final object, with backup first and fencing.

Order for one object: back up the current final object (if any) into the run's backup prefix,
re-check the lease (fencing), then replace atomically (S3: one server-side copy; local: rename).
The caller commits state afterwards and removes staging last, so a crash between any two steps
leaves either the old or the new object live and the next run finishes the job.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

import pyarrow.parquet as pq

from pgx_core import failpoints
from pgx_core.errors import DataError
from pgx_core.lake.backup import RunBackup
from pgx_core.lake.storage import ObjectStore

_CHUNK = 8 << 20


@dataclass(frozen=True)
class Promoted:
    uri: str
    checksum: str
    etag: str
    rows: int
    backup_uri: str | None


def sha256_of(store: ObjectStore, uri: str) -> str:
    """``sha256:<hex>`` of an object's bytes, streamed."""
    h = hashlib.sha256()
    with store.open_input(uri) as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


class HashingWriter:
    """Wraps a binary output stream and hashes what passes through (so no re-read is needed)."""

    def __init__(self, raw: IO[bytes], on_close: Callable[[str, int], None]) -> None:
        self._raw = raw
        self._hash = hashlib.sha256()
        self._size = 0
        self._on_close = on_close
        self.closed = False

    def write(self, data: Any) -> int:
        mv = memoryview(data).cast("B")
        self._hash.update(mv)
        self._size += len(mv)
        self._raw.write(mv)
        return len(mv)

    def flush(self) -> None:
        self._raw.flush()

    def tell(self) -> int:
        return self._size

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
            self.closed = True
            self._on_close("sha256:" + self._hash.hexdigest(), self._size)

    def __enter__(self) -> HashingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def parquet_rows_and_schema(store: ObjectStore, uri: str) -> tuple[int, Any]:
    """Row count and Arrow schema from a Parquet footer (reads only the footer)."""
    with store.open_input(uri) as f:
        meta = pq.ParquetFile(f).metadata
        return meta.num_rows, meta.schema.to_arrow_schema()


def verify_staged(store: ObjectStore, staged: str, rows: int, schema: Any | None) -> None:
    """Gate before promotion: the staged object exists, has the rows claimed and the expected schema."""
    if not store.exists(staged):
        raise DataError(f"Staged output {staged} is missing")
    if not staged.endswith(".parquet"):
        return
    n, actual = parquet_rows_and_schema(store, staged)
    if n != rows:
        raise DataError(f"Staged output {staged} holds {n} rows, the stage reported {rows}")
    if schema is not None and not actual.equals(schema):
        raise DataError(f"Staged output {staged} has schema {_schema_str(actual)}, expected {_schema_str(schema)}")


def _schema_str(schema: Any) -> str:
    return "[" + ", ".join(f"{f.name}: {f.type}" for f in schema) + "]"


def promote_object(
    store: ObjectStore,
    *,
    staged: str,
    final: str,
    rows: int,
    checksum: str,
    backup: RunBackup,
    fence: Callable[[], None],
) -> Promoted:
    """Back up ``final`` if it exists, check the fence, atomically replace it with ``staged``."""
    backup_uri = backup.backup(final)
    failpoints.hit("after_backup")
    fence()
    info = store.replace(staged, final)
    failpoints.hit("after_replace")
    return Promoted(final, checksum, info.etag, rows, backup_uri)
