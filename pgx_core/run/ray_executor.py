"""The Ray executor: work items become Ray tasks.

* No address: starts a local Ray sized to the machine (the embedded default).
* ``executor.address`` or ``RAY_ADDRESS`` (which wins): joins an existing cluster, e.g. a KubeRay
  RayCluster's head service — that is how pgx scales past one machine.
* Each task requests ``memoryBudgetMb`` of Ray's memory resource and ``cpusPerItem`` CPUs, so Ray
  runs on each node only as many items at once as fit; ``maxParallel`` caps in-flight tasks further.
* Lost workers (the process died) are retried by Ray itself (``max_retries``); exceptions raised by
  the function are not retried here (the entity protocol classifies them and the driver retries
  only transient ones).
* SIGTERM: the driver stops submitting, raises the shared stop flag that workers check before
  promotion, gives in-flight tasks a grace period, then cancels what is left.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

import ray

from pgx_core.errors import ClusterUnavailable, InterruptedRun, TransientError, UsageError, scrub
from pgx_core.log import get_logger
from pgx_core.run.executor import Executor, OnError
from pgx_core.stage import RunInfo

T = TypeVar("T")
R = TypeVar("R")
log = get_logger(__name__)
MB = 1024 * 1024
LOST_WORKER_RETRIES = 3
HEALTH_CHECK_SEC = 2.0
CLUSTER_LOSS_SEC = 10.0  # well within the minute after which Ray ends a driver that lost its head
STOP_GRACE_SEC = 20.0
WARM_UP_TIMEOUT_SEC = 60.0
CLIENT_CONNECT_ATTEMPTS = 3
HEAD_RESOURCE = "node:__internal_head__"  # a resource only the head node has


@ray.remote(num_cpus=0)
class _StopActor:
    def __init__(self) -> None:
        self.flag = False

    def set(self) -> None:
        self.flag = True

    def is_set(self) -> bool:
        return self.flag


class RayStopFlag:
    """A stop flag workers can read: backed by a tiny actor the driver raises on SIGTERM."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor

    def is_set(self) -> bool:
        try:
            return bool(ray.get(self.actor.is_set.remote(), timeout=10))
        except (ray.exceptions.RayError, TimeoutError, ConnectionError) as exc:  # the driver is gone: stop
            log.warning(
                "stop flag unreachable, stopping", extra={"event": "stop_flag_lost", "error": type(exc).__name__}
            )
            return True


NODE_ID_CHARS = 12  # of a Ray node id (56 hex digits) in placement counts: unique enough, short


def _call(fn: Callable[..., Any], item: Any, stop: RayStopFlag | None) -> tuple[str, Any]:
    """Run one work item; returns the id of the node it ran on with its result."""
    node = ray.get_runtime_context().get_node_id()[:NODE_ID_CHARS]
    return node, (fn(item, stop) if stop is not None else fn(item))


@ray.remote(num_cpus=0)
def _versions() -> tuple[str, str]:
    import platform  # noqa: PLC0415

    return ray.__version__, ".".join(platform.python_version_tuple()[:2])


_remote_call = ray.remote(_call)


@ray.remote
def _warm(modules: tuple[str, ...]) -> None:
    """Start a worker and import what the stages' tasks need, so the first work item does not pay."""
    for name in modules:
        with contextlib.suppress(Exception):  # a broken module fails its real task, loudly
            importlib.import_module(name)


def available_cpus() -> int:
    """CPUs this process may use: the cgroup quota (a pod's limit) or the affinity mask, not the node's."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:  # cgroup v2: "<quota> <period>" or "max <period>"
            quota, period = f.read().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return cpus


def cluster_address(address: str | None) -> str | None:
    """The cluster to join: ``RAY_ADDRESS`` wins over the spec's ``executor.address``."""
    return os.environ.get("RAY_ADDRESS") or address


