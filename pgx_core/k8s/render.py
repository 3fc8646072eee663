"""Kubernetes objects that run one spec in a cluster (``pgx render``).

:func:`render_run` returns a ConfigMap holding the run spec and a Job running
``pgx run /etc/pgx/spec.yaml`` on it; :func:`to_yaml` prints them for ``kubectl apply -f -``.

The Job has exactly the shape of the Helm chart's CronJob ``jobTemplate`` (``charts/pgx``,
template ``pgx.jobSpec``) and :class:`JobSettings` holds the chart's ``values.yaml`` defaults;
``tests/chart`` renders both for the same spec and fails when they differ.

The ConfigMap holds the spec's **canonical form** (defaults filled, stage parameters normalized,
keys sorted), not the original text: what runs in the cluster is exactly what was validated here,
later changes of pgx's defaults do not change an already rendered run, and the fingerprint the
run records equals the one ``pgx validate`` prints for the original file.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from pgx_core import __version__
from pgx_core.errors import UsageError
from pgx_core.exitcodes import ExitCode
from pgx_core.spec.runspec import RunSpec

SPEC_DIR = "/etc/pgx"
# Paths inside the pod (not temporary files of this process): the /tmp emptyDir, Ray's directory in
# it, and the memory-backed /dev/shm of a local Ray.
TMP_DIR = "/tmp"  # noqa: S108
RAY_TMP_DIR = "/tmp/ray"  # noqa: S108
SHM_DIR = "/dev/shm"  # noqa: S108
SPEC_KEY = "spec.yaml"
# The key of a Ray cluster's token in its Secret (KubeRay's convention); a key name, not a token.
RAY_TOKEN_KEY = "auth_token"  # noqa: S105
CONTAINER = "pgx"
DEFAULT_IMAGE = f"pgx:{__version__}"
DEFAULT_SERVICE_ACCOUNT = "pgx"
# Exit codes that retrying cannot fix: the Job fails at once instead of using its retries.
NO_RETRY_EXIT_CODES = (int(ExitCode.DATA), int(ExitCode.CONFLICT), int(ExitCode.USAGE))
MAX_NAME = 63  # a Job's name is copied into a label value of its pods
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def _default_resources() -> dict[str, dict[str, str]]:
    return {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"cpu": "2", "memory": "8Gi"}}


@dataclass(frozen=True)
class JobSettings:
    """Job and pod settings; the defaults are those of ``charts/pgx/values.yaml``."""

    backoff_limit: int = 2  # job.backoffLimit
    active_deadline_seconds: int = 43200  # job.activeDeadlineSeconds
    ttl_seconds_after_finished: int = 604800  # job.ttlSecondsAfterFinished
    termination_grace_period_seconds: int = 120  # job.terminationGracePeriodSeconds
    resources: Mapping[str, Mapping[str, str]] = field(default_factory=_default_resources)  # resources
    tmp_size_limit: str = "16Gi"  # tmp.sizeLimit
    shm_size_limit: str = "3Gi"  # ray.shmSizeLimit
    run_as_user: int = 10001  # securityContext.runAsUser
    run_as_group: int = 10001  # securityContext.runAsGroup
    fs_group: int = 10001  # securityContext.fsGroup
    image_pull_policy: str = "IfNotPresent"  # image.pullPolicy
    extra_env: Sequence[Mapping[str, Any]] = ()  # extraEnv
    extra_volumes: Sequence[Mapping[str, Any]] = ()  # extraVolumes
    extra_volume_mounts: Sequence[Mapping[str, Any]] = ()  # extraVolumeMounts

    def env(self, *first: Mapping[str, Any]) -> list[dict[str, Any]]:
        """A container's environment: the read-only root's redirects to the /tmp emptyDir,
        ``first``, then ``extraEnv`` (which may reference Secrets, never hold a credential)."""
        base = [{"name": "HOME", "value": TMP_DIR}, {"name": "TMPDIR", "value": TMP_DIR}]
        return [*base, *(dict(e) for e in first), *(dict(e) for e in self.extra_env)]

    def mounts(self, *first: Mapping[str, Any]) -> list[dict[str, Any]]:
        """A container's volume mounts: ``first``, then ``extraVolumeMounts``."""
        return [*(dict(m) for m in first), *(dict(m) for m in self.extra_volume_mounts)]

    def volumes(self, *first: Mapping[str, Any]) -> list[dict[str, Any]]:
        """A pod's volumes: ``first``, then ``extraVolumes``."""
        return [*(dict(v) for v in first), *(dict(v) for v in self.extra_volumes)]


