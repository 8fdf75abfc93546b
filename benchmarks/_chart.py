"""The `scaling` chart: spans/s against batch size, one line per backend and `max_in_flight`.

Written next to the JSON results with matplotlib's Agg backend (no display needed); when
matplotlib is not installed the chart is skipped with a message, never a failure.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path

from benchmarks._common import OURS, Row

__all__ = ["chart_scaling"]


def chart_scaling(rows: Sequence[Row], path: Path) -> str:
    """Draw the scaling rows to `path`; returns what happened, for the progress display."""
    points: dict[tuple[str, int], list[tuple[int, float]]] = {}
    for row in rows:
        if row.scenario != "scaling" or row.system != OURS or row.spans_per_s is None:
            continue
        key = (row.backend, int(row.extra["max_in_flight"]))
        points.setdefault(key, []).append((int(row.extra["max_batch_size"]), row.spans_per_s))
    if not points:
        return "no scaling rows: chart skipped"
    try:
        matplotlib = importlib.import_module("matplotlib")
    except ImportError:
        return "matplotlib is not installed: chart skipped (pip install matplotlib)"
    matplotlib.use("Agg")  # before pyplot: files only, never a window
    plt = importlib.import_module("matplotlib.pyplot")
    fig, ax = plt.subplots(figsize=(8, 5))
    for (backend, in_flight), series in sorted(points.items()):
        series.sort()
        style = "-" if backend == "asyncio" else "--"
        ax.plot(
            [x for x, _ in series],
            [y for _, y in series],
            style,
            marker="o",
            label=f"{backend}, max_in_flight={in_flight}",
        )
    ax.set_xscale("log")
    ax.set_ylim(bottom=0)  # differences drawn to scale, not magnified
    sizes = sorted({x for series in points.values() for x, _ in series})
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.set_xlabel("max_batch_size (items per request)")
    ax.set_ylabel("spans/s (first submit to flush)")
    ax.set_title("sgp_async UpsertQueue throughput, local server on loopback")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"chart written to {path}"