def ensure_ray(address: str | None) -> bool:
    """Connect to Ray; returns True when this call started a local Ray (to shut it down later).

    ``ray://host:10001`` connects through Ray Client (the driver need not be a Ray node: a Job or
    CronJob pod next to a KubeRay RayCluster); ``auto`` or ``host:6379`` joins as a node would,
    which needs a Ray node on this machine. Either way the cluster must run this Ray and Python
    version (:func:`check_versions`).
    """
    if ray.is_initialized():
        return False
    address = cluster_address(address)
    common: dict[str, Any] = {"log_to_driver": False, "configure_logging": False, "include_dashboard": False}
    if address and address.startswith("ray://"):
        _connect_client(address)
        check_versions(address)
        return False
    if address:
        log.info("joining ray cluster", extra={"event": "ray_join", "address": address})
        try:
            _init_keeping_handlers(address=address, **common)
        except Exception as exc:
            if "node info" in str(exc).lower():  # no Ray node on this machine to join through
                raise UsageError(
                    f"Cannot join the Ray cluster at {address} from here: this machine runs no Ray node. "
                    "Connect through Ray Client instead: executor.address ray://<head>:10001"
                ) from exc
            raise
        check_versions(address)
        return False
    cpus = available_cpus()
    log.info("starting local ray", extra={"event": "ray_start", "cpus": cpus})
    # address="local": always a fresh local Ray, never a cluster someone `ray start`-ed on this host.
    _init_keeping_handlers(address="local", num_cpus=cpus, **common)
    return True


def _connect_client(address: str) -> None:
    """Connect through Ray Client. The head's client server starts a server process per driver,
    and that start sometimes fails at once (seen with Ray 2.60 on a fresh head: the forked process
    dies before it runs); the client then gives up after 30 s with ConnectionAbortedError. The
    next attempt gets a new server: try a few times before calling the cluster unavailable."""
    for attempt in range(1, CLIENT_CONNECT_ATTEMPTS + 1):
        log.info("connecting to ray cluster (ray client)", extra={"event": "ray_join", "address": address})
        try:
            # The client passes ray.init options on to its server-side driver, which takes none of ours.
            _init_keeping_handlers(address=address)
            return
        except ConnectionAbortedError as exc:
            if attempt == CLIENT_CONNECT_ATTEMPTS:
                raise
            log.warning(
                "ray client connection failed, trying again",
                extra={"event": "ray_join_retry", "attempt": attempt, "error": type(exc).__name__},
            )
            _shutdown_after_failed_connect()


def _shutdown_after_failed_connect() -> None:
    """Drop what the failed attempt left before the next one; a failure to do so is logged (the
    next ``ray.init`` reports anything that still stands in its way)."""
    try:
        ray.shutdown()
    except Exception as exc:
        log.warning(
            "ray shutdown after a failed connect failed",
            extra={"event": "ray_shutdown_failed", "error": f"{type(exc).__name__}: {scrub(str(exc))}"},
        )


def check_versions(address: str) -> None:
    """The cluster's Ray and Python versions must be this driver's: work items are pickled here
    and run there. A mismatch is a usage error (64) naming both."""
    import platform  # noqa: PLC0415

    mine = (ray.__version__, ".".join(platform.python_version_tuple()[:2]))
    theirs = ray.get(_versions.remote(), timeout=WARM_UP_TIMEOUT_SEC)
    if tuple(theirs) != mine:
        ray.shutdown()
        raise UsageError(
            f"The Ray cluster at {address} runs Ray {theirs[0]} on Python {theirs[1]}; this driver runs "
            f"Ray {mine[0]} on Python {mine[1]}. Use the same pgx image (or the same versions) for both."
        )


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _init_keeping_handlers(**options: Any) -> None:
    """``ray.init`` without losing pgx's own SIGTERM/SIGINT handlers.

    ``ray.init`` installs a SIGTERM handler that exits the process at once (status 15, no summary,
    leases held). pgx's handlers are put back afterwards; a SIGTERM that reaches Ray's handler
    while Ray starts surfaces here as SystemExit and becomes an interrupted run.
    """
    if threading.current_thread() is not threading.main_thread():
        ray.init(**options)  # handlers can only be set (and are only replaced) on the main thread
        return
    saved = {sig: signal.getsignal(sig) for sig in _STOP_SIGNALS}
    try:
        ray.init(**options)
    except SystemExit as exc:
        raise InterruptedRun("Stopped (SIGTERM) while Ray was starting") from exc
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _item_error(exc: Exception) -> BaseException:
    """What a failed work item raised: the function's own exception, or :class:`TransientError`
    when its worker or node was lost (after Ray's own retries)."""
    if isinstance(exc, ray.exceptions.RayTaskError):
        cause = exc.cause
        return cause if isinstance(cause, BaseException) else exc
    return TransientError(f"Ray work item lost: {type(exc).__name__}")


