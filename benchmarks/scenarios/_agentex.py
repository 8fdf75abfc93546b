"""The `wan` scenario's "through agentex" rows: agentex-sdk's own tracer, two processors.

The same burst for both: `Sizes.wan_agentex_spans` spans, each ``async with trace.span(...)``
on agentex's ``AsyncTracer`` (its start and its end enqueued on a fresh ``AsyncSpanQueue``
with agentex's defaults: batches of 200, 250 ms linger, 3 sends in flight), one
``asyncio.sleep(0)`` inside each span, against the local server answering every request
after the scenario's latency. Four rows, both processors with starts and end-only:

- ours, ``sgp_tracing.agentex.registered(queue)`` over an ``UpsertQueue`` at its defaults
  (each batch of agentex's awaited until delivered, as in a Temporal activity), writing
  starts and ends (its default), and with ``send_starts=False``;
- agentex's own ``SGPAsyncTracingProcessor``, pointed at the local server as
  `temporal_fleet` does (``SGPTracingProcessorConfig``): end-only (its default: it skips the
  start write) and with starts (``AGENTEX_TRACING_SKIP_SPAN_START=0``).

Ratios pair our row with agentex's of the same kind (in our rows' notes and JSON). Either way
agentex's span queue bounds the throughput: an END batch waits for the START batches in
flight, 3 sends at a time, so writing starts costs a round trip per batch.

Timed from the first span until agentex's span queue is drained (and, for ours, our queue
flushed), capped at `Sizes.wan_agentex_timeout` seconds (the span queue's shutdown timeout);
client CPU is ``time.process_time`` over the same stretch. asyncio only, as agentex is.
agentex-sdk is optional and needs Python >= 3.12, so it is imported here, lazily, untyped.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from benchmarks._common import OURS, Bench, Row, new_trace_id

__all__ = ["AGENTEX_SDK", "agentex_rows"]

#: The system name of agentex's own processor's row.
AGENTEX_SDK = "agentex-sdk"
_FILLER = "x" * 144
#: agentex's switch for its processor's start writes (on unless "0", "false", "no", "off").
_SKIP_START = "AGENTEX_TRACING_SKIP_SPAN_START"


def _import_agentex() -> dict[str, Any]:
    # litellm (imported by agentex) fetches a price list at import unless told to use its
    # bundled copy; agentex's environment needs an agent name and an ACP URL.
    for name, value in (
        ("LITELLM_LOCAL_MODEL_COST_MAP", "True"),
        ("AGENT_NAME", "sgp-bench"),
        ("ACP_URL", "http://127.0.0.1:9"),
    ):
        os.environ.setdefault(name, value)
    from agentex import AsyncAgentex
    from agentex.lib.core.tracing.processors.sgp_tracing_processor import (
        SGPAsyncTracingProcessor,
    )
    from agentex.lib.core.tracing.span_queue import AsyncSpanQueue
    from agentex.lib.core.tracing.tracer import AsyncTracer
    from agentex.lib.core.tracing.tracing_processor_manager import (
        GLOBAL_TRACING_PROCESSOR_MANAGER,
    )
    from agentex.lib.types.tracing import SGPTracingProcessorConfig

    return {
        "AsyncAgentex": AsyncAgentex,
        "SGPAsyncTracingProcessor": SGPAsyncTracingProcessor,
        "AsyncSpanQueue": AsyncSpanQueue,
        "AsyncTracer": AsyncTracer,
        "manager": GLOBAL_TRACING_PROCESSOR_MANAGER,
        "SGPTracingProcessorConfig": SGPTracingProcessorConfig,
    }


async def _burst(agentex: dict[str, Any], trace_id: str, spans: int, span_queue: Any) -> float:
    """`spans` spans through agentex's tracer; returns the producer's seconds."""
    # The agentex API client is never called (the tracer only holds it): nothing on port 9.
    async with agentex["AsyncAgentex"](api_key="unused", base_url="http://127.0.0.1:9") as api:
        trace = agentex["AsyncTracer"](api).trace(trace_id, span_queue=span_queue)
        begin = time.perf_counter()
        for i in range(spans):
            async with trace.span("bench", input={"q": f"{i:06d}{_FILLER}"}) as span:
                await asyncio.sleep(0)
                span.output = {"a": f"{i:06d}{_FILLER}"}
        return time.perf_counter() - begin


def _run(bench: Bench, agentex: dict[str, Any], *, ours: bool, starts: bool) -> Row:
    sizes = bench.sizes
    spans, cap = sizes.wan_agentex_spans, sizes.wan_agentex_timeout
    trace_id = new_trace_id()
    manager = agentex["manager"]
    kind = "with starts" if starts else "end-only"
    processor_name = "registered(UpsertQueue)" if ours else "SGPAsyncTracingProcessor"
    label = f"{processor_name}, {kind}"
    bench.progress(f"wan-150ms agentex {label} {spans:,} spans (capped at {cap:.0f} s) ...")
    extra: dict[str, Any] = {}

    async def main() -> tuple[float, float, float, int]:
        span_queue = agentex["AsyncSpanQueue"]()  # agentex's defaults
        before = list(manager.async_processors)
        try:
            if ours:
                from sgp_client import UpsertQueue
                from sgp_tracing.agentex import registered

                async with bench.client() as client, UpsertQueue(client) as queue:
                    cpu, begin = time.process_time(), time.perf_counter()
                    options: dict[str, Any] = {} if starts else {"send_starts": False}
                    async with registered(queue, span_queue=span_queue, **options) as adapter:
                        producing = await _burst(agentex, trace_id, spans, span_queue)
                        # registered() drains agentex's queue on exit; capped here.
                        await span_queue.shutdown(timeout=cap)
                    await queue.flush(timeout=cap)
                    seconds, cpu = time.perf_counter() - begin, time.process_time() - cpu
                    extra.update(requests=queue.stats.requests, adapter_errors=adapter.errors)
                    extra["balanced"] = queue.stats.balanced
            else:
                config = agentex["SGPTracingProcessorConfig"](
                    sgp_api_key=bench.server.api_key,
                    sgp_account_id=bench.server.account_id,
                    sgp_base_url=bench.server.base_url,
                )
                processor = agentex["SGPAsyncTracingProcessor"](config)
                # Read at every batch of starts: "0" writes them, unset is its default.
                skip_before = os.environ.get(_SKIP_START)
                if starts:
                    os.environ[_SKIP_START] = "0"
                else:
                    os.environ.pop(_SKIP_START, None)
                with manager.lock:
                    manager.async_processors.append(processor)
                try:
                    cpu, begin = time.process_time(), time.perf_counter()
                    producing = await _burst(agentex, trace_id, spans, span_queue)
                    await span_queue.shutdown(timeout=cap)
                    seconds, cpu = time.perf_counter() - begin, time.process_time() - cpu
                finally:
                    _restore(_SKIP_START, skip_before)
                    for client in list(processor._clients_by_loop.values()):
                        await client.close()
        finally:
            with manager.lock:
                manager.async_processors[:] = before
        return seconds, producing, cpu, span_queue.dropped_spans

    bench.reset_server()
    bench.server.set_faults(latency=0.15)
    try:
        seconds, producing, cpu, dropped = asyncio.run(main())
    finally:
        bench.server.clear_faults()
    delivered = bench.completed(trace_id)
    served = bench.server.stats()
    notes = [
        "agentex AsyncTracer + AsyncSpanQueue (defaults: 200/batch, 3 in flight)",
        kind + (" (its default)" if starts == ours else ""),
        f"{spans:,} spans, capped at {cap:.0f} s",
    ]
    lost = spans - delivered
    if lost > 0:
        notes.append(f"LOST {lost:,} ({lost / spans:.0%})")
    if dropped:
        notes.append(f"agentex span queue dropped {dropped:,}")
    row = Row(
        scenario="wan-150ms",
        system=f"{OURS} via agentex" if ours else AGENTEX_SDK,
        backend=f"asyncio, {kind}" if ours else f"asyncio, SGPAsyncTracingProcessor, {kind}",
        spans=spans,
        delivered=delivered,
        spans_per_s=delivered / seconds if seconds > 0 else None,
        hot_us_per_span=producing / spans * 1e6,
        seconds=seconds,
        cpu_us_per_span=cpu / delivered * 1e6 if delivered else None,
        notes=notes,
        extra={
            **extra,
            "server_latency_s": 0.15,
            "upsert_requests": served["upsert_requests"],
            "agentex_dropped": dropped,
            "cpu_seconds": cpu,
            "timed_out": seconds >= cap,
            "writes_starts": starts,
        },
    )
    bench.progress(
        f"wan-150ms agentex {label}: {delivered:,}/{spans:,} delivered, "
        f"{row.spans_per_s or 0:,.0f} spans/s ({seconds:.2f} s)"
    )
    return row


def _restore(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def _add_ratios(ours: Row, theirs: Row) -> None:
    ratio = cpu_ratio = None
    if ours.spans_per_s and theirs.spans_per_s:
        ratio = ours.spans_per_s / theirs.spans_per_s
        ours.notes.append(f"{ratio:.2f}x agentex's spans/s")
    if ours.cpu_us_per_span and theirs.cpu_us_per_span:
        cpu_ratio = theirs.cpu_us_per_span / ours.cpu_us_per_span
        ours.notes.append(f"agentex's CPU/span {cpu_ratio:.2f}x ours")
    ours.extra.update(ratio_vs_agentex=ratio, cpu_ratio_vs_agentex=cpu_ratio)


def agentex_rows(bench: Bench) -> list[Row]:
    """Ours through agentex and agentex's own processor, with starts and end-only; each of
    our rows carries its ratios to agentex's row of the same kind."""
    agentex = _import_agentex()
    rows = []
    for starts in (True, False):
        ours = _run(bench, agentex, ours=True, starts=starts)
        theirs = _run(bench, agentex, ours=False, starts=starts)
        _add_ratios(ours, theirs)
        rows += [ours, theirs]
    return rows
