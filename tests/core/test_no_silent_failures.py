"""Failures the runtime survives on purpose are still said: a background lease renewal that fails,
and a best-effort cleanup after an entity's outcome was decided."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest

from pgx_core.errors import FencedError, StorageError
from pgx_core.run import worker
from pgx_core.state import LeaseKeeper


class _Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.events: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.events.append(record.__dict__)


@pytest.fixture
def events() -> Iterator[list[dict[str, Any]]]:
    recorder = _Recorder()
    logger = logging.getLogger("pgx")
    logger.addHandler(recorder)
    level, logger.level = logger.level, logging.INFO
    try:
        yield recorder.events
    finally:
        logger.removeHandler(recorder)
        logger.setLevel(level)


class _FlakyLease:
    """Renewal fails with a storage error twice (a canary in its message), then the lease is fenced."""

    uri, ttl, lost = "file:///lake/lease.json", 0.03, False

    def __init__(self) -> None:
        self.calls = 0

    def renew(self) -> None:
        self.calls += 1
        if self.calls <= 2:
            raise StorageError("renewal refused for 'MEMBER-CANARY-1234'")
        raise FencedError("taken over")


def test_a_failed_background_renewal_is_logged_and_retried(events: list[dict[str, Any]]) -> None:
    lease = _FlakyLease()
    keeper = LeaseKeeper(lease)  # type: ignore[arg-type]
    keeper._thread.start()
    deadline = time.monotonic() + 5
    while lease.calls < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    keeper._thread.join(timeout=5)
    failed = [e for e in events if e.get("event") == "lease_renew_failed"]
    assert lease.calls == 3 and len(failed) == 2  # retried after each failure, ended when fenced
    assert all("StorageError" in e["error"] and "CANARY" not in e["error"] for e in failed)


def test_a_failed_cleanup_is_logged_and_the_outcome_stands(events: list[dict[str, Any]]) -> None:
    def cleanup() -> None:
        raise OSError("disk gone")

    worker._safe(cleanup)  # returns: the outcome already decided is not replaced by this failure
    (failed,) = [e for e in events if e.get("event") == "cleanup_failed"]
    assert failed["error"].startswith("OSError") and failed["levelname"] == "WARNING"
