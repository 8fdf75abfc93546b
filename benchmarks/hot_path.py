"""Micro-benchmark of the tracing hot path: ``async with tracer.span(...)`` per span.

    python -m benchmarks.hot_path [--spans N] [--rounds R] [--profile]

Measures the median (and min) µs per span (start and end events, both submitted, no I/O) on
asyncio and on trio, with (a) a null sink and (b) a sink doing what ``UpsertQueue.submit``
does (encode the item, insert it in a dict keyed by (trace_id, id), coalescing check) and
(c) the real ``UpsertQueue`` (its ``submit`` only: the worker runs between rounds), for a
root span (a new trace each time) and for a child span inside an open trace. Then the cost of
each piece on its own, to show where the time goes. Compare ratios within one run: the
machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import pstats
import statistics
import time
import timeit
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import anyio

from sgp_client import SpanItem, new_span_id
from sgp_client._serialization import encode_item
from sgp_tracing import SGPTracingProcessor, Span, Tracer
from sgp_tracing._items import make_item, payloads_fit


class NullSink:
    """Takes items and does nothing: the cost of the tracing layer alone."""

    def submit(self, item: SpanItem, /) -> None:
        pass


class QueueLikeSink:
    """What the queue's submit does, minus the wake-up of its worker."""

    def __init__(self) -> None:
        self.pending: dict[tuple[str, str], tuple[bool, bytes]] = {}
        self.coalesced = 0

    def submit(self, item: SpanItem, /) -> None:
        encoded = encode_item(item)
        key = (item.trace_id, item.id)
        completed = item.end_timestamp is not None
        old = self.pending.get(key)
        if old is not None:
            self.coalesced += 1
            if old[0] and not completed:
                return  # a completed item beats an in-progress one
        self.pending[key] = (completed, encoded)
        if len(self.pending) >= 500:
            self.pending.clear()  # stands in for a flush


async def _root_spans(tracer: Tracer, n: int) -> float:
    output = {"answer": "hello"}
    begin = time.perf_counter_ns()
    for _ in range(n):
        async with tracer.span("x", input={"q": "hi"}) as span:
            span.output = output
    return (time.perf_counter_ns() - begin) / n / 1000


async def _child_spans(tracer: Tracer, n: int) -> float:
    output = {"answer": "hello"}
    async with tracer.trace("root"):
        begin = time.perf_counter_ns()
        for _ in range(n):
            async with tracer.span("x", input={"q": "hi"}) as span:
                span.output = output
        return (time.perf_counter_ns() - begin) / n / 1000


async def _empty_loop(n: int) -> float:
    # The loop and the dict displays alone, to subtract by eye.
    begin = time.perf_counter_ns()
    for _ in range(n):
        _ = {"q": "hi"}
    return (time.perf_counter_ns() - begin) / n / 1000


@asynccontextmanager
async def _sink(kind: str) -> AsyncIterator[tuple[Any, Callable[[], Awaitable[object]]]]:
    """The sink of a row, and what to await between rounds (the queue drains there)."""

    async def nothing() -> None:
        pass

    if kind == "null":
        yield NullSink(), nothing
    elif kind == "queue-like":
        yield QueueLikeSink(), nothing
    else:
        # The real UpsertQueue over the in-process server. The span loop never yields, so
        # the queue's worker runs only between rounds: a round measures submit() alone.
        from sgp_client import AsyncSGPClient, UpsertQueue
        from sgp_client.testing import (
            DEFAULT_ACCOUNT_ID,
            DEFAULT_API_KEY,
            asgi_transport,
            create_app,
        )

        async with (
            AsyncSGPClient(
                transport=asgi_transport(create_app()),
                base_url="http://127.0.0.1/public",
                api_key=DEFAULT_API_KEY,
                account_id=DEFAULT_ACCOUNT_ID,
            ) as client,
            UpsertQueue(client, max_pending=1_000_000) as queue,
        ):
            yield queue, queue.flush


SINKS = ("null", "queue-like", "UpsertQueue")
SHAPES = ("root", "child")


