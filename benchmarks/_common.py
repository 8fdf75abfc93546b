"""Shared plumbing of ``python -m benchmarks``: result rows, sizes, servers, payloads, progress.

Every scenario returns `Row`s; `Bench` is what a scenario gets to work with: the local SGP
server (a subprocess on loopback, SQLite in a file), the OTLP sink for OpenTelemetry (also a
subprocess), the sizes of this run, a progress line printer, and counters read where the spans
land.
"""

from __future__ import annotations

import os
import platform
import sqlite3
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import anyio
import anyio.lowlevel

from benchmarks.peers import OtlpSinkProcess, PeerUnavailable, check_available
from sgp_client import (
    AsyncSGPClient,
    QueueStats,
    SpanItem,
    UpsertQueue,
    new_span_id,
    plain_record,
)
from sgp_client.testing import ServerProcess
from sgp_tracing import SGPTracingProcessor, Tracer

__all__ = [
    "BACKENDS",
    "FULL",
    "OTEL",
    "OURS",
    "QUICK",
    "SCALE_GP",
    "Bench",
    "Row",
    "Sizes",
    "PRODUCERS",
    "burst_producer",
    "machine_line",
    "new_trace_id",
    "open_bench",
    "queue_extra",
    "queue_notes",
    "span_items",
]

OURS: Final = "sgp_async"
SCALE_GP: Final = "scale-gp-beta"
OTEL: Final = "opentelemetry"
PEERS: Final = (SCALE_GP, OTEL)
BACKENDS: Final = ("asyncio", "trio")

# ~150 characters each side: with the key and id digits, ~300 bytes of payload per span.
_FILLER: Final = "x" * 144


@dataclass(kw_only=True)
class Row:
    """One line of the results table (and one object of the JSON list).

    `delivered` is counted where the spans land (the server's completed rows, the OTLP sink's
    distinct spans); `extra` holds whatever else a scenario measures and is merged into the
    JSON object.
    """

    scenario: str
    system: str
    backend: str
    spans: int
    delivered: int | None
    spans_per_s: float | None
    hot_us_per_span: float | None = None
    seconds: float | None = None
    # CPU of the client process (`time.process_time`, every thread) per delivered span:
    # what the SDK costs the application, whatever the wall clock did meanwhile.
    cpu_us_per_span: float | None = None
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """Every span arrived (rows that measure no delivery count as complete)."""
        return self.delivered is None or self.delivered >= self.spans

    def to_dict(self) -> dict[str, Any]:
        base: dict[str, Any] = {
            "system": self.system,
            "backend": self.backend,
            "scenario": self.scenario,
            "spans": self.spans,
            "delivered": self.delivered,
            "spans_per_s": self.spans_per_s,
            "hot_us_per_span": self.hot_us_per_span,
            "seconds": self.seconds,
            "cpu_us_per_span": self.cpu_us_per_span,
            "notes": list(self.notes),
        }
        # The schema's own keys come first and win: a scenario cannot redefine them.
        return {**base, **{k: v for k, v in self.extra.items() if k not in base}}


@dataclass(frozen=True, kw_only=True)
class Sizes:
    """How big each scenario is; `QUICK` keeps the whole run under two minutes."""

    burst_spans: int = 20_000  # the issue fixes this one, quick or not
    # Each burst row (ours and the peers' like-for-like rows) is the median of this many
    # runs: one run on this shared machine swings by a third.
    burst_runs: int = 3
    hot_samples: int = 20_000
    hot_round: int = 500
    trickle_rate: float = 100.0
    trickle_seconds: float = 10.0
    fault_spans: int = 5_000
    fault_spans_scale_gp: int = 1_000
    slow_spans: int = 16_000
    slow_latency: float = 0.3
    slow_in_flight: tuple[int, ...] = (1, 2, 4, 8, 16)
    memory_spans: int = 100_000
    scaling_spans: int = 20_000
    scaling_batch_sizes: tuple[int, ...] = (100, 250, 500, 1000)
    scaling_in_flight: tuple[int, ...] = (1, 2, 4, 8, 16)
    fleet_workers: int = 4
    fleet_runs: int = 300
    peer_timeout: float = 300.0
    # wan: the server's latency per request (0 = loopback as is), our burst, and the peers'
    # smaller burst with a time cap (scale-gp-beta sends 50 items a request, one at a time:
    # at 300 ms that is ~170 spans/s, so 100,000 spans would take ten minutes).
    wan_latencies: tuple[float, ...] = (0.0, 0.05, 0.15, 0.3)
    wan_spans: int = 100_000
    wan_runs: int = 3  # our rows are the median of this many runs, as in `burst`
    wan_peer_spans: int = 2_000
    wan_peer_timeout: float = 120.0
    # wan, through agentex (at 150 ms): the same burst for our adapter and agentex's own
    # processor, capped (agentex's span queue sends 3 batches of 200 at a time).
    wan_agentex_spans: int = 10_000
    wan_agentex_timeout: float = 120.0


