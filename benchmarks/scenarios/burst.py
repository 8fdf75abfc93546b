"""burst: 20,000 spans as fast as the producer can make them; delivered and spans/s.

Ours: `UpsertQueue` with default settings, one `anyio.lowlevel.checkpoint()` between each
span's start and end, produced two ways: ``burst`` through the tracer (``async with
tracer.trace(...)``, the SDK as an agent uses it, as the peers' runners use their own span
APIs), ``burst-items`` straight into the queue (a validated `SpanItem` per start and per
end, ``queue.submit``), and ``burst-prepared`` through the queue's fast API
(``queue.submit_prepared``, as `SGPTracingProcessor` calls it: the queue's own throughput,
without the tracer's span objects). Peers: the same count through their runners, twice: with
`time.sleep(0)` per span (scenario ``burst``, the like-for-like comparison: a producer that
yields once per span) and without (``burst-noyield``: a producer that never lets the peer's
worker thread in, which shows the loss a per-span yield hides).
"""

from __future__ import annotations

from benchmarks._common import OTEL, SCALE_GP, Bench, Row

from ._ours import run_burst
from ._peers import peer_burst

__all__ = ["run"]


def run(bench: Bench) -> list[Row]:
    spans = bench.sizes.burst_spans
    rows = [run_burst(bench, backend, spans, scenario="burst") for backend in bench.backends]
    rows += [
        run_burst(bench, backend, spans, scenario="burst-items", producer="items")
        for backend in bench.backends
    ]
    rows += [
        run_burst(bench, backend, spans, scenario="burst-prepared", producer="prepared")
        for backend in bench.backends
    ]
    for system in (SCALE_GP, OTEL):
        rows.append(peer_burst(bench, system, spans, scenario="burst"))
        bench.reset_server()
        rows.append(
            peer_burst(bench, system, spans, scenario="burst-noyield", yield_per_span=False)
        )
        bench.reset_server()
    return rows
