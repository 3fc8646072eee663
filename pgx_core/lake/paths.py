"""Every lake path. Nothing else in pgx formats a lake path.

Lake URIs are ``s3://BUCKET[/PREFIX]`` or ``file:///ABS/PATH``. Helpers return URIs with a
trailing ``/`` for prefixes and without one for objects.
"""

from __future__ import annotations

import hashlib
import os
import re

ZONES: tuple[str, ...] = ("bronze", "silver", "gold")
DEFAULT_LAKE = "s3://pgxdatalake"
STATE_DIR = "pgx-pipeline-status"
SUMMARY_DIR = "pgx_pipeline"
STAGING_DIR = "_staging"


def default_lake() -> str:
    return os.environ.get("PGX_LAKE") or DEFAULT_LAKE


def _root(lake: str | None) -> str:
    return (lake or default_lake()).rstrip("/")


def join(base: str, *parts: str) -> str:
    """Join URI parts with single slashes (``join("s3://b/", "x/", "y")`` → ``s3://b/x/y``)."""
    out = base.rstrip("/")
    for part in parts:
        stripped = part.strip("/")
        if stripped:
            out = f"{out}/{stripped}"
    return out


def relative(uri: str, prefix: str) -> str:
    """``uri`` relative to ``prefix`` (which it must start with)."""
    p = prefix.rstrip("/") + "/"
    if not uri.startswith(p):
        raise ValueError(f"{uri} is not under {p}")
    return uri[len(p) :]


def zone_root(zone: str, lake: str | None = None) -> str:
    """``<lake>/<zone>/``. Unknown zone → ``ValueError`` naming the allowed zones."""
    if zone not in ZONES:
        raise ValueError(f"unknown zone {zone!r}: expected one of {', '.join(ZONES)}")
    return f"{_root(lake)}/{zone}/"


_PARTITION_KEY = re.compile(r"age_band=(?P<band>[^/=]+)/event_year=(?P<year>\d{4})/(?P<name>[^/]+)")


def partition_of(relative_key: str, file_name: str) -> tuple[str, int] | None:
    """``(age_band, event_year)`` of ``age_band=<band>/event_year=<year>/<file_name>``, else None."""
    m = _PARTITION_KEY.fullmatch(relative_key)
    if m is None or m.group("name") != file_name:
        return None
    return m.group("band"), int(m.group("year"))


def build_zone_path(  # noqa: PLR0917 - the signature is the team's existing public API
    zone: str,
    data_type: str | None = None,
    age_band: str | None = None,
    event_year: int | str | None = None,
    suffix: str = "",
    lake: str | None = None,
) -> str:
    """A zone path; silver adds ``imputed/``. Trailing ``/`` unless ``suffix`` names a file.

    ``build_zone_path("silver", "medical", "65-74", 2019)`` →
    ``s3://pgxdatalake/silver/imputed/medical/age_band=65-74/event_year=2019/``.
    """
    parts = [zone_root(zone, lake).rstrip("/")]
    if zone == "silver":
        parts.append("imputed")
    if data_type:
        parts.append(data_type)
    if age_band is not None:
        parts.append(f"age_band={age_band}")
    if event_year is not None:
        parts.append(f"event_year={event_year}")
    path = "/".join(parts) + "/"
    if suffix:
        path += suffix.lstrip("/")
    return path


_OLD_SILVER = re.compile(r"^(?P<root>.*?)/silver/(?:imputed/)?(?P<type>[a-z]+?)(?:_partitioned|_imputed)?(?:/|$)")


def convert_raw_to_imputed_path(
    raw_path: str, data_type: str, age_band: str | None = None, event_year: int | str | None = None
) -> str:
    """Convert an older silver prefix or glob to the canonical silver prefix, keeping the bucket.

    Accepts ``…/silver/<type>/…``, ``…/silver/imputed/<type>_partitioned/…`` and the canonical
    form, with or without ``*.parquet`` / ``**/*.parquet`` globs and existing partition dirs.
    """
    path = re.sub(r"(/\*\*)?/\*\.parquet$", "", raw_path.strip())
    m = _OLD_SILVER.match(path + "/")
    if m is None:
        raise ValueError(f"not a silver path: {raw_path!r} (expected …/silver/<type>/…)")
    if m.group("type") != data_type:
        raise ValueError(f"{raw_path!r} is {m.group('type')} silver, not {data_type}")
    lake = m.group("root")
    return build_zone_path("silver", data_type, age_band, event_year, lake=lake)


def older_silver_prefix(given: str, data_type: str) -> str | None:
    """The prefix an older silver input names (``…/silver/<type>/``, ``…/silver/imputed/<type>_partitioned/``),
    or None when ``given`` is the canonical prefix (or a glob under it). ``ValueError`` as
    :func:`convert_raw_to_imputed_path`."""
    older = split_glob(given)[0]
    return None if older == convert_raw_to_imputed_path(given, data_type) else older


