"""Raw APCD text → Arrow batches: the pure core of the ingest stage.

Rules, with the decisions taken where the feed's format leaves room:

* Line 1 is the header. After removing a leading UTF-8 BOM and trimming ASCII whitespace it must
  equal the layout's header (:mod:`pgx_apcd.layout`), else the file is ``SCHEMA_MISMATCH``: nothing
  is emitted (no rows, no reject rows: the raw file stays in ``raw/`` as the evidence and copying it
  into ``_rejects`` would duplicate PHI that no repair could use), but its data lines are still
  counted and reported as rejected, so ``data_lines == rows + rejected`` holds for every file.
  0 bytes is ``EMPTY_FILE``; a header and no data line is ``EMPTY_EXTRACT``.
* Lines end with LF or CRLF (the CR is removed; any other CR is a control character). A last line
  without a line ending is a data line. Exactly one blank final line (the file ends with an extra
  line break) is not a data line; any other blank line is a data line with one field, hence
  ``TOO_FEW_FIELDS``.
* A data line gets the first matching reason of :data:`PRECEDENCE`: ``DUPLICATE_HEADER`` (it
  equals the header after the same BOM removal and trim), ``CONTROL_CHARACTER`` (a byte
  0x00-0x1F other than tab), ``INVALID_ENCODING``, then ``TOO_FEW_FIELDS`` / ``TOO_MANY_FIELDS``.
  Byte-level causes come first because they usually explain a wrong field count, and
  ``reprocess`` can repair encoding and field counts but never control characters.

Speed: each block is checked with C-speed whole-block counts (bytes methods and Arrow kernels,
no Python loop over rows). A clean block goes to Arrow's CSV parser as is, with every column
typed ``binary`` so the reader neither validates nor transcodes; only values that are not ASCII
are transcoded afterwards. A block that fails a check is split into ~256 KiB segments, the same
checks localize the faulty ones, and only lines of faulty segments are classified one by one.
Arrow's row count is always compared with our own line count: never trust a reader's count.
With ``quoting=True`` (not the feed's format) every line is split by Python's ``csv`` module:
correct, documented as the slow path.

PHI: messages and exceptions carry line numbers and reason codes, never a value or a raw line.
"""

from __future__ import annotations

import codecs
import csv
import itertools
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from typing import BinaryIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
from pgx_apcd import layout

from pgx_core.errors import ConservationError

PRECEDENCE = ("DUPLICATE_HEADER", "CONTROL_CHARACTER", "INVALID_ENCODING", "TOO_FEW_FIELDS", "TOO_MANY_FIELDS")
SCHEMA_MISMATCH, EMPTY_FILE, EMPTY_EXTRACT = "SCHEMA_MISMATCH", "EMPTY_FILE", "EMPTY_EXTRACT"
BOM = b"\xef\xbb\xbf"
REJECTS_SCHEMA = pa.schema([("_source_file", pa.string()), ("_source_line", pa.int64()),
                            ("reason", pa.string()), ("raw_line", pa.binary())])
_SEGMENT = 256 << 10
_HEADER_LIMIT = 1 << 20  # a first line longer than this cannot be the ~2 KB header
_CONTROLS = frozenset(range(32)) - {9, 10}
_NOT_CONTROL = bytes(b for b in range(256) if b not in _CONTROLS)


@cache
def bronze_schema(data_type: str) -> pa.Schema:
    """Bronze columns: the layout's snake_case names (string), ``_source_file``, ``_source_line``."""
    return pa.schema([*((c, pa.string()) for c in layout.columns(data_type)),
                      ("_source_file", pa.string()), ("_source_line", pa.int64())])


