"""Ingest parsing rules and reject reasons, checked against a slow reference."""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pgx_apcd import layout
from pgx_apcd.sample import SampleManifest, generate
from pgx_ingest import parse
from pgx_ingest.params import IngestParams
from pgx_ingest.parse import REJECTS_SCHEMA, IngestResult, bronze_schema, ingest_stream
from pydantic import ValidationError

from pgx_core.errors import ConservationError

RX = "pharmacy"
HEADER = layout.header_line(RX).encode()
N = len(layout.columns(RX))
BOM = b"\xef\xbb\xbf"


def row(i: int = 0, **over: bytes) -> bytes:
    """A valid pharmacy line; ``over`` replaces fields by snake_case name."""
    vals = {c: f"{c[:3]}{i}".encode() for c in layout.columns(RX)}
    vals["mi_person_key"] = f"{i:010d}".encode()
    vals.update(over)
    return b"|".join(vals[c] for c in layout.columns(RX))


def run(data: bytes, block_bytes: int = 64 << 20, **kw: object) -> tuple[IngestResult, list[dict[str, object]],
                                                                          list[dict[str, object]]]:
    rows: list[pa.RecordBatch] = []
    rejects: list[pa.RecordBatch] = []
    res = ingest_stream(io.BytesIO(data), data_type=kw.pop("data_type", RX), source_stem="f",  # type: ignore[arg-type]
                        block_bytes=block_bytes, on_rows=rows.append, on_rejects=rejects.append, **kw)  # type: ignore[arg-type]
    for b in rows:
        assert b.schema == bronze_schema(RX)
    for b in rejects:
        assert b.schema == REJECTS_SCHEMA
    assert res.data_lines == res.rows + res.rejected
    assert res.rows == sum(b.num_rows for b in rows)
    return res, [r for b in rows for r in b.to_pylist()], [r for b in rejects for r in b.to_pylist()]


def reasons(rejects: list[dict[str, object]]) -> list[tuple[object, object]]:
    return [(r["_source_line"], r["reason"]) for r in rejects]


# ---- a slow reference parser, written independently of pgx_ingest.parse -------------------------

def reference(data: bytes, encoding: str = "cp1252") -> tuple[str | None, list[tuple[int, list[str]]],
                                                             list[tuple[int, str, bytes]]]:
    if not data:
        return "EMPTY_FILE", [], []
    pieces = data.split(b"\n")
    lines = []
    for i, piece in enumerate(pieces):
        terminated = i < len(pieces) - 1
        if not terminated and piece == b"":
            break
        lines.append((piece[:-1] if terminated and piece.endswith(b"\r") else piece, terminated))
    head = lines[0][0][3:] if lines[0][0].startswith(BOM) else lines[0][0]
    if head.strip() != HEADER:
        return "SCHEMA_MISMATCH", [], []
    body = lines[1:]
    if body and body[-1] == (b"", True):
        body.pop()  # a blank final line is not a data line
    good, bad = [], []
    for k, (content, _) in enumerate(body):
        no = k + 2
        t = content.strip()
        if t == HEADER or (t.startswith(BOM) and t[3:].strip() == HEADER):
            bad.append((no, "DUPLICATE_HEADER", content))
        elif any(b < 32 and b != 9 for b in content):
            bad.append((no, "CONTROL_CHARACTER", content))
        else:
            try:
                text = content.decode(encoding)
            except UnicodeDecodeError:
                bad.append((no, "INVALID_ENCODING", content))
                continue
            fields = text.split("|")
            if len(fields) != N:
                bad.append((no, "TOO_FEW_FIELDS" if len(fields) < N else "TOO_MANY_FIELDS", content))
            else:
                good.append((no, fields))
    return ("EMPTY_EXTRACT" if not body else None), good, bad


def check_against_reference(data: bytes, block_bytes: int = 64 << 20, encoding: str = "cp1252") -> IngestResult:
    res, rows, rejects = run(data, block_bytes, encoding=encoding)
    status, good, bad = reference(data, encoding)
    assert res.status == status
    if status == "SCHEMA_MISMATCH":
        assert rows == [] and rejects == []
        return res
    assert [(r["_source_line"], [r[c] for c in layout.columns(RX)]) for r in rows] == good
    assert [(r["_source_line"], r["reason"], r["raw_line"]) for r in rejects] == bad
    assert all(r["_source_file"] == "f" for r in rows + rejects)
    assert res.data_lines == len(good) + len(bad)
    return res


