"""update-codes' section of ``pgx report``: values changed and left unrecognized, per column."""

from __future__ import annotations

from typing import Any

from pgx_core.cli import report
from pgx_core.extend import Chart, ReportSection
from pgx_update_codes.stage import UpdateCodesStage

TITLE = "Code normalization"


def code_changes(summaries: list[dict[str, Any]]) -> dict[str, tuple[int, int]]:
    """``{column: (changed, unrecognized)}`` from the update-codes summary."""
    mine = next((d for d in summaries if d.get("script_name") == UpdateCodesStage.script_name), {})
    stats = report.mapping(mine.get("stats"))
    changed, unrecognized = report.flatten(stats.get("changed")), report.flatten(stats.get("unrecognized"))
    return {c: (changed.get(c, 0), unrecognized.get(c, 0)) for c in sorted(set(changed) | set(unrecognized))}


def chart_codes(changes: dict[str, tuple[int, int]]) -> bytes:
    cols = list(changes)
    fig = report.figure(8, 1.0 + 0.45 * len(cols))
    ax = fig.add_subplot()
    for i, label in enumerate(("changed", "unrecognized")):
        values = [changes[c][i] for c in cols]
        ys = [n + (i - 0.5) * 0.4 for n in range(len(cols))]
        bars = ax.barh(ys, values, height=0.4, label=label, color=report.COLORS[i * 2])
        ax.bar_label(bars, labels=[f"{v:,}" if v else "" for v in values], padding=2, fontsize=7)
    ax.set_yticks(range(len(cols)), cols, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("values")
    ax.legend(loc="lower right", fontsize=8, frameon=False)
    ax.margins(x=0.12)
    report.style(ax)
    return report.png(fig)


def sections(summaries: list[dict[str, Any]]) -> list[ReportSection]:
    """The code section, when update-codes ran (it is optional in a pipeline: no empty section)."""
    changes = code_changes(summaries)
    if not changes:
        return []
    chart = Chart("codes", chart_codes(changes), "values changed and unrecognized per column")
    rows = report.table(["column", "changed", "unrecognized"], [[c, *v] for c, v in changes.items()], numeric=[1, 2])
    return [ReportSection("codes", TITLE, (chart, rows), position=40)]
