"""The `wan` chart: spans/s against the server's latency, one line per system and backend.

Both axes are logarithmic: throughput spans three orders of magnitude between the systems,
and a client bound by its requests in flight falls as 1/latency, a straight line there. The
0 ms (loopback) points sit at 10 ms on the axis, labelled as 0. Written next to the JSON
results with matplotlib's Agg backend (no display needed); when matplotlib is not installed
the chart is skipped with a message, never a failure.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path

from benchmarks._common import OURS, Row

__all__ = ["chart_wan"]

# Where the loopback (0 ms) points are drawn on the log axis.
_LOOPBACK_AT_MS = 10.0


def _label(row: Row) -> str:
    if row.system != OURS:
        return f"{row.system} (defaults, {row.spans:,} spans)"
    setting = row.extra.get("max_in_flight", "adaptive")
    fixed = " (fixed, the old default)" if isinstance(setting, int) else ""
    return f"{OURS} {row.backend}, max_in_flight={setting}{fixed}"


def chart_wan(rows: Sequence[Row], path: Path) -> str:
    """Draw the `wan` rows to `path`; returns what happened, for the progress display."""
    points: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        latency = row.extra.get("latency_s")
        if not row.scenario.startswith("wan-") or latency is None or not row.spans_per_s:
            continue
        x = float(latency) * 1000 or _LOOPBACK_AT_MS
        points.setdefault(_label(row), []).append((x, row.spans_per_s))
    if not points:
        return "no wan rows: chart skipped"
    try:
        matplotlib = importlib.import_module("matplotlib")
    except ImportError:
        return "matplotlib is not installed: chart skipped (pip install matplotlib)"
    matplotlib.use("Agg")  # before pyplot: files only, never a window
    plt = importlib.import_module("matplotlib.pyplot")
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for label, series in sorted(points.items()):
        series.sort()
        ours = label.startswith(OURS)
        style = "--" if "trio" in label or "=8" in label else "-"
        ax.plot(
            [x for x, _ in series],
            [y for _, y in series],
            style,
            marker="o" if ours else "s",
            linewidth=2 if ours else 1.5,
            label=label,
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    latencies = sorted({x for series in points.values() for x, _ in series})
    ax.set_xticks(
        latencies, ["0 (loopback)" if x == _LOOPBACK_AT_MS else f"{x:g}" for x in latencies]
    )
    ax.minorticks_off()
    ax.set_xlabel("server latency per request (ms)")
    ax.set_ylabel("delivered spans/s (first span to last delivered)")
    ax.set_title("Tracer burst against a slow server: sgp_async vs peers")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize="small", loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"chart written to {path}"
