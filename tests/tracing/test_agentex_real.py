"""The agentex adapter inside the real agentex-sdk: its processor manager, ``AsyncTracer``,
span queue and Temporal tracing activities, against the local SGP server over loopback;
and agentex's own SGP processor on the same spans, for parity and for what it loses.

asyncio only: agentex's tracer and span queue are asyncio (``asyncio.create_task``,
``asyncio.Queue``), so ``anyio_backend`` is pinned to asyncio here. agentex-sdk requires
Python >= 3.12 (``pip install 'sgp-async[agentex]'``); below that this module is skipped.
The Temporal activities are called as functions, their arguments and results passed
through Temporal's pydantic data converter as a worker would (the real fleet is tested with
``sgp_tracing.temporal``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

# agentex's activities package imports litellm, which fetches a price list from the internet
# at import unless told to use its bundled copy: tests talk to loopback only.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
pytest.importorskip(
    "agentex", reason="agentex-sdk (Python >= 3.12 only) is not installed: pip install '.[agentex]'"
)


def _logger_settings() -> dict[str, tuple[int, list[Any]]]:
    loggers = logging.root.manager.loggerDict.items()
    return {n: (lg.level, list(lg.filters)) for n, lg in loggers if isinstance(lg, logging.Logger)}


# Importing agentex's activities imports litellm, which sets loggers it does not own (httpx to
# WARNING) and adds filters to others: for the rest of the session, other tests' log
# assertions would see that. What existed before is put back right after the imports.
_LOGGERS_BEFORE = _logger_settings()

import agentex.lib.environment_variables as agentex_env
from agentex import AsyncAgentex
from agentex.lib.core.services.adk.tracing import TracingService
from agentex.lib.core.temporal.activities.adk.tracing_activities import (
    EndSpanParams,
    StartSpanParams,
    TracingActivities,
)
from agentex.lib.core.tracing.processors.sgp_tracing_processor import (
    SGPAsyncTracingProcessor,
)
from agentex.lib.core.tracing.processors.tracing_processor_interface import (
    AsyncTracingProcessor,
)
from agentex.lib.core.tracing.span_queue import AsyncSpanQueue, SpanEventType
from agentex.lib.core.tracing.tracer import AsyncTracer
from agentex.lib.core.tracing.tracing_processor_manager import (
    GLOBAL_TRACING_PROCESSOR_MANAGER,
    TracingProcessorManager,
)
from agentex.lib.types.tracing import SGPTracingProcessorConfig
from agentex.types.span import Span as AgentexSpan
from temporalio.contrib.pydantic import pydantic_data_converter

from sgp_client import AsyncSGPClient, SpanItem, SpanRecord, UpsertQueue
from sgp_client.testing import ServerProcess
from sgp_tracing import SGPTracingProcessor
from sgp_tracing.agentex import (
    AgentexTracingProcessor,
    register,
    registered,
    unregister,
)

for _name, (_level, _filters) in _LOGGERS_BEFORE.items():
    _logger = logging.getLogger(_name)
    _logger.setLevel(_level)
    _logger.filters[:] = _filters


@pytest.fixture
def anyio_backend() -> str:
    """agentex is asyncio-only (see the module docstring)."""
    return "asyncio"


@pytest.fixture(autouse=True)
def agent_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The agent's environment as agentex reads it, for both processors; agentex's global
    processor list left as it was found."""
    monkeypatch.setenv("AGENT_NAME", "support-bot")
    monkeypatch.setenv("AGENT_ID", "agent-42")
    monkeypatch.setenv("ACP_TYPE", "async")
    monkeypatch.setenv("ACP_URL", "http://127.0.0.1:9")
    monkeypatch.delenv("AGENT_VERSION", raising=False)
    monkeypatch.delenv("AGENT_COMMIT_SHA", raising=False)
    monkeypatch.setattr(agentex_env, "refreshed_environment_variables", None)
    before = list(GLOBAL_TRACING_PROCESSOR_MANAGER.async_processors)
    yield
    GLOBAL_TRACING_PROCESSOR_MANAGER.async_processors[:] = before