FULL: Final = Sizes()
QUICK: Final = Sizes(
    hot_samples=5_000,
    trickle_seconds=2.0,
    fault_spans=2_000,
    # scale-gp-beta sends 50-item batches one after another and waits out each Retry-After:
    # a few hundred spans already take it several seconds.
    fault_spans_scale_gp=200,
    slow_spans=3_000,
    memory_spans=50_000,
    scaling_spans=6_000,
    scaling_in_flight=(1, 8),
    fleet_runs=40,
    peer_timeout=60.0,
    wan_peer_spans=1_000,
    wan_peer_timeout=60.0,
    wan_agentex_timeout=60.0,
)


class Bench:
    """What a scenario works with; made by `open_bench`."""

    def __init__(
        self,
        *,
        server: ServerProcess,
        db_path: Path,
        sink: OtlpSinkProcess | None,
        sink_error: str | None,
        sizes: Sizes,
        backends: tuple[str, ...],
        workdir: Path,
        with_peers: bool = True,
        quiet: bool = False,
    ) -> None:
        self.server = server
        self.db_path = db_path
        self.sink = sink
        self._sink_error = sink_error
        self.sizes = sizes
        self.backends = backends
        self.workdir = workdir
        self.with_peers = with_peers
        self.quiet = quiet
        self._started = time.monotonic()
        self._db: sqlite3.Connection | None = None
        self._counted_at = 0.0
        self._counted: tuple[str | None, int] = (None, 0)

    # -- progress ----------------------------------------------------------------------

    def progress(self, message: str) -> None:
        """One ``[bench]`` line on stderr, with the time since the run began."""
        if self.quiet:
            return
        elapsed = time.monotonic() - self._started
        print(f"[bench] {elapsed:6.1f}s {message}", file=sys.stderr, flush=True)

    # -- our SDK -----------------------------------------------------------------------

    def client(self, **kwargs: Any) -> AsyncSGPClient:
        """A client of the local server (kwargs go to `AsyncSGPClient`)."""
        return AsyncSGPClient(
            api_key=self.server.api_key,
            account_id=self.server.account_id,
            base_url=self.server.base_url,
            **kwargs,
        )

    # -- what landed -------------------------------------------------------------------

    def completed(self, trace_id: str | None = None) -> int:
        """Completed spans (an end timestamp) the server stored, optionally of one trace.

        Read from the server's SQLite file: the admin API counts rows, and a row may still
        be an in-progress start, which is not a delivered span.
        """
        if self._db is None:
            # Autocommit: every SELECT sees the server's latest committed writes (WAL).
            self._db = sqlite3.connect(self.db_path, isolation_level=None, timeout=30)
        sql = "SELECT COUNT(*) FROM spans WHERE end_us IS NOT NULL"
        params: tuple[str, ...] = ()
        if trace_id is not None:
            sql += " AND trace_id = ?"
            params = (trace_id,)
        return int(self._db.execute(sql, params).fetchone()[0])

    def completed_polled(self, trace_id: str) -> int:
        """`completed` at most every 0.1 s: the peer drivers poll every 20 ms, and a table
        scan that often would steal a core from the system being measured."""
        now = time.monotonic()
        if self._counted[0] == trace_id and now - self._counted_at < 0.1:
            return self._counted[1]
        value = self.completed(trace_id)
        self._counted = (trace_id, value)
        self._counted_at = now
        return value

    def reset_server(self) -> None:
        """Forget stored spans, counters and faults between scenarios."""
        self.server.reset()
        self._counted = (None, 0)

    # -- peers -------------------------------------------------------------------------

    def peer_unavailable(self, system: str) -> str | None:
        """Why peer `system` cannot run here, or None when it can."""
        if not self.with_peers:
            return "peers not requested"
        try:
            check_available(system)
        except PeerUnavailable as exc:
            return str(exc)
        if system == OTEL and self.sink is None:
            return f"the OTLP sink did not start: {self._sink_error}"
        return None

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


@contextmanager
def open_bench(
    sizes: Sizes,
    *,
    backends: tuple[str, ...] = BACKENDS,
    with_peers: bool = True,
    quiet: bool = False,
) -> Iterator[Bench]:
    """Start the local SGP server (and, with peers, the OTLP sink for OpenTelemetry)."""
    import tempfile

    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sgp-bench-")))
        db_path = workdir / "spans.sqlite3"
        # SGP's legacy store, where a late in-progress write reopens a span (the fleet rows
        # count it); no credential masking: it is the server's CPU (about 30% of its ingest),
        # taken from the client's share of these 2 cores, and the real API does it elsewhere.
        server = stack.enter_context(
            ServerProcess(db=db_path, store="legacy", mask_credentials=False)
        )
        sink: OtlpSinkProcess | None = None
        sink_error: str | None = None
        if with_peers:
            try:
                check_available(OTEL)
                sink = stack.enter_context(OtlpSinkProcess())
            except (PeerUnavailable, RuntimeError) as exc:
                sink_error = str(exc)
        bench = Bench(
            server=server,
            db_path=db_path,
            sink=sink,
            sink_error=sink_error,
            sizes=sizes,
            backends=backends,
            workdir=workdir,
            with_peers=with_peers,
            quiet=quiet,
        )
        stack.callback(bench.close)
        yield bench


