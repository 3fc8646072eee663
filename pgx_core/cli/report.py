"""``pgx report``: one self-contained HTML page (plus its PNG charts) describing one run.

The report is built **only from the run summaries**
(``<lake>/pgx_pipeline/<script_name>/run_id=<run_id>/summary.json``). Summaries hold aggregate
counts, file stems and partition names, never a data value, so neither does the report: it never
opens a data, rejects or quarantine object. That is what makes it safe to mail around.

Sections: a header (run id and name, lake, times, spec fingerprint), stage status, rows through
each stage, rejects and quarantine by reason, partition sizes (age band × event year), durations,
every counter, failed entities and backups, and between them the sections plugins add for their
own stages (:func:`pgx_core.hookspecs.pgx_report_sections`: the built-in ones add imputation
provenance and code normalization). Charts are drawn with matplotlib's Agg canvas through the
object API (no pyplot: no global figure state, safe in any thread) and embedded as base64
``<img>`` tags, so the HTML needs no other file; the same PNGs are also written to ``charts/``
beside it for slides and tickets.

The core names no stage: every summary is read by the same rules. A stage's reasons are counters
``stats.rejects.<REASON>`` (lines), ``stats.quarantined.<REASON>`` (rows) and upper-case top-level
``stats.<REASON>`` (files); partition entities are those whose id ends in
``__age_band=<band>__event_year=<year>``.
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

from pgx_core import __version__, clock
from pgx_core.errors import UsageError
from pgx_core.exitcodes import ExitCode, worst
from pgx_core.extend import Chart, ReportSection
from pgx_core.lake import paths
from pgx_core.lake.storage import ObjectStore, StoreConfig, open_store
from pgx_core.run.summary import read_run
from pgx_core.spec.runspec import AGE_BANDS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from pgx_core.pluginmanager import Plugins

_REASON = re.compile(r"^[A-Z][A-Z0-9_]*$")  # a reason code, as stages name them
_RUN_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{8}$")
_RUN_DIR = re.compile(r"/run_id=([^/]+)/summary\.json$")
COLORS = ("#4472c4", "#70ad47", "#ed7d31", "#a5a5a5", "#ffc000", "#5b9bd5", "#264478", "#9e480e")
CHART_DIR = "charts"  # beside report.html: the report's own folder, emptied of PNGs on each build
_MAX_ERROR = 300  # characters of an entity error shown (they are PHI-free, but can be long)
# Section titles (tests and readers look for them).
STAGES_TITLE = "Stages"
ROWS_TITLE = "Rows through each stage"
REJECTS_TITLE = "Rejects and quarantine by reason"
PARTITIONS_TITLE = "Partition sizes"
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
    from pgx_core.spec.runspec import load_spec  # noqa: PLC0415

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
    return sorted(docs, key=_run_order)


def _run_order(doc: dict[str, Any]) -> tuple[str, float, str]:
    """The order stages ran in: every summary of a run measures ``duration_sec`` from the run's start."""
    return (str(doc.get("start_time", "")), num(doc.get("duration_sec")), str(doc.get("script_name", "")))


# ================================================================================================
# Figures out of summaries (pure functions; every lookup is defensive: plugins differ)
# ================================================================================================


