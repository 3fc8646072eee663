"""The termination message of a ``pgx run`` container: what ``pgx controller`` reads back.

Kubernetes keeps the first 4096 bytes a container writes to ``/dev/termination-log`` in the pod's
status (``state.terminated.message``). ``pgx run`` writes there, when the file exists, a compact
JSON document of its result: the run id, the exit code, the entity totals over every stage, the
last stage it worked on and where the summaries are; and each stage's totals while they fit.
Counts and names only, never a data value.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

PATH = "/dev/termination-log"  # the kubelet's default terminationMessagePath
PATH_ENV = "PGX_TERMINATION_LOG"  # another path (tests); unset: PATH when it exists
LIMIT = 4096  # bytes Kubernetes keeps
COUNTS = ("entities", "completed", "skipped", "failed", "locked")


def message(run_id: str, exit_code: int, stages: Sequence[tuple[str, Mapping[str, int]]], summaries: str) -> str:
    """The document for ``stages`` (``(stage name, totals)`` in run order), at most :data:`LIMIT` bytes."""
    totals = {k: sum(int(t.get(k, 0)) for _, t in stages) for k in COUNTS}
    doc: dict[str, Any] = {
        "runId": run_id,
        "exitCode": int(exit_code),
        "lastStage": stages[-1][0] if stages else None,
        "totals": totals,
        "summaries": summaries,
        "stages": [{"stage": name, **{k: int(t.get(k, 0)) for k in COUNTS}} for name, t in stages],
    }
    text = json.dumps(doc, separators=(",", ":"))
    if len(text.encode()) > LIMIT:  # many stages: the totals stay, the per-stage detail goes
        del doc["stages"]
        text = json.dumps(doc, separators=(",", ":"))
    return text


def write(text: str) -> bool:
    """Write ``text`` where Kubernetes reads it; False when not in a container (nothing written)."""
    path = os.environ.get(PATH_ENV) or (PATH if Path(PATH).exists() else "")
    if not path:
        return False
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError:
        return False
    return True


def parse(text: str | None) -> dict[str, Any] | None:
    """The document of a termination message, or None when it is not one of pgx's."""
    if not text:
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    if not isinstance(doc, dict) or "runId" not in doc or not isinstance(doc.get("totals"), dict):
        return None
    return doc
