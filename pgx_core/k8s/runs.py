"""``pgx runs list|get|logs``: the PipelineRuns of a namespace, for people who do not live in kubectl.

Reads what ``pgx controller`` writes to each PipelineRun's ``.status``
(:func:`pgx_core.k8s.crd.status_schema`) and shows it as a table (:func:`table`), as a description
ending in the next command to try (:func:`describe`), or as the log of the pgx container of the
run's current Job (:func:`log_text`). It only reads: get and list on ``pipelineruns``, list on
``pods``, get on ``pods/log``.

A failed call is one line naming the call and the HTTP status. 429, 5xx and no answer at all are
transient (:class:`~pgx_core.errors.TransientError`, exit 75: the same command may work in a
moment); any other refusal (401, 403, 404, …) is a :class:`~pgx_core.errors.UsageError` (exit 64:
retrying the same command cannot help). The status holds counts and names only, never a data value.
"""

from __future__ import annotations

import codecs
import contextlib
import json
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from pgx_core.errors import TransientError, UsageError
from pgx_core.k8s.crd import CRD_NAME, GROUP, PLURAL, VERSION
from pgx_core.k8s.kubeconfig import load_config, plain
from pgx_core.k8s.kubetime import parse_time
from pgx_core.k8s.render import CONTAINER
from pgx_core.k8s.status import TERMINAL

COMMAND = "pgx runs"
HEADERS = ("NAME", "PHASE", "STAGE", "PROGRESS", "ENTITIES", "AGE")
# Seconds to connect and between two reads of an answer; a followed log waits as long as it takes.
REQUEST_TIMEOUT = (10, 60)
_MESSAGE_MAX = 300  # characters of the API server's own message kept in an error line


def connect(namespace: str | None) -> tuple[client.ApiClient, str]:
    """A client of the configured cluster (:func:`~pgx_core.k8s.kubeconfig.load_config`) and the
    namespace to look in: ``namespace``, else the one the configuration names."""
    default = load_config(COMMAND)
    return client.ApiClient(), namespace or default


# --- reading ------------------------------------------------------------------------------------


def _api_message(exc: ApiException) -> str:
    """The ``message`` of the API server's Status answer, on one line ('' when there is none)."""
    try:
        body = json.loads(exc.body or "")
    except (TypeError, ValueError):
        return ""
    text = " ".join(str(body.get("message") or "").split()) if isinstance(body, dict) else ""
    return text if len(text) <= _MESSAGE_MAX else text[:_MESSAGE_MAX] + "…"


@contextlib.contextmanager
def _calling(api: client.ApiClient, what: str, not_found: str | None = None) -> Iterator[None]:
    """Turn what a call to the API raises into one-line pgx errors. ``what`` names the call
    (``listing PipelineRuns in namespace pgx``); ``not_found`` replaces the line of a 404."""
    try:
        yield
    except ApiException as exc:
        if exc.status == 404 and not_found:
            raise UsageError(not_found) from exc
        status = int(exc.status or 0)
        detail = _api_message(exc)
        line = f"{what}: HTTP {status} {exc.reason or ''}".rstrip() + (f": {detail}" if detail else "")
        if status == 429 or status >= 500 or status == 0:
            raise TransientError(f"{line}; try again in a moment") from exc
        raise UsageError(line) from exc
    except urllib3.exceptions.HTTPError as exc:  # refused, reset, timed out: no HTTP answer at all
        host = api.configuration.host
        raise TransientError(
            f"{what}: no answer from the Kubernetes API at {host} ({type(exc).__name__}); try again in a moment"
        ) from exc


def list_runs(api: client.ApiClient, namespace: str) -> list[dict[str, Any]]:
    """The PipelineRuns of ``namespace``, sorted by name."""
    custom: Any = client.CustomObjectsApi(api)
    hint = (
        f"listing PipelineRuns in namespace {namespace}: HTTP 404 Not Found: is the PipelineRun CRD "
        f"({CRD_NAME}) installed in this cluster?"
    )
    with _calling(api, f"listing PipelineRuns in namespace {namespace}", not_found=hint):
        listed = custom.list_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, _request_timeout=REQUEST_TIMEOUT
        )
    return sorted(listed.get("items") or [], key=lambda r: str(r["metadata"]["name"]))


def get_run(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    """The PipelineRun ``name``; a :class:`~pgx_core.errors.UsageError` when there is none."""
    custom: Any = client.CustomObjectsApi(api)
    missing = f"no PipelineRun {name} in namespace {namespace}"
    with _calling(api, f"reading PipelineRun {name} in namespace {namespace}", not_found=missing):
        run: dict[str, Any] = custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, _request_timeout=REQUEST_TIMEOUT
        )
    return run


