"""Hook implementations of the APCD domain plugin: ``pgx sample`` and the raw part of a new project.

A new project (``pgx init``, ``pgx demo``) gets ``lake/raw/pharmacy/`` and ``lake/raw/medical/``
(synthetic extracts in them unless asked for none), the example code maps the stages use, and a
README paragraph on the raw layout.
"""

from __future__ import annotations

import argparse
import shutil
from importlib import resources
from pathlib import Path

from pgx_apcd import layout
from pgx_apcd.layout import DATA_TYPES
from pgx_core.extend import Command, Commands, Project
from pgx_core.hookspecs import hookimpl

# Example maps (a research team keeps its real ones in its own bucket); `pgx init` copies them.
MAPS = {"targetMap": "target_icd_mapping.json", "drugMap": "drug_map.json"}


def _sample_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("outdir", help="writes OUTDIR/pharmacy/*.txt and OUTDIR/medical/*.txt")
    parser.add_argument("--rows", type=int, default=20_000, help="claim lines over both types")
    parser.add_argument("--seed", type=int, default=0, help="the same seed writes the same bytes")
    parser.add_argument(
        "--defects", action="store_true", help="plant every reject and quarantine reason at known lines"
    )


def _sample(args: argparse.Namespace) -> int:
    from pgx_apcd.sample import generate  # noqa: PLC0415 - only this command needs the generator

    manifest = generate(args.outdir, rows=args.rows, seed=args.seed, defects=args.defects)
    if args.json:
        print(manifest.to_json())
    else:
        print(f"wrote {len(manifest.files)} files under {args.outdir}")
    return 0


@hookimpl
def pgx_add_commands(commands: Commands) -> None:
    commands.add(Command("sample", "write synthetic APCD extracts", _sample_arguments, _sample))


def write_sample(raw: Path, *, rows: int, seed: int) -> None:
    """Synthetic extracts into ``raw/<data type>/`` (the quarterly file names of the real feed)."""
    from pgx_apcd.sample import generate  # noqa: PLC0415

    tmp = raw.parent / "_sample"
    generate(tmp, rows=rows, seed=seed)
    for data_type in DATA_TYPES:
        for f in sorted((tmp / data_type).glob("*.txt")):
            shutil.move(str(f), raw / data_type / f.name)
    shutil.rmtree(tmp)


def _raw_readme(sampled: bool) -> str:
    widths = ", ".join(f"{dt} {len(layout.raw_columns(dt))} columns" for dt in DATA_TYPES)
    sample = (
        "The `.txt` files there now are **synthetic** sample extracts, for a first run: delete them "
        "before you add real ones."
        if sampled
        else "Both folders are empty: add the quarter's extracts."
    )
    return f"""## Raw extracts

Put each quarter's extract files under `lake/raw/pharmacy/` and `lake/raw/medical/`: pipe-delimited
text in CP1252, one header line naming the feed's columns ({widths}), one claim line per line,
`.txt` files. The ingest stages turn them into bronze Parquet under `lake/bronze/`. {sample}

`maps/` holds small example code maps (`target_icd_mapping.json` for update-codes and
target-frequency, `drug_map.json` for clean-pharmacy): replace them with your own."""


@hookimpl
def pgx_init_project(project: Project) -> None:
    raw = project.lake / "raw"
    fresh = not raw.exists()
    for data_type in DATA_TYPES:
        (raw / data_type).mkdir(parents=True, exist_ok=True)
    if fresh and project.sample_rows > 0:
        write_sample(raw, rows=project.sample_rows, seed=project.seed)
    maps = project.root / "maps"
    maps.mkdir(parents=True, exist_ok=True)
    shipped = resources.files("pgx_apcd") / "maps"
    for key, name in MAPS.items():
        target = maps / name
        if not target.exists():  # the project's own maps are never overwritten
            target.write_text(shipped.joinpath(name).read_text())
        project.add_file(key, target)
    project.add_readme(_raw_readme(sampled=any(raw.glob("*/*.txt"))))
