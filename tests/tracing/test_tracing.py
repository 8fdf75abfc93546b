"""The tracer and the stateless processor: nesting, propagation, outcomes, lifecycles."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given
from hypothesis import strategies as st

import sgp_tracing
from sgp_client import SpanItem, plain_record, record_of
from sgp_client._record import format_ns
from sgp_client._serialization import encode_record
from sgp_tracing import (
    SGPTracingProcessor,
    Span,
    Tracer,
    TracingProcessor,
    current_span,
    traced,
)
from sgp_tracing._span import datetime_from_ns, start_clock
from sgp_tracing.testing import RecordingSink

# Every processor test runs through both of a sink's entry points (see conftest).
pytestmark = pytest.mark.usefixtures("sink_path")


def make_tracer(**options: Any) -> tuple[Tracer, SGPTracingProcessor, RecordingSink]:
    sink = RecordingSink()
    processor = SGPTracingProcessor(sink, **options)
    return Tracer(processor), processor, sink


def assert_clean(processor: SGPTracingProcessor, sink: RecordingSink) -> None:
    assert processor.stats.dropped == {}
    assert sink.violations == []


# -- public API ---------------------------------------------------------------------------


def test_all_is_sorted_and_complete() -> None:
    assert sgp_tracing.__all__ == sorted(sgp_tracing.__all__)
    for name in sgp_tracing.__all__:
        assert hasattr(sgp_tracing, name), name
    required = {"Span", "Tracer", "TracingProcessor", "SGPTracingProcessor", "SpanSink"}
    assert required | {"traced", "current_span"} <= set(sgp_tracing.__all__)


def test_processor_satisfies_protocol() -> None:
    processor = SGPTracingProcessor(RecordingSink())
    assert isinstance(processor, TracingProcessor)


def test_invalid_processor_options_raise_at_construction() -> None:
    with pytest.raises(ValueError, match="max_payload_bytes"):
        SGPTracingProcessor(RecordingSink(), max_payload_bytes=10)
    with pytest.raises(ValueError, match="default_type"):
        SGPTracingProcessor(RecordingSink(), default_type="NOPE")  # type: ignore[arg-type]


# -- nesting and propagation -------------------------------------------------------------


@pytest.mark.anyio
async def test_nesting_sets_trace_and_parent_ids() -> None:
    tracer, processor, sink = make_tracer()
    async with tracer.trace("root", input={"q": "hi"}) as root:
        assert current_span() is root
        async with tracer.span("child", type="COMPLETION") as child:
            assert current_span() is child
            async with tracer.span("grandchild") as grandchild:
                grandchild.output = {"answer": 42}
        assert current_span() is root
    assert current_span() is None

    assert root.parent_id is None
    assert root.trace_id == root.id
    assert (child.trace_id, child.parent_id) == (root.trace_id, root.id)
    assert (grandchild.trace_id, grandchild.parent_id) == (root.trace_id, child.id)
    # Start and end of each span, starts in opening order, ends in closing order.
    assert [r["name"] for r in sink.starts] == ["root", "child", "grandchild"]
    assert [r["name"] for r in sink.ends] == ["grandchild", "child", "root"]
    assert sink.by_name("grandchild")["output"] == {"answer": 42}
    assert sink.by_name("child")["type"] == "COMPLETION"
    assert sink.by_name("root")["input"] == {"q": "hi"}
    assert all(r["status"] == "SUCCESS" for r in sink.ends)
    assert_clean(processor, sink)


@pytest.mark.anyio
async def test_span_without_current_starts_a_new_trace() -> None:
    tracer, _, sink = make_tracer()
    async with tracer.span("a") as a:
        pass
    async with tracer.span("b") as b:
        pass
    assert a.parent_id is None
    assert b.parent_id is None
    assert a.trace_id != b.trace_id
    assert len(sink.spans()) == 2


@pytest.mark.anyio
async def test_trace_inside_a_span_starts_a_separate_trace() -> None:
    tracer, _, _ = make_tracer()
    async with tracer.trace("outer") as outer, tracer.trace("inner", trace_id="task-1") as inner:
        assert inner.trace_id == "task-1"
        assert inner.parent_id is None
        async with tracer.span("leaf") as leaf:
            assert (leaf.trace_id, leaf.parent_id) == ("task-1", inner.id)
    assert outer.trace_id != inner.trace_id


@pytest.mark.anyio
async def test_concurrent_children_in_task_group_get_the_right_parent() -> None:
    tracer, processor, sink = make_tracer()
    seen: dict[str, tuple[str | None, str]] = {}

    async def worker(index: int) -> None:
        async with tracer.span(f"worker-{index}") as span:
            await anyio.lowlevel.checkpoint()  # interleave with the siblings
            async with tracer.span(f"leaf-{index}") as leaf:
                await anyio.lowlevel.checkpoint()
                seen[f"leaf-{index}"] = (leaf.parent_id, leaf.trace_id)
            seen[f"worker-{index}"] = (span.parent_id, span.trace_id)

    async with tracer.trace("root") as root:
        async with anyio.create_task_group() as tg:
            for index in range(10):
                tg.start_soon(worker, index)
        assert current_span() is root

    for index in range(10):
        assert seen[f"worker-{index}"] == (root.id, root.trace_id)
        worker_id = sink.by_name(f"worker-{index}")["id"]
        assert seen[f"leaf-{index}"] == (worker_id, root.trace_id)
    assert len(sink.spans()) == 21
    assert_clean(processor, sink)


@pytest.mark.anyio
async def test_current_span_follows_await_and_is_none_outside() -> None:
    tracer, _, _ = make_tracer()
    assert current_span() is None

    async def inner() -> Span | None:
        await anyio.lowlevel.checkpoint()
        return current_span()

    async with tracer.span("x") as span:
        assert await inner() is span
    assert current_span() is None


# -- outcomes ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_exception_sets_error_status_and_is_reraised() -> None:
    tracer, processor, sink = make_tracer()
    with pytest.raises(KeyError, match="missing"):
        async with tracer.span("fails") as span:
            raise KeyError("missing")
    assert span.status == "ERROR"
    assert span.error == {"type": "KeyError", "message": "'missing'"}
    record = sink.by_name("fails")
    assert record["status"] == "ERROR"
    assert record["metadata"]["__error__"] == {"type": "KeyError", "message": "'missing'"}
    assert_clean(processor, sink)


@pytest.mark.anyio
async def test_cancellation_sets_canceled_status_and_propagates() -> None:
    tracer, processor, sink = make_tracer()
    spans: list[Span] = []
    with anyio.move_on_after(0.01) as scope:
        async with tracer.span("cancelled") as span:
            spans.append(span)
            await anyio.sleep(10)
    assert scope.cancelled_caught
    assert spans[0].status == "CANCELED"
    assert spans[0].error is not None
    assert spans[0].error["type"] == anyio.get_cancelled_exc_class().__name__
    assert sink.by_name("cancelled")["status"] == "CANCELED"
    assert_clean(processor, sink)


@pytest.mark.anyio
async def test_cancelled_task_in_task_group_is_canceled_and_sibling_error_is_error() -> None:
    tracer, processor, sink = make_tracer()

    async def sleeper() -> None:
        async with tracer.span("sleeper"):
            await anyio.sleep(10)

    async def failer() -> None:
        async with tracer.span("failer"):
            await anyio.lowlevel.checkpoint()
            raise RuntimeError("boom")

    async def run() -> None:
        async with tracer.trace("root"), anyio.create_task_group() as tg:
            tg.start_soon(sleeper)
            tg.start_soon(failer)

    with pytest.raises(ExceptionGroup) as caught:
        await run()
    assert caught.group_contains(RuntimeError)
    assert sink.by_name("sleeper")["status"] == "CANCELED"
    assert sink.by_name("failer")["status"] == "ERROR"
    assert sink.by_name("root")["status"] == "ERROR"
    assert_clean(processor, sink)


@pytest.mark.anyio
async def test_user_set_status_is_kept_when_no_exception() -> None:
    tracer, _, sink = make_tracer()
    async with tracer.span("soft-fail") as span:
        span.status = "ERROR"
    assert sink.by_name("soft-fail")["status"] == "ERROR"


# -- explicit lifecycles and the dict round trip -----------------------------------------


def test_dict_round_trip_is_exact_including_start() -> None:
    start = datetime(2024, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)
    span = Span(
        id="s1",
        trace_id="t1",
        name="tool",
        start_time=start,
        parent_id="p1",
        end_time=start + timedelta(microseconds=1),
        input={"a": [1, 2.5, None, True]},
        output={"b": "ü"},
        metadata={"k": {"nested": "v"}},
        type="CODE_EXECUTION",
        status="SUCCESS",
        group_id="g1",
        error={"type": "E", "message": "m"},
    )
    payload = span.to_dict()
    assert Span.from_dict(payload) == span
    text = json.dumps(payload)  # plain JSON, the standard library can write it
    again = Span.from_dict(json.loads(text))
    assert again == span
    assert again.start_time == start
    assert again.start_time.utcoffset() == timedelta(0)


def test_to_dict_converts_payloads_that_are_not_json() -> None:
    span = Span(id="s", trace_id="t", name="n", start_time=datetime.now(UTC), input={"s": {1}})
    payload = span.to_dict()
    json.dumps(payload)
    assert payload["input"] == {"s": [1]}


@pytest.mark.parametrize(
    ("garbage", "message"),
    [
        (None, "expects a dict"),
        ([1, 2], "expects a dict"),
        ({}, "'id' must be a non-empty str"),
        ({"id": "s", "trace_id": "t", "name": "n"}, "'start_time' is required"),
        ({"id": "s", "trace_id": "t", "name": "n", "start_time": "yesterday"}, "not ISO 8601"),
        ({"id": "s", "trace_id": "t", "name": "n", "start_time": 12}, "ISO 8601 str"),
        ({"id": 1, "trace_id": "t", "name": "n", "start_time": "2024-01-01T00:00:00"}, "'id'"),
        (
            {"id": "s", "trace_id": "t", "name": "n", "start_time": "2024-01-01", "status": "OK"},
            "'status' must be one of",
        ),
        (
            {"id": "s", "trace_id": "t", "name": "n", "start_time": "2024-01-01", "error": "x"},
            "'error' must be a dict",
        ),
        (
            {"id": "s", "trace_id": "t", "name": "n", "start_time": "2024-01-01", "type": 3},
            "'type' must be a str",
        ),
    ],
)
def test_from_dict_rejects_garbage_with_a_clear_value_error(garbage: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Span.from_dict(garbage)


@pytest.mark.anyio
async def test_start_here_end_with_another_tracer_and_processor() -> None:
    # Two "processes": separate sinks, processors and tracers; only the dict travels.
    tracer_a, processor_a, sink_a = make_tracer()
    tracer_b, processor_b, sink_b = make_tracer()
    async with tracer_a.trace("workflow") as root:
        span = tracer_a.start_span("activity", input={"x": 1}, type="CODE_EXECUTION")
        assert (span.trace_id, span.parent_id) == (root.trace_id, root.id)
        assert current_span() is root  # start_span does not change the current span
    payload = json.loads(json.dumps(span.to_dict()))

    ended = tracer_b.end_span(Span.from_dict(payload), output={"y": 2})
    assert ended.status == "SUCCESS"

    (start_record,) = [r for r in sink_a.records if r["name"] == "activity"]
    (end_record,) = sink_b.records
    assert "end_timestamp" not in start_record
    assert end_record["start_timestamp"] == start_record["start_timestamp"]
    assert (end_record["trace_id"], end_record["id"]) == (start_record["trace_id"], span.id)
    assert end_record["input"] == {"x": 1}
    assert end_record["output"] == {"y": 2}
    assert end_record["status"] == "SUCCESS"
    assert end_record["type"] == "CODE_EXECUTION"
    assert_clean(processor_a, sink_a)
    assert_clean(processor_b, sink_b)


def test_end_built_in_a_real_subprocess_carries_the_exact_start() -> None:
    tracer, _, sink = make_tracer()
    span = tracer.start_span("remote", trace_id="trace-x", input={"q": "hi"})
    child_code = textwrap.dedent(
        """
        import json, sys
        from sgp_tracing import SGPTracingProcessor, Span, Tracer
        from sgp_tracing.testing import RecordingSink

        sink = RecordingSink()
        tracer = Tracer(SGPTracingProcessor(sink))
        span = Span.from_dict(json.loads(sys.stdin.read()))
        tracer.end_span(span, output={"done": True})
        print(json.dumps({"records": sink.records, "violations": sink.violations}))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", child_code],
        input=json.dumps(span.to_dict()),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    child = json.loads(result.stdout)
    assert child["violations"] == []
    (end_record,) = child["records"]
    (start_record,) = sink.records
    assert end_record["start_timestamp"] == start_record["start_timestamp"]
    assert end_record["id"] == span.id
    assert end_record["trace_id"] == "trace-x"
    assert end_record["output"] == {"done": True}
    assert end_record["status"] == "SUCCESS"


