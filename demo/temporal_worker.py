"""One Temporal worker process of the demo fleet (``python -m demo.temporal_worker``).

It connects to the Temporal server, runs ``AgentRun`` workflows and the span activities on the
fleet's task queue with eager activity execution off (so Temporal routes each activity to any
worker of the queue, not to the one running the workflow), and writes a JSON report when it
stops: which span starts and ends it ran, and its queue's counters. It talks to the fleet's
driver through its stdout, one JSON object a line: ``{"ready": id}`` once the worker is
built, ``{"report": {...}}`` when it stopped.

By default the activities are ``sgp_tracing.temporal``'s (``SGPTracingPlugin``: one client and
queue for the process, each activity completed once its write is delivered, SIGTERM drains).
``--stateful`` registers activities of the same names over the old per-process-dict processor
(``demo.stateful``), fire-and-forget like most tracing processors in the field. ``--agentex``
registers them over agentex-sdk's own SGP processor (``SGPAsyncTracingProcessor``, which awaits
an ``upsert_batch`` per event; Python >= 3.12 with agentex-sdk installed), for the benchmarks.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import signal
import sys
from typing import Any

import orjson
from temporalio import activity
from temporalio.client import Client
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
    Worker,
)

from sgp_client import AsyncSGPClient, UpsertQueue
from sgp_tracing import Span
from sgp_tracing.temporal import END_SPAN_ACTIVITY, START_SPAN_ACTIVITY, SGPTracingPlugin

from .stateful import StatefulProcessor
from .workflows import AgentRun

__all__ = ["main"]


class _Ledger(Interceptor):
    """Records the span id of every span activity this worker completed, by activity."""

    def __init__(self) -> None:
        self.ran: dict[str, list[str]] = {START_SPAN_ACTIVITY: [], END_SPAN_ACTIVITY: []}

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _LedgerActivity(next, self.ran)


class _LedgerActivity(ActivityInboundInterceptor):
    def __init__(self, next: ActivityInboundInterceptor, ran: dict[str, list[str]]) -> None:
        super().__init__(next)
        self._ran = ran

    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        result = await self.next.execute_activity(input)
        ids = self._ran.get(activity.info().activity_type)
        if ids is not None and input.args and isinstance(input.args[0], dict):
            ids.append(str(input.args[0].get("id")))
        return result


class _StatefulActivities:
    """The span activities over ``StatefulProcessor``: submit and return, nothing awaited."""

    def __init__(self, processor: StatefulProcessor) -> None:
        self._processor = processor

    @activity.defn(name=START_SPAN_ACTIVITY)
    async def start_span(self, payload: dict[str, Any]) -> None:
        self._processor.on_span_start(Span.from_dict(payload))

    @activity.defn(name=END_SPAN_ACTIVITY)
    async def end_span(self, payload: dict[str, Any]) -> None:
        self._processor.on_span_end(Span.from_dict(payload))


class _AgentexActivities:
    """The span activities over agentex-sdk's own SGP processor (imported only when used)."""

    def __init__(self) -> None:
        # What agentex requires of an agent's environment; litellm (imported by agentex) would
        # fetch a price list from the internet unless told to use its bundled copy.
        for name, value in (
            ("AGENT_NAME", "sgp-demo"),
            ("ACP_URL", "http://127.0.0.1:1"),
            ("LITELLM_LOCAL_MODEL_COST_MAP", "True"),
        ):
            os.environ.setdefault(name, value)
        # By name: agentex-sdk is optional (Python >= 3.12) and not type-checked here.
        processors = importlib.import_module(
            "agentex.lib.core.tracing.processors.sgp_tracing_processor"
        )
        config = importlib.import_module("agentex.lib.types.tracing").SGPTracingProcessorConfig
        self._span = importlib.import_module("agentex.types.span").Span
        self.processor: Any = processors.SGPAsyncTracingProcessor(
            config(
                sgp_api_key=os.environ["SGP_API_KEY"],
                sgp_account_id=os.environ["SGP_ACCOUNT_ID"],
                sgp_base_url=os.environ.get("SGP_CLIENT_BASE_URL"),
            )
        )

    def _agentex_span(self, payload: dict[str, Any]) -> Any:
        span = Span.from_dict(payload)
        data = dict(span.metadata) if isinstance(span.metadata, dict) else {}
        if span.type:
            data["__span_type__"] = span.type
        if span.error:
            data["__error__"] = span.error
        return self._span(
            id=span.id, name=span.name, trace_id=span.trace_id, parent_id=span.parent_id,
            start_time=span.start_time, end_time=span.end_time, input=span.input,
            output=span.output, data=data,
        )  # fmt: skip

    @activity.defn(name=START_SPAN_ACTIVITY)
    async def start_span(self, payload: dict[str, Any]) -> None:
        await self.processor.on_span_start(self._agentex_span(payload))

    @activity.defn(name=END_SPAN_ACTIVITY)
    async def end_span(self, payload: dict[str, Any]) -> None:
        await self.processor.on_span_end(self._agentex_span(payload))


