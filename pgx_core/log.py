"""Logging on stderr: JSON lines ``ts, level, run_id, stage, entity, event, counts…`` by default,
or any handler given to :func:`setup` (the command line's readable lines on a terminal).

Messages and extra fields must be PHI-free: callers pass counts, ids of entities (file stems,
partitions) and reason codes, never data values. ``bind()`` sets run-wide context fields.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_context: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("pgx_log_context", default={})  # noqa: B039
_STD_ATTRS = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}


def fields(record: logging.LogRecord) -> dict[str, Any]:
    """A record's fields: the bound context (``run_id``, ``stage``…) and its ``extra`` values."""
    out = dict(_context.get())
    out.update((k, v) for k, v in record.__dict__.items() if k not in _STD_ATTRS)
    return out


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        out: dict[str, Any] = {"ts": ts, "level": record.levelname.lower(), "msg": record.getMessage()}
        out.update(fields(record))
        return json.dumps(out, default=str, ensure_ascii=False)


def setup(level: str = "INFO", handler: logging.Handler | None = None) -> None:
    """Send the ``pgx`` logger hierarchy to ``handler`` (default: JSON lines on standard error),
    replacing the handler an earlier call installed."""
    logger = logging.getLogger("pgx")
    for old in [h for h in logger.handlers if getattr(h, "_pgx", False)]:
        logger.removeHandler(old)
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
    handler._pgx = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


def get_logger(name: str) -> logging.Logger:
    """A logger under the ``pgx`` hierarchy (module names are mapped below it)."""
    return logging.getLogger("pgx." + name.removeprefix("pgx_core.").removeprefix("pgx."))


@contextmanager
def bind(**fields: Any) -> Iterator[None]:
    """Add context fields (``run_id``, ``stage``, ``entity``) to every log line inside the block."""
    token = _context.set({**_context.get(), **fields})
    try:
        yield
    finally:
        _context.reset(token)



def safe_traceback(exc: BaseException) -> list[str]:
    """Where an exception came from (``file:line in function`` frames), without its message.

    Exception messages from readers can carry data values; frames cannot.
    """
    import traceback  # noqa: PLC0415

    return [f"{f.filename}:{f.lineno} in {f.name}" for f in traceback.extract_tb(exc.__traceback__)][-12:]