# ---- line endings -------------------------------------------------------------------------------

def test_lf_file_loads_every_line_in_order_with_physical_line_numbers() -> None:
    res, rows, rejects = run(HEADER + b"\n" + b"\n".join(row(i) for i in range(5)) + b"\n")
    assert (res.status, res.data_lines, res.rows, res.rejected) == (None, 5, 5, 0)
    assert [r["_source_line"] for r in rows] == [2, 3, 4, 5, 6]
    assert rows[3]["mi_person_key"] == "0000000003"
    assert rejects == []


def test_crlf_removes_the_cr_and_keeps_values_exact() -> None:
    res, rows, _ = run(HEADER + b"\r\n" + row(1) + b"\r\n" + row(2, total_rx_days_supply=b" 30 ") + b"\r\n")
    assert res.rows == 2
    assert rows[0]["total_rx_days_supply"] == "tot1"
    assert rows[1]["total_rx_days_supply"] == " 30 "  # no trimming


def test_missing_final_newline_last_line_is_data() -> None:
    res, rows, _ = run(HEADER + b"\n" + row(1) + b"\n" + row(2))
    assert (res.data_lines, res.rows) == (2, 2)
    assert rows[-1]["_source_line"] == 3


@pytest.mark.parametrize("eol", [b"\n", b"\r\n"])
def test_blank_final_line_is_not_a_data_line(eol: bytes) -> None:
    res, _rows, _rejects = run(HEADER + eol + row(1) + eol + eol)
    assert (res.data_lines, res.rows, res.rejected) == (1, 1, 0)


def test_blank_middle_line_is_a_data_line_with_too_few_fields() -> None:
    res, _, rejects = run(HEADER + b"\n" + row(1) + b"\n\n" + row(2) + b"\n")
    assert (res.data_lines, res.rows) == (3, 2)
    assert reasons(rejects) == [(3, "TOO_FEW_FIELDS")]
    assert rejects[0]["raw_line"] == b""


def test_only_one_blank_final_line_is_dropped() -> None:
    res, _, rejects = run(HEADER + b"\n" + row(1) + b"\n\n\n")
    assert (res.data_lines, res.rows) == (2, 1)
    assert reasons(rejects) == [(3, "TOO_FEW_FIELDS")]


def test_utf8_bom_before_header_is_ignored() -> None:
    res, rows, _ = run(BOM + HEADER + b"\n" + row(1) + b"\n")
    assert (res.status, res.rows) == (None, 1)
    assert rows[0]["incurred_date"] == "inc1"


def test_header_is_compared_after_trimming() -> None:
    res, _, _ = run(b"  " + HEADER + b" \t\r\n" + row(1) + b"\n")
    assert (res.status, res.rows) == (None, 1)


# ---- reasons ------------------------------------------------------------------------------------

def test_each_reason_code_on_its_line() -> None:
    lines = [
        row(1),
        row(2)[: row(2).rfind(b"|")],  # TOO_FEW_FIELDS
        row(3) + b"|extra",  # TOO_MANY_FIELDS
        row(4, drug_name=b"CAF\x81"),  # INVALID_ENCODING
        row(5, drug_name=b"A\x00B"),  # CONTROL_CHARACTER (NUL)
        row(6, drug_name=b"A\x1bB"),  # CONTROL_CHARACTER (ESC)
        HEADER,  # DUPLICATE_HEADER
        row(8, drug_name=b"A\tB"),  # tab is allowed
        row(9, drug_name=b"A\rB"),  # a CR that does not end the line is a control character
    ]
    res, rows, rejects = run(HEADER + b"\n" + b"\n".join(lines) + b"\n")
    assert reasons(rejects) == [(3, "TOO_FEW_FIELDS"), (4, "TOO_MANY_FIELDS"), (5, "INVALID_ENCODING"),
                                (6, "CONTROL_CHARACTER"), (7, "CONTROL_CHARACTER"), (8, "DUPLICATE_HEADER"),
                                (10, "CONTROL_CHARACTER")]
    assert [r["_source_line"] for r in rows] == [2, 9]
    assert rows[1]["drug_name"] == "A\tB"
    assert res.reasons == {"TOO_FEW_FIELDS": 1, "TOO_MANY_FIELDS": 1, "INVALID_ENCODING": 1,
                           "CONTROL_CHARACTER": 3, "DUPLICATE_HEADER": 1}
    assert rejects[2]["raw_line"] == lines[3]


