"""The agentex adapter, driven by look-alikes of agentex's span model (not a dependency)."""

from __future__ import annotations

import copy
from datetime import timedelta
from typing import Any

import pytest

from sgp_tracing import SGPTracingProcessor
from sgp_tracing.agentex import AgentexTracingProcessor, agent_metadata, from_agentex_span
from sgp_tracing.testing import RecordingSink
from tests._helpers import START, AgentexSpan

# Every processor test runs through both of a sink's entry points (see conftest).
pytestmark = pytest.mark.usefixtures("sink_path")


class PlainSpan:
    """A bare object with the same attributes."""

    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)


#: The agent keys agentex's own SGP processor adds to each span's metadata.
IDENTITY = agent_metadata(acp_type="async", agent_name="bot-agent", agent_id="agent-7")


def adapter() -> tuple[AgentexTracingProcessor, SGPTracingProcessor, RecordingSink]:
    sink = RecordingSink()
    processor = SGPTracingProcessor(sink)
    return AgentexTracingProcessor(processor, identity=IDENTITY), processor, sink


@pytest.mark.anyio
async def test_start_and_end_with_type_and_data_as_metadata() -> None:
    agentex, processor, sink = adapter()
    span = AgentexSpan(
        id="a1",
        name="turn",
        start_time=START,
        trace_id="task-1",
        data={"__span_type__": "AGENT_WORKFLOW", "agent": "bot"},
        input={"message": "hi"},
    )
    before = copy.deepcopy(span.model_dump())
    await agentex.on_span_start(span)
    span.end_time = START + timedelta(seconds=2)
    span.output = {"final_output": "hello"}
    before_end = copy.deepcopy(span.model_dump())
    await agentex.on_span_end(span)
    assert span.model_dump() == before_end  # never mutated
    assert before["data"] == span.data

    start_record, end_record = sink.records
    assert start_record["type"] == "AGENT_WORKFLOW"
    assert "status" not in start_record
    assert end_record["status"] == "SUCCESS"
    assert end_record["metadata"] == {"__span_type__": "AGENT_WORKFLOW", "agent": "bot", **IDENTITY}
    assert IDENTITY == {
        "__source__": "agentex",
        "__acp_type__": "async",
        "__agent_name__": "bot-agent",
        "__agent_id__": "agent-7",
    }
    assert start_record["output"] == {}  # agentex's processor sends {} for an absent output
    assert end_record["input"] == {"message": "hi"}
    assert end_record["output"] == {"final_output": "hello"}
    assert end_record["trace_id"] == "task-1"
    assert processor.stats.dropped == {}
    assert sink.violations == []


@pytest.mark.anyio
async def test_error_in_data_means_error_status_and_span_is_not_mutated() -> None:
    agentex, _, sink = adapter()
    error = {"type": "ToolError", "message": "tool failed"}
    data: dict[str, object] = {"__error__": error}
    span = PlainSpan(
        id="a2",
        trace_id="t",
        parent_id="a1",
        name="tool",
        start_time=START,
        end_time=START + timedelta(seconds=1),
        input=[{"arg": 1}],
        output=None,
        data=data,
    )
    snapshot = copy.deepcopy(span.__dict__)
    await agentex.on_span_end(span)  # type: ignore[arg-type] # duck-typed on purpose
    assert span.__dict__ == snapshot
    assert data == {"__error__": error}
    (record,) = sink.records
    assert record["status"] == "ERROR"
    assert record["type"] == "STANDALONE"  # agentex's default when data has no type
    assert record["parent_id"] == "a1"
    assert record["input"] == {"value": [{"arg": 1}]}  # a list input, wrapped
    assert record["output"] == {}
    # As agentex's processor writes an error (scale-gp-beta's set_error, category "unknown").
    assert record["metadata"] == {
        "__error__": error,
        **IDENTITY,
        "error": True,
        "error_type": "ToolError",
        "error_message": "tool failed",
        "error_category": "unknown",
    }


@pytest.mark.anyio
async def test_batches_list_data_unknown_type_and_broken_spans() -> None:
    agentex, processor, sink = adapter()
    good = [
        AgentexSpan(id=f"b{i}", name="n", start_time=START, trace_id="t", data=[{"x": i}])
        for i in range(3)
    ]
    odd = AgentexSpan(
        id="b9", name="n", start_time=START, trace_id="t", data={"__span_type__": "WHATEVER"}
    )
    await agentex.on_spans_start([*good, odd, object()])  # type: ignore[list-item]
    for span in good:
        span.end_time = START
    await agentex.on_spans_end(good)
    assert len(sink.starts) == 4
    assert len(sink.ends) == 3
    # Starts are delivered concurrently (one request for the batch): look them up by id.
    starts = {start["id"]: start for start in sink.starts}
    assert starts["b0"]["metadata"] == {"value": [{"x": 0}]}
    assert starts["b9"]["type"] == "CUSTOM"
    # object() has no attributes: no id, so the processor drops it, counted; nothing raised.
    assert processor.stats.dropped == {"invalid_id": 1}
    await agentex.shutdown()
    await agentex.on_span_start(good[0])
    assert processor.stats.dropped == {"invalid_id": 1, "shutdown": 1}


@pytest.mark.anyio
async def test_adapter_never_raises_from_a_broken_processor() -> None:
    class Broken:
        def on_span_start(self, span: Any, /) -> None:
            raise RuntimeError("x")

        on_span_end = on_spans_start = on_spans_end = on_span_start

        def shutdown(self) -> None:
            raise RuntimeError("y")

    agentex = AgentexTracingProcessor(Broken(), identity={})
    span = AgentexSpan(id="c", name="n", start_time=START, trace_id="t")
    await agentex.on_span_start(span)
    await agentex.on_span_end(span)
    await agentex.on_spans_start([span])
    await agentex.on_spans_end(42)  # type: ignore[arg-type]
    await agentex.shutdown()
    # Four calls and shutdown; the broken iterable is one failure (nothing left to hand on).
    assert agentex.errors == 5


def test_interface_matches_agentex_async_processor() -> None:
    import inspect

    for method in ("on_span_start", "on_span_end", "on_spans_start", "on_spans_end", "shutdown"):
        assert inspect.iscoroutinefunction(getattr(AgentexTracingProcessor, method)), method


def test_for_sink_and_conversion() -> None:
    sink = RecordingSink()
    agentex = AgentexTracingProcessor.for_sink(sink, max_payload_bytes=1024)
    assert isinstance(agentex.processor, SGPTracingProcessor)
    span = from_agentex_span(
        AgentexSpan(id="d", name="n", start_time=START, trace_id="t", data={"__error__": "boom"})
    )
    assert span.error == {"type": "Error", "message": "boom"}
    assert span.type == "STANDALONE"
    assert span.metadata["error_message"] == "boom"
