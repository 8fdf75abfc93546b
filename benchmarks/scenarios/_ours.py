"""Our side of the throughput scenarios: the burst workload through one `UpsertQueue`.

`burst`, `faults`, `slow-server` and `scaling` differ only in the server's faults and the
queue's settings, so they share `run_burst`: build the client and the queue, produce with one
yield per span, time from the first submit until `flush()` returns, then count what the server
stored as completed for the run's trace.
"""

from __future__ import annotations

import time
from typing import Any

import anyio

from benchmarks._common import (
    OURS,
    Bench,
    Row,
    burst_producer,
    new_trace_id,
    queue_extra,
    queue_notes,
)
from sgp_client import QueueStats, UpsertQueue

__all__ = ["run_burst"]


def run_burst(
    bench: Bench,
    backend: str,
    spans: int,
    *,
    scenario: str,
    queue_settings: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    notes: list[str] | None = None,
    producer: str = "tracer",
) -> Row:
    """`spans` spans through an `UpsertQueue` (default settings unless `queue_settings`),
    made by `producer` (see `burst_producer`)."""
    settings = dict(queue_settings or {})
    label = " ".join(f"{k}={v}" for k, v in settings.items())
    bench.progress(f"{scenario} {OURS}/{backend} {spans:,} spans {label}".rstrip() + " ...")
    trace_id = new_trace_id()

    async def main() -> tuple[float, float, float, QueueStats, int]:
        async with bench.client() as client, UpsertQueue(client, **settings) as queue:
            cpu = time.process_time()
            begin = time.perf_counter()
            seconds_producing = await burst_producer(queue, trace_id, spans, producer)
            await queue.flush()
            seconds = time.perf_counter() - begin
            cpu = time.process_time() - cpu
            stats = queue.stats
        return seconds, seconds_producing, cpu, stats, queue.concurrency.limit

    seconds, seconds_producing, cpu, stats, limit = anyio.run(main, backend=backend)
    delivered = bench.completed(trace_id)
    row = Row(
        scenario=scenario,
        system=OURS,
        backend=backend,
        spans=spans,
        delivered=delivered,
        spans_per_s=delivered / seconds,
        # The producer loop per span, its yield included: during the yield the queue's
        # sends run on the same thread, so this is an upper bound of the hot path.
        hot_us_per_span=seconds_producing / spans * 1e6,
        seconds=seconds,
        cpu_us_per_span=cpu / delivered * 1e6 if delivered else None,
        notes=[*(notes or []), *queue_notes(stats)],
        extra={
            "producer": producer,
            **settings,
            **(extra or {}),
            **queue_extra(stats),
            "cpu_seconds": cpu,
            # How busy the client kept one core: near 1, the client's CPU is the bound.
            "cpu_busy": cpu / seconds if seconds > 0 else None,
            "final_in_flight_limit": limit,
        },
    )
    bench.progress(
        f"{scenario} {OURS}/{backend}: {delivered:,}/{spans:,} delivered, "
        f"{row.spans_per_s or 0:,.0f} spans/s ({seconds:.2f} s)"
    )
    return row
