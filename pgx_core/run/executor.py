"""Executors run work items: ``local`` in-process and serial, ``ray`` fanned out over Ray.

Both run the same functions on the same items and return the same results, so a spec gives
identical lake objects on either. Entity tasks take a *stop flag* (anything with ``is_set()``):
the worker checks it before promotion, so after SIGTERM no new promotion starts.
"""

from __future__ import annotations

import abc
import contextlib
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class StopFlag(Protocol):
    def is_set(self) -> bool: ...


OnError = Callable[[T, BaseException], R]


class Executor(abc.ABC):
    """Runs a function over items, yielding ``(index, result)`` as items finish."""

    name: str
    # Work items finished per node that ran them ("local" in-process; a Ray node id prefix): the
    # evidence that work spread over a cluster. Counts only (no item data).
    placements: Counter[str]

    @abc.abstractmethod
    def map_unordered(
        self,
        fn: Callable[..., R],
        items: list[T],
        *,
        memory_mb: int | None = None,
        with_stop: bool = False,
        on_error: OnError[T, R] | None = None,
    ) -> Iterator[tuple[int, R]]:
        """Run ``fn(item)`` (``fn(item, stop)`` when ``with_stop``) for every item.

        Stops starting new items once the run's stop event is set. A failure of the item
        becomes ``on_error(item, exc)``'s result when given, else it propagates: ``exc`` is what
        the function raised, or a :class:`~pgx_core.errors.TransientError` when the worker running
        it was lost (after the executor's own retries).
        """

    def close(self) -> None:  # noqa: B027 - optional for executors without resources
        """Release executor resources (a local Ray started by pgx is shut down)."""


class LocalExecutor(Executor):
    """In-process and serial: the debugging executor, same semantics as Ray."""

    name = "local"

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self.placements = Counter()

    def map_unordered(
        self,
        fn: Callable[..., R],
        items: list[T],
        *,
        memory_mb: int | None = None,
        with_stop: bool = False,
        on_error: OnError[T, R] | None = None,
    ) -> Iterator[tuple[int, R]]:
        for i, item in enumerate(items):
            if self.stop.is_set():
                return
            try:
                result = fn(item, self.stop) if with_stop else fn(item)
            except Exception as exc:
                if on_error is None:
                    raise
                result = on_error(item, exc)
            self.placements[self.name] += 1
            yield i, result


class OnDemandExecutor(Executor):
    """The executor ``make()`` returns, made when the first items arrive: a run with nothing to do
    never starts Ray. ``starting(what)`` wraps the start (a spinner on a terminal)."""

    def __init__(
        self,
        name: str,
        make: Callable[[], Executor],
        starting: Callable[[str], AbstractContextManager[object]] | None = None,
    ) -> None:
        self.name = name
        self._make, self._starting = make, starting
        self._executor: Executor | None = None

    @property
    def started(self) -> bool:
        return self._executor is not None

    @property
    def placements(self) -> Counter[str]:  # type: ignore[override] # the made executor's, read-only
        return self._executor.placements if self._executor is not None else Counter()

    def map_unordered(
        self,
        fn: Callable[..., R],
        items: list[T],
        *,
        memory_mb: int | None = None,
        with_stop: bool = False,
        on_error: OnError[T, R] | None = None,
    ) -> Iterator[tuple[int, R]]:
        if not items:
            return iter(())
        if self._executor is None:
            with self._starting(f"starting {self.name}") if self._starting else contextlib.nullcontext():
                self._executor = self._make()
        return self._executor.map_unordered(fn, items, memory_mb=memory_mb, with_stop=with_stop, on_error=on_error)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.close()


def make_executor(kind: str, stop: threading.Event, **options: Any) -> Executor:
    """The executor named by ``executor.type`` (or the ``--executor`` override).

    ``options`` go to the Ray executor (``run``, ``address``, ``warm_modules``); the local one needs none.
    """
    if kind == "local":
        return LocalExecutor(stop)
    if kind == "ray":
        from pgx_core.run.ray_executor import RayExecutor  # noqa: PLC0415 - Ray is heavy; import on use

        return RayExecutor(stop, **options)
    raise ValueError(f"unknown executor {kind!r}: expected ray or local")
