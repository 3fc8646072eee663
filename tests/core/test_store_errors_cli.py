"""Storage failures through real `pgx` processes: rejected or missing credentials, a missing bucket
and an unreachable endpoint each give one clear message and the exit code that tells a Job whether
retrying can help."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pgx_core.lake import paths
from pgx_core.lake.storage import StoreConfig, open_store, split_uri

KEY_CANARY = "AKIAPGXCANARY0000002"
SECRET_CANARY = "pgx-secret-canary-7a3e90b1"  # noqa: S105 - a canary, not a secret
UNSAFE_STORE_ADVICE = ("allowUnsafeStore", "does not enforce conditional writes")


def write_spec(tmp: Path, lake: str, endpoint: str, **with_: Any) -> Path:
    doc = {
        "apiVersion": "pgx.io/v1alpha1",
        "kind": "PipelineRun",
        "metadata": {"name": "store-errors"},
        "spec": {
            "lake": lake,
            "stateRoot": paths.join(lake, "_state"),
            "executor": {"type": "local"},
            "leaseTtlSeconds": 5,
            "s3": {"endpointUrl": endpoint, "region": "us-east-1"},
            "stages": [{"use": "copy-table", "with": with_}],
        },
    }
    path = tmp / f"spec-{uuid.uuid4().hex[:8]}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def pgx_env(*args: str, **aws: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI with no AWS_* variable of this process, only ``aws`` (credentials, config files)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({"AWS_EC2_METADATA_DISABLED": "true", **aws})
    return subprocess.run(
        [sys.executable, "-m", "pgx_core", *args], capture_output=True, text=True, env=env, timeout=300, check=False
    )


def log_lines(stderr: str) -> list[dict[str, Any]]:
    """The JSON log lines of a run; every other stderr line must be its one ``pgx: …`` message
    (no traceback, no raw text)."""
    return [json.loads(line) for line in stderr.splitlines() if not line.startswith("pgx: ")]


def message_lines(stderr: str) -> list[str]:
    """The human ``pgx: …`` lines of stderr (at most one: what ended the run)."""
    return [line for line in stderr.splitlines() if line.startswith("pgx: ")]


def log_events(stderr: str) -> dict[str, dict[str, Any]]:
    """The last JSON log line of each event."""
    return {doc.get("event", ""): doc for doc in log_lines(stderr)}


def assert_clean(proc: subprocess.CompletedProcess[str], *canaries: str) -> None:
    text = proc.stdout + proc.stderr
    assert "Traceback" not in text
    for advice in UNSAFE_STORE_ADVICE:
        assert advice not in text
    for canary in canaries:
        assert canary not in text


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- credentials ------------------------------------------------------------------------------


@pytest.fixture
def moto_checks_credentials(s3_bucket: str) -> Iterator[None]:
    """The session's moto server checks signatures while this is active (it accepts anything otherwise)."""
    from moto.core.authorization import enable_iam_authentication

    with enable_iam_authentication():
        yield


@pytest.mark.s3
def test_run_with_rejected_credentials_exits_64_and_says_so(
    s3_lake: str, moto_s3_server: str, tmp_path: Path, teststage: Path, moto_checks_credentials: None
) -> None:
    proc = pgx_env(
        "run",
        str(write_spec(tmp_path, s3_lake, moto_s3_server)),
        "--json",
        AWS_ACCESS_KEY_ID=KEY_CANARY,
        AWS_SECRET_ACCESS_KEY=SECRET_CANARY,
        AWS_DEFAULT_REGION="us-east-1",
    )
    assert proc.returncode == 64, proc.stderr
    assert json.loads(proc.stdout)["summaries"] == []
    failed = log_events(proc.stderr)["run_failed"]
    assert failed["exit_code"] == 64
    bucket = split_uri(s3_lake)[1]
    assert failed["error"].startswith(f"S3 put_if_absent failed for {s3_lake}/")
    assert "InvalidAccessKeyId (HTTP 403): the store does not know the access key id." in failed["error"]
    assert "standard AWS chain (environment variables, a shared profile, or IRSA" in failed["error"]
    assert f"bucket {bucket}" in failed["error"]
    assert_clean(proc, KEY_CANARY, SECRET_CANARY)


@pytest.mark.s3
def test_run_without_any_credentials_exits_64_and_says_so(
    s3_lake: str, moto_s3_server: str, tmp_path: Path, teststage: Path
) -> None:
    empty = tmp_path / "empty"
    empty.write_text("")
    spec = write_spec(tmp_path, s3_lake, moto_s3_server)
    proc = pgx_env("run", str(spec), "--json", AWS_SHARED_CREDENTIALS_FILE=str(empty), AWS_CONFIG_FILE=str(empty))
    assert proc.returncode == 64, proc.stderr
    failed = log_events(proc.stderr)["run_failed"]
    assert failed["error"].startswith(f"S3 put_if_absent failed for {s3_lake}/")
    chain = "NoCredentialsError: no credentials were found. pgx takes S3 credentials only from the standard AWS chain"
    assert chain in failed["error"]
    assert_clean(proc)
    # The same one line from a command that reads only.
    plan = pgx_env("plan", str(spec), AWS_SHARED_CREDENTIALS_FILE=str(empty), AWS_CONFIG_FILE=str(empty))
    assert plan.returncode == 64
    [line] = plan.stderr.splitlines()
    assert line.startswith(f"pgx: S3 list failed for {s3_lake}/input/: NoCredentialsError: no credentials were found.")


