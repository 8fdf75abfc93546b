"""Benchmark workloads through scale-gp-beta's tracing (`scale_gp_beta.lib.tracing`).

The peer as users get it: `init(client=SGPClient(...))` and `create_span(...)` with the
library's defaults (a global `TraceQueueManager` whose one worker thread drains a 4,000-entry
`queue.Queue` every 0.1 s once 200 entries wait or every 4 s, sending `upsert_batch` calls
of 50 items one after another; a full queue drops the event with a log warning). Every span
enqueues twice (start and end). Only the client's `base_url` is changed, to loopback.

The queue manager is a process-wide singleton with an atexit hook, so every workload runs in
a fresh child process: `python -m benchmarks.peers.scale_gp burst --base-url URL --spans N`
prints one JSON line. The functions below start that child and, while it runs, poll the
caller's `count_delivered()` to time delivery at the server.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable
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

__all__ = ["SYSTEM", "hot_path", "hot_path_us", "main", "run_burst"]

SYSTEM = "scale-gp-beta"
_MODULE = "benchmarks.peers.scale_gp"
_QUEUE_LOGGER = "scale_gp_beta.lib.tracing.trace_queue_manager"

# Small input/output, the same shape for every system.
SPAN_INPUT = {"question": "What is the capital of France?"}
SPAN_OUTPUT = {"answer": "Paris"}


def run_burst(
    base_url: str,
    api_key: str,
    account_id: str,
    spans: int,
    *,
    count_delivered: Callable[[], int],
    flush_timeout: float = 60.0,
    timeout: float = 300.0,
    settle: float = 0.5,
    yield_per_span: bool = True,
    scenario: str = "burst",
    trace_id: str | None = None,
) -> PeerResult:
    """Produce `spans` spans as fast as possible through scale-gp-beta, in a child process.

    `count_delivered()` is the server's count of completed spans; `delivered` is its growth
    during the run. The child ends the way a user's program does, `shutdown` of the queue
    manager (bounded by `flush_timeout`); the whole run is bounded by `timeout`.
    For the faults scenario, switch faults on at the server and call this with
    `scenario="faults"`. All spans go into one trace, `trace_id` (a fresh UUID by default),
    so `count_delivered` may count that trace only.
    """
    require("scale_gp_beta.lib.tracing", SYSTEM)
    args = [
        "burst",
        "--base-url",
        base_url,
        "--spans",
        str(spans),
        "--flush-timeout",
        str(flush_timeout),
        "--trace-id",
        trace_id or str(uuid.uuid4()),
    ]
    if not yield_per_span:
        args.append("--no-yield")
    run = drive_child(
        _MODULE,
        args,
        peer=SYSTEM,
        env={"SGP_API_KEY": api_key, "SGP_ACCOUNT_ID": account_id},
        count_delivered=count_delivered,
        expected=spans,
        timeout=timeout,
        settle=settle,
    )
    return burst_result(system=SYSTEM, scenario=scenario, spans=spans, run=run)


def hot_path(
    base_url: str,
    api_key: str,
    account_id: str,
    *,
    samples: int = 5000,
    round_size: int = 500,
    timeout: float = 300.0,
) -> HotPathResult:
    """Producer cost of one span start+end, with the queue running against `base_url`.

    Samples are taken in rounds of `round_size`; between rounds (untimed) the queue is
    flushed, so the measurement never hits the queue-full path.
    """
    require("scale_gp_beta.lib.tracing", SYSTEM)
    run = drive_child(
        _MODULE,
        [
            "hot",
            "--base-url",
            base_url,
            "--samples",
            str(samples),
            "--round-size",
            str(round_size),
        ],
        peer=SYSTEM,
        env={"SGP_API_KEY": api_key, "SGP_ACCOUNT_ID": account_id},
        timeout=timeout,
    )
    return hot_path_result(SYSTEM, run)


def hot_path_us(
    base_url: str,
    api_key: str,
    account_id: str,
    *,
    samples: int = 5000,
    round_size: int = 500,
    timeout: float = 300.0,
) -> float:
    """Median microseconds per span start+end (see `hot_path`)."""
    return hot_path(
        base_url, api_key, account_id, samples=samples, round_size=round_size, timeout=timeout
    ).median_us


# --- the child process ------------------------------------------------------------------


class _DropCounter(logging.Handler):
    """Counts the queue manager's "Queue full" warnings: one per dropped span event.

    Installing it also keeps the warnings off stderr (Python's last-resort handler would
    otherwise print one line per dropped event).
    """

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.dropped = 0

    def emit(self, record: logging.LogRecord) -> None:
        if str(record.msg).startswith("Queue full"):
            self.dropped += 1


def _init_tracing(base_url: str) -> tuple[Any, _DropCounter]:
    try:
        from scale_gp_beta import SGPClient
        from scale_gp_beta.lib import tracing
        from scale_gp_beta.lib.tracing.trace_queue_manager import tracing_queue_manager
    except ImportError as exc:
        sys.stderr.write(f"cannot import scale_gp_beta.lib.tracing: {exc}\n")
        sys.exit(EXIT_UNAVAILABLE)
    counter = _DropCounter()
    logging.getLogger(_QUEUE_LOGGER).addHandler(counter)
    client = SGPClient(
        api_key=os.environ["SGP_API_KEY"],
        account_id=os.environ["SGP_ACCOUNT_ID"],
        base_url=base_url,
    )
    tracing.init(client=client, disabled=False)
    return tracing_queue_manager(), counter


def _child_burst(
    base_url: str, spans: int, flush_timeout: float, yield_per_span: bool, trace_id: str
) -> None:
    from scale_gp_beta.lib.tracing import create_span

    manager, counter = _init_tracing(base_url)
    t0 = time.time()
    cpu = time.process_time()
    start = time.perf_counter()
    for i in range(spans):
        with create_span(f"span-{i}", trace_id=trace_id, input=SPAN_INPUT) as span:
            span.output = SPAN_OUTPUT
        if yield_per_span:
            time.sleep(0)
    producer_seconds = time.perf_counter() - start
    # What a user's program does on the way out (the library's atexit hook does the same,
    # but unbounded): stop the worker, which exports what is still queued.
    manager.shutdown(timeout=flush_timeout)
    flushed = time.time()
    cpu = time.process_time() - cpu  # the producer and the worker thread, to the end
    worker_alive = manager._worker.is_alive()
    notes = ["shutdown timed out with spans still queued"] if worker_alive else []
    emit(
        {
            "system": SYSTEM,
            "trace_id": trace_id,
            "t0": t0,
            "producer_seconds": producer_seconds,
            "flush_seconds": flushed - t0 - producer_seconds,
            "cpu_seconds": cpu,
            "submitted": spans,
            "dropped": counter.dropped,
            "notes": notes,
        }
    )
    # Skip the atexit hook: it would join the worker again without a timeout.
    os._exit(0)


def _child_hot(base_url: str, samples: int, round_size: int) -> None:
    from scale_gp_beta.lib.tracing import create_span, flush_queue

    manager, counter = _init_tracing(base_url)
    trace_id = str(uuid.uuid4())
    perf_ns = time.perf_counter_ns
    timings: list[int] = []
    for _ in range(50):  # warm-up, untimed
        with create_span("warm", trace_id=trace_id, input=SPAN_INPUT) as span:
            span.output = SPAN_OUTPUT
    flush_queue()
    while len(timings) < samples:
        for _ in range(min(round_size, samples - len(timings))):
            t = perf_ns()
            with create_span("hot", trace_id=trace_id, input=SPAN_INPUT) as span:
                span.output = SPAN_OUTPUT
            timings.append(perf_ns() - t)
        flush_queue()
    manager.shutdown(timeout=10.0)
    emit({"system": SYSTEM, **summarize_ns(timings), "dropped": counter.dropped})
    os._exit(0)


def main(argv: list[str] | None = None) -> None:
    """CLI: `burst` or `hot`, one JSON line on stdout. Credentials from SGP_API_KEY and
    SGP_ACCOUNT_ID (or --api-key / --account-id)."""
    parser = argparse.ArgumentParser(prog=f"python -m {_MODULE}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("burst", "hot"):
        p = sub.add_parser(name)
        p.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:5003/public")
        p.add_argument("--api-key", default=None)
        p.add_argument("--account-id", default=None)
        if name == "burst":
            p.add_argument("--spans", type=int, default=20_000)
            p.add_argument("--flush-timeout", type=float, default=60.0)
            p.add_argument("--no-yield", action="store_true", help="no time.sleep(0) per span")
            p.add_argument("--trace-id", default=None, help="default: a fresh UUID")
        else:
            p.add_argument("--samples", type=int, default=5000)
            p.add_argument("--round-size", type=int, default=500)
    args = parser.parse_args(argv)
    if args.api_key:
        os.environ["SGP_API_KEY"] = args.api_key
    if args.account_id:
        os.environ["SGP_ACCOUNT_ID"] = args.account_id
    for var in ("SGP_API_KEY", "SGP_ACCOUNT_ID"):
        if not os.environ.get(var):
            parser.error(f"{var} is not set (or pass --{var[4:].lower().replace('_', '-')})")
    if args.command == "burst":
        trace_id = args.trace_id or str(uuid.uuid4())
        _child_burst(args.base_url, args.spans, args.flush_timeout, not args.no_yield, trace_id)
    else:
        _child_hot(args.base_url, args.samples, args.round_size)


if __name__ == "__main__":
    main()
