"""pending-memory: the server is down and 100,000 spans wait in the queue; bytes per span.

Runs in a fresh child process per backend (``python -m benchmarks.scenarios.pending_memory``),
so neither earlier scenarios' freed memory nor the harness blurs the numbers. The child
starts its own local server once (to own a port) and kills it, so every send is refused and
retried with backoff. The producer submits each span's start and end (~300 bytes of payload,
fresh dicts per span), in two halves:

- first half, no tracing: the growth of the process's resident set (`psutil`) per span;
- second half, under `tracemalloc`: the growth of live Python allocations per span.

(tracemalloc's own bookkeeping would inflate an RSS reading taken while it runs, hence the
halves.) Target: at most 1.5 KiB per pending span. Then the server comes back on the same
port and the queue drains everything: the row's delivered count is what the server stored,
and its spans/s is the drain rate after the recovery.
"""

from __future__ import annotations

import argparse
import gc
import json
import sqlite3
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
import psutil

from benchmarks._common import OURS, Bench, Row, new_trace_id, queue_extra, queue_notes, span_items
from benchmarks.peers._common import child_env
from sgp_client import AsyncSGPClient, QueueStats, UpsertQueue
from sgp_client.testing import ServerProcess

__all__ = ["TARGET_BYTES", "main", "run"]

TARGET_BYTES = 1536
_MODULE = "benchmarks.scenarios.pending_memory"
_ROOT = Path(__file__).resolve().parents[2]


def run(bench: Bench) -> list[Row]:
    return [_ours(bench, backend) for backend in bench.backends]


def _ours(bench: Bench, backend: str) -> Row:
    spans = bench.sizes.memory_spans
    bench.progress(f"pending-memory {OURS}/{backend} {spans:,} spans, server down ...")
    proc = subprocess.run(
        [sys.executable, "-m", _MODULE, "--backend", backend, "--spans", str(spans),
         "--workdir", str(bench.workdir)],
        capture_output=True, text=True, env=child_env(), cwd=_ROOT, timeout=600, check=False,
    )  # fmt: skip
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{_MODULE} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    report: dict[str, Any] = json.loads(lines[-1])
    traced_per, rss_per = report["bytes_per_span_traced"], report["bytes_per_span_rss"]
    notes = [
        f"{traced_per:,.0f} B/span traced, {rss_per:,.0f} B/span RSS (target <= {TARGET_BYTES:,})",
        f"held: {report['held_pending']:,} pending + {report['held_in_flight']:,} in flight",
        "spans/s = drain after recovery",
        *report["queue_notes"],
    ]
    if max(traced_per, rss_per) > TARGET_BYTES:
        notes.append("OVER TARGET")
    delivered = int(report["delivered"])
    bench.progress(f"pending-memory {OURS}/{backend}: {notes[0]}; {delivered:,} delivered")
    extra = {k: v for k, v in report.items() if k not in ("delivered", "drain_s", "queue_notes")}
    return Row(
        scenario="pending-memory",
        system=OURS,
        backend=backend,
        spans=spans,
        delivered=delivered,
        spans_per_s=delivered / report["drain_s"],
        seconds=report["drain_s"],
        notes=notes,
        extra=extra,
    )


# --- the child process ------------------------------------------------------------------


async def _produce(queue: UpsertQueue, trace_id: str, first: int, count: int) -> None:
    for i in range(first, first + count):
        start, end = span_items(trace_id, i)
        queue.submit(start)
        queue.submit(end)
        if i % 1000 == 999:
            await anyio.lowlevel.checkpoint()
    # Let the worker fold what it will and fail its sends again, then count what is alive.
    await anyio.sleep(0.5)
    gc.collect()


async def _measure(server: ServerProcess, spans: int) -> dict[str, Any]:
    trace_id = new_trace_id()
    half = spans // 2
    process = psutil.Process()
    async with (
        AsyncSGPClient(
            api_key=server.api_key, account_id=server.account_id, base_url=server.base_url
        ) as client,
        UpsertQueue(
            client,
            # Room for everything: this measures holding spans, not shedding them.
            max_pending=spans * 2,
            max_pending_bytes=1 << 34,
            retry_deadline=600.0,
        ) as queue,
    ):
        gc.collect()
        rss0 = process.memory_info().rss
        await _produce(queue, trace_id, 0, half)
        rss = process.memory_info().rss - rss0

        tracemalloc.start()
        traced0 = tracemalloc.get_traced_memory()[0]
        await _produce(queue, trace_id, half, spans - half)
        traced = tracemalloc.get_traced_memory()[0] - traced0
        tracemalloc.stop()
        held = queue.stats

        await anyio.to_thread.run_sync(server.start)
        begin = time.perf_counter()
        await queue.flush()
        drain = time.perf_counter() - begin
        final: QueueStats = queue.stats
    with sqlite3.connect(server.db) as conn:
        (delivered,) = conn.execute(
            "SELECT COUNT(*) FROM spans WHERE trace_id = ? AND end_us IS NOT NULL", (trace_id,)
        ).fetchone()
    return {
        "bytes_per_span_rss": rss / half,
        "bytes_per_span_traced": traced / (spans - half),
        "target_bytes_per_span": TARGET_BYTES,
        "held_pending": held.pending,
        "held_in_flight": held.in_flight,
        "held_pending_bytes": held.pending_bytes,
        "delivered": delivered,
        "drain_s": drain,
        "queue_notes": queue_notes(final),
        **queue_extra(final),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m {_MODULE}")
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--spans", type=int, default=100_000)
    parser.add_argument("--workdir", type=Path, default=Path("."))
    args = parser.parse_args(argv)
    server = ServerProcess(db=args.workdir / f"pending-{args.backend}.sqlite3")
    server.start()  # once, to own a port that the recovery reuses
    server.kill()
    try:
        report = anyio.run(_measure, server, args.spans, backend=args.backend)
    finally:
        server.stop()
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
