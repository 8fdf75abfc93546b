"""Soak test: a million spans started by one processor and ended by another; memory stays flat.

    python -m benchmarks.soak [--spans 1000000] [--backend asyncio|trio] [--open 1000]

The Temporal shape in one process: tracer A (its own `SGPTracingProcessor`, `UpsertQueue` and
client) starts every span; the span crosses to tracer B as ``span.to_dict()`` through JSON
bytes, and B ends it from ``Span.from_dict(...)``, up to ``--open`` spans being open at once.
Neither side remembers anything about a span, so nothing should grow with the count: the
RSS line printed every few seconds must stay flat. The producer waits (outside the tracers)
when either queue holds more than ``--max-pending``, so the run measures steady state, not
shedding.

At the end: delivered (completed at the server), stuck (stored but still in progress),
missing, and what is left behind once both queues and clients are closed: tasks other than
the main one, TCP connections to the server, live `Span` / `SpanItem` objects. Not part of
``python -m benchmarks --quick``: it takes several minutes.
"""

from __future__ import annotations

import argparse
import collections
import gc
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import orjson
import psutil

from benchmarks._common import machine_line, new_trace_id
from sgp_client import AsyncSGPClient, SpanItem, UpsertQueue
from sgp_client.testing import ServerProcess
from sgp_tracing import SGPTracingProcessor, Span, Tracer

__all__ = ["main", "soak"]

_MIB = 1024 * 1024


def _rss() -> int:
    return int(psutil.Process().memory_info().rss)


def _server_connections(port: int) -> int:
    """This process's TCP connections to the server's port that are still open."""
    return sum(
        1
        for conn in psutil.Process().net_connections(kind="tcp")
        if conn.raddr and conn.raddr.port == port and conn.status != psutil.CONN_CLOSE_WAIT
    )


async def soak(
    server: ServerProcess,
    spans: int,
    *,
    open_spans: int,
    max_pending: int,
    report_every: float,
    spans_per_trace: int,
) -> dict[str, Any]:
    """Run the soak against `server`; returns the numbers the summary prints."""
    samples: list[tuple[float, int]] = []
    peak_pending = 0
    # The event loop's own tasks (trio's system tasks) are there before and after: not ours.
    baseline = {task.id for task in anyio.get_running_tasks()}
    begin = time.perf_counter()
    done = 0

    def client() -> AsyncSGPClient:
        return AsyncSGPClient(
            api_key=server.api_key, account_id=server.account_id, base_url=server.base_url
        )

    async def produce(
        tracer_a: Tracer, tracer_b: Tracer, queue_a: UpsertQueue, queue_b: UpsertQueue
    ) -> None:
        # A function of its own, so the last span dies with its frame before the leak count.
        nonlocal done
        in_transit: collections.deque[bytes] = collections.deque()
        trace_id = new_trace_id()
        for i in range(spans):
            if i % spans_per_trace == 0:
                trace_id = new_trace_id()
            span = tracer_a.start_span("soak", trace_id=trace_id, input={"i": i, "q": "x" * 64})
            # Across the process boundary: JSON bytes, as a workflow engine would carry them.
            in_transit.append(orjson.dumps(span.to_dict()))
            if len(in_transit) >= open_spans:
                payload = orjson.loads(in_transit.popleft())
                tracer_b.end_span(Span.from_dict(payload), output={"ok": True, "a": "y" * 64})
                done += 1
            await anyio.lowlevel.checkpoint()
            if i % 1000 == 0:
                # Backpressure from outside the tracers, which never block by design.
                for queue in (queue_a, queue_b):
                    if queue.stats.pending > max_pending:
                        await queue.flush()
        while in_transit:
            payload = orjson.loads(in_transit.popleft())
            tracer_b.end_span(Span.from_dict(payload), output={"ok": True, "a": "y" * 64})
            done += 1

    async with (
        client() as client_a,
        client() as client_b,
        UpsertQueue(client_a) as queue_a,
        UpsertQueue(client_b) as queue_b,
        anyio.create_task_group() as group,
    ):
        tracer_a = Tracer(SGPTracingProcessor(queue_a))
        tracer_b = Tracer(SGPTracingProcessor(queue_b))

        async def report() -> None:
            while True:
                await anyio.sleep(report_every)
                elapsed = time.perf_counter() - begin
                rss = _rss()
                samples.append((elapsed, rss))
                a, b = queue_a.stats, queue_b.stats
                nonlocal peak_pending
                peak_pending = max(peak_pending, a.pending + b.pending)
                print(
                    f"[soak] {elapsed:7.1f}s  spans {done:>9,}  RSS {rss / _MIB:7.1f} MiB  "
                    f"pending A {a.pending:>6,} B {b.pending:>6,}  "
                    f"delivered A {a.delivered:>9,} B {b.delivered:>9,}  "
                    f"{done / elapsed:8,.0f} spans/s",
                    file=sys.stderr,
                    flush=True,
                )

        group.start_soon(report)
        samples.append((0.0, _rss()))
        await produce(tracer_a, tracer_b, queue_a, queue_b)
        await queue_a.flush()
        await queue_b.flush()
        seconds = time.perf_counter() - begin
        samples.append((seconds, _rss()))
        stats_a, stats_b = queue_a.stats, queue_b.stats
        group.cancel_scope.cancel()
    # Both queues and clients are closed here: whatever is left is a leak.
    await anyio.sleep(0.1)
    leaked_tasks = [t for t in anyio.get_running_tasks() if t.id not in baseline]
    gc.collect()
    live_spans = sum(1 for o in gc.get_objects() if isinstance(o, Span | SpanItem))
    return {
        "seconds": seconds,
        "samples": samples,
        "stats_a": stats_a,
        "stats_b": stats_b,
        "leaked_tasks": [t.name for t in leaked_tasks],
        "connections": _server_connections(server.port),
        "live_spans": live_spans,
        "peak_pending": peak_pending,
    }


