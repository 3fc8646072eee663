"""A rate-limited work queue of object names, as Kubernetes controllers keep them.

- A name is queued at most once, however many watch events name it.
- A name being worked on is never handed out twice: added again meanwhile, it is queued again
  when :meth:`WorkQueue.done` is called, so the newest event is never lost.
- :meth:`WorkQueue.retry` queues a name after a delay that doubles with each failure in a row
  (``base`` × 2\\ :sup:`n-1`, at most ``cap``) times a random factor in [0.5, 1) — the jitter keeps
  a storm of errors from making every controller retry in step. :meth:`WorkQueue.forget` resets it.
"""

from __future__ import annotations

import heapq
import random
import threading
import time
from collections.abc import Callable


def backoff(failures: int, base: float, cap: float, jitter: Callable[[], float] = random.random) -> float:
    """Seconds to wait after ``failures`` failures in a row: ``base`` doubled each time, at most
    ``cap``, times a random factor in [0.5, 1)."""
    return float(min(cap, base * 2 ** (failures - 1)) * (0.5 + jitter() / 2))


class WorkQueue:
    def __init__(
        self,
        base: float = 0.5,
        cap: float = 300.0,
        jitter: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base, self.cap = base, cap
        self._jitter, self._clock = jitter, clock
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, str]] = []  # (due, tie-breaker, name)
        self._due: dict[str, float] = {}  # queued names → when they are due
        self._processing: set[str] = set()
        self._dirty: set[str] = set()  # added while being processed
        self._failures: dict[str, int] = {}
        self._seq = 0
        self._closed = False

    def add(self, name: str, delay: float = 0.0) -> None:
        """Queue ``name`` (after ``delay`` seconds); an earlier due time already queued wins."""
        with self._cond:
            if name in self._processing and delay <= 0:
                self._dirty.add(name)  # queued again by done()
                return
            due = self._clock() + max(0.0, delay)
            if name in self._due and self._due[name] <= due:
                return
            self._due[name] = due
            self._seq += 1
            heapq.heappush(self._heap, (due, self._seq, name))
            self._cond.notify()

    def retry(self, name: str) -> float:
        """Queue ``name`` again after its backoff; returns the delay chosen."""
        with self._cond:
            failures = self._failures.get(name, 0) + 1
            self._failures[name] = failures
        delay = backoff(failures, self.base, self.cap, self._jitter)
        with self._cond:
            self._dirty.discard(name)  # an event meanwhile must not cut the backoff short
        self.add(name, delay)
        return delay

    def failures(self, name: str) -> int:
        with self._cond:
            return self._failures.get(name, 0)

    def forget(self, name: str) -> None:
        """``name`` succeeded: its next failure starts the backoff from ``base`` again."""
        with self._cond:
            self._failures.pop(name, None)

    def get(self, timeout: float) -> str | None:
        """The next due name (marked as being processed), or None after ``timeout`` seconds."""
        deadline = self._clock() + timeout
        with self._cond:
            while not self._closed:
                now = self._clock()
                while self._heap and self._due.get(self._heap[0][2]) != self._heap[0][0]:
                    heapq.heappop(self._heap)  # superseded by an earlier due time
                if self._heap and self._heap[0][0] <= now and self._heap[0][2] not in self._processing:
                    _, _, name = heapq.heappop(self._heap)
                    del self._due[name]
                    self._processing.add(name)
                    return name
                wait = deadline - now
                if self._heap:
                    wait = min(wait, max(self._heap[0][0] - now, 0.01))
                if wait <= 0:
                    return None
                self._cond.wait(wait)
            return None

    def done(self, name: str) -> None:
        """Processing of ``name`` ended; an add that came meanwhile queues it now."""
        with self._cond:
            self._processing.discard(name)
            if name in self._dirty:
                self._dirty.discard(name)
                self.add(name)  # the condition's lock is re-entrant
            self._cond.notify()

    def depth(self) -> int:
        """Names waiting (due or not), for the queue-depth metric."""
        with self._cond:
            return len(self._due)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
