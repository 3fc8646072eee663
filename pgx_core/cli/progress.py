"""Progress of long work: a live bar per stage on a terminal (entities done/total,
rows/s, ETA); off a terminal the runner's JSON log line per entity serves instead.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from pgx_core.run.worker import EntityOutcome

_WIDTH = 28


class Progress:
    def __init__(self, enabled: bool, stream: TextIO | None = None) -> None:
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self._stage: str | None = None
        self._t0 = 0.0
        self._rows = 0

    def update(self, stage: str, outcome: EntityOutcome | None, done: int, total: int) -> None:
        if not self.enabled:
            return
        if stage != self._stage:
            self._finish_line()
            self._stage, self._t0, self._rows = stage, time.monotonic(), 0
        if outcome is not None:
            self._rows += outcome.rows_in
        elapsed = max(time.monotonic() - self._t0, 1e-6)
        frac = done / total if total else 1.0
        bar = "█" * int(frac * _WIDTH) + "·" * (_WIDTH - int(frac * _WIDTH))
        eta = (elapsed / done * (total - done)) if done else 0.0
        self.stream.write(f"\r{stage:<20} {bar} {done}/{total}  {self._rows / elapsed:,.0f} rows/s  ETA {eta:5.0f}s ")
        self.stream.flush()

    def _finish_line(self) -> None:
        if self._stage is not None:
            self.stream.write("\n")

    def close(self) -> None:
        if self.enabled:
            self._finish_line()
            self._stage = None
