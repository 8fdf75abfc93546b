"""Hostile spans never raise into the caller: coerced when possible, else dropped and counted.

Also: the processor and the tracer hold nothing per span (tracemalloc over 100,000 events).
"""

from __future__ import annotations

import dataclasses
import enum
import gc
import logging
import math
import tracemalloc
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import anyio
import anyio.lowlevel
import attrs
import orjson
import pydantic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sgp_client import InvalidSpanError, QueueNotRunningError, SpanItem, SpanRecord
from sgp_client._models import validate_span_item
from sgp_tracing import SGPTracingProcessor, Span, Tracer, to_json_safe
from sgp_tracing._coerce import CYCLE_MARKER, DEPTH_MARKER
from sgp_tracing.testing import RecordingSink

# Every processor test runs through both of a sink's entry points (see conftest).
pytestmark = pytest.mark.usefixtures("sink_path")


def processor_and_sink(**options: Any) -> tuple[SGPTracingProcessor, RecordingSink]:
    sink = RecordingSink()
    return SGPTracingProcessor(sink, **options), sink


def ended(**fields: Any) -> Span:
    start = datetime(2025, 1, 1, tzinfo=UTC)
    values: dict[str, Any] = {
        "id": "span-1",
        "trace_id": "trace-1",
        "name": "hostile",
        "start_time": start,
        "end_time": start + timedelta(seconds=1),
    }
    values.update(fields)
    return Span(**values)


def emit_both(processor: SGPTracingProcessor, span: Span) -> None:
    end = span.end_time
    span.end_time = None
    processor.on_span_start(span)
    span.end_time = end
    processor.on_span_end(span)