def _head_address(address: str | None) -> tuple[str, int] | None:
    """Host and port on the cluster's head this driver depends on: the Ray Client server under
    Ray Client (``ray://host:port``: the driver may not reach the GCS at all), else the GCS.
    ``address`` is the one ensure_ray joined (:func:`cluster_address`)."""
    client: Any = ray.util.client.ray
    if not ray.is_initialized():
        return None
    if client.is_connected():
        host, _, port = (address or "").removeprefix("ray://").partition("/")[0].rpartition(":")
        return (host, int(port)) if host and port.isdigit() else None
    try:
        host, _, port = str(ray.get_runtime_context().gcs_address).rpartition(":")
        return (host, int(port)) if host else None
    except Exception:
        return None


class ClusterHealth:
    """Notices that the Ray cluster is gone, before Ray itself ends the process.

    When its head dies, a driver's Ray calls never complete, and after a minute of failed
    reconnects Ray terminates the driver process (exit 1: no summary, leases held, staging left).
    The executor asks :meth:`check` while it waits for work items; once the head's GCS port has
    refused connections for :data:`CLUSTER_LOSS_SEC` it raises :class:`ClusterUnavailable`, and
    the run ends as any transient failure does: summary written, leases released, exit 75.
    """

    def __init__(self, gcs: tuple[str, int] | None) -> None:
        self.gcs = gcs
        self.lost = False
        self._checked = 0.0
        self._down_since: float | None = None

    def check(self) -> None:
        now = time.monotonic()
        if self.gcs is None or now - self._checked < HEALTH_CHECK_SEC:
            return
        self._checked = now
        try:
            socket.create_connection(self.gcs, timeout=HEALTH_CHECK_SEC).close()
            self._down_since = None
            return
        except OSError:
            self._down_since = self._down_since or now
        if now - self._down_since >= CLUSTER_LOSS_SEC:
            self.lost = True
            host, port = self.gcs
            raise ClusterUnavailable(
                f"Ray cluster unavailable: its head ({host}:{port}) has refused connections for "
                f"{CLUSTER_LOSS_SEC:.0f} s"
            )


