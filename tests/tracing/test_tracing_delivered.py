"""The awaited tracing path: ``deliver_start`` / ``deliver_end``, the tracer's delivered
start and end (the Temporal shape), and ``send_starts=False``.

Against the local server in-process through a real ``UpsertQueue``; the accounting identity
is checked after every scenario.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import anyio
import pytest

from sgp_client import (
    AsyncSGPClient,
    DropReason,
    QueueStats,
    SGPError,
    SpanDroppedError,
    SpanItem,
    UpsertQueue,
)
from sgp_client.testing import ServerControl
from sgp_tracing import SGPTracingProcessor, Span, Tracer
from sgp_tracing.testing import RecordingSink

pytestmark = pytest.mark.anyio

NEVER = 60.0  # no flush interval ends a wait here: only the awaited path sends


def balanced(stats: QueueStats) -> bool:
    return stats.submitted == (
        stats.delivered + stats.coalesced + stats.pending + stats.in_flight + stats.dropped_total
    )


def stored(control: ServerControl) -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in control.store.all_spans()}


async def test_deliver_start_returns_once_the_start_is_stored(
    client: AsyncSGPClient, control: ServerControl
) -> None:
    async with UpsertQueue(client, flush_interval=NEVER) as queue:
        processor = SGPTracingProcessor(queue)
        span = Span(id="s1", trace_id="t1", name="tool", start_time=datetime.now(UTC))
        with anyio.fail_after(5):
            await processor.deliver_start(span)
        row = stored(control)["s1"]
        assert row["end_timestamp"] is None
        span.end_time, span.status = datetime.now(UTC), "SUCCESS"
        await processor.deliver_end(span)
        assert stored(control)["s1"]["status"] == "SUCCESS"
        assert queue.stats.delivered == 2
        assert balanced(queue.stats)
    assert processor.stats.dropped == {}


async def test_a_delivered_start_can_be_ended_by_another_process(
    client: AsyncSGPClient, control: ServerControl
) -> None:
    # Two queues and two tracers stand for two worker processes; the span crosses as a dict.
    async with UpsertQueue(client, flush_interval=NEVER) as first:
        starter = Tracer(SGPTracingProcessor(first))
        span = await starter.start_span_delivered("activity", input={"q": 1})
        payload = span.to_dict()
        assert stored(control)[span.id]["end_timestamp"] is None
        async with UpsertQueue(client, flush_interval=NEVER) as second:
            ender = Tracer(SGPTracingProcessor(second))
            await ender.end_span_delivered(Span.from_dict(payload), output={"a": 2})
            assert balanced(second.stats)
        assert balanced(first.stats)
    row = stored(control)[span.id]
    assert (row["input"], row["output"], row["status"]) == ({"q": 1}, {"a": 2}, "SUCCESS")
    assert row["end_timestamp"] is not None
    assert control.stats()["upsert_requests"] == 2


async def test_deliver_end_raises_when_the_write_is_dropped(
    client: AsyncSGPClient, control: ServerControl
) -> None:
    control.set_faults(status_code=422, status_every_n=1)
    async with UpsertQueue(client, flush_interval=NEVER) as queue:
        tracer = Tracer(SGPTracingProcessor(queue))
        span = tracer.start_span("doomed")  # fire and forget: pending, not sent yet
        with pytest.raises(SpanDroppedError) as caught:
            await tracer.end_span_delivered(span)
        assert caught.value.reason == DropReason.REJECTED
        assert caught.value.span_id == span.id
        assert balanced(queue.stats)
    assert queue.stats.dropped == {DropReason.REJECTED: 1}


async def test_an_event_the_processor_cannot_use_is_counted_not_raised(
    client: AsyncSGPClient,
) -> None:
    async with UpsertQueue(client, flush_interval=NEVER) as queue:
        processor = SGPTracingProcessor(queue)
        hopeless = Span(id="", trace_id="t", name="n", start_time=datetime.now(UTC))
        await processor.deliver_start(hopeless)  # an id cannot be guessed
        assert processor.stats.dropped == {"invalid_id": 1}
        assert queue.stats.submitted == 0


async def test_deliver_start_without_starts_returns_at_once(
    client: AsyncSGPClient, control: ServerControl
) -> None:
    async with UpsertQueue(client, flush_interval=NEVER) as queue:
        processor = SGPTracingProcessor(queue, send_starts=False)
        span = Span(id="q", trace_id="t", name="n", start_time=datetime.now(UTC))
        await processor.deliver_start(span)
        processor.on_span_start(span)
        assert queue.stats.submitted == 0
        span.end_time = datetime.now(UTC)
        await processor.deliver_end(span)
    assert control.stats()["upsert_requests"] == 1
    assert stored(control)["q"]["status"] == "SUCCESS"


@pytest.mark.parametrize("send_starts", [True, False])
async def test_without_starts_half_the_items_are_written(
    client: AsyncSGPClient, control: ServerControl, send_starts: bool
) -> None:
    spans = 10
    async with UpsertQueue(client, flush_interval=NEVER) as queue:
        tracer = Tracer(SGPTracingProcessor(queue, send_starts=send_starts))
        for n in range(spans):
            span = await tracer.start_span_delivered(f"step-{n}")
            await tracer.end_span_delivered(span)
        assert balanced(queue.stats)
    writes = control.stats()["items_received"]
    assert writes == (2 * spans if send_starts else spans)
    rows = stored(control)
    assert len(rows) == spans
    assert all(row["end_timestamp"] is not None for row in rows.values())


async def test_the_block_form_without_starts_writes_ends_only(
    client: AsyncSGPClient, control: ServerControl
) -> None:
    async with UpsertQueue(client, flush_interval=NEVER) as queue:
        tracer = Tracer(SGPTracingProcessor(queue, send_starts=False))
        async with tracer.trace("root"), tracer.span("child"):
            assert queue.stats.submitted == 0  # no "Running" state while open
        assert queue.stats.submitted == 2
    assert control.stats()["items_received"] == 2


async def test_deliver_through_a_recording_sink() -> None:
    sink = RecordingSink()
    tracer = Tracer(SGPTracingProcessor(sink))
    span = await tracer.start_span_delivered("recorded", input={"i": 1})
    await tracer.end_span_delivered(span, output={"o": 2})
    assert len(sink.records) == 2
    assert sink.by_name("recorded")["output"] == {"o": 2}
    assert sink.violations == []


class _SubmitOnly:
    """A third-party sink: ``submit`` only, nothing to await."""

    def __init__(self) -> None:
        self.items: list[SpanItem] = []

    def submit(self, item: SpanItem, /) -> None:
        self.items.append(item)


async def test_a_sink_that_cannot_be_awaited_still_gets_the_delivered_events() -> None:
    sink = _SubmitOnly()
    processor = SGPTracingProcessor(sink)
    tracer = Tracer(processor)
    span = await tracer.start_span_delivered("tool", input={"a": 1})
    await tracer.end_span_delivered(span, output={"b": 2})
    assert [item.completed for item in sink.items] == [False, True]
    assert processor.stats.dropped == {}


async def test_one_processor_that_drops_does_not_cost_the_others_the_event(
    client: AsyncSGPClient,
) -> None:
    async with UpsertQueue(client, flush_interval=NEVER) as queue:
        pass  # closed: its processor's awaited start cannot be delivered
    recording = RecordingSink()
    tracer = Tracer([SGPTracingProcessor(queue), SGPTracingProcessor(recording)])
    with pytest.raises(SGPError):
        await tracer.start_span_delivered("tool")
    assert len(recording.starts) == 1  # the second processor still had the event