def _stored(db: Path) -> tuple[int, int]:
    with sqlite3.connect(db) as conn:
        rows, completed = conn.execute("SELECT COUNT(*), COUNT(end_us) FROM spans").fetchone()
    return int(rows), int(completed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__)
    parser.add_argument("--spans", type=int, default=1_000_000)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--open", type=int, default=1000, help="spans open at once")
    parser.add_argument("--max-pending", type=int, default=50_000)
    parser.add_argument("--report-every", type=float, default=5.0, help="seconds")
    parser.add_argument("--spans-per-trace", type=int, default=1000)
    args = parser.parse_args(argv)

    print(machine_line(), file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="sgp-soak-") as tmp:
        db = Path(tmp) / "soak.sqlite3"
        with ServerProcess(db=db) as server:
            result = anyio.run(
                lambda: soak(
                    server,
                    args.spans,
                    open_spans=args.open,
                    max_pending=args.max_pending,
                    report_every=args.report_every,
                    spans_per_trace=args.spans_per_trace,
                ),
                backend=args.backend,
            )
            rows, completed = _stored(db)
    samples: list[tuple[float, int]] = result["samples"]
    # Flatness: the second half of the run against the first (start-up allocations aside).
    middle = [rss for t, rss in samples if t >= result["seconds"] / 4]
    rss_first, rss_last = (middle[0], middle[-1]) if middle else (samples[0][1], samples[-1][1])
    stats_a, stats_b = result["stats_a"], result["stats_b"]
    dropped = {**{f"A:{k}": v for k, v in stats_a.dropped.items()},
               **{f"B:{k}": v for k, v in stats_b.dropped.items()}}  # fmt: skip
    lines = [
        f"spans                {args.spans:,} ({args.backend}), {result['seconds']:.0f} s, "
        f"{args.spans / result['seconds']:,.0f} spans/s",
        f"delivered            {completed:,} completed at the server",
        f"stuck                {rows - completed:,} stored but still in progress",
        f"missing              {args.spans - rows:,}",
        f"dropped              {sum(dropped.values()):,} {dropped or ''}".rstrip(),
        f"queue accounting     A {'balanced' if stats_a.balanced else 'NOT balanced'}, "
        f"B {'balanced' if stats_b.balanced else 'NOT balanced'}",
        f"RSS                  {samples[0][1] / _MIB:.1f} MiB at start, "
        f"{rss_first / _MIB:.1f} MiB at 1/4, {rss_last / _MIB:.1f} MiB at the end "
        f"({(rss_last - rss_first) / _MIB:+.1f} MiB; peak pending seen {result['peak_pending']:,})",
        f"leaked tasks         {len(result['leaked_tasks'])} {result['leaked_tasks'] or ''}",
        f"open connections     {result['connections']} to the server after close",
        f"live Span/SpanItem   {result['live_spans']}",
    ]
    print("\n".join(line.rstrip() for line in lines))
    ok = (
        completed == args.spans
        and rows == completed
        and not result["leaked_tasks"]
        and result["connections"] == 0
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
