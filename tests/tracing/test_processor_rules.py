"""Rules the processor applies the same way to a span's start and to its end.

The start and the end share one implementation; these tests pin the rules that once drifted
apart between two copies: the payload size limit (checked on the end only, once) and the
coercion of an unhashable ``type`` or ``status`` (which was dropped as ``processor_error``).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sgp_client import AsyncSGPClient, UpsertQueue
from sgp_client.testing import ServerControl
from sgp_tracing import SGPTracingProcessor, Span, Tracer, to_json_safe
from sgp_tracing._processor import ORIGINAL_TYPE_METADATA_KEY
from sgp_tracing.testing import RecordingSink

LIMIT = 1024
START = datetime(2025, 1, 1, tzinfo=UTC)
# Over the limit in many short strings: cutting long strings cannot save it.
BIG = {f"key{i}": "x" * 100 for i in range(100)}


def span(**fields: Any) -> Span:
    values: dict[str, Any] = {"id": "s", "trace_id": "t", "name": "n", "start_time": START}
    values.update(fields)
    return Span(**values)


@pytest.mark.parametrize("takes_records", [True, False], ids=["records", "submit_only"])
def test_a_start_over_the_payload_limit_is_truncated(takes_records: bool) -> None:
    sink = RecordingSink(prepared=takes_records)
    processor = SGPTracingProcessor(sink, max_payload_bytes=LIMIT)
    processor.on_span_start(span(input=BIG))
    [start] = sink.records
    assert "end_timestamp" not in start
    assert start["input"]["__truncated__"] is True
    assert start["input"]["limit"] == LIMIT
    assert processor.stats.coerced == {"truncated": 1}
    assert processor.stats.dropped == {}
    assert sink.violations == []


@pytest.mark.parametrize("takes_records", [True, False], ids=["records", "submit_only"])
def test_a_start_within_the_limit_is_sent_as_is(takes_records: bool) -> None:
    sink = RecordingSink(prepared=takes_records)
    processor = SGPTracingProcessor(sink, max_payload_bytes=LIMIT)
    payload = {"text": "x" * (LIMIT - 100)}
    processor.on_span_start(span(input=payload))
    assert sink.records[0]["input"] == payload
    assert processor.stats.coerced == {}


@pytest.mark.anyio
async def test_a_tracer_start_over_the_limit_reaches_the_server_truncated(
    client: AsyncSGPClient, control: ServerControl
) -> None:
    # The Temporal shape: a start whose end happens elsewhere (never here). What the server
    # stores of it must respect the limit.
    async with UpsertQueue(client) as queue:
        tracer = Tracer(SGPTracingProcessor(queue, max_payload_bytes=LIMIT))
        started = tracer.start_span("big", input=BIG)
        assert await queue.flush(timeout=5)
    [row] = control.store.all_spans()
    assert row["id"] == started.id
    assert row["end_timestamp"] is None
    assert row["input"]["__truncated__"] is True
    assert queue.stats.delivered == 1


@pytest.mark.parametrize("takes_records", [True, False], ids=["records", "submit_only"])
@pytest.mark.parametrize(
    ("field", "value"),
    [("type", ["COMPLETION"]), ("type", {"k": 1}), ("status", ["SUCCESS"]), ("status", {1})],
)
def test_an_unhashable_type_or_status_is_coerced_not_dropped(
    takes_records: bool, field: str, value: object
) -> None:
    sink = RecordingSink(prepared=takes_records)
    processor = SGPTracingProcessor(sink)
    hostile = span(**{field: value})
    processor.on_span_start(hostile)
    hostile.end_time = START + timedelta(seconds=1)
    processor.on_span_end(hostile)
    assert processor.stats.dropped == {}
    assert len(sink.records) == 2
    end = sink.spans()[("t", "s")]
    assert "end_timestamp" in end
    if field == "type":
        assert end["type"] == "CUSTOM"
        assert end["metadata"][ORIGINAL_TYPE_METADATA_KEY] == to_json_safe(value)
        assert processor.stats.coerced == {"unknown_type": 2}
    else:
        assert end["status"] == "SUCCESS"
        assert processor.stats.coerced == {"invalid_status": 1}
    assert sink.violations == []
