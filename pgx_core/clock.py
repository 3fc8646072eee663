"""Time stamps and run ids in the exact formats of SPEC §7-§9."""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(ts: datetime | None = None) -> str:
    """ISO-8601 UTC with a ``Z`` suffix, millisecond precision."""
    ts = ts or utcnow()
    return ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def stamp(ts: datetime | None = None) -> str:
    """``YYYYmmddTHHMMSSZ`` (run ids and backup prefixes)."""
    return (ts or utcnow()).strftime("%Y%m%dT%H%M%SZ")


def new_run_id(ts: datetime | None = None) -> str:
    """``YYYYmmddTHHMMSSZ-<8 hex>``: unique even for runs started in the same second."""
    return f"{stamp(ts)}-{secrets.token_hex(4)}"


def monotonic() -> float:
    return time.monotonic()


def iso_epoch(seconds: float) -> str:
    """:func:`iso` of a Unix time."""
    return iso(datetime.fromtimestamp(seconds, UTC))
