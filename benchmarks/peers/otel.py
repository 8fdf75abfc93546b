"""Benchmark workloads through OpenTelemetry's SDK: `BatchSpanProcessor` + OTLP/HTTP exporter.

The peer as users get it: a `TracerProvider` with `BatchSpanProcessor(OTLPSpanExporter(...))`
and every setting at its default (queue of 2,048 spans, batches of 512, a 5 s schedule
delay, one worker thread, a 10 s export timeout; a full queue silently drops the oldest
span). Only the exporter's endpoint is changed, to a local counting sink
(`benchmarks.peers.otlp_sink`).

Each workload runs in a fresh child process (`python -m benchmarks.peers.otel burst
--endpoint URL --spans N` prints one JSON line), so no global provider or atexit hook leaks
between runs; the parent polls the sink's count meanwhile to time delivery.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from typing import Any

from ._common import (
    EXIT_UNAVAILABLE,
    HotPathResult,
    PeerResult,
    burst_result,
    drive_child,
    emit,
    hot_path_result,
    require,
    summarize_ns,
)
from .otlp_sink import OtlpSinkProcess

__all__ = ["SYSTEM", "hot_path", "hot_path_us", "main", "run_burst", "run_faults"]

SYSTEM = "opentelemetry"
_MODULE = "benchmarks.peers.otel"
_REQUIRED = "opentelemetry.exporter.otlp.proto.http.trace_exporter"

# Small input/output as attributes, the same content the other systems carry.
SPAN_INPUT = {"input.question": "What is the capital of France?"}
SPAN_OUTPUT = {"output.answer": "Paris"}


def run_burst(
    endpoint: str,
    spans: int,
    *,
    count_delivered: Callable[[], int],
    timeout: float = 300.0,
    settle: float = 0.5,
    yield_per_span: bool = True,
    scenario: str = "burst",
) -> PeerResult:
    """Produce `spans` spans as fast as possible through the OTel SDK, in a child process.

    `endpoint` is the full OTLP/HTTP traces URL (`OtlpSinkProcess.traces_endpoint`);
    `count_delivered()` the sink's count (`OtlpSinkProcess.count`). The child ends with
    `TracerProvider.shutdown()`, as a user's program (or the SDK's atexit hook) does.
    """
    require(_REQUIRED, SYSTEM)
    args = ["burst", "--endpoint", endpoint, "--spans", str(spans)]
    if not yield_per_span:
        args.append("--no-yield")
    run = drive_child(
        _MODULE,
        args,
        peer=SYSTEM,
        count_delivered=count_delivered,
        expected=spans,
        timeout=timeout,
        settle=settle,
    )
    notes: Sequence[str] = ()
    if run.report.get("export_failed"):
        notes = (f"exporter gave up on {run.report['export_failed']} spans",)
    return burst_result(system=SYSTEM, scenario=scenario, spans=spans, run=run, notes=notes)


def run_faults(
    sink: OtlpSinkProcess,
    spans: int,
    *,
    every: int = 2,
    retry_after: float = 1.0,
    timeout: float = 300.0,
    yield_per_span: bool = True,
) -> PeerResult:
    """`run_burst` while the sink answers every `every`-th request 503 with Retry-After."""
    sink.set_faults(every, retry_after=retry_after)
    try:
        return run_burst(
            sink.traces_endpoint,
            spans,
            count_delivered=sink.count,
            timeout=timeout,
            yield_per_span=yield_per_span,
            scenario="faults",
        )
    finally:
        sink.set_faults(0)


def hot_path(
    endpoint: str,
    *,
    samples: int = 5000,
    round_size: int = 500,
    timeout: float = 300.0,
) -> HotPathResult:
    """Producer cost of one span start+end, with the batch processor exporting to `endpoint`.

    Samples are taken in rounds of `round_size`; between rounds (untimed) the provider is
    force-flushed, so the measurement never hits the queue-full path.
    """
    require(_REQUIRED, SYSTEM)
    run = drive_child(
        _MODULE,
        [
            "hot",
            "--endpoint",
            endpoint,
            "--samples",
            str(samples),
            "--round-size",
            str(round_size),
        ],
        peer=SYSTEM,
        timeout=timeout,
    )
    return hot_path_result(SYSTEM, run)


def hot_path_us(
    endpoint: str,
    *,
    samples: int = 5000,
    round_size: int = 500,
    timeout: float = 300.0,
) -> float:
    """Median microseconds per span start+end (see `hot_path`)."""
    return hot_path(endpoint, samples=samples, round_size=round_size, timeout=timeout).median_us


# --- the child process ------------------------------------------------------------------


def _provider(endpoint: str) -> tuple[Any, dict[str, int]]:
    """A default TracerProvider + BatchSpanProcessor + OTLP/HTTP exporter.

    The exporter subclass only tallies what the processor hands it (so queue drops are
    `spans - handed`); it exports exactly as the stock one does.
    """
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult
    except ImportError as exc:
        import sys

        sys.stderr.write(f"cannot import {_REQUIRED}: {exc}\n")
        sys.exit(EXIT_UNAVAILABLE)

    tally = {"handed": 0, "failed": 0}

    class CountingExporter(OTLPSpanExporter):  # type: ignore[misc,unused-ignore]
        def export(self, spans: Sequence[Any]) -> Any:
            tally["handed"] += len(spans)
            result = super().export(spans)
            if result is not SpanExportResult.SUCCESS:
                tally["failed"] += len(spans)
            return result

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(CountingExporter(endpoint=endpoint)))
    return provider, tally


def _child_burst(endpoint: str, spans: int, yield_per_span: bool) -> None:
    provider, tally = _provider(endpoint)
    tracer = provider.get_tracer("benchmarks.peers.otel")
    t0 = time.time()
    cpu = time.process_time()
    start = time.perf_counter()
    for i in range(spans):
        with tracer.start_as_current_span(f"span-{i}", attributes=SPAN_INPUT) as span:
            span.set_attributes(SPAN_OUTPUT)
        if yield_per_span:
            time.sleep(0)
    producer_seconds = time.perf_counter() - start
    provider.shutdown()  # joins the worker (30 s default), which exports what is queued
    cpu = time.process_time() - cpu  # the producer and the export thread, to the end
    emit(
        {
            "system": SYSTEM,
            "t0": t0,
            "producer_seconds": producer_seconds,
            "flush_seconds": time.time() - t0 - producer_seconds,
            "cpu_seconds": cpu,
            "submitted": spans,
            "dropped": spans - tally["handed"],
            "export_failed": tally["failed"],
            "notes": [],
        }
    )


def _child_hot(endpoint: str, samples: int, round_size: int) -> None:
    provider, tally = _provider(endpoint)
    tracer = provider.get_tracer("benchmarks.peers.otel")
    perf_ns = time.perf_counter_ns
    timings: list[int] = []
    for _ in range(50):  # warm-up, untimed
        with tracer.start_as_current_span("warm", attributes=SPAN_INPUT) as span:
            span.set_attributes(SPAN_OUTPUT)
    provider.force_flush()
    while len(timings) < samples:
        for _ in range(min(round_size, samples - len(timings))):
            t = perf_ns()
            with tracer.start_as_current_span("hot", attributes=SPAN_INPUT) as span:
                span.set_attributes(SPAN_OUTPUT)
            timings.append(perf_ns() - t)
        provider.force_flush()
    provider.shutdown()
    emit({"system": SYSTEM, **summarize_ns(timings), "export_failed": tally["failed"]})


def main(argv: list[str] | None = None) -> None:
    """CLI: `burst` or `hot`, one JSON line on stdout."""
    parser = argparse.ArgumentParser(prog=f"python -m {_MODULE}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("burst", "hot"):
        p = sub.add_parser(name)
        p.add_argument("--endpoint", required=True, help="e.g. http://127.0.0.1:4318/v1/traces")
        if name == "burst":
            p.add_argument("--spans", type=int, default=20_000)
            p.add_argument("--no-yield", action="store_true", help="no time.sleep(0) per span")
        else:
            p.add_argument("--samples", type=int, default=5000)
            p.add_argument("--round-size", type=int, default=500)
    args = parser.parse_args(argv)
    if args.command == "burst":
        _child_burst(args.endpoint, args.spans, not args.no_yield)
    else:
        _child_hot(args.endpoint, args.samples, args.round_size)


if __name__ == "__main__":
    main()
