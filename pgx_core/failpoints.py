"""Named fail points for crash-consistency tests (in the spirit of FoundationDB/TiKV fail points).

``PGX_FAILPOINTS="after_replace=kill"`` makes the process SIGKILL itself the first time the
``after_replace`` point is reached; ``after_replace=kill@3`` on the third time. Unset in
production, where :func:`hit` costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

_counts: dict[str, int] = {}

# Every point the core defines, in the order an entity passes them.
POINTS = ("after_staging", "after_backup", "after_replace", "after_state_commit", "after_cleanup")


def _parse(spec: str) -> dict[str, tuple[str, int]]:
    out: dict[str, tuple[str, int]] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, action = item.partition("=")
        act, _, nth = action.partition("@")
        out[name] = (act or "kill", int(nth or 1))
    return out


def hit(name: str) -> None:
    """Reach fail point ``name``."""
    spec = os.environ.get("PGX_FAILPOINTS")
    if not spec:
        return
    wanted = _parse(spec).get(name)
    if wanted is None:
        return
    _counts[name] = _counts.get(name, 0) + 1
    action, nth = wanted
    if _counts[name] == nth and action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
