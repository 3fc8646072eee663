"""A Ray head started apart from pgx (as a cluster would be), for the tests that join or lose one."""

from __future__ import annotations

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