def object_name(run_name: str) -> str:
    """``pgx-<run name>``, shortened with a hash suffix when longer than 63 characters."""
    name = f"pgx-{run_name}"
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(run_name.encode()).hexdigest()[:8]
    return f"{name[: MAX_NAME - 9].rstrip('-')}-{digest}"


def spec_document(spec: RunSpec) -> dict[str, Any]:
    """The document the ConfigMap holds: the canonical form, plus the metadata labels and annotations
    (which the canonical form leaves out because they do not change what a run does), without a
    null ``metadata.namespace``. Validating it again gives the same canonical form and fingerprint."""
    doc = spec.canonical()
    meta = spec.doc.metadata
    if meta.namespace is None:
        del doc["metadata"]["namespace"]  # null is the default: leaving it out changes nothing
    if meta.labels:
        doc["metadata"]["labels"] = dict(meta.labels)
    if meta.annotations:
        doc["metadata"]["annotations"] = dict(meta.annotations)
    return doc


def spec_yaml(spec: RunSpec) -> str:
    """The run spec as the ConfigMap holds it (YAML, keys sorted)."""
    return yaml.safe_dump(spec_document(spec), sort_keys=True, default_flow_style=False, allow_unicode=False)


def _labels(spec: RunSpec, name: str, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "pgx",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/version": __version__,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "pgx",
        "app.kubernetes.io/managed-by": "pgx-render",
        "pgx.io/run-name": spec.name,
    }


def _container_security(settings: JobSettings) -> dict[str, Any]:
    """Restricted Pod Security: non-root, no privilege escalation, no capabilities, read-only root."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": settings.run_as_user,
        "runAsGroup": settings.run_as_group,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _pod_security(settings: JobSettings) -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": settings.run_as_user,
        "runAsGroup": settings.run_as_group,
        "fsGroup": settings.fs_group,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def ray_token_env(secret: str) -> list[dict[str, Any]]:
    """A driver's environment for a Ray cluster with token auth: the token from the Secret
    ``secret`` (key ``auth_token``, as KubeRay's ``authOptions.secretName`` wants it)."""
    ref = {"name": secret, "key": RAY_TOKEN_KEY}
    return [{"name": "RAY_AUTH_MODE", "value": "token"}, {"name": "RAY_AUTH_TOKEN", "valueFrom": {"secretKeyRef": ref}}]


def job_spec(
    *,
    config_map: str,
    image: str,
    service_account: str,
    ray_address: str | None,
    extra_args: Sequence[str],
    settings: JobSettings,
    pod_labels: Mapping[str, str],
    ray_token_secret: str | None = None,
) -> dict[str, Any]:
    """The Job spec of one run: the chart's ``pgx.jobSpec`` template, in Python."""
    local_ray = not ray_address
    env: list[dict[str, Any]] = [{"name": "RAY_TMPDIR", "value": RAY_TMP_DIR}]
    if ray_address:
        env.append({"name": "RAY_ADDRESS", "value": ray_address})
    if ray_token_secret:
        env.extend(ray_token_env(ray_token_secret))
    mounts: list[dict[str, Any]] = [
        {"name": "spec", "mountPath": SPEC_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": TMP_DIR},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "spec", "configMap": {"name": config_map, "items": [{"key": SPEC_KEY, "path": SPEC_KEY}]}},
        {"name": "tmp", "emptyDir": {"sizeLimit": settings.tmp_size_limit}},
    ]
    if local_ray:
        # The local Ray's object store lives in /dev/shm; the runtime's default is 64 MiB.
        mounts.append({"name": "dshm", "mountPath": SHM_DIR})
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": settings.shm_size_limit}})
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["pgx"],
        "args": ["run", f"{SPEC_DIR}/{SPEC_KEY}", *extra_args],
        # The root filesystem is read-only: everything that writes goes to the /tmp emptyDir.
        "env": settings.env(*env),
        "resources": {k: dict(v) for k, v in settings.resources.items()},
        "securityContext": _container_security(settings),
        "volumeMounts": settings.mounts(*mounts),
    }
    return {
        "backoffLimit": settings.backoff_limit,
        "activeDeadlineSeconds": settings.active_deadline_seconds,
        "ttlSecondsAfterFinished": settings.ttl_seconds_after_finished,
        "podFailurePolicy": {
            "rules": [
                # Evictions, preemptions and node drains are not the run's fault: retry uncounted.
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
                {
                    "action": "FailJob",
                    "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": list(NO_RETRY_EXIT_CODES)},
                },
            ]
        },
        "template": {
            "metadata": {"labels": dict(pod_labels)},
            "spec": {
                "restartPolicy": "Never",
                "serviceAccountName": service_account,
                # Nothing in the pod talks to the Kubernetes API; IRSA mounts its own token.
                "automountServiceAccountToken": False,
                "enableServiceLinks": False,
                "terminationGracePeriodSeconds": settings.termination_grace_period_seconds,
                "securityContext": _pod_security(settings),
                "containers": [container],
                "volumes": settings.volumes(*volumes),
            },
        },
    }


