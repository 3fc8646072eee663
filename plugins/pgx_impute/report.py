"""impute's section of ``pgx report``: where each demographic field's silver values came from."""

from __future__ import annotations

from typing import Any

from pgx_core.cli import report
from pgx_core.extend import Chart, ReportSection
from pgx_impute.stage import ImputeStage

TITLE = "Imputation provenance"
SOURCE_ORDER = ("original", "imputed_from_pharmacy", "imputed_from_medical", "unresolved")
FIELD_ORDER = ("age", "gender", "race", "zip", "county", "payer")
SOURCE_COLORS = {
    "original": "#c9d6ea",
    "imputed_from_pharmacy": "#70ad47",
    "imputed_from_medical": "#ed7d31",
    "unresolved": "#c00000",
}


def provenance(summaries: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """``{field: {source label: rows}}`` from the impute summary's ``stats.sources``."""
    mine = next((d for d in summaries if d.get("script_name") == ImputeStage.script_name), {})
    sources = report.mapping(report.mapping(mine.get("stats")).get("sources"))
    fields = [f for f in FIELD_ORDER if f in sources] + sorted(set(sources) - set(FIELD_ORDER))
    return {f: {k: report.integer(v) for k, v in report.mapping(sources[f]).items()} for f in fields if sources[f]}


def source_labels(prov: dict[str, dict[str, int]]) -> list[str]:
    """The source labels present, impute's (:data:`SOURCE_ORDER`) first, then any others alphabetically."""
    labels = [s for s in SOURCE_ORDER if any(s in v for v in prov.values())]
    return labels + sorted({s for v in prov.values() for s in v} - set(labels))


def chart_provenance(prov: dict[str, dict[str, int]]) -> bytes:
    fields = list(prov)
    labels = source_labels(prov)
    fig = report.figure(8, 1.2 + 0.5 * len(fields))
    ax = fig.add_subplot()
    left = [0.0] * len(fields)
    for i, label in enumerate(labels):
        shares = [100.0 * prov[f].get(label, 0) / (sum(prov[f].values()) or 1) for f in fields]
        color = SOURCE_COLORS.get(label, report.COLORS[(i + 3) % len(report.COLORS)])
        ax.barh(fields, shares, left=left, label=label, color=color)
        left = [a + b for a, b in zip(left, shares, strict=True)]
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of silver rows")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=len(labels), fontsize=8, frameon=False)
    report.style(ax)
    return report.png(fig)


def _imputed_pct(counts: dict[str, int]) -> str:
    imputed = sum(n for source, n in counts.items() if source.startswith("imputed"))
    return f"{100.0 * imputed / (sum(counts.values()) or 1):.2f}"


def sections(summaries: list[dict[str, Any]]) -> list[ReportSection]:
    """The provenance section, when impute ran."""
    prov = provenance(summaries)
    if not prov:
        return []
    labels = source_labels(prov)
    rows = report.table(
        ["field", *labels, "imputed %"],
        [[f, *(prov[f].get(s, 0) for s in labels), _imputed_pct(prov[f])] for f in prov],
        numeric=range(1, len(labels) + 2),
    )
    chart = Chart("imputation", chart_provenance(prov), "imputation provenance per field")
    return [ReportSection("imputation", TITLE, (chart, rows), position=20)]
