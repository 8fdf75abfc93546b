"""wan: a tracer burst against a server that takes 0, 50, 150 or 300 ms per request.

Real SGP answers an upsert in about 150 ms p50 (330 ms p95) while serving many requests at
once; the local server's latency fault (an ``anyio.sleep`` per API request, so slow requests
still overlap) plays that, and the OTLP sink gets the same delay for OpenTelemetry. At a
given latency a client's throughput is spans per request x requests in flight / latency, so
this is where the queue's concurrency decides what users get.

Rows, at every latency (scenario ``wan-<ms>ms``, so ratios pair rows of one latency):
- ours through the tracer (as `burst`), default settings (``max_in_flight="adaptive"``), on
  every backend of the run, `Sizes.wan_spans` spans;
- ours on the first backend with ``max_in_flight=8``, the old fixed default, for comparison;
- scale-gp-beta and OpenTelemetry at their defaults, `Sizes.wan_peer_spans` spans (fewer:
  scale-gp-beta sends 50 items a request, one request at a time) within
  `Sizes.wan_peer_timeout` seconds, with `time.sleep(0)` per span as in `burst`;
- through agentex, at 150 ms (`._agentex`): agentex's own ``AsyncTracer`` and span queue
  with our adapter, and with agentex's own ``SGPAsyncTracingProcessor``, the same
  `Sizes.wan_agentex_spans` spans each, capped at `Sizes.wan_agentex_timeout` seconds, the
  ratios in our rows' notes; agentex-sdk needs Python >= 3.12, so elsewhere (or with the
  peers not requested) a skipped row says why.

Our rows say what bounded them (`_note_the_bound`): the share of the run spent producing
(100%: delivered as fast as the client made the spans, its CPU ceiling) and how much of a
core the client got.

Each of our rows is the median of `Sizes.wan_runs` runs (3; every run's figure in the notes:
on this shared machine one run swings by half), the peers' rows one time-capped run each;
the client CPU column is ``time.process_time`` of the client process per delivered span.
"""

from __future__ import annotations

import importlib.util
import sys
from functools import partial
from typing import Any

from benchmarks._common import OTEL, OURS, SCALE_GP, Bench, Row

from ._ours import run_burst
from ._peers import peer_burst, skipped
from .burst import median_run

__all__ = ["AGENTEX", "run", "scenario_name"]

#: The system name of the "through agentex" row.
AGENTEX = "agentex"


def scenario_name(latency: float) -> str:
    """``wan-150ms`` for 0.15 s."""
    return f"wan-{round(latency * 1000)}ms"


def run(bench: Bench) -> list[Row]:
    rows: list[Row] = []
    for latency in bench.sizes.wan_latencies:
        rows.extend(_at_latency(bench, latency))
    rows.extend(_agentex(bench))
    return rows


def _at_latency(bench: Bench, latency: float) -> list[Row]:
    sizes = bench.sizes
    scenario = scenario_name(latency)
    extra = {"latency_s": latency}
    runs: list[tuple[str, dict[str, int], list[str]]] = [
        (backend, {}, ["max_in_flight=adaptive"]) for backend in bench.backends
    ]
    runs.append((bench.backends[0], {"max_in_flight": 8}, ["max_in_flight=8 (old default)"]))
    rows = []
    for backend, settings, notes in runs:
        measure = partial(_ours, bench, backend, latency, scenario, settings, extra, notes)
        row = median_run(sizes.wan_runs, measure)
        row.extra.setdefault("max_in_flight", "adaptive")
        _note_the_bound(row)
        rows.append(row)
    for system in (SCALE_GP, OTEL):
        rows.append(_peer(bench, system, latency, scenario))
    for row in rows:
        row.extra.update(extra)
    return rows


def _ours(
    bench: Bench,
    backend: str,
    latency: float,
    scenario: str,
    settings: dict[str, int],
    extra: dict[str, Any],
    notes: list[str],
) -> Row:
    bench.reset_server()  # an empty store for every run, as in `burst`
    bench.server.set_faults(latency=latency)
    try:
        return run_burst(
            bench,
            backend,
            bench.sizes.wan_spans,
            scenario=scenario,
            queue_settings=settings,
            extra=extra,
            notes=list(notes),
        )
    finally:
        bench.server.clear_faults()


def _note_the_bound(row: Row) -> None:
    """Say what bounded the row: the producer, or the sending.

    "producing N%" is the producer loop's share of the row's time, first span to flush: the
    producer runs on the client's CPU with the queue's own work interleaved, so at 100% the
    burst was delivered as fast as the client could make it (its CPU ceiling), and the rest
    is the wait for what was still pending or in flight when the last span ended. On a
    shared machine the ceiling itself moves with the other load, which "client CPU N% of a
    core" (process time over wall time) shows.
    """
    if row.hot_us_per_span is not None and row.seconds:
        share = row.hot_us_per_span * row.spans / 1e6 / row.seconds
        row.extra["producer_share"] = share
        row.notes.append(f"producing {share:.0%} of the time")
    busy = row.extra.get("cpu_busy")
    if busy is not None:
        row.notes.append(f"client CPU {busy:.0%} of a core")


def _peer(bench: Bench, system: str, latency: float, scenario: str) -> Row:
    sizes = bench.sizes
    bench.reset_server()
    notes = [f"{sizes.wan_peer_spans:,} spans, capped at {sizes.wan_peer_timeout:.0f} s"]
    sink = bench.sink
    if system == SCALE_GP:
        bench.server.set_faults(latency=latency)
    elif sink is not None:
        sink.set_faults(latency=latency)
    try:
        return peer_burst(
            bench,
            system,
            sizes.wan_peer_spans,
            scenario=scenario,
            notes=notes,
            timeout=sizes.wan_peer_timeout,
        )
    finally:
        if system == SCALE_GP:
            bench.server.clear_faults()
        elif sink is not None:
            sink.set_faults()


def _agentex(bench: Bench) -> list[Row]:
    """Through agentex at 150 ms (`._agentex`), or a skipped row saying why not."""
    scenario = scenario_name(0.15)
    if sys.version_info < (3, 12):
        reason = f"agentex-sdk needs Python >= 3.12, this is {sys.version.split()[0]}"
    elif importlib.util.find_spec("agentex") is None:
        reason = "agentex-sdk is not installed (pip install '.[agentex]' on Python >= 3.12)"
    elif not bench.with_peers:
        reason = "peers not requested (agentex's own processor is the comparison)"
    else:
        from ._agentex import agentex_rows

        return agentex_rows(bench)
    row = skipped(bench, scenario, AGENTEX, bench.sizes.wan_agentex_spans, reason)
    row.system = f"{OURS} via {AGENTEX}"
    row.backend = "asyncio"
    return [row]
