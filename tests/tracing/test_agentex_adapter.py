"""The agentex adapter without agentex installed: agent identity, Temporal's datetimes on the
processor's fast path, and starts that return only once delivered (local server, in-process).

The real agentex machinery is in test_agentex_real.py (Python >= 3.12).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic_core import TzInfo

from sgp_client import AsyncSGPClient, QueueNotRunningError, UpsertQueue
from sgp_client.testing import ServerControl
from sgp_tracing import SGPTracingProcessor, Span
from sgp_tracing.agentex import AgentexTracingProcessor, agent_metadata, from_agentex_span
from sgp_tracing.testing import RecordingSink
from tests._helpers import AgentexSpan

START = datetime(2025, 3, 1, 8, 30, tzinfo=UTC)


class PathSink(RecordingSink):
    """Counts which entry point the processor used: records are its fast path."""

    def __init__(self) -> None:
        super().__init__(prepared=True)
        self.fast = 0
        self.slow = 0

    def submit(self, item: Any, /) -> None:
        self.slow += 1
        super().submit(item)

    def submit_record(self, record: Any, /) -> None:  # upsert_record goes through it too
        self.fast += 1
        super().submit_record(record)


def test_identity_comes_from_agentex_environment_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("ACP_TYPE", "AGENT_NAME", "AGENT_ID", "AGENT_VERSION"):
        monkeypatch.delenv(name, raising=False)
    assert agent_metadata() == {"__source__": "agentex", "__acp_type__": "async"}
    monkeypatch.setenv("ACP_TYPE", "sync")
    monkeypatch.setenv("AGENT_NAME", "support-bot")
    monkeypatch.setenv("AGENT_ID", "ag-1")
    monkeypatch.setenv("AGENT_VERSION", "v3")
    adapter = AgentexTracingProcessor(SGPTracingProcessor(RecordingSink()))
    assert adapter.identity == {
        "__source__": "agentex",
        "__acp_type__": "sync",
        "__agent_name__": "support-bot",
        "__agent_id__": "ag-1",
        "__agent_version__": "v3",
    }
    # Given explicitly, the environment is not read.
    assert agent_metadata(agent_name="x") == {"__source__": "agentex", "__agent_name__": "x"}


def test_identity_overrides_data_keys_and_data_is_not_changed() -> None:
    data: dict[str, object] = {"__source__": "mine", "k": 1}
    span = AgentexSpan(id="s", name="n", start_time=START, trace_id="t", data=data)
    converted = from_agentex_span(span, identity={"__source__": "agentex"})
    assert converted.metadata == {"__source__": "agentex", "k": 1}  # as agentex's processor
    assert data == {"__source__": "mine", "k": 1}
    # List-shaped data has no place for keys: left to the processor, which wraps it.
    listed = AgentexSpan(id="s", name="n", start_time=START, trace_id="t", data=[{"a": 1}])
    assert from_agentex_span(listed, identity={"__source__": "agentex"}).metadata == [{"a": 1}]


@pytest.mark.anyio
async def test_temporal_datetimes_take_the_processors_fast_path() -> None:
    """Temporal's pydantic converter yields datetimes with pydantic's TzInfo."""
    offset = TzInfo(3600)  # +01:00, as a converter may give it
    start = datetime(2025, 3, 1, 9, 30, tzinfo=offset)
    span = AgentexSpan(
        id="s1",
        name="activity",
        start_time=start,
        end_time=start + timedelta(seconds=1),
        trace_id="t",
        data={"k": "v"},
        input={"q": 1},
        output={"a": 2},
    )
    assert type(span.start_time.tzinfo) is TzInfo

    converted = from_agentex_span(span)
    assert type(converted.start_time.tzinfo) is timezone
    assert converted.start_time == START  # the same instant
    assert converted.end_time == START + timedelta(seconds=1)

    sink = PathSink()
    adapter = AgentexTracingProcessor(SGPTracingProcessor(sink), identity={})
    await adapter.on_span_end(span)
    assert (sink.fast, sink.slow) == (1, 0)
    (record,) = sink.records
    assert record["start_timestamp"].startswith("2025-03-01T08:30:00")

    # The same span straight into the processor (no normalization) misses the fast path.
    raw = PathSink()
    SGPTracingProcessor(raw).on_span_end(
        Span(
            id="s1",
            trace_id="t",
            name="activity",
            start_time=span.start_time,
            end_time=span.end_time,
            metadata={"k": "v"},
        )
    )
    assert (raw.fast, raw.slow) == (0, 1)


@pytest.mark.anyio
async def test_starts_and_ends_return_once_delivered(
    client: AsyncSGPClient, control: ServerControl
) -> None:
    # A flush interval no test waits out: only the adapter's awaited start can deliver it.
    async with UpsertQueue(client, flush_interval=3600) as queue:
        adapter = AgentexTracingProcessor.for_sink(queue, identity={"__source__": "agentex"})
        span = AgentexSpan(id="d1", name="turn", start_time=START, trace_id="t1")
        await adapter.on_span_start(span)
        (stored,) = control.store.all_spans()
        assert stored["id"] == "d1"
        assert stored.get("end_timestamp") is None
        assert stored["metadata"] == {"__source__": "agentex"}

        # A batch too: on_spans_start returns with every start stored.
        batch = [
            AgentexSpan(id=f"d{i}", name="step", start_time=START, trace_id="t1", parent_id="d1")
            for i in range(2, 7)
        ]
        await adapter.on_spans_start(batch)
        assert {s["id"] for s in control.store.all_spans()} == {f"d{i}" for i in range(1, 7)}

        # An end is awaited too (agentex's end-span activity completes once it is stored).
        span.end_time = START + timedelta(seconds=3)
        await adapter.on_span_end(span)
        ends = [s for s in control.store.all_spans() if s["id"] == "d1"]
        assert ends[0]["end_timestamp"] is not None
        assert ends[0]["status"] == "SUCCESS"


@pytest.mark.anyio
async def test_start_on_a_closed_queue_raises_so_the_activity_is_retried(
    client: AsyncSGPClient,
) -> None:
    # An awaited start that cannot be delivered must not pass for a delivered one: in a
    # Temporal activity the exception fails the attempt, and another worker retries it.
    async with UpsertQueue(client) as queue:
        adapter = AgentexTracingProcessor.for_sink(queue, identity={})
    span = AgentexSpan(id="late", name="n", start_time=START, trace_id="t")
    with pytest.raises(QueueNotRunningError):
        await adapter.on_span_start(span)
