"""Kubernetes times: ``Time`` (RFC 3339 to the second) and ``MicroTime`` (six fraction digits),
read from whatever the client hands back (a string, or a ``datetime`` of the typed models)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def now() -> datetime:
    return datetime.now(UTC)


def micro(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if not isinstance(value, str) or not value:
        return None
    text = value.replace("Z", "+00:00")
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def rfc3339(value: Any) -> str | None:
    """A Kubernetes Time (``2026-01-01T00:00:00Z``) of whatever the client handed back."""
    ts = parse_time(value)
    return None if ts is None else ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