def render_run(
    spec: RunSpec,
    *,
    image: str,
    namespace: str | None,
    service_account: str = DEFAULT_SERVICE_ACCOUNT,
    ray_address: str | None = None,
    extra_args: Sequence[str] = (),
    settings: JobSettings | None = None,
    ray_token_secret: str | None = None,
) -> list[dict[str, Any]]:
    """A ConfigMap holding ``spec`` and a Job running it: ``[configmap, job]``.

    Args:
        spec: a validated run spec (:func:`pgx_core.spec.runspec.load_spec`).
        image: the pgx image, e.g. ``registry.example.com/pgx:0.1.0``.
        namespace: namespace of both objects; ``None`` takes the spec's ``metadata.namespace``,
            and when that is unset too the objects carry none (``kubectl -n`` decides).
        service_account: ServiceAccount of the pod (IRSA annotations live there).
        ray_address: an existing Ray cluster (set as ``RAY_ADDRESS``); ``None``: a local Ray in
            the pod, with a memory-backed ``/dev/shm``.
        extra_args: appended to ``pgx run /etc/pgx/spec.yaml`` (e.g. ``["--stage", "impute"]``).
        settings: Job and pod settings; default: the chart's defaults.
        ray_token_secret: the Secret holding the token of a Ray cluster with token auth (key
            ``auth_token``); needs ``ray_address``.

    Both names are ``pgx-<metadata.name>`` (hash-shortened past 63 characters), so rendering the
    same spec twice gives the same objects. Raises :class:`UsageError` (exit 64) for an empty
    image or an invalid namespace or ServiceAccount name.
    """
    if not image.strip():
        raise UsageError("pgx render: --image must name an image, got an empty string")
    ns = namespace if namespace is not None else spec.doc.metadata.namespace
    for what, value in (("--namespace", ns), ("service account", service_account)):
        if value is not None and not _DNS_LABEL.match(value):
            raise UsageError(f"pgx render: {what} must be a DNS-1123 label (a-z, 0-9, '-', at most 63), got {value!r}")
    if ray_token_secret and not ray_address:
        raise UsageError("pgx render: --ray-token-secret is the token of the cluster at --ray-address; give both")
    if ray_token_secret is not None and not _DNS_SUBDOMAIN.match(ray_token_secret):
        raise UsageError(
            f"pgx render: --ray-token-secret must name a Secret (DNS-1123 subdomain), got {ray_token_secret!r}"
        )
    settings = settings or JobSettings()
    name = object_name(spec.name)

    def meta(component: str) -> dict[str, Any]:
        m: dict[str, Any] = {"name": name}
        if ns is not None:
            m["namespace"] = ns
        m["labels"] = _labels(spec, name, component)
        return m

    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta("run-spec"),
        "data": {SPEC_KEY: spec_yaml(spec)},
    }
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta("run"),
        "spec": job_spec(
            config_map=name,
            image=image,
            service_account=service_account,
            ray_address=ray_address,
            extra_args=extra_args,
            settings=settings,
            pod_labels=_labels(spec, name, "run"),
            ray_token_secret=ray_token_secret,
        ),
    }
    return [config_map, job]


