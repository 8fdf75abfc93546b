"""burst: 20,000 spans as fast as the producer can make them; delivered and spans/s.

Ours: `UpsertQueue` with default settings, one `anyio.lowlevel.checkpoint()` between each
span's start and end, produced three ways: ``burst`` through the tracer (``async with
tracer.trace(...)``, the SDK as an agent uses it, as the peers' runners use their own span
APIs), ``burst-items`` straight into the queue (a validated `SpanItem` per start and per
end, ``queue.submit``), and ``burst-prepared`` through the queue's fast API
(``queue.submit_record``, as `SGPTracingProcessor` calls it: the queue's own throughput,
without the tracer's span objects). Peers: the same count through their runners, twice: with
`time.sleep(0)` per span (scenario ``burst``, the like-for-like comparison: a producer that
yields once per span) and without (``burst-noyield``: a producer that never lets the peer's
worker thread in, which shows the loss a per-span yield hides).

Every row of ours and the peers' like-for-like rows are the median of `Sizes.burst_runs` runs
(3), each run's figure in the notes: on this shared machine one run swings by a third.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from benchmarks._common import OTEL, SCALE_GP, Bench, Row

from ._ours import run_burst
from ._peers import peer_burst

__all__ = ["median_run", "run"]


def median_run(runs: int, measure: Callable[[], Row]) -> Row:
    """The median run by spans/s of `runs` runs of `measure`, noting every run's figure.

    A run that lost spans is reported instead, the one that lost the most: a median must
    never hide a loss.
    """
    rows = [measure()]
    if rows[0].extra.get("skipped"):
        return rows[0]  # a peer that cannot run here: nothing to repeat
    rows += [measure() for _ in range(runs - 1)]
    if len(rows) == 1:
        return rows[0]
    incomplete = [row for row in rows if not row.complete]
    if incomplete:
        chosen = min(incomplete, key=lambda row: row.delivered or 0)
    else:
        chosen = sorted(rows, key=lambda row: row.spans_per_s or 0.0)[len(rows) // 2]
    figures = ", ".join(f"{row.spans_per_s or 0:,.0f}" for row in rows)
    chosen.notes.insert(0, f"{'median' if not incomplete else 'worst'} of {figures} spans/s")
    chosen.extra["runs_spans_per_s"] = [row.spans_per_s for row in rows]
    return chosen


def run(bench: Bench) -> list[Row]:
    spans, runs = bench.sizes.burst_spans, bench.sizes.burst_runs
    rows = [
        median_run(runs, partial(_ours, bench, backend, spans, scenario, producer))
        for scenario, producer in (
            ("burst", "tracer"),
            ("burst-items", "items"),
            ("burst-prepared", "prepared"),
        )
        for backend in bench.backends
    ]
    for system in (SCALE_GP, OTEL):
        rows.append(median_run(runs, partial(_peer_like_for_like, bench, system, spans)))
        rows.append(
            peer_burst(bench, system, spans, scenario="burst-noyield", yield_per_span=False)
        )
        bench.reset_server()
    return rows


def _ours(bench: Bench, backend: str, spans: int, scenario: str, producer: str) -> Row:
    # Every run starts from an empty store, as the peers' runs do: the server's inserts slow
    # down as its tables grow, and the last rows would pay for the first ones.
    bench.reset_server()
    return run_burst(bench, backend, spans, scenario=scenario, producer=producer)


def _peer_like_for_like(bench: Bench, system: str, spans: int) -> Row:
    row = peer_burst(bench, system, spans, scenario="burst")
    bench.reset_server()
    return row
