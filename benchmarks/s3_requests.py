"""S3 requests per stage, counted at the server: what a run costs in requests, not just in time.

    python benchmarks/s3_requests.py --rows 1000000 [--budget-mb 2048] [--out benchmarks/s3_requests.json]

Method: the demo's raw extracts (``pgx sample``) are uploaded to a bucket of a moto S3 server on
127.0.0.1; the demo pipeline runs on that lake one stage at a time (``pgx run SPEC --stage NAME``,
executor ray), and every HTTP request the server receives during that stage is counted from its
request log by method and kind: LIST (``GET`` of a bucket with ``list-type``), GET and HEAD of an
object, PUT (objects, multipart parts and server-side copies, which the log does not tell apart:
all billed as PUT), POST (multipart start and completion) and DELETE. The table gives requests per
million input rows and the cost per million rows at S3 Standard list prices (PUT, COPY, POST and
LIST: $0.005 per 1,000; GET and HEAD: $0.0004 per 1,000; DELETE free).

The counts include pgx's own bookkeeping (state, leases, summaries, the conditional-write probe),
which is per entity, not per row; ``--rows`` small overstates it per row.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import boto3
import yaml
from moto.server import ThreadedMotoServer

HERE = Path(__file__).resolve().parent
BUCKET = "pgx-bench"
REGION = "us-east-1"
TIER1 = ("PUT", "POST", "LIST")  # $0.005 per 1,000 requests
TIER2 = ("GET", "HEAD")  # $0.0004 per 1,000 requests
PRICE = {**dict.fromkeys(TIER1, 0.005 / 1000), **dict.fromkeys(TIER2, 0.0004 / 1000), "DELETE": 0.0}
_LINE = re.compile(r'"(?:\x1b\[[0-9;]*m)*([A-Z]+) (/[^ ]*) HTTP')


class RequestLog(logging.Handler):
    """Counts the moto server's requests by kind (werkzeug logs one line per request)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        m = _LINE.search(record.getMessage())
        if not m:
            return
        method, path = m.groups()
        bucket_only = "/" not in path.lstrip("/").split("?", 1)[0]
        kind = "LIST" if method == "GET" and bucket_only and "list-type" in path else method
        self.counts[kind] += 1


def _spec(root: Path, lake: str, endpoint: str, budget_mb: int) -> Path:
    from pgx_core.cli.project import make_project
    from pgx_core.pluginmanager import make_plugin_manager

    project, _ = make_project(root, make_plugin_manager(), sample_rows=0)
    stages = [s for s in project["spec"]["stages"] if s["use"] != "line-count"]
    doc = {
        "apiVersion": "pgx.io/v1alpha1",
        "kind": "PipelineRun",
        "metadata": {"name": "requests"},
        "spec": {
            "lake": lake,
            "stateRoot": f"{lake}/_state",
            "backupRoot": f"{lake}/_backups",
            "s3": {"endpointUrl": endpoint, "region": REGION},
            "executor": {"memoryBudgetMb": budget_mb},
            "stages": stages,
        },
    }
    path = root / "requests.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--budget-mb", type=int, default=2048)
    ap.add_argument("--out", type=Path, default=HERE / "s3_requests.json")
    args = ap.parse_args()

    from pgx_core.cli.project import make_project
    from pgx_core.pluginmanager import make_plugin_manager

    log = RequestLog()
    werkzeug = logging.getLogger("werkzeug")
    werkzeug.setLevel(logging.INFO)
    werkzeug.addHandler(log)
    werkzeug.propagate = False
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        client = boto3.client("s3", endpoint_url=endpoint, region_name=REGION)
        client.create_bucket(Bucket=BUCKET)
        with tempfile.TemporaryDirectory(prefix="pgx-s3req-") as tmp:
            root = Path(tmp)
            make_project(root, make_plugin_manager(), sample_rows=args.rows)
            for f in sorted((root / "lake" / "raw").rglob("*.txt")):
                client.upload_file(str(f), BUCKET, f"lake/raw/{f.parent.name}/{f.name}")
            spec = _spec(root, f"s3://{BUCKET}/lake", endpoint, args.budget_mb)
            stages = [s.get("name", s["use"]) for s in yaml.safe_load(spec.read_text())["spec"]["stages"]]
            pgx = str(Path(sys.executable).parent / "pgx")
            results = []
            for stage in stages:
                log.counts.clear()
                started = time.monotonic()
                proc = subprocess.run(
                    [pgx, "run", str(spec), "--stage", stage, "--json", "--log-level", "WARNING"],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if proc.returncode != 0:
                    sys.exit(f"pgx run --stage {stage} exited {proc.returncode}: {proc.stderr[-2000:]}")
                counts = dict(log.counts)
                run_id = json.loads(proc.stdout)["run_id"]
                seconds = round(time.monotonic() - started, 1)
                results.append({"stage": stage, "seconds": seconds, "requests": counts, "run_id": run_id})
    finally:
        server.stop()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    doc = {
        "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": commit.stdout.strip() or None,
        "rows": args.rows,
        "budget_mb": args.budget_mb,
        "stages": results,
    }
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(table(doc))


def table(doc: dict[str, Any]) -> str:
    kinds = ("LIST", "GET", "HEAD", "PUT", "POST", "DELETE")
    per = 1e6 / doc["rows"]
    lines = [
        f"| stage | {' | '.join(kinds)} | requests per M rows | $ per M rows |",
        "|---|" + "--:|" * (len(kinds) + 2),
    ]
    for s in doc["stages"]:
        c = s["requests"]
        total = sum(c.get(k, 0) for k in kinds)
        cost = sum(c.get(k, 0) * PRICE[k] for k in kinds)
        cells = " | ".join(f"{c.get(k, 0):,}" for k in kinds)
        lines.append(f"| {s['stage']} | {cells} | {total * per:,.0f} | {cost * per:.4f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