def _ray_resources(cpu: str, memory: str) -> dict[str, dict[str, str]]:
    return {"requests": {"cpu": cpu, "memory": memory}, "limits": {"cpu": cpu, "memory": memory}}


@dataclass(frozen=True)
class RayClusterSettings:
    """The RayCluster a RayJob creates: a head that schedules (and runs the driver) and a group of
    identical workers that run the work items. Ray derives each node's CPUs and memory from its
    container's limits; each work item asks for ``memoryBudgetMb`` of it.

    The defaults are those of the chart's ``ray.head``, ``ray.workers`` and ``ray.rayJob`` values.
    ``min_workers``/``max_workers`` default to ``worker_replicas`` (a fixed size); when they differ,
    KubeRay's autoscaler adds workers while tasks wait and removes those idle for
    ``idle_timeout_seconds``.
    """

    worker_replicas: int = 2  # ray.workers.replicas
    min_workers: int | None = None  # ray.workers.minReplicas
    max_workers: int | None = None  # ray.workers.maxReplicas
    worker_resources: Mapping[str, Mapping[str, str]] = field(default_factory=lambda: _ray_resources("2", "8Gi"))
    head_resources: Mapping[str, Mapping[str, str]] = field(default_factory=lambda: _ray_resources("1", "4Gi"))
    shm_size_limit: str = "3Gi"  # ray.shmSizeLimit: each node's object store; row data never travels through it
    idle_timeout_seconds: int = 60  # ray.workers.idleTimeoutSeconds
    ttl_seconds_after_finished: int = 3600  # ray.rayJob.ttlSecondsAfterFinished
    auth_mode: str = "token"  # ray.rayJob.authMode: KubeRay makes the cluster's token Secret and hands it out
    auth_secret: str | None = None  # a Secret of yours holding the token (key auth_token) instead

    @property
    def bounds(self) -> tuple[int, int]:
        low = self.worker_replicas if self.min_workers is None else self.min_workers
        high = self.worker_replicas if self.max_workers is None else self.max_workers
        if not 0 <= low <= self.worker_replicas <= high or high < 1:
            raise UsageError(
                "pgx render: Ray workers need 0 <= min <= replicas <= max and max >= 1, "
                f"got min {low}, replicas {self.worker_replicas}, max {high}"
            )
        return low, high

    @property
    def autoscaling(self) -> bool:
        low, high = self.bounds
        return low != high


_RAY_COMPONENT = {"head": "ray-head", "worker": "ray-worker", "submitter": "ray-submitter"}


