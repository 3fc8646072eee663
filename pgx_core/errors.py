"""The pgx exception tree. Every error pgx raises on purpose derives from :class:`PgxError`.

::

    PgxError                      exit code of the class (the process exit code it causes)
    ├── UsageError                64  bad command line
    │   └── ArgumentError         64  arguments that do not go together (printed under the usage line)
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
    │   ├── PreconditionFailed     1  a create-only or compare-and-swap put lost the race
    │   ├── StoreAccessError      64  no credentials found, credentials rejected or access denied
    │   │                             (retrying cannot fix it; credentials: standard AWS chain)
    │   ├── BucketNotFound        64  the bucket does not exist on the configured endpoint
    │   └── UnsupportedCondition  64  the store refused If-None-Match / If-Match as unsupported
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


class ArgumentError(UsageError):
    """A command's arguments do not go together (found after parsing): the command line prints
    the command's usage line above the message, as for a flag it cannot parse."""


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


class StoreAccessError(StorageError):
    """The store found no credentials, rejected them, or denied the operation.

    Retrying cannot fix it, so it exits like a usage error. The message names the object or
    prefix, the store's error code and HTTP status, and where credentials come from.
    """

    exit_code = ExitCode.USAGE


class BucketNotFound(StorageError):
    """The bucket does not exist (or is not on this endpoint): a spec or setup problem."""

    exit_code = ExitCode.USAGE


class UnsupportedCondition(StorageError):
    """The store refused a conditional header (If-None-Match / If-Match) as not implemented."""

    exit_code = ExitCode.USAGE


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


# Spans kept verbatim: they locate or count things and are never cell values.
_KEEP = (
    # URIs: object keys, prefixes, endpoints. A colon only in the authority (host:port), so
    # ``uri:value`` does not drag a value along.
    r"\b(?:s3|file|https?)://[^\s'\"<>|,;()\[\]{}\\/]*(?:/[^\s'\"<>|,;()\[\]{}\\:/]*)*"
    r"|\b\d{8}T\d{6}Z-[0-9a-f]{8}\b"  # run ids
    r"|\b(?:HTTP|status)(?: status)?(?: code)?:? [1-5]\d\d\b"  # HTTP 503, HTTP status 403
    r"|\b\d{1,10}(?: of \d{1,10})? (?:rows|columns|lines|objects|bytes|fields|entities|buckets"
    r"|files|parts|records|attempts|retries|seconds)\b"  # counts: 113 columns, 3 of 1000 objects
)
# One pass: at each position the leftmost match wins, and a kept span is consumed whole, so the
# digits inside it are not scrubbed.
_SCRUB = re.compile(
    rf"(?P<keep>{_KEEP})"
    r"|(?P<bytes>(?<!\w)b'(?:[^'\\]|\\.)*'|(?<!\w)b\"(?:[^\"\\]|\\.)*\")"
    r"|(?P<value>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")"
    r"|(?P<n>\d{3,})"
)
_TOKENS = {"bytes": "<bytes>", "value": "<value>", "n": "<n>"}
_SCRUB_MAX = 300


def _scrub_match(m: re.Match[str]) -> str:
    kind = m.lastgroup or "n"
    return m.group() if kind == "keep" else _TOKENS[kind]


def _drop_raw_line(line: str) -> str:
    # A raw extract record is pipe-delimited: from its start (after the last ": " before the first
    # pipe, else the start of the line) to the end of the line, all of it goes.
    head = line[: line.index("|")]
    cut = head.rfind(": ")
    return (line[: cut + 2] if cut >= 0 else "") + "<line>"


def scrub(text: str) -> str:
    """Remove anything that could be a data value from a reader's or library's error text.

    Keeps the shape of the message (which library complained about what, where) and drops what
    a member key, date, ZIP, name or raw line could hide in:

    * a line holding a ``|`` (a raw pipe-delimited record): from the record's start — after the
      last ``": "`` before the first pipe, else the line's start — to the end of the line becomes
      ``<line>``;
    * byte strings become ``<bytes>``, quoted strings ``<value>``, and digit runs of three or
      more ``<n>`` (``0048151623420``, ``20190101``, ``2019-01-01`` → ``<n>-01-01``, ``12345-6789``);
    * except inside spans kept verbatim, because they locate or count things and are never a
      cell value:

      - unquoted URIs (``s3://``, ``file://``, ``http(s)://``) up to whitespace, a quote, one of
        ``|,;()[]{}<>`` or a colon after the host;
      - run ids (``20261126T101500Z-3f9c2a7e``);
      - HTTP statuses (``HTTP 503``, ``HTTP status 403``);
      - counts: a number of at most 10 digits (or ``N of M``) followed by one of the words rows,
        columns, lines, objects, bytes, fields, entities, buckets, files, parts, records,
        attempts, retries, seconds (``expected 113 columns``, ``900 of 1000 objects``).

    A quoted URI is still a quoted string (dropped): only pgx's own unquoted locations survive.
    One regex pass, linear in the text; the result is truncated to a few hundred characters.
    """
    if "|" in text:
        text = "\n".join(_drop_raw_line(line) if "|" in line else line for line in text.split("\n"))
    text = _SCRUB.sub(_scrub_match, text)
    if len(text) > _SCRUB_MAX:
        text = text[:_SCRUB_MAX] + "…"
    return text
