"""The older scripts' runbook, replayed word for word with ``pgx <command>`` in place of the script.

These are the examples that end the team's runbook (the document pgx replaces). Each runs through
the real CLI in a subprocess, with its default executor (a local Ray), on an S3 lake (moto, the
runbook's own buckets) and on a ``file://`` lake (the same text with the URIs swapped), after
``pgx sample`` and an ingest. The test checks each exit code and what the command said, and that
every object lands exactly at its canonical path and nowhere else.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pgx_core.lake.storage import ObjectStore, StoreConfig, open_store
from pgx_testing import TEST_REGION, _s3_client
from tests.conftest import pgx

pytestmark = pytest.mark.integration

BACKUP_EXAMPLE = """\
from helpers_1997_13.s3_utils import backup_s3_prefix
backup_s3_prefix('s3://pgxdatalake/silver/imputed/medical/age_band=65-74/event_year=2019/', 's3://pgxdatalake-backups/')
"""
IMPUTE = (
    "impute --pharmacy-input s3://pgxdatalake/bronze/pharmacy/*.parquet "
    "--medical-input s3://pgxdatalake/bronze/medical/*.parquet --output-root s3://pgxdatalake/silver/imputed --limit 1"
)
CLEAN_PHARMACY = (
    "clean --job pharmacy --pharmacy-input s3://pgxdatalake/silver/imputed/pharmacy_partitioned/**/*.parquet "
    "--output-root s3://pgxdatalake/gold/pharmacy --limit 1"
)
CLEAN_MEDICAL = (
    "clean --job medical --raw-medical s3://pgxdatalake/silver/medical/*.parquet "
    "--output-root s3://pgxdatalake/gold/medical --limit 1"
)
TARGET_FREQUENCY = "target-frequency --limit 1"
UPDATE_CODES = (
    'update-codes --resume --no-merge --years "2019" --workers-medical 4 --threads 1 --chunked --chunk-rows 250000'
)

# Every key a lake may hold after these commands, relative to the lake root.
_BAND = r"age_band=(0-12|13-24|25-44|45-54|55-64|65-74|75-84|85-94|95-114|unknown)"
_YEAR = r"event_year=\d{4}"
CANONICAL = [
    re.compile(p)
    for p in (
        r"raw/(pharmacy|medical)/[^/]+\.txt",
        r"bronze/(pharmacy|medical)/[^/]+\.parquet",
        r"bronze/_rejects/(pharmacy|medical)/[^/]+\.rejects\.parquet",
        rf"silver/imputed/(?P<t>pharmacy|medical)/{_BAND}/{_YEAR}/(?P=t)_data\.parquet",
        rf"silver/imputed/demographics/{_YEAR}/demographics_data\.parquet",
        r"silver/_quarantine/(?P<t>pharmacy|medical)/(?P=t)_quarantine\.parquet",
        rf"gold/(?P<t>pharmacy|medical)/{_BAND}/{_YEAR}/(?P=t)_data\.parquet",
        r"gold/target_code/(icd_frequency_by_position|procedure_code_frequency)\.parquet",
        r"gold/target_code/suggested_icd_mappings\.json",
        r"pgx_pipeline/[a-z_]+/run_id=\d{8}T\d{6}Z-[0-9a-f]{8}/summary\.json",
    )
]
TARGET_MAP = {"ZZ999": "F1120", "R69": "R69"}


@dataclass
class Runbook:
    """Where the runbook's URIs point on this lake, and how to run its commands there."""

    lake: str
    backups: str
    state_root: str
    config: StoreConfig
    env: dict[str, str]
    tmp: Path

    def text(self, command: str) -> str:
        """The runbook's text with its URIs pointing at this lake."""
        return command.replace("s3://pgxdatalake-backups/", self.backups + "/").replace(
            "s3://pgxdatalake", self.lake
        )

    def pgx(self, command: str) -> subprocess.CompletedProcess[str]:
        import shlex

        return pgx(*shlex.split(self.text(command)), env=self.env, timeout=600)

    def store(self, uri: str | None = None) -> ObjectStore:
        return open_store(uri or self.lake, self.config)

    def keys(self, prefix: str = "") -> list[str]:
        root = self.lake + "/"
        return [i.uri.removeprefix(root) for i in self.store().list(root + prefix)]


