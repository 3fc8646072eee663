from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgx_core.lake import paths


def test_zone_root_default_lake_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGX_LAKE", raising=False)
    assert paths.zone_root("gold") == "s3://pgxdatalake/gold/"
    monkeypatch.setenv("PGX_LAKE", "file:///data/lake")
    assert paths.zone_root("bronze") == "file:///data/lake/bronze/"
    assert paths.zone_root("silver", lake="s3://b/p/") == "s3://b/p/silver/"


def test_zone_root_unknown_zone_names_allowed_zones() -> None:
    with pytest.raises(ValueError, match="unknown zone 'platinum': expected one of bronze, silver, gold"):
        paths.zone_root("platinum")


def test_build_zone_path_spec_example(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGX_LAKE", raising=False)
    assert (
        paths.build_zone_path("silver", "medical", "65-74", 2019)
        == "s3://pgxdatalake/silver/imputed/medical/age_band=65-74/event_year=2019/"
    )
    assert paths.build_zone_path("gold", "pharmacy", lake="file:///l") == "file:///l/gold/pharmacy/"
    assert (
        paths.build_zone_path("gold", "pharmacy", "0-12", 2016, "pharmacy_data.parquet", lake="s3://b")
        == "s3://b/gold/pharmacy/age_band=0-12/event_year=2016/pharmacy_data.parquet"
    )
    assert paths.build_zone_path("bronze", lake="s3://b") == "s3://b/bronze/"


@pytest.mark.parametrize(
    "raw",
    [
        "s3://bkt/silver/medical/",
        "s3://bkt/silver/medical/*.parquet",
        "s3://bkt/silver/medical/**/*.parquet",
        "s3://bkt/silver/imputed/medical_partitioned/",
        "s3://bkt/silver/imputed/medical_partitioned/**/*.parquet",
        "s3://bkt/silver/imputed/medical/",
        "s3://bkt/silver/medical/age_band=65-74/event_year=2019/*.parquet",
    ],
)
def test_convert_raw_to_imputed_path_keeps_bucket(raw: str) -> None:
    assert paths.convert_raw_to_imputed_path(raw, "medical") == "s3://bkt/silver/imputed/medical/"
    assert (
        paths.convert_raw_to_imputed_path(raw, "medical", "65-74", 2019)
        == "s3://bkt/silver/imputed/medical/age_band=65-74/event_year=2019/"
    )


def test_convert_raw_to_imputed_path_rejects_non_silver() -> None:
    with pytest.raises(ValueError, match="not a silver path"):
        paths.convert_raw_to_imputed_path("s3://bkt/gold/medical/", "medical")


def test_canonical_locations() -> None:
    lake = "s3://pgxdatalake"
    assert paths.bronze_object(lake, "pharmacy", "Q1") == "s3://pgxdatalake/bronze/pharmacy/Q1.parquet"
    assert (
        paths.bronze_rejects_object(lake, "medical", "Q1")
        == "s3://pgxdatalake/bronze/_rejects/medical/Q1.rejects.parquet"
    )
    assert (
        paths.silver_object(lake, "medical", "65-74", 2019)
        == "s3://pgxdatalake/silver/imputed/medical/age_band=65-74/event_year=2019/medical_data.parquet"
    )
    assert (
        paths.silver_quarantine_object(lake, "pharmacy")
        == "s3://pgxdatalake/silver/_quarantine/pharmacy/pharmacy_quarantine.parquet"
    )
    assert (
        paths.demographics_object(lake, 2018)
        == "s3://pgxdatalake/silver/imputed/demographics/event_year=2018/demographics_data.parquet"
    )
    assert (
        paths.gold_object(lake, "medical", "unknown", 2020)
        == "s3://pgxdatalake/gold/medical/age_band=unknown/event_year=2020/medical_data.parquet"
    )
    assert (
        paths.staging_object(lake, "R1", "s3://pgxdatalake/gold/x.parquet")
        == "s3://pgxdatalake/_staging/R1/gold/x.parquet"
    )
    assert (
        paths.summary_object(lake, "global_imputation", "R1")
        == "s3://pgxdatalake/pgx_pipeline/global_imputation/run_id=R1/summary.json"
    )
    assert (
        paths.backup_prefix("s3://pgxdatalake-backups/", "20261126T101500Z")
        == "s3://pgxdatalake-backups/backup_20261126T101500Z/"
    )


def test_state_locations_and_entity_ids() -> None:
    assert paths.lake_key("s3://pgxdatalake") == "pgxdatalake"
    assert paths.lake_key("s3://bkt/some/prefix") == "bkt_some_prefix"
    assert paths.lake_key("file:///tmp/lake") == "local"
    ent = paths.safe_id("pgxdatalake", "medical__age_band=65-74__event_year=2019")
    assert ent == "pgxdatalake__medical__age_band=65-74__event_year=2019"
    assert (
        paths.state_object("s3://pgx-repository", "update_codes", ent)
        == f"s3://pgx-repository/pgx-pipeline-status/update_codes/{ent}/state.json"
    )
    assert paths.tracker_object("s3://pgx-repository", "clean_medical") == (
        "s3://pgx-repository/pgx-pipeline-status/clean_medical/global_tracker.json"
    )
    assert paths.default_state_root("s3://pgxdatalake") == "s3://pgx-repository"
    assert paths.default_state_root("file:///tmp/lake") == "file:///tmp/lake/_state"


def test_raw_file_helpers() -> None:
    raw = ["s3://b/raw/a.TXT", "s3://b/raw/b.csv", "s3://b/raw/c.json"]
    assert [u for u in raw if paths.is_raw_text(u)] == ["s3://b/raw/a.TXT", "s3://b/raw/b.csv"]
    assert paths.stem("s3://b/raw/pharmacy/Genomic_Q12016.txt") == "Genomic_Q12016"


def test_split_glob() -> None:
    assert paths.split_glob("s3://b/raw/pharmacy") == ("s3://b/raw/pharmacy/", None)
    assert paths.split_glob("s3://b/raw/pharmacy/") == ("s3://b/raw/pharmacy/", None)
    assert paths.split_glob("s3://b/raw/*/Q1*.txt") == ("s3://b/raw/", "s3://b/raw/*/Q1*.txt")
    assert paths.split_glob("file:///l/bronze/medical/*.parquet") == (
        "file:///l/bronze/medical/",
        "file:///l/bronze/medical/*.parquet",
    )


HOSTILE = ["x.txt", "x.csv", "y.txt", "y.TXT", "a b.txt", "a_b.txt", "Q1.txt", "q1.txt", "sub/x.txt", "z.repro.txt"]


def test_source_stems_are_injective_and_keep_plain_unique_names() -> None:
    lake = "s3://b/lake"
    uris = [f"{lake}/raw/pharmacy/{n}" for n in [*HOSTILE, "Genomic_Screening_All_RX_Claims_Q12016.txt", "w.csv"]]
    stems = paths.source_stems(uris, lake)
    assert len(set(stems.values())) == len(uris)
    assert len({s.casefold() for s in stems.values()}) == len(uris)  # even on a case-insensitive disk
    by_name = {u.removeprefix(f"{lake}/raw/pharmacy/"): s for u, s in stems.items()}
    # Plain, safe, unique stems are kept; in a group sharing a stem, <stem>.txt keeps it.
    assert by_name["Genomic_Screening_All_RX_Claims_Q12016.txt"] == "Genomic_Screening_All_RX_Claims_Q12016"
    assert by_name["w.csv"] == "w"
    assert by_name["y.txt"] == "y" and by_name["a_b.txt"] == "a_b"
    for name in ["x.txt", "x.csv", "sub/x.txt", "y.TXT", "a b.txt", "Q1.txt", "q1.txt", "z.repro.txt"]:
        assert "~" in by_name[name], name  # digested: never a plain stem
    assert by_name["a b.txt"].startswith("a_b~") and by_name["z.repro.txt"].startswith("z.repro~")
    # Stable: the same names whatever the order or the lake's location (keys relative to the lake).
    moved = "file:///data/elsewhere"
    again = paths.source_stems([u.replace(lake, moved) for u in reversed(uris)], moved)
    assert {u.replace(lake, moved): s for u, s in stems.items()} == again


@given(
    st.lists(st.sampled_from(["x", "X", "a b", "a_b", "a-b", ".h", "q.repro", "é", "n" * 130]), max_size=6),
    st.lists(st.sampled_from(["txt", "TXT", "csv", "Csv"]), min_size=6, max_size=6),
    st.lists(st.sampled_from(["", "sub/"]), min_size=6, max_size=6),
)
def test_source_stems_injective_for_any_names(names: list[str], exts: list[str], dirs: list[str]) -> None:
    uris = sorted({f"file:///l/raw/medical/{d}{n}.{e}" for n, e, d in zip(names, exts, dirs, strict=False)})
    stems = paths.source_stems(uris, "file:///l")
    assert len({s.casefold() for s in stems.values()}) == len(uris)
    assert all(re.fullmatch(r"[A-Za-z0-9._~-]+", s) and len(s) <= 120 for s in stems.values())
