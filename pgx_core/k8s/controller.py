"""``pgx controller``: runs each generation of a ``PipelineRun`` custom resource as a Job.

A reconcile loop on the official ``kubernetes`` client (kopf was considered: its peering needs
cluster-wide CRDs and RBAC of its own, its test harness a real API server, and it would bring a
second concurrency model into pgx; the loop below is what pgx needs and no more):

- **Leader election** (:mod:`pgx_core.k8s.leader`): a ``coordination.k8s.io/v1`` Lease; only the
  holder acts, so two controllers never both act.
- **Watches** of PipelineRuns and of the Jobs it made feed a **work queue** of run names
  (:mod:`pgx_core.k8s.workqueue`): a name is queued once however many events name it, and a
  reconcile that fails for any reason is retried after an exponential backoff with jitter. Every
  ``resync_seconds`` every run is queued again; a running one every ``poll_seconds``.
- **One writer per PipelineRun**: the Job of a generation is created only when no Job of an
  earlier generation still runs. ``spec.onUpdate: wait`` (default) waits for it; ``cancel`` deletes
  it first (foreground: its pod gets SIGTERM, pgx writes its summary and exits 75).
- **Restart-safe**: the run id is kept in ``.status`` before anything is created, and the
  ConfigMap and Job are named ``pgx-<run>-g<generation>``, so a controller restarted between any
  two steps finds what the last one made (409 AlreadyExists is success) and makes nothing twice.
- **Deletion**: a finalizer (``pgx.io/stop-jobs``) holds a deleted PipelineRun until its Jobs
  are gone (each deleted in the foreground, so its pod stops cleanly); then the garbage collector
  removes the ConfigMaps.
- **Status** (:mod:`pgx_core.k8s.status`): ``observedGeneration``; ``conditions`` ``Accepted``,
  ``Running``, ``Succeeded``, ``Failed``, ``Degraded`` (a run that failed some entities and did
  the rest); the phase; the current stage and ``progress`` (stages begun of all) read from the pgx
  container's log while it runs; entity counts from its termination message
  (:mod:`pgx_core.k8s.termination`). Every transition and every error is also a Kubernetes Event
  on the PipelineRun.
- **Operations**: Prometheus metrics, ``/healthz`` and ``/readyz`` (:mod:`pgx_core.k8s.metrics`).
- **SIGTERM/SIGINT** set a stop event: watches end, the Lease is released, :func:`main` returns 0.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from pgx_core import clock
from pgx_core.errors import SpecError
from pgx_core.k8s import termination
from pgx_core.k8s.crd import GROUP, PLURAL, VERSION
from pgx_core.k8s.kubeconfig import load_config, plain
from pgx_core.k8s.kubetime import now, parse_time, rfc3339
from pgx_core.k8s.leader import LeaderLease
from pgx_core.k8s.metrics import Metrics, serve
from pgx_core.k8s.render import CONTAINER, DEFAULT_IMAGE, DEFAULT_SERVICE_ACCOUNT, MAX_NAME, render_run
from pgx_core.k8s.status import (
    TERMINAL,
    Observed,
    conditions,
    is_degraded,
    job_phase,
    job_running,
    job_terminal,
    phase_conditions,
    stage_from_log,
)
from pgx_core.k8s.workqueue import WorkQueue, backoff
from pgx_core.lake import paths
from pgx_core.spec.runspec import API_VERSION, KIND, RunSpec, validate_document
from pgx_core.stage import StageRegistry

log = logging.getLogger("pgx.controller")
_WATCH: Any = watch

LEASE_NAME = "pgx-controller"
MANAGED_BY = "pgx-controller"
COMPONENT = "pgx-controller"
FINALIZER = "pgx.io/stop-jobs"
LABEL_RUN = "pgx.io/run-name"
LABEL_GENERATION = "pgx.io/generation"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
DEFAULT_METRICS_PORT = 8080


def child_name(run_name: str, generation: int) -> str:
    """``pgx-<run>-g<generation>`` (ConfigMap and Job), hash-shortened past 63 characters."""
    suffix = f"-g{generation}"
    name = f"pgx-{run_name}{suffix}"
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(run_name.encode()).hexdigest()[:8]
    return f"{name[: MAX_NAME - len(suffix) - 9].rstrip('-')}-{digest}{suffix}"


def job_generation(job: Mapping[str, Any]) -> int:
    labels = (job.get("metadata") or {}).get("labels") or {}
    try:
        return int(labels.get(LABEL_GENERATION) or 0)
    except ValueError:
        return 0


@dataclass
class Controller:
    """Reconciles the PipelineRuns of one namespace. ``api`` is a configured ``ApiClient``."""

    namespace: str
    image: str = DEFAULT_IMAGE
    registry: StageRegistry | None = None
    api: client.ApiClient | None = None
    identity: str = field(default_factory=lambda: f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}")
    service_account: str = DEFAULT_SERVICE_ACCOUNT
    lease_name: str = LEASE_NAME
    lease_duration_seconds: int = 15
    resync_seconds: int = 30
    poll_seconds: float = 15.0  # a running run's status (stage, progress) is refreshed this often
    new_run_id: Callable[[], str] = clock.new_run_id
    queue: WorkQueue = field(default_factory=WorkQueue)
    metrics: Metrics = field(default_factory=Metrics)

    def __post_init__(self) -> None:
        if self.registry is None:
            from pgx_core.pluginmanager import make_plugin_manager  # noqa: PLC0415

            self.registry = make_plugin_manager().registry
        self.api = self.api or client.ApiClient()
        # Dict bodies and dict results throughout: the typed models add nothing here.
        self.custom: Any = client.CustomObjectsApi(self.api)
        self.core: Any = client.CoreV1Api(self.api)
        self.batch: Any = client.BatchV1Api(self.api)
        self.lease = LeaderLease(self.api, self.namespace, self.lease_name, self.identity, self.lease_duration_seconds)
        self.stop = threading.Event()
        self._watch_threads: list[threading.Thread] = []
        self.leading = False

    # ---------------------------------------------------------------- reading

    def list_runs(self) -> tuple[list[dict[str, Any]], str]:
        result = self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL)
        return list(result.get("items") or []), str((result.get("metadata") or {}).get("resourceVersion") or "")

    def get_run(self, name: str) -> dict[str, Any] | None:
        try:
            obj: dict[str, Any] = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return obj

    def jobs_of(self, run: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The Jobs this run owns, oldest generation first."""
        listed = plain(
            self.api, self.batch.list_namespaced_job(self.namespace, label_selector=f"{LABEL_MANAGED_BY}={MANAGED_BY}")
        )
        uid = run["metadata"].get("uid")
        owned = [
            j
            for j in listed.get("items") or []
            if any(r.get("uid") == uid for r in (j.get("metadata") or {}).get("ownerReferences") or [])
        ]
        return sorted(owned, key=job_generation)

    def validate(self, run: Mapping[str, Any]) -> RunSpec:
        """The run's spec validated as ``pgx validate`` does (raises SpecError)."""
        meta = run.get("metadata") or {}
        doc_meta: dict[str, Any] = {"name": meta.get("name")}
        if meta.get("labels"):
            doc_meta["labels"] = dict(meta["labels"])
        doc = {"apiVersion": API_VERSION, "kind": KIND, "metadata": doc_meta, "spec": run.get("spec")}
        assert self.registry is not None
        return validate_document(doc, f"pipelinerun/{meta.get('name')}", self.registry)

    def observe(self, job: Mapping[str, Any]) -> Observed:
        """The pgx container of the Job's pods: the newest ended one's exit code and termination
        message, and, while one runs, the stage its log names last."""
        name = job["metadata"]["name"]
        pods = plain(self.api, self.core.list_namespaced_pod(self.namespace, label_selector=f"job-name={name}"))
        seen = Observed()
        newest = ""
        running: str | None = None
        for pod in pods.get("items") or []:
            if (pod.get("status") or {}).get("phase") == "Running":
                running = pod["metadata"]["name"]
            for cs in (pod.get("status") or {}).get("containerStatuses") or []:
                term = (cs.get("state") or {}).get("terminated")
                if cs.get("name") != CONTAINER or not term or term.get("exitCode") is None:
                    continue
                finished = str(term.get("finishedAt") or "")
                if finished >= newest:
                    newest = finished
                    seen.exit_code = int(term["exitCode"])
                    seen.result = termination.parse(term.get("message"))
        if running and job_terminal(job) is None:
            try:
                text = self.core.read_namespaced_pod_log(running, self.namespace, container=CONTAINER, tail_lines=200)
            except ApiException as exc:
                if exc.status not in (400, 404):  # the container not started yet, or the pod just gone
                    raise
                text = ""
            seen.stage = stage_from_log(text if isinstance(text, str) else "")
        return seen

    # ---------------------------------------------------------------- writing

    def _set_finalizers(self, run: Mapping[str, Any], finalizers: list[str]) -> dict[str, Any]:
        """Replace the run's finalizers; the resourceVersion makes a concurrent change a 409 (retried)."""
        meta = run["metadata"]
        patch = {"metadata": {"finalizers": finalizers, "resourceVersion": meta.get("resourceVersion")}}
        out: dict[str, Any] = self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, meta["name"], patch
        )
        return out

    def event(self, run: Mapping[str, Any], reason: str, message: str, warning: bool = False) -> None:
        """A Kubernetes Event on the run. Best effort: a failure is logged, never raised."""
        meta = run["metadata"]
        stamp = rfc3339(now())
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": self.namespace},
            "involvedObject": {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": meta["name"],
                "namespace": self.namespace,
                "uid": meta.get("uid"),
            },
            "reason": reason,
            "message": message[:1024],
            "type": "Warning" if warning else "Normal",
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": self.identity,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            self.core.create_namespaced_event(self.namespace, body)
        except Exception as exc:  # an event is a courtesy: its failure never stops a reconcile
            log.warning("event %s for %s not recorded: %s", reason, meta["name"], _api_error(exc))

    def _owner(self, run: Mapping[str, Any]) -> dict[str, Any]:
        meta = run["metadata"]
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": meta["name"],
            "uid": meta["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }

    def desired_objects(self, run: Mapping[str, Any], spec: RunSpec, run_id: str) -> list[dict[str, Any]]:
        """The ConfigMap and Job of ``pgx render`` for this generation, named, labelled and owned."""
        meta = run["metadata"]
        generation = int(meta.get("generation") or 1)
        name = child_name(meta["name"], generation)
        config_map, job = render_run(
            spec, image=self.image, namespace=self.namespace, service_account=self.service_account
        )
        labels = {
            LABEL_MANAGED_BY: MANAGED_BY,
            LABEL_RUN: meta["name"],
            LABEL_GENERATION: str(generation),
            "app.kubernetes.io/instance": name,
        }
        for obj in (config_map, job):
            obj["metadata"]["name"] = name
            obj["metadata"]["labels"].update(labels)
            obj["metadata"]["ownerReferences"] = [self._owner(run)]
        pod = job["spec"]["template"]
        pod["metadata"]["labels"].update({k: v for k, v in labels.items() if k != LABEL_MANAGED_BY})
        for volume in pod["spec"]["volumes"]:
            if "configMap" in volume:
                volume["configMap"]["name"] = name
        for container in pod["spec"]["containers"]:
            if container["name"] == CONTAINER:
                container["env"].append({"name": clock.RUN_ID_ENV, "value": run_id})
        return [config_map, job]

    def _create(self, obj: dict[str, Any]) -> None:
        try:
            if obj["kind"] == "ConfigMap":
                self.core.create_namespaced_config_map(self.namespace, obj)
            else:
                self.batch.create_namespaced_job(self.namespace, obj)
            log.info("created %s %s/%s", obj["kind"], self.namespace, obj["metadata"]["name"])
        except ApiException as exc:
            if exc.status != 409:  # AlreadyExists: made by an earlier reconcile, which is fine
                raise

    def _delete_job(self, job: Mapping[str, Any]) -> None:
        """Delete a Job in the foreground: it stays until its pods are gone (each gets SIGTERM and
        its grace period: pgx releases its leases, writes its summary and exits 75)."""
        try:
            self.batch.delete_namespaced_job(job["metadata"]["name"], self.namespace, propagation_policy="Foreground")
        except ApiException as exc:
            if exc.status != 404:
                raise

    # ---------------------------------------------------------------- reconcile

    def reconcile(self, run: Mapping[str, Any]) -> float | None:
        """Bring one PipelineRun's Job and status in line with its current generation; returns
        when to look again (seconds) while something is still moving, else None."""
        meta = run["metadata"]
        if meta.get("deletionTimestamp"):
            return self._finalize(run)
        if FINALIZER not in (meta.get("finalizers") or []):
            run = self._set_finalizers(run, [*(meta.get("finalizers") or []), FINALIZER])
        generation = int(run["metadata"].get("generation") or 1)
        try:
            spec = self.validate(run)
        except SpecError as err:
            problems = [p.render(err.source) for p in err.problems]
            message = f"invalid run spec: {len(problems)} problem(s); no Job was made"
            self._set_phase(run, {"observedGeneration": generation, "problems": problems}, "Failed", "InvalidSpec",
                            message)  # fmt: skip
            return None
        jobs = self.jobs_of(run)
        name = child_name(run["metadata"]["name"], generation)
        mine = next((j for j in jobs if j["metadata"]["name"] == name), None)
        if mine is None:
            earlier = [j for j in jobs if job_running(j)]
            if earlier:
                return self._wait_for(run, spec, generation, earlier)
            mine = self._start(run, spec, generation, name)
            if mine is None:
                return None  # finished earlier, its Job since removed (ttlSecondsAfterFinished)
        return self._follow(run, spec, generation, mine)

    def _run_id(self, run: Mapping[str, Any], generation: int, job: Mapping[str, Any] | None) -> str:
        status = run.get("status") or {}
        same = status.get("observedGeneration") == generation
        return (job and self._job_run_id(job)) or (status.get("runId") if same else None) or self.new_run_id()

    def _base(self, spec: RunSpec, generation: int, name: str, run_id: str) -> dict[str, Any]:
        return {
            "observedGeneration": generation,
            "runId": run_id,
            "jobName": name,
            "configMapName": name,
            "summaries": [
                {"stage": st.name, "location": paths.summary_object(spec.spec.lake, st.stage_cls.script_name, run_id)}
                for st in spec.stages
            ],
            "problems": [],
        }

    def _wait_for(self, run: Mapping[str, Any], spec: RunSpec, generation: int, earlier: list[dict[str, Any]]) -> float:
        """A new generation while an earlier one's Job runs: wait, or cancel it (``spec.onUpdate``)."""
        names = ", ".join(j["metadata"]["name"] for j in earlier)
        if spec.spec.on_update == "cancel":
            for job in earlier:
                if not (job.get("metadata") or {}).get("deletionTimestamp"):
                    self._delete_job(job)
                    self.event(run, "Cancelling", f"stopping Job {job['metadata']['name']} for generation {generation}")
            reason, message = "CancellingPreviousRun", f"generation {generation} starts once Job {names} has stopped"
        else:
            reason, message = "WaitingForPreviousRun", f"generation {generation} starts when Job {names} ends"
        status = {"observedGeneration": generation, "problems": [], "currentStage": None, "progress": None}
        self._set_phase(run, status, "Waiting", reason, message)
        return min(self.poll_seconds, 5.0)

    def _start(self, run: Mapping[str, Any], spec: RunSpec, generation: int, name: str) -> dict[str, Any] | None:
        status = run.get("status") or {}
        if status.get("jobName") == name and status.get("phase") in TERMINAL:
            return None
        run_id = self._run_id(run, generation, None)
        # The run id goes into the status first: a controller restarted after this reuses it.
        pending = {**self._base(spec, generation, name, run_id), "currentStage": None, "progress": None}
        self._set_phase(run, pending, "Pending", "Creating", "creating the Job")
        for obj in self.desired_objects(run, spec, run_id):
            self._create(obj)
        self.event(run, "JobCreated", f"created Job {name} for generation {generation} (run {run_id})")
        return self._read_job(name)

    def _follow(self, run: Mapping[str, Any], spec: RunSpec, generation: int, job: dict[str, Any]) -> float | None:
        name = job["metadata"]["name"]
        run_id = self._run_id(run, generation, job)
        seen = self.observe(job)
        phase, reason, message, extra = job_phase(job, seen)
        stages = [st.name for st in spec.stages]
        result = seen.result if seen.result and seen.result.get("runId") == run_id else None
        stage = (result or {}).get("lastStage") or seen.stage or (run.get("status") or {}).get("currentStage")
        if phase == "Succeeded":
            stage = stages[-1]
        begun = stages.index(stage) + 1 if stage in stages else 0  # stages begun, the current one included
        status = {
            **self._base(spec, generation, name, run_id),
            **extra,
            "currentStage": stage,
            "progress": f"{begun}/{len(stages)}" if begun else None,
            "entities": (result or {}).get("totals"),
        }
        self._set_phase(run, status, phase, reason, message, degraded=is_degraded(phase, seen, result))
        return None if phase in TERMINAL else self.poll_seconds

    def _set_phase(
        self, run: Mapping[str, Any], status: dict[str, Any], phase: str, reason: str, message: str,
        *, degraded: bool = False,
    ) -> None:  # fmt: skip
        """Write the status with its phase and conditions; an Event (and the duration metric)
        for every change of phase or reason."""
        old = run.get("status") or {}
        generation = int(status.get("observedGeneration") or 0)
        wanted = phase_conditions(phase, reason, message, degraded)
        stamp = rfc3339(now()) or ""
        new = {
            **status,
            "phase": phase,
            "reason": reason,
            "message": message,
            "conditions": conditions(list(old.get("conditions") or []), wanted, generation, stamp),
        }
        if all(old.get(k) == v for k, v in new.items()):
            return  # nothing new (conditions keep their transition times): no write, no event
        self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, self.namespace, PLURAL, run["metadata"]["name"], {"status": new}
        )
        changed = (old.get("phase"), old.get("reason"), old.get("observedGeneration")) != (phase, reason, generation)
        if changed and reason != "Creating":  # the JobCreated event follows at once
            warning = phase == "Failed"
            self.event(run, reason, f"{phase}: {message}", warning=warning)
            if phase in TERMINAL and status.get("startTime") and status.get("completionTime"):
                began, ended = parse_time(status["startTime"]), parse_time(status["completionTime"])
                if began and ended:
                    self.metrics.run_duration.labels(phase).observe((ended - began).total_seconds())

    def _finalize(self, run: Mapping[str, Any]) -> float | None:
        """A deleted run: stop its Jobs, then let it go (remove the finalizer)."""
        finalizers = list(run["metadata"].get("finalizers") or [])
        if FINALIZER not in finalizers:
            return None
        jobs = self.jobs_of(run)
        for job in jobs:
            if not job["metadata"].get("deletionTimestamp"):
                self._delete_job(job)
                self.event(run, "Stopping", f"PipelineRun deleted: stopping Job {job['metadata']['name']}")
        if jobs:
            return 2.0  # the Jobs' pods are stopping; the Job watch also wakes this up
        self._set_finalizers(run, [f for f in finalizers if f != FINALIZER])
        log.info("PipelineRun %s/%s released: its Jobs have ended", self.namespace, run["metadata"]["name"])
        return None

    def _read_job(self, name: str) -> dict[str, Any] | None:
        try:
            return plain(self.api, self.batch.read_namespaced_job(name, self.namespace))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    @staticmethod
    def _job_run_id(job: Mapping[str, Any]) -> str | None:
        for container in job["spec"]["template"]["spec"]["containers"]:
            for env in container.get("env") or []:
                if env.get("name") == clock.RUN_ID_ENV:
                    return str(env.get("value"))
        return None

    # ---------------------------------------------------------------- loops

    def _watch(self, list_func: Callable[..., Any], key: Callable[[dict[str, Any]], str | None], **kw: Any) -> None:
        """List, queue every object, then watch from the list's resourceVersion; 410 → list again.
        A failed list or watch is tried again after a backoff with jitter."""
        resource_version = ""
        failures = 0
        while not self.stop.is_set():
            try:
                if not resource_version:
                    listed = plain(self.api, list_func(**kw))
                    resource_version = str((listed.get("metadata") or {}).get("resourceVersion") or "")
                    for item in listed.get("items") or []:
                        if k := key(item):
                            self.queue.add(k)
                w: Any = _WATCH.Watch()
                for event in w.stream(
                    list_func, resource_version=resource_version, timeout_seconds=self.resync_seconds, **kw
                ):
                    failures = 0
                    obj = event["raw_object"]
                    resource_version = str((obj.get("metadata") or {}).get("resourceVersion") or resource_version)
                    if k := key(obj):
                        self.queue.add(k)
                    if self.stop.is_set():
                        w.stop()
                        break
            except Exception as exc:
                resource_version = ""
                if isinstance(exc, ApiException) and exc.status == 410:
                    log.info("watch expired (410 Gone): listing again")
                    continue
                failures += 1
                self._count_error(exc)
                delay = backoff(failures, self.queue.base, 30.0)
                log.warning("watch failed: %s; retrying in %.1f s", _api_error(exc), delay)
                self.stop.wait(delay)

    def _start_watches(self) -> None:
        def run_key(obj: dict[str, Any]) -> str | None:
            name = (obj.get("metadata") or {}).get("name")
            return str(name) if name else None

        def job_key(obj: dict[str, Any]) -> str | None:
            for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
                if ref.get("kind") == KIND and ref.get("controller"):
                    return str(ref["name"])
            return None

        runs: dict[str, Any] = {"func": self.custom.list_namespaced_custom_object, "key": run_key,
                "kw": {"group": GROUP, "version": VERSION, "namespace": self.namespace, "plural": PLURAL}}  # fmt: skip
        jobs: dict[str, Any] = {"func": self.batch.list_namespaced_job, "key": job_key,
                "kw": {"namespace": self.namespace, "label_selector": f"{LABEL_MANAGED_BY}={MANAGED_BY}"}}  # fmt: skip
        for w in (runs, jobs):
            t = threading.Thread(
                target=self._watch, args=(w["func"], w["key"]), kwargs=w["kw"], daemon=True, name="pgx-watch"
            )
            t.start()
            self._watch_threads.append(t)

    def _count_error(self, exc: BaseException) -> None:
        code = exc.status if isinstance(exc, ApiException) else 0
        self.metrics.api_errors.labels(str(code or 0)).inc()

    def _lease_held(self, leading: bool, last_renewed: float) -> tuple[bool, float]:
        """``(held, when last renewed)``. A failed renewal keeps a leader leading for half the
        Lease's duration (nobody may take it before it expires), then it stands by."""
        now = time.monotonic()
        try:
            held = self.lease.acquire()
        except Exception as exc:
            self._count_error(exc)
            self.metrics.api_ok = False
            log.warning("lease check failed: %s", _api_error(exc))
            return leading and now - last_renewed < self.lease_duration_seconds / 2, last_renewed
        self.metrics.api_ok = True
        return held, now if held else last_renewed

    def _resync(self) -> None:
        """Queue every run again (a missed event is never lost for longer than a resync)."""
        try:
            runs, _ = self.list_runs()
        except Exception as exc:
            self._count_error(exc)
            log.warning("resync failed: %s; the watches go on", _api_error(exc))
            return
        for run in runs:
            self.queue.add(run["metadata"]["name"])
        self.metrics.count_phases(str((r.get("status") or {}).get("phase") or "Pending") for r in runs)

    def process(self, name: str) -> None:
        """Reconcile the run ``name`` once; any failure queues it again after its backoff."""
        run: dict[str, Any] | None = None
        try:
            run = self.get_run(name)
            after = self.reconcile(run) if run is not None else None
        except Exception as exc:
            delay = self.queue.retry(name)
            self.metrics.reconciles.labels("error").inc()
            self._count_error(exc)
            api = isinstance(exc, ApiException) or type(exc).__module__.startswith("urllib3")
            (log.warning if api else log.exception)(
                "reconcile of %s failed: %s; retrying in %.2f s", name, _api_error(exc), delay
            )
            if run is not None and self.queue.failures(name) == 1:  # once per streak of failures
                self.event(run, "ReconcileError", f"{_api_error(exc)}; retrying with backoff", warning=True)
        else:
            self.queue.forget(name)
            self.metrics.reconciles.labels("success").inc()
            if after is not None:
                self.queue.add(name, after)
        finally:
            self.queue.done(name)

    def run(self) -> None:
        """Until :attr:`stop` is set: hold the Lease, and while holding it reconcile what changes."""
        leading = False
        renewed = next_renew = next_resync = 0.0
        renew_every = max(1.0, self.lease_duration_seconds / 3)
        try:
            while not self.stop.is_set():
                now = self.metrics.beat = time.monotonic()
                if now >= next_renew:
                    held, renewed = self._lease_held(leading, renewed)
                    if held and not leading:
                        log.info("%s leads (lease %s/%s)", self.identity, self.namespace, self.lease_name)
                        if not self._watch_threads:
                            self._start_watches()
                        next_resync = 0.0
                    if leading and not held:
                        log.warning("%s lost the lease: standing by", self.identity)
                    leading = self.leading = held
                    self.metrics.leader.set(int(held))
                    next_renew = now + renew_every
                if not leading:
                    self.stop.wait(min(renew_every, 1.0))
                    continue
                if now >= next_resync:
                    self._resync()
                    next_resync = now + self.resync_seconds
                self.metrics.queue_depth.set(self.queue.depth())
                name = self.queue.get(timeout=0.2)
                if name is not None:
                    self.process(name)
        finally:
            self.metrics.leader.set(0)
            if leading:
                self.lease.release()