@pytest.mark.parametrize("byte", [0x81, 0x8D, 0x8F, 0x90, 0x9D])
def test_every_cp1252_undefined_byte_is_invalid_encoding(byte: int) -> None:
    _, _, rejects = run(HEADER + b"\n" + row(1, drug_name=bytes([byte])) + b"\n")
    assert reasons(rejects) == [(2, "INVALID_ENCODING")]


def test_precedence_duplicate_header_control_encoding_fields() -> None:
    lines = [
        HEADER + b"\x0b",  # trims to the header: DUPLICATE_HEADER even though VT is a control char
        BOM + HEADER,  # a repeated header of a concatenated file, BOM included
        row(1, incurred_date=b"\x00\x81")[:40],  # control + encoding + too few → CONTROL_CHARACTER
        row(2, drug_name=b"\x81") + b"|x",  # encoding + too many → INVALID_ENCODING
    ]
    _, _, rejects = run(HEADER + b"\n" + b"\n".join(lines) + b"\n")
    assert reasons(rejects) == [(2, "DUPLICATE_HEADER"), (3, "DUPLICATE_HEADER"), (4, "CONTROL_CHARACTER"),
                                (5, "INVALID_ENCODING")]
    assert parse.PRECEDENCE[0] == "DUPLICATE_HEADER"


def test_raw_line_is_whole_and_without_line_ending() -> None:
    long_bad = row(1, drug_name=b"X" * 5000) + b"|surplus"
    _, _, rejects = run(HEADER + b"\r\n" + long_bad + b"\r\n")
    assert rejects[0]["raw_line"] == long_bad


def test_stray_quote_is_an_ordinary_character() -> None:
    lines = [row(1, drug_name=b'"HYDRALAZINE'), row(2, drug_name=b'12" TAPE'), row(3, drug_name=b'"A|B"')]
    _res, rows, rejects = run(HEADER + b"\n" + b"\n".join(lines) + b"\n")
    assert [r["drug_name"] for r in rows] == ['"HYDRALAZINE', '12" TAPE']
    assert reasons(rejects) == [(4, "TOO_MANY_FIELDS")]


def test_leading_zeros_and_cp1252_text_are_kept() -> None:
    _, rows, _ = run(HEADER + b"\n" + row(1, mi_person_key=b"0001234567", drug_name=b"LIPITOR\xae CR\xc8ME \x92S")
                     + b"\n")
    assert rows[0]["mi_person_key"] == "0001234567"
    assert rows[0]["drug_name"] == "LIPITOR® CRÈME \u2019S"


def test_many_non_ascii_values_take_the_whole_column_path() -> None:
    lines = [row(i, drug_name=f"CAFÉ {i}".encode("cp1252")) for i in range(50)]
    _, rows, _ = run(HEADER + b"\n" + b"\n".join(lines) + b"\n")
    assert [r["drug_name"] for r in rows] == [f"CAFÉ {i}" for i in range(50)]


def test_utf8_declared_encoding_rejects_invalid_utf8() -> None:
    data = HEADER + b"\n" + row(1, drug_name="CAFÉ".encode()) + b"\n" + row(2, drug_name=b"\xe9") + b"\n"
    _res, rows, rejects = run(data, encoding="utf-8")
    assert rows[0]["drug_name"] == "CAFÉ"
    assert reasons(rejects) == [(3, "INVALID_ENCODING")]


def test_unsupported_encoding_is_refused() -> None:
    with pytest.raises(ValueError, match="not supported"):
        run(HEADER + b"\n", encoding="utf-16")


# ---- file-level statuses ------------------------------------------------------------------------

def test_empty_file_and_header_only() -> None:
    assert run(b"")[0].status == "EMPTY_FILE"
    for data in (HEADER, HEADER + b"\n", HEADER + b"\r\n", HEADER + b"\n\n"):
        res, rows, rejects = run(data)
        assert (res.status, res.data_lines, rows, rejects) == ("EMPTY_EXTRACT", 0, [], [])


