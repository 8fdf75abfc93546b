"""scaling: throughput against batch size (100, 250, 500, 1000) and `max_in_flight`.

No injected latency: on loopback the server's CPU and ours share the machine, so this shows
where per-request overhead stops mattering, not the network. `slow-server` and `wan` cover
latency (`wan` is the one charted).
"""

from __future__ import annotations

from benchmarks._common import Bench, Row

from ._ours import run_burst

__all__ = ["run"]


def run(bench: Bench) -> list[Row]:
    sizes = bench.sizes
    rows = []
    for backend in bench.backends:
        for batch_size in sizes.scaling_batch_sizes:
            for in_flight in sizes.scaling_in_flight:
                rows.append(
                    run_burst(
                        bench,
                        backend,
                        sizes.scaling_spans,
                        scenario="scaling",
                        queue_settings={"max_batch_size": batch_size, "max_in_flight": in_flight},
                        notes=[f"batch={batch_size} in_flight={in_flight}"],
                    )
                )
                bench.reset_server()
    return rows
