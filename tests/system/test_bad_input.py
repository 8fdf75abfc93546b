"""Bad input: every ``SpanItem`` field with wrong types and values, and hostile payloads.

The client layer answers bad input with a clear ``InvalidSpanError`` naming the field (when
the item is built, or when it is encoded at ``queue.submit`` / ``upsert_batch``), never a
crash and never a hang. The tracing layer never raises: it coerces what it can and counts what
it cannot. Neither blocks the event loop for long: a ticker task runs alongside and its
longest gap is bounded (a liveness property, not a speed claim).
"""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Any

import anyio
import anyio.lowlevel
import orjson
import pytest
from starlette.applications import Starlette

from sgp_client import (
    AsyncSGPClient,
    InvalidSpanError,
    SpanItem,
    UpsertQueue,
)
from sgp_client.testing import (
    ServerControl,
)
from sgp_tracing import SGPTracingProcessor, Span
from sgp_tracing._processor import DEFAULT_MAX_PAYLOAD_BYTES
from tests._helpers import END, START, in_process_client, span_item

#: The longest the event loop may be blocked by one hostile input (liveness, generous). On a
#: loaded 2-core machine a 10,000-deep payload's refusal took 1.42 s of wall time once (under
#: 1.0 s otherwise), so the bound leaves room for that, and still fails for an input that
#: blocks the loop for good or for seconds (what it is for).
MAX_GAP = 2.5
TEN_MB = 10 * 1024 * 1024


@pytest.fixture
async def sgp(app: Starlette) -> AsyncIterator[AsyncSGPClient]:
    async with in_process_client(app, max_retries=0) as client:
        yield client


@asynccontextmanager
async def ticker() -> AsyncIterator[list[float]]:
    """A task ticking every 5 ms; yields ``[longest gap between ticks]``, in seconds."""
    longest = [0.0]

    async def tick() -> None:
        last = anyio.current_time()
        while True:
            await anyio.sleep(0.005)
            now = anyio.current_time()
            longest[0] = max(longest[0], now - last)
            last = now

    async with anyio.create_task_group() as tg:
        tg.start_soon(tick)
        await anyio.sleep(0.01)
        yield longest
        await anyio.sleep(0.02)  # let the ticker see the last gap
        tg.cancel_scope.cancel()


def item(**fields: Any) -> SpanItem:
    values: dict[str, Any] = {"name": "n", "trace_id": "t", **fields}
    return span_item(**values)


# ------------------------------------------------------------------ every field, wrong values


class _Opaque:
    def __repr__(self) -> str:
        return "<opaque>"


_OPAQUE = _Opaque()
_LONG_ID = "x" * 257
_LONG_UTF8_ID = "é" * 129  # 129 characters, 258 UTF-8 bytes

BAD_FIELDS: list[tuple[str, Any]] = [
    *[("name", v) for v in (None, 5, b"bytes", ["n"], "lone \ud800", _OPAQUE)],
    *[
        (field, v)
        for field in ("trace_id", "id")
        for v in (5, b"id", "", "a\x00b", _LONG_ID, _LONG_UTF8_ID, "\udcff", ["x"], _OPAQUE)
    ],
    *[("trace_id", None)],
    *[
        (field, v)
        for field in ("parent_id", "group_id")
        for v in (5, "", "\x00", _LONG_ID, _LONG_UTF8_ID, "\ud800", {"x": 1})
    ],
    *[
        ("start_timestamp", v)
        for v in (None, "2025-06-01T12:00:00Z", 1_700_000_000, date(2025, 6, 1), _OPAQUE)
    ],
    *[("end_timestamp", v) for v in ("2025-06-01", 1.5, START - timedelta(microseconds=1))],
    *[("status", v) for v in ("DONE", "success", 1, ["SUCCESS"], {"SUCCESS": 1}, "")],
    *[("type", v) for v in ("LLM", "completion", 0, ["CUSTOM"], {"CUSTOM"}, "")],
    *[
        (field, v)
        for field in ("input", "output", "metadata", "expected")
        for v in ([1, 2], "text", 5, ({"a": 1},), {"a"}, b"{}")
    ],
    *[
        (field, v)
        for field in ("application_interaction_id", "application_variant_id")
        for v in (5, ["x"], "\ud800", b"x")
    ],
    *[("obs_trace_id", v) for v in ("0" * 31, "0" * 33, "A" * 32, "g" * 32, 5, "0" * 31 + "\x00")],
    *[("obs_span_id", v) for v in ("0" * 15, "0" * 17, "F" * 16, "z" * 16, 5, None.__class__)],
]