def _seed(rb: Runbook) -> None:
    """``pgx sample`` into the lake's raw zone, an ingest, and the target map where update-codes looks."""
    raw = rb.tmp / "raw"
    pgx("sample", str(raw), "--rows", "4000", check=True)
    store = rb.store()
    for path in sorted(raw.rglob("*.txt")):
        store.write_bytes(f"{rb.lake}/raw/{path.parent.name}/{path.name}", path.read_bytes())
    spec = rb.tmp / "ingest.yaml"
    spec.write_text(
        json.dumps(
            {
                "apiVersion": "pgx.io/v1alpha1",
                "kind": "PipelineRun",
                "metadata": {"name": "ingest"},
                "spec": {
                    "lake": rb.lake,
                    "executor": {"type": "local"},
                    "stages": [
                        {"use": "ingest", "name": f"ingest-{dt}", "with": {"dataType": dt}}
                        for dt in ("pharmacy", "medical")
                    ],
                },
            }
        )
    )
    pgx("run", str(spec), env=rb.env, check=True)
    target_map = f"{rb.state_root}/target_mapping/target_icd_mapping.json"
    rb.store(target_map).write_bytes(target_map, json.dumps(TARGET_MAP).encode())


@pytest.fixture(params=["file", pytest.param("s3", marks=pytest.mark.s3)])
def runbook(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Runbook]:
    if request.param == "s3":
        endpoint = request.getfixturevalue("moto_s3_server")  # also sets the test credentials
    env = {k: v for k, v in os.environ.items() if k not in ("PGX_LAKE", "AWS_ENDPOINT_URL", "RAY_ADDRESS")}
    if request.param == "file":
        lake = f"file://{tmp_path}/lake"
        env["PGX_LAKE"] = lake
        rb = Runbook(lake, f"file://{tmp_path}/backups", f"{lake}/_state", StoreConfig(), env, tmp_path)
        _seed(rb)
        yield rb
        return
    client = _s3_client(endpoint)
    buckets = ("pgxdatalake", "pgxdatalake-backups", "pgx-repository")  # the runbook's own
    for bucket in buckets:
        client.create_bucket(Bucket=bucket)
    # The commands name no endpoint: the standard AWS variable points every pgx process at moto.
    env = {**env, "AWS_ENDPOINT_URL": endpoint}
    rb = Runbook(
        "s3://pgxdatalake",
        "s3://pgxdatalake-backups",
        "s3://pgx-repository",
        StoreConfig(endpoint_url=endpoint, region=TEST_REGION),
        env,
        tmp_path,
    )
    try:
        _seed(rb)
        yield rb
    finally:
        for bucket in buckets:
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                if keys := [{"Key": o["Key"]} for o in page.get("Contents", [])]:
                    client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
            client.delete_bucket(Bucket=bucket)


def _zone(rb: Runbook, prefix: str) -> list[str]:
    return [k for k in rb.keys(prefix) if not k.endswith("/")]


