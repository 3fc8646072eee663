from __future__ import annotations

import psutil
import pyarrow as pa
import pyarrow.compute as pc

from pgx_core.run.resources import PeakRss

MB = 1 << 20


def test_an_items_peak_excludes_memory_a_previous_item_left_in_the_allocator() -> None:
    proc = psutil.Process()
    before = proc.memory_info().rss // MB
    arrays = [pc.add(pa.repeat(pa.scalar(1, pa.int64()), MB // 8), 1) for _ in range(400)]  # 400 MiB
    del arrays
    # The previous "item" is done, but Arrow's pool keeps what it freed for reuse.
    assert proc.memory_info().rss // MB - before > 300
    with PeakRss() as rss:
        small = pc.add(pa.repeat(pa.scalar(1, pa.int64()), MB // 8), 1)  # 1 MiB of work
    del small
    assert rss.peak_mb < before + 100
