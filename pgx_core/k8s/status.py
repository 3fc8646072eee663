"""What a PipelineRun's status says, from its Job and the Job's pod: pure functions, no API calls.

:func:`job_phase` turns a Job (and what its pod's pgx container said: :class:`Observed`) into a
phase, reason and message; :func:`phase_conditions` and :func:`conditions` into the Kubernetes
conditions ``Accepted``, ``Running``, ``Succeeded``, ``Failed`` and ``Degraded``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pgx_core.exitcodes import ExitCode
from pgx_core.k8s.kubetime import rfc3339

TERMINAL = ("Succeeded", "Failed")
CONDITIONS = ("Accepted", "Running", "Succeeded", "Failed", "Degraded")

# What a pgx exit code means, as (reason, message).
EXIT_MEANING: dict[int, tuple[str, str]] = {
    int(ExitCode.OK): ("Succeeded", "everything planned is completed or was already completed"),
    int(ExitCode.INTERNAL): ("InternalError", "unexpected internal error"),
    int(ExitCode.DATA): ("DataError", "a gate failed; nothing was promoted for the failing entity"),
    int(ExitCode.CONFLICT): ("Conflict", "an entity is leased by another live run; the rest was done"),
    int(ExitCode.USAGE): ("InvalidSpec", "invalid run spec or usage"),
    int(ExitCode.TRANSIENT): ("Transient", "storage or cluster unavailable after retries, or interrupted"),
}
_EXIT_IN_MESSAGE = re.compile(r"exit code (\d+)")


@dataclass
class Observed:
    """What the pgx container of a Job's latest pod says: exit code, termination document, stage."""

    exit_code: int | None = None
    result: dict[str, Any] | None = None
    stage: str | None = None


def job_terminal(job: Mapping[str, Any]) -> str | None:
    """``Complete`` or ``Failed`` when the Job has that condition, else None."""
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") in ("Complete", "Failed") and cond.get("status") == "True":
            return str(cond["type"])
    return None


def job_running(job: Mapping[str, Any]) -> bool:
    """True while a Job may still write to the lake: not finished, being deleted, or with pods
    still active or terminating after its end."""
    st = job.get("status") or {}
    if (job.get("metadata") or {}).get("deletionTimestamp"):
        return True
    return job_terminal(job) is None or bool(st.get("active") or st.get("terminating"))


def conditions(
    old: list[dict[str, Any]], wanted: Mapping[str, tuple[bool, str, str]], generation: int, now: str
) -> list[dict[str, Any]]:
    """Every condition type in :data:`CONDITIONS` order; ``lastTransitionTime`` moves only when
    a condition's status changes."""
    before = {c.get("type"): c for c in old}
    out = []
    for kind in CONDITIONS:
        state, reason, message = wanted.get(kind, (False, "NotApplicable", ""))
        status = "True" if state else "False"
        prev = before.get(kind)
        since = prev.get("lastTransitionTime") if prev and prev.get("status") == status else now
        out.append(
            {
                "type": kind,
                "status": status,
                "reason": reason,
                "message": message,
                "lastTransitionTime": since,
                "observedGeneration": generation,
            }
        )
    return out


def stage_from_log(text: str) -> str | None:
    """The stage of the last JSON log line of ``pgx run`` that names one."""
    for line in reversed(text.splitlines()):
        if not line.startswith("{"):
            continue
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict) and isinstance(doc.get("stage"), str):
            return str(doc["stage"])
    return None


def phase_conditions(phase: str, reason: str, message: str, degraded: bool) -> dict[str, tuple[bool, str, str]]:
    """The conditions a phase implies: ``(status, reason, message)`` by type."""
    invalid = reason == "InvalidSpec"
    active = phase in ("Pending", "Waiting", "Running")

    def only(when: bool, other: str) -> tuple[bool, str, str]:
        return (True, reason, message) if when else (False, other, "")

    return {
        "Accepted": (False, reason, message) if invalid else (True, "SpecValid", "the spec is valid"),
        "Running": (phase == "Running", reason, message) if active else (False, "Finished", ""),
        "Succeeded": only(phase == "Succeeded", "NotSucceeded"),
        "Failed": only(phase == "Failed", "NotFailed"),
        "Degraded": (True, "PartlyDone", message) if degraded else (False, "NotDegraded", ""),
    }


def is_degraded(phase: str, seen: Observed, result: Mapping[str, Any] | None) -> bool:
    """A failed run that did part of its work: exit 3 (another run held some entities; the rest
    was done), or exit 2 with entities completed or already done beside the failed ones."""
    if phase != "Failed":
        return False
    if seen.exit_code == int(ExitCode.CONFLICT):
        return True
    totals = (result or {}).get("totals") or {}
    return seen.exit_code == int(ExitCode.DATA) and bool(totals.get("completed") or totals.get("skipped"))


def job_phase(job: Mapping[str, Any], seen: Observed) -> tuple[str, str, str, dict[str, Any]]:
    """``(phase, reason, message, times and exit code)`` of a Job."""
    st = job.get("status") or {}
    conds = {c.get("type"): c for c in st.get("conditions") or [] if c.get("status") == "True"}
    extra: dict[str, Any] = {"startTime": rfc3339(st.get("startTime")), "exitCode": None, "completionTime": None}
    if "Complete" in conds:
        reason, message = EXIT_MEANING[0]
        extra.update(exitCode=0, completionTime=rfc3339(st.get("completionTime") or conds["Complete"].get(
            "lastTransitionTime")))  # fmt: skip
        return "Succeeded", reason, message, extra
    if "Failed" in conds:
        cond = conds["Failed"]
        found = _EXIT_IN_MESSAGE.search(str(cond.get("message") or ""))
        code = int(found.group(1)) if found else seen.exit_code
        if code is not None and code in EXIT_MEANING:
            reason, meaning = EXIT_MEANING[code]
            message = f"pgx exited with {code}: {meaning}"
        else:
            reason = str(cond.get("reason") or "JobFailed")
            message = str(cond.get("message") or "the Job failed")
        extra.update(exitCode=code, completionTime=rfc3339(cond.get("lastTransitionTime")))
        return "Failed", reason, message, extra
    if st.get("active") or st.get("startTime"):
        return "Running", "JobRunning", "the Job's pod is running", extra
    return "Pending", "JobPending", "waiting for the Job's pod to start", extra