def test_end_span_with_an_exception_or_error_dict_or_status() -> None:
    tracer, processor, sink = make_tracer()
    a = tracer.end_span(tracer.start_span("a"), error=ValueError("bad"))
    b = tracer.end_span(tracer.start_span("b"), error={"type": "Timeout", "message": "slow"})
    c = tracer.end_span(tracer.start_span("c"), status="CANCELED")
    assert (a.status, b.status, c.status) == ("ERROR", "ERROR", "CANCELED")
    assert sink.by_name("a")["metadata"]["__error__"] == {"type": "ValueError", "message": "bad"}
    assert sink.by_name("b")["status"] == "ERROR"
    assert sink.by_name("c")["status"] == "CANCELED"
    assert_clean(processor, sink)


def test_end_before_start_is_clamped_not_rejected() -> None:
    tracer, processor, sink = make_tracer()
    start = datetime.now(UTC)
    span = tracer.start_span("skewed", start_time=start)
    tracer.end_span(span, end_time=start - timedelta(seconds=5))
    record = sink.by_name("skewed")
    assert record["end_timestamp"] == record["start_timestamp"]
    # A span object whose end was forced back is clamped by the processor as well.
    span.end_time = start - timedelta(seconds=5)
    processor.on_span_end(span)
    assert processor.stats.coerced.get("end_before_start") == 1
    assert_clean(processor, sink)