# -- the workload ----------------------------------------------------------------------


def span_items(trace_id: str, i: int) -> tuple[SpanItem, SpanItem]:
    """The start and the end of span number `i`: ~300 bytes of input and output.

    Fresh dicts and strings for every span, as an application makes them: a shared payload
    object would make the memory measurements look better than they are.
    """
    span_id = new_span_id()
    start = datetime.now(UTC)
    payload = {"q": f"{i:06d}{_FILLER}"}
    begin = SpanItem(
        name="bench", trace_id=trace_id, id=span_id, start_timestamp=start, input=payload
    )
    end = SpanItem(
        name="bench",
        trace_id=trace_id,
        id=span_id,
        start_timestamp=start,
        end_timestamp=datetime.now(UTC),
        status="SUCCESS",
        input=payload,
        output={"a": f"{i:06d}{_FILLER}"},
    )
    return begin, end


#: The producers of the throughput scenarios (see `burst_producer`).
PRODUCERS = ("tracer", "items", "prepared")


async def burst_producer(
    queue: UpsertQueue, trace_id: str, spans: int, producer: str = "tracer"
) -> float:
    """Produce `spans` spans, yielding once per span; returns the producer's seconds.

    The yield sits between a span's start and its end, as in an agent where the span wraps an
    await: the queue's worker gets to run, and may send the start before its end exists.

    - ``tracer``: the SDK as an agent uses it, ``async with tracer.trace(...)`` through
      `SGPTracingProcessor` (like the peers' runners, which use their own span APIs);
    - ``items``: the queue's own API, a validated `SpanItem` for the start and one for the
      end, each passed to ``queue.submit``;
    - ``prepared``: the queue's fast API, ``queue.submit_record`` with a record built by
      ``plain_record`` (the shape check and the content snapshot), exactly as
      `SGPTracingProcessor` calls it: the queue's own cost, without the tracer's span objects.

    All carry the same ~300-byte input and output, fresh for every span.
    """
    checkpoint = anyio.lowlevel.checkpoint
    if producer == "prepared":
        submit = queue.submit_record
        limit = 1 << 20
        begin = time.perf_counter()
        for i in range(spans):
            span_id, started = new_span_id(), time.time_ns()
            given = {"q": f"{i:06d}{_FILLER}"}
            record = plain_record(
                trace_id, span_id, None, None, "bench", started, None, None, None,
                given, None, None, limit,
            )  # fmt: skip
            assert record is not None
            submit(record)
            await checkpoint()
            output = {"a": f"{i:06d}{_FILLER}"}
            ended = time.time_ns()
            record = plain_record(
                trace_id, span_id, None, None, "bench", started, ended, "SUCCESS", None,
                given, output, None, limit,
            )  # fmt: skip
            assert record is not None
            submit(record)
        return time.perf_counter() - begin
    if producer == "items":
        begin = time.perf_counter()
        for i in range(spans):
            start, end = span_items(trace_id, i)
            queue.submit(start)
            await checkpoint()
            queue.submit(end)
        return time.perf_counter() - begin
    if producer != "tracer":
        raise ValueError(f"unknown producer {producer!r}; expected one of {PRODUCERS}")
    tracer = Tracer(SGPTracingProcessor(queue))
    trace = tracer.trace
    begin = time.perf_counter()
    for i in range(spans):
        async with trace("bench", trace_id=trace_id, input={"q": f"{i:06d}{_FILLER}"}) as span:
            await checkpoint()
            span.output = {"a": f"{i:06d}{_FILLER}"}
    return time.perf_counter() - begin


def new_trace_id() -> str:
    return uuid.uuid4().hex


def queue_notes(stats: QueueStats) -> list[str]:
    """What a row should say about the queue's own accounting, if anything is off."""
    notes = []
    if stats.dropped_total:
        dropped = ", ".join(f"{k}={v}" for k, v in sorted(stats.dropped.items()) if v)
        notes.append(f"queue dropped {dropped}")
    if not stats.balanced:
        notes.append("queue accounting NOT balanced")
    return notes


def queue_extra(stats: QueueStats) -> dict[str, Any]:
    """The queue's counters, for the JSON row."""
    return {
        "requests": stats.requests,
        "retries": stats.retries,
        "coalesced": stats.coalesced,
        "dropped": dict(stats.dropped),
        "balanced": stats.balanced,
    }


def machine_line() -> str:
    """Cores, CPU model and Python version: the context every number needs."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        model = platform.processor() or model
    return (
        f"machine: {os.cpu_count()} cores, {model}, Python {platform.python_version()} "
        f"({platform.python_implementation()}), {platform.system()} {platform.release()}"
    )