class Color(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


@dataclasses.dataclass
class Point:
    x: int
    y: list[int]


@attrs.define
class Box:
    label: str
    when: datetime


class Model(pydantic.BaseModel):
    name: str
    when: datetime
    tags: set[str]


class Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")


def cyclic() -> dict[str, Any]:
    data: dict[str, Any] = {"name": "loop"}
    data["self"] = data
    data["list"] = [data]
    return data


def deep(levels: int) -> dict[str, Any]:
    data: dict[str, Any] = {"leaf": True}
    for _ in range(levels):
        data = {"down": data}
    return data


HOSTILE_PAYLOADS: list[tuple[str, Any]] = [
    ("datetime", {"when": datetime(2024, 1, 1, 12, 0), "day": date(2024, 1, 1)}),
    ("bytes", {"raw": b"\xff\xfe binary", "buf": bytearray(b"abc")}),
    ("set", {"s": {3, 1, 2}, "f": frozenset({"a"})}),
    ("enum", {"color": Color.RED, "level": Level.HIGH}),
    ("attrs", {"box": Box(label="b", when=datetime(2024, 1, 1, tzinfo=UTC))}),
    ("dataclass", {"point": Point(x=1, y=[2, 3])}),
    ("pydantic", {"model": Model(name="m", when=datetime(2024, 1, 1), tags={"t"})}),
    ("nan", {"nan": math.nan, "inf": math.inf, "ninf": -math.inf}),
    ("cycle", cyclic()),
    ("non_str_keys", {1: "one", (1, 2): "tuple", None: "none", Color.RED: "enum"}),
    ("lone_surrogate", {"text": "bad \ud800 text", "key\udfff": "v"}),
    ("deep_10000", deep(10_000)),
    ("big_string", {"huge": "x" * 10_000_000}),
    ("big_int", {"n": 2**200, "m": -(2**70)}),
    ("misc", {"u": uuid.UUID(int=1), "d": Decimal("1.5"), "td": timedelta(seconds=2)}),
    ("unprintable", {"obj": Unprintable(), "exc": ValueError("inside")}),
    ("not_a_dict_str", "just a string"),
    ("not_a_dict_list", [1, {"a": {2}}]),
    ("not_a_dict_model", Model(name="m", when=datetime(2024, 1, 1), tags=set())),
    ("not_a_dict_object", object()),
]


@pytest.mark.parametrize(
    ("label", "payload"), HOSTILE_PAYLOADS, ids=[p[0] for p in HOSTILE_PAYLOADS]
)
@pytest.mark.parametrize("field", ["input", "output", "metadata"])
def test_hostile_payload_is_coerced_never_raised(label: str, payload: Any, field: str) -> None:
    processor, sink = processor_and_sink()
    emit_both(processor, ended(**{field: payload}))
    assert processor.stats.dropped == {}, label
    assert sink.violations == []
    assert len(sink.records) == 2
    record = sink.ends[0]
    value = record[field]
    assert isinstance(value, dict)
    # What was sent is plain JSON the standard library round-trips.
    assert orjson.loads(orjson.dumps(value)) == value
    assert len(orjson.dumps(value)) <= processor._fitter.max_bytes


def test_specific_conversions() -> None:
    processor, sink = processor_and_sink()
    processor.on_span_end(
        ended(
            input={"s": {3, 1, 2}, "color": Color.RED, "raw": b"ab", "nan": math.nan},
            output="plain text",
            metadata={1: "one", "c": cyclic(), "d": deep(100)},
        )
    )
    record = sink.ends[0]
    assert record["input"] == {"s": [1, 2, 3], "color": "red", "raw": "ab", "nan": None}
    assert record["output"] == {"value": "plain text"}
    assert record["metadata"]["1"] == "one"
    assert record["metadata"]["c"]["self"] == CYCLE_MARKER
    assert record["metadata"]["c"]["list"] == [CYCLE_MARKER]
    depth_text = orjson.dumps(record["metadata"]["d"]).decode()
    assert DEPTH_MARKER in depth_text
    coerced = processor.stats.coerced
    assert coerced["not_json"] >= 2
    assert coerced["output_not_dict"] == 1


def test_oversized_payload_is_truncated_with_a_marker() -> None:
    processor, sink = processor_and_sink(max_payload_bytes=4096)
    processor.on_span_end(ended(input={"items": list(range(10_000))}, output={"s": "y" * 100_000}))
    record = sink.ends[0]
    assert record["input"]["__truncated__"] is True
    assert record["input"]["limit"] == 4096
    assert record["input"]["bytes"] > 4096
    assert record["input"]["preview"].startswith('{"items":[0,1,2')
    # One long string is cut inside the payload, keeping its structure.
    assert record["output"]["s"].startswith("yyyy")
    assert "truncated" in record["output"]["s"]
    assert processor.stats.coerced["truncated"] == 1


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("id", ""),
        ("id", None),
        ("id", 42),
        ("id", "x" * 300),
        ("id", "nul\x00byte"),
        ("id", "lone\ud800"),
        ("trace_id", "é" * 200),  # 400 UTF-8 bytes
        ("parent_id", "bad\x00"),
        ("group_id", 3.5),
    ],
)
def test_invalid_ids_are_dropped_counted_and_logged(
    field: str, value: Any, caplog: pytest.LogCaptureFixture
) -> None:
    processor, sink = processor_and_sink()
    with caplog.at_level(logging.WARNING, logger="sgp_tracing"):
        emit_both(processor, ended(**{field: value}))
    assert sink.records == []
    assert processor.stats.dropped == {"invalid_id": 2}
    # Rate-limited: one line for the two events.
    assert len([r for r in caplog.records if "dropped" in r.getMessage()]) == 1