def test_every_runbook_example_runs_as_written_and_writes_only_canonical_paths(runbook: Runbook) -> None:
    rb = runbook

    # impute --limit 1: one entity with rows, written where the canonical layout says, and said so.
    out = rb.pgx(IMPUTE)
    assert out.returncode == 0, out.stderr[-2000:]
    silver = _zone(rb, "silver/")
    assert len(silver) == 1 and re.fullmatch(CANONICAL[3], silver[0]), silver
    assert "stage impute: 1 completed" in out.stdout and "left for a later run (--limit 1)" in out.stdout
    assert f"wrote {rb.lake}/{silver[0]}" in out.stdout
    band_year = silver[0].split("/")[3:5]  # the partition impute chose: clean must find it

    # clean pharmacy: the older prefix is read at the canonical one, with a note naming it.
    out = rb.pgx(CLEAN_PHARMACY)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"pgx reads the canonical {rb.lake}/silver/imputed/pharmacy/" in out.stderr
    assert _zone(rb, "gold/") == [f"gold/pharmacy/{'/'.join(band_year)}/pharmacy_data.parquet"]

    # clean medical after impute --limit 1 (which wrote pharmacy silver only): no input, said, exit 2.
    out = rb.pgx(CLEAN_MEDICAL)
    assert out.returncode == 2, out.stderr[-2000:]
    assert f"found no object under {rb.lake}/silver/imputed/medical/" in out.stderr
    assert f"pgx reads the canonical {rb.lake}/silver/imputed/medical/" in out.stderr
    # The whole imputation, then the same clean example finds its silver.
    out = rb.pgx(IMPUTE.removesuffix(" --limit 1"))
    assert out.returncode == 0, out.stderr[-2000:]
    out = rb.pgx(CLEAN_MEDICAL)
    assert out.returncode == 0, out.stderr[-2000:]
    assert len(_zone(rb, "gold/medical/")) == 1

    # target-frequency: gold medical → the three reports under gold/target_code/.
    out = rb.pgx(TARGET_FREQUENCY)
    assert out.returncode == 0, out.stderr[-2000:]
    assert sorted(_zone(rb, "gold/target_code/")) == [
        "gold/target_code/icd_frequency_by_position.parquet",
        "gold/target_code/procedure_code_frequency.parquet",
        "gold/target_code/suggested_icd_mappings.json",
    ]

    # update-codes: every legacy flag acknowledged in one line. The smoke runs above cleaned one
    # medical partition (the first, 0-12 of 2016), so --years 2019 finds nothing in scope, and says so.
    out = rb.pgx(UPDATE_CODES)
    assert out.returncode == 0, out.stderr[-2000:]
    notes = [ln for ln in out.stderr.splitlines() if ln.startswith("note: ")]
    assert [n.split()[1] for n in notes] == ["--no-merge", "--chunked", "--threads"]
    assert "stage update-codes: nothing in scope" in out.stdout
    out = rb.pgx(CLEAN_MEDICAL.removesuffix(" --limit 1"))
    assert out.returncode == 0, out.stderr[-2000:]
    out = rb.pgx(UPDATE_CODES)
    assert out.returncode == 0, out.stderr[-2000:]
    done = sum("/event_year=2019/" in k for k in _zone(rb, "gold/medical/"))
    assert done > 0
    assert f"stage update-codes: {done} completed, 0 already done" in out.stdout
    again = rb.pgx(UPDATE_CODES)
    assert again.returncode == 0 and f"nothing to do, all {done} entities were already completed" in again.stdout

    # The helper import: a backup_<stamp>/ prefix holding a byte-identical copy.
    source = f"{rb.lake}/silver/imputed/medical/age_band=65-74/event_year=2019/"
    assert rb.store().exists(source + "medical_data.parquet")
    proc = subprocess.run(
        [sys.executable, "-c", rb.text(BACKUP_EXAMPLE).replace("backup_s3_prefix(", "print(backup_s3_prefix(") + ")"],
        capture_output=True,
        text=True,
        env=rb.env,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    prefix = proc.stdout.strip()
    assert re.fullmatch(re.escape(rb.backups) + r"/backup_\d{8}T\d{6}Z/", prefix), prefix
    copy = rb.store(prefix).read_bytes(prefix + "medical_data.parquet")
    assert copy == rb.store().read_bytes(source + "medical_data.parquet")

    # Nowhere else: every object of the lake is at a canonical path, state lives at the state root.
    elsewhere = [k for k in rb.keys() if not k.startswith(("_state/", "_backups/"))]  # noqa: SIM118
    assert [k for k in elsewhere if not any(p.fullmatch(k) for p in CANONICAL)] == []
    assert rb.store(rb.state_root).exists(f"{rb.state_root}/pgx-pipeline-status/global_imputation/global_tracker.json")


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("impute --output-root s3://pgxdatalake", "s3://pgxdatalake/silver/imputed"),
        ("impute --output-root s3://pgxdatalake/silver", "(for this lake: s3://pgxdatalake/silver/imputed)"),
        ("impute --output-root /silver/imputed", "got /silver/imputed"),
        ("clean --job pharmacy --output-root s3://pgxdatalake/gold/medical", "s3://pgxdatalake/gold/pharmacy)"),
        ("clean --job medical --output-root s3://pgxdatalake", "s3://pgxdatalake/gold/medical"),
    ],
)
def test_an_output_root_that_is_not_the_zone_root_is_refused_with_the_canonical_form(
    command: str, expected: str
) -> None:
    import shlex

    out = pgx(*shlex.split(command))
    assert out.returncode == 64
    assert "--output-root must be the zone root" in out.stderr and expected in out.stderr
