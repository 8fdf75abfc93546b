"""Upsert ingestion throughput of the local SGP server over loopback.

Run: ``.venv/bin/python benchmarks/server_ingest.py [--batches 400] [--concurrency 8]``.

Items are encoded by the SDK's own encoder, in the shape its tracing layer sends (the fields
it sets, unset content fields left out). Two workloads:

- ``fresh``: a burst of new, completed spans (traces of 10: a root and 9 children).
- ``pairs``: each span is sent twice, its start (in progress) in one batch and its end
  (completed) in the next, so half of every batch updates rows stored by the previous one.

The main figure is the server's CPU time per item (user + system of the server process, read
with psutil), which holds up on a shared, noisy machine; wall-clock items/s is secondary.
Bodies are encoded before the clock starts, so the client does as little as it can.
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import httpx
import orjson
import psutil

from sgp_client import SpanRecord, encode_content
from sgp_client._serialization import encode_items_body, encode_record
from sgp_client.testing import ServerProcess

TRACE_SIZE = 10


def sdk_item(
    *,
    span_id: str,
    trace_id: str,
    parent_id: str | None,
    name: str,
    start: datetime,
    end: datetime | None,
) -> bytes:
    """One item as the SDK's tracing layer encodes it (``UpsertQueue.submit_record``)."""
    content: dict[str, Any] = {"input": {"q": "what is the answer " + "x" * 131}}
    if end is not None:
        content["output"] = {"a": "the answer is " + "y" * 136}
    status = None if end is None else "SUCCESS"
    return encode_record(
        SpanRecord(
            trace_id, span_id, parent_id, None, name, start, end, status, None,
            encode_content(content),
        )
    )  # fmt: skip


def _spans(count: int, start: datetime) -> list[tuple[str, str, str | None, str, datetime]]:
    """(id, trace_id, parent_id, name, start) of `count` new spans in traces of TRACE_SIZE."""
    spans: list[tuple[str, str, str | None, str, datetime]] = []
    root = trace = ""
    for n in range(count):
        span_id = uuid.uuid4().hex
        if n % TRACE_SIZE == 0:
            trace, root = uuid.uuid4().hex, span_id
            spans.append((span_id, trace, None, "agent", start))
        else:
            spans.append((span_id, trace, root, f"step-{n % TRACE_SIZE}", start))
        start += timedelta(microseconds=1234)
    return spans


def _encode(items: list[bytes]) -> bytes:
    return encode_items_body(items)


def fresh_bodies(batches: int, batch_size: int) -> tuple[list[bytes], int]:
    """(bodies, rows expected): every item a new completed span."""
    spans = _spans(batches * batch_size, datetime.now(UTC))
    items = [
        sdk_item(
            span_id=s, trace_id=t, parent_id=p, name=n, start=st, end=st + timedelta(seconds=1)
        )
        for s, t, p, n, st in spans
    ]
    bodies = [_encode(items[b : b + batch_size]) for b in range(0, len(items), batch_size)]
    return bodies, len(items)


def pair_bodies(batches: int, batch_size: int) -> tuple[list[bytes], int]:
    """(bodies, rows expected): starts of new spans, then their ends in the next batch."""
    half = batch_size // 2
    spans = _spans(batches * half, datetime.now(UTC))
    bodies = []
    for b in range(batches + 1):
        ends = spans[(b - 1) * half : b * half] if b else []
        starts = spans[b * half : (b + 1) * half] if b < batches else []
        items = [
            sdk_item(
                span_id=s,
                trace_id=t,
                parent_id=p,
                name=n,
                start=st,
                end=st + timedelta(seconds=1),
            )
            for s, t, p, n, st in ends
        ]
        items += [
            sdk_item(span_id=s, trace_id=t, parent_id=p, name=n, start=st, end=None)
            for s, t, p, n, st in starts
        ]
        bodies.append(_encode(items))
    return bodies, len(spans)


async def send_all(srv: ServerProcess, bodies: list[bytes], concurrency: int) -> float:
    """Send the bodies in order over `concurrency` connections; returns the seconds taken.

    With ``pairs`` a start and its end may be in flight at once; the upsert rule (completed
    beats in progress) makes the outcome the same either way.
    """
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=srv.base_url, headers=srv.headers(), limits=limits, timeout=60
    ) as client:
        send, receive = anyio.create_memory_object_stream[bytes](len(bodies))
        for body in bodies:
            send.send_nowait(body)
        send.close()

        async def worker() -> None:
            async for body in receive:
                r = await client.put(
                    "/v5/spans/batch", content=body, headers={"content-type": "application/json"}
                )
                r.raise_for_status()

        t0 = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(concurrency):
                tg.start_soon(worker)
        return time.perf_counter() - t0


def measure(
    srv: ServerProcess, bodies: list[bytes], expected_rows: int, concurrency: int
) -> tuple[float, float, int]:
    """(wall seconds, server CPU seconds, items sent) of one run on a reset server."""
    srv.reset()
    assert srv.pid is not None
    server = psutil.Process(srv.pid)
    cpu0 = sum(server.cpu_times()[:2])  # user + system
    elapsed = anyio.run(send_all, srv, bodies, concurrency)
    cpu = sum(server.cpu_times()[:2]) - cpu0
    assert srv.count() == expected_rows, (srv.count(), expected_rows)
    items = sum(len(orjson.loads(b)["items"]) for b in bodies)
    return elapsed, cpu, items


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3, help="runs per workload (best kept)")
    parser.add_argument("--db", default=":memory:")
    parser.add_argument(
        "--workload", choices=["fresh", "pairs", "all"], default="all", help="default: all"
    )
    parser.add_argument(
        "--pin", action="store_true", help="server on CPU 1, this client on CPU 0 (Linux)"
    )
    args = parser.parse_args()
    workloads = ["fresh", "pairs"] if args.workload == "all" else [args.workload]
    made = {
        "fresh": fresh_bodies(args.batches, args.batch_size),
        "pairs": pair_bodies(args.batches, args.batch_size),
    }
    with ServerProcess(db=args.db) as srv:
        if args.pin and hasattr(os, "sched_setaffinity"):
            assert srv.pid is not None
            os.sched_setaffinity(srv.pid, {1})
            os.sched_setaffinity(0, {0})
        warm, warm_rows = fresh_bodies(10, args.batch_size)
        measure(srv, warm, warm_rows, args.concurrency)
        for name in workloads:
            bodies, rows = made[name]
            size = sum(map(len, bodies)) / sum(len(orjson.loads(b)["items"]) for b in bodies)
            best: tuple[float, float, int] | None = None
            for _ in range(args.repeat):
                result = measure(srv, bodies, rows, args.concurrency)
                if best is None or result[1] < best[1]:
                    best = result
            assert best is not None
            elapsed, cpu, items = best
            print(
                f"{name:>5}: {items} items ({size:.0f} B each) in {elapsed:.2f} s: "
                f"{items / elapsed:,.0f} items/s; server CPU {cpu:.2f} s = "
                f"{cpu / items * 1e6:.2f} us/item = {items / cpu:,.0f} items per CPU-second"
            )


if __name__ == "__main__":
    main()
