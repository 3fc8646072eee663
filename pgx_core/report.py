"""``pgx report``: one self-contained HTML page (plus its PNG charts) describing one run.

The report is built **only from the run summaries**
(``<lake>/pgx_pipeline/<script_name>/run_id=<run_id>/summary.json``). Summaries hold aggregate
counts, file stems and partition names, never a data value, so neither does the report: it never
opens a data, rejects or quarantine object. That is what makes it safe to mail around.

Sections: a header (run id and name, lake, times, spec fingerprint), stage status, rows through
each stage, rejects and quarantine by reason, imputation provenance per field, gold partition
sizes (age band × event year), code normalization (update-codes), durations, every counter, failed
entities and backups. Charts are drawn with matplotlib's Agg canvas through the object API (no
pyplot: no global figure state, safe in any thread) and embedded as base64 ``<img>`` tags, so the
HTML needs no other file; the same PNGs are also written next to it for slides and tickets.

Stages are handled generically by ``script_name`` (any plugin's summary shows up in the status,
rows, durations and counters sections); the built-in stages get their special charts.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pgx_core import __version__, clock, paths
from pgx_core.errors import UsageError
from pgx_core.exitcodes import ExitCode, worst
from pgx_core.runspec import AGE_BANDS
from pgx_core.storage import ObjectStore, StoreConfig, open_store
from pgx_core.summary import read_run

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# The built-in stages' script names, in pipeline order; other script names follow, alphabetically.
PIPELINE_ORDER = (
    "txt_to_parquet",
    "reprocess_txt_to_parquet",
    "global_imputation",
    "clean_pharmacy",
    "clean_medical",
    "update_codes",
    "target_frequency_analysis",
)
INGEST = "txt_to_parquet"
REPROCESS = "reprocess_txt_to_parquet"
IMPUTE = "global_imputation"
CLEAN = ("clean_pharmacy", "clean_medical")
UPDATE_CODES = "update_codes"
FILE_REASONS = ("EMPTY_FILE", "EMPTY_EXTRACT", "SCHEMA_MISMATCH")  # counted in files, not lines
SOURCE_ORDER = ("original", "imputed_from_pharmacy", "imputed_from_medical", "unresolved")
FIELD_ORDER = ("age", "gender", "race", "zip", "county", "payer")
_RUN_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{8}$")
_RUN_DIR = re.compile(r"/run_id=([^/]+)/summary\.json$")
_COLORS = ("#4472c4", "#70ad47", "#ed7d31", "#a5a5a5", "#ffc000", "#5b9bd5", "#264478", "#9e480e")
_MAX_ERROR = 300  # characters of an entity error shown (they are PHI-free, but can be long)
# Section titles (tests and readers look for them).
STAGES_TITLE = "Stages"
ROWS_TITLE = "Rows through each stage"
REJECTS_TITLE = "Rejects and quarantine by reason"
IMPUTATION_TITLE = "Imputation provenance"
PARTITIONS_TITLE = "Gold partition sizes"
CODES_TITLE = "Code normalization"
DURATIONS_TITLE = "Durations"
COUNTERS_TITLE = "All counters"
FAILURES_TITLE = "Failed and locked entities"
BACKUPS_TITLE = "Backups"


@dataclass(frozen=True)
class ReportPaths:
    """Where :func:`build_report` wrote the report: the HTML page and every PNG chart."""

    html: Path
    pngs: tuple[Path, ...]


# ================================================================================================
# Finding the run
# ================================================================================================


def default_out_dir(run_id: str) -> Path:
    """``./pgx-report-<run_id>``: the default ``--out`` of ``pgx report``."""
    return Path(f"pgx-report-{run_id}")


def run_ids(store: ObjectStore, lake: str, script_names: Iterable[str] | None = None) -> list[str]:
    """Every run id with at least one summary under ``lake`` (optionally only these script names),
    newest first. Run ids start with their UTC start second, so they sort chronologically."""
    prefixes = (
        [paths.summaries_prefix(lake, s) for s in script_names] if script_names else [paths.summaries_prefix(lake)]
    )
    found: set[str] = set()
    for prefix in prefixes:
        for info in store.list(prefix):
            m = _RUN_DIR.search(info.uri)
            if m:
                found.add(m.group(1))
    return sorted(found, reverse=True)


def resolve_run(arg: str, lake: str | None) -> tuple[str, str, StoreConfig]:
    """``pgx report`` argument → ``(lake, run_id, store_config)``.

    ``arg`` is a run spec file or a run id. For a spec, the lake and S3 settings come from it and
    the run is the most recent one of that spec (same ``metadata.name``) that wrote summaries for
    one of its stages; ``lake``, when given, must agree with the spec's. A bare run id needs
    ``lake`` (the ``--lake`` option, else the ``PGX_LAKE`` environment variable).
    Raises :class:`UsageError` (exit 64) when the run cannot be found, :class:`SpecError` for a bad
    spec.
    """
    if _RUN_ID.match(arg) and not Path(arg).exists():
        lake = lake or os.environ.get("PGX_LAKE")
        if not lake:
            raise UsageError(f"pgx report {arg}: a run id needs the lake: pass --lake URI or set PGX_LAKE")
        return lake.rstrip("/"), arg, StoreConfig.resolve()
    if not Path(arg).exists() and not arg.endswith((".yaml", ".yml", ".json")):
        raise UsageError(
            f"pgx report: {arg!r} is neither a run spec file nor a run id (expected YYYYmmddTHHMMSSZ-xxxxxxxx)"
        )
    from pgx_core.pluginmanager import make_plugin_manager  # noqa: PLC0415 - loads every plugin
    from pgx_core.runspec import load_spec  # noqa: PLC0415

    spec = load_spec(arg, make_plugin_manager().registry)
    spec_lake = spec.spec.lake.rstrip("/")
    if lake and lake.rstrip("/") != spec_lake:
        raise UsageError(f"pgx report {arg}: --lake {lake} differs from the spec's lake {spec_lake}")
    config = StoreConfig.for_spec(spec.spec.s3)
    store = open_store(spec_lake, config)
    scripts = sorted({st.stage_cls.script_name for st in spec.stages})
    # Newest first; only the candidates' summaries are read, so a long history costs one listing.
    for run_id in run_ids(store, spec_lake, scripts):
        uri = next(u for u in (paths.summary_object(spec_lake, s, run_id) for s in scripts) if store.exists(u))
        # Every summary of a run carries the same run name: one read per candidate run.
        if json.loads(store.read_bytes(uri)).get("run_name") == spec.name:
            return spec_lake, run_id, config
    raise UsageError(
        f"pgx report {arg}: no run of {spec.name!r} has summaries under {paths.summaries_prefix(spec_lake)}"
    )


def load_summaries(lake: str, run_id: str, store_config: StoreConfig | None = None) -> list[dict[str, Any]]:
    """The run's summaries in pipeline order. No summary → :class:`UsageError`."""
    docs = read_run(open_store(lake, store_config), lake, run_id)
    if not docs:
        raise UsageError(f"Run {run_id} has no summaries under {paths.summaries_prefix(lake)}")
    return sorted(docs, key=lambda d: _order(str(d.get("script_name", ""))))