def integer(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def num(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def flatten(stats: Any, prefix: str = "") -> dict[str, int]:
    """``{"rejects": {"TOO_FEW_FIELDS": 3}}`` → ``{"rejects.TOO_FEW_FIELDS": 3}`` (integer leaves only)."""
    out: dict[str, int] = {}
    for key, value in mapping(stats).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        elif isinstance(value, int) and not isinstance(value, bool):
            out[name] = value
    return out


def reasons(summaries: list[dict[str, Any]]) -> list[tuple[str, str, int]]:
    """``(stage label, reason, count)`` of every reject / quarantine reason with a count > 0:
    ``stats.rejects.<REASON>`` (lines), upper-case ``stats.<REASON>`` (files) and
    ``stats.quarantined.<REASON>`` (rows) of each summary, in run order."""
    out: list[tuple[str, str, int]] = []
    for doc in summaries:
        script, stats = str(doc.get("script_name")), mapping(doc.get("stats"))
        files = {k: integer(v) for k, v in stats.items() if _REASON.match(k)}
        for unit, counts in (
            ("lines", flatten(stats.get("rejects"))),
            ("files", files),
            ("rows", flatten(stats.get("quarantined"))),
        ):
            out += [(f"{script} ({unit})", r, n) for r, n in sorted(counts.items()) if n]
    return out


@dataclass(frozen=True)
class Cell:
    """One partition of a heat map: its rows, or the status that left it without a count."""

    rows: int
    status: str


def partitions(summaries: list[dict[str, Any]]) -> dict[str, tuple[str, dict[tuple[str, int], Cell]]]:
    """``{dataset: (script name, {(band, year): Cell})}``: each dataset's partitions as the last
    stage of the run that wrote them left them (gold from clean over silver from impute)."""
    out: dict[str, tuple[str, dict[tuple[str, int], Cell]]] = {}
    for doc in summaries:  # run order: a later stage's partitions replace an earlier one's
        found: dict[str, dict[tuple[str, int], Cell]] = {}
        for ent in doc.get("entities") or []:
            parsed = paths.entity_partition(str(mapping(ent).get("entity", "")))
            if parsed is None:
                continue
            dataset, band, year = parsed
            status = str(ent.get("status", "?"))
            rows = integer(ent.get("rows_out")) if status == "completed" else 0
            found.setdefault(dataset, {})[(band, year)] = Cell(rows, status)
        out.update((dataset, (str(doc.get("script_name")), cells)) for dataset, cells in found.items())
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
        return [(str(d.get("script_name")), num(d.get("duration_sec"))) for d in summaries], False
    by_end = sorted(summaries, key=lambda d: num(d.get("duration_sec")))
    walls: dict[str, float] = {}
    previous = 0.0
    for d in by_end:
        elapsed = num(d.get("duration_sec"))
        walls[str(d.get("script_name"))] = max(0.0, elapsed - previous)
        previous = elapsed
    return [(str(d.get("script_name")), walls[str(d.get("script_name"))]) for d in summaries], True


def entity_durations(summaries: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Per script name, the durations of the entities that ran (skipped ones did not)."""
    out: dict[str, list[float]] = {}
    for d in summaries:
        values = [
            num(e.get("duration_sec"))
            for e in d.get("entities") or []
            if isinstance(e, dict) and e.get("status") != "skipped" and "duration_sec" in e
        ]
        if values:
            out[str(d.get("script_name"))] = values
    return out


# ================================================================================================
# Charts (matplotlib, Agg canvas, object API)
# ================================================================================================


def figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415 - heavy; only here
    from matplotlib.figure import Figure  # noqa: PLC0415

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    # No "Software"/date metadata: the same summaries give the same bytes.
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def style(ax: Any) -> None:
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="x", color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)


def chart_rows(summaries: list[dict[str, Any]]) -> bytes:
    names = [str(d.get("script_name")) for d in summaries]
    series = [("rows in", "rows_in"), ("rows out", "rows_out"), ("rows quarantined", "rows_quarantined")]
    fig = figure(8, 1.0 + 0.55 * len(names))
    ax = fig.add_subplot()
    height = 0.8 / len(series)
    for i, (label, key) in enumerate(series):
        values = [integer(mapping(d.get("totals")).get(key)) for d in summaries]
        ys = [n + (i - 1) * height for n in range(len(names))]
        bars = ax.barh(ys, values, height=height, label=label, color=COLORS[i])
        ax.bar_label(bars, labels=[f"{v:,}" if v else "" for v in values], padding=2, fontsize=7)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel("rows")
    ax.legend(loc="lower right", fontsize=8, frameon=False)
    ax.margins(x=0.15)
    style(ax)
    return png(fig)


def chart_reasons(items: list[tuple[str, str, int]]) -> bytes:
    labels = [f"{reason}\n{stage}" for stage, reason, _ in items]
    values = [n for _, _, n in items]
    stages = sorted({s for s, _, _ in items})
    colors = [COLORS[stages.index(s) % len(COLORS)] for s, _, _ in items]
    fig = figure(8, 1.0 + 0.45 * len(items))
    ax = fig.add_subplot()
    bars = ax.barh(range(len(items)), values, color=colors)
    ax.bar_label(bars, labels=[f"{v:,}" for v in values], padding=2, fontsize=8)
    ax.set_yticks(range(len(items)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("count (lines, files or rows, as labelled)")
    ax.margins(x=0.12)
    style(ax)
    return png(fig)


def _band_key(band: str) -> tuple[int, str]:
    return (AGE_BANDS.index(band), "") if band in AGE_BANDS else (len(AGE_BANDS), band)


def chart_partitions(parts: dict[str, tuple[str, dict[tuple[str, int], Cell]]]) -> bytes:
    import numpy as np  # noqa: PLC0415 - comes with matplotlib
    from matplotlib import colormaps  # noqa: PLC0415

    cmap = colormaps["Blues"].with_extremes(bad="#eeeeee")  # gray: no partition, or not completed

    fig = figure(4.6 * len(parts) + 0.8, 4.4)
    axes = fig.subplots(1, len(parts), squeeze=False)[0]
    for ax, (dataset, (script, cells)) in zip(axes, parts.items(), strict=True):
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
        ax.set_title(f"{dataset} ({script})", fontsize=10)
        fig.colorbar(image, ax=ax, shrink=0.8, label="rows")
    return png(fig)


def chart_stage_durations(walls: list[tuple[str, float]], derived: bool) -> bytes:
    fig = figure(8, 1.0 + 0.4 * len(walls))
    ax = fig.add_subplot()
    bars = ax.barh([n for n, _ in walls], [s for _, s in walls], color=COLORS[0])
    ax.bar_label(bars, labels=[f"{s:,.1f} s" for _, s in walls], padding=2, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("wall seconds" + (" (from end times)" if derived else ""))
    ax.margins(x=0.15)
    style(ax)
    return png(fig)


def chart_entity_durations(durations: dict[str, list[float]]) -> bytes:
    names = list(durations)
    fig = figure(8, 1.0 + 0.45 * len(names))
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
    style(ax)
    return png(fig)


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


def escape(value: Any) -> str:
    return html.escape(str(value), quote=True)


def table(header: list[str], rows: Iterable[list[Any]], numeric: Iterable[int] = ()) -> str:
    num = set(numeric)

    def cell(i: int, v: Any, tag: str) -> str:
        text = f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else escape(v)
        return f'<{tag} class="n">{text}</{tag}>' if i in num else f"<{tag}>{text}</{tag}>"

    head = "".join(cell(i, h, "th") for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(cell(i, v, "td") for i, v in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class _Page:
    """Renders sections; a chart becomes both an ``<img>`` and ``charts/<name>.png``."""

    def __init__(self, out_dir: Path) -> None:
        self.chart_dir = out_dir / CHART_DIR
        self.parts: list[str] = []
        self.pngs: list[Path] = []

    def add(self, section: ReportSection) -> None:
        body = "".join(part if isinstance(part, str) else self._chart(part) for part in section.parts)
        self.parts.append(f'<section id="{escape(section.anchor)}"><h2>{escape(section.title)}</h2>{body}</section>')

    def _chart(self, chart: Chart) -> str:
        if not re.fullmatch(r"[a-z0-9_-]+", chart.name) or any(p.stem == chart.name for p in self.pngs):
            raise ValueError(f"chart name {chart.name!r}: lower-case letters, digits, - and _, once a report")
        self.chart_dir.mkdir(exist_ok=True)
        path = self.chart_dir / f"{chart.name}.png"
        path.write_bytes(chart.png)
        self.pngs.append(path)
        data = base64.b64encode(chart.png).decode("ascii")
        return f'<figure><img src="data:image/png;base64,{data}" alt="{escape(chart.alt)}"></figure>'


def _status(status: Any) -> str:
    s = str(status)
    css = s if s in {"success", "partial", "error"} else ""
    return f'<span class="st {css}">{escape(s)}</span>'


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
    rows = "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in meta)
    rows += f"<dt>status</dt><dd>{_status(overall)} (exit {int(worst(codes))})</dd>"
    stages = " · ".join(f"{escape(d.get('script_name'))} {_status(d.get('status'))}" for d in summaries)
    return f'<header><h1>pgx run report</h1><dl class="meta">{rows}</dl><p class="note">Stages: {stages}</p></header>'


def _stage_table(summaries: list[dict[str, Any]], walls: dict[str, float]) -> str:
    rows = []
    for d in summaries:
        t = mapping(d.get("totals"))
        plugin = mapping(d.get("plugin"))
        names = ", ".join(str(mapping(s).get("name")) for s in d.get("stages") or [])
        rows.append(
            [
                d.get("script_name"),
                d.get("tx", ""),
                names,
                f"{plugin.get('name', '?')} {plugin.get('version', '')}",
                d.get("status", "?"),
                d.get("status_code", "?"),
                integer(t.get("entities")),
                integer(t.get("completed")),
                integer(t.get("skipped")),
                integer(t.get("failed")),
                integer(t.get("locked")),
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
    extra = "".join(f'<p class="note">{escape(s)}: {escape(str(e)[:_MAX_ERROR])}</p>' for s, e in errors)
    note = (
        '<p class="note">A stage that did not start (a stage before it did not fully succeed) wrote no summary '
        "and is not listed.</p>"
    )
    return table(header, rows, numeric=range(5, 12)) + extra + note


def note(text: str) -> str:
    return f'<p class="note">{text}</p>'


def _rows_section(summaries: list[dict[str, Any]]) -> ReportSection:
    keys = ("rows_in", "rows_out", "rows_quarantined")
    rows = table(
        ["script_name", "rows in", "rows out", "rows quarantined", "out of scope"],
        [
            [
                d.get("script_name"),
                *(integer(mapping(d.get("totals")).get(k)) for k in keys),
                integer(mapping(d.get("stats")).get("out_of_scope")),
            ]
            for d in summaries
        ],
        numeric=range(1, 5),
    )
    chart = Chart("rows", chart_rows(summaries), "rows in, out and quarantined per stage")
    scope = note("Rows out of scope (event year outside the run's years) are not written to silver.")
    return ReportSection("rows", ROWS_TITLE, (chart, rows, scope), position=10)


def _rejects_section(summaries: list[dict[str, Any]]) -> ReportSection:
    items = reasons(summaries)
    if not items:
        return ReportSection("rejects", REJECTS_TITLE, (note("Nothing was rejected or quarantined in this run."),), 15)
    chart = Chart("rejects", chart_reasons(items), "rejects and quarantine by reason")
    rows = table(["stage (unit)", "reason", "count"], [[s, r, n] for s, r, n in items], numeric=[2])
    return ReportSection("rejects", REJECTS_TITLE, (chart, rows), position=15)


def _partitions_section(summaries: list[dict[str, Any]]) -> ReportSection:
    parts = partitions(summaries)
    if not parts:
        return ReportSection("partitions", PARTITIONS_TITLE, (note("No partition-level stage ran in this run."),), 30)
    chart = Chart("partitions", chart_partitions(parts), "rows per age band and event year")
    cells = note(
        "Each dataset as the last stage that wrote its partitions in this run left it. Gray cells: no "
        "partition for that age band and year, or one that did not complete in this run (its status is "
        "written in the cell: a skipped partition was completed by an earlier run)."
    )
    return ReportSection("partitions", PARTITIONS_TITLE, (chart, cells), position=30)


def _durations_section(summaries: list[dict[str, Any]]) -> ReportSection:
    walls, derived = stage_walls(summaries)
    parts: list[str | Chart] = [Chart("stage_durations", chart_stage_durations(walls, derived), "wall time per stage")]
    durations = entity_durations(summaries)
    if durations:
        parts.append(Chart("entity_durations", chart_entity_durations(durations), "duration per entity"))
    if derived:
        parts.append(
            note(
                "Every summary of this run measures <code>duration_sec</code> from the run's start; "
                "a stage's wall time is its end minus the previous stage's end."
            )
        )
    return ReportSection("durations", DURATIONS_TITLE, tuple(parts), position=80)


def _tail_sections(summaries: list[dict[str, Any]], run_id: str) -> Iterator[ReportSection]:
    counters = [[d.get("script_name"), k, v] for d in summaries for k, v in flatten(d.get("stats")).items()]
    body = table(["script_name", "counter", "value"], counters, numeric=[2]) if counters else note("No counters.")
    yield ReportSection("counters", COUNTERS_TITLE, (body,), position=90)
    bad = [
        [d.get("script_name"), e.get("stage", ""), e.get("entity"), e.get("status"), str(e.get("error") or "")]
        for d in summaries
        for e in d.get("entities") or []
        if isinstance(e, dict) and e.get("status") in {"failed", "locked"}
    ]
    if bad:
        for row in bad:
            row[4] = row[4][:_MAX_ERROR]
        yield ReportSection(
            "failures", FAILURES_TITLE, (table(["script_name", "stage", "entity", "status", "error"], bad),), 91
        )
    backups = sorted({str(b) for d in summaries for b in d.get("backups") or []})
    if backups:
        items = "".join(f"<li><code>{escape(b)}</code></li>" for b in backups)
        undo = note(f"Undo this run with <code>pgx rollback SPEC --run-id {escape(run_id)}</code>.")
        yield ReportSection("backups", BACKUPS_TITLE, (f"<ul>{items}</ul>{undo}",), position=92)
    else:
        yield ReportSection("backups", BACKUPS_TITLE, (note("This run replaced no existing object."),), position=92)


def render_html(
    summaries: list[dict[str, Any]], lake: str, run_id: str, out_dir: Path, plugins: Plugins | None = None
) -> tuple[str, list[Path]]:
    """The report page for ``summaries`` (one run), with the sections of ``plugins``; PNGs are
    written to ``out_dir/charts`` on the way."""
    page = _Page(out_dir)
    page.add(ReportSection("stages", STAGES_TITLE, (_stage_table(summaries, dict(stage_walls(summaries)[0])),), 0))
    sections = [
        _rows_section(summaries),
        _rejects_section(summaries),
        _partitions_section(summaries),
        _durations_section(summaries),
        *_tail_sections(summaries, run_id),
        *(plugins.report_sections(summaries) if plugins else ()),
    ]
    for section in sorted(sections, key=lambda s: s.position):  # stable: the core's first on a tie
        page.add(section)
    doc = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>pgx run {escape(run_id)}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head><body>'
        + _header(summaries, lake, run_id)
        + "".join(page.parts)
        + f'<footer><p class="note">Built by pgx {escape(__version__)} at {escape(clock.iso())} from the run summaries '
        "only (aggregate counts, file stems and partition names; no data values).</p></footer></body></html>\n"
    )
    return doc, page.pngs


def build_report(
    lake: str,
    run_id: str,
    out_dir: str | Path,
    store_config: StoreConfig | None = None,
    *,
    plugins: Plugins | None = None,
) -> ReportPaths:
    """Write ``<out_dir>/report.html`` (self-contained) and its PNG charts for run ``run_id``, with
    the sections of ``plugins`` (the installed ones unless given).

    Reads nothing but the run's summaries. Raises :class:`UsageError` when the run has none.
    """
    from pgx_core.pluginmanager import make_plugin_manager  # noqa: PLC0415

    summaries = load_summaries(lake.rstrip("/"), run_id, store_config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in (out / CHART_DIR).glob("*.png"):  # a re-run leaves no chart of a section now empty
        stale.unlink()
    doc, pngs = render_html(summaries, lake.rstrip("/"), run_id, out, plugins or make_plugin_manager())
    page = out / "report.html"
    page.write_text(doc, encoding="utf-8")
    return ReportPaths(page, tuple(pngs))
