"""``pgx controller``: runs each generation of a ``PipelineRun`` custom resource as a Job.

A small reconcile loop on the official ``kubernetes`` client:

- **Leader election**: a ``coordination.k8s.io/v1`` Lease (``holderIdentity``, ``renewTime``,
  ``leaseDurationSeconds``); only the holder acts, an expired Lease is taken over with an
  optimistic-concurrency replace (the ``resourceVersion`` it read), so two controllers never both act.
- **Watches** of PipelineRuns and of the Jobs it made, each from the ``resourceVersion`` of a list;
  a watch that expires (410 Gone) is answered by a fresh list. Every watch ends after
  ``resync_seconds``, and every run that is not finished is reconciled again then.
- **Reconcile** of one PipelineRun generation: validate the spec exactly as ``pgx validate`` does
  (an invalid spec → ``phase: Failed, reason: InvalidSpec`` with the problems; no Job), choose a run
  id (kept in ``.status`` before anything is created, so a restart reuses it), create the ConfigMap
  and Job of ``pgx render`` (:func:`pgx_core.k8s.render.render_run`) named ``pgx-<run>-g<generation>``
  and owned by the run (``ownerReferences`` with ``controller``/``blockOwnerDeletion``: deleting
  the run deletes them), the Job getting ``PGX_RUN_ID``; an existing object (409) is fine. Then the
  Job's state is mirrored into ``.status`` through the status subresource.
- **SIGTERM/SIGINT** set a stop event: watches end, the Lease is released, :func:`main` returns 0.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import re
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import FrameType
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from pgx_core import clock
from pgx_core.errors import SpecError, UsageError
from pgx_core.exitcodes import ExitCode
from pgx_core.k8s.crd import GROUP, PLURAL, VERSION
from pgx_core.k8s.render import CONTAINER, DEFAULT_IMAGE, DEFAULT_SERVICE_ACCOUNT, MAX_NAME, render_run
from pgx_core.lake import paths
from pgx_core.spec.runspec import API_VERSION, KIND, RunSpec, validate_document
from pgx_core.stage import StageRegistry

log = logging.getLogger("pgx.controller")
_WATCH: Any = watch
_CONFIG: Any = config

LEASE_NAME = "pgx-controller"
MANAGED_BY = "pgx-controller"
LABEL_RUN = "pgx.io/run-name"
LABEL_GENERATION = "pgx.io/generation"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
TERMINAL = ("Succeeded", "Failed")
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


def child_name(run_name: str, generation: int) -> str:
    """``pgx-<run>-g<generation>`` (ConfigMap and Job), hash-shortened past 63 characters."""
    suffix = f"-g{generation}"
    name = f"pgx-{run_name}{suffix}"
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(run_name.encode()).hexdigest()[:8]
    return f"{name[: MAX_NAME - len(suffix) - 9].rstrip('-')}-{digest}{suffix}"


def _now() -> datetime:
    return datetime.now(UTC)


def _micro(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if not isinstance(value, str) or not value:
        return None
    text = value.replace("Z", "+00:00")
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def _rfc3339(value: Any) -> str | None:
    """A Kubernetes Time (``2026-01-01T00:00:00Z``) of whatever the client handed back."""
    ts = _parse_time(value)
    return None if ts is None else ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _conflict_or_exists(exc: ApiException) -> bool:
    return bool(exc.status == 409)


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
    new_run_id: Callable[[], str] = clock.new_run_id

    def __post_init__(self) -> None:
        if self.registry is None:
            from pgx_core.pluginmanager import make_plugin_manager  # noqa: PLC0415

            self.registry = make_plugin_manager().registry
        self.api = self.api or client.ApiClient()
        # Dict bodies and dict results throughout: the typed models add nothing here.
        self.custom: Any = client.CustomObjectsApi(self.api)
        self.core: Any = client.CoreV1Api(self.api)
        self.batch: Any = client.BatchV1Api(self.api)
        self.coordination: Any = client.CoordinationV1Api(self.api)
        self.stop = threading.Event()
        self._queue: queue.Queue[str] = queue.Queue()
        self._watch_threads: list[threading.Thread] = []
        self.leading = False

    def _dict(self, obj: Any) -> dict[str, Any]:
        api: Any = self.api
        out: dict[str, Any] = api.sanitize_for_serialization(obj)
        return out

    # ---------------------------------------------------------------- leader election

    def try_acquire(self) -> bool:
        """Take or renew the Lease; True when this controller holds it now."""
        now = _now()
        spec = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self.lease_duration_seconds,
            "renewTime": _micro(now),
        }
        try:
            lease = self._dict(self.coordination.read_namespaced_lease(self.lease_name, self.namespace))
        except ApiException as exc:
            if exc.status != 404:
                raise
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.lease_name, "namespace": self.namespace},
                "spec": {**spec, "acquireTime": _micro(now), "leaseTransitions": 0},
            }
            try:
                self.coordination.create_namespaced_lease(self.namespace, body)
            except ApiException as exc2:
                if _conflict_or_exists(exc2):
                    return False
                raise
            return True
        current = lease.get("spec") or {}
        holder = current.get("holderIdentity")
        renewed = _parse_time(current.get("renewTime"))
        duration = int(current.get("leaseDurationSeconds") or self.lease_duration_seconds)
        expired = renewed is None or (now - renewed).total_seconds() > duration
        if holder and holder != self.identity and not expired:
            return False
        new_spec = {**current, **spec}
        if new_spec.get("acquireTime"):  # MicroTime: RFC 3339 with exactly six fraction digits
            acquired = _parse_time(new_spec["acquireTime"])
            new_spec["acquireTime"] = _micro(acquired) if acquired else None
        if holder != self.identity:
            new_spec["acquireTime"] = _micro(now)
            new_spec["leaseTransitions"] = int(current.get("leaseTransitions") or 0) + 1
        lease["spec"] = new_spec
        try:
            self.coordination.replace_namespaced_lease(self.lease_name, self.namespace, lease)
        except ApiException as exc:
            if _conflict_or_exists(exc):  # someone else renewed or took it in between
                return False
            raise
        return True

    def release(self) -> None:
        """Give up the Lease (if held) so another controller takes over at once."""
        try:
            lease = self._dict(self.coordination.read_namespaced_lease(self.lease_name, self.namespace))
            if (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            lease["spec"]["holderIdentity"] = None
            lease["spec"]["renewTime"] = None
            self.coordination.replace_namespaced_lease(self.lease_name, self.namespace, lease)
        except ApiException as exc:
            log.warning("could not release lease %s: %s", self.lease_name, exc.reason)

    # ---------------------------------------------------------------- reconcile

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

    def reconcile_all(self) -> None:
        runs, _ = self.list_runs()
        for run in runs:
            self.reconcile(run)

    def validate(self, run: Mapping[str, Any]) -> RunSpec:
        """The run's spec validated as ``pgx validate`` does (raises SpecError)."""
        meta = run.get("metadata") or {}
        doc_meta: dict[str, Any] = {"name": meta.get("name")}
        if meta.get("labels"):
            doc_meta["labels"] = dict(meta["labels"])
        doc = {"apiVersion": API_VERSION, "kind": KIND, "metadata": doc_meta, "spec": run.get("spec")}
        assert self.registry is not None
        return validate_document(doc, f"pipelinerun/{meta.get('name')}", self.registry)

    def _patch_status(self, run: Mapping[str, Any], status: dict[str, Any]) -> None:
        old = run.get("status") or {}
        if all(old.get(k) == v for k, v in status.items()):
            return  # nothing new: no write, no watch event
        name = run["metadata"]["name"]
        self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, self.namespace, PLURAL, name, {"status": status}
        )

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
        for obj in (config_map, job):
            obj["metadata"]["name"] = name
            obj["metadata"]["labels"].update(
                {LABEL_MANAGED_BY: MANAGED_BY, LABEL_GENERATION: str(generation), "app.kubernetes.io/instance": name}
            )
            obj["metadata"]["ownerReferences"] = [self._owner(run)]
        pod = job["spec"]["template"]
        pod["metadata"]["labels"].update({LABEL_GENERATION: str(generation), "app.kubernetes.io/instance": name})
        for volume in pod["spec"]["volumes"]:
            if "configMap" in volume:
                volume["configMap"]["name"] = name
        for container in pod["spec"]["containers"]:
            if container["name"] == CONTAINER:
                container["env"].append({"name": clock.RUN_ID_ENV, "value": run_id})
        return [config_map, job]

    def _summaries(self, spec: RunSpec, run_id: str) -> list[dict[str, str]]:
        return [
            {"stage": st.name, "location": paths.summary_object(spec.spec.lake, st.stage_cls.script_name, run_id)}
            for st in spec.stages
        ]

    def _read_job(self, name: str) -> dict[str, Any] | None:
        try:
            return self._dict(self.batch.read_namespaced_job(name, self.namespace))
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

    def _pod_exit_code(self, job_name: str) -> int | None:
        """The pgx container's exit code in the Job's most recently finished pod."""
        pods = self._dict(self.core.list_namespaced_pod(self.namespace, label_selector=f"job-name={job_name}"))
        best: tuple[str, int] | None = None
        for pod in pods.get("items") or []:
            for cs in (pod.get("status") or {}).get("containerStatuses") or []:
                term = (cs.get("state") or {}).get("terminated")
                if cs.get("name") == CONTAINER and term and term.get("exitCode") is not None:
                    key = (str(term.get("finishedAt") or ""), int(term["exitCode"]))
                    best = key if best is None or key[0] >= best[0] else best
        return None if best is None else best[1]

    def job_status(self, job: Mapping[str, Any]) -> dict[str, Any]:
        """Phase, reason, message, exit code and times of a Job, in PipelineRun ``.status`` terms."""
        st = job.get("status") or {}
        conditions = {c.get("type"): c for c in st.get("conditions") or [] if c.get("status") == "True"}
        out: dict[str, Any] = {"startTime": _rfc3339(st.get("startTime"))}
        if "Complete" in conditions:
            reason, message = EXIT_MEANING[0]
            out.update(phase="Succeeded", reason=reason, message=message, exitCode=0)
            out["completionTime"] = _rfc3339(
                st.get("completionTime") or conditions["Complete"].get("lastTransitionTime")
            )
        elif "Failed" in conditions:
            cond = conditions["Failed"]
            found = _EXIT_IN_MESSAGE.search(str(cond.get("message") or ""))
            code = int(found.group(1)) if found else self._pod_exit_code(job["metadata"]["name"])
            if code is not None and code in EXIT_MEANING:
                reason, meaning = EXIT_MEANING[code]
                message = f"pgx exited with {code}: {meaning}"
            else:
                reason = str(cond.get("reason") or "JobFailed")
                message = str(cond.get("message") or "the Job failed")
            out.update(phase="Failed", reason=reason, message=message, exitCode=code)
            out["completionTime"] = _rfc3339(cond.get("lastTransitionTime"))
        elif st.get("active") or st.get("startTime"):
            out.update(phase="Running", reason="JobRunning", message="the Job's pod is running")
        else:
            out.update(phase="Pending", reason="JobCreated", message="waiting for the Job to start")
        return out

    def reconcile(self, run: Mapping[str, Any]) -> None:
        """Bring one PipelineRun's Job and status in line with its current generation."""
        meta = run["metadata"]
        if meta.get("deletionTimestamp"):
            return  # the garbage collector removes the owned objects
        generation = int(meta.get("generation") or 1)
        status = dict(run.get("status") or {})
        same_generation = status.get("observedGeneration") == generation
        try:
            spec = self.validate(run)
        except SpecError as err:
            self._patch_status(
                run,
                {
                    "observedGeneration": generation,
                    "phase": "Failed",
                    "reason": "InvalidSpec",
                    "message": f"invalid run spec: {len(err.problems)} problem(s); no Job was made",
                    "problems": [p.render(err.source) for p in err.problems],
                },
            )
            return
        name = child_name(meta["name"], generation)
        job = self._read_job(name)
        run_id = (job and self._job_run_id(job)) or (status.get("runId") if same_generation else None)
        if not run_id:
            run_id = self.new_run_id()
        base = {
            "observedGeneration": generation,
            "runId": run_id,
            "jobName": name,
            "configMapName": name,
            "summaries": self._summaries(spec, run_id),
            "problems": [],
        }
        if job is None:
            if same_generation and status.get("phase") in TERMINAL and status.get("runId") == run_id:
                return  # finished and its Job already gone (ttlSecondsAfterFinished)
            # Record the run id first: a controller restarted between here and the Job reuses it.
            pending = {**base, "phase": "Pending", "reason": "Creating", "message": "creating the Job"}
            self._patch_status(run, pending)
            status.update(pending)
            for obj in self.desired_objects(run, spec, run_id):
                self._create(obj)
            job = self._read_job(name)
            if job is None:
                return
        self._patch_status({**run, "status": status}, {**base, **self.job_status(job)})

    def _create(self, obj: dict[str, Any]) -> None:
        try:
            if obj["kind"] == "ConfigMap":
                self.core.create_namespaced_config_map(self.namespace, obj)
            else:
                self.batch.create_namespaced_job(self.namespace, obj)
            log.info("created %s %s/%s", obj["kind"], self.namespace, obj["metadata"]["name"])
        except ApiException as exc:
            if not _conflict_or_exists(exc):
                raise

    # ---------------------------------------------------------------- loops

    def _watch(self, list_func: Callable[..., Any], key: Callable[[dict[str, Any]], str | None], **kw: Any) -> None:
        """List, queue every object, then watch from the list's resourceVersion; 410 → list again."""
        resource_version = ""
        while not self.stop.is_set():
            try:
                if not resource_version:
                    listed = self._dict(list_func(**kw))
                    resource_version = str((listed.get("metadata") or {}).get("resourceVersion") or "")
                    for item in listed.get("items") or []:
                        k = key(item)
                        if k:
                            self._queue.put(k)
                w: Any = _WATCH.Watch()
                for event in w.stream(
                    list_func, resource_version=resource_version, timeout_seconds=self.resync_seconds, **kw
                ):
                    obj = event["raw_object"]
                    resource_version = str((obj.get("metadata") or {}).get("resourceVersion") or resource_version)
                    k = key(obj)
                    if k:
                        self._queue.put(k)
                    if self.stop.is_set():
                        w.stop()
                        break
            except ApiException as exc:
                if exc.status == 410:
                    log.info("watch expired (410 Gone): listing again")
                    resource_version = ""
                    continue
                log.warning("watch failed: %s %s; retrying", exc.status, exc.reason)
                resource_version = ""
                self.stop.wait(1.0)
            except Exception as exc:  # network errors: retry after a pause
                log.warning("watch failed: %s; retrying", exc)
                resource_version = ""
                self.stop.wait(1.0)

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

    def run(self) -> None:
        """Until :attr:`stop` is set: hold the Lease, and while holding it reconcile what changes."""
        leading = False
        next_renew = 0.0
        next_resync = 0.0
        renew_every = max(1.0, self.lease_duration_seconds / 3)
        try:
            while not self.stop.is_set():
                now = time.monotonic()
                if now >= next_renew:
                    try:
                        held = self.try_acquire()
                    except ApiException as exc:
                        log.warning("lease check failed: %s", exc.reason)
                        held = False
                    if held and not leading:
                        log.info("%s leads (lease %s/%s)", self.identity, self.namespace, self.lease_name)
                        if not self._watch_threads:
                            self._start_watches()
                        next_resync = 0.0
                    if leading and not held:
                        log.warning("%s lost the lease: standing by", self.identity)
                    leading = self.leading = held
                    next_renew = now + renew_every
                if not leading:
                    self.stop.wait(min(renew_every, 1.0))
                    continue
                if now >= next_resync:
                    self._safe(self.reconcile_all)
                    next_resync = now + self.resync_seconds
                try:
                    name = self._queue.get(timeout=0.2)
                except queue.Empty:
                    continue
                run = self.get_run(name)
                if run is not None:
                    self._safe(lambda r=run: self.reconcile(r))  # type: ignore[misc]
        finally:
            if leading:
                self.release()

    def _safe(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except ApiException as exc:
            log.warning("reconcile failed: %s %s (retried on the next event or resync)", exc.status, exc.reason)


def _load_config() -> None:
    try:
        _CONFIG.load_incluster_config()
    except _CONFIG.ConfigException:
        try:
            _CONFIG.load_kube_config()
        except (_CONFIG.ConfigException, OSError) as exc:
            raise UsageError(
                "pgx controller: no Kubernetes configuration: not running in a cluster (no service account "
                "token) and no usable kubeconfig (set KUBECONFIG or write ~/.kube/config)"
            ) from exc


def _current_namespace() -> str:
    path = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().strip()
    except OSError:
        return os.environ.get("POD_NAMESPACE", "default")


def main(namespace: str | None = None, image: str | None = None) -> int:
    """Entry of ``pgx controller [--namespace NS] [--image IMG]``; returns the exit code.

    Configuration: in-cluster (ServiceAccount) or ``~/.kube/config``. Namespace default: the pod's
    own namespace (or ``POD_NAMESPACE``); image default: ``PGX_IMAGE`` or ``pgx:<version>``.
    SIGTERM and SIGINT stop it cleanly (the Lease is released) with exit 0.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    _load_config()
    ctl = Controller(
        namespace=namespace or _current_namespace(),
        image=image or os.environ.get("PGX_IMAGE") or DEFAULT_IMAGE,
        service_account=os.environ.get("PGX_RUN_SERVICE_ACCOUNT") or DEFAULT_SERVICE_ACCOUNT,
    )

    def _stop(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        ctl.stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    ctl.run()
    return 0