def lake_of_zone_root(uri: str, zone: str, data_type: str | None = None) -> str | None:
    """The lake whose zone root (:func:`build_zone_path` of ``zone`` and ``data_type``) is ``uri``.

    ``lake_of_zone_root("s3://b/silver/imputed", "silver")`` → ``s3://b``;
    ``lake_of_zone_root("file:///l/gold/pharmacy/", "gold", "pharmacy")`` → ``file:///l``. None when
    ``uri`` is not that zone root of any lake (a lake root, another zone, a partition…).
    """
    marker = build_zone_path(zone, data_type, lake="s3://x").removeprefix("s3://x").rstrip("/")
    lake = uri.strip().rstrip("/").removesuffix(marker)
    _scheme, sep, rest = lake.partition("://")
    if lake == uri.strip().rstrip("/") or not sep or not rest.strip("/"):
        return None
    return lake


# --- canonical object locations -----------------------------------------------------------------


def raw_prefix(lake: str, data_type: str) -> str:
    return f"{_root(lake)}/raw/{data_type}/"


def bronze_object(lake: str, data_type: str, stem: str) -> str:
    return f"{_root(lake)}/bronze/{data_type}/{stem}.parquet"


def bronze_repro_object(lake: str, data_type: str, stem: str) -> str:
    return f"{_root(lake)}/bronze/{data_type}/{stem}.repro.parquet"


def bronze_rejects_object(lake: str, data_type: str, stem: str) -> str:
    return f"{_root(lake)}/bronze/_rejects/{data_type}/{stem}.rejects.parquet"


def silver_object(lake: str, data_type: str, age_band: str, event_year: int | str) -> str:
    return build_zone_path("silver", data_type, age_band, event_year, f"{data_type}_data.parquet", lake)


def silver_quarantine_object(lake: str, data_type: str) -> str:
    return f"{_root(lake)}/silver/_quarantine/{data_type}/{data_type}_quarantine.parquet"


def demographics_object(lake: str, event_year: int | str) -> str:
    return f"{_root(lake)}/silver/imputed/demographics/event_year={event_year}/demographics_data.parquet"


def gold_object(lake: str, dataset: str, age_band: str, event_year: int | str) -> str:
    return build_zone_path("gold", dataset, age_band, event_year, f"{dataset}_data.parquet", lake)


def target_code_prefix(lake: str) -> str:
    return f"{_root(lake)}/gold/target_code/"


def target_code_objects(lake: str) -> tuple[str, str, str]:
    """target-frequency's reports: ``(icd report, procedure report, suggested mappings)``; the last
    is also update-codes' default target map."""
    prefix = target_code_prefix(lake)
    return (
        prefix + "icd_frequency_by_position.parquet",
        prefix + "procedure_code_frequency.parquet",
        prefix + "suggested_icd_mappings.json",
    )


def staging_parent(lake: str) -> str:
    """``<lake>/_staging/``: one folder per run below it."""
    return f"{_root(lake)}/{STAGING_DIR}/"


def staging_root(lake: str, run_id: str) -> str:
    return f"{staging_parent(lake)}{run_id}/"


def run_lease_object(lake: str, run_id: str) -> str:
    """The lease a live run holds on its staging folder (its first object, removed with it last)."""
    return staging_root(lake, run_id) + "_run.lease.json"


def probe_prefix(state_root: str, run_id: str | None = None) -> str:
    """Where a run probes the state root's conditional writes: ``…/pgx-pipeline-status/_probe/<run_id>/``."""
    base = state_prefix(state_root, "_probe")
    return base + (f"{run_id}/" if run_id else "")


def staging_object(lake: str, run_id: str, final_uri: str) -> str:
    """The staging twin of a final object: ``<lake>/_staging/<run_id>/<key relative to lake>``."""
    return staging_root(lake, run_id) + relative(final_uri, _root(lake))


def summary_object(lake: str, script_name: str, run_id: str) -> str:
    return f"{_root(lake)}/{SUMMARY_DIR}/{script_name}/run_id={run_id}/summary.json"


def summaries_prefix(lake: str, script_name: str | None = None) -> str:
    base = f"{_root(lake)}/{SUMMARY_DIR}/"
    return base + (f"{script_name}/" if script_name else "")


def default_state_root(lake: str) -> str:
    """``s3://pgx-repository`` for S3 lakes, ``<lake>/_state`` for file lakes."""
    return "s3://pgx-repository" if lake.startswith("s3://") else f"{_root(lake)}/_state"


def default_backup_root(lake: str) -> str:
    return f"{_root(lake)}/_backups/"


def lake_key(lake: str) -> str:
    """Path-safe lake identity used in state entity names: ``pgxdatalake`` or ``local``."""
    if lake.startswith("file://"):
        return "local"
    return _root(lake).removeprefix("s3://").replace("/", "_")


def safe_id(*parts: str) -> str:
    """Join entity id parts with ``__``, mapping characters unsafe in object keys to ``_``."""
    return "__".join(re.sub(r"[^A-Za-z0-9=._~-]+", "_", p) for p in parts)


def partition_entity(dataset: str, age_band: str, event_year: int | str) -> str:
    """A stage's entity for one partition: ``<dataset>__age_band=<band>__event_year=<year>``."""
    return safe_id(dataset, f"age_band={age_band}", f"event_year={event_year}")


