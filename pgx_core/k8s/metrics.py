"""``pgx controller``'s Prometheus metrics and its HTTP endpoints.

One port serves ``/metrics`` (Prometheus text format), ``/healthz`` (liveness: the reconcile loop
went round within the last :attr:`Metrics.stale_after` seconds) and ``/readyz`` (readiness: the
last call to the API server, the Lease check, succeeded). Metric names:

- ``pgx_controller_reconciles_total{result}``: reconciles, ``success`` or ``error``;
- ``pgx_controller_api_errors_total{code}``: failed API calls by HTTP status (``0``: no answer);
- ``pgx_controller_queue_depth``: PipelineRuns waiting in the work queue;
- ``pgx_controller_pipelineruns{phase}``: PipelineRuns by phase, at the last resync;
- ``pgx_controller_run_duration_seconds{phase}``: start to end of finished runs (histogram);
- ``pgx_controller_leader``: 1 while this replica holds the Lease.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from pgx_core.k8s.crd import PHASES

# Runs take minutes to a day: buckets from a minute to two days.
DURATION_BUCKETS = (60, 300, 900, 1800, 3600, 7200, 14400, 28800, 57600, 86400, 172800)


class Metrics:
    def __init__(self, stale_after: float = 60.0) -> None:
        self.registry = CollectorRegistry()
        self.stale_after = stale_after
        self.reconciles = Counter(
            "pgx_controller_reconciles", "Reconciles of PipelineRuns", ["result"], registry=self.registry
        )
        self.api_errors = Counter(
            "pgx_controller_api_errors", "Failed Kubernetes API calls by HTTP status", ["code"], registry=self.registry
        )
        self.queue_depth = Gauge("pgx_controller_queue_depth", "PipelineRuns waiting", registry=self.registry)
        self.runs = Gauge("pgx_controller_pipelineruns", "PipelineRuns by phase", ["phase"], registry=self.registry)
        self.run_duration = Histogram(
            "pgx_controller_run_duration_seconds",
            "Start to end of finished runs",
            ["phase"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.leader = Gauge("pgx_controller_leader", "1 while this replica holds the Lease", registry=self.registry)
        for result in ("success", "error"):
            self.reconciles.labels(result)
        self.beat = time.monotonic()
        self.api_ok = False

    def count_phases(self, phases: Iterable[str]) -> None:
        counts = dict.fromkeys(PHASES, 0)
        for phase in phases:
            counts[phase] = counts.get(phase, 0) + 1
        for phase, n in counts.items():
            self.runs.labels(phase).set(n)

    def alive(self) -> bool:
        return time.monotonic() - self.beat < self.stale_after

    def exposition(self) -> bytes:
        return bytes(generate_latest(self.registry))


def serve(metrics: Metrics, port: int, host: str = "0.0.0.0") -> ThreadingHTTPServer:  # noqa: S104 - a pod's port
    """Start the endpoints on ``port`` (0: any free port) in a daemon thread; ``shutdown()`` stops them."""
    routes: dict[str, Callable[[], tuple[int, str, bytes]]] = {
        "/metrics": lambda: (200, CONTENT_TYPE_LATEST, metrics.exposition()),
        "/healthz": lambda: (200, "text/plain", b"ok\n") if metrics.alive() else (503, "text/plain", b"stale\n"),
        "/readyz": lambda: (200, "text/plain", b"ok\n") if metrics.api_ok else (503, "text/plain", b"no API\n"),
    }

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            route = routes.get(self.path.split("?")[0])
            code, kind, body = route() if route else (404, "text/plain", b"not found\n")
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # probes every few seconds: not logged
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True, name="pgx-metrics").start()
    return server