def _api_error(exc: BaseException) -> str:
    """What failed, in words safe for logs and events: an HTTP status and reason, or an error class."""
    if isinstance(exc, ApiException):
        return f"API error {exc.status} {exc.reason}"
    return type(exc).__name__


def main(namespace: str | None = None, image: str | None = None, metrics_port: int = DEFAULT_METRICS_PORT) -> int:
    """Entry of ``pgx controller [--namespace NS] [--image IMG] [--metrics-port N]``; returns the exit code.

    Configuration: in-cluster (ServiceAccount) or ``~/.kube/config``. Namespace default:
    ``POD_NAMESPACE``, else the pod's own, else the kubeconfig context's; image default:
    ``PGX_IMAGE`` or ``pgx:<version>``.
    ``/metrics``, ``/healthz`` and ``/readyz`` are served on ``metrics_port`` (0: none).
    SIGTERM and SIGINT stop it cleanly (the Lease is released) with exit 0.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    found = load_config("pgx controller")
    ctl = Controller(
        namespace=namespace or os.environ.get("POD_NAMESPACE") or found,
        image=image or os.environ.get("PGX_IMAGE") or DEFAULT_IMAGE,
        service_account=os.environ.get("PGX_RUN_SERVICE_ACCOUNT") or DEFAULT_SERVICE_ACCOUNT,
    )

    def _stop(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        ctl.stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    server = serve(ctl.metrics, metrics_port) if metrics_port else None
    try:
        ctl.run()
    finally:
        if server is not None:
            server.shutdown()
    return 0
