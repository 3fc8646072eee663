"""The shortcut commands the built-in plugins add (the older scripts' command lines), through a real
subprocess: the spec each builds, the notes for flags with no effect, and usage errors."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import pgx


def test_shortcut_flags_that_do_not_go_together_exit_64_with_the_usage_line(tmp_path: Path) -> None:
    for args, command in (
        (("clean", "--job", "medical", "--output-root", str(tmp_path / "silver/imputed"), "--drug-map", "m.json"),
         "clean"),
        (("update-codes", "--use-suggested", "--target-map", "t.json", "--lake", str(tmp_path)), "update-codes"),
    ):  # fmt: skip
        proc = pgx(*args)
        assert proc.returncode == 64, (args, proc.stderr)
        assert proc.stderr.startswith(f"usage: pgx {command}"), (args, proc.stderr)


def test_seed_compatible_shortcuts_map_flags_onto_one_stage_specs() -> None:
    import yaml

    imp = pgx(
        "impute",
        "--pharmacy-input",
        "s3://b/bronze/pharmacy/*.parquet",
        "--output-root",
        "s3://b/silver/imputed",
        "--lookahead-years",
        "3",
        "--limit",
        "3",
        "--tmp-dir",
        "/scratch",
        "--no-demographics-lookup",
        "--log-level",
        "info",
        "--print-spec",
        check=True,
    )
    doc = yaml.safe_load(imp.stdout)
    assert doc["spec"]["lake"] == "s3://b" and doc["spec"]["limit"] == 3
    assert doc["spec"]["stages"] == [
        {"use": "impute", "with": {"pharmacyInput": "s3://b/bronze/pharmacy/*.parquet", "lookaheadYears": 3}}
    ]
    assert [n.split()[1] for n in imp.stderr.strip().splitlines()] == ["--tmp-dir", "--no-demographics-lookup"]
    cln = pgx(
        "clean",
        "--job",
        "medical",
        "--raw-medical",
        "s3://b/silver/medical/**/*.parquet",
        "--output-root",
        "s3://b/gold/medical/",
        "--run-mode",
        "subprocess",
        "--print-spec",
        check=True,
    )
    assert yaml.safe_load(cln.stdout)["spec"]["stages"][0]["use"] == "clean-medical"
    assert cln.stderr.strip().splitlines() == [
        "note: --run-mode is accepted and ignored: pgx runs the clean stage itself, on its executor (local or Ray)",
        "note: s3://b/silver/medical/**/*.parquet is an older silver layout: pgx reads the canonical "
        "s3://b/silver/imputed/medical/",
    ]
    tgt = pgx(
        "target-frequency",
        "--lake",
        "s3://b",
        "--codes-of-interest",
        "F1120, R69",
        "--workers",
        "4",
        "--min-year",
        "2019",
        "--max-year",
        "2019",
        "--log-cpu",
        "--print-spec",
        check=True,
    )
    doc = yaml.safe_load(tgt.stdout)
    assert doc["spec"]["stages"] == [{"use": "target-frequency", "with": {"codesOfInterest": ["F1120", "R69"]}}]
    assert doc["spec"]["partitions"] == {"years": [2019]} and doc["spec"]["executor"] == {"maxParallel": 4}
    assert tgt.stderr.startswith("note: --log-cpu is accepted and ignored")
    upd = pgx(
        "update-codes",
        "--lake",
        "s3://b",
        "--resume",
        "--years",
        "2019",
        "--workers-medical",
        "4",
        "--chunk-rows",
        "250000",
        "--no-merge",
        "--chunked",
        "--threads",
        "8",
        "--no-apply",
        "--cpt-map",
        "s3://b/maps/cpt.json",
        "--print-spec",
        check=True,
    )
    doc = yaml.safe_load(upd.stdout)
    assert doc["spec"]["executor"]["maxParallel"] == 4
    [stage] = doc["spec"]["stages"]
    assert stage["use"] == "update-codes" and stage["with"]["years"] == [2019] and stage["with"]["chunkRows"] == 250000
    assert stage["with"]["dryRun"] is True and stage["with"]["procedureMap"] == "s3://b/maps/cpt.json"
    notes = upd.stderr.strip().splitlines()
    assert len(notes) == 3 and all(n.startswith("note: --") and "ignored" in n for n in notes)


def test_every_flag_of_the_older_scripts_is_accepted() -> None:
    """The older scripts' whole command lines parse (values invented, flags theirs)."""
    from pgx_core.cli import build_parser
    from pgx_core.cli.shortcuts import notes

    parser = build_parser()
    older = {
        "impute": "--pharmacy-input p --medical-input m --output-root s3://b/silver/imputed --lookahead-years 5 "
        "--tmp-dir /t --no-demographics-lookup --create-raw-silver --log-level INFO --aggregate-root s3://b/x "
        "--threads 16 --mem-gb 1024",
        "clean": "--job pharmacy --raw-pharmacy r --raw-medical r --pharmacy-input p --medical-input m "
        "--output-root o --tmp-dir t --min-year 2016 --max-year 2020 --min-rows 1 --limit 1 --pairs 65-74,2019 "
        "--pairs-file f --workers 6 --retries 1 --lookahead-years 5 --dry-run --run-mode subprocess "
        "--pharmacy-module a --medical-module b --pharmacy-script c --medical-script d --demographics-lookup l "
        "--python-bin p --log-level INFO",
        "target-frequency": "--codes-of-interest A,B --workers 4 --min-year 2016 --max-year 2020 --log-cpu --log-s3",
        "update-codes": "--icd-map i --cpt-map c --icd-target-map t --drug-map d --years 2019 "
        "--age-bands 65-74 --no-apply --threads 1 --fail-on-missing-mapping --workers 4 --workers-medical 4 "
        "--workers-pharmacy 8 --log-cpu --log-s3 --resume --chunked --show-progress --progress-deep --no-merge "
        "--checkpoint-suffix .ok --chunk-rows 0 --staging-suffix .s/ --duckdb-mem-limit 8GB --target-file-size-mb 512",
    }
    for command, flags in older.items():
        args = parser.parse_args([command, *flags.split()])
        assert args.command == command
        notes(args.command_def.shortcut, args)
        if command != "clean":  # its invented --pairs-file does not exist (test_clean_shortcut covers it)
            assert args.command_def.shortcut.build_spec(args)["spec"]["stages"][0]["use"].startswith(command)