def entity_partition(entity_id: str) -> tuple[str, str, int] | None:
    """``(dataset, band, year)`` of a partition entity (:func:`partition_entity`, with or without
    the lake key of :func:`state_entity` before it); anything else → None. Parsed from the right,
    because a lake key may itself contain ``__``."""
    parts = entity_id.split("__")
    if len(parts) < 3 or not parts[-2].startswith("age_band=") or not parts[-1].startswith("event_year="):
        return None
    year = parts[-1].removeprefix("event_year=")
    band = parts[-2].removeprefix("age_band=")
    if not year.isdigit() or not band or not parts[-3]:
        return None
    return parts[-3], band, int(year)


def state_entity(lake: str, entity_id: str) -> str:
    """The name an entity's state has: its id behind the lake's key, so that lakes sharing a
    state root never share an entity (``pgxdatalake__medical__age_band=65-74__event_year=2019``)."""
    return safe_id(lake_key(lake), entity_id)


def state_entity_prefix(lake: str) -> str:
    """What every :func:`state_entity` of ``lake`` starts with."""
    return lake_key(lake) + "__"


_PLAIN_STEM = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,119}")
# A plain stem must not end like the objects bronze keeps beside a source's own (x.repro.parquet).
_RESERVED_ENDINGS = (".repro", ".rejects")
_CANONICAL_SUFFIX = ".txt"


def source_stems(uris: list[str], lake: str) -> dict[str, str]:
    """The stem each source object is known by (entity id, bronze and rejects names), injectively.

    A source keeps its plain stem (file name without extension) when the stem is safe —
    ``[A-Za-z0-9][A-Za-z0-9._-]*``, at most 120 characters, not ending in ``.repro`` or ``.rejects``
    (bronze's names for a source's recovered rows and rejects) — and no other source has the same stem
    in any letter case; among sources sharing a stem, the one named ``<stem>.txt`` keeps it. Every
    other source is known as ``<stem with unsafe runs as _>~<8 hex>``, the hex being the start of
    the SHA-256 of its key relative to the lake (its full URI when outside the lake): stable across
    runs, and distinct from every plain stem since those never contain ``~``.

    ``x.txt`` + ``x.csv`` → ``x``, ``x~<8 hex>``; ``a b.txt`` + ``a_b.txt`` → ``a_b~<8 hex>``, ``a_b``.
    """
    groups: dict[str, list[str]] = {}
    for uri in uris:
        groups.setdefault(stem(uri).casefold(), []).append(uri)
    out: dict[str, str] = {}
    for members in groups.values():
        canonical = [u for u in members if u.rsplit("/", 1)[-1] == stem(u) + _CANONICAL_SUFFIX]
        for uri in members:
            own = stem(uri)
            plain = _PLAIN_STEM.fullmatch(own) is not None and not own.lower().endswith(_RESERVED_ENDINGS)
            keeps = plain and (len(members) == 1 or canonical == [uri])
            out[uri] = own if keeps else _digested_stem(uri, lake)
    return out


def _digested_stem(uri: str, lake: str) -> str:
    root = _root(lake) + "/"
    key = uri[len(root) :] if uri.startswith(root) else uri
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", stem(uri)).lstrip("._")[:80] or "file"
    return f"{base}~{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def state_prefix(state_root: str, pipeline: str, entity: str | None = None) -> str:
    base = f"{_root(state_root)}/{STATE_DIR}/{pipeline}/"
    return base + (f"{entity}/" if entity else "")


def state_object(state_root: str, pipeline: str, entity: str) -> str:
    return state_prefix(state_root, pipeline, entity) + "state.json"


def lease_object(state_root: str, pipeline: str, entity: str) -> str:
    return state_prefix(state_root, pipeline, entity) + "lease.json"


def tracker_object(state_root: str, pipeline: str) -> str:
    return state_prefix(state_root, pipeline) + "global_tracker.json"


def backup_prefix(backup_root: str, stamp: str) -> str:
    return f"{_root(backup_root)}/backup_{stamp}/"


def backup_claim_object(prefix: str) -> str:
    """The claim object of a backup prefix, beside it: ``…/backup_<stamp>.claim.json``."""
    return prefix.rstrip("/") + ".claim.json"


def split_glob(pattern: str) -> tuple[str, str | None]:
    """``(prefix to list, glob to match or None)`` for an input given as a prefix or a glob.

    ``s3://b/raw/pharmacy`` → (``s3://b/raw/pharmacy/``, None);
    ``s3://b/raw/*/Q1*.txt`` → (``s3://b/raw/``, the pattern).
    """
    wild = next((i for i, c in enumerate(pattern) if c in "*?["), None)
    if wild is None:
        return pattern.rstrip("/") + "/", None
    return pattern[: pattern.rfind("/", 0, wild) + 1], pattern


def is_raw_text(uri: str) -> bool:
    return uri.lower().endswith((".txt", ".csv"))


def stem(uri: str) -> str:
    """File name without directory and extension."""
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[0] if "." in name else name