def _ray_pod(
    role: str,
    *,
    image: str,
    service_account: str,
    settings: JobSettings,
    labels: Mapping[str, str],
    resources: Mapping[str, Any],
    shm: str | None = None,
    spec_cm: str | None = None,
) -> dict[str, Any]:
    """A Ray pod's template, under the same restricted Pod Security as the Job's pod. KubeRay
    supplies the Ray nodes' command (``ray start …``); the pgx image has Ray and the stages.
    ``shm``: size of the memory-backed ``/dev/shm`` (a node's object store); ``spec_cm``: the
    ConfigMap holding the run spec, mounted where the driver reads it."""
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": TMP_DIR}]
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {"sizeLimit": settings.tmp_size_limit}}]
    if shm is not None:
        mounts.append({"name": "dshm", "mountPath": SHM_DIR})
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm}})
    if spec_cm is not None:
        mounts.append({"name": "spec", "mountPath": SPEC_DIR, "readOnly": True})
        volumes.append({"name": "spec", "configMap": {"name": spec_cm, "items": [{"key": SPEC_KEY, "path": SPEC_KEY}]}})
    container = {
        "name": f"ray-{role}",
        "image": image,
        "imagePullPolicy": settings.image_pull_policy,
        "env": settings.env(),
        "resources": {k: dict(v) for k, v in resources.items()},
        "securityContext": _container_security(settings),
        "volumeMounts": settings.mounts(*mounts),
    }
    return {
        "metadata": {"labels": {**labels, "app.kubernetes.io/component": _RAY_COMPONENT[role]}},
        "spec": {
            "serviceAccountName": service_account,
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "securityContext": _pod_security(settings),
            "containers": [container],
            "volumes": settings.volumes(*volumes),
        },
    }


def ray_cluster_spec(
    *,
    image: str,
    service_account: str,
    settings: JobSettings,
    cluster: RayClusterSettings,
    pod_labels: Mapping[str, str],
    spec_cm: str | None = None,
) -> dict[str, Any]:
    """A RayCluster's spec: a head that takes no work (and, for a RayJob, runs the driver with the
    run spec from ``spec_cm``) and one group of workers: ``rayClusterSpec`` of the chart's
    ``pgx.rayJobSpec``, and ``manifests/40-raycluster.yaml``."""
    from ray import __version__ as ray_version  # noqa: PLC0415 - the image's Ray is the driver's

    low, high = cluster.bounds
    pod = functools.partial(
        _ray_pod, image=image, service_account=service_account, settings=settings, labels=pod_labels
    )
    auth: dict[str, Any] = {"mode": cluster.auth_mode}
    if cluster.auth_secret:
        auth["secretName"] = cluster.auth_secret
    spec: dict[str, Any] = {
        "rayVersion": ray_version,
        # KubeRay hands the cluster's token (from a Secret it makes, or `auth_secret`) to every Ray
        # pod and the submitter: only they can reach the head.
        "authOptions": auth,
        "headGroupSpec": {
            # The head schedules (and runs a RayJob's driver); work items go to the workers.
            "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},  # noqa: S104 - in-cluster
            "template": pod("head", resources=cluster.head_resources, shm=cluster.shm_size_limit, spec_cm=spec_cm),
        },
        "workerGroupSpecs": [
            {
                "groupName": "workers",
                "replicas": cluster.worker_replicas,
                "minReplicas": low,
                "maxReplicas": high,
                "rayStartParams": {},
                "template": pod("worker", resources=cluster.worker_resources, shm=cluster.shm_size_limit),
            }
        ],
    }
    if cluster.autoscaling:
        # KubeRay adds its autoscaler as a second container of the head pod: same restrictions.
        spec["enableInTreeAutoscaling"] = True
        spec["autoscalerOptions"] = {
            "idleTimeoutSeconds": cluster.idle_timeout_seconds,
            "env": settings.env(),
            "resources": _ray_resources("500m", "512Mi"),
            "securityContext": _container_security(settings),
            "volumeMounts": [{"name": "tmp", "mountPath": TMP_DIR}],
        }
    return spec