@pytest.mark.parametrize(
    ("field", "value"),
    BAD_FIELDS,
    ids=[f"{field}={value!r:.30}" for field, value in BAD_FIELDS],
)
def test_every_field_refuses_wrong_types_and_values(field: str, value: Any) -> None:
    with pytest.raises(InvalidSpanError) as info:
        item(**{field: value})
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")


def test_missing_required_fields_are_refused() -> None:
    for field in ("name", "trace_id", "start_timestamp"):
        settings: dict[str, Any] = {"name": "n", "trace_id": "t", "start_timestamp": START}
        del settings[field]
        with pytest.raises(TypeError, match=field):
            SpanItem(**settings)


# Values SpanItem accepts (they are dicts) but that cannot be encoded: refused at encoding.
def _cycle() -> dict[str, Any]:
    value: dict[str, Any] = {"a": 1}
    value["self"] = value
    return value


def _deep(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels):
        value = {"d": value}
    return value


def _non_str_keys() -> dict[str, Any]:
    value: dict[Any, Any] = {1: "int key", (2, 3): "tuple key"}
    return value


UNENCODABLE: dict[str, Callable[[], dict[str, Any]]] = {
    "cycle": _cycle,
    "10000 levels deep": lambda: _deep(10_000),
    "non-string keys": lambda: _non_str_keys(),
    "lone surrogate in a value": lambda: {"text": "a\ud800b"},
    "lone surrogate in a key": lambda: {"\udc80": 1},
    "a set": lambda: {"s": {1, 2}},
    "an arbitrary object": lambda: {"o": _OPAQUE},
    "an int over 64 bits": lambda: {"n": 2**70},
}


@pytest.mark.anyio
@pytest.mark.parametrize("field", ["input", "output", "metadata", "expected"])
@pytest.mark.parametrize("name", list(UNENCODABLE))
async def test_unencodable_payloads_refused_at_submit_and_upsert(
    sgp: AsyncSGPClient, control: ServerControl, name: str, field: str
) -> None:
    bad = item(**{field: UNENCODABLE[name]()})
    async with ticker() as gap, UpsertQueue(sgp, flush_interval=0.01) as queue:
        with pytest.raises(InvalidSpanError) as at_submit:
            queue.submit(bad)
        with anyio.fail_after(10):
            with pytest.raises(InvalidSpanError) as at_upsert:
                await sgp.spans.upsert_batch([item(), bad])
    assert at_submit.value.field == field
    assert at_upsert.value.field == field
    assert queue.stats.submitted == 0
    assert queue.stats.balanced
    assert control.store.count() == 0  # refused before any I/O: not even the good item went
    assert gap[0] < MAX_GAP


# ------------------------------------------------------------------ hostile payloads, client


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("name", "build", "outcome"),
    [
        ("NaN and infinities", lambda: {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}, "ok"),
        ("NUL bytes in content", lambda: {"text": "a\x00b", "\x00key": "\x00"}, "ok"),
        ("10 MB string", lambda: {"text": "x" * TEN_MB}, "ok"),
        ("10000 levels deep", lambda: _deep(10_000), "refused"),
        ("cycle", _cycle, "refused"),
        ("non-string keys", lambda: {None: 1}, "refused"),
        ("lone surrogate", lambda: {"t": "\udfff"}, "refused"),
    ],
)
async def test_hostile_payloads_at_the_client_layer(
    sgp: AsyncSGPClient,
    control: ServerControl,
    name: str,
    build: Callable[[], dict[str, Any]],
    outcome: str,
) -> None:
    payload = build()
    async with ticker() as gap:
        span_item = item(id=f"hostile-{len(name)}", input=payload, end_timestamp=END)
        with anyio.fail_after(30):
            if outcome == "refused":
                with pytest.raises(InvalidSpanError, match="input"):
                    await sgp.spans.upsert_batch([span_item])
            else:
                [stored] = await sgp.spans.upsert_batch([span_item])
                assert stored.id == span_item.id
    assert gap[0] < MAX_GAP, f"{name}: event loop blocked for {gap[0]:.3f} s"
    if outcome == "ok":
        assert control.store.count() == 1
    if name == "NaN and infinities":
        [row] = control.store.all_spans()
        assert row["input"] == {"nan": None, "inf": None, "-inf": None}  # orjson's coercion


