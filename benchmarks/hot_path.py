"""Micro-benchmark of the tracing hot path: ``async with tracer.span(...)`` per span.

    python -m benchmarks.hot_path [--spans N] [--rounds R] [--profile]

Measures the median (and min) µs per span (start and end events, both submitted, no I/O) on
asyncio and on trio, with (a) a null sink taking the processor's fast path
(``submit_record``): the tracing layer alone, (b) a null sink with ``submit`` only, as a
third-party sink (a ``SpanItem`` built per event, timestamps converted to datetimes) and
(c) the real ``UpsertQueue`` (its submit only: the worker runs between rounds), for a
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
import orjson

from sgp_client import SpanItem, SpanRecord, new_span_id
from sgp_tracing import SGPTracingProcessor, Span, Tracer
from sgp_tracing._span import end_clock, start_clock


class NullSink:
    """Takes items both ways and does nothing: the cost of the tracing layer alone."""

    takes_records = True

    def submit(self, item: SpanItem, /) -> None:
        pass

    def submit_record(self, record: SpanRecord, /) -> None:
        pass


class SubmitOnlySink:
    """A sink with ``submit`` only, like a third-party one: the processor builds items."""

    def submit(self, item: SpanItem, /) -> None:
        pass


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
    elif kind == "submit-only":
        yield SubmitOnlySink(), nothing
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


SINKS = ("null", "submit-only", "UpsertQueue")
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
    started = Span(id=sid, trace_id=sid, name="x", start_time=now, input=payload)
    ended = Span(id=sid, trace_id=sid, name="x", start_time=now, input=payload, output=payload)
    start_clock(started, time.time_ns())
    start_clock(ended, time.time_ns())
    end_clock(ended, time.time_ns())
    ended.status = "SUCCESS"
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
        ("time.time_ns()", time.time_ns),
        ("datetime.now(UTC) (not used)", lambda: datetime.now(UTC)),
        (
            "the end's snapshot (dumps + exact copy)",
            lambda: b"".join((orjson.dumps({"input": payload, "output": payload}), b"")),
        ),
        ("processor.on_span_start (null sink)", lambda: processor.on_span_start(started)),
        ("processor.on_span_end (null sink)", lambda: processor.on_span_end(ended)),
        ("SpanItem(...) (validating, not used)", validated_item),
    ]
    out = []
    for label, fn in pieces:
        number = 100_000
        best = min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6
        out.append((label, best))
    return out


def profile(backend: str, spans: int) -> str:
    """cProfile of root spans into the null sink; the top entries by own time."""
    tracer = Tracer(SGPTracingProcessor(NullSink()))
    profiler = cProfile.Profile()

    async def run() -> None:
        profiler.enable()
        await _root_spans(tracer, spans)
        profiler.disable()

    anyio.run(run, backend=backend)
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