def rayjob_spec(
    *,
    config_map: str,
    image: str,
    service_account: str,
    extra_args: Sequence[str],
    settings: JobSettings,
    cluster: RayClusterSettings,
    pod_labels: Mapping[str, str],
) -> dict[str, Any]:
    """The spec of a RayJob running one spec: the chart's ``pgx.rayJobSpec`` template, in Python."""
    submitter = _ray_pod(
        "submitter",
        image=image,
        service_account=service_account,
        settings=settings,
        labels=pod_labels,
        resources=_ray_resources("200m", "256Mi"),
    )
    submitter["spec"]["restartPolicy"] = "Never"
    return {
        "entrypoint": " ".join(["pgx", "run", f"{SPEC_DIR}/{SPEC_KEY}", *extra_args]),
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": cluster.ttl_seconds_after_finished,
        "activeDeadlineSeconds": settings.active_deadline_seconds,
        "submitterPodTemplate": submitter,
        "rayClusterSpec": ray_cluster_spec(
            image=image,
            service_account=service_account,
            settings=settings,
            cluster=cluster,
            pod_labels=pod_labels,
            spec_cm=config_map,
        ),
    }


def render_raycluster(
    name: str,
    *,
    image: str,
    namespace: str | None,
    service_account: str = DEFAULT_SERVICE_ACCOUNT,
    settings: JobSettings | None = None,
    cluster: RayClusterSettings | None = None,
) -> dict[str, Any]:
    """A long-lived KubeRay ``RayCluster`` for runs to join (``ray://<name>-head-svc:10001``), with
    the pods of a RayJob's cluster. ``cluster.auth_secret`` names the Secret holding its token
    (key ``auth_token``), which the drivers' Jobs read too."""
    if not _DNS_LABEL.match(name):
        raise UsageError(f"RayCluster name must be a DNS-1123 label, got {name!r}")
    labels = {
        "app.kubernetes.io/name": "pgx",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/version": __version__,
        "app.kubernetes.io/component": "raycluster",
        "app.kubernetes.io/part-of": "pgx",
        "app.kubernetes.io/managed-by": "pgx-render",
    }
    meta: dict[str, Any] = {"name": name, **({"namespace": namespace} if namespace else {}), "labels": labels}
    spec = ray_cluster_spec(
        image=image,
        service_account=service_account,
        settings=settings or JobSettings(),
        cluster=cluster or RayClusterSettings(),
        pod_labels=labels,
    )
    return {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": meta, "spec": spec}


def render_rayjob(
    spec: RunSpec,
    *,
    image: str,
    namespace: str | None,
    service_account: str = DEFAULT_SERVICE_ACCOUNT,
    extra_args: Sequence[str] = (),
    settings: JobSettings | None = None,
    cluster: RayClusterSettings | None = None,
) -> list[dict[str, Any]]:
    """A ConfigMap holding ``spec`` and a KubeRay ``RayJob`` running it: ``[configmap, rayjob]``.

    KubeRay creates a RayCluster from the pgx image (head: no CPUs for work, runs the driver;
    ``cluster.worker_replicas`` workers), submits ``pgx run /etc/pgx/spec.yaml`` as the job's
    entrypoint on the head, and deletes the cluster when the job ends. The driver joins its own
    cluster (Ray sets ``RAY_ADDRESS`` for a job), so ``executor.address`` stays unset. Arguments as
    for :func:`render_run`.
    """
    config_map, job = render_run(
        spec, image=image, namespace=namespace, service_account=service_account, settings=settings
    )
    name = config_map["metadata"]["name"]
    rayjob = {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {
            **job["metadata"],
            "labels": {**job["metadata"]["labels"], "app.kubernetes.io/component": "rayjob"},
        },
        "spec": rayjob_spec(
            config_map=name,
            image=image,
            service_account=service_account,
            extra_args=extra_args,
            settings=settings or JobSettings(),
            cluster=cluster or RayClusterSettings(),
            pod_labels=_labels(spec, name, "run"),
        ),
    }
    return [config_map, rayjob]


class _Dumper(yaml.SafeDumper):
    """Block style for multi-line strings (the embedded spec), so the output reads and diffs well."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def to_yaml(objects: Iterable[Mapping[str, Any]]) -> str:
    """A multi-document YAML stream, keys in insertion order (``apiVersion, kind, metadata, …``)."""
    return yaml.dump_all(
        [dict(o) for o in objects], Dumper=_Dumper, sort_keys=False, default_flow_style=False, explicit_start=True
    )