def test_schema_mismatch_names_layout_columns_only_and_emits_nothing() -> None:
    cols = list(layout.raw_columns(RX))
    cols[13] = "Member Sex"
    cols[1], cols[2] = cols[2], cols[1]
    res, rows, rejects = run("|".join(cols).encode() + b"\n" + row(1) + b"\n" + row(2) + b"\n")
    assert res.status == "SCHEMA_MISMATCH"
    assert (rows, rejects) == ([], [])
    assert (res.data_lines, res.rows, res.rejected) == (2, 0, 2)
    diff = res.schema_diff
    assert diff is not None
    assert diff.missing == ("Member Gender",)
    assert diff.misplaced == ("Claim ID", "MI Person Key")
    assert diff.unexpected_positions == (14,)
    assert "Member Sex" not in diff.describe()


def test_headerless_file_never_leaks_its_first_line() -> None:
    first = row(1, mi_person_key=b"0987654321")
    res, _, _ = run(first + b"\n" + row(2) + b"\n")
    assert res.status == "SCHEMA_MISMATCH"
    assert res.schema_diff is not None
    assert "0987654321" not in repr(res.schema_diff) + res.schema_diff.describe()
    assert res.data_lines == 1


# ---- streaming ----------------------------------------------------------------------------------

SMALL = (BOM + HEADER + b"\r\n" + row(1) + b"\n" + row(2, drug_name=b"\x81") + b"\r\n\n" + HEADER + b"\n"
         + row(5, drug_name=b"CAF\xc9") + b"\n" + row(6)[:30] + b"\r\n" + row(7) + b"|x\n" + row(8, drug_name=b"\x00")
         + b"\n" + row(9) + b"\r\n\r\n")


class CutReader(io.BytesIO):
    """A stream whose reads stop at ``cut``: puts a block boundary exactly there."""

    def __init__(self, data: bytes, cut: int) -> None:
        super().__init__(data)
        self.cut = cut

    def read(self, n: int | None = -1) -> bytes:
        pos = self.tell()
        if pos < self.cut and n is not None and n > 0:
            n = min(n, self.cut - pos)
        return super().read(n)


def test_block_boundaries_at_every_position() -> None:
    expected = check_against_reference(SMALL)
    assert expected.rejected == 6 and expected.rows == 3
    want = run(SMALL)
    # Every position past the header (the header's own read loop only needs a few).
    for cut in [*range(0, len(HEADER) - 16, 61), *range(len(HEADER) - 16, len(SMALL) + 1)]:
        rows: list[pa.RecordBatch] = []
        rejects: list[pa.RecordBatch] = []
        res = ingest_stream(CutReader(SMALL, cut), data_type=RX, source_stem="f", on_rows=rows.append,
                            on_rejects=rejects.append)
        assert (res, [r for b in rows for r in b.to_pylist()], [r for b in rejects for r in b.to_pylist()]) == want
    for block in range(1, 25):  # tiny blocks: many boundaries per line
        check_against_reference(SMALL, block_bytes=block)


def test_line_longer_than_a_block_and_than_arrow_block() -> None:
    huge = row(1, drug_name=b"Z" * (3 << 20))
    data = HEADER + b"\n" + row(0) + b"\n" + huge + b"\n" + row(2)
    res = check_against_reference(data, block_bytes=1 << 16)
    assert res.rows == 3


def test_conservation_failure_is_raised_without_data(monkeypatch: pytest.MonkeyPatch) -> None:
    real = parse._Parser.parse

    def lossy(self: parse._Parser, buf: bytes, n: int) -> pa.Table | None:
        table = real(self, buf, n)
        return table.slice(1) if table is not None and table.num_rows else table

    monkeypatch.setattr(parse._Parser, "parse", lossy)
    with pytest.raises(ConservationError) as err:
        run(HEADER + b"\n" + row(1, mi_person_key=b"0555555555") + b"\n")
    assert "0555555555" not in str(err.value)


def test_quoting_mode_allows_delimiters_inside_quotes() -> None:
    data = HEADER + b"\n" + row(1, drug_name=b'"A|B"') + b"\n" + row(2, drug_name=b'"A|B') + b"\n"
    _res, rows, rejects = run(data, quoting=True)
    assert rows[0]["drug_name"] == "A|B"
    assert [r["_source_line"] for r in rows] == [2] and reasons(rejects) == [(3, "TOO_FEW_FIELDS")]


# ---- generated extracts -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def defective(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SampleManifest]:
    out = tmp_path_factory.mktemp("sample")
    return out, generate(out, rows=6000, seed=3, defects=True)


