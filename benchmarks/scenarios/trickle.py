"""trickle: 100 spans/s for a few seconds; submit-to-acknowledged latency, p50 and p99.

How the acknowledgement is observed: the client gets an httpx transport that wraps the real
one (`AckTimingTransport`). When a ``PUT /v5/spans/batch`` answers 2xx, it takes the time the
answer's headers arrived and stamps it on every completed item in that request's body (the
body is the exact bytes sent, so the ids in it are the spans that answer acknowledges). The
producer records the time it submitted each span's end. Latency is the difference, per span,
on one monotonic clock. Nothing in the queue is instrumented or changed, and the wrapper's
work (parsing bodies) happens off the producer's path, though on the same thread.

With the default `flush_interval` (0.2 s) a batch of a trickle waits for the interval, so the
p50 is expected near it: this row shows that cost, not the server's speed. The peers have no
per-span acknowledgement hook in their runners, so this scenario is ours only.
"""

from __future__ import annotations

import time

import anyio
import httpx
import orjson

from benchmarks._common import OURS, Bench, Row, new_trace_id, queue_extra, queue_notes, span_items
from sgp_client import QueueStats, UpsertQueue

__all__ = ["AckTimingTransport", "run"]


class AckTimingTransport(httpx.AsyncBaseTransport):
    """Wraps a transport; records when each completed span's write was acknowledged."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner
        #: span id -> `time.perf_counter()` of the first 2xx answer carrying its end.
        self.acked: dict[str, float] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        now = time.perf_counter()
        if (
            request.method == "PUT"
            and request.url.path.endswith("/v5/spans/batch")
            and 200 <= response.status_code < 300
        ):
            acked = self.acked
            for item in orjson.loads(request.content)["items"]:
                if item.get("end_timestamp") is not None:
                    acked.setdefault(item["id"], now)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


def run(bench: Bench) -> list[Row]:
    return [_ours(bench, backend) for backend in bench.backends]


def _percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _ours(bench: Bench, backend: str) -> Row:
    rate = bench.sizes.trickle_rate
    spans = max(1, int(rate * bench.sizes.trickle_seconds))
    bench.progress(f"trickle {OURS}/{backend} {spans:,} spans at {rate:.0f}/s ...")
    trace_id = new_trace_id()

    async def main() -> tuple[dict[str, float], dict[str, float], float, QueueStats]:
        # The same pool limits the client would give its own transport.
        transport = AckTimingTransport(
            httpx.AsyncHTTPTransport(
                limits=httpx.Limits(max_connections=64, max_keepalive_connections=64)
            )
        )
        submitted: dict[str, float] = {}
        async with bench.client(transport=transport) as client, UpsertQueue(client) as queue:
            begin = time.perf_counter()
            for i in range(spans):
                # An absolute schedule, so a late wake-up does not slow the whole trickle.
                delay = begin + i / rate - time.perf_counter()
                if delay > 0:
                    await anyio.sleep(delay)
                start, end = span_items(trace_id, i)
                queue.submit(start)
                await anyio.lowlevel.checkpoint()
                queue.submit(end)
                submitted[end.id] = time.perf_counter()
            await queue.flush()
            seconds = time.perf_counter() - begin
            stats = queue.stats
        return submitted, transport.acked, seconds, stats

    submitted, acked, seconds, stats = anyio.run(main, backend=backend)
    latencies = sorted(acked[sid] - t for sid, t in submitted.items() if sid in acked)
    delivered = bench.completed(trace_id)
    notes = queue_notes(stats)
    if len(latencies) < spans:
        notes.append(f"{spans - len(latencies)} ends never acknowledged")
    p50 = _percentile(latencies, 0.5) * 1000 if latencies else None
    p99 = _percentile(latencies, 0.99) * 1000 if latencies else None
    if p50 is not None and p99 is not None:
        notes.insert(0, f"ack p50 {p50:.0f} ms, p99 {p99:.0f} ms")
    bench.progress(f"trickle {OURS}/{backend}: {notes[0] if notes else ''}")
    bench.reset_server()
    return Row(
        scenario="trickle",
        system=OURS,
        backend=backend,
        spans=spans,
        delivered=delivered,
        spans_per_s=delivered / seconds,
        seconds=seconds,
        notes=notes,
        extra={
            "rate": rate,
            "ack_p50_ms": p50,
            "ack_p99_ms": p99,
            "ack_max_ms": latencies[-1] * 1000 if latencies else None,
            **queue_extra(stats),
        },
    )
