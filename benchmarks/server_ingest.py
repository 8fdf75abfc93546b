"""Upsert ingestion throughput of the local SGP server over loopback (items/s).

Run: ``.venv/bin/python benchmarks/server_ingest.py [--batches 400] [--concurrency 8]``.
Bodies are encoded before the clock starts, so the number is the server's, not the client's.
"""

from __future__ import annotations

import argparse
import time
import uuid
from datetime import UTC, datetime, timedelta

import anyio
import httpx
import orjson
import psutil

from sgp_client.testing import ServerProcess


def make_bodies(batches: int, batch_size: int, *, completed: bool) -> list[bytes]:
    start = datetime.now(UTC)
    bodies = []
    for _ in range(batches):
        trace = uuid.uuid4().hex
        items: list[dict[str, object]] = []
        for j in range(batch_size):
            item = {
                "id": uuid.uuid4().hex,
                "trace_id": trace,
                "parent_id": None if j == 0 else items[0]["id"],
                "name": f"span-{j}",
                "type": "CUSTOM",
                "start_timestamp": start.isoformat(),
                "input": {"question": "x" * 60},
                "output": {"answer": "y" * 60},
                "metadata": {"k": j},
            }
            if completed:
                item["end_timestamp"] = (start + timedelta(seconds=1)).isoformat()
                item["status"] = "SUCCESS"
            items.append(item)
        bodies.append(orjson.dumps({"items": items}))
    return bodies


async def run(srv: ServerProcess, bodies: list[bytes], concurrency: int) -> float:
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--db", default=":memory:")
    parser.add_argument("--in-progress", action="store_true", help="send spans without end")
    args = parser.parse_args()
    bodies = make_bodies(args.batches, args.batch_size, completed=not args.in_progress)
    size = sum(map(len, bodies)) / (args.batches * args.batch_size)
    with ServerProcess(db=args.db) as srv:
        anyio.run(run, srv, bodies[:10], args.concurrency)  # warm up
        srv.reset()
        server = psutil.Process(srv.pid)
        cpu0 = sum(server.cpu_times()[:2])  # user + system
        elapsed = anyio.run(run, srv, bodies, args.concurrency)
        cpu = sum(server.cpu_times()[:2]) - cpu0
        items = args.batches * args.batch_size
        assert srv.count() == items, srv.count()
    print(
        f"{items} items ({size:.0f} B each) in {elapsed:.2f} s: "
        f"{items / elapsed:,.0f} items/s, {args.batches / elapsed:,.0f} requests/s; "
        f"server CPU {cpu:.2f} s = {items / cpu:,.0f} items per CPU-second"
    )


if __name__ == "__main__":
    main()
