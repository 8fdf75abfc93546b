"""Tracer -> SGPTracingProcessor -> UpsertQueue -> the in-process SGP server, end to end."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest
from starlette.applications import Starlette

from sgp_client import UpsertQueue
from sgp_client.testing import (
    ServerControl,
)
from sgp_tracing import SGPTracingProcessor, Span, Tracer
from tests._helpers import in_process_client

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def traced_queue(app: Starlette) -> AsyncIterator[tuple[Tracer, UpsertQueue]]:
    """One "process": its own client, queue, processor and tracer, all on ``app``."""
    async with (
        in_process_client(app) as client,
        UpsertQueue(client, flush_interval=0.01) as queue,
    ):
        processor = SGPTracingProcessor(queue)
        yield Tracer(processor), queue
        assert processor.stats.dropped == {}


async def test_a_traced_run_lands_completed_on_the_server(
    app: Starlette, control: ServerControl
) -> None:
    async with traced_queue(app) as (tracer, queue):
        async with tracer.trace("agent-run", input={"question": "why?"}) as root:
            async with anyio.create_task_group() as tg:
                for index in range(5):

                    async def tool(index: int = index) -> None:
                        async with tracer.span("tool", type="CODE_EXECUTION") as span:
                            span.output = {"index": index}

                    tg.start_soon(tool)
            with pytest.raises(ZeroDivisionError):
                async with tracer.span("bad", input={"x": {1, 2}}):
                    1 / 0  # noqa: B018
            root.output = {"answer": "because"}
        assert await queue.flush(timeout=10)
        assert queue.stats.balanced

    stored = control.store.all_spans(trace_id=root.trace_id)
    assert len(stored) == 7
    assert all(s.get("end_timestamp") for s in stored)
    by_name = {s["name"]: s for s in stored}
    assert by_name["agent-run"]["output"] == {"answer": "because"}
    assert by_name["agent-run"]["status"] == "SUCCESS"
    assert by_name["bad"]["status"] == "ERROR"
    assert by_name["bad"]["input"] == {"x": [1, 2]}
    tools = [s for s in stored if s["name"] == "tool"]
    assert sorted(s["output"]["index"] for s in tools) == list(range(5))
    assert {s["parent_id"] for s in tools} == {root.id}


async def test_end_in_another_process_completes_the_span(
    app: Starlette, control: ServerControl
) -> None:
    # Start in "process A", flushed (the server has an in-progress row), end in "process B".
    async with traced_queue(app) as (tracer_a, queue_a):
        span = tracer_a.start_span("activity", trace_id="wf-1", input={"x": 1})
        assert await queue_a.flush(timeout=10)
    (in_progress,) = control.store.all_spans(trace_id="wf-1")
    assert not in_progress.get("end_timestamp")

    payload = json.dumps(span.to_dict())
    async with traced_queue(app) as (tracer_b, queue_b):
        tracer_b.end_span(Span.from_dict(json.loads(payload)), output={"y": 2})
        assert await queue_b.flush(timeout=10)

    (completed,) = control.store.all_spans(trace_id="wf-1")
    assert completed["end_timestamp"]
    assert completed["status"] == "SUCCESS"
    assert completed["input"] == {"x": 1}
    assert completed["output"] == {"y": 2}
    assert completed["start_timestamp"] == in_progress["start_timestamp"]


async def test_a_late_start_never_regresses_a_completed_span(
    app: Starlette, control: ServerControl
) -> None:
    # The end's process is faster: its completed write lands first, the start's later.
    async with traced_queue(app) as (tracer_a, queue_a):
        span = tracer_a.start_span("activity", trace_id="wf-2", input={"x": 1})
        payload = span.to_dict()
        async with traced_queue(app) as (tracer_b, queue_b):
            tracer_b.end_span(Span.from_dict(payload), output={"y": 2})
            assert await queue_b.flush(timeout=10)
        assert await queue_a.flush(timeout=10)

    (stored,) = control.store.all_spans(trace_id="wf-2")
    assert stored["end_timestamp"]
    assert stored["status"] == "SUCCESS"
    assert stored["output"] == {"y": 2}
