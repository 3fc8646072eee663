"""Peak memory of a work item, measured where it runs (SPEC §13: memory must not grow with the data).

A sampler thread reads the process's RSS while the item runs; the peak is reported with the item's
outcome and aggregated into the run summary (``resources``), so every run shows whether work items
stayed within ``memoryBudgetMb``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

import psutil

R = TypeVar("R")
_MB = 1024 * 1024
_INTERVAL = 0.05


class PeakRss:
    """Context manager sampling this process's RSS; ``peak_mb`` after exit."""

    def __init__(self) -> None:
        self._proc = psutil.Process()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pgx-rss", daemon=True)
        self.peak = 0

    def _sample(self) -> None:
        self.peak = max(self.peak, int(self._proc.memory_info().rss))

    def _loop(self) -> None:
        while not self._stop.wait(_INTERVAL):
            self._sample()

    def __enter__(self) -> PeakRss:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def peak_mb(self) -> int:
        return -(-self.peak // _MB)


def measured(fn: Callable[[Any], R]) -> Callable[[Any], tuple[R, int]]:
    """Wrap a work-item function so it also returns its peak RSS in MB (picklable by reference)."""
    return _Measured(fn)


class _Measured:
    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn

    def __call__(self, item: Any) -> tuple[Any, int]:
        with PeakRss() as rss:
            result = self.fn(item)
        return result, rss.peak_mb