def test_bad_name_type_status_and_times_are_coerced() -> None:
    processor, sink = processor_and_sink()
    processor.on_span_end(
        ended(name=b"bytes name", type="NOT_A_TYPE", status="WEIRD", error={"type": "E"})
    )
    processor.on_span_end(ended(id="s2", name="lone \udc00", end_time=None))
    processor.on_span_end(ended(id="s3", start_time="2025-01-01T00:00:00+00:00"))
    processor.on_span_end(ended(id="s4", start_time="not a time"))
    records = {r["id"]: r for r in sink.records}
    first = records["span-1"]
    assert first["name"] == "b'bytes name'"
    assert first["type"] == "CUSTOM"
    assert first["metadata"]["__span_type__"] == "NOT_A_TYPE"
    assert first["status"] == "ERROR"  # unknown status + an error = ERROR
    assert records["s2"]["name"] == "lone \ufffd"
    assert "end_timestamp" in records["s2"]  # a missing end on an end event is "now"
    assert records["s3"]["start_timestamp"] == "2025-01-01T00:00:00+00:00"
    assert "s4" not in records
    assert processor.stats.dropped == {"invalid_start_time": 1}
    coerced = processor.stats.coerced
    for reason in ("name", "unknown_type", "invalid_status", "missing_end_time", "start_time"):
        assert coerced[reason] >= 1, reason
    assert sink.violations == []


def test_sink_refusing_the_fast_item_gets_the_converted_one() -> None:
    class PickySink(RecordingSink):
        def submit(self, item: SpanItem, /) -> None:
            if item.input is not None and "picky" in item.input:
                raise InvalidSpanError("input", "this sink dislikes the key 'picky'")
            super().submit(item)

    sink = PickySink(prepared=False)
    processor = SGPTracingProcessor(sink)
    processor.on_span_end(ended(input={"picky": 1}))
    # The fully converted item still has the key, so it is refused again: dropped, counted.
    assert processor.stats.dropped == {"rejected": 1}

    class OnceSink(RecordingSink):
        refused = False

        def submit(self, item: SpanItem, /) -> None:
            if not self.refused:
                self.refused = True
                raise InvalidSpanError("input", "try again")
            super().submit(item)

    once = OnceSink(prepared=False)
    processor = SGPTracingProcessor(once)
    processor.on_span_end(ended(input={"a": 1}))
    assert processor.stats.coerced.get("resubmitted") == 1
    assert once.ends[0]["input"] == {"a": 1}

    class PickyPreparedSink(RecordingSink):
        # Refuses the fast path's fields: the converted SpanItem goes to submit instead.
        def submit_record(self, record: SpanRecord, /) -> None:
            raise InvalidSpanError("name", "this sink checks more than the processor")

    picky = PickyPreparedSink(prepared=True)
    processor = SGPTracingProcessor(picky)
    processor.on_span_end(ended(input={"a": 2}))
    assert processor.stats.coerced.get("resubmitted") == 1
    assert picky.ends[0]["input"] == {"a": 2}


def test_sink_not_running_is_counted() -> None:
    sink = RecordingSink(fail_with=QueueNotRunningError("not inside async with"))
    processor = SGPTracingProcessor(sink)
    emit_both(processor, ended())
    assert processor.stats.dropped == {"sink_not_running": 2}
    assert processor.stats.total_dropped == 2


def test_a_span_whose_attributes_raise_is_dropped_not_raised() -> None:
    class Booby:
        def __getattr__(self, name: str) -> Any:
            raise RuntimeError(f"no {name}")

    processor, sink = processor_and_sink()
    processor.on_span_start(Booby())  # type: ignore[arg-type]
    processor.on_span_end(Booby())  # type: ignore[arg-type]
    processor.on_spans_end(42)  # type: ignore[arg-type]
    assert sink.records == []
    assert processor.stats.dropped == {"processor_error": 3}


def test_to_json_safe_handles_the_same_hostile_values() -> None:
    for label, payload in HOSTILE_PAYLOADS:
        safe = to_json_safe(payload, max_str=1000)
        assert orjson.loads(orjson.dumps(safe)) == safe, label


# -- property tests -------------------------------------------------------------------------

