"""The results table: ratios to the peers measured in the same run, and plain-text layout.

A ratio is always "how many times better ours is", so above 1 favours ours in every column:
throughput rows divide our spans/s by the peer's in the same scenario; hot-path rows divide
the peer's µs per span by ours; the CPU ratios divide the peer's client CPU per delivered
span by ours. The machine is shared and noisy, so only ratios within one
run mean much.
"""

from __future__ import annotations

from collections.abc import Sequence

from benchmarks._common import OTEL, OURS, SCALE_GP, Row

__all__ = ["CPU_RATIO_KEYS", "RATIO_KEYS", "add_ratios", "format_table"]

#: JSON key of each peer's ratio.
RATIO_KEYS = {SCALE_GP: "ratio_vs_scale_gp_beta", OTEL: "ratio_vs_opentelemetry"}
#: JSON key of each peer's client-CPU-per-span ratio.
CPU_RATIO_KEYS = {SCALE_GP: "cpu_ratio_vs_scale_gp_beta", OTEL: "cpu_ratio_vs_opentelemetry"}

_COLUMNS = (
    "scenario",
    "system",
    "backend",
    "spans",
    "delivered",
    "spans/s",
    "hot µs/span",
    "ratio vs scale-gp-beta",
    "ratio vs opentelemetry",
    "cpu µs/span",
    "cpu vs scale-gp-beta",
    "cpu vs opentelemetry",
    "notes",
)
_RIGHT = {"spans", "delivered", "spans/s", "hot µs/span", "ratio vs scale-gp-beta",
          "ratio vs opentelemetry", "cpu µs/span", "cpu vs scale-gp-beta",
          "cpu vs opentelemetry"}  # fmt: skip


def _ratio(ours: Row, peer: Row) -> float | None:
    if ours.scenario == "hot-path":
        if ours.hot_us_per_span and peer.hot_us_per_span:
            return peer.hot_us_per_span / ours.hot_us_per_span
        return None
    if ours.spans_per_s and peer.spans_per_s:
        return ours.spans_per_s / peer.spans_per_s
    return None


def add_ratios(rows: Sequence[Row]) -> None:
    """Put each peer's ratio into our rows' `extra` (None when that peer has no such row)."""
    peers = {
        (row.scenario, row.system): row
        for row in rows
        if row.system != OURS and not row.extra.get("skipped")
    }
    for row in rows:
        if row.system != OURS:
            continue
        for system, key in RATIO_KEYS.items():
            peer = peers.get((row.scenario, system))
            row.extra[key] = _ratio(row, peer) if peer is not None else None
            cpu = None
            if peer is not None and row.cpu_us_per_span and peer.cpu_us_per_span:
                cpu = peer.cpu_us_per_span / row.cpu_us_per_span
            row.extra[CPU_RATIO_KEYS[system]] = cpu


def _number(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _cells(row: Row) -> list[str]:
    delivered = "-" if row.delivered is None else f"{row.delivered:,}"
    if row.delivered is not None and row.spans:
        delivered += f" ({row.delivered / row.spans:.0%})"
    ratios = [row.extra.get(key) for key in RATIO_KEYS.values()]
    cpu_ratios = [row.extra.get(key) for key in CPU_RATIO_KEYS.values()]
    return [
        row.scenario,
        row.system,
        row.backend,
        f"{row.spans:,}",
        delivered,
        _number(row.spans_per_s),
        _number(row.hot_us_per_span, 2),
        *(f"{r:.2f}x" if isinstance(r, float) else "-" for r in ratios),
        _number(row.cpu_us_per_span, 1),
        *(f"{r:.2f}x" if isinstance(r, float) else "-" for r in cpu_ratios),
        "; ".join(row.notes),
    ]


def format_table(rows: Sequence[Row]) -> str:
    """The rows as an aligned plain-text table (the notes column is left unpadded)."""
    body = [_cells(row) for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in body)) for i, c in enumerate(_COLUMNS)]
    lines = []
    for cells in [list(_COLUMNS), *body]:
        parts = []
        for i, (name, cell) in enumerate(zip(_COLUMNS, cells, strict=True)):
            if i == len(_COLUMNS) - 1:
                parts.append(cell)
            elif name in _RIGHT:
                parts.append(cell.rjust(widths[i]))
            else:
                parts.append(cell.ljust(widths[i]))
        lines.append("  ".join(parts).rstrip())
    rule = "  ".join("-" * w for w in widths[:-1]) + "  " + "-" * len(_COLUMNS[-1])
    lines.insert(1, rule)
    return "\n".join(lines)