class RayExecutor(Executor):
    name = "ray"

    def __init__(
        self,
        stop: threading.Event,
        run: RunInfo | None = None,
        address: str | None = None,
        warm_modules: tuple[str, ...] = (),
    ) -> None:
        self.stop = stop
        self.max_parallel = run.max_parallel if run else None
        self.cpus_per_item = run.cpus_per_item if run else 1.0
        self.placements = Counter()
        address = cluster_address(address if address is not None else (run.ray_address if run else None))
        try:
            self._started = ensure_ray(address)
        except (InterruptedRun, UsageError):
            if ray.is_initialized():
                ray.shutdown()
            raise
        except Exception as exc:
            raise TransientError(f"Ray is unavailable: {type(exc).__name__}: {scrub(str(exc))}") from exc
        self._stop_actor: Any = None
        self._health = ClusterHealth(_head_address(address))
        if self._started and warm_modules:
            self._warm_up(warm_modules)

    def _warm_up(self, modules: tuple[str, ...]) -> None:
        """Start the processes work items need, as part of starting Ray: one worker per CPU with
        the stages' modules imported, and the stop flag's actor (a process of its own).

        A fresh local Ray's worker takes ~1 s of CPU to boot and import pyarrow and the plugins;
        without this the first stage's first work items pay for it, and their durations show it.
        """
        refs = [_warm.remote(modules) for _ in range(available_cpus())]
        refs.append(self._stop_flag().actor.is_set.remote())
        with contextlib.suppress(Exception):  # slow or failed warm-up only costs time later
            ray.get(refs, timeout=WARM_UP_TIMEOUT_SEC)

    def _stop_flag(self) -> RayStopFlag:
        if self._stop_actor is None:
            # On the head: a worker node lost with the flag's actor would make every work item read
            # "stop" (an unreachable flag means the driver is gone); the head's loss ends the run anyway.
            on_head = {HEAD_RESOURCE: 0.001} if HEAD_RESOURCE in ray.cluster_resources() else {}  # type: ignore[no-untyped-call]
            self._stop_actor = _StopActor.options(resources=on_head).remote()  # type: ignore[attr-defined]
        return RayStopFlag(self._stop_actor)

    def map_unordered(
        self,
        fn: Callable[..., R],
        items: list[T],
        *,
        memory_mb: int | None = None,
        with_stop: bool = False,
        on_error: OnError[T, R] | None = None,
    ) -> Iterator[tuple[int, R]]:
        opts: dict[str, Any] = {
            "max_retries": LOST_WORKER_RETRIES,
            "retry_exceptions": False,
            "num_cpus": self.cpus_per_item,
        }
        if memory_mb:
            opts["memory"] = memory_mb * MB
        remote = _remote_call.options(**opts)
        stop_flag = self._stop_flag() if with_stop else None
        limit = self.max_parallel or len(items) or 1
        fn_ref = ray.put(fn)
        in_flight: dict[Any, int] = {}
        next_i = 0
        stop_seen_at: float | None = None
        while next_i < len(items) or in_flight:
            while next_i < len(items) and len(in_flight) < limit and not self.stop.is_set():
                in_flight[remote.remote(fn_ref, items[next_i], stop_flag)] = next_i
                next_i += 1
            if self.stop.is_set():
                stop_seen_at = self._stopping(in_flight, stop_seen_at)
                if not in_flight:
                    return
            if not in_flight:
                continue
            try:
                ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=0.5)
            except ConnectionError as exc:  # Ray Client lost its server: the head is gone
                raise self._lost(exc) from exc
            if not ready:
                self._health.check()  # nothing finished: is there still a cluster to finish it?
            for ref in ready:
                i = in_flight.pop(ref)
                yield i, self._result(ref, items[i], on_error)

    def _stopping(self, in_flight: dict[Any, int], stop_seen_at: float | None) -> float:
        """After SIGTERM: tell the workers once; cancel what still runs after the grace period."""
        if stop_seen_at is None:
            stop_seen_at = time.monotonic()
            if self._stop_actor is not None:
                self._stop_actor.set.remote()
        if in_flight and time.monotonic() - stop_seen_at > STOP_GRACE_SEC:
            for ref in in_flight:
                ray.cancel(ref)
            raise InterruptedRun(f"{len(in_flight)} work items cancelled after SIGTERM")
        return stop_seen_at

    def _result(self, ref: Any, item: T, on_error: OnError[T, R] | None) -> R:
        """A finished item's result, or ``on_error``'s for its failure (else the failure raised)."""
        try:
            node, result = ray.get(ref)
        except ConnectionError as exc:
            raise self._lost(exc) from exc
        except Exception as exc:
            error = _item_error(exc)
            if on_error is None:
                raise error from None
            return on_error(item, error)
        self.placements[node] += 1
        return cast(R, result)

    def _lost(self, exc: ConnectionError) -> ClusterUnavailable:
        self._health.lost = True
        return ClusterUnavailable(f"Ray cluster unavailable: the connection to it broke ({type(exc).__name__})")

    def close(self) -> None:
        if self._health.lost:
            return  # every Ray call would wait for a cluster that is gone
        if self._stop_actor is not None:
            with contextlib.suppress(Exception):  # best effort: the actor may be gone already
                ray.kill(self._stop_actor)
            self._stop_actor = None
        if self._started and ray.is_initialized():
            ray.shutdown()