@pytest.mark.anyio
@pytest.mark.parametrize("field", ["id", "trace_id", "parent_id", "group_id"])
async def test_nul_bytes_in_ids_never_reach_the_server(
    sgp: AsyncSGPClient, control: ServerControl, field: str
) -> None:
    with pytest.raises(InvalidSpanError) as info:
        item(**{field: "span\x00id"})
    assert info.value.field == field
    assert "NUL" in str(info.value)
    assert control.counters.requests == 0


# ----------------------------------------------------------------- hostile payloads, tracing


def hostile_spans() -> list[tuple[str, Span, str]]:
    """(label, span, what the processor does with it: coerced / truncated / dropped)."""

    def span(label: str, **fields: Any) -> Span:
        settings: dict[str, Any] = {
            "id": f"span-{label}",
            "trace_id": "trace-hostile",
            "name": label,
            "start_time": START,
            "end_time": END,
            "status": "SUCCESS",
        }
        settings.update(fields)
        return Span(**settings)

    return [
        ("deep", span("deep", input=_deep(10_000)), "coerced"),
        ("ten-mb", span("ten-mb", input={"text": "x" * TEN_MB}), "truncated"),
        ("ten-mb-name", span("ten-mb-name", name="x" * TEN_MB), "coerced"),
        ("cycle", span("cycle", output=_cycle()), "coerced"),
        ("keys", span("keys", metadata={1: "a", None: "b", (1, 2): "c"}), "coerced"),
        ("nan", span("nan", input={"v": math.nan, "w": -math.inf}), "coerced"),
        ("surrogate", span("surrogate", input={"t": "\ud800"}, name="n\udc00"), "coerced"),
        ("nul-content", span("nul-content", input={"t": "\x00"}), "coerced"),
        ("nul-id", span("nul-id", id="span\x00id"), "dropped"),
        ("nul-trace", span("nul-trace", trace_id="trace\x00"), "dropped"),
        ("surrogate-id", span("surrogate-id", id="\ud800"), "dropped"),
        ("list-input", span("list-input", input=[1, 2, 3]), "coerced"),
        ("bytes-output", span("bytes-output", output=b"\xff\xfe"), "coerced"),
    ]


@pytest.mark.anyio
async def test_hostile_spans_through_the_tracing_layer(
    sgp: AsyncSGPClient, control: ServerControl
) -> None:
    cases = hostile_spans()
    async with ticker() as gap, UpsertQueue(sgp, flush_interval=0.01) as queue:
        processor = SGPTracingProcessor(queue)
        for label, span, _ in cases:
            processor.on_span_start(span)  # never raises, and returns (synchronous)
            processor.on_span_end(span)
            await anyio.lowlevel.checkpoint()
            assert gap[0] < MAX_GAP, f"{label}: event loop blocked for {gap[0]:.3f} s"
        assert await queue.flush(timeout=30)
    stats = queue.stats
    assert stats.balanced, stats
    assert stats.dropped_total == 0, stats  # whatever reached the queue was deliverable
    dropped = [label for label, _, outcome in cases if outcome == "dropped"]
    delivered = [label for label, _, outcome in cases if outcome != "dropped"]
    # Two events per span: a start and an end; an invalid id drops both, counted.
    assert processor.stats.dropped == {"invalid_id": 2 * len(dropped)}
    rows = {row["id"]: row for row in control.store.all_spans()}
    assert sorted(rows) == sorted(f"span-{label}" for label in delivered)
    assert all(row["end_timestamp"] is not None for row in rows.values())
    # The 10 MB string is cut (a marker says how much), the payload within the size limit.
    ten_mb = orjson.dumps(rows["span-ten-mb"]["input"])
    assert len(ten_mb) <= DEFAULT_MAX_PAYLOAD_BYTES
    assert b"truncated" in ten_mb
    assert len(rows["span-ten-mb-name"]["name"]) < 10_000