IDENTITY = {
    "__source__": "agentex",
    "__acp_type__": "async",
    "__agent_name__": "support-bot",
    "__agent_id__": "agent-42",
}


class ToolError(Exception):
    pass


class PathSink:
    """An ``UpsertQueue`` seen through: counts the processor's fast path (``submit_record``)
    and its slow one (``submit``)."""

    def __init__(self, queue: UpsertQueue) -> None:
        self.queue = queue
        self.fast = 0
        self.slow = 0

    def submit(self, item: SpanItem, /) -> None:
        self.slow += 1
        self.queue.submit(item)

    takes_records = True

    def submit_record(self, record: SpanRecord, /) -> None:
        self.fast += 1
        self.queue.submit_record(record)

    async def upsert(self, item: SpanItem, /) -> None:
        self.slow += 1
        await self.queue.upsert(item)

    async def upsert_record(self, record: SpanRecord, /) -> None:
        self.fast += 1
        await self.queue.upsert_record(record)

    async def flush(self, timeout: float | None = None) -> bool:
        return await self.queue.flush(timeout)


@asynccontextmanager
async def sgp_queue(server: ServerProcess, **options: Any) -> AsyncIterator[UpsertQueue]:
    async with (
        AsyncSGPClient(
            api_key=server.api_key, account_id=server.account_id, base_url=server.base_url
        ) as client,
        UpsertQueue(client, **options) as queue,
    ):
        yield queue


@asynccontextmanager
async def agentex_tracer() -> AsyncIterator[AsyncTracer]:
    # The agentex API client is only used to read spans back; nothing listens on port 9.
    async with AsyncAgentex(api_key="unused", base_url="http://127.0.0.1:9") as client:
        yield AsyncTracer(client)


