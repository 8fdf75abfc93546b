"""hot-path: what one span costs the producer, with the exporter running.

Ours: ``async with tracer.span("hot", input=...) as s: s.output = ...`` through
`SGPTracingProcessor` into a running `UpsertQueue` pointed at the local server. Measured like
the peers' runners measure themselves (`benchmarks.peers`): one `perf_counter_ns` sample per
span, in rounds of `hot_round` spans with an untimed `flush()` between rounds so no round hits
a full queue; the median is reported. (`benchmarks.hot_path` times whole loops into stand-in
sinks, so it answers a different question and is not reused here.) The same small input and
output as the peers carry.
"""

from __future__ import annotations

import time

import anyio

from benchmarks._common import OTEL, OURS, SCALE_GP, Bench, Row, queue_extra, queue_notes
from benchmarks.peers._common import summarize_ns
from sgp_client import QueueStats, UpsertQueue
from sgp_tracing import SGPTracingProcessor, Tracer

from ._peers import peer_hot_path

__all__ = ["run"]

# The peers' payloads (benchmarks.peers.scale_gp), so every system carries the same bytes.
SPAN_INPUT = {"question": "What is the capital of France?"}
SPAN_OUTPUT = {"answer": "Paris"}
_WARMUP = 50


def run(bench: Bench) -> list[Row]:
    sizes = bench.sizes
    rows = [_ours(bench, backend, sizes.hot_samples, sizes.hot_round) for backend in bench.backends]
    for system in (SCALE_GP, OTEL):
        rows.append(peer_hot_path(bench, system, sizes.hot_samples, sizes.hot_round))
    bench.reset_server()
    return rows


def _ours(bench: Bench, backend: str, samples: int, round_size: int) -> Row:
    bench.progress(f"hot-path {OURS}/{backend} {samples:,} samples ...")
    bench.reset_server()

    async def main() -> tuple[list[int], QueueStats]:
        async with bench.client() as client, UpsertQueue(client) as queue:
            tracer = Tracer(SGPTracingProcessor(queue))
            for _ in range(_WARMUP):
                async with tracer.span("warm", input=SPAN_INPUT) as span:
                    span.output = SPAN_OUTPUT
            await queue.flush()
            perf_ns = time.perf_counter_ns
            timings: list[int] = []
            while len(timings) < samples:
                for _ in range(min(round_size, samples - len(timings))):
                    t = perf_ns()
                    async with tracer.span("hot", input=SPAN_INPUT) as span:
                        span.output = SPAN_OUTPUT
                    timings.append(perf_ns() - t)
                await queue.flush()
            stats = queue.stats
        return timings, stats

    timings, stats = anyio.run(main, backend=backend)
    summary = summarize_ns(timings)
    # Each span is a trace of its own; the warm-up spans are the only others stored.
    delivered = bench.completed() - _WARMUP
    bench.progress(f"hot-path {OURS}/{backend}: median {summary['median_us']:.2f} µs")
    return Row(
        scenario="hot-path",
        system=OURS,
        backend=backend,
        spans=samples,
        delivered=delivered,
        spans_per_s=None,
        hot_us_per_span=summary["median_us"],
        notes=[f"p99 {summary['p99_us']:.1f} µs", *queue_notes(stats)],
        extra={
            "p90_us": summary["p90_us"],
            "p99_us": summary["p99_us"],
            "mean_us": summary["mean_us"],
            **queue_extra(stats),
        },
    )
