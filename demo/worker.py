"""One worker process of the demo fleet: runs span activities it is handed, like a Temporal
worker runs activities, and reports its counters at the end.

Each worker has its own client, queue, processor and tracer. ``start`` activities start a span
and hand back ``span.to_dict()``; ``end`` activities rebuild the span with ``Span.from_dict``
and end it, usually in another worker than the one that started it. A start is delivered
before its span's dict is handed back: the cross-process guarantee.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import anyio

from sgp_client import AsyncSGPClient, UpsertQueue
from sgp_tracing import SGPTracingProcessor, Span, Tracer, TracingProcessor

from .stateful import StatefulProcessor
from .wire import JsonLines

__all__ = ["main"]


async def serve(port: int, worker_id: int, *, stateful: bool) -> None:
    stream = await anyio.connect_tcp("127.0.0.1", port)
    wire = JsonLines(stream)
    # Settings come from the environment the coordinator set (or the user's, with --remote).
    async with AsyncSGPClient() as client, UpsertQueue(client) as queue:
        processor: TracingProcessor = (
            StatefulProcessor(queue) if stateful else SGPTracingProcessor(queue)
        )
        tracer = Tracer(processor)
        await wire.send({"hello": worker_id, "pid": os.getpid()})
        while True:
            message = await wire.receive()
            op = message["op"]
            if op == "start":
                # The span's dict leaves this process next: its start is delivered first, or
                # another worker's end could land before it (reopening the span on SGP's
                # legacy store). The stateful processor has no awaited path: fire and forget.
                span = await tracer.start_span_delivered(
                    message["name"],
                    trace_id=message["trace_id"],
                    parent_id=message.get("parent_id"),
                    span_id=message.get("span_id"),
                    input=message.get("input"),
                    type=message.get("type"),
                    metadata={"worker": worker_id},
                )
                await wire.send({"task": message["task"], "span": span.to_dict()})
            elif op == "end":
                span = Span.from_dict(message["span"])
                error = message.get("error")
                tracer.end_span(
                    span,
                    output=message.get("output"),
                    error={"type": "ToolError", "message": error} if error else None,
                )
                await wire.send({"task": message["task"]})
            elif op == "stop":
                break
            else:
                await wire.send({"task": message.get("task"), "error": f"unknown op {op!r}"})
        tracer.shutdown()
    # The queue has drained (or hit its deadline) here: its counters are final.
    report: dict[str, Any] = {
        "worker": worker_id,
        "queue": _queue_report(queue),
    }
    if isinstance(processor, SGPTracingProcessor):
        report["processor_dropped"] = dict(processor.stats.dropped)
    if isinstance(processor, StatefulProcessor):
        report["lost_ends"] = processor.lost_ends
        report["leaked_open_spans"] = len(processor.open_spans)
    await wire.send({"final": report})
    await wire.aclose()


def _queue_report(queue: UpsertQueue) -> dict[str, Any]:
    stats = queue.stats
    return {
        "submitted": stats.submitted,
        "delivered": stats.delivered,
        "coalesced": stats.coalesced,
        "requests": stats.requests,
        "retries": stats.retries,
        "dropped": dict(stats.dropped),
        "balanced": stats.balanced,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--worker-id", type=int, required=True)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--stateful", action="store_true")
    args = parser.parse_args()
    anyio.run(
        lambda: serve(args.port, args.worker_id, stateful=args.stateful), backend=args.backend
    )


if __name__ == "__main__":
    main()