def measure(backend: str, *, spans: int, rounds: int) -> dict[tuple[str, str], list[float]]:
    """µs per span of every (sink, shape), ``rounds`` samples each.

    Rounds are interleaved across the configurations, so a burst of load from elsewhere on
    the machine hits all of them alike and the ratios stay meaningful.
    """

    async def main() -> dict[tuple[str, str], list[float]]:
        samples: dict[tuple[str, str], list[float]] = {}
        async with AsyncExitStack() as stack:
            setups = []
            for kind in SINKS:
                try:
                    sink, between = await stack.enter_async_context(_sink(kind))
                except ImportError as exc:  # the server extra is not installed
                    print(f"{backend}: {kind} skipped ({exc})")
                    continue
                tracer = Tracer(SGPTracingProcessor(sink))
                for shape in SHAPES:
                    run = _root_spans if shape == "root" else _child_spans
                    await run(tracer, spans)  # warm-up
                    setups.append(((kind, shape), tracer, run, between))
            for _ in range(rounds):
                for key, tracer, run, between in setups:
                    await between()
                    gc.collect()
                    samples.setdefault(key, []).append(await run(tracer, spans))
            for _, _, _, between in setups:
                await between()
        return samples

    return anyio.run(main, backend=backend)


def components() -> list[tuple[str, float]]:
    """µs of each piece of the hot path, measured alone."""
    now = datetime.now(UTC)
    sid = new_span_id()
    payload = {"q": "hi"}
    item = make_item("x", sid, sid, None, None, now, now, "SUCCESS", None, payload, payload, None)
    span = Span(id=sid, trace_id=sid, name="x", start_time=now, input=payload, end_time=now)
    processor = SGPTracingProcessor(NullSink())

    def validated_item() -> SpanItem:
        return SpanItem(
            name="x",
            trace_id=sid,
            id=sid,
            start_timestamp=now,
            end_timestamp=now,
            status="SUCCESS",
            input=payload,
            output=payload,
        )

    pieces: list[tuple[str, Callable[[], object]]] = [
        ("new_span_id()", new_span_id),
        ("datetime.now(UTC)", lambda: datetime.now(UTC)),
        ("Span(...) (attrs, slots)", lambda: Span(id=sid, trace_id="", name="x", start_time=now)),
        ("payloads_fit({'q': 'hi'}, ...)", lambda: payloads_fit(payload, payload, None, 1 << 20)),
        (
            "make_item (trusted SpanItem)",
            lambda: make_item(
                "x", sid, sid, None, None, now, now, "SUCCESS", None, payload, payload, None
            ),
        ),
        ("SpanItem(...) (validating)", validated_item),
        ("encode_item(end item)", lambda: encode_item(item)),
        ("processor.on_span_end (null sink)", lambda: processor.on_span_end(span)),
    ]
    out = []
    for label, fn in pieces:
        number = 100_000
        best = min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6
        out.append((label, best))
    return out


def profile(backend: str, spans: int) -> str:
    """cProfile of root spans into the queue-like sink; the top entries by own time."""
    tracer = Tracer(SGPTracingProcessor(QueueLikeSink()))
    profiler = cProfile.Profile()

    async def main() -> None:
        profiler.enable()
        await _root_spans(tracer, spans)
        profiler.disable()

    anyio.run(main, backend=backend)
    stream = io.StringIO()
    pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(14)
    return stream.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spans", type=int, default=2_000, help="spans per round")
    parser.add_argument("--rounds", type=int, default=41, help="rounds; median and min shown")
    parser.add_argument("--profile", action="store_true", help="also print a cProfile summary")
    args = parser.parse_args()

    print(f"µs per span, median (min) of {args.rounds} rounds of {args.spans} spans\n")
    print(f"{'backend':<9} {'sink':<13} {'root span':>15} {'child span':>15}")
    for backend in ("asyncio", "trio"):
        samples = measure(backend, spans=args.spans, rounds=args.rounds)
        for kind in SINKS:
            cells = []
            for shape in SHAPES:
                values = samples.get((kind, shape))
                if not values:
                    cells.append(f"{'-':>15}")
                    continue
                cells.append(f"{statistics.median(values):>7.2f} ({min(values):5.2f})")
            print(f"{backend:<9} {kind:<13} {cells[0]:>15} {cells[1]:>15}")
    loop = statistics.median(anyio.run(_empty_loop, args.spans) for _ in range(5))
    print(f"\n(loop overhead alone: {loop:.3f} µs)\n")
    print("pieces, measured alone (best of 5, µs):")
    for label, cost in components():
        print(f"  {label:<36} {cost:6.3f}")
    if args.profile:
        for backend in ("asyncio", "trio"):
            print(f"\ncProfile, {backend}, root spans into the queue-like sink:")
            print(profile(backend, args.spans))


if __name__ == "__main__":
    main()