# --- a missing bucket -------------------------------------------------------------------------


@pytest.mark.s3
def test_missing_bucket_exits_64_naming_it(moto_s3_server: str, tmp_path: Path, teststage: Path) -> None:
    bucket = f"pgx-missing-{uuid.uuid4().hex[:12]}"
    lake = f"s3://{bucket}/lake"
    spec = write_spec(tmp_path, lake, moto_s3_server)
    creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    run = pgx_env("run", str(spec), "--json", **creds)
    assert run.returncode == 64, run.stderr
    failed = log_events(run.stderr)["run_failed"]
    assert f"NoSuchBucket (HTTP 404): bucket {bucket} does not exist; check the bucket name" in failed["error"]
    assert_clean(run)
    for command in ("plan", "status"):
        proc = pgx_env(command, str(spec), **creds)
        assert proc.returncode == 64, (command, proc.stderr)
        [line] = proc.stderr.splitlines()
        assert line.startswith(f"pgx: S3 list failed for {lake}/") and f"bucket {bucket} does not exist" in line


# --- an unreachable endpoint --------------------------------------------------------------------

CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.mark.parametrize("command", ["plan", "status", "backup"])
def test_endpoint_down_is_one_line_exit_75(command: str, tmp_path: Path, teststage: Path) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    lake = "s3://pgx-down/lake"
    args = [command, str(write_spec(tmp_path, lake, endpoint))]
    if command == "backup":
        args = [command, lake + "/gold/", lake + "/bk/", "--endpoint-url", endpoint]
    proc = pgx_env(*args, **CREDS)
    assert proc.returncode == 75, proc.stderr
    [line] = proc.stderr.splitlines()
    assert line.startswith(f"pgx: S3 list failed for {lake}/")
    assert line.endswith(f" after retries: EndpointConnectionError talking to {endpoint}")
    assert proc.stdout == ""


def test_run_with_endpoint_down_names_what_failed_exit_75(tmp_path: Path, teststage: Path) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    lake = "s3://pgx-down/lake"
    proc = pgx_env("run", str(write_spec(tmp_path, lake, endpoint)), "--json", **CREDS)
    assert proc.returncode == 75, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["exit_code"] == 75 and doc["summaries"] == []
    events = log_events(proc.stderr)
    # The probe write that failed, not the cleanup that could not run after it.
    error = events["run_failed"]["error"]
    assert error.startswith(f"S3 put_if_absent failed for {lake}/")
    assert error.endswith(f" after retries: EndpointConnectionError talking to {endpoint}")
    assert message_lines(proc.stderr) == [f"pgx: {error}"]  # and one line says so to a human
    # Scrubbed messages keep the run id and the prefix.
    staging = paths.staging_root(lake, doc["run_id"])
    assert events["staging_cleanup_failed"]["error"].startswith(f"S3 list failed for {staging}")
    assert_clean(proc)


def test_endpoint_dying_mid_run_is_transient_not_a_traceback(tmp_path: Path, teststage: Path) -> None:
    from pgx_testing import _s3_client, _start_moto

    server = _start_moto()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        bucket = f"pgx-dies-{uuid.uuid4().hex[:12]}"
        lake = f"s3://{bucket}/lake"
        _s3_client(endpoint).create_bucket(Bucket=bucket)
        store = open_store(lake, StoreConfig(endpoint_url=endpoint))
        for i in range(3):
            with store.open_output(paths.join(lake, "input", f"p{i}.parquet")) as f:
                pq.write_table(pa.table({"x": list(range(10))}), f)
        spec = write_spec(tmp_path, lake, endpoint, delaySec=1.0)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | CREDS
        run = subprocess.Popen(
            [sys.executable, "-m", "pgx_core", "run", str(spec), "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        lease = paths.lease_object(paths.join(lake, "_state"), "test_copy", f"{paths.lake_key(lake)}__p0")
        deadline = time.monotonic() + 60
        while store.head(lease) is None and time.monotonic() < deadline:  # the run is working
            time.sleep(0.05)
    finally:
        server.stop()
    out, err = run.communicate(timeout=600)
    assert run.returncode == 75, err[-3000:]
    assert "Traceback" not in err
    lines = log_lines(err)  # every line is one JSON log line
    assert lines[-1]["event"] == "run_finished" and lines[-1]["exit_code"] == 75
    errors = [doc["error"] for doc in lines if "error" in doc]
    assert errors and all("\n" not in e for e in errors)
    assert any(e.endswith(f"EndpointConnectionError talking to {endpoint}") for e in errors)
    assert json.loads(out)["exit_code"] == 75
