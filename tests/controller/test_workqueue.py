"""The controller's work queue: one entry per name, nothing handed out twice, backoff with jitter."""

from __future__ import annotations

import threading

from pgx_core.k8s.workqueue import WorkQueue, backoff


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_name_is_queued_once_and_never_handed_out_twice() -> None:
    q = WorkQueue()
    for _ in range(3):
        q.add("a")
    q.add("b")
    assert q.depth() == 2
    assert q.get(0.1) == "a"
    q.add("a")  # an event while "a" is being worked on
    assert q.get(0.1) == "b"
    assert q.get(0.05) is None  # "a" is not handed out while it is processed
    q.done("a")
    assert q.get(0.1) == "a"  # …and comes back once it is done: the newest event is not lost
    q.done("a")
    q.done("b")
    assert q.depth() == 0 and q.get(0.05) is None


def test_retries_back_off_exponentially_with_jitter_and_forget_resets() -> None:
    clock = Clock()
    q = WorkQueue(base=1.0, cap=8.0, jitter=lambda: 0.0, clock=clock)  # the factor's low end: 0.5
    delays = []
    for _ in range(6):
        q.add("run")
        assert q.get(0) == "run"
        delays.append(q.retry("run"))
        q.done("run")
        assert q.get(0) is None  # not due yet
        clock.now += delays[-1]
        assert q.get(0) == "run"
        q.done("run")
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]  # doubling, capped at 8 × 0.5
    q.forget("run")
    assert q.retry("run") == 0.5 and q.failures("run") == 1
    assert [backoff(3, 1.0, 100.0, lambda j=j: j) for j in (0.0, 0.5, 0.999)] == [2.0, 3.0, 3.998]


def test_an_event_during_a_failed_reconcile_does_not_cut_the_backoff_short() -> None:
    clock = Clock()
    q = WorkQueue(base=10.0, jitter=lambda: 0.0, clock=clock)
    q.add("run")
    assert q.get(0) == "run"
    q.add("run")  # a watch event meanwhile
    q.retry("run")
    q.done("run")
    assert q.get(0) is None  # still waits its 5 s
    clock.now = 5.0
    assert q.get(0) == "run"


def test_get_wakes_for_an_add_from_another_thread() -> None:
    q = WorkQueue()
    threading.Timer(0.1, lambda: q.add("late")).start()
    assert q.get(5.0) == "late"
    q.close()
    assert q.get(1.0) is None
