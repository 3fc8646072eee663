"""pgx's pytest fixture kit for plugin authors (and for pgx's own tests).

Installed as the ``pgx`` pytest plugin (``pytest11`` entry point), so a plugin package that
depends on pgx gets these fixtures without a conftest. Without the installed package, load it
with ``pytest -p pgx_testing``.

Storage fixtures:

* ``moto_s3_server`` (session): a moto S3 server on ``127.0.0.1`` and a free port; it sets test
  AWS credentials and region in the environment for the whole session (so spawned processes and
  pyarrow see them too) and yields the endpoint URL.
* ``s3_bucket``: a fresh, uniquely named bucket on that server.
* ``local_lake``: ``file://`` URI of a fresh temporary directory.
* ``s3_lake``: ``s3://<fresh bucket>/lake``.
* ``lake``: ``(lake_uri, StoreConfig)``, parametrized over ``local`` and ``s3`` (the latter
  marked ``s3``), so one test checks both stores: ``store = open_store(*lake)``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pgx_core.lake.storage import StoreConfig

TEST_REGION = "us-east-1"

_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": TEST_REGION,
    "AWS_REGION": TEST_REGION,
    # Nothing in a test may reach instance metadata or a developer's real profile.
    "AWS_EC2_METADATA_DISABLED": "true",
}
_UNSET_ENV = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE")


def pytest_configure(config: pytest.Config) -> None:
    """Register the markers these fixtures apply, for projects that use --strict-markers."""
    config.addinivalue_line("markers", "s3: runs against a moto S3 server on 127.0.0.1")


# ================================================================================================
# Storage fixtures
# ================================================================================================


class _SerializedWSGI:
    """Runs one request at a time.

    moto checks ``If-None-Match``/``If-Match`` and then stores the object without holding a lock,
    so concurrent conditional PUTs on its threaded server can both succeed (and concurrent
    writes to one key can fail with 500s). Real S3 evaluates them atomically; serializing
    requests gives the mock the same guarantee.
    """

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self._app = app
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        with self._lock:
            return list(self._app(environ, start_response))


def _start_moto() -> Any:
    from moto.moto_server.werkzeug_app import (  # noqa: PLC0415 - moto is a test-only dependency
        MotoRequestHandler,
        create_backend_app,
    )
    from moto.server import ThreadedMotoServer  # noqa: PLC0415
    from werkzeug.serving import make_server  # noqa: PLC0415

    class _Server(ThreadedMotoServer):
        # ThreadedMotoServer._server_entry, except that the app is serialized and S3-only: moto's
        # multi-service dispatcher rescans its module directory on every request (~40% of the
        # server's time), and these fixtures only serve S3.
        def _server_entry(self) -> None:
            app = _SerializedWSGI(create_backend_app("s3"))
            self._server = make_server(self._ip_address, self._port, app, True, request_handler=MotoRequestHandler)
            self._server_ready_event.set()
            self._server.serve_forever()

    # Port 0: the kernel picks a free port at bind time, so parallel sessions cannot collide.
    server = _Server(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    return server


@pytest.fixture(scope="session")
def moto_s3_server() -> Iterator[str]:
    """Endpoint URL (``http://127.0.0.1:PORT``) of a moto S3 server running for the session."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in _TEST_ENV.items():
            mp.setenv(name, value)
        for name in _UNSET_ENV:
            mp.delenv(name, raising=False)
        # werkzeug logs every request at INFO; keep test output readable.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        server = _start_moto()
        try:
            host, port = server.get_host_and_port()
            yield f"http://{host}:{port}"
        finally:
            server.stop()
            _CLIENTS.clear()


_CLIENTS: dict[str, Any] = {}


def _s3_client(endpoint_url: str) -> Any:
    # One client per endpoint: building one parses botocore's models (~0.2 s), per test adds up.
    if endpoint_url not in _CLIENTS:
        import boto3  # noqa: PLC0415

        _CLIENTS[endpoint_url] = boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url, region_name=TEST_REGION
        )
    return _CLIENTS[endpoint_url]


@pytest.fixture
def s3_bucket(moto_s3_server: str) -> Iterator[str]:
    """Name of a fresh, empty bucket on the session's moto server (emptied and removed afterwards)."""
    client = _s3_client(moto_s3_server)
    name = f"pgx-test-{uuid.uuid4().hex[:16]}"
    client.create_bucket(Bucket=name)
    yield name
    # moto keeps everything in memory: free it. Best effort: cleanup must not mask the outcome.
    with contextlib.suppress(Exception):
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
            if keys := [{"Key": obj["Key"]} for obj in page.get("Contents", [])]:
                client.delete_objects(Bucket=name, Delete={"Objects": keys, "Quiet": True})
        client.delete_bucket(Bucket=name)


@pytest.fixture
def local_lake(tmp_path: Path) -> str:
    """``file://`` URI of a fresh temporary directory (no trailing slash)."""
    return "file://" + str(tmp_path)


@pytest.fixture
def s3_lake(s3_bucket: str) -> str:
    """``s3://<fresh bucket>/lake`` (no trailing slash)."""
    return f"s3://{s3_bucket}/lake"


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)], ids=["local", "s3"])
def lake(request: pytest.FixtureRequest) -> tuple[str, StoreConfig]:
    """``(lake_uri, StoreConfig)`` for a fresh local lake and a fresh S3 lake (ids ``local``, ``s3``)."""
    if request.param == "local":
        return request.getfixturevalue("local_lake"), StoreConfig()
    endpoint: str = request.getfixturevalue("moto_s3_server")
    return request.getfixturevalue("s3_lake"), StoreConfig(endpoint_url=endpoint, region=TEST_REGION)


# ================================================================================================
# Runtime fixtures (plugin manager, Ray) — reserved for the core team; add them below.
# ================================================================================================


@pytest.fixture
def plugin_manager() -> Callable[..., Any]:
    """A factory for fresh plugin managers: ``plugin_manager(("name", module_or_object), ...)``.

    Each call builds a new manager with the installed entry points plus the given in-process
    plugins, so a plugin's own tests can register it without installing it.
    """
    from pgx_core.pluginmanager import make_plugin_manager  # noqa: PLC0415

    def make(*extra: tuple[str, object], entrypoints: bool = True) -> Any:
        return make_plugin_manager(list(extra), entrypoints=entrypoints)

    return make




@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One local Ray for the whole test session (``ray.init`` costs ~3 s and ~900 MB).

    Workers get ``PYTHONPATH`` plus the folders the ``PGX_TEST_RAY_PYTHONPATH`` environment
    variable names, so test-only stage modules import on workers too. pgx's Ray executor reuses
    this connection instead of starting its own.
    """
    import os  # noqa: PLC0415

    import ray  # noqa: PLC0415

    extra = [p for p in os.environ.get("PGX_TEST_RAY_PYTHONPATH", "").split(os.pathsep) if p]
    pythonpath = os.pathsep.join([*extra, os.environ.get("PYTHONPATH", "")]).strip(os.pathsep)
    ray.init(
        address="local",  # never attach to a cluster another process started on this host
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        runtime_env={"env_vars": {"PYTHONPATH": pythonpath}} if pythonpath else None,
    )
    try:
        yield
    finally:
        ray.shutdown()
