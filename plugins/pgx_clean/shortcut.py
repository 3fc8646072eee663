"""``pgx clean``: the older ``3_apcd_clean.py`` command line as a one-stage run.

``pgx clean --job pharmacy|medical [--pharmacy-input|--raw-pharmacy GLOB] [--medical-input|--raw-medical
GLOB] --output-root <lake>/gold/<job> [--limit N]`` runs ``clean-<job>`` on the lake that the output
root names (the gold zone root of the job, as for the script). The input glob becomes the stage's
``input``; older silver layouts (``…/silver/<type>/…``, ``…/silver/imputed/<type>_partitioned/…``)
are read at the canonical silver prefix, and a note names it. ``--min-year``/``--max-year`` and
``--pairs``/``--pairs-file`` choose the partitions, ``--workers`` caps parallelism, ``--dry-run``
shows the plan; the script's other flags are accepted with a note (:data:`LEGACY`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pgx_core.cli.shortcuts import (
    LegacyFlag,
    add_common_arguments,
    add_legacy_arguments,
    as_uri,
    lake_of_output_root,
    pipeline_run,
    years_between,
)
from pgx_core.errors import ArgumentError
from pgx_core.lake import paths
from pgx_core.spec.runspec import AGE_BANDS

COMMAND = "clean"
HELP = "seed-compatible: clean one dataset's silver partitions into gold (3_apcd_clean.py)"
JOBS = ("pharmacy", "medical")
_RUNS_HERE = "pgx runs the clean stage itself, on its executor (local or Ray)"
LEGACY = (
    LegacyFlag("--tmp-dir", "pgx stages outputs under <lake>/_staging/<run_id>/ and removes them"),
    LegacyFlag("--min-rows", "pgx cleans every partition that has silver rows"),
    LegacyFlag("--retries", "pgx retries transient failures itself (3 times, with backoff)"),
    LegacyFlag("--lookahead-years", "imputation's window is set by pgx impute --lookahead-years"),
    LegacyFlag("--demographics-lookup", "silver rows already carry their imputed demographics"),
    LegacyFlag("--run-mode", _RUNS_HERE),
    LegacyFlag("--pharmacy-module", _RUNS_HERE),
    LegacyFlag("--medical-module", _RUNS_HERE),
    LegacyFlag("--pharmacy-script", _RUNS_HERE),
    LegacyFlag("--medical-script", _RUNS_HERE),
    LegacyFlag("--python-bin", _RUNS_HERE),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--job", required=True, choices=[*JOBS, "global-imputation"], help="the dataset to clean"
    )
    for dt in JOBS:
        parser.add_argument(f"--{dt}-input", help=f"silver {dt} prefix or glob (older layouts accepted)")
        parser.add_argument(f"--raw-{dt}", help=f"the same as --{dt}-input (the older script's name)")
    parser.add_argument("--output-root", required=True, help="the gold zone root of the job: <lake>/gold/<job>")
    parser.add_argument("--drug-map", help="drug map URI (pharmacy)")
    parser.add_argument("--min-year", type=int, help="first event year (default 2016)")
    parser.add_argument("--max-year", type=int, help="last event year (default 2020)")
    parser.add_argument(
        "--pairs", help='partitions as "band,year;band,year" (also band/year or age_band=…/event_year=…)'
    )
    parser.add_argument("--pairs-file", help="partitions, one band,year per line (# comments)")
    parser.add_argument("--workers", type=int, metavar="N", help="at most N partitions at once (executor.maxParallel)")
    parser.add_argument(
        "--dry-run", dest="plan_only", action="store_true", help="list the partitions that would run; write nothing"
    )
    add_common_arguments(parser)
    add_legacy_arguments(parser, LEGACY, "3_apcd_clean.py")


def _input(args: argparse.Namespace, job: str) -> str | None:
    given = getattr(args, f"{job}_input", None) or getattr(args, f"raw_{job}", None)
    return as_uri(given) if given else None


def extra_notes(args: argparse.Namespace) -> list[str]:
    """A note when the input is an older silver layout, naming the canonical prefix pgx reads."""
    given = _input(args, args.job) if args.job in JOBS else None
    try:
        older = paths.older_silver_prefix(given, args.job) if given else None
    except ValueError:
        return []  # the spec's validation names the problem
    if not (given and older):
        return []
    canonical = paths.convert_raw_to_imputed_path(given, args.job)
    return [f"note: {given} is an older silver layout: pgx reads the canonical {canonical}"]


def _pair(text: str) -> tuple[str, int]:
    t = text.strip().replace("age_band=", "").replace("event_year=", "")
    for sep in (",", "/", " "):
        band, found, year = t.partition(sep)
        if found and band.strip() in AGE_BANDS and year.strip().isdigit():
            return band.strip(), int(year)
    raise ArgumentError(f"--pairs: expected band,year such as 65-74,2019, got {text.strip()!r}")


def _pairs(args: argparse.Namespace) -> tuple[list[str], list[int]] | None:
    """``--pairs``/``--pairs-file`` as age bands × years; pgx runs a grid, so the pairs must form one."""
    texts = [t for t in (args.pairs or "").split(";") if t.strip()]
    if args.pairs_file:
        try:
            lines = Path(args.pairs_file).read_text().splitlines()
        except OSError as exc:
            raise ArgumentError(f"--pairs-file {args.pairs_file}: cannot read it ({exc.strerror})") from None
        texts += [ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not texts:
        return None
    pairs = {_pair(t) for t in texts}
    bands = [b for b in AGE_BANDS if any(p[0] == b for p in pairs)]
    years = sorted({p[1] for p in pairs})
    if len(pairs) != len(bands) * len(years):
        raise ArgumentError(
            f"--pairs: pgx runs every age band × year of the run; these {len(pairs)} pairs are not a full grid "
            f"of bands {','.join(bands)} × years {','.join(map(str, years))}: run once per band or year instead"
        )
    return bands, years


def build_spec(args: argparse.Namespace) -> dict[str, Any]:
    """The ``PipelineRun`` document of ``pgx clean`` with these arguments (``UsageError``: 64)."""
    job = args.job
    if job not in JOBS:
        raise ArgumentError("--job global-imputation is pgx impute: pgx impute --output-root <lake>/silver/imputed")
    other = next(j for j in JOBS if j != job)
    if _input(args, other) is not None:
        raise ArgumentError(f"--{other}-input / --raw-{other} do not apply to --job {job}")
    if args.drug_map is not None and job != "pharmacy":
        raise ArgumentError("--drug-map applies to --job pharmacy only")
    lake = lake_of_output_root(args.output_root, "gold", job)
    params: dict[str, Any] = {}
    given = _input(args, job)
    if given is not None:
        params["input"] = given
    if args.drug_map is not None:
        params["drugMap"] = as_uri(args.drug_map)
    years = years_between(args.min_year, args.max_year)
    bands = None
    grid = _pairs(args)
    if grid is not None:
        bands, pair_years = grid
        years = [y for y in pair_years if years is None or y in years]
        if not years:
            raise ArgumentError("--pairs: no pair falls between --min-year and --max-year")
    return pipeline_run(
        f"clean-{job}",
        lake,
        {"use": f"clean-{job}", "with": params},
        args,
        years=years,
        age_bands=bands,
        max_parallel=args.workers,
    )


__all__ = ["COMMAND", "HELP", "JOBS", "LEGACY", "add_arguments", "build_spec", "extra_notes"]
