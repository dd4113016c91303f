"""Plot a series of drills (``tokpay drill --repeat N --report-json F``) as a PNG: each
drill's longest write outage on any route, coloured by what was killed (hatched when the
node killed was the head), with the 5 s target drawn across and failed drills marked.

    .venv/bin/python bench/drill_plot.py drills.json bench/drills.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

TARGET_SECONDS = 5.0
"""Issue 13's bound on the longest write outage after one node dies."""

COLOURS = {
    "primary": "tab:red",
    "backup": "tab:blue",
    "coordinator": "tab:purple",
    "gateway": "tab:green",
    "head": "tab:orange",
}


def summary(reports: list[dict[str, Any]]) -> str:
    passed = sum(1 for r in reports if r["ok"])
    # A node kill's victim names "back after" when it was the head (restarted at once).
    workers = [
        r["write_outage_seconds"] or 0.0
        for r in reports
        if r["target"] in ("primary", "backup", "coordinator") and "back after" not in r["victim"]
    ]
    worst = max(workers, default=0.0)
    return (
        f"{passed}/{len(reports)} passed; longest write outage after a worker node's "
        f"death: {worst:.2f} s over {len(workers)} such drills"
    )


def write_plot(reports: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 4.5), dpi=110)
    xs = list(range(1, len(reports) + 1))
    heights = [r["write_outage_seconds"] or 0.0 for r in reports]
    colours = [COLOURS.get(r["target"], "tab:gray") for r in reports]
    bars = ax.bar(xs, heights, color=colours)
    for bar, r in zip(bars, reports, strict=True):
        if "back after" in r["victim"]:  # the head machine died (restarted at once)
            bar.set_hatch("//")
    for x, r, h in zip(xs, reports, heights, strict=True):
        if not r["ok"]:
            ax.annotate("FAIL", (x, h), ha="center", va="bottom", color="black", fontsize=8)
    ax.axhline(TARGET_SECONDS, color="black", linestyle="--", linewidth=1)
    ax.text(0.6, TARGET_SECONDS, f" {TARGET_SECONDS:.0f} s target", va="bottom", fontsize=8)
    ax.set_xlabel("drill (hatched: the head machine was killed)")
    ax.set_ylabel("longest write outage on any route (s)")
    ax.set_title(summary(reports), fontsize=10)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in COLOURS.values()]
    ax.legend(handles, list(COLOURS), title="killed", fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", type=Path, help="the JSON of `tokpay drill --report-json`")
    parser.add_argument("out", type=Path, help="the PNG to write")
    args = parser.parse_args()
    reports = json.loads(args.reports.read_text())
    write_plot(reports, args.out)
    print(summary(reports))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