def test_end_only_processor_produces_a_completed_item() -> None:
    # The processor never saw the start: the end alone is a complete span.
    _, processor, sink = make_tracer()
    start = datetime.now(UTC)
    span = Span(
        id="only-end",
        trace_id="t",
        name="n",
        start_time=start,
        end_time=start + timedelta(milliseconds=5),
        input={"a": 1},
        output={"b": 2},
    )
    processor.on_span_end(span)
    (record,) = sink.records
    assert record["status"] == "SUCCESS"
    assert record["input"] == {"a": 1}
    assert record["output"] == {"b": 2}
    assert datetime.fromisoformat(record["start_timestamp"]) == start
    assert_clean(processor, sink)


def test_batch_methods_and_shutdown() -> None:
    _, processor, sink = make_tracer()
    now = datetime.now(UTC)
    spans = [Span(id=f"s{i}", trace_id="t", name="n", start_time=now) for i in range(3)]
    processor.on_spans_start(spans)
    for span in spans:
        span.end_time = now
    processor.on_spans_end(spans)
    assert len(sink.starts) == 3
    assert len(sink.ends) == 3
    processor.shutdown()
    processor.on_span_end(spans[0])
    assert len(sink.records) == 6
    assert processor.stats.dropped == {"shutdown": 1}