json_leaf = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text()
    | st.binary(max_size=20)
    | st.datetimes()
)
anything = st.recursive(
    json_leaf,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=5) | st.integers(), children, max_size=4)
        | st.frozensets(st.integers(), max_size=3)
    ),
    max_leaves=20,
)
id_like = st.none() | st.text(max_size=300) | st.integers() | st.just("ok-id")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sid=id_like,
    tid=id_like,
    pid=id_like,
    name=st.text() | st.integers() | st.none(),
    payloads=st.tuples(anything, anything, anything),
    kind=st.none() | st.sampled_from(["COMPLETION", "CUSTOM", "bogus"]),
    status=st.none() | st.sampled_from(["SUCCESS", "ERROR", "CANCELED", "bogus"]),
    end_offset=st.none() | st.integers(min_value=-(10**6), max_value=10**6),
)
def test_processor_never_raises_and_sends_only_valid_items(
    sid: Any,
    tid: Any,
    pid: Any,
    name: Any,
    payloads: tuple[Any, Any, Any],
    kind: Any,
    status: Any,
    end_offset: int | None,
) -> None:
    processor, sink = processor_and_sink(max_payload_bytes=2048)
    start = datetime(2025, 6, 1, tzinfo=UTC)
    span = Span(
        id=sid,
        trace_id=tid,
        name=name,
        start_time=start,
        parent_id=pid,
        input=payloads[0],
        output=payloads[1],
        metadata=payloads[2],
        type=kind,
    )
    processor.on_span_start(span)
    span.status = status
    span.end_time = None if end_offset is None else start + timedelta(microseconds=end_offset)
    processor.on_span_end(span)
    assert sink.violations == []
    stats = processor.stats
    assert len(sink.records) + stats.total_dropped == 2
    assert set(stats.dropped) <= {"invalid_id"}


@settings(max_examples=300, deadline=None)
@given(
    sid=st.text(max_size=260),
    name=st.text(max_size=20),
    payload=st.dictionaries(st.text(max_size=5), json_leaf, max_size=5),
)
def test_fast_path_items_always_pass_full_validation(
    sid: str, name: str, payload: dict[str, Any]
) -> None:
    # Whatever the fast path lets through must be what SpanItem's validator accepts.
    captured: list[SpanItem] = []

    class Capture:
        def submit(self, item: SpanItem, /) -> None:
            captured.append(item)

    processor = SGPTracingProcessor(Capture())
    start = datetime(2025, 6, 1, tzinfo=UTC)
    span = Span(id=sid, trace_id=sid, name=name, start_time=start, input=payload)
    processor.on_span_start(span)
    span.end_time, span.status = start, "SUCCESS"
    processor.on_span_end(span)
    for item in captured:
        validate_span_item(item)
        orjson.dumps(item.__dict__, option=orjson.OPT_NAIVE_UTC)


# -- no memory growth ---------------------------------------------------------------------


class CountingSink:
    """Keeps only a count: anything retained must be the processor's or the tracer's."""

    def __init__(self) -> None:
        self.count = 0

    def submit(self, item: SpanItem, /) -> None:
        self.count += 1


def test_processor_that_only_sees_ends_holds_nothing() -> None:
    sink = CountingSink()
    processor = SGPTracingProcessor(sink)
    start = datetime.now(UTC)

    def run(n: int, offset: int) -> None:
        for index in range(offset, offset + n):
            processor.on_span_end(
                Span(
                    id=f"span-{index}",
                    trace_id=f"trace-{index % 97}",
                    name="end-only",
                    start_time=start,
                    end_time=start,
                    input={"i": index},
                    output={"ok": True},
                )
            )

    run(1_000, 0)  # warm-up: caches, interned strings
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        run(100_000, 1_000)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert sink.count == 101_000
    assert processor.stats.dropped == {}
    assert after - before < 64 * 1024, f"grew by {after - before} bytes"


@pytest.mark.anyio
async def test_tracer_holds_nothing_after_spans_close() -> None:
    sink = CountingSink()
    tracer = Tracer(SGPTracingProcessor(sink))

    async def run(n: int) -> None:
        async with tracer.trace("root"):
            for index in range(n):
                async with tracer.span("x", input={"i": index}) as span:
                    span.output = {"ok": index}

    await run(1_000)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        await run(50_000)  # 100,000 events
        await anyio.lowlevel.checkpoint()
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert sink.count == 2 * 51_002
    assert after - before < 64 * 1024, f"grew by {after - before} bytes"
