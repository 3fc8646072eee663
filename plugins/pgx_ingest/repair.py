"""Repairs of rejected lines for the reprocess stage.

Each raw line of a rejects table is parsed again with the requested repairs: decoding with an
override encoding, padding missing trailing fields with empty strings, joining surplus fields back
into one named column with the delimiter. Lines that still break a rule stay rejected, with the
reason they now fail (which may differ from the original one, e.g. a line whose encoding is fixed
by ``latin-1`` but that still lacks fields becomes ``TOO_FEW_FIELDS``). Repeated header lines and
lines with control characters are never recovered: no repair applies to them.

Rejects are few, so this works row by row in Python. Messages carry no data values (PHI).
"""

from __future__ import annotations

import codecs

import pyarrow as pa
from pgx_apcd import layout

from pgx_core.errors import ConservationError
from pgx_ingest.parse import _NOT_CONTROL, BOM, ESCAPE_PROBE, REJECTS_SCHEMA, bronze_schema


def check_encoding(encoding: str) -> str:
    """``encoding`` if repair can decode rejected lines with it, else ValueError.

    Repair screens a line's bytes for the header and control characters before decoding it, and the
    ingest parser cut it at LF bytes, so every ASCII byte must stand for itself. Multi-byte codecs
    (shift_jis, gbk, ...) qualify: a whole line is decoded before it is split.
    """
    try:
        name = codecs.lookup(encoding).name
        ok = (ESCAPE_PROBE.decode(name) == ESCAPE_PROBE.decode("ascii")
              and bytes(range(128)).decode(name) == bytes(range(128)).decode("ascii"))
    except (LookupError, ValueError):  # unknown names, codecs that are not bytes → text, undecodable ASCII
        ok = False
    if not ok:
        raise ValueError(f"encoding {encoding!r} is not supported: use a text encoding in which ASCII bytes "
                         "stand for themselves (cp1252, latin-1, utf-8, ...)")
    return encoding


def repair_rejects(rejects: pa.Table, *, data_type: str, encoding: str | None, pad_missing_fields: bool,
                   join_extra_fields_into: str | None, delimiter: str = "|") -> tuple[pa.Table, pa.Table]:
    """Split ``rejects`` into (recovered rows in the bronze schema, rows still rejected).

    ``encoding`` None means the feed's default (cp1252). Recovered rows keep their original
    ``_source_file`` and ``_source_line``; ``len(recovered) + len(remaining) == len(rejects)``.
    """
    columns = layout.columns(data_type)
    enc = codecs.lookup(check_encoding(encoding or "cp1252")).name
    join_at = None
    if join_extra_fields_into is not None:
        if join_extra_fields_into not in columns:
            raise ValueError(f"joinExtraFieldsInto must be a {data_type} column, got {join_extra_fields_into!r}")
        join_at = columns.index(join_extra_fields_into)
    header = layout.header_line(data_type).encode("ascii")
    recovered: dict[str, list[object]] = {c: [] for c in bronze_schema(data_type).names}
    remaining: dict[str, list[object]] = {c: [] for c in REJECTS_SCHEMA.names}
    for rec in rejects.select(REJECTS_SCHEMA.names).to_pylist():
        raw: bytes = rec["raw_line"]
        fields, reason = _repair(raw, rec["reason"], header, enc=enc, delimiter=delimiter, n=len(columns),
                                 pad=pad_missing_fields, join_at=join_at)
        if fields is None:
            for key in REJECTS_SCHEMA.names:
                remaining[key].append(reason if key == "reason" else rec[key])
            continue
        for c, v in zip(columns, fields, strict=True):
            recovered[c].append(v)
        recovered["_source_file"].append(rec["_source_file"])
        recovered["_source_line"].append(rec["_source_line"])
    out = pa.table(recovered, schema=bronze_schema(data_type))
    still = pa.table(remaining, schema=REJECTS_SCHEMA)
    if out.num_rows + still.num_rows != rejects.num_rows:
        raise ConservationError(f"reprocess: {rejects.num_rows} rejects != {out.num_rows} recovered + "
                                f"{still.num_rows} remaining")
    return out, still


def _repair(raw: bytes, reason: str, header: bytes, *, enc: str, delimiter: str, n: int, pad: bool,
            join_at: int | None) -> tuple[list[str] | None, str]:
    """The repaired fields, or None and the reason the line is still rejected."""
    if reason not in {"TOO_FEW_FIELDS", "TOO_MANY_FIELDS", "INVALID_ENCODING"}:
        return None, reason  # file-level reasons, repeated headers, control characters
    trimmed = raw.strip()
    if trimmed == header or (trimmed.startswith(BOM) and trimmed[3:].strip() == header):
        return None, "DUPLICATE_HEADER"
    if raw.translate(None, _NOT_CONTROL):
        return None, "CONTROL_CHARACTER"
    try:
        fields = raw.decode(enc).split(delimiter)
    except UnicodeDecodeError:
        return None, "INVALID_ENCODING"
    if len(fields) < n:
        if not pad:
            return None, "TOO_FEW_FIELDS"
        fields += [""] * (n - len(fields))
    elif len(fields) > n:
        if join_at is None:
            return None, "TOO_MANY_FIELDS"
        surplus = len(fields) - n
        fields[join_at: join_at + surplus + 1] = [delimiter.join(fields[join_at: join_at + surplus + 1])]
    return fields, reason