# -- clock readings: int nanoseconds until read ----------------------------------------


@given(st.integers(min_value=0, max_value=2**62))
def test_the_queue_formats_a_clock_reading_as_the_span_reads_it(ns: int) -> None:
    # Two conversions of one reading, one per side of the fast path: they must agree to the
    # microsecond, or a span's start would not be the start the server stores.
    assert datetime.fromisoformat(format_ns(ns)) == datetime_from_ns(ns)
    assert datetime_from_ns(ns).tzinfo is UTC


@pytest.mark.anyio
async def test_a_tracer_span_reads_as_aware_datetimes_that_round_trip(sink_path: str) -> None:
    tracer, processor, sink = make_tracer()
    before = datetime.now(UTC)
    async with tracer.span("timed") as span:
        # Still the clock reading, unless a submit-only sink needed a datetime item.
        assert (span._start_ns is not None) is (sink_path == "prepared")
        await anyio.lowlevel.checkpoint()
    after = datetime.now(UTC)
    start, end = span.start_time, span.end_time
    assert isinstance(start, datetime)
    assert isinstance(end, datetime)
    assert start.tzinfo is UTC
    assert end.tzinfo is UTC
    assert before - timedelta(milliseconds=1) <= start <= end <= after + timedelta(milliseconds=1)
    assert span._start_ns is None
    assert span.start_time is start  # converted once, then kept
    assert Span.from_dict(span.to_dict()) == span
    assert Span.from_dict(json.loads(json.dumps(span.to_dict()))) == span
    record = sink.by_name("timed")
    assert datetime.fromisoformat(record["start_timestamp"]) == start
    assert datetime.fromisoformat(record["end_timestamp"]) == end
    assert_clean(processor, sink)