def _order(script: str) -> tuple[int, str]:
    return (PIPELINE_ORDER.index(script), "") if script in PIPELINE_ORDER else (len(PIPELINE_ORDER), script)


# ================================================================================================
# Figures out of summaries (pure functions; every lookup is defensive: plugins differ)
# ================================================================================================


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _num(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def flatten(stats: Any, prefix: str = "") -> dict[str, int]:
    """``{"rejects": {"TOO_FEW_FIELDS": 3}}`` → ``{"rejects.TOO_FEW_FIELDS": 3}`` (integer leaves only)."""
    out: dict[str, int] = {}
    for key, value in _dict(stats).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        elif isinstance(value, int) and not isinstance(value, bool):
            out[name] = value
    return out


def by_script(summaries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {str(d.get("script_name")): d for d in summaries}


def reasons(summaries: list[dict[str, Any]]) -> list[tuple[str, str, int]]:
    """``(stage label, reason, count)`` of every reject / quarantine reason with a count > 0.

    Ingest: ``rejects.<REASON>`` (lines) and the file-level ``EMPTY_FILE``/``EMPTY_EXTRACT``/
    ``SCHEMA_MISMATCH`` (files); reprocess: rows still rejected; impute: ``quarantined.<REASON>``.
    """
    docs = by_script(summaries)
    out: list[tuple[str, str, int]] = []
    for script, label in ((INGEST, "ingest"), (REPROCESS, "reprocess")):
        stats = _dict(docs.get(script, {}).get("stats"))
        out += [(f"{label} (lines)", r, n) for r, n in sorted(flatten(stats.get("rejects")).items()) if n]
        out += [(f"{label} (files)", r, _int(stats.get(r))) for r in FILE_REASONS if _int(stats.get(r))]
    for script, doc in docs.items():
        if script in (INGEST, REPROCESS):
            continue
        quarantined = flatten(_dict(doc.get("stats")).get("quarantined"))
        label = "impute (rows)" if script == IMPUTE else f"{script} (rows)"
        out += [(label, r, n) for r, n in sorted(quarantined.items()) if n]
    return out


def provenance(summaries: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """``{field: {source label: rows}}`` from the impute summary's ``stats.sources``."""
    sources = _dict(_dict(by_script(summaries).get(IMPUTE, {}).get("stats")).get("sources"))
    fields = [f for f in FIELD_ORDER if f in sources] + sorted(set(sources) - set(FIELD_ORDER))
    return {f: {k: _int(v) for k, v in _dict(sources[f]).items()} for f in fields if _dict(sources[f])}


def source_labels(prov: dict[str, dict[str, int]]) -> list[str]:
    """The source labels present, impute's (:data:`SOURCE_ORDER`) first, then any others alphabetically."""
    labels = [s for s in SOURCE_ORDER if any(s in v for v in prov.values())]
    return labels + sorted({s for v in prov.values() for s in v} - set(labels))


@dataclass(frozen=True)
class Cell:
    """One partition of a heat map: its rows, or the status that left it without a count."""

    rows: int
    status: str


def parse_partition(entity_id: str) -> tuple[str, str, int] | None:
    """``<lakekey>__<dataset>__age_band=<band>__event_year=<year>`` → ``(dataset, band, year)``.

    Anything else (quarantine entities, other id schemes) → None. Parsed from the right, because
    an S3 lake key may itself contain ``__``.
    """
    parts = entity_id.split("__")
    if len(parts) < 3 or not parts[-2].startswith("age_band=") or not parts[-1].startswith("event_year="):
        return None
    year = parts[-1].removeprefix("event_year=")
    band = parts[-2].removeprefix("age_band=")
    if not year.isdigit() or not band or not parts[-3]:
        return None
    return parts[-3], band, int(year)


def partitions(summaries: list[dict[str, Any]]) -> dict[str, tuple[str, dict[tuple[str, int], Cell]]]:
    """``{dataset: (zone, {(band, year): Cell})}``: gold from the clean summaries; for a dataset
    clean did not report, silver from the impute summary (same entity id form)."""
    docs = by_script(summaries)
    out: dict[str, tuple[str, dict[tuple[str, int], Cell]]] = {}
    for zone, scripts in (("gold", CLEAN), ("silver", (IMPUTE,))):
        found: dict[str, dict[tuple[str, int], Cell]] = {}
        for script in scripts:
            for ent in docs.get(script, {}).get("entities") or []:
                parsed = parse_partition(str(_dict(ent).get("entity", "")))
                if parsed is None:
                    continue
                dataset, band, year = parsed
                status = str(ent.get("status", "?"))
                rows = _int(ent.get("rows_out")) if status == "completed" else 0
                found.setdefault(dataset, {})[(band, year)] = Cell(rows, status)
        for dataset, cells in found.items():
            out.setdefault(dataset, (zone, cells))
    return dict(sorted(out.items()))


def stage_walls(summaries: list[dict[str, Any]]) -> tuple[list[tuple[str, float]], bool]:
    """Wall seconds per script name, and whether they were derived from end times.

    The runtime stamps every summary of a run with the run's ``start_time`` and measures
    ``duration_sec`` from it, so a later stage's duration includes the earlier ones. When all
    summaries share one start time, a stage's own wall time is its end time minus the previous
    stage's end time; otherwise ``duration_sec`` already is per stage.
    """
    starts = {d.get("start_time") for d in summaries}
    if len(starts) != 1:
        return [(str(d.get("script_name")), _num(d.get("duration_sec"))) for d in summaries], False
    by_end = sorted(summaries, key=lambda d: _num(d.get("duration_sec")))
    walls: dict[str, float] = {}
    previous = 0.0
    for d in by_end:
        elapsed = _num(d.get("duration_sec"))
        walls[str(d.get("script_name"))] = max(0.0, elapsed - previous)
        previous = elapsed
    return [(str(d.get("script_name")), walls[str(d.get("script_name"))]) for d in summaries], True


def entity_durations(summaries: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Per script name, the durations of the entities that ran (skipped ones did not)."""
    out: dict[str, list[float]] = {}
    for d in summaries:
        values = [
            _num(e.get("duration_sec"))
            for e in d.get("entities") or []
            if isinstance(e, dict) and e.get("status") != "skipped" and "duration_sec" in e
        ]
        if values:
            out[str(d.get("script_name"))] = values
    return out


def code_changes(summaries: list[dict[str, Any]]) -> dict[str, tuple[int, int]]:
    """update-codes: ``{column: (changed, unrecognized)}``."""
    stats = _dict(by_script(summaries).get(UPDATE_CODES, {}).get("stats"))
    changed, unrecognized = flatten(stats.get("changed")), flatten(stats.get("unrecognized"))
    return {c: (changed.get(c, 0), unrecognized.get(c, 0)) for c in sorted(set(changed) | set(unrecognized))}


# ================================================================================================
# Charts (matplotlib, Agg canvas, object API)
# ================================================================================================


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415 - heavy; only here
    from matplotlib.figure import Figure  # noqa: PLC0415

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    # No "Software"/date metadata: the same summaries give the same bytes.
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _style(ax: Any) -> None:
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="x", color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)


def chart_rows(summaries: list[dict[str, Any]]) -> bytes:
    names = [str(d.get("script_name")) for d in summaries]
    series = [("rows in", "rows_in"), ("rows out", "rows_out"), ("rows quarantined", "rows_quarantined")]
    fig = _figure(8, 1.0 + 0.55 * len(names))
    ax = fig.add_subplot()
    height = 0.8 / len(series)
    for i, (label, key) in enumerate(series):
        values = [_int(_dict(d.get("totals")).get(key)) for d in summaries]
        ys = [n + (i - 1) * height for n in range(len(names))]
        bars = ax.barh(ys, values, height=height, label=label, color=_COLORS[i])
        ax.bar_label(bars, labels=[f"{v:,}" if v else "" for v in values], padding=2, fontsize=7)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel("rows")
    ax.legend(loc="lower right", fontsize=8, frameon=False)
    ax.margins(x=0.15)
    _style(ax)
    return _png(fig)


def chart_reasons(items: list[tuple[str, str, int]]) -> bytes:
    labels = [f"{reason}\n{stage}" for stage, reason, _ in items]
    values = [n for _, _, n in items]
    stages = sorted({s for s, _, _ in items})
    colors = [_COLORS[stages.index(s) % len(_COLORS)] for s, _, _ in items]
    fig = _figure(8, 1.0 + 0.45 * len(items))
    ax = fig.add_subplot()
    bars = ax.barh(range(len(items)), values, color=colors)
    ax.bar_label(bars, labels=[f"{v:,}" for v in values], padding=2, fontsize=8)
    ax.set_yticks(range(len(items)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("count (lines, files or rows, as labelled)")
    ax.margins(x=0.12)
    _style(ax)
    return _png(fig)


def chart_provenance(prov: dict[str, dict[str, int]]) -> bytes:
    fields = list(prov)
    labels = source_labels(prov)
    colors = {"original": "#c9d6ea", "imputed_from_pharmacy": "#70ad47", "imputed_from_medical": "#ed7d31"}
    colors["unresolved"] = "#c00000"
    fig = _figure(8, 1.2 + 0.5 * len(fields))
    ax = fig.add_subplot()
    left = [0.0] * len(fields)
    for i, label in enumerate(labels):
        shares = []
        for f in fields:
            total = sum(prov[f].values()) or 1
            shares.append(100.0 * prov[f].get(label, 0) / total)
        ax.barh(fields, shares, left=left, label=label, color=colors.get(label, _COLORS[(i + 3) % len(_COLORS)]))
        left = [a + b for a, b in zip(left, shares, strict=True)]
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of silver rows")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=len(labels), fontsize=8, frameon=False)
    _style(ax)
    return _png(fig)


def _band_key(band: str) -> tuple[int, str]:
    return (AGE_BANDS.index(band), "") if band in AGE_BANDS else (len(AGE_BANDS), band)


def chart_partitions(parts: dict[str, tuple[str, dict[tuple[str, int], Cell]]]) -> bytes:
    import numpy as np  # noqa: PLC0415 - comes with matplotlib
    from matplotlib import colormaps  # noqa: PLC0415

    cmap = colormaps["Blues"].with_extremes(bad="#eeeeee")  # gray: no partition, or not completed

    fig = _figure(4.6 * len(parts) + 0.8, 4.4)
    axes = fig.subplots(1, len(parts), squeeze=False)[0]
    for ax, (dataset, (zone, cells)) in zip(axes, parts.items(), strict=True):
        bands = sorted({b for b, _ in cells}, key=_band_key)
        years = sorted({y for _, y in cells})
        grid = np.full((len(bands), len(years)), np.nan)
        for (band, year), cell in cells.items():
            if cell.status == "completed":
                grid[bands.index(band), years.index(year)] = cell.rows
        image = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, aspect="auto")
        top = np.nanmax(grid) if np.isfinite(grid).any() else 0
        for (band, year), cell in cells.items():
            r, c = bands.index(band), years.index(year)
            text = f"{cell.rows:,}" if cell.status == "completed" else cell.status
            dark = cell.status == "completed" and top and cell.rows > 0.6 * top
            ax.text(c, r, text, ha="center", va="center", fontsize=7, color="white" if dark else "#222222")
        ax.set_xticks(range(len(years)), [str(y) for y in years])
        ax.set_yticks(range(len(bands)), bands)
        ax.set_xlabel("event year")
        ax.set_ylabel("age band")
        ax.set_title(f"{zone} {dataset}", fontsize=10)
        fig.colorbar(image, ax=ax, shrink=0.8, label="rows")
    return _png(fig)


def chart_codes(changes: dict[str, tuple[int, int]]) -> bytes:
    cols = list(changes)
    fig = _figure(8, 1.0 + 0.45 * len(cols))
    ax = fig.add_subplot()
    for i, label in enumerate(("changed", "unrecognized")):
        values = [changes[c][i] for c in cols]
        bars = ax.barh(
            [n + (i - 0.5) * 0.4 for n in range(len(cols))], values, height=0.4, label=label, color=_COLORS[i * 2]
        )
        ax.bar_label(bars, labels=[f"{v:,}" if v else "" for v in values], padding=2, fontsize=7)
    ax.set_yticks(range(len(cols)), cols, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("values")
    ax.legend(loc="lower right", fontsize=8, frameon=False)
    ax.margins(x=0.12)
    _style(ax)
    return _png(fig)


def chart_stage_durations(walls: list[tuple[str, float]], derived: bool) -> bytes:
    fig = _figure(8, 1.0 + 0.4 * len(walls))
    ax = fig.add_subplot()
    bars = ax.barh([n for n, _ in walls], [s for _, s in walls], color=_COLORS[0])
    ax.bar_label(bars, labels=[f"{s:,.1f} s" for _, s in walls], padding=2, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("wall seconds" + (" (from end times)" if derived else ""))
    ax.margins(x=0.15)
    _style(ax)
    return _png(fig)


def chart_entity_durations(durations: dict[str, list[float]]) -> bytes:
    names = list(durations)
    fig = _figure(8, 1.0 + 0.45 * len(names))
    ax = fig.add_subplot()
    ax.boxplot(
        [durations[n] for n in names],
        orientation="horizontal",
        widths=0.5,
        flierprops={"markersize": 3, "markerfacecolor": "#888888", "markeredgecolor": "none"},
    )
    ax.set_yticks(range(1, len(names) + 1), [f"{n}  (n={len(durations[n])})" for n in names], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("seconds per entity")
    _style(ax)
    return _png(fig)


# ================================================================================================
# HTML
# ================================================================================================

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:#222;
 max-width:60rem;margin:1.5rem auto;padding:0 1rem;line-height:1.4;font-size:14px}
h1{font-size:1.5rem;margin:0 0 .3rem}h2{font-size:1.15rem;border-bottom:1px solid #ccc;padding-bottom:.2rem;
 margin-top:2rem}
dl.meta{display:grid;grid-template-columns:max-content auto;gap:.15rem 1rem;margin:.5rem 0}
dl.meta dt{color:#666}dl.meta dd{margin:0;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.85rem;
 overflow-wrap:anywhere}
table{border-collapse:collapse;margin:.6rem 0;font-size:.85rem}
th,td{border-bottom:1px solid #e3e3e3;padding:.2rem .6rem;text-align:left;vertical-align:top}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
code{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.85em}
img{max-width:100%;height:auto;display:block;margin:.6rem 0}
.st{font-weight:600}.success{color:#2e7d32}.partial{color:#b26a00}.error{color:#c62828}
.note{color:#666;font-size:.85rem}
section,figure{break-inside:avoid;page-break-inside:avoid}
@media print{body{margin:0;max-width:none;font-size:11px}h2{margin-top:1rem}}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _table(header: list[str], rows: Iterable[list[Any]], numeric: Iterable[int] = ()) -> str:
    num = set(numeric)

    def cell(i: int, v: Any, tag: str) -> str:
        text = f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else _e(v)
        return f'<{tag} class="n">{text}</{tag}>' if i in num else f"<{tag}>{text}</{tag}>"

    head = "".join(cell(i, h, "th") for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(cell(i, v, "td") for i, v in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class _Page:
    """Collects sections and charts; charts become both an ``<img>`` and a PNG file."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.parts: list[str] = []
        self.pngs: list[Path] = []

    def section(self, anchor: str, title: str, body: str) -> None:
        self.parts.append(f'<section id="{anchor}"><h2>{_e(title)}</h2>{body}</section>')

    def chart(self, name: str, png: bytes, alt: str) -> str:
        path = self.out_dir / f"{name}.png"
        path.write_bytes(png)
        self.pngs.append(path)
        data = base64.b64encode(png).decode("ascii")
        return f'<figure><img src="data:image/png;base64,{data}" alt="{_e(alt)}"></figure>'


def _status(status: Any) -> str:
    s = str(status)
    css = s if s in {"success", "partial", "error"} else ""
    return f'<span class="st {css}">{_e(s)}</span>'


def _header(summaries: list[dict[str, Any]], lake: str, run_id: str) -> str:
    first = summaries[0]
    starts = sorted(str(d.get("start_time")) for d in summaries if d.get("start_time"))
    ends = sorted(str(d.get("end_time")) for d in summaries if d.get("end_time"))
    fingerprints = sorted({str(d.get("spec_fingerprint")) for d in summaries if d.get("spec_fingerprint")})
    statuses = {str(d.get("status")) for d in summaries}
    overall = next((st for st in ("error", "partial") if st in statuses), "success")
    codes = [ExitCode(c) for c in (d.get("status_code") for d in summaries) if c in set(ExitCode)]
    meta = [
        ("run id", run_id),
        ("run name", first.get("run_name", "")),
        ("lake", lake),
        ("started", starts[0] if starts else ""),
        ("ended", ends[-1] if ends else ""),
        ("spec fingerprint", ", ".join(fingerprints)),
    ]
    rows = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in meta)
    rows += f"<dt>status</dt><dd>{_status(overall)} (exit {int(worst(codes))})</dd>"
    stages = " · ".join(f"{_e(d.get('script_name'))} {_status(d.get('status'))}" for d in summaries)
    return f'<header><h1>pgx run report</h1><dl class="meta">{rows}</dl><p class="note">Stages: {stages}</p></header>'


def _stage_table(summaries: list[dict[str, Any]], walls: dict[str, float]) -> str:
    rows = []
    for d in summaries:
        t = _dict(d.get("totals"))
        plugin = _dict(d.get("plugin"))
        names = ", ".join(str(_dict(s).get("name")) for s in d.get("stages") or [])
        rows.append(
            [
                d.get("script_name"),
                d.get("tx", ""),
                names,
                f"{plugin.get('name', '?')} {plugin.get('version', '')}",
                d.get("status", "?"),
                d.get("status_code", "?"),
                _int(t.get("entities")),
                _int(t.get("completed")),
                _int(t.get("skipped")),
                _int(t.get("failed")),
                _int(t.get("locked")),
                f"{walls.get(str(d.get('script_name')), 0.0):,.1f}",
            ]
        )
    header = [
        "script_name",
        "tx",
        "stages",
        "plugin",
        "status",
        "exit",
        "entities",
        "completed",
        "skipped",
        "failed",
        "locked",
        "wall s",
    ]
    errors = [(d.get("script_name"), d.get("error")) for d in summaries if d.get("error")]
    extra = "".join(f'<p class="note">{_e(s)}: {_e(str(e)[:_MAX_ERROR])}</p>' for s, e in errors)
    note = (
        '<p class="note">A stage that did not start (a stage before it did not fully succeed) wrote no summary '
        "and is not listed.</p>"
    )
    return _table(header, rows, numeric=range(5, 12)) + extra + note


def _rows_section(page: _Page, summaries: list[dict[str, Any]]) -> None:
    keys = ("rows_in", "rows_out", "rows_quarantined")
    table = _table(
        ["script_name", "rows in", "rows out", "rows quarantined", "out of scope"],
        [
            [
                d.get("script_name"),
                *(_int(_dict(d.get("totals")).get(k)) for k in keys),
                _int(_dict(d.get("stats")).get("out_of_scope")),
            ]
            for d in summaries
        ],
        numeric=range(1, 5),
    )
    chart = page.chart("rows", chart_rows(summaries), "rows in, out and quarantined per stage")
    note = '<p class="note">Rows out of scope (event year outside the run\'s years) are not written to silver.</p>'
    page.section("rows", ROWS_TITLE, chart + table + note)


def _rejects_section(page: _Page, summaries: list[dict[str, Any]]) -> None:
    items = reasons(summaries)
    if not items:
        page.section("rejects", REJECTS_TITLE, '<p class="note">Nothing was rejected or quarantined in this run.</p>')
        return
    chart = page.chart("rejects", chart_reasons(items), "rejects and quarantine by reason")
    table = _table(["stage (unit)", "reason", "count"], [[s, r, n] for s, r, n in items], numeric=[2])
    page.section("rejects", REJECTS_TITLE, chart + table)


def _imputed_pct(counts: dict[str, int]) -> str:
    imputed = sum(n for source, n in counts.items() if source.startswith("imputed"))
    return f"{100.0 * imputed / (sum(counts.values()) or 1):.2f}"


def _imputation_section(page: _Page, summaries: list[dict[str, Any]]) -> None:
    prov = provenance(summaries)
    if not prov:
        page.section("imputation", IMPUTATION_TITLE, '<p class="note">The impute stage did not run in this run.</p>')
        return
    labels = source_labels(prov)
    table = _table(
        ["field", *labels, "imputed %"],
        [[f, *(prov[f].get(s, 0) for s in labels), _imputed_pct(prov[f])] for f in prov],
        numeric=range(1, len(labels) + 2),
    )
    chart = page.chart("imputation", chart_provenance(prov), "imputation provenance per field")
    page.section("imputation", IMPUTATION_TITLE, chart + table)


def _partitions_section(page: _Page, summaries: list[dict[str, Any]]) -> None:
    parts = partitions(summaries)
    if not parts:
        page.section("partitions", PARTITIONS_TITLE, '<p class="note">No partition-level stage ran in this run.</p>')
        return
    chart = page.chart("partitions", chart_partitions(parts), "rows per age band and event year")
    note = (
        '<p class="note">Gray cells: no partition for that age band and year, or one that did not complete in '
        "this run (its status is written in the cell: a skipped partition was completed by an earlier run).</p>"
    )
    if any(zone != "gold" for zone, _ in parts.values()):
        note += '<p class="note">Where clean did not run, the silver partitions written by impute are shown.</p>'
    page.section("partitions", PARTITIONS_TITLE, chart + note)


def _codes_section(page: _Page, summaries: list[dict[str, Any]]) -> None:
    changes = code_changes(summaries)
    if not changes:
        return  # update-codes did not run: no section at all (it is optional in a pipeline)
    chart = page.chart("codes", chart_codes(changes), "values changed and unrecognized per column")
    table = _table(["column", "changed", "unrecognized"], [[c, *v] for c, v in changes.items()], numeric=[1, 2])
    page.section("codes", CODES_TITLE, chart + table)


def _durations_section(page: _Page, summaries: list[dict[str, Any]]) -> None:
    walls, derived = stage_walls(summaries)
    body = page.chart("stage_durations", chart_stage_durations(walls, derived), "wall time per stage")
    durations = entity_durations(summaries)
    if durations:
        body += page.chart("entity_durations", chart_entity_durations(durations), "duration per entity")
    if derived:
        body += (
            '<p class="note">Every summary of this run measures <code>duration_sec</code> from the run\'s start; '
            "a stage's wall time is its end minus the previous stage's end.</p>"
        )
    page.section("durations", DURATIONS_TITLE, body)


def _tail_sections(page: _Page, summaries: list[dict[str, Any]], run_id: str) -> None:
    counters = [[d.get("script_name"), k, v] for d in summaries for k, v in flatten(d.get("stats")).items()]
    page.section(
        "counters",
        COUNTERS_TITLE,
        _table(["script_name", "counter", "value"], counters, numeric=[2])
        if counters
        else '<p class="note">No counters.</p>',
    )
    bad = [
        [d.get("script_name"), e.get("stage", ""), e.get("entity"), e.get("status"), str(e.get("error") or "")]
        for d in summaries
        for e in d.get("entities") or []
        if isinstance(e, dict) and e.get("status") in {"failed", "locked"}
    ]
    if bad:
        for row in bad:
            row[4] = row[4][:_MAX_ERROR]
        page.section("failures", FAILURES_TITLE, _table(["script_name", "stage", "entity", "status", "error"], bad))
    backups = sorted({str(b) for d in summaries for b in d.get("backups") or []})
    if backups:
        items = "".join(f"<li><code>{_e(b)}</code></li>" for b in backups)
        undo = f'<p class="note">Undo this run with <code>pgx rollback SPEC --run-id {_e(run_id)}</code>.</p>'
        page.section("backups", BACKUPS_TITLE, f"<ul>{items}</ul>{undo}")
    else:
        page.section("backups", BACKUPS_TITLE, '<p class="note">This run replaced no existing object.</p>')


def render_html(summaries: list[dict[str, Any]], lake: str, run_id: str, out_dir: Path) -> tuple[str, list[Path]]:
    """The report page for ``summaries`` (one run); PNGs are written to ``out_dir`` on the way."""
    page = _Page(out_dir)
    page.section("stages", STAGES_TITLE, _stage_table(summaries, dict(stage_walls(summaries)[0])))
    _rows_section(page, summaries)
    _rejects_section(page, summaries)
    _imputation_section(page, summaries)
    _partitions_section(page, summaries)
    _codes_section(page, summaries)
    _durations_section(page, summaries)
    _tail_sections(page, summaries, run_id)
    doc = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>pgx run {_e(run_id)}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head><body>'
        + _header(summaries, lake, run_id)
        + "".join(page.parts)
        + f'<footer><p class="note">Built by pgx {_e(__version__)} at {_e(clock.iso())} from the run summaries '
        "only (aggregate counts, file stems and partition names; no data values).</p></footer></body></html>\n"
    )
    return doc, page.pngs


def build_report(lake: str, run_id: str, out_dir: str | Path, store_config: StoreConfig | None = None) -> ReportPaths:
    """Write ``<out_dir>/report.html`` (self-contained) and its PNG charts for run ``run_id``.

    Reads nothing but the run's summaries. Raises :class:`UsageError` when the run has none.
    """
    summaries = load_summaries(lake.rstrip("/"), run_id, store_config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in _stale_pngs(out):  # a re-run must not leave a chart of a section that is now empty
        stale.unlink()
    doc, pngs = render_html(summaries, lake.rstrip("/"), run_id, out)
    page = out / "report.html"
    page.write_text(doc, encoding="utf-8")
    return ReportPaths(page, tuple(pngs))


_CHART_NAMES = ("rows", "rejects", "imputation", "partitions", "codes", "stage_durations", "entity_durations")


def _stale_pngs(out: Path) -> Iterator[Path]:
    for name in _CHART_NAMES:
        p = out / f"{name}.png"
        if p.exists():
            yield p
