"""faults: every 2nd upsert request answers 503 with ``Retry-After: 1``; delivered and time.

The peers honour ``Retry-After`` and so does our queue, so all three wait the same second
per failure; what differs is how many requests each needs and whether they overlap.
scale-gp-beta sends its 50-item batches one after another, each failure costing it a full
second, so its rate hardly depends on the count and it runs a smaller one
(`fault_spans_scale_gp`) to keep the run short; compare spans/s, not seconds.
"""

from __future__ import annotations

from benchmarks._common import OTEL, SCALE_GP, Bench, Row

from ._ours import run_burst
from ._peers import peer_burst

__all__ = ["run"]


def run(bench: Bench) -> list[Row]:
    sizes = bench.sizes
    rows = []
    for backend in bench.backends:
        bench.server.set_faults(status_code=503, status_every_n=2, retry_after="1")
        try:
            rows.append(run_burst(bench, backend, sizes.fault_spans, scenario="faults"))
        finally:
            bench.server.clear_faults()
        bench.reset_server()
    for system, spans in ((SCALE_GP, sizes.fault_spans_scale_gp), (OTEL, sizes.fault_spans)):
        notes = [] if spans == sizes.fault_spans else [f"fewer spans ({spans:,}) to bound the run"]
        rows.append(peer_burst(bench, system, spans, scenario="faults", faults=True, notes=notes))
        bench.reset_server()
    for row in rows:
        row.extra.update(status_every_n=2, retry_after_s=1)
    return rows
