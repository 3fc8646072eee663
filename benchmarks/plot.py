"""Plot a scaling run of ``run.py``: rows/s and the largest work item's RSS against rows, per stage.

    .venv/bin/python benchmarks/plot.py benchmarks/results.json --out benchmarks/results.png

Two panels, log-x: throughput per stage (flat lines = speed that does not fall as the input grows)
and peak RSS per work item (flat lines below the budget + a worker's own memory = memory bounded
whatever the size). Needs matplotlib (the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: write the file
import matplotlib.pyplot as plt


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("results", type=Path, help="a run.py JSON with a scaling section")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("results.png"))
    args = ap.parse_args()
    doc = json.loads(args.results.read_text())
    runs = sorted(doc["scaling"]["runs"], key=lambda r: r["rows"])
    if not runs:
        raise SystemExit(f"{args.results}: no scaling runs to plot")
    stages = list(dict.fromkeys(s["stage"] for r in runs for s in r["stages"]))
    budget = runs[0]["budget_mb"]

    fig, (speed, memory) = plt.subplots(1, 2, figsize=(12, 4.8), constrained_layout=True)
    for stage in stages:
        points = [(r["rows"], s) for r in runs for s in r["stages"] if s["stage"] == stage]
        xs = [x for x, _ in points]
        speed.plot(xs, [s["rows_per_sec"] for _, s in points], marker="o", label=stage)
        memory.plot(xs, [s["peak_item_rss_mb"] for _, s in points], marker="o", label=stage)
    speed.set(xscale="log", yscale="log", xlabel="rows (both data types)", ylabel="rows/s (stage)",
              title="Throughput per stage")
    lines = [(budget, f"memoryBudgetMb {budget}")]
    if doc.get("worker_baseline_mb"):
        base = budget + doc["worker_baseline_mb"]
        lines.append((base, f"budget + an idle worker's own RSS ({doc['worker_baseline_mb']:.0f} MiB)"))
    for y, label in lines:
        memory.axhline(y, color="grey", linestyle="--", linewidth=1)
        memory.annotate(label, (runs[0]["rows"], y), textcoords="offset points", xytext=(2, 4), fontsize=8,
                        color="grey")
    memory.set(xscale="log", xlabel="rows (both data types)", ylabel="MiB", ylim=(0, None),
               title="Peak RSS of one work item")
    for ax in (speed, memory):
        ax.grid(True, which="both", alpha=0.3)
    speed.legend(fontsize=8)
    machine = doc.get("machine", {})
    fig.suptitle(f"pgx scaling — executor {runs[0]['executor']}, {machine.get('nproc', '?')} CPUs "
                 f"({machine.get('cpu', '?')}), started {doc.get('started', '?')}", fontsize=10)
    fig.savefig(args.out, dpi=110)
    print(args.out)


if __name__ == "__main__":
    main()
