"""A Ray head started apart from pgx (as a cluster would be), for the tests that join or lose one."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import SUPPORT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def head_env() -> dict[str, str]:
    """The environment of the head and of the pgx processes joining it.

    A private token: Ray turns token auth on when ``~/.ray/auth_token`` exists (and a local Ray
    started in this test process then sets ``RAY_AUTH_MODE=token`` for every child), so the head
    and its drivers must agree on one token whatever this machine holds. And the test-only stages
    importable on the workers.
    """
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "PYTHONPATH": os.pathsep.join([str(SUPPORT), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    return env


@contextmanager
def ray_head(env: dict[str, str]) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """``(port, process)`` of a Ray head in its own session; everything it started is killed after.

    Its temp dir is private and short (Ray's socket paths must stay under 107 bytes). Only the
    processes this head started are stopped (never ``ray stop``).
    """
    port = free_port()
    temp = tempfile.mkdtemp(prefix="pgxray", dir="/tmp")
    head = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--node-ip-address=127.0.0.1",
            "--num-cpus=2",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={temp}",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        yield port, head
    finally:
        if head.poll() is None:
            os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=60)
        shutil.rmtree(temp, ignore_errors=True)


class Cluster:
    """A head (no CPUs: it only schedules) and worker nodes, each a ``ray start`` process group."""

    def __init__(self, env: dict[str, str], temp: str, gcs_port: int, client_port: int) -> None:
        self.env, self.temp, self.gcs_port, self.client_port = env, temp, gcs_port, client_port
        self.head: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []

    @property
    def client_address(self) -> str:
        return f"ray://127.0.0.1:{self.client_port}"

    def _start(self, *args: str) -> subprocess.Popen[bytes]:
        ray = str(Path(sys.executable).parent / "ray")
        common = ("--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats")
        return subprocess.Popen(
            [ray, "start", *common, *args],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: a node can be killed whole
        )

    def alive_nodes(self) -> int:
        """Active nodes, as ``ray status`` (the GCS's autoscaler view; no dashboard needed) lists them."""
        out = subprocess.run(
            [str(Path(sys.executable).parent / "ray"), "status", f"--address=127.0.0.1:{self.gcs_port}"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        ).stdout
        active = out.partition("Active:")[2].partition("Pending:")[0]
        return sum(1 for line in active.splitlines() if " node_" in line)

    def wait_for_nodes(self, n: int, timeout: float = 90) -> None:
        import time

        deadline = time.monotonic() + timeout
        while self.alive_nodes() < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"the Ray cluster did not reach {n} nodes within {timeout:.0f} s")
            time.sleep(1)

    def add_worker(self, cpus: int = 1, memory_mb: int = 3072) -> subprocess.Popen[bytes]:
        """One more worker node (started after the last one joined: concurrent starts collide)."""
        proc = self._start(
            f"--address=127.0.0.1:{self.gcs_port}",
            f"--num-cpus={cpus}",
            f"--memory={memory_mb * 1024 * 1024}",
            "--object-store-memory=200000000",
        )
        self.workers.append(proc)
        self.wait_for_nodes(1 + len(self.workers))
        return proc

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)


@contextmanager
def ray_cluster(env: dict[str, str], workers: int = 2) -> Iterator[Cluster]:
    """A multi-node Ray cluster on this machine: a head with a Ray Client server and ``workers``
    worker nodes of one CPU each. Everything it started is killed after (never ``ray stop``)."""
    temp = tempfile.mkdtemp(prefix="pgxray", dir="/tmp")
    cluster = Cluster(env, temp, free_port(), free_port())
    try:
        cluster.head = cluster._start(
            "--head",
            f"--port={cluster.gcs_port}",
            f"--ray-client-server-port={cluster.client_port}",
            "--num-cpus=0",
            "--memory=1073741824",
            "--object-store-memory=200000000",
            "--include-dashboard=false",
            f"--temp-dir={temp}",
        )
        cluster.wait_for_nodes(1)
        for _ in range(workers):
            cluster.add_worker()
        yield cluster
    finally:
        for proc in [*cluster.workers, *([cluster.head] if cluster.head else [])]:
            cluster.kill(proc)
        # The head's Ray Client server starts one server per client in a session of its own; they
        # outlive the head for minutes and keep their ports (23000…), so a later cluster's client
        # could not get one. Everything still pointing at this cluster's GCS port goes too.
        import psutil

        for p in psutil.process_iter(["cmdline"]):
            if f":{cluster.gcs_port}" in " ".join(p.info["cmdline"] or []):
                with contextlib.suppress(psutil.Error):
                    p.kill()
        if not os.environ.get("PGX_TEST_KEEP_RAY_TEMP"):  # set it to read the nodes' logs after a failure
            shutil.rmtree(temp, ignore_errors=True)
