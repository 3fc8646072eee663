"""The synthetic APCD generator (``pgx sample``): shape, determinism, defects, manifest."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections import defaultdict
from pathlib import Path

import pytest
from pgx_apcd import layout
from pgx_apcd.sample import CP1252_UNDEFINED, SampleManifest, generate

APPENDIX_B_RAW = {"SCHEMA_MISMATCH", "EMPTY_FILE", "EMPTY_EXTRACT", "TOO_FEW_FIELDS", "TOO_MANY_FIELDS",
                  "INVALID_ENCODING", "CONTROL_CHARACTER", "DUPLICATE_HEADER"}
NAME = re.compile(r"^(pharmacy/Genomic_Screening_All_RX_Claims|medical/Genomic_Screening_All_Medical_Claims)"
                  r"_Q[1-4](20\d\d)\.txt$")


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SampleManifest]:
    out = tmp_path_factory.mktemp("clean")
    return out, generate(out, rows=5000, seed=7)


@pytest.fixture(scope="module")
def dirty(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SampleManifest]:
    out = tmp_path_factory.mktemp("dirty")
    return out, generate(out, rows=5000, seed=7, defects=True)


def records(out: Path, manifest: SampleManifest, data_type: str) -> list[dict[str, str]]:
    cols = layout.columns(data_type)
    rows = []
    for f in manifest.files:
        if f.data_type == data_type:
            for line in (out / f.path).read_bytes().decode("cp1252").splitlines()[1:]:
                rows.append(dict(zip(cols, line.split("|"), strict=True)))
    return rows


def test_deterministic_per_seed(tmp_path: Path, clean: tuple[Path, SampleManifest]) -> None:
    out, manifest = clean
    again = generate(tmp_path / "a", rows=5000, seed=7)
    assert again == manifest
    for f in manifest.files:
        assert (tmp_path / "a" / f.path).read_bytes() == (out / f.path).read_bytes()
    other = generate(tmp_path / "b", rows=5000, seed=8)
    assert (tmp_path / "b" / other.files[0].path).read_bytes() != (out / manifest.files[0].path).read_bytes()


def test_files_names_headers_and_field_counts(clean: tuple[Path, SampleManifest]) -> None:
    out, manifest = clean
    assert len(manifest.files) == 8
    assert sum(f.records for f in manifest.files) == 5000
    assert sum(f.records for f in manifest.files if f.data_type == "pharmacy") == 2000
    for f in manifest.files:
        assert NAME.match(f.path), f.path
        assert (f.status, f.header_ok, f.row_defects, f.impute_defects, f.quirks) == (None, True, [], [], [])
        data = (out / f.path).read_bytes()
        lines = data.split(b"\n")
        assert lines[0] == layout.header_line(f.data_type).encode()
        assert lines[-1] == b"" and len(lines) - 2 == f.data_lines == f.records
        n = len(layout.columns(f.data_type))
        assert {line.count(b"|") + 1 for line in lines[1:-1]} == {n}
        assert b"\r" not in data and not data.startswith(b"\xef\xbb\xbf")
    assert sorted({NAME.match(f.path).group(2) for f in manifest.files}) != ["2016"]  # type: ignore[union-attr]


def test_cp1252_round_trip_with_non_ascii_text(clean: tuple[Path, SampleManifest]) -> None:
    out, manifest = clean
    text = "".join((out / f.path).read_bytes().decode("cp1252") for f in manifest.files)
    assert all(ch in text for ch in "é®\u2019É")
    for f in manifest.files:
        data = (out / f.path).read_bytes()
        assert data.decode("cp1252").encode("cp1252") == data
        assert not any(bytes([b]) in data for b in CP1252_UNDEFINED)


def test_values_shaped_like_the_feed(clean: tuple[Path, SampleManifest]) -> None:
    out, manifest = clean
    rx, med = records(out, manifest, "pharmacy"), records(out, manifest, "medical")
    keys = [r["mi_person_key"] for r in rx + med]
    assert all(re.fullmatch(r"\d{10}", k) for k in keys)
    assert sum(k.startswith("0") for k in keys) > len(keys) / 5
    years = {int(r["incurred_date"][:4]) for r in rx + med}
    assert {2015, 2016, 2020, 2021} <= years <= set(range(2015, 2022))
    for r in rx + med:
        dt.datetime.strptime(r["incurred_date"], "%Y%m%d")
    assert any(z.startswith("0") and len(z) == 5 for z in (r["member_zip_code_dos"] for r in med))
    assert all(re.fullmatch(r"\d{5} - [A-Z ]+", c) for c in (r["member_county_dos"] for r in med)
               if c not in ("", "Unknown", "N/A", "NULL", "UNK"))
    assert all(re.fullmatch(r"\d - .+", p) for p in (r["payer_type"] for r in med)
               if p not in ("", "Unknown", "N/A", "NULL", "UNK"))
    money = [r["total_paid"] for r in med]
    assert any(m.startswith(".") for m in money) and any(m.startswith("-") for m in money)
    assert any(re.fullmatch(r"\d+\.\d\d", m) for m in money)
    codes = [r[c] for r in med for c in layout.ICD_DIAGNOSIS_COLUMNS]
    assert any(re.fullmatch(r"[A-Z]\d{2}[0-9A-Z]{1,4}", c) for c in codes)  # undotted
    assert any(re.fullmatch(r"[A-Z]\d{2}\.[0-9A-Z]+", c) for c in codes)  # dotted
    assert any(c.startswith("Y") for c in codes) and any(" - " in c for c in codes) and "Unknown" in codes
    assert "N/A" in {r["cpt_mod_1_code"] for r in med} and "25" in {r["cpt_mod_1_code"] for r in med}
    ndc = {r["drug_code"] for r in rx}
    for pattern in (r"\d{11}", r"\d{5}-\d{4}-\d{2}", r"\d{4}-\d{4}-\d{2}", r"\d{5}-\d{3}-\d{2}", r"\d{5}-\d{4}-\d"):
        assert any(re.fullmatch(pattern, x) for x in ndc), pattern
    assert any(not re.fullmatch(r"[\d-]+", x) for x in ndc)  # garbage
    assert {"HYDRALAZINE HYDROCHLORIDE", "ACETAMINOPHEN/CODEINE"} <= {r["drug_name"] for r in rx}


def test_missingness_and_sentinels(clean: tuple[Path, SampleManifest]) -> None:
    out, manifest = clean
    rows = records(out, manifest, "pharmacy") + records(out, manifest, "medical")
    assert {"", "U", "Unknown", "N/A", "NULL"} <= {r["member_gender"] for r in rows}
    assert {"999", "-1", "abc", ""} <= {r["member_age_dos"] for r in rows}
    for col in ("member_race", "member_zip_code_dos", "member_county_dos", "payer_type"):
        missing = sum(r[col] in ("", "Unknown", "N/A", "NULL", "UNK") for r in rows)
        assert 0.02 * len(rows) < missing < 0.5 * len(rows), col


def test_members_are_stable_and_span_types_and_years(clean: tuple[Path, SampleManifest]) -> None:
    out, manifest = clean
    seen: dict[str, dict[str, set[object]]] = defaultdict(lambda: defaultdict(set))
    for data_type in layout.DATA_TYPES:
        for r in records(out, manifest, data_type):
            m = seen[r["mi_person_key"]]
            year = int(r["incurred_date"][:4])
            m["types"].add(data_type)
            m["years"].add(year)
            if r["member_gender"] in ("M", "F"):
                m["gender"].add(r["member_gender"])
            if r["member_age_dos"].isdigit() and r["member_age_dos"] != "999":
                m["birth"].add(year - int(r["member_age_dos"]))
            if r["member_zip_code_dos"].isdigit():
                m["zip"].add(r["member_zip_code_dos"])
    assert len(seen) == 250
    for m in seen.values():
        assert len(m["gender"]) <= 1 and len(m["birth"]) <= 1 and len(m["zip"]) <= 1
    assert sum(m["types"] == set(layout.DATA_TYPES) for m in seen.values()) > 0.9 * len(seen)
    assert sum(len(m["years"]) >= 3 for m in seen.values()) > 0.9 * len(seen)


def test_defects_every_raw_reason_code_and_feature(dirty: tuple[Path, SampleManifest]) -> None:
    _, manifest = dirty
    for data_type in layout.DATA_TYPES:
        files = [f for f in manifest.files if f.data_type == data_type]
        codes = {f.status for f in files} | {why for f in files for _, why in f.row_defects}
        assert codes >= APPENDIX_B_RAW
        assert {why for f in files for _, why in f.impute_defects} == {"MISSING_MEMBER_KEY", "INVALID_INCURRED_DATE"}
        assert {why for f in files for _, why in f.quirks} == {"STRAY_QUOTE", "DUPLICATE_LINE"}
        assert any(f.line_ending == "CRLF" for f in files) and any(f.bom for f in files)
        assert any(not f.final_newline for f in files)
        assert any(f.blank_final_line and f.status is None for f in files)
        for f in files:
            if f.status is None:
                assert len(f.row_defects) / f.data_lines <= 0.01


def test_defects_are_where_the_manifest_says(dirty: tuple[Path, SampleManifest]) -> None:
    out, manifest = dirty
    for f in manifest.files:
        data = (out / f.path).read_bytes()
        if f.status == "EMPTY_FILE":
            assert data == b""
            continue
        header = layout.header_line(f.data_type).encode()
        n = len(layout.columns(f.data_type))
        assert data.startswith(b"\xef\xbb\xbf") == f.bom
        assert data.endswith(b"\n") == f.final_newline
        assert data.endswith((b"\n\n", b"\r\n\r\n")) == f.blank_final_line
        eol = b"\r\n" if f.line_ending == "CRLF" else b"\n"
        body = data.removeprefix(b"\xef\xbb\xbf").removesuffix(eol * f.blank_final_line).split(eol)
        lines = dict(enumerate(body[:len(body) - f.final_newline], start=1))
        assert (lines[1] == header) == f.header_ok
        assert len(lines) - 1 == f.data_lines
        rejected = {no for no, _ in f.row_defects}
        for no, why in f.row_defects:
            line = lines[no]
            if why == "DUPLICATE_HEADER":
                assert line == header
            elif why == "INVALID_ENCODING":
                assert any(bytes([b]) in line for b in CP1252_UNDEFINED)
            elif why == "CONTROL_CHARACTER":
                assert any(b < 32 and b != 9 for b in line)
            else:
                assert (line.count(b"|") + 1 < n) == (why == "TOO_FEW_FIELDS")
                assert line.count(b"|") + 1 != n
        for no, line in lines.items():
            if no > 1 and no not in rejected:
                line.decode("cp1252")
                assert line.count(b"|") + 1 == n and line != header
        for no, why in f.impute_defects:
            fields = lines[no].decode("cp1252").split("|")
            if why == "MISSING_MEMBER_KEY":
                assert fields[2].strip() == ""
            else:
                assert fields[0] in ("20190230", "2019-01-01", "", "abc")
        for no, why in f.quirks:
            if why == "STRAY_QUOTE":
                assert b'"' in lines[no]
            else:
                assert lines[no] == lines[no - 1]


def test_manifest_json_round_trip_and_no_phi(dirty: tuple[Path, SampleManifest]) -> None:
    out, manifest = dirty
    assert SampleManifest.read(out / "_manifest.json") == manifest
    text = (out / "_manifest.json").read_text()
    assert json.loads(manifest.to_json()) == json.loads(text)
    keys = {r["mi_person_key"] for r in records(out, SampleManifest(0, 0, False, [
        f for f in manifest.files if f.status is None and not f.row_defects and f.line_ending == "LF"]), "medical")}
    assert not any(k in text for k in keys if k)


def test_arguments_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="files_per_type"):
        generate(tmp_path, rows=100, files_per_type=40)
    with pytest.raises(ValueError, match="defects=True needs"):
        generate(tmp_path, rows=20, defects=True)
    m = generate(tmp_path / "one", rows=600, files_per_type=1, defects=True)
    assert len([f for f in m.files if f.status is None]) == 2
