"""Time stamps and run ids in the exact formats that state, summaries and backups use."""

from __future__ import annotations

import os
import re
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


RUN_ID_ENV = "PGX_RUN_ID"
_RUN_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{8}$")


def is_run_id(value: str) -> bool:
    """True when ``value`` has the run id shape ``YYYYmmddTHHMMSSZ-<8 hex>``."""
    return _RUN_ID.match(value) is not None


def run_started(run_id: str) -> datetime:
    """The start second a run id carries."""
    return datetime.strptime(run_id.split("-", 1)[0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def run_id_from_env() -> str | None:
    """A run id chosen by whoever started the process (the controller sets ``PGX_RUN_ID``).

    Must have the run id shape; anything else is a usage error rather than silently replaced.
    """
    value = os.environ.get(RUN_ID_ENV)
    if not value:
        return None
    if not is_run_id(value):
        from pgx_core.errors import UsageError  # noqa: PLC0415 - errors imports nothing from here

        raise UsageError(f"{RUN_ID_ENV} must look like YYYYmmddTHHMMSSZ-<8 hex>, got {value!r}")
    return value


def monotonic() -> float:
    return time.monotonic()


def iso_epoch(seconds: float) -> str:
    """:func:`iso` of a Unix time."""
    return iso(datetime.fromtimestamp(seconds, UTC))