@dataclass(frozen=True)
class SchemaDiff:
    """How a header differs from the layout. Only layout names: a headerless file's first line is data."""

    missing: tuple[str, ...]  # layout columns absent from the header
    misplaced: tuple[str, ...]  # layout columns present at another position
    unexpected_positions: tuple[int, ...]  # 1-based positions holding a name not in the layout
    expected_fields: int
    found_fields: int

    def describe(self) -> str:
        """A PHI-free one-line description for summaries and errors."""
        parts = [f"expected {self.expected_fields} fields, found {self.found_fields}"]
        if self.missing:
            parts.append("missing: " + ", ".join(self.missing))
        if self.misplaced:
            parts.append("misplaced: " + ", ".join(self.misplaced))
        if self.unexpected_positions:
            parts.append("unexpected names at positions " + ", ".join(map(str, self.unexpected_positions)))
        if len(parts) == 1:
            parts.append("names match but spacing or delimiters differ")
        return "; ".join(parts)


@dataclass
class IngestResult:
    """Counts for one source file; ``data_lines == rows + rejected`` always holds."""

    status: str | None = None  # None, SCHEMA_MISMATCH, EMPTY_FILE or EMPTY_EXTRACT
    data_lines: int = 0
    rows: int = 0
    rejected: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    bytes_read: int = 0
    schema_diff: SchemaDiff | None = None


@dataclass(frozen=True)
class _Codec:
    name: str
    single_byte: bool
    invalid: bytes  # byte values a single-byte codec cannot decode
    decodable: bytes  # the complement of ``invalid``

    def valid(self, data: bytes) -> bool:
        """True if ``data`` decodes (C speed: a few memchr passes or one translate)."""
        if data.isascii():
            return True
        if self.single_byte:
            if len(self.invalid) <= 8:
                return not any(data.find(bytes([b])) >= 0 for b in self.invalid)
            return not data.translate(None, self.decodable)
        try:
            codecs.decode(data, self.name)
        except UnicodeDecodeError:
            return False
        return True


_UNSUPPORTED = ("encoding {!r} is not supported: use an ASCII-compatible single-byte encoding (cp1252, latin-1, ...) "
                "or utf-8")
# Codecs with escapes in ASCII (raw_unicode_escape, utf-7, hz, idna) would turn this text into other text.
ESCAPE_PROBE = rb"\u00e9\x41+AOk-~{~}.xn--caf-dma."


@cache
def _codec(encoding: str) -> _Codec:
    """Single-byte ASCII-compatible codecs are checked by byte value; UTF-8 by decoding."""
    try:
        name = codecs.lookup(encoding).name
        if name == "utf-8":
            return _Codec(name, False, b"", b"")
        chars = [bytes([b]).decode(name, "replace") for b in range(256)]
        invalid = bytes(b for b in range(128, 256) if chars[b] == "\ufffd")
        # A byte that is invalid alone but combines with the next one marks a multi-byte codec.
        multibyte = any(bytes([b, c]).decode(name, "replace") != chars[b] + chars[c]
                        for b in invalid for c in (0x40, 0xA1))
        escapes = ESCAPE_PROBE.decode(name, "replace") != ESCAPE_PROBE.decode("ascii")
    except (LookupError, UnicodeError):  # unknown names; codecs that are not bytes → text (rot13, idna)
        raise ValueError(_UNSUPPORTED.format(encoding)) from None
    if multibyte or escapes or any(chars[b] != chr(b) for b in range(128)) or any(len(c) != 1 for c in chars):
        raise ValueError(_UNSUPPORTED.format(encoding))
    return _Codec(name, True, invalid, bytes(b for b in range(256) if b not in invalid))


def check_encoding(encoding: str) -> str:
    """``encoding`` if the parser reads it (utf-8, ASCII-compatible single-byte codecs), else ValueError.

    The one definition of a supported ingest encoding: parameter validation calls it too.
    """
    _codec(encoding)
    return encoding


def check_delimiter(delimiter: str) -> str:
    """``delimiter`` if the parser splits on it (one ASCII character but CR, LF, '"'), else ValueError."""
    if len(delimiter) != 1 or delimiter in "\r\n\"" or ord(delimiter) >= 128:
        raise ValueError(f"delimiter must be one ASCII character other than CR, LF and '\"', got {delimiter!r}")
    return delimiter