def _say(message: dict[str, Any]) -> None:
    sys.stdout.write(orjson.dumps(message).decode() + "\n")
    sys.stdout.flush()


def _queue_report(queue: UpsertQueue | None) -> dict[str, Any]:
    if queue is None:
        return {}
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


def _worker(client: Client, args: argparse.Namespace, ledger: _Ledger, **options: Any) -> Worker:
    return Worker(
        client,
        task_queue=args.task_queue,
        workflows=[AgentRun],
        interceptors=[ledger],
        # Off, so a workflow's activities are not run by the worker that runs the workflow.
        disable_eager_activity_execution=True,
        identity=f"demo-worker-{args.worker_id}@{os.getpid()}",
        **options,
    )


async def _serve(args: argparse.Namespace) -> dict[str, Any]:
    temporal = await Client.connect(args.temporal, namespace=args.namespace)
    ledger = _Ledger()
    report: dict[str, Any] = {"worker": args.worker_id, "pid": os.getpid()}
    queue: UpsertQueue | None
    queue_options: dict[str, Any] = {}
    if args.retry_deadline is not None:
        # Kept below the workflows' activity timeout: see sgp_tracing.temporal.
        queue_options = {"retry_deadline": args.retry_deadline, "request_timeout": 2.0}
    if args.agentex:
        agentex = _AgentexActivities()
        worker = _worker(temporal, args, ledger, activities=[agentex.start_span, agentex.end_span])
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, lambda: asyncio.ensure_future(worker.shutdown()))
        _say({"ready": args.worker_id})
        await worker.run()
        queue = None  # agentex's processor sends each event itself: no queue to report
    elif args.stateful:
        async with AsyncSGPClient() as sgp, UpsertQueue(sgp, **queue_options) as queue:
            processor = StatefulProcessor(queue)
            activities = _StatefulActivities(processor)
            worker = _worker(
                temporal, args, ledger, activities=[activities.start_span, activities.end_span]
            )
            # No plugin here, so no signal handler either: this worker installs its own.
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(
                signal.SIGTERM, lambda: asyncio.ensure_future(worker.shutdown())
            )
            _say({"ready": args.worker_id})
            await worker.run()
        report["lost_ends"] = processor.lost_ends
        report["leaked_open_spans"] = len(processor.open_spans)
    else:
        plugin = SGPTracingPlugin(queue_options=queue_options, send_starts=not args.no_starts)
        worker = _worker(temporal, args, ledger, plugins=[plugin])
        _say({"ready": args.worker_id})
        await worker.run()  # SIGTERM: the plugin shuts the worker down, then drains the queue
        queue = plugin.queue
        processor_dropped = dict(plugin.processor.stats.dropped) if plugin.processor else {}
        report["processor_dropped"] = {**processor_dropped, **plugin.dropped}
    report["queue"] = _queue_report(queue)
    report["ran"] = ledger.ran
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--temporal", required=True, help="host:port of the Temporal server")
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--task-queue", required=True)
    parser.add_argument("--worker-id", type=int, required=True)
    parser.add_argument("--stateful", action="store_true")
    parser.add_argument("--agentex", action="store_true", help="agentex-sdk's SGP processor")
    parser.add_argument("--no-starts", action="store_true", help="send_starts=False")
    parser.add_argument("--retry-deadline", type=float, default=None)
    args = parser.parse_args()
    report = asyncio.run(_serve(args))
    _say({"report": report})
    # Everything is delivered and reported. Skip interpreter finalization: temporalio's core
    # threads can still be releasing the GIL then, which aborts the process (seen in a demo
    # run: "Fatal Python error: PyGILState_Release ... finalizing").
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
