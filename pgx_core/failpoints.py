"""Named fail points for crash-consistency tests (in the spirit of FoundationDB/TiKV fail points).

``PGX_FAILPOINTS="after_replace=kill"`` makes the process SIGKILL itself the first time the
``after_replace`` point is reached; ``after_replace=kill@3`` on the third time.

``after_staging=raise`` raises a ``RuntimeError`` there instead, as a bug in pgx's own code would.

``after_plan=pause`` stops the process at the point instead, so a test can act on a run caught in
a known phase (send it SIGTERM, kill its cluster, let another run overtake it): the process
creates ``$PGX_FAILPOINT_DIR/<point>.reached`` and waits until ``<point>.release`` appears there
(at most :data:`PAUSE_LIMIT_SEC`). Points reached on Ray workers pause those workers.

Unset in production, where :func:`hit` costs one environment lookup.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

_counts: dict[str, int] = {}

# Every point an entity passes, in order (the worker protocol and promotion).
POINTS = ("after_staging", "after_backup", "after_replace", "after_state_commit", "after_cleanup")
# Points of the driver and of stages: ``after_plan`` (a stage was planned, nothing ran yet),
# ``impute_shuffle`` (a shuffle work item started).
OTHER_POINTS = ("after_plan", "impute_shuffle")
PAUSE_LIMIT_SEC = 120.0


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
    if _counts[name] != nth:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "raise":
        raise RuntimeError(f"fail point {name} reached")
    elif action == "pause":
        _pause(name)


def _pause(name: str) -> None:
    folder = Path(os.environ.get("PGX_FAILPOINT_DIR", "."))
    (folder / f"{name}.reached").touch()
    deadline = time.monotonic() + PAUSE_LIMIT_SEC
    while not (folder / f"{name}.release").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