class _Parser:
    def __init__(self, data_type: str, source_stem: str, encoding: str, delimiter: str, quoting: bool) -> None:
        check_delimiter(delimiter)
        self.codec = _codec(encoding)
        self.data_type = data_type
        self.columns = layout.columns(data_type)
        self.header = layout.header_line(data_type).encode("ascii")
        self.probe = self.header[:24]  # cheap substring that only a header line contains
        self.delim, self.quoting, self.stem = delimiter.encode("ascii"), quoting, source_stem
        self.n_delims = len(self.columns) - 1
        self.u8_delim = pa.scalar(ord(delimiter), pa.uint8())
        self.result = IngestResult()

    # ---- per-line rules (the reference semantics; used for faulty segments) -----------------
    def reason(self, content: bytes) -> str | None:
        """Reason code of one line (without its line ending), or None for a good line."""
        trimmed = content.strip()
        if trimmed == self.header or (trimmed.startswith(BOM) and trimmed[3:].strip() == self.header):
            return "DUPLICATE_HEADER"
        if content.translate(None, _NOT_CONTROL):
            return "CONTROL_CHARACTER"
        if not self.codec.valid(content):
            return "INVALID_ENCODING"
        n = self.count_fields(content)
        if n == self.n_delims + 1:
            return None
        return "TOO_FEW_FIELDS" if n <= self.n_delims else "TOO_MANY_FIELDS"

    def count_fields(self, content: bytes) -> int:
        if not self.quoting:
            return content.count(self.delim) + 1
        return len(self.split_quoted(content))

    def split_quoted(self, content: bytes) -> list[str]:
        text = content.decode(self.codec.name)
        return next(csv.reader([text], delimiter=self.delim.decode(), quotechar='"', strict=False), [""])

    # ---- whole-range checks (C speed) ---------------------------------------------------------
    def clean(self, data: bytes, u8: pa.Array, lo: int, hi: int, n_lf: int | None = None) -> bool:
        """True when no line of ``data[lo:hi]`` (whole lines) can be rejected."""
        if n_lf is None:
            n_lf = data.count(b"\n", lo, hi)
        n_lines = n_lf + (0 if data[hi - 1:hi] == b"\n" else 1)
        part = u8.slice(lo, hi - lo)
        if (pc.sum(pc.equal(part, self.u8_delim)).as_py() or 0) != n_lines * self.n_delims:
            return False
        n_low = pc.sum(pc.less(part, pa.scalar(32, pa.uint8()))).as_py() or 0
        if n_low != n_lf:  # bytes below 0x20 other than LF: fine only if tabs and CRs of CRLF
            n_cr = data.count(b"\r", lo, hi)
            if n_low != n_lf + n_cr + data.count(b"\t", lo, hi):
                return False
            if n_cr and data.count(b"\r\n", lo, hi) != n_cr:
                return False
        if data.find(self.probe, lo, hi) >= 0:
            return False
        whole = data if (lo, hi) == (0, len(data)) else data[lo:hi]
        return self.codec.valid(whole)

    def classify(self, data: bytes, lo: int, hi: int, first: int, out: list[tuple[int, str, int, int]]) -> None:
        """Append (line index, reason, start, content end) for each bad line of ``data[lo:hi]``."""
        pos, idx = lo, first
        while pos < hi:
            nl = data.find(b"\n", pos, hi)
            end = hi if nl < 0 else nl
            cend = end - 1 if nl >= 0 and end > pos and data[end - 1] == 13 else end
            why = self.reason(data[pos:cend])
            if why:
                out.append((idx, why, pos, cend))
            pos, idx = end + 1, idx + 1

    # ---- parsing ----------------------------------------------------------------------------
    def parse(self, buf: bytes, n: int) -> pa.Table | None:
        """Arrow's reader over good lines, all columns binary; None if it disagrees on fields."""
        if n == 0:
            return pa.table([pa.array([], pa.binary()) for _ in self.columns], names=list(self.columns))
        skip = buf.startswith(BOM)  # Arrow drops a BOM at the start of its input: shield it
        source = b"\n" + buf if skip else buf
        block = max(1 << 20, len(source) // 2 + 1)  # one chunk per core: fewer per-chunk calls later
        for attempt in range(2):
            try:
                table = pcsv.read_csv(
                    pa.BufferReader(source),
                    pcsv.ReadOptions(column_names=self.columns, block_size=block, skip_rows=int(skip),
                                     use_threads=len(source) > 4 << 20),  # threads cost more on small input
                    pcsv.ParseOptions(delimiter=self.delim.decode(), quote_char=False, escape_char=False,
                                      newlines_in_values=False, ignore_empty_lines=False),
                    pcsv.ConvertOptions(column_types=dict.fromkeys(self.columns, pa.binary())))
            except pa.ArrowInvalid as exc:  # message holds raw text: never re-raised
                if "straddl" in str(exc) and attempt == 0:
                    block = len(source) + 1  # a line longer than Arrow's block: one block then
                    continue
                return None
            if table.num_rows != n:
                raise ConservationError(f"ingest of {self.stem}: the CSV reader returned {table.num_rows} rows "
                                        f"for {n} good lines")
            return table
        return None

    def to_string(self, col: pa.Array) -> pa.Array:
        """Binary column of raw bytes → UTF-8 strings, transcoding only the values that need it."""
        text = col.view(pa.string())
        if self.codec.name == "utf-8" or _data_bytes(col).isascii():
            return text  # UTF-8 validity was checked per line; ASCII is UTF-8
        non_ascii = pc.invert(pc.string_is_ascii(text))
        count = pc.sum(non_ascii).as_py() or 0
        values = col if count == len(col) else pc.filter(col, non_ascii)
        # One decode for all of them, LF-separated (no value contains LF), split back by Arrow.
        joined = _data_bytes(pc.binary_join_element_wise(values, b"", b"\n")).decode(self.codec.name)
        fixed = pc.cast(pc.split_pattern(pa.array([joined], pa.large_string()), "\n").flatten()
                        .slice(0, count), pa.string())
        return fixed if count == len(col) else pc.replace_with_mask(text, non_ascii, fixed)


def _data_bytes(col: pa.Array) -> bytes:
    """The bytes of a binary array's values (one copy: C speed, then ``isascii`` is a word scan)."""
    offsets = col.buffers()[1]
    first, last = (int.from_bytes(offsets[i * 4:i * 4 + 4].to_pybytes(), "little", signed=True)
                   for i in (col.offset, col.offset + len(col)))
    data = col.buffers()[2]
    return b"" if data is None else data[first:last].to_pybytes()


def _read(src: BinaryIO, n: int, res: IngestResult) -> bytes:
    chunk = src.read(n)
    res.bytes_read += len(chunk)
    return chunk


def _blocks(src: BinaryIO, block_bytes: int, first: bytes, res: IngestResult) -> Iterator[bytes]:
    """Blocks of whole data lines. A blank final line is withheld until EOF proves it final."""
    parts: list[bytes] = []
    held = False  # parts == [a withheld blank line]
    chunks = itertools.chain([first] if first else [], iter(lambda: _read(src, block_bytes, res), b""))
    for chunk in chunks:
        cut = chunk.rfind(b"\n")
        if cut < 0:  # a line longer than a block: keep collecting
            parts.append(chunk)
            held = False
            continue
        block = chunk if not parts and cut == len(chunk) - 1 else b"".join([*parts, chunk[: cut + 1]])
        rest = chunk[cut + 1:]
        parts, held = ([rest] if rest else []), False
        if not rest and (block.endswith((b"\n\n", b"\n\r\n")) or block in (b"\n", b"\r\n")):
            size = 2 if block.endswith(b"\r\n") else 1
            block, parts, held = block[:-size], [block[-size:]], True
        if block:
            yield block
    if parts and not held:
        yield b"".join(parts)


def ingest_stream(src: BinaryIO, *, data_type: str, source_stem: str, encoding: str = "cp1252",
                  delimiter: str = "|", quoting: bool = False, block_bytes: int = 64 << 20,
                  on_rows: Callable[[pa.RecordBatch], None],
                  on_rejects: Callable[[pa.RecordBatch], None]) -> IngestResult:
    """Parse one raw extract from ``src``; good rows go to ``on_rows``, rejected lines to ``on_rejects``.

    Rows carry the layout's snake_case columns as strings (values exactly as decoded) plus
    ``_source_file`` (``source_stem``) and ``_source_line`` (1-based physical line), in file
    order. Reject batches follow :data:`REJECTS_SCHEMA` with the whole raw line (no line ending).
    Memory is bounded by ``block_bytes`` (and the longest line), not by the file size.
    """
    p = _Parser(data_type, source_stem, encoding, delimiter, quoting)
    res = p.result
    head = b""
    while b"\n" not in head and len(head) < _HEADER_LIMIT and (chunk := _read(src, block_bytes, res)):
        head += chunk
    if not head:
        res.status = EMPTY_FILE
        return res
    nl = head.find(b"\n")
    header, first = (head, b"") if nl < 0 else (head[:nl], head[nl + 1:])
    bare = header[3:] if header.startswith(BOM) else header
    if bare.strip() != p.header:
        res.status, res.schema_diff = SCHEMA_MISMATCH, _diff(bare.strip(), p)
        if nl < 0:  # the first line goes on: skip to its end
            while (chunk := _read(src, block_bytes, res)) and (nl := chunk.find(b"\n")) < 0:
                pass
            first = chunk[nl + 1:] if chunk else b""
        for block in _blocks(src, block_bytes, first, res):
            res.data_lines += block.count(b"\n") + (0 if block.endswith(b"\n") else 1)
        res.rejected = res.data_lines
        res.reasons = {SCHEMA_MISMATCH: res.data_lines} if res.data_lines else {}
        return res
    line_no = 2
    stem = pa.scalar(source_stem, pa.string())
    # Block k+1 is checked and parsed on a helper thread while block k is handed to the caller
    # (whose writer, like Arrow's parser, releases the GIL): two blocks in flight at most.
    with ThreadPoolExecutor(max_workers=1) as helper:
        pending: Future[_Block] | None = None
        for block in _blocks(src, block_bytes, first, res):
            n = block.count(b"\n") + (0 if block.endswith(b"\n") else 1)
            future = helper.submit(_prepare, p, block, line_no, n)
            line_no += n
            if pending is not None:
                _emit(p, pending.result(), stem, on_rows, on_rejects)
            pending = future
        if pending is not None:
            _emit(p, pending.result(), stem, on_rows, on_rejects)
    if res.data_lines == 0:
        res.status = EMPTY_EXTRACT
    if res.data_lines != res.rows + res.rejected:
        raise ConservationError(f"ingest of {source_stem}: {res.data_lines} data lines != {res.rows} rows + "
                                f"{res.rejected} rejected")
    return res


@dataclass
class _Block:
    first_line: int
    lines: int
    bad: list[tuple[int, str, int, int]]  # (line index, reason, start, content end)
    raw_bad: list[bytes]
    table: pa.Table  # good rows, string columns


def _prepare(p: _Parser, data: bytes, line_no: int, n: int) -> _Block:
    """Check, classify and parse one block of whole lines (runs on the helper thread)."""
    u8 = pa.Array.from_buffers(pa.uint8(), len(data), [None, pa.py_buffer(data)])
    bad: list[tuple[int, str, int, int]] = []
    whole_clean = not p.quoting and p.clean(data, u8, 0, len(data), n - (not data.endswith(b"\n")))
    table = p.parse(data, n) if whole_clean else None
    # Localize: only segments failing the cheap checks are classified line by line; if the
    # reader still disagrees (fields off by +1 on one line and -1 on another), classify all.
    passes = () if table is not None else (True,) if whole_clean or p.quoting else (False, True)
    for force in passes:
        bad = []
        lo, idx = 0, 0
        while lo < len(data):
            hi = data.find(b"\n", min(lo + _SEGMENT, len(data)) - 1) + 1 or len(data)
            if force or not p.clean(data, u8, lo, hi):
                p.classify(data, lo, hi, idx, bad)
            idx += data.count(b"\n", lo, hi) + (0 if data[hi - 1] == 10 else 1)
            lo = hi
        good = b"".join(data[s:e] for s, e in _runs(bad, len(data), data)) if bad else data
        table = _parse_quoted(p, good, n - len(bad)) if p.quoting else p.parse(good, n - len(bad))
        if table is not None:
            break
    if table is None:
        raise ConservationError(f"ingest of {p.stem}: the CSV reader rejected lines {line_no}-"
                                f"{line_no + n - 1} that passed every check")
    ascii_only = data.isascii()  # the common case: no value needs a look
    strings = [col if col.type == pa.string() else pa.chunked_array(
        [c.view(pa.string()) if ascii_only else p.to_string(c) for c in col.chunks], pa.string())
        for col in table.columns]
    return _Block(line_no, n, bad, [data[s:e] for _, _, s, e in bad], pa.table(strings, names=list(p.columns)))


def _emit(p: _Parser, blk: _Block, stem: pa.Scalar, on_rows: Callable[[pa.RecordBatch], None],
          on_rejects: Callable[[pa.RecordBatch], None]) -> None:
    """Count and hand over one prepared block, in file order (caller's thread)."""
    res, bad, table = p.result, blk.bad, blk.table
    res.data_lines += blk.lines
    res.rows += table.num_rows
    res.rejected += len(bad)
    for _, why, _, _ in bad:
        res.reasons[why] = res.reasons.get(why, 0) + 1
    bad_numbers = pa.array([blk.first_line + i for i, *_ in bad], pa.int64())
    if bad:
        on_rejects(pa.record_batch([pa.repeat(stem, len(bad)), bad_numbers,
                                    pa.array([why for _, why, _, _ in bad], pa.string()),
                                    pa.array(blk.raw_bad, pa.binary())], schema=REJECTS_SCHEMA))
    numbers = pa.array(range(blk.first_line, blk.first_line + blk.lines), pa.int64())
    if bad:
        numbers = pc.filter(numbers, pc.invert(pc.is_in(numbers, bad_numbers)))
    schema = bronze_schema(p.data_type)
    offset = 0
    for batch in table.to_batches():  # Arrow's chunks: handed over without a copy
        k = batch.num_rows
        if k:
            on_rows(pa.record_batch([*batch.columns, pa.repeat(stem, k), numbers.slice(offset, k)], schema=schema))
        offset += k


def _runs(bad: list[tuple[int, str, int, int]], size: int, data: bytes) -> Iterator[tuple[int, int]]:
    """Byte ranges of the good lines between the bad ones (each bad line with its line ending)."""
    pos = 0
    for _, _, start, cend in bad:
        if start > pos:
            yield pos, start
        nl = data.find(b"\n", cend)
        pos = size if nl < 0 else nl + 1
    if pos < size:
        yield pos, size


def _parse_quoted(p: _Parser, good: bytes, n: int) -> pa.Table:
    """Slow path for ``quoting=True``: Python's csv module per line, values decoded per value."""
    lines = good.split(b"\n")
    if good.endswith(b"\n"):
        lines.pop()
    rows = [p.split_quoted(line[:-1] if line.endswith(b"\r") else line) for line in lines]
    if len(rows) != n:
        raise ConservationError(f"ingest of {p.stem}: quoted parse returned {len(rows)} rows for {n} good lines")
    cols = list(zip(*rows, strict=True)) if rows else [() for _ in p.columns]
    return pa.table([pa.array(c, pa.string()) for c in cols], names=list(p.columns))


def _diff(found_line: bytes, p: _Parser) -> SchemaDiff:
    expected = layout.raw_columns(p.data_type)
    found = found_line.decode("ascii", "replace").split(p.delim.decode())
    exp_set, found_set = set(expected), set(found)
    return SchemaDiff(
        missing=tuple(c for c in expected if c not in found_set),
        misplaced=tuple(c for i, c in enumerate(expected) if c in found_set and (i >= len(found) or found[i] != c)),
        unexpected_positions=tuple(i + 1 for i, c in enumerate(found) if c not in exp_set),
        expected_fields=len(expected), found_fields=len(found))