# ------------------------------------------------------------------------ datetimes (bugs)


class _UTCSubclass(datetime):
    """A datetime subclass (pendulum's DateTime and others are such subclasses)."""


@pytest.mark.anyio
async def test_datetime_subclass_does_not_poison_its_batch(
    sgp: AsyncSGPClient, control: ServerControl
) -> None:
    async with UpsertQueue(sgp, flush_interval=0.01, shutdown_timeout=1.0) as queue:
        queue.submit(item(id="good", end_timestamp=END))
        refused: InvalidSpanError | None = None
        try:
            queue.submit(item(id="subclass", start_timestamp=_UTCSubclass.now(UTC)))
        except InvalidSpanError as exc:  # refusing it at submit is fine too
            refused = exc
        assert refused is None or refused.field == "start_timestamp"
        assert await queue.flush(timeout=1)
    assert queue.stats.balanced
    assert "good" in {row["id"] for row in control.store.all_spans()}


def test_datetime_subclass_is_converted_to_a_plain_datetime() -> None:
    from sgp_client._serialization import encode_item

    start = _UTCSubclass.now(UTC)
    span = item(start_timestamp=start)
    assert type(span.start_timestamp) is datetime
    assert span.start_timestamp == start
    assert orjson.loads(encode_item(span))["start_timestamp"] == start.isoformat()


class _FixedOffset(tzinfo):
    """A well-behaved custom tzinfo (as dateutil and pytz provide)."""

    def utcoffset(self, dt: datetime | None) -> timedelta:
        return timedelta(hours=2)

    def dst(self, dt: datetime | None) -> timedelta:
        return timedelta(0)

    def tzname(self, dt: datetime | None) -> str:
        return "+02"


def test_custom_tzinfo_keeps_its_offset() -> None:
    from sgp_client._serialization import encode_item

    start = datetime(2025, 6, 1, 14, 0, tzinfo=_FixedOffset())
    encoded = encode_item(item(start_timestamp=start, end_timestamp=start))
    assert b'"2025-06-01T14:00:00+02:00"' in encoded
    assert datetime(2025, 6, 1, 12, 0, tzinfo=UTC) == start


_HOSTILE_TZ_CHILD = textwrap.dedent(
    """
    import datetime as dt, sys
    from sgp_client import InvalidSpanError, SpanItem
    from sgp_client._serialization import encode_item, encode_record, record_of

    class Broken(dt.tzinfo):
        def utcoffset(self, d):
            raise RuntimeError("broken tzinfo")
        def dst(self, d):
            return None
        def tzname(self, d):
            return "broken"

    start = dt.datetime(2025, 6, 1, tzinfo=Broken())
    try:
        item = SpanItem(name="n", trace_id="t", start_timestamp=start)
    except InvalidSpanError as exc:
        print("refused", exc.field)
        sys.exit(0)
    except Exception as exc:
        print("raised", type(exc).__name__)
        sys.exit(3)
    # Accepted: the queue would encode it in its dispatcher. orjson calls utcoffset() itself.
    try:
        encode_record(record_of(item))
    except Exception as exc:
        print("encode raised", type(exc).__name__)
        sys.exit(4)
    print("encoded")
    """
)


def test_tzinfo_that_raises_is_refused_not_a_crash() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _HOSTILE_TZ_CHILD],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr[-2000:])
    assert result.stdout.split() == ["refused", "start_timestamp"]


def test_a_hostile_id_does_not_become_a_huge_log_line(caplog: pytest.LogCaptureFixture) -> None:
    from sgp_tracing.testing import RecordingSink

    processor = SGPTracingProcessor(RecordingSink())
    with caplog.at_level("DEBUG"):
        processor.on_span_end(
            Span(id="x" * TEN_MB, trace_id="t", name="n", start_time=START, end_time=END)
        )
    assert processor.stats.dropped == {"invalid_id": 1}
    assert max(len(record.getMessage()) for record in caplog.records) < 10_000