def current_pod(api: client.ApiClient, namespace: str, run: Mapping[str, Any]) -> str:
    """The newest pod (by creationTimestamp) of the run's current Job (``status.jobName``), once
    its pgx container has started. Why there is none is a one-line error: transient while the Job
    or its container is still to come, a usage error when none ever will."""
    name = run["metadata"]["name"]
    status = run.get("status") or {}
    phase = status.get("phase") or "not seen by pgx controller yet"
    job = status.get("jobName")
    if not job:
        if status.get("reason") == "InvalidSpec":
            raise UsageError(f"PipelineRun {name} has no Job: its spec is invalid (pgx runs get {name} lists why)")
        raise TransientError(f"PipelineRun {name} has no Job yet (phase {phase}); try again once it starts")
    core: Any = client.CoreV1Api(api)
    with _calling(api, f"listing the pods of Job {job} in namespace {namespace}"):
        listed = plain(
            api, core.list_namespaced_pod(namespace, label_selector=f"job-name={job}", _request_timeout=REQUEST_TIMEOUT)
        )
    pods = listed.get("items") or []
    if not pods:
        if phase in TERMINAL:
            raise UsageError(
                f"Job {job} of PipelineRun {name} has no pod left (Kubernetes removes a finished Job's pods with "
                f"it, after job.ttlSecondsAfterFinished); its summaries remain: pgx runs get {name}"
            )
        raise TransientError(f"Job {job} of PipelineRun {name} has no pod yet; try again in a moment")
    newest = max(pods, key=lambda p: (str(p["metadata"].get("creationTimestamp") or ""), p["metadata"]["name"]))
    pod = str(newest["metadata"]["name"])
    for cs in (newest.get("status") or {}).get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting")
        if cs.get("name") == CONTAINER and waiting:
            why = waiting.get("reason") or "waiting"
            raise TransientError(
                f"container {CONTAINER} of pod {pod} has not started yet ({why}); try again in a moment"
            )
    return pod


def log_text(
    api: client.ApiClient, namespace: str, name: str, *, follow: bool = False, tail: int | None = None
) -> Iterator[str]:
    """The log of the pgx container of the run's current pod (:func:`current_pod`), piece by
    piece as the API sends it: with ``follow``, until the container ends. ``tail``: only the last
    lines. Pieces are passed on as they arrive, not held back to a line's end, so a followed log
    shows what the container wrote at once; UTF-8 split between two pieces is joined first."""
    pod = current_pod(api, namespace, get_run(api, namespace, name))
    core: Any = client.CoreV1Api(api)
    what = f"reading the log of pod {pod} in namespace {namespace}"
    with _calling(api, what):
        resp = core.read_namespaced_pod_log(
            pod, namespace, container=CONTAINER, follow=follow, tail_lines=tail, _preload_content=False,
            _request_timeout=None if follow else REQUEST_TIMEOUT,
        )  # fmt: skip
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    try:
        with _calling(api, what):
            for chunk in resp.stream(amt=None, decode_content=True):
                if text := decoder.decode(chunk):
                    yield text
        if rest := decoder.decode(b"", final=True):
            yield rest
    finally:
        resp.close()  # also when the reader stops early: the rest of a followed log is not wanted


# --- showing ------------------------------------------------------------------------------------