def by_id(spans: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {span["id"]: span for span in spans}


async def run_agent_turn(tracer: AsyncTracer, trace_id: str, span_queue: AsyncSpanQueue) -> None:
    """One agent turn the way agentex code traces it: a root span, a tool, a failing tool."""
    trace = tracer.trace(trace_id, span_queue=span_queue)
    async with trace.span(
        "turn", input={"message": "hi"}, data={"__span_type__": "AGENT_WORKFLOW"}
    ) as root:
        assert root is not None
        async with trace.span("lookup", parent_id=root.id, input={"q": "order 7"}) as tool:
            assert tool is not None
            tool.output = {"status": "shipped"}
        with pytest.raises(ToolError):
            async with trace.span("refund", parent_id=root.id, data={"amount": 5}):
                raise ToolError("refunds are closed")
        root.output = {"final_output": "It shipped."}


def test_adapter_is_an_agentex_processor_and_registers() -> None:
    manager = TracingProcessorManager()  # type: ignore[no-untyped-call, unused-ignore]
    sink = PathSink(None)  # type: ignore[arg-type] # never called here
    adapter = register(sink, manager=manager)
    assert isinstance(adapter, AsyncTracingProcessor)  # agentex's own base class
    # ...for type checkers too (.ci/run type-checks this file against agentex-sdk).
    processors: list[AsyncTracingProcessor] = [adapter]
    assert processors == manager.async_processors
    assert manager.get_async_processors() == [adapter]
    assert adapter.identity == IDENTITY  # read from agentex's environment variables
    unregister(adapter, manager=manager)
    unregister(adapter, manager=manager)  # twice is fine
    assert manager.get_async_processors() == []


@pytest.mark.anyio
async def test_spans_through_async_tracer_and_span_queue(server: ServerProcess) -> None:
    span_queue = AsyncSpanQueue(linger_ms=0)
    async with (
        sgp_queue(server, flush_interval=3600) as queue,
        agentex_tracer() as tracer,
        registered(queue, span_queue=span_queue) as adapter,
    ):
        assert adapter in GLOBAL_TRACING_PROCESSOR_MANAGER.get_async_processors()
        await run_agent_turn(tracer, "task-1", span_queue)
    # registered() drained agentex's queue into ours, then unregistered; the queue closed last.
    assert adapter not in GLOBAL_TRACING_PROCESSOR_MANAGER.get_async_processors()
    assert span_queue.dropped_spans == 0
    processor = adapter.processor
    assert isinstance(processor, SGPTracingProcessor)
    assert processor.stats.dropped == {}
    assert adapter.errors == 0

    spans = {span["name"]: span for span in server.spans(trace_id="task-1")}
    assert set(spans) == {"turn", "lookup", "refund"}
    turn, lookup, refund = spans["turn"], spans["lookup"], spans["refund"]
    assert turn["type"] == "AGENT_WORKFLOW"
    assert lookup["type"] == refund["type"] == "STANDALONE"
    assert lookup["parent_id"] == refund["parent_id"] == turn["id"]
    assert all(span["end_timestamp"] is not None for span in spans.values())
    assert (turn["status"], lookup["status"], refund["status"]) == ("SUCCESS", "SUCCESS", "ERROR")
    assert turn["metadata"] == {"__span_type__": "AGENT_WORKFLOW", **IDENTITY}
    assert lookup["output"] == {"status": "shipped"}
    assert refund["input"] == refund["output"] == {}  # agentex's processor stores {} too
    assert refund["metadata"] == {
        "amount": 5,
        "__error__": {
            "type": "ToolError",
            "message": "refunds are closed",
            "category": "unknown",
        },
        **IDENTITY,
        "error": True,
        "error_type": "ToolError",
        "error_message": "refunds are closed",
        "error_category": "unknown",
    }


@pytest.mark.anyio
async def test_start_is_delivered_when_the_span_queue_has_sent_it(server: ServerProcess) -> None:
    """agentex's span queue awaits on_spans_start: with our flush interval out of reach, only
    the awaited start can have put the in-progress span on the server."""
    starts, ends = AsyncSpanQueue(linger_ms=0), AsyncSpanQueue(linger_ms=0)
    async with (
        sgp_queue(server, flush_interval=3600) as queue,
        agentex_tracer() as tracer,
        registered(queue, span_queue=starts),
    ):
        span = await tracer.trace("task-2", span_queue=starts).start_span("waiting")
        await starts.shutdown()  # returns once its send tasks are done
        (stored,) = server.spans(trace_id="task-2")
        assert stored["id"] == span.id
        assert stored["end_timestamp"] is None
        await tracer.trace("task-2", span_queue=ends).end_span(span)
        await ends.shutdown()
    (stored,) = server.spans(trace_id="task-2")
    assert stored["status"] == "SUCCESS"


def through_temporal(value: Any, as_type: type[Any]) -> Any:
    """``value`` as a Temporal worker or workflow receives it: encoded to a payload and
    decoded by Temporal's pydantic data converter (what agentex configures)."""
    converter = pydantic_data_converter.payload_converter
    (decoded,) = converter.from_payloads(converter.to_payloads([value]), [as_type])
    return decoded


@pytest.mark.anyio
async def test_temporal_tracing_activities(server: ServerProcess) -> None:
    async with (
        sgp_queue(server) as queue,
        agentex_tracer() as tracer,
    ):
        sink = PathSink(queue)
        # The activities use agentex's default span queue: registered() drains that one.
        async with registered(sink) as adapter:
            activities = TracingActivities(TracingService(tracer))
            ended: list[AgentexSpan] = []
            for i in range(5):
                params = StartSpanParams(
                    trace_id="wf-1", name=f"step-{i}", input={"i": i}, data={"k": "v"}
                )
                span = await activities.start_span(through_temporal(params, StartSpanParams))
                # The workflow gets the span back, sets its output, ends it in an activity.
                span = through_temporal(span, AgentexSpan)
                span.output = {"done": i}
                span.end_time = span.start_time + timedelta(seconds=1)
                end = through_temporal(EndSpanParams(trace_id="wf-1", span=span), EndSpanParams)
                assert type(end.span.start_time.tzinfo).__name__ == "TzInfo"  # pydantic's
                ended.append(await activities.end_span(end))
        assert await queue.flush()

    processor = adapter.processor
    assert isinstance(processor, SGPTracingProcessor)
    assert processor.stats.dropped == {}
    # Every event, the ENDs with Temporal's TzInfo datetimes included, took the fast path.
    assert (sink.fast, sink.slow) == (10, 0)
    stored = by_id(server.spans(trace_id="wf-1"))
    assert set(stored) == {span.id for span in ended}
    for span in ended:
        row = stored[span.id]
        assert row["status"] == "SUCCESS"
        assert row["output"] == span.output
        assert row["metadata"] == {"k": "v", **IDENTITY}
        assert datetime.fromisoformat(row["start_timestamp"]) == span.start_time.astimezone(UTC)
        end_time = span.end_time
        assert end_time is not None
        assert datetime.fromisoformat(row["end_timestamp"]) == end_time.astimezone(UTC)
        assert span.data == {"k": "v"}  # the caller's span: nothing added


def sample_spans(trace_id: str) -> list[AgentexSpan]:
    """Ended spans as agentex's tracer hands them to processors; two of them have what only
    coercion can send: an unknown span type and a list payload."""
    start = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
    spans = [
        AgentexSpan(
            id=f"{trace_id}-{i}",
            trace_id=trace_id,
            parent_id=None if i == 0 else f"{trace_id}-0",
            name=f"step-{i}",
            start_time=start + timedelta(seconds=i),
            end_time=start + timedelta(seconds=i + 1),
            input={"i": i},
            output=None if i % 3 == 0 else {"o": i},
            data={"__span_type__": "CODE_EXECUTION" if i % 2 else "STANDALONE", "n": i},
        )
        for i in range(10)
    ]
    spans[4].data = {"__error__": {"type": "ToolError", "message": "no", "category": "application"}}
    spans[7].data = {"__span_type__": "NOT_A_TYPE"}
    spans[9].input = [{"a": 1}, {"b": 2}]
    return spans


async def end_through_span_queue(processor: Any, spans: list[AgentexSpan]) -> AsyncSpanQueue:
    """End every span through one agentex span queue (one batch) into ``processor``."""
    span_queue = AsyncSpanQueue(linger_ms=0, batch_size=200)
    for span in spans:
        span_queue.enqueue(SpanEventType.END, span.model_copy(deep=True), [processor])
    await span_queue.shutdown()
    return span_queue


def theirs(server: ServerProcess) -> SGPAsyncTracingProcessor:
    return SGPAsyncTracingProcessor(
        SGPTracingProcessorConfig(
            sgp_api_key=server.api_key,
            sgp_account_id=server.account_id,
            sgp_base_url=server.base_url,
        )
    )


async def close_theirs(processor: SGPAsyncTracingProcessor) -> None:
    for client in list(processor._clients_by_loop.values()):
        await client.close()


@pytest.mark.anyio
async def test_same_metadata_as_agentex_processor_and_we_keep_the_batch_it_loses(
    server: ServerProcess,
) -> None:
    good = [span for i, span in enumerate(sample_spans("p")) if i not in (7, 9)]

    # agentex's own processor, on well-formed spans.
    their_processor = theirs(server)
    try:
        span_queue = await end_through_span_queue(their_processor, good)
    finally:
        await close_theirs(their_processor)
    assert span_queue.dropped_spans == 0
    their_rows = by_id(server.spans(trace_id="p"))
    server.reset()

    # Ours, on the same spans.
    async with sgp_queue(server) as queue:
        adapter = AgentexTracingProcessor.for_sink(queue)
        span_queue = await end_through_span_queue(adapter, good)
        assert await queue.flush()
    assert span_queue.dropped_spans == 0
    our_rows = by_id(server.spans(trace_id="p"))

    assert set(our_rows) == set(their_rows) == {span.id for span in good}
    fields = ("name", "type", "status", "parent_id", "trace_id", "input", "output", "metadata")
    for span_id, their_row in their_rows.items():
        ours_row = our_rows[span_id]
        assert {f: ours_row.get(f) for f in fields} == {f: their_row.get(f) for f in fields}
        for stamp in ("start_timestamp", "end_timestamp"):
            ours_t, their_t = ours_row[stamp], their_row[stamp]
            assert datetime.fromisoformat(ours_t) == datetime.fromisoformat(their_t)
    assert their_rows["p-4"]["metadata"]["error_category"] == "application"

    # With the two spans only coercion can send, in the same batch: agentex's processor
    # loses the whole batch (the server refuses it), ours keeps every span.
    server.reset()
    mixed = sample_spans("m")
    their_processor = theirs(server)
    try:
        span_queue = await end_through_span_queue(their_processor, mixed)
    finally:
        await close_theirs(their_processor)
    their_kept = server.count(trace_id="m")
    assert span_queue.dropped_spans == len(mixed) - their_kept
    # One request for the batch, refused (422): the 8 well-formed spans lost with the 2 odd
    # ones (agentex-sdk 0.28.4; a later version that splits the batch would keep some).
    assert their_kept < len(mixed) - 2
    server.reset()

    async with sgp_queue(server) as queue:
        adapter = AgentexTracingProcessor.for_sink(queue)
        await end_through_span_queue(adapter, mixed)
        assert await queue.flush()
    rows = by_id(server.spans(trace_id="m"))
    assert len(rows) == len(mixed)
    assert rows["m-7"]["type"] == "CUSTOM"
    assert rows["m-7"]["metadata"]["__span_type__"] == "NOT_A_TYPE"
    assert rows["m-9"]["input"] == {"value": [{"a": 1}, {"b": 2}]}
    processor = adapter.processor
    assert isinstance(processor, SGPTracingProcessor)
    assert processor.stats.dropped == {}
    assert processor.stats.coerced == {"unknown_type": 1, "input_not_dict": 1}


@pytest.mark.anyio
async def test_shutdown_order_span_queue_first(server: ServerProcess) -> None:
    """agentex's span queue must be drained while our queue is open: in that order every span
    arrives; the other way round, the spans still in agentex's queue are counted as dropped
    (never silently lost)."""

    async def traced(tracer: AsyncTracer, trace_id: str, span_queue: AsyncSpanQueue) -> None:
        trace = tracer.trace(trace_id, span_queue=span_queue)
        for i in range(4):
            async with trace.span(f"s{i}"):
                pass

    # Right: registered() inside the queue's block, so agentex drains first.
    span_queue = AsyncSpanQueue(linger_ms=200)
    async with (
        sgp_queue(server) as queue,
        agentex_tracer() as tracer,
        registered(queue, span_queue=span_queue) as adapter,
    ):
        await traced(tracer, "right", span_queue)
    assert server.count(trace_id="right") == 4
    assert all(row["end_timestamp"] for row in server.spans(trace_id="right"))
    assert isinstance(adapter.processor, SGPTracingProcessor)
    assert adapter.processor.stats.dropped == {}

    # Wrong: our queue closes while agentex still lingers on the spans.
    span_queue = AsyncSpanQueue(linger_ms=200)
    async with agentex_tracer() as tracer:
        async with sgp_queue(server) as queue:
            adapter = register(queue)
            await traced(tracer, "wrong", span_queue)
        await span_queue.shutdown()
        unregister(adapter)
    assert server.count(trace_id="wrong") == 0
    assert isinstance(adapter.processor, SGPTracingProcessor)
    assert adapter.processor.stats.dropped == {"sink_not_running": 8}  # 4 starts, 4 ends
