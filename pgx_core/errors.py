"""The pgx exception tree. Every error pgx raises on purpose derives from :class:`PgxError`.

::

    PgxError                      exit code of the class (SPEC §5)
    ├── UsageError                64  bad command line
    ├── SpecError                 64  invalid run spec (carries every problem at once)
    ├── PluginError               64  a plugin failed to load, or a stage type is unknown/duplicated
    ├── HookError                  1  a lifecycle hook that may veto (before_run/before_stage) raised
    ├── DataError                  2  a data gate failed; never retried
    │   ├── ConservationError      2  rows in != rows out + quarantined (+ out of scope)
    │   └── NoInput                2  a stage found no input object where it looked
    ├── ConflictError              3  another live run holds the entity's lease
    ├── TransientError            75  storage/cluster unavailable; retried with backoff first
    │   ├── InterruptedRun        75  SIGTERM/SIGINT arrived; the run stopped cleanly
    │   └── ClusterUnavailable    75  the Ray cluster's head stopped answering
    ├── StorageError               1  an object-store call failed for a non-transient reason
    │   ├── ObjectNotFound         1
    │   └── PreconditionFailed     1  a create-only or compare-and-swap put lost the race
    ├── FencedError                3  this run's lease was taken over; it may not promote
    └── StageError                 1  a plugin's code raised; wraps the cause with stage,
                                      plugin version and entity attached

Messages name the subject, what was expected, what was found and where. They never contain a
value from a data row (PHI): reader errors are scrubbed with :func:`scrub` before being raised.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pgx_core.exitcodes import ExitCode


class PgxError(Exception):
    """Base of every error pgx raises deliberately."""

    exit_code: ExitCode = ExitCode.INTERNAL


class UsageError(PgxError):
    exit_code = ExitCode.USAGE


@dataclass(frozen=True)
class SpecProblem:
    """One problem found in a run spec."""

    path: str  # key path such as ``spec.stages[3].with.drugMap`` ('' for the document)
    message: str  # what was expected and what was found

    def render(self, source: str) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{source}: {where}{self.message}"


class SpecError(PgxError):
    """An invalid run spec. Holds every problem found, not just the first."""

    exit_code = ExitCode.USAGE

    def __init__(self, source: str, problems: list[SpecProblem]) -> None:
        self.source = source
        self.problems = problems
        n = len(problems)
        lines = "\n".join("  " + p.render(source) for p in problems)
        super().__init__(f"Invalid run spec {source}: {n} problem{'s' if n != 1 else ''}\n{lines}")


class PluginError(PgxError):
    exit_code = ExitCode.USAGE


class HookError(PgxError):
    exit_code = ExitCode.INTERNAL


class DataError(PgxError):
    exit_code = ExitCode.DATA


class ConservationError(DataError):
    pass


class NoInput(DataError):
    """A stage found no input object at all where it looked: it changes nothing (no input never
    deletes output). The message names the location searched."""


class ConflictError(PgxError):
    exit_code = ExitCode.CONFLICT


class FencedError(PgxError):
    exit_code = ExitCode.CONFLICT


class TransientError(PgxError):
    exit_code = ExitCode.TRANSIENT


class InterruptedRun(TransientError):
    pass


class ClusterUnavailable(TransientError):
    """The Ray cluster the run works on is gone (its head stopped answering)."""


class StorageError(PgxError):
    exit_code = ExitCode.INTERNAL


class ObjectNotFound(StorageError):
    pass


class PreconditionFailed(StorageError):
    pass


class StageError(PgxError):
    """A plugin's code raised something that is not a :class:`PgxError`."""

    exit_code = ExitCode.INTERNAL

    def __init__(self, stage: str, plugin_version: str, entity: str | None, cause: BaseException) -> None:
        self.stage = stage
        self.plugin_version = plugin_version
        self.entity = entity
        self.cause_type = type(cause).__name__
        where = f" on entity {entity}" if entity else ""
        super().__init__(
            f"Stage {stage} (version {plugin_version}) failed{where}: {self.cause_type}: {scrub(str(cause))}"
        )


# Anything that could be a data value: digit runs of 3+, quoted strings, bytes reprs.
_SCRUB_PATTERNS = [
    (re.compile(r"b'(?:[^'\\]|\\.)*'|b\"(?:[^\"\\]|\\.)*\""), "<bytes>"),
    (re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\""), "<value>"),
    (re.compile(r"\d{3,}"), "<n>"),
]
_SCRUB_MAX = 300


def scrub(text: str) -> str:
    """Remove anything that could be a data value from a reader's or library's error text.

    Keeps the shape of the message (which library complained about what) and drops quoted
    strings, byte strings and digit runs of three or more, which is where member keys, dates,
    ZIPs and raw lines would hide. Truncated to a few hundred characters.
    """
    for pattern, repl in _SCRUB_PATTERNS:
        text = pattern.sub(repl, text)
    if len(text) > _SCRUB_MAX:
        text = text[:_SCRUB_MAX] + "…"
    return text