def age(value: Any, now: datetime) -> str:
    """How long ago a Kubernetes time was, as ``kubectl get`` says it: ``45s``, ``5m``, ``3h``, ``2d``."""
    ts = parse_time(value)
    if ts is None:
        return "-"
    seconds = max(0, int((now - ts).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60}s"
    return f"{s // 3600}h{s % 3600 // 60}m"


def entities_text(totals: Mapping[str, Any] | None) -> str:
    """Entity totals in a word: ``7/9 done, 1 failed`` (done: completed now or already before)."""
    if not totals:
        return "-"
    done = int(totals.get("completed") or 0) + int(totals.get("skipped") or 0)
    parts = [f"{done}/{int(totals.get('entities') or 0)} done"]
    parts += [f"{int(totals[k])} {k}" for k in ("failed", "locked") if totals.get(k)]
    return ", ".join(parts)


def run_doc(run: Mapping[str, Any]) -> dict[str, Any]:
    """What ``--json`` prints of one run: its identity and its ``.status`` as the controller wrote it."""
    meta = run.get("metadata") or {}
    return {
        "name": meta.get("name"),
        "namespace": meta.get("namespace"),
        "generation": meta.get("generation"),
        "created": meta.get("creationTimestamp"),
        "status": dict(run.get("status") or {}),
    }


def _columns(rows: Sequence[Sequence[str]], indent: str = "") -> list[str]:
    """Rows as left-aligned columns three spaces apart, as ``kubectl get`` prints them."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [indent + "   ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]


def table(runs: Sequence[Mapping[str, Any]], now: datetime | None = None) -> list[str]:
    """``pgx runs list``: a header and one row per run (NAME PHASE STAGE PROGRESS ENTITIES AGE)."""
    now = now or datetime.now(UTC)
    rows = [HEADERS]
    for run in runs:
        st = run.get("status") or {}
        rows.append((
            str(run["metadata"]["name"]),
            str(st.get("phase") or "-"),
            str(st.get("currentStage") or "-"),
            str(st.get("progress") or "-"),
            entities_text(st.get("entities")),
            age(run["metadata"].get("creationTimestamp"), now),
        ))  # fmt: skip
    return _columns(rows)


def hints(run: Mapping[str, Any]) -> list[str]:
    """The next commands worth trying for a run, by where it stands."""
    name = run["metadata"]["name"]
    st = run.get("status") or {}
    lake = (run.get("spec") or {}).get("lake")
    report = f"pgx report {st['runId']} --lake {lake}" if st.get("runId") and lake else None
    if st.get("reason") == "InvalidSpec":
        return ["pgx validate FILE  (check the fixed spec where you edit it, then kubectl apply -f FILE)"]
    if st.get("phase") == "Succeeded":
        return [f"{report}  (an HTML report of this run)"] if report else []
    if st.get("phase") == "Failed":
        logs = f"pgx runs logs {name}  (what the pgx container wrote before it ended)"
        return [*([f"{report}  (the failed entities and why)"] if report else []), logs]
    if st.get("jobName"):
        return [f"pgx runs logs {name} --follow  (the log of the pgx container as it runs)"]
    return []


def describe(run: Mapping[str, Any], now: datetime | None = None) -> list[str]:
    """``pgx runs get``: the run's status in words, ending in the next commands to try."""
    now = now or datetime.now(UTC)
    meta = run["metadata"]
    st = run.get("status") or {}
    created = age(meta.get("creationTimestamp"), now)
    lines = [f"PipelineRun {meta['name']} in namespace {meta.get('namespace')}, created {created} ago"]

    def field(label: str, value: Any) -> None:
        if value not in (None, "", [], {}):
            lines.append(f"  {label + ':':<12} {value}")

    if not st:
        field("phase", "none yet: pgx controller has not looked at this run (is it running, in this namespace?)")
        return lines
    phase, reason = st.get("phase"), st.get("reason")
    field("phase", f"{phase} ({reason})" if reason and reason != phase else phase)
    field("message", st.get("message"))
    field("run id", st.get("runId"))
    generation, observed = meta.get("generation"), st.get("observedGeneration")
    behind = "" if observed == generation else " (the status is of an earlier generation: pgx controller is behind)"
    field("generation", f"{generation}, observed {observed if observed is not None else '-'}{behind}")
    field("job", st.get("jobName"))
    stage = st.get("currentStage")
    field("stage", f"{stage} ({st['progress']} stages begun)" if stage and st.get("progress") else stage)
    totals = st.get("entities")
    if totals:
        split = f"{int(totals.get('completed') or 0)} completed, {int(totals.get('skipped') or 0)} already done"
        field("entities", f"{entities_text(totals)} ({split})")
    field("exit code", st.get("exitCode"))
    started, ended = parse_time(st.get("startTime")), parse_time(st.get("completionTime"))
    if started:
        field("started", f"{st['startTime']} ({age(st['startTime'], now)} ago)")
    if ended:
        took = f", after {_duration((ended - started).total_seconds())}" if started else ""
        field("completed", f"{st['completionTime']} ({age(st['completionTime'], now)} ago{took})")
    conditions = st.get("conditions") or []
    if conditions:
        lines.append("  conditions:")
        rows = [("TYPE", "STATUS", "REASON", "SINCE")]
        rows += [
            (str(c.get("type")), str(c.get("status")), str(c.get("reason") or "-"),
             f"{c.get('lastTransitionTime')} ({age(c.get('lastTransitionTime'), now)} ago)")
            for c in conditions
        ]  # fmt: skip
        lines += _columns(rows, indent="    ")
    summaries = st.get("summaries") or []
    if summaries:
        lines.append("  summaries:")
        lines += _columns([(str(s.get("stage")), str(s.get("location"))) for s in summaries], indent="    ")
    problems = st.get("problems") or []
    if problems:
        lines.append("  problems:")
        lines += [f"    {p}" for p in problems]
    return lines + [f"next: {h}" for h in hints(run)]
