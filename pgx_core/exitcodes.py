"""Process exit codes. Kubernetes ``podFailurePolicy`` relies on these exact values."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Every exit code ``pgx`` can return."""

    # Everything planned is completed or was already completed.
    OK = 0
    # Unexpected internal error: a bug or an unclassified failure. Safe to retry.
    INTERNAL = 1
    # Data error: a gate failed (reject rate, row conservation, zero rows where rows were
    # expected). Nothing was promoted for the failing entity. Retrying changes nothing.
    DATA = 2
    # Conflict: an entity is leased by another live run; everything else was done.
    CONFLICT = 3
    # Invalid run spec or command-line usage.
    USAGE = 64
    # Transient: storage or cluster unavailable after retries, or the run was interrupted
    # (SIGTERM) before everything finished. Safe to retry; resume picks up where it stopped.
    TRANSIENT = 75


def worst(codes: list[ExitCode]) -> ExitCode:
    """Combine per-stage outcomes into one process exit code.

    Precedence: internal > transient > data > conflict > ok. An internal error hides the
    others because it means the run's bookkeeping cannot be trusted; a transient failure comes
    next because a retry may clear the rest too.
    """
    order = [ExitCode.INTERNAL, ExitCode.TRANSIENT, ExitCode.DATA, ExitCode.CONFLICT, ExitCode.USAGE]
    for code in order:
        if code in codes:
            return code
    return ExitCode.OK