@pytest.mark.anyio
async def test_times_set_by_hand_mix_with_clock_readings() -> None:
    tracer, processor, sink = make_tracer()
    # A start replaced inside the block with a datetime: the end is taken as a datetime too.
    given_start = datetime.now(UTC) - timedelta(seconds=5)
    async with tracer.span("restarted") as span:
        span.start_time = given_start
    assert span.start_time == given_start
    assert span.end_time is not None
    assert span.end_time >= given_start
    # A clock-read start ended elsewhere with an explicit datetime end.
    started = tracer.start_span("explicit")
    start_clock(started, 1_700_000_000_123_456_789)
    tracer.end_span(started, end_time=datetime(2023, 11, 14, 22, 13, 21, tzinfo=UTC))
    # A naive start set by hand never breaks the block.
    async with tracer.span("naive") as span:
        span.start_time = datetime(2025, 1, 1)
    records = {name: sink.by_name(name) for name in ("restarted", "explicit", "naive")}
    assert datetime.fromisoformat(records["restarted"]["start_timestamp"]) == given_start
    explicit = records["explicit"]
    assert explicit["start_timestamp"] == "2023-11-14T22:13:20.123456+00:00"
    assert datetime.fromisoformat(explicit["end_timestamp"]) == datetime(
        2023, 11, 14, 22, 13, 21, tzinfo=UTC
    )
    assert records["naive"]["start_timestamp"].startswith("2025-01-01T00:00:00")
    assert processor.stats.dropped == {}
    assert sink.violations == []


# -- @traced -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_traced_uses_the_tracer_of_the_current_span() -> None:
    tracer, processor, sink = make_tracer()

    inside: list[Span | None] = []

    @traced
    async def plain(x: int) -> int:
        inside.append(current_span())
        return x + 1

    @traced(name="tool", type="CODE_EXECUTION", capture_args=True, capture_result=True)
    async def tool(self_like: str, n: int, *, flag: bool = False) -> dict[str, int]:
        return {"n": n}

    assert await plain(1) == 2  # outside any span: not traced, still called
    assert sink.records == []
    assert inside == [None]
    async with tracer.trace("root") as root:
        assert await plain(2) == 3
        assert await tool("s", 5, flag=True) == {"n": 5}

    plain_record = sink.by_name(plain.__qualname__)
    assert inside[1] is not None
    assert inside[1].id == plain_record["id"]
    assert plain_record["parent_id"] == root.id
    assert "input" not in plain_record
    assert "output" not in plain_record
    tool_record = sink.by_name("tool")
    assert tool_record["type"] == "CODE_EXECUTION"
    assert tool_record["input"] == {"self_like": "s", "n": 5, "flag": True}
    assert tool_record["output"] == {"n": 5}
    assert_clean(processor, sink)


@pytest.mark.anyio
async def test_traced_with_an_explicit_tracer_records_errors() -> None:
    tracer, _, sink = make_tracer()

    @tracer.traced(capture_result=True)
    async def answer() -> str:
        return "forty-two"

    @tracer.traced
    async def broken() -> None:
        raise ValueError("nope")

    assert await answer() == "forty-two"
    with pytest.raises(ValueError, match="nope"):
        await broken()
    assert sink.by_name(answer.__qualname__)["output"] == {"value": "forty-two"}
    assert sink.by_name(broken.__qualname__)["status"] == "ERROR"


