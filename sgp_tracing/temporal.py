"""Tracing on Temporal: span start/end activities and a worker plugin that owns their queue.

This module is asyncio-only, because temporalio is (its workers run on the asyncio event
loop); everything else in ``sgp_tracing`` runs on asyncio and trio alike.

```python
from temporalio import workflow
from temporalio.client import Client
from temporalio.worker import Worker

from sgp_tracing.temporal import SGPTracingPlugin, end_span, start_span


@workflow.defn
class Agent:
    @workflow.run
    async def run(self, question: str) -> str:
        root = await start_span("agent-run", input={"question": question})
        llm = await start_span("llm", parent=root, type="COMPLETION")
        ...
        await end_span(llm, output={"text": answer})
        await end_span(root, output={"answer": answer})
        return answer


plugin = SGPTracingPlugin()  # SGP settings from the environment, like AsyncSGPClient()
worker = Worker(client, task_queue="agents", workflows=[Agent], plugins=[plugin])
await worker.run()  # SIGTERM or SIGINT: graceful shutdown, then the queue drains
```

The workflow builds each span deterministically (``workflow.uuid4()``, ``workflow.now()``)
and hands its ``to_dict()`` payload to the ``sgp-start-span`` / ``sgp-end-span``
activities, which may run on any worker. Why this is safe across processes on both SGP
stores: an activity completes only after its write is delivered, and the workflow starts
the end activity only after the start activity completed, so a span's in-progress write is
stored before its completed one can be sent. A worker killed mid-activity (SIGKILL) loses
nothing: the activity never completed, so Temporal runs it again on another worker.

Three rules keep a stale start from landing after its end:

- the plugin raises the worker's ``graceful_shutdown_timeout`` to at least 10 s, so a
  shutdown lets a running span activity finish instead of cancelling it;
- an attempt cancelled all the same ends only once its write is settled (delivered or
  dropped), so Temporal retries it elsewhere only when nothing of it is left to land here;
- the activities' ``start_to_close_timeout`` (3 minutes by default) exceeds the worker
  queue's ``retry_deadline`` + ``request_timeout`` (150 s by default), and the queue's
  deadline counts from when the write was queued: by the time Temporal gives up on an
  attempt, that attempt's write has been delivered or dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any, Final

from temporalio import activity, workflow
from temporalio.plugin import SimplePlugin
from temporalio.worker import Worker, WorkerConfig, WorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from sgp_client import AsyncSGPClient, QueueNotRunningError, UpsertQueue

from ._processor import SGPTracingProcessor
from ._ratelimit import RateLimitedLog, logger
from ._span import Span
from ._tracer import Tracer

__all__ = [
    "END_SPAN_ACTIVITY",
    "START_SPAN_ACTIVITY",
    "SGPTracingPlugin",
    "end_span",
    "start_span",
]

#: Activity names, as agentex names its own span activities.
START_SPAN_ACTIVITY: Final = "sgp-start-span"
END_SPAN_ACTIVITY: Final = "sgp-end-span"
#: Longer than the queue's default retry_deadline (120 s) + request_timeout (30 s).
DEFAULT_ACTIVITY_TIMEOUT: Final = timedelta(minutes=3)
DEFAULT_GRACEFUL_SHUTDOWN: Final = timedelta(seconds=10)
# The modules a workflow imports from here: passed through the workflow sandbox, so they are
# imported once per worker rather than once per workflow run.
_PASSTHROUGH: Final = ("sgp_tracing", "sgp_client")

# -- workflow side -----------------------------------------------------------------------


async def start_span(
    name: str,
    *,
    parent: Mapping[str, Any] | None = None,
    trace_id: str | None = None,
    input: Any = None,
    metadata: Any = None,
    type: str | None = None,
    group_id: str | None = None,
    start_to_close_timeout: timedelta = DEFAULT_ACTIVITY_TIMEOUT,
    **activity_options: Any,
) -> dict[str, Any]:
    """In a workflow: start a span and return its payload once its start is delivered.

    The span joins ``parent``'s trace as its child (``parent`` is another span's payload),
    or the trace ``trace_id``, or starts a new trace. Pass the payload to ``end_span``;
    it is plain JSON, so it can also go to a child workflow or an activity.
    ``activity_options`` go to ``workflow.execute_activity`` (``retry_policy``, ...).
    """
    span_id = workflow.uuid4().hex
    if parent is not None:
        trace_id = str(parent["trace_id"])
    span = Span(
        id=span_id,
        trace_id=span_id if trace_id is None else trace_id,
        name=name,
        start_time=workflow.now(),
        parent_id=None if parent is None else str(parent["id"]),
        input=input,
        metadata=metadata,
        type=type,
        group_id=group_id,
    )
    payload = span.to_dict()
    await workflow.execute_activity(
        START_SPAN_ACTIVITY,
        payload,
        start_to_close_timeout=start_to_close_timeout,
        **activity_options,
    )
    return payload


async def end_span(
    span: Mapping[str, Any],
    *,
    output: Any = None,
    error: BaseException | dict[str, Any] | None = None,
    status: str | None = None,
    start_to_close_timeout: timedelta = DEFAULT_ACTIVITY_TIMEOUT,
    **activity_options: Any,
) -> dict[str, Any]:
    """In a workflow: end the span of ``span`` (a ``start_span`` payload); return its payload.

    ``output``, ``error`` and ``status`` mean what they mean for ``Tracer.end_span``; the end
    time is the workflow's clock, so a retried activity writes the same span.
    """
    ended = Span.from_dict(span)
    # A tracer without processors: Tracer.end_span's rules for status, error and clock skew,
    # applied here without sending anything (the activity sends).
    Tracer(()).end_span(ended, output=output, error=error, status=status, end_time=workflow.now())
    payload = ended.to_dict()
    await workflow.execute_activity(
        END_SPAN_ACTIVITY,
        payload,
        start_to_close_timeout=start_to_close_timeout,
        **activity_options,
    )
    return payload


# -- worker side -------------------------------------------------------------------------


class _WorkerTracing:
    """The process's client, queue and processor, and the two activities that use them."""

    def __init__(
        self,
        make_client: Callable[[], AsyncSGPClient],
        queue_options: Mapping[str, Any],
        processor_options: Mapping[str, Any],
        send_starts: bool,
    ) -> None:
        self._make_client = make_client
        self._queue_options = dict(queue_options)
        self._processor_options = dict(processor_options)
        self._send_starts = send_starts
        self._users = 0
        self._holder: asyncio.Task[None] | None = None
        self._opened = asyncio.Event()
        self._stop = asyncio.Event()
        self.queue: UpsertQueue | None = None
        self.processor: SGPTracingProcessor | None = None
        self.dropped: dict[str, int] = {}
        self._log = RateLimitedLog(logger)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Open the client and queue for the first worker of the process, close after the last."""
        if self._holder is None:
            self._opened = asyncio.Event()
            self._stop = asyncio.Event()
            # Their own task: a queue is closed in the task that opened it (its task group),
            # and the first worker to start need not be the last to stop.
            self._holder = asyncio.get_running_loop().create_task(
                self._hold(self._opened, self._stop)
            )
        # Every worker waits for the open, not only the first: a second one starting while
        # the queue is still opening must not run without it (or past a failed open).
        holder = self._holder
        waiter = asyncio.ensure_future(self._opened.wait())
        try:
            await asyncio.wait([holder, waiter], return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if holder.done():
            if self._holder is holder:
                self._holder = None
            holder.result()  # the client or queue failed to open: raise that
        self._users += 1
        try:
            yield
        finally:
            self._users -= 1
            if self._users == 0 and self._holder is not None:
                holder, self._holder = self._holder, None
                self._stop.set()
                # The queue drains as it exits (bounded by its shutdown_timeout, shielded).
                await asyncio.shield(holder)

    async def _hold(self, opened: asyncio.Event, stop: asyncio.Event) -> None:
        async with (
            self._make_client() as client,
            UpsertQueue(client, **self._queue_options) as queue,
        ):
            self.queue = queue
            self.processor = SGPTracingProcessor(
                queue, send_starts=self._send_starts, **self._processor_options
            )
            opened.set()
            await stop.wait()

    def _span(self, payload: Any) -> Span | None:
        try:
            return Span.from_dict(payload)
        except ValueError as exc:
            # Raising would have Temporal retry a payload that can never succeed.
            self.dropped["invalid_payload"] = self.dropped.get("invalid_payload", 0) + 1
            self._log.warning("invalid_payload", "sgp_tracing.temporal: span dropped: %s", exc)
            return None

    async def _run(self, payload: Any, *, end: bool) -> None:
        span = self._span(payload)
        if span is None:
            return
        processor = self.processor
        if processor is None:
            # An activity outside a worker run: fail the attempt, Temporal retries elsewhere.
            raise QueueNotRunningError("sgp_tracing.temporal: the worker's queue is not running")
        # Returns once the write is delivered (the dispatcher sends at once, sharing the
        # request with the writes other activities await meanwhile); SpanDroppedError when
        # it was dropped, which fails the attempt: Temporal retries it (the upsert is
        # idempotent). With send_starts=False a start returns at once.
        delivery = asyncio.ensure_future(
            (processor.deliver_end if end else processor.deliver_start)(span)
        )
        try:
            await asyncio.shield(delivery)
        except asyncio.CancelledError:
            # The attempt is cancelled (the worker shuts down, its graceful timeout over)
            # while its write is still queued here. Ending the attempt now would have Temporal
            # retry it on another worker while this write can still land, after the retry's
            # (a late start reopens a span on the legacy store). So it ends once the write is
            # settled, delivered or dropped: the queue's per-item retry_deadline bounds that.
            # Cancelled again (or the process killed), it ends at once: nothing of it is left
            # to land later in a dead process.
            await asyncio.wait([delivery])
            if not delivery.cancelled():
                delivery.exception()  # retrieved: the attempt ends as cancelled either way
            raise

    @activity.defn(name=START_SPAN_ACTIVITY)
    async def start_span(self, payload: dict[str, Any]) -> None:
        """Deliver the in-progress write of the span of ``payload``."""
        await self._run(payload, end=False)

    @activity.defn(name=END_SPAN_ACTIVITY)
    async def end_span(self, payload: dict[str, Any]) -> None:
        """Deliver the completed write of the span of ``payload``."""
        await self._run(payload, end=True)


class SGPTracingPlugin(SimplePlugin):
    """A Temporal worker plugin: the span activities, one SGP client and queue per process.

    Use one plugin per worker process (workers of the process sharing it share its client
    and queue). ``client`` makes the ``AsyncSGPClient`` (default: settings from the
    environment); ``queue_options`` and ``processor_options`` go to ``UpsertQueue`` and
    ``SGPTracingProcessor``. ``send_starts=False`` writes only ends: half the writes, and no
    "Running" state while a span is open. The queue opens when the first worker starts and
    drains when the last one stops. ``shutdown_signals`` (SIGTERM and SIGINT by default;
    ``()`` for none) shut the workers down gracefully, since Temporal's worker installs no
    signal handler and a default SIGTERM would end the process without draining.
    """

    def __init__(
        self,
        *,
        client: Callable[[], AsyncSGPClient] = AsyncSGPClient,
        queue_options: Mapping[str, Any] | None = None,
        processor_options: Mapping[str, Any] | None = None,
        send_starts: bool = True,
        shutdown_signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGINT),
        graceful_shutdown_timeout: timedelta = DEFAULT_GRACEFUL_SHUTDOWN,
    ) -> None:
        self._tracing = _WorkerTracing(
            client, queue_options or {}, processor_options or {}, send_starts
        )
        self._signals = tuple(shutdown_signals)
        self._graceful = graceful_shutdown_timeout
        self._shutdowns: set[asyncio.Task[None]] = set()
        super().__init__(
            "sgp_tracing.SGPTracingPlugin",
            activities=[self._tracing.start_span, self._tracing.end_span],
            workflow_runner=_pass_through_sandbox,
        )

    @property
    def queue(self) -> UpsertQueue | None:
        """The process's queue once a worker ran (after the last stops: its final counters)."""
        return self._tracing.queue

    @property
    def processor(self) -> SGPTracingProcessor | None:
        """The process's processor once a worker ran (after the last stops: final counters)."""
        return self._tracing.processor

    @property
    def dropped(self) -> Mapping[str, int]:
        """Activity payloads that were not spans (``invalid_payload``), counted and logged."""
        return dict(self._tracing.dropped)

    def configure_worker(self, config: WorkerConfig) -> WorkerConfig:
        config = super().configure_worker(config)
        current = config.get("graceful_shutdown_timeout") or timedelta()
        config["graceful_shutdown_timeout"] = max(current, self._graceful)
        return config

    async def run_worker(self, worker: Worker, next: Callable[[Worker], Awaitable[None]]) -> None:
        async with self._tracing.running():
            installed = self._install_signals(worker)
            try:
                await next(worker)
            finally:
                loop = asyncio.get_running_loop()
                for sig in installed:
                    loop.remove_signal_handler(sig)

    def _install_signals(self, worker: Worker) -> list[signal.Signals]:
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        for sig in self._signals:
            try:
                loop.add_signal_handler(sig, self._shut_down, worker, sig)
            except (ValueError, RuntimeError, NotImplementedError) as exc:
                # Not the main thread, or a platform without loop signal handlers.
                logging.getLogger("sgp_tracing").debug("no handler for %s: %r", sig.name, exc)
            else:
                installed.append(sig)
        return installed

    def _shut_down(self, worker: Worker, sig: signal.Signals) -> None:
        logger.info("sgp_tracing.temporal: %s: shutting the worker down", sig.name)
        task = asyncio.get_running_loop().create_task(worker.shutdown())
        self._shutdowns.add(task)  # a strong reference until it is done
        task.add_done_callback(self._shutdowns.discard)


def _pass_through_sandbox(runner: WorkflowRunner | None) -> WorkflowRunner:
    if runner is None:
        runner = SandboxedWorkflowRunner()
    if isinstance(runner, SandboxedWorkflowRunner):
        restrictions = runner.restrictions.with_passthrough_modules(*_PASSTHROUGH)
        return dataclasses.replace(runner, restrictions=restrictions)
    return runner
