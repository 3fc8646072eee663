"""Peak memory of a work item, measured where it runs (memory must not grow with the data).

A sampler thread reads the process's RSS while the item runs; the peak is reported with the item's
outcome and aggregated into the run summary (``resources``), so every run shows whether work items
stayed within ``memoryBudgetMb``.

Worker processes live on between items, and their allocators keep freed memory for reuse (Arrow's
mimalloc pool, glibc's heap). So that an item's peak is its own and not the previous item's high
water mark, each measurement starts by handing that retained memory back to the system.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from collections.abc import Callable
from functools import cache
from typing import Any, TypeVar

import psutil

R = TypeVar("R")
_MB = 1024 * 1024
_INTERVAL = 0.05


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl)
        return None


def release_retained_memory() -> None:
    """Return memory the allocators hold but do not use (Arrow's pool, then glibc's heap)."""
    import pyarrow as pa  # noqa: PLC0415 - only work items need it

    pa.default_memory_pool().release_unused()
    if (trim := _malloc_trim()) is not None:
        trim(0)


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
        release_retained_memory()
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