def test_traced_rejects_sync_functions() -> None:
    def sync() -> None:
        pass

    with pytest.raises(TypeError, match="async functions only"):
        traced(sync)  # type: ignore[arg-type]


# -- processor isolation --------------------------------------------------------------------


class ExplodingProcessor:
    """Raises from every method, like a buggy third-party processor."""

    def on_span_start(self, span: Span, /) -> None:
        raise RuntimeError("start exploded")

    def on_span_end(self, span: Span, /) -> None:
        raise RuntimeError("end exploded")

    def on_spans_start(self, spans: Any, /) -> None:
        raise RuntimeError("starts exploded")

    def on_spans_end(self, spans: Any, /) -> None:
        raise RuntimeError("ends exploded")

    def shutdown(self) -> None:
        raise RuntimeError("shutdown exploded")


@pytest.mark.anyio
async def test_a_failing_processor_affects_neither_others_nor_the_caller() -> None:
    sink = RecordingSink()
    good = SGPTracingProcessor(sink)
    tracer = Tracer([ExplodingProcessor(), good, ExplodingProcessor()])
    async with tracer.trace("root"), tracer.span("child") as child:
        child.output = {"ok": True}
    span = tracer.start_span("explicit")
    tracer.end_span(span)
    tracer.shutdown()
    assert len(sink.spans()) == 3
    assert sink.by_name("child")["output"] == {"ok": True}
    assert tracer.processor_errors == 2 * 2 * 3 + 2  # 2 bad x (start + end) x 3 spans + shutdown


@pytest.mark.anyio
async def test_a_single_failing_processor_never_reaches_the_caller() -> None:
    tracer = Tracer(ExplodingProcessor())
    async with tracer.span("x") as span:
        span.output = {"a": 1}
    tracer.end_span(tracer.start_span("y"))
    tracer.shutdown()
    assert tracer.processor_errors == 5


@pytest.mark.anyio
async def test_a_failing_sink_is_counted_not_raised() -> None:
    sink = RecordingSink(fail_with=RuntimeError("disk on fire"))
    processor = SGPTracingProcessor(sink)
    tracer = Tracer(processor)
    async with tracer.span("x"):
        pass
    assert processor.stats.dropped == {"sink_error": 2}


@pytest.mark.anyio
async def test_tracer_without_processors_is_a_no_op() -> None:
    tracer = Tracer([])
    async with tracer.span("x") as span:
        assert current_span() is span
    assert span.status == "SUCCESS"


# -- the fast path's record -----------------------------------------------------------------


def test_plain_records_equal_the_records_of_validated_items() -> None:
    now = datetime.now(UTC)
    fields: dict[str, Any] = {
        "name": "n",
        "trace_id": "t",
        "id": "s",
        "parent_id": "p",
        "group_id": None,
        "start_timestamp": now,
        "end_timestamp": now,
        "status": "SUCCESS",
        "type": "CUSTOM",
        "input": {"a": 1},
        "output": None,
        "metadata": {"m": "v"},
    }
    fast = plain_record(
        fields["trace_id"],
        fields["id"],
        fields["parent_id"],
        fields["group_id"],
        fields["name"],
        fields["start_timestamp"],
        fields["end_timestamp"],
        fields["status"],
        fields["type"],
        fields["input"],
        fields["output"],
        fields["metadata"],
        10_000,
    )
    validated = record_of(SpanItem(**fields))
    assert fast == validated
    assert fast is not None
    assert fast.completed
    assert encode_record(fast) == encode_record(validated)


def test_fast_span_constructor_equals_the_attrs_one() -> None:
    from sgp_tracing._span import new_span

    now = datetime.now(UTC)
    fast = new_span("s", "t", "n", now, "p", {"i": 1}, {"m": 2}, "CUSTOM", "g")
    slow = Span(
        id="s",
        trace_id="t",
        name="n",
        start_time=now,
        parent_id="p",
        input={"i": 1},
        metadata={"m": 2},
        type="CUSTOM",
        group_id="g",
    )
    assert fast == slow
    assert repr(fast) == repr(slow)