def test_every_injected_defect_found_on_its_line(defective: tuple[Path, SampleManifest]) -> None:
    out, manifest = defective
    for f in manifest.files:
        data = (out / f.path).read_bytes()
        res, rows, rejects = run(data, data_type=f.data_type) if f.data_type == RX else _run_any(data, f.data_type)
        assert res.status == f.status, f.path
        assert res.data_lines == f.data_lines == res.rows + res.rejected, f.path
        if f.status is None:
            assert sorted(reasons(rejects)) == sorted(f.row_defects), f.path
            assert res.rejected / res.data_lines <= 0.01
            lines = {r["_source_line"] for r in rows}
            assert {line for line, _ in f.impute_defects + f.quirks} <= lines


def _run_any(data: bytes, data_type: str) -> tuple[IngestResult, list[dict[str, object]], list[dict[str, object]]]:
    rows: list[pa.RecordBatch] = []
    rejects: list[pa.RecordBatch] = []
    res = ingest_stream(io.BytesIO(data), data_type=data_type, source_stem="f", block_bytes=1 << 20,
                        on_rows=rows.append, on_rejects=rejects.append)
    return res, [r for b in rows for r in b.to_pylist()], [r for b in rejects for r in b.to_pylist()]


def test_generated_values_match_reference_split(defective: tuple[Path, SampleManifest]) -> None:
    out, manifest = defective
    f = next(f for f in manifest.files if f.data_type == RX and f.status is None and f.line_ending == "CRLF")
    data = (out / f.path).read_bytes()
    check_against_reference(data, block_bytes=300_000)


# ---- property: random defects, random endings, random blocks -------------------------------------

FIELD = st.binary(max_size=4).map(lambda b: b.replace(b"\n", b"")) | st.sampled_from(
    [b"", b"0012", b'"', b"\x81", b"\xe9", b"\x00", b"\r", b"\t", b" ", b"|", b"\xef\xbb\xbf", b"N/A"])
LINE = st.one_of(
    st.lists(FIELD, min_size=N - 1, max_size=N + 1).map(b"|".join),
    st.just(HEADER), st.just(b""), st.just(b"\r"),
    st.lists(st.sampled_from([b"a", b"|"]), max_size=8).map(b"".join))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(LINE, max_size=12), endings=st.lists(st.sampled_from([b"\n", b"\r\n"]), min_size=13,
       max_size=13), bom=st.booleans(), final=st.sampled_from([b"", b"\n", b"\r\n", b"\n\n", b"\r"]),
       block=st.sampled_from([1, 5, 97, 1000, 1 << 20]))
def test_property_conservation_and_reference(lines: list[bytes], endings: list[bytes], bom: bool, final: bytes,
                                             block: int) -> None:
    body = b"".join(line + endings[i] for i, line in enumerate(lines))
    data = (BOM if bom else b"") + HEADER + endings[-1] + body
    data = (data[: -len(endings[len(lines) - 1])] if lines and not final else data) + final
    check_against_reference(data, block_bytes=block)


# ---- parameters accept exactly what the parser reads --------------------------------------------

ENCODINGS = ["cp1252", "latin-1", "utf-8", "ascii", "koi8-r", "utf_8_sig", "utf-16", "utf-32", "cp037", "shift_jis",
             "iso2022_jp", "utf-7", "rot13", "base64", "idna", "punycode", "undefined", "no-such-codec"]
DELIMITERS = ["|", ",", "\t", ";", '"', "\n", "\r", "\u00a6", "é"]


def parser_reads(**kw: str) -> bool:
    try:
        run(HEADER + b"\n" + row(1) + b"\n", **kw)
    except ValueError:
        return False
    return True


def params_accept(**kw: str) -> bool:
    try:
        IngestParams.model_validate({"dataType": RX, **kw})
    except ValidationError:
        return False
    return True


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_ingest_params_accept_exactly_the_encodings_the_parser_reads(encoding: str) -> None:
    assert params_accept(encoding=encoding) == parser_reads(encoding=encoding)


@pytest.mark.parametrize("delimiter", DELIMITERS)
def test_ingest_params_accept_exactly_the_delimiters_the_parser_reads(delimiter: str) -> None:
    assert params_accept(delimiter=delimiter) == parser_reads(delimiter=delimiter)


def test_unknown_and_non_text_codecs_are_refused_with_the_parser_message() -> None:
    for encoding in ("rot13", "idna", "raw_unicode_escape", "no-such-codec"):
        with pytest.raises(ValueError, match=f"encoding '{encoding}' is not supported"):
            run(HEADER + b"\n", encoding=encoding)
