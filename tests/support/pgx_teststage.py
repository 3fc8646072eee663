"""A small stage used to prove the reliability core (issue 3) through real `pgx run` processes.

``copy-table``: one entity per Parquet object under ``input``; each is read, gets a ``doubled``
column and is written to ``<lake>/gold/test_copy/<stem>.parquet``. Parameters make it slow, fail
with a data error, or break conservation, on chosen entities.
"""

from __future__ import annotations

import time

import pyarrow.compute as pc
import pyarrow.parquet as pq

from pgx_core.errors import DataError, TransientError
from pgx_core.hookspecs import hookimpl
from pgx_core.lake import paths
from pgx_core.spec.runspec import StageParams
from pgx_core.stage import Entity, EntityResult, Output, Stage, StageRegistry, WorkContext


class Params(StageParams):
    input: str | None = None
    delay_sec: float = 0.0
    fail: list[str] = []
    lose_rows: list[str] = []
    zone: str = "gold"
    pid_dir: str | None = None  # each attempt writes <pid_dir>/<entity>.<pid> so a test can kill it
    flaky_dir: str | None = None  # the first attempt of each entity raises a transient storage error


class CopyTable(Stage[Params]):
    type_name = "copy-table"
    tx = "tcopy"
    script_name = "test_copy"
    version = "1"
    plugin_name = "pgx-teststage"
    Params = Params

    def plan(self) -> list[Entity]:
        prefix = self.params.input or paths.join(self.run.lake, "input") + "/"
        store = self.store_for(prefix)
        return [
            Entity(id=paths.stem(o.uri), input_fingerprint=o.etag, payload={"uri": o.uri}, size_bytes=o.size)
            for o in store.list(prefix)
            if o.uri.endswith(".parquet")
        ]

    def final(self, entity: Entity) -> str:
        return paths.join(self.run.lake, self.params.zone, "test_copy", f"{entity.id}.parquet")

    def process(self, entity: Entity, ctx: WorkContext) -> EntityResult:
        if entity.id in self.params.fail:
            raise DataError(f"entity {entity.id} failed its gate on purpose")
        if self.params.pid_dir:
            import os
            from pathlib import Path

            Path(self.params.pid_dir, f"{entity.id}.{os.getpid()}").touch()
        if self.params.flaky_dir:
            from pathlib import Path

            marker = Path(self.params.flaky_dir, entity.id)
            if not marker.exists():
                marker.touch()
                raise TransientError(f"storage unavailable for {entity.id} (simulated)")
        uri = entity.payload["uri"]
        with ctx.store(uri).open_input(uri) as f:
            table = pq.read_table(f)
        deadline = time.monotonic() + self.params.delay_sec
        while time.monotonic() < deadline:
            time.sleep(0.05)
            ctx.heartbeat()
        out = table.append_column("doubled", pc.multiply(table["x"], 2))
        rows_out = out.num_rows
        if entity.id in self.params.lose_rows:
            out = out.slice(1)
            rows_out = out.num_rows
        final = self.final(entity)
        staged = ctx.staging_uri(final)
        with ctx.store(staged).open_output(staged) as sink:
            pq.write_table(out, sink)
        return EntityResult(outputs=[Output(final, rows_out)], rows_in=table.num_rows, rows_out=rows_out)


@hookimpl
def pgx_register_stages(registry: StageRegistry) -> None:
    registry.register(CopyTable)
