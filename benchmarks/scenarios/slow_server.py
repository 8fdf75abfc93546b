"""slow-server: every request takes 300 ms at the server; throughput against `max_in_flight`.

The real service answers an upsert in ~150 ms p50 / 330 ms p95 while serving many at once,
so a client that sends one batch at a time is bounded by batch size / latency. Default batch
size (500), burst workload; only `max_in_flight` changes.
"""

from __future__ import annotations

from benchmarks._common import Bench, Row

from ._ours import run_burst

__all__ = ["run"]


def run(bench: Bench) -> list[Row]:
    sizes = bench.sizes
    rows = []
    for backend in bench.backends:
        for in_flight in sizes.slow_in_flight:
            bench.server.set_faults(latency=sizes.slow_latency)
            try:
                row = run_burst(
                    bench,
                    backend,
                    sizes.slow_spans,
                    scenario="slow-server",
                    queue_settings={"max_in_flight": in_flight},
                    extra={"latency_s": sizes.slow_latency},
                    notes=[f"max_in_flight={in_flight}"],
                )
            finally:
                bench.server.clear_faults()
            rows.append(row)
            bench.reset_server()
    return rows
