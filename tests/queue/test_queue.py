"""``UpsertQueue`` against the in-process SGP server: coalescing, triggers, memory bound,
failure classification, flush barrier, lifecycle and the accounting identity.

Every test runs on asyncio and trio (root conftest). Every scenario ends with
``stats.balanced``, and most sample it at every checkpoint while they run (``watching``).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any

import anyio
import anyio.lowlevel
import attrs
import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sgp_client import (
    APIStatusError,
    AsyncSGPClient,
    Backoff,
    ClientClosedError,
    DroppedSpan,
    DropReason,
    InvalidSpanError,
    QueueNotRunningError,
    QueueStats,
    SpanItem,
    SpanRecord,
    UpsertQueue,
    encode_content,
)
from sgp_client._serialization import encode_item
from sgp_client.testing import (
    DEFAULT_ACCOUNT_ID,
    DEFAULT_API_KEY,
    ServerControl,
    asgi_transport,
    get_control,
)
from tests._helpers import FAST_BACKOFF, START, in_process_client, span_item, wait_until, watching
from tests._helpers import IN_PROCESS_BASE_URL as BASE_URL

pytestmark = pytest.mark.anyio

QUEUE_LOGGER = "sgp_client.queue"


# ---------------------------------------------------------------------------- helpers


def span(
    key: str,
    *,
    trace: str = "trace-1",
    end: bool = False,
    version: int = 0,
    **fields: Any,
) -> SpanItem:
    """A span item keyed (trace, key); ``version`` lands in metadata to tell writes apart."""
    return span_item(
        f"span-{key}", trace_id=trace, id=key, end=end, metadata={"version": version}, **fields
    )


def is_running(queue: UpsertQueue) -> bool:
    # A call, so the type checker does not narrow ``running`` across the lifecycle.
    return queue.running


def make_queue(client: AsyncSGPClient, **overrides: Any) -> UpsertQueue:
    settings: dict[str, Any] = {
        "flush_interval": 0.01,
        "backoff": FAST_BACKOFF,
        "shutdown_timeout": 5.0,
    }
    settings.update(overrides)
    return UpsertQueue(client, **settings)


def stored(control: ServerControl) -> dict[str, dict[str, Any]]:
    """Stored spans by id."""
    return {s["id"]: s for s in control.store.all_spans()}


def assert_identity(stats: QueueStats) -> None:
    assert stats.submitted == (
        stats.delivered
        + stats.coalesced
        + stats.pending
        + stats.in_flight
        + sum(stats.dropped.values())
    ), stats
    assert stats.balanced, stats


class DropLog:
    """An ``on_drop`` callback that remembers every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[DroppedSpan], str, BaseException | None]] = []

    def __call__(
        self, items: Sequence[DroppedSpan], reason: str, error: BaseException | None
    ) -> None:
        self.calls.append((list(items), reason, error))

    def ids(self, reason: str | None = None) -> list[str]:
        return [
            item.span_id
            for items, why, _ in self.calls
            if reason is None or why == reason
            for item in items
        ]

    def by_reason(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for items, reason, _ in self.calls:
            counts[reason] = counts.get(reason, 0) + len(items)
        return counts


@asynccontextmanager
async def sgp_client(
    app: ASGIApp, *, api_key: str = DEFAULT_API_KEY, base_url: str = BASE_URL
) -> AsyncIterator[AsyncSGPClient]:
    async with in_process_client(app, api_key=api_key, base_url=base_url, max_retries=0) as client:
        yield client


@attrs.define
class Write:
    """One upsert request as the server saw it: when it began and ended, what it carried."""

    begin: int
    end: int = -1
    status: int | None = None
    keys: list[tuple[str, str, bool]] = attrs.Factory(list)


async def buffer_body(receive: Receive) -> tuple[bytes, Receive]:
    """Read a whole request body, and a ``receive`` that replays it to the app behind."""
    messages: list[Message] = []
    body = b""
    while True:
        message = await receive()
        messages.append(message)
        body += message.get("body", b"")
        if not message.get("more_body"):
            break

    async def replay() -> Message:
        return messages.pop(0) if messages else await receive()

    return body, replay


class Recorder:
    """ASGI middleware in front of the app recording every batch request's items and timing.

    Its logical clock orders request begins and ends, so tests can check that two writes of
    the same key never overlap and that they land in submission order.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.writes: list[Write] = []
        self._clock = itertools.count()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].endswith("/v5/spans/batch"):
            await self.app(scope, receive, send)
            return
        body, replay = await buffer_body(receive)
        write = Write(begin=next(self._clock))
        write.keys = [
            (item["trace_id"], item["id"], item.get("end_timestamp") is not None)
            for item in orjson.loads(body)["items"]
        ]
        self.writes.append(write)

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                write.status = message["status"]
            await send(message)

        try:
            await self.app(scope, replay, send_status)
        finally:
            write.end = next(self._clock)


def check_one_write_per_key(writes: Sequence[Write]) -> None:
    """No two requests carrying the same key overlap in time, and no in-progress write of a
    key begins after a completed write of it began."""
    by_key: dict[tuple[str, str], list[tuple[Write, bool]]] = {}
    for write in writes:
        for trace, key, completed in write.keys:
            by_key.setdefault((trace, key), []).append((write, completed))
    for (trace, key), seen in by_key.items():
        seen.sort(key=lambda pair: pair[0].begin)
        for (first, _), (second, _) in itertools.pairwise(seen):
            assert first.end < second.begin, f"two writes of {trace}/{key} overlapped"
        completed_at = [w.begin for w, completed in seen if completed]
        if completed_at:
            assert all(w.begin < completed_at[0] for w, completed in seen if not completed), (
                f"an in-progress write of {trace}/{key} came after its completed write"
            )


# ---------------------------------------------------------------------------- submit


async def test_submit_rejects_what_the_server_would_reject(client: AsyncSGPClient) -> None:
    async with make_queue(client) as queue:
        for bad in ("not a span", {"name": "x"}, None, 42):
            with pytest.raises(InvalidSpanError):
                queue.submit(bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidSpanError) as info:
            queue.submit(span("a", input={"tags": {1, 2}}))
        assert info.value.field == "input"
        with pytest.raises(InvalidSpanError) as info:
            queue.submit(span("b", output={1: "non-str key"}))
        assert info.value.field == "output"
        with pytest.raises(InvalidSpanError):
            queue.submit(span("c", end=True, expected={"when": object()}))
        # Nothing was counted: rejected items never entered the queue.
        assert queue.stats.submitted == 0
        queue.submit(span("ok"))
        assert queue.stats.submitted == 1
        assert await queue.flush(timeout=5)
        assert_identity(queue.stats)
        assert queue.stats.delivered == 1


async def test_submit_and_put_outside_the_lifecycle(client: AsyncSGPClient) -> None:
    queue = make_queue(client)
    assert not is_running(queue)
    with pytest.raises(QueueNotRunningError):
        queue.submit(span("a"))
    with pytest.raises(QueueNotRunningError):
        await queue.put(span("a"))
    assert await queue.flush(timeout=1)  # nothing submitted: nothing to wait for
    async with queue:
        assert is_running(queue)
        queue.submit(span("a"))
    assert not is_running(queue)
    with pytest.raises(QueueNotRunningError):
        queue.submit(span("b"))
    with pytest.raises(QueueNotRunningError):
        await queue.put(span("b"))
    assert await queue.flush(timeout=1)
    with pytest.raises(RuntimeError):
        async with queue:
            pass
    assert_identity(queue.stats)
    assert queue.stats.submitted == queue.stats.delivered == 1


# ---------------------------------------------------------------------------- coalescing


async def test_start_and_end_meeting_in_the_queue_go_out_as_one_item(
    client: AsyncSGPClient, control: ServerControl
) -> None:
    queue = make_queue(client, flush_interval=60.0)
    async with watching(queue), queue:
        for i in range(10):
            queue.submit(span(f"s{i}", version=1))
            queue.submit(span(f"s{i}", end=True, version=2))
        assert queue.stats.pending + queue.stats.coalesced == 20
        assert await queue.flush(timeout=5)
    assert queue.stats.coalesced == 10
    stats = control.stats()
    assert stats["items_received"] == 10
    assert stats["upsert_requests"] == 1
    assert queue.stats.delivered == 10
    assert queue.stats.requests == 1
    assert_identity(queue.stats)
    spans = stored(control)
    assert len(spans) == 10
    assert all(
        s["end_timestamp"] is not None and s["metadata"] == {"version": 2} for s in spans.values()
    )


async def test_completed_beats_in_progress_otherwise_later_wins(
    client: AsyncSGPClient, control: ServerControl
) -> None:
    queue = make_queue(client, flush_interval=60.0)
    async with watching(queue), queue:
        # A start arriving after the end is coalesced away: the end wins.
        queue.submit(span("end-first", end=True, version=1))
        queue.submit(span("end-first", version=2))
        # Two starts: the later wins.
        queue.submit(span("two-starts", version=1))
        queue.submit(span("two-starts", version=2))
        # Two ends: the later wins.
        queue.submit(span("two-ends", end=True, version=1))
        queue.submit(span("two-ends", end=True, version=2))
        # Same span id in another trace is another key: no merge.
        queue.submit(span("two-starts", trace="trace-2", version=7))
        assert await queue.flush(timeout=5)
    assert queue.stats.coalesced == 3
    assert queue.stats.delivered == 4
    assert control.stats()["items_received"] == 4
    assert_identity(queue.stats)
    by_key = {(s["trace_id"], s["id"]): s for s in control.store.all_spans()}
    assert by_key["trace-1", "end-first"]["metadata"] == {"version": 1}
    assert by_key["trace-1", "end-first"]["end_timestamp"] is not None
    assert by_key["trace-1", "two-starts"]["metadata"] == {"version": 2}
    assert by_key["trace-1", "two-starts"]["end_timestamp"] is None
    assert by_key["trace-1", "two-ends"]["metadata"] == {"version": 2}
    assert by_key["trace-2", "two-starts"]["metadata"] == {"version": 7}


async def test_start_submitted_while_its_end_is_in_flight_is_coalesced(
    client: AsyncSGPClient, control: ServerControl
) -> None:
    control.set_faults(latency=0.2)
    queue = make_queue(client)
    async with watching(queue), queue:
        queue.submit(span("k", end=True, version=1))
        await wait_until(lambda: queue.stats.in_flight == 1)
        queue.submit(span("k", version=2))
        assert await queue.flush(timeout=5)
        # Absorbed by the completed write in flight, never sent after it.
        assert queue.stats.coalesced == 1
    assert control.stats()["items_received"] == 1
    assert stored(control)["k"]["metadata"] == {"version": 1}
    assert_identity(queue.stats)


async def test_flush_returns_when_what_it_waits_for_merges_away(
    client: AsyncSGPClient, control: ServerControl
) -> None:
    # A late start of a delivered span merges away when the intake is folded in, and no
    # request is sent: the flush waiting for it must still return (it used to sleep out
    # its whole timeout, or forever without one).
    async with make_queue(client, flush_interval=60.0) as queue:
        queue.submit(span("k", end=True, version=1))
        assert await queue.flush(timeout=5)
        queue.submit(span("k", version=2))
        with anyio.fail_after(5):  # a hang detector, not a speed check
            assert await queue.flush()
        assert queue.stats.coalesced == 1
    assert_identity(queue.stats)
    assert control.stats()["upsert_requests"] == 1
    assert stored(control)["k"]["metadata"] == {"version": 1}


async def test_late_starts_are_absorbed_for_at_least_the_last_remember_completed_spans(
    client: AsyncSGPClient, control: ServerControl
) -> None:
    async with make_queue(client, remember_completed=2) as queue:
        for key in "abcde":  # each delivered on its own, oldest first
            queue.submit(span(key, end=True, version=1))
            assert await queue.flush(timeout=5)
        for key in "de":  # late starts of the last two: absorbed, never sent
            queue.submit(span(key, version=2))
        assert await queue.flush(timeout=5)
        assert (queue.stats.coalesced, queue.stats.delivered) == (2, 5)
    assert_identity(queue.stats)
    assert control.stats()["items_received"] == 5

    # remember_completed=0 remembers nothing: a late start is sent like any item.
    async with make_queue(client, remember_completed=0) as queue:
        queue.submit(span("f", end=True, version=1))
        assert await queue.flush(timeout=5)
        queue.submit(span("f", version=2))
        assert await queue.flush(timeout=5)
        assert (queue.stats.coalesced, queue.stats.delivered) == (0, 2)
    assert_identity(queue.stats)


async def test_snapshot_at_submit(client: AsyncSGPClient, control: ServerControl) -> None:
    payload: dict[str, Any] = {"question": "what?", "nested": {"n": 1}}
    async with make_queue(client, flush_interval=60.0) as queue:
        queue.submit(span("k", input=payload))
        payload["question"] = "changed"
        payload["nested"]["n"] = 2
        payload["new"] = True
        assert await queue.flush(timeout=5)
        assert_identity(queue.stats)
    assert stored(control)["k"]["input"] == {"question": "what?", "nested": {"n": 1}}


async def test_submit_record_round_trips_and_coalesces_with_submit(
    client: AsyncSGPClient, control: ServerControl
) -> None:
    end = START + timedelta(seconds=2)
    queue = make_queue(client, flush_interval=60.0)
    async with watching(queue), queue:
        # A start given as fields and its end as a SpanItem (and the other way round) are
        # one key: they merge into one write, the completed version winning.
        queue.submit_record(SpanRecord(
            "trace-p", "a", None, None, "step-a", START, None, None, "TOOL",
            encode_content({"input": {"q": 1}}),
        ))  # fmt: skip
        queue.submit(span("a", trace="trace-p", end=True, version=2))
        queue.submit(span("b", trace="trace-p", version=1))
        queue.submit_record(SpanRecord(
            "trace-p", "b", "a", None, "step-b", START, end, "ERROR", None,
            encode_content({"input": {"q": 2}, "output": {"a": 3}, "metadata": {"m": 4}}),
        ))  # fmt: skip
        queue.submit_record(
            SpanRecord("trace-p", "c", "a", None, "step-c", START, None, None, None, None)
        )
        assert await queue.flush(timeout=5)
    assert_identity(queue.stats)
    assert (queue.stats.coalesced, queue.stats.delivered) == (2, 3)
    rows = stored(control)
    assert rows["a"]["metadata"] == {"version": 2}
    assert rows["a"]["end_timestamp"] is not None
    b = rows["b"]
    assert (b["parent_id"], b["name"], b["status"]) == ("a", "step-b", "ERROR")
    assert (b["input"], b["output"], b["metadata"]) == ({"q": 2}, {"a": 3}, {"m": 4})
    assert datetime.fromisoformat(b["end_timestamp"]) == end
    c = rows["c"]
    assert (c["end_timestamp"], c.get("input"), c["status"]) == (None, None, None)


async def test_submit_record_with_a_bad_field_drops_it_as_rejected(
    client: AsyncSGPClient, control: ServerControl
) -> None:
    # The caller promised checked fields; one that breaks that promise is dropped, counted
    # and reported, and the rest of its batch is delivered.
    drops = DropLog()
    async with make_queue(client, on_drop=drops) as queue:
        queue.submit_record(SpanRecord("t", "good", None, None, "n", START, None, None, None, None))
        bad_start: Any = object()
        queue.submit_record(
            SpanRecord("t", "bad", None, None, "n", bad_start, None, None, None, None)
        )
        queue.submit_record(
            SpanRecord("t", "nul\x00id", None, None, "n", START, None, None, None, None)
        )
        assert await queue.flush(timeout=5)
    assert_identity(queue.stats)
    assert queue.stats.dropped == {DropReason.REJECTED: 2}
    assert sorted(drops.ids(DropReason.REJECTED)) == ["bad", "nul\x00id"]
    assert set(stored(control)) == {"good"}
    with pytest.raises(QueueNotRunningError):
        queue.submit_record(SpanRecord("t", "late", None, None, "n", START, None, None, None, None))


async def test_submit_record_is_redacted_field_by_field(app: Starlette) -> None:
    seen: list[bytes] = []

    def redactor(data: bytes) -> bytes:
        seen.append(data)
        return data.replace(b"classified", b"[gone]")

    control = get_control(app)
    async with (
        AsyncSGPClient(
            api_key=DEFAULT_API_KEY,
            account_id=DEFAULT_ACCOUNT_ID,
            base_url=BASE_URL,
            transport=asgi_transport(app),
            redact=redactor,
        ) as client,
        make_queue(client) as queue,
    ):
        queue.submit_record(SpanRecord(
            "classified-trace", "classified-id", None, None, "classified name", START, None,
            None, None, encode_content({"input": {"t": "classified"}, "metadata": {"k": 1}}),
        ))  # fmt: skip
    [row] = control.store.all_spans()
    assert (row["trace_id"], row["id"]) == ("classified-trace", "classified-id")
    assert (row["name"], row["input"], row["metadata"]) == (
        "[gone] name",
        {"t": "[gone]"},
        {"k": 1},
    )
    assert sorted(seen) == sorted([b'"classified name"', b'{"t":"classified"}', b'{"k":1}'])


# ---------------------------------------------------------------------------- flush triggers


async def test_flush_when_pending_count_reaches_batch_size(
    client: AsyncSGPClient, control: ServerControl
) -> None:
    async with make_queue(client, flush_interval=60.0, max_batch_size=10) as queue:
        for i in range(9):
            queue.submit(span(f"s{i}"))
        await anyio.wait_all_tasks_blocked()
        assert control.stats()["upsert_requests"] == 0
        queue.submit(span("s9"))
        await anyio.wait_all_tasks_blocked()
        assert control.stats()["upsert_requests"] == 1
        assert control.stats()["items_received"] == 10
        assert queue.stats.delivered == 10
        assert_identity(queue.stats)


async def test_flush_when_encoded_size_reaches_batch_bytes(
    client: AsyncSGPClient, control: ServerControl
) -> None:
    item_size = len(encode_item(span("s0", input={"text": "x" * 200})))
    async with make_queue(client, flush_interval=60.0, max_batch_bytes=4000) as queue:
        submitted = 0
        # One by one, letting the dispatcher see each: a request goes out once the bytes add
        # up, long before the count (500) or the age (60 s) would trigger one.
        while control.stats()["upsert_requests"] == 0 and submitted < 30:
            queue.submit(span(f"s{submitted}", input={"text": "x" * 200}))
            submitted += 1
            await anyio.wait_all_tasks_blocked()
        assert control.stats()["upsert_requests"] == 1
        assert 4000 // item_size <= submitted <= 4000 // item_size + 2
        # Every request body stays within the limit.
        assert control.stats()["bytes_received"] <= 4000
        assert queue.stats.delivered >= 4000 // item_size - 1
        assert_identity(queue.stats)


async def test_flush_when_oldest_item_reaches_flush_interval(
    client: AsyncSGPClient, control: ServerControl
) -> None:
    async with make_queue(client, flush_interval=0.1) as queue:
        # The dispatcher is idle (nothing pending) when the item arrives.
        await anyio.wait_all_tasks_blocked()
        t0 = anyio.current_time()
        queue.submit(span("lonely"))
        await anyio.wait_all_tasks_blocked()
        assert control.stats()["requests"] == 0  # a lone item waits for its batch to fill
        await wait_until(lambda: queue.stats.delivered == 1)
        assert anyio.current_time() - t0 >= 0.1 * 0.9
        assert control.stats()["upsert_requests"] == 1
        assert_identity(queue.stats)


async def test_up_to_max_in_flight_requests_at_once(
    client: AsyncSGPClient, control: ServerControl
) -> None:
    control.set_faults(latency=0.05)
    queue = make_queue(client, max_in_flight=3, max_batch_size=5)
    async with watching(queue), queue:
        for i in range(60):
            queue.submit(span(f"s{i}"))
        assert await queue.flush(timeout=10)
    assert control.stats()["max_concurrent"] == 3
    assert control.stats()["upsert_requests"] == 12
    assert control.store.count() == 60
    assert_identity(queue.stats)


async def test_one_write_per_key_in_flight_even_when_requests_finish_out_of_order(
    app: Starlette,
) -> None:
    control = get_control(app)
    recorder = Recorder(app)
    # Jittered latency makes later requests overtake earlier ones.
    control.set_faults(latency=0.0, latency_jitter=0.03, seed=7)
    keys = [f"k{i}" for i in range(40)]
    async with sgp_client(recorder) as client:
        queue = make_queue(client, flush_interval=0.001, max_batch_size=4, max_in_flight=8)
        async with watching(queue), queue:
            for version in range(4):
                for i, key in enumerate(keys):
                    queue.submit(span(key, version=version))
                    if i % 5 == 0:
                        await anyio.sleep(0.002)
            for key in keys:
                queue.submit(span(key, end=True, version=9))
                await anyio.sleep(0.001)
            # Late starts for spans whose end is pending or in flight: must not win.
            for key in keys:
                queue.submit(span(key, version=10))
            assert await queue.flush(timeout=20)
    assert_identity(queue.stats)
    assert queue.stats.dropped_total == 0
    # Several writes per key really happened, concurrently with other keys' writes...
    assert len(recorder.writes) > len(keys) // 4
    assert control.stats()["max_concurrent"] > 1
    # ...yet never two of one key at once, and never a start after the end.
    check_one_write_per_key(recorder.writes)
    spans = stored(control)
    assert all(spans[k]["metadata"] == {"version": 9} for k in keys)


class HoldRequests:
    """ASGI middleware that never answers the batch requests ``hold(items)`` picks."""

    def __init__(self, app: ASGIApp, hold: Callable[[list[dict[str, Any]]], bool]) -> None:
        self.app = app
        self.hold = hold

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].endswith("/v5/spans/batch"):
            await self.app(scope, receive, send)
            return
        body, replay = await buffer_body(receive)
        if self.hold(orjson.loads(body)["items"]):
            await anyio.sleep_forever()

        await self.app(scope, replay, send)


async def test_cancelled_bisected_batch_never_settles_a_newer_write_of_its_keys(
    app: Starlette,
) -> None:
    """Regression: a bisected batch whose first half landed, then cancelled at shutdown,
    must not settle the newer write of that key that another batch is sending. Settling by
    key did: it reported the delivered start as lost instead of the end, and depending on
    the order of the two settlements, failed the other batch with a KeyError."""
    control = get_control(app)

    def hold(items: list[dict[str, Any]]) -> bool:
        # The half of the bisected batch holding "bad", and whatever carries the end of "a".
        alone_bad = [item["id"] for item in items] == ["bad"]
        return alone_bad or any(item.get("input") == {"marker": "a-end"} for item in items)

    held = HoldRequests(app, hold)
    drops = DropLog()
    async with sgp_client(held) as client:
        queue = make_queue(
            client, flush_interval=60.0, max_batch_size=2, shutdown_timeout=0.5, on_drop=drops
        )
        async with watching(queue), queue:
            queue.submit(span("a"))
            # Its own parent: the server rejects the pair with 409, the queue bisects it, "a"
            # lands alone, and the half holding "bad" is sent next and never answered.
            queue.submit(span("bad", parent_id="bad"))
            await wait_until(lambda: queue.stats.delivered == 1)
            # The end of "a" (held too) now goes out in another batch, while the first
            # batch still waits on "bad".
            queue.submit(span("a", end=True, version=1, input={"marker": "a-end"}))
            queue.submit(span("c", end=True))
            await wait_until(lambda: queue.stats.in_flight == 3)
    stats = queue.stats
    assert_identity(stats)
    assert stats.delivered == 1
    assert stats.dropped == {DropReason.SHUTDOWN: 3}
    # The writes reported lost are the ones really lost: the end of "a" (not its start,
    # which was delivered), "bad" and "c".
    lost = {(item.span_id, item.completed) for items, _, _ in drops.calls for item in items}
    assert lost == {("a", True), ("bad", False), ("c", True)}
    assert stored(control)["a"]["end_timestamp"] is None


# ---------------------------------------------------------------------------- memory bound


async def test_shedding_policy_when_full(
    client: AsyncSGPClient, control: ServerControl, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=QUEUE_LOGGER)
    drops = DropLog()
    queue = make_queue(client, flush_interval=60.0, max_pending=3, on_drop=drops)
    async with watching(queue), queue:
        for key in ("a", "b", "c"):
            queue.submit(span(key))
        # Full. A new start for an unknown key is shed.
        queue.submit(span("d"))
        assert queue.stats.dropped == {DropReason.SHED_START: 1}
        assert drops.ids(DropReason.SHED_START) == ["d"]
        # An end for a pending start merges: no drop, no growth.
        queue.submit(span("a", end=True))
        assert queue.stats.pending == 3
        assert queue.stats.dropped_total == 1
        # A new end evicts a pending start-only item (the oldest: b), counted as shed_start.
        queue.submit(span("e", end=True))
        assert drops.ids(DropReason.SHED_START) == ["d", "b"]
        queue.submit(span("f", end=True))
        assert drops.ids(DropReason.SHED_START) == ["d", "b", "c"]
        # Only completed items left: a new end is dropped as queue_full.
        queue.submit(span("g", end=True))
        queue.submit(span("h"))  # and a new start is still shed
        assert drops.ids(DropReason.QUEUE_FULL) == ["g"]
        assert queue.stats.dropped == {DropReason.SHED_START: 4, DropReason.QUEUE_FULL: 1}
        assert_identity(queue.stats)
        assert await queue.flush(timeout=5)
    assert sorted(stored(control)) == ["a", "e", "f"]
    assert all(s["end_timestamp"] is not None for s in stored(control).values())
    assert drops.by_reason() == dict(queue.stats.dropped)
    for items, _, error in drops.calls:
        assert error is None
        assert all(item.trace_id == "trace-1" for item in items)
    dropped_g = next(i for items, _, _ in drops.calls for i in items if i.span_id == "g")
    assert dropped_g.completed
    assert dropped_g.to_dict()["id"] == "g"
    # Rate-limited: one warning line per reason, not one per drop.
    warnings = [
        r for r in caplog.records if r.name == QUEUE_LOGGER and r.levelno == logging.WARNING
    ]
    assert len(warnings) == 2
    assert {"shed_start", "queue_full"} == {
        reason
        for r in warnings
        for reason in ("shed_start", "queue_full")
        if reason in r.getMessage()
    }
    assert_identity(queue.stats)


async def test_shedding_by_pending_bytes(client: AsyncSGPClient, control: ServerControl) -> None:
    drops = DropLog()
    one = len(encode_item(span("a", input={"text": "x" * 300})))
    # An end is a little bigger than its start (end timestamp, status).
    end = len(encode_item(span("e", end=True, input={"text": "x" * 300})))
    # Room for three starts, not four; and for two starts and an end.
    limit = 2 * one + max(one, end) + 10
    queue = make_queue(client, flush_interval=60.0, max_pending_bytes=limit, on_drop=drops)
    async with watching(queue), queue:
        for key in ("a", "b", "c"):
            queue.submit(span(key, input={"text": "x" * 300}))
        assert queue.stats.pending == 3
        queue.submit(span("d", input={"text": "x" * 300}))
        assert drops.ids(DropReason.SHED_START) == ["d"]
        queue.submit(span("e", end=True, input={"text": "x" * 300}))
        assert drops.ids(DropReason.SHED_START) == ["d", "a"]
        # The memory bound holds in bytes too.
        assert queue.stats.pending_bytes <= queue.config.max_pending_bytes
        assert_identity(queue.stats)
        assert await queue.flush(timeout=5)
    assert sorted(stored(control)) == ["b", "c", "e"]
    assert_identity(queue.stats)


async def test_on_drop_sees_a_balanced_identity_when_a_start_is_evicted(
    client: AsyncSGPClient,
) -> None:
    seen: list[QueueStats] = []
    queue = make_queue(client, flush_interval=60.0, max_pending=2)

    def on_drop(items: Sequence[DroppedSpan], reason: str, error: BaseException | None) -> None:
        seen.append(queue.stats)

    queue.on_drop = on_drop
    async with queue:
        queue.submit(span("a"))
        queue.submit(span("b"))
        queue.submit(span("c"))  # shed
        queue.submit(span("d", end=True))  # evicts a
        queue.submit(span("e", end=True))  # evicts b
        queue.submit(span("f", end=True))  # queue_full
        assert len(seen) == 4
        # "holds at every moment": also inside the callback the queue calls.
        assert [s.balanced for s in seen] == [True] * 4, seen


async def test_put_waits_for_room_instead_of_shedding(
    client: AsyncSGPClient, control: ServerControl
) -> None:
    queue = make_queue(client, flush_interval=60.0, max_pending=2)
    async with queue:  # no watcher: it would keep wait_all_tasks_blocked from returning
        queue.submit(span("a"))
        queue.submit(span("b"))
        done = anyio.Event()

        async def producer() -> None:
            await queue.put(span("c"))
            done.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            await anyio.wait_all_tasks_blocked()
            assert not done.is_set()
            assert queue.stats.submitted == 2
            assert queue.stats.dropped_total == 0
            assert await queue.flush(timeout=5)  # makes room
        assert done.is_set()
        assert await queue.flush(timeout=5)
    assert queue.stats.dropped_total == 0
    assert sorted(stored(control)) == ["a", "b", "c"]
    assert_identity(queue.stats)


async def test_put_waits_for_room_by_bytes_instead_of_shedding(
    client: AsyncSGPClient, control: ServerControl
) -> None:
    # Room for one such item (about 650 bytes) but not two: the second put must wait.
    queue = make_queue(client, flush_interval=60.0, max_pending_bytes=1000)
    async with queue:
        await queue.put(span("a", input={"text": "x" * 300}))
        done = anyio.Event()

        async def producer() -> None:
            await queue.put(span("b", input={"text": "x" * 300}))
            done.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            await anyio.wait_all_tasks_blocked()
            assert queue.stats.dropped_total == 0, queue.stats.dropped
            assert await queue.flush(timeout=5)
        assert done.is_set()
        assert await queue.flush(timeout=5)
    assert queue.stats.dropped_total == 0, queue.stats.dropped
    assert sorted(stored(control)) == ["a", "b"]
    assert_identity(queue.stats)


async def test_cancelled_put_submits_nothing(client: AsyncSGPClient) -> None:
    queue = make_queue(client, flush_interval=60.0, max_pending=1)
    async with queue:
        queue.submit(span("a"))
        with anyio.move_on_after(0.05):
            await queue.put(span("b"))
        assert queue.stats.submitted == 1
        assert_identity(queue.stats)
    assert queue.stats.delivered == 1
    assert_identity(queue.stats)


# ---------------------------------------------------------------------------- failures


@pytest.mark.parametrize("status", [429, 502, 503, 504])
async def test_transient_statuses_are_retried(
    client: AsyncSGPClient, control: ServerControl, status: int
) -> None:
    control.set_faults(status_code=status, status_every_n=2, retry_after="0")
    queue = make_queue(client, max_batch_size=10)
    async with watching(queue), queue:
        for i in range(100):
            queue.submit(span(f"s{i}", end=True))
        assert await queue.flush(timeout=10)
    assert control.store.count() == 100
    assert queue.stats.delivered == 100
    assert queue.stats.retries >= 1
    assert control.stats()["faults"][str(status)] == queue.stats.retries
    assert queue.stats.dropped_total == 0
    assert_identity(queue.stats)


async def test_connection_drops_are_retried(client: AsyncSGPClient, control: ServerControl) -> None:
    control.set_faults(drop_every_n=2)
    queue = make_queue(client, max_batch_size=10)
    async with watching(queue), queue:
        for i in range(100):
            queue.submit(span(f"s{i}", end=True))
        assert await queue.flush(timeout=10)
    assert control.store.count() == 100
    assert queue.stats.retries == control.stats()["faults"]["drop"] >= 1
    assert queue.stats.dropped_total == 0
    assert_identity(queue.stats)


async def test_retry_after_is_honoured_over_backoff(
    client: AsyncSGPClient, control: ServerControl
) -> None:
    # The backoff alone would wait a minute; the server says "soon".
    control.set_faults(status_every_n=2, retry_after="0.01")
    slow = Backoff(initial=60.0, maximum=60.0)
    async with make_queue(client, backoff=slow, max_batch_size=1) as queue:
        for i in range(4):
            queue.submit(span(f"s{i}"))
        assert await queue.flush(timeout=10)
        assert queue.stats.retries >= 1
        assert_identity(queue.stats)


async def test_retry_after_delay_is_waited(client: AsyncSGPClient, control: ServerControl) -> None:
    control.set_faults(status_every_n=1, retry_after="0.3")
    async with make_queue(client) as queue:
        queue.submit(span("a"))
        await wait_until(lambda: control.stats()["faults"].get("503", 0) >= 1)
        t0 = anyio.current_time()
        control.set_faults()
        await wait_until(lambda: queue.stats.delivered == 1)
        # The retry waited what the server asked for (a lower bound, not a speed claim).
        assert anyio.current_time() - t0 >= 0.2
        assert_identity(queue.stats)


async def test_retries_exhausted_after_the_deadline(
    client: AsyncSGPClient, control: ServerControl
) -> None:
    control.set_faults(status_every_n=1, retry_after="0")
    drops = DropLog()
    queue = make_queue(client, retry_deadline=0.2, max_batch_size=5, on_drop=drops)
    async with watching(queue), queue:
        for i in range(10):
            queue.submit(span(f"s{i}"))
        assert await queue.flush(timeout=10)
    assert queue.stats.dropped == {DropReason.RETRIES_EXHAUSTED: 10}
    assert queue.stats.delivered == 0
    assert queue.stats.retries >= 2
    assert sorted(drops.ids(DropReason.RETRIES_EXHAUSTED)) == sorted(f"s{i}" for i in range(10))
    for _, _, error in drops.calls:
        assert isinstance(error, APIStatusError)
        assert error.status_code == 503
    assert_identity(queue.stats)


async def test_413_splits_the_batch(client: AsyncSGPClient, control: ServerControl) -> None:
    control.set_faults(max_body_bytes=2000)
    queue = make_queue(client, flush_interval=60.0)
    async with watching(queue), queue:
        for i in range(40):
            queue.submit(span(f"s{i}", input={"text": "x" * 100}))
        assert await queue.flush(timeout=10)
    assert control.store.count() == 40
    assert control.stats()["rejections"]["413"] >= 1
    assert queue.stats.delivered == 40
    assert queue.stats.dropped_total == 0
    assert_identity(queue.stats)


async def test_413_for_a_single_item_drops_it_as_rejected(
    client: AsyncSGPClient, control: ServerControl
) -> None:
    control.set_faults(max_body_bytes=2000)
    drops = DropLog()
    queue = make_queue(client, flush_interval=60.0, on_drop=drops)
    async with watching(queue), queue:
        queue.submit(span("huge", input={"text": "x" * 5000}))
        for i in range(5):
            queue.submit(span(f"s{i}"))
        assert await queue.flush(timeout=10)
    assert queue.stats.dropped == {DropReason.REJECTED: 1}
    assert drops.ids() == ["huge"]
    error = drops.calls[0][2]
    assert isinstance(error, APIStatusError)
    assert error.status_code == 413
    assert control.store.count() == 5
    assert_identity(queue.stats)


def _server_rejected(key: str, status: int) -> SpanItem:
    """A span the server rejects with ``status`` that SpanItem validation does not catch."""
    if status == 409:
        # Its own parent: a cycle in parent links.
        return span(key, parent_id=key)
    item = span(key, end=True)
    # Bypass the frozen model's validation, as a buggy caller could.
    if status == 400:
        object.__setattr__(item, "parent_id", "bad\x00id")
    else:
        object.__setattr__(item, "end_timestamp", START - timedelta(seconds=5))
    return item


@pytest.mark.parametrize(
    ("status", "detail"), [(400, "NUL"), (409, "cycle"), (422, "before start")]
)
async def test_rejected_items_are_isolated_and_the_rest_delivered(
    client: AsyncSGPClient, control: ServerControl, status: int, detail: str
) -> None:
    drops = DropLog()
    queue = make_queue(client, flush_interval=60.0, on_drop=drops)
    bad = {"bad-7", "bad-30", "bad-31"}
    async with watching(queue), queue:
        for i in range(50):
            key = f"bad-{i}" if f"bad-{i}" in bad else f"s{i}"
            queue.submit(_server_rejected(key, status) if key in bad else span(key, end=True))
        assert await queue.flush(timeout=10)
    assert queue.stats.dropped == {DropReason.REJECTED: 3}
    assert queue.stats.delivered == 47
    assert set(drops.ids(DropReason.REJECTED)) == bad
    for _, reason, error in drops.calls:
        assert reason == DropReason.REJECTED
        assert isinstance(error, APIStatusError)
        assert error.status_code == status
        assert detail in str(error.detail)
    assert control.store.count() == 47
    assert not bad & set(stored(control))
    assert_identity(queue.stats)


async def test_three_rejected_in_three_thousand(
    client: AsyncSGPClient, control: ServerControl
) -> None:
    drops = DropLog()
    queue = make_queue(client, on_drop=drops)
    bad = {"s17", "s1500", "s2999"}
    async with watching(queue), queue:
        for i in range(3000):
            key = f"s{i}"
            if key in bad:
                queue.submit(_server_rejected(key, 409))
            else:
                queue.submit(span(key))
                queue.submit(span(key, end=True))
            if i % 100 == 0:
                await anyio.lowlevel.checkpoint()
        assert await queue.flush(timeout=30)
    assert queue.stats.delivered == 2997
    assert queue.stats.dropped == {DropReason.REJECTED: 3}
    assert set(drops.ids()) == bad
    assert control.store.count() == 2997
    assert all(s["end_timestamp"] is not None for s in control.store.all_spans())
    assert_identity(queue.stats)


@pytest.mark.parametrize(
    ("api_key", "base_url", "reason"),
    [
        ("wrong-key", BASE_URL, DropReason.UNAUTHORIZED),
        (DEFAULT_API_KEY, "http://127.0.0.1/wrong-prefix", DropReason.NOT_FOUND),
    ],
)
async def test_configuration_errors_drop_with_one_loud_log(
    app: Starlette,
    caplog: pytest.LogCaptureFixture,
    api_key: str,
    base_url: str,
    reason: str,
) -> None:
    caplog.set_level(logging.WARNING, logger=QUEUE_LOGGER)
    drops = DropLog()
    async with sgp_client(app, api_key=api_key, base_url=base_url) as client:
        queue = make_queue(client, max_batch_size=2, on_drop=drops)
        async with watching(queue), queue:
            for i in range(10):
                queue.submit(span(f"s{i}"))
                await anyio.lowlevel.checkpoint()
            assert await queue.flush(timeout=10)
            queue.submit(span("later"))
            assert await queue.flush(timeout=10)
    assert queue.stats.dropped == {reason: 11}
    assert queue.stats.requests >= 6  # not retried, but every batch was tried
    assert queue.stats.retries == 0
    assert drops.by_reason() == {reason: 11}
    errors = [r for r in caplog.records if r.name == QUEUE_LOGGER and r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert api_key not in caplog.text or api_key == DEFAULT_API_KEY
    assert_identity(queue.stats)


async def test_on_drop_that_raises_does_not_kill_the_worker(
    client: AsyncSGPClient, control: ServerControl, caplog: pytest.LogCaptureFixture
) -> None:
    control.set_faults(status_every_n=1, retry_after="0")
    calls = 0

    def on_drop(items: Sequence[DroppedSpan], reason: str, error: BaseException | None) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("callback bug")

    queue = make_queue(client, retry_deadline=0.0, on_drop=on_drop)
    async with watching(queue), queue:
        queue.submit(span("lost"))
        assert await queue.flush(timeout=5)
        assert calls == 1
        control.set_faults()
        queue.submit(span("kept"))
        assert await queue.flush(timeout=5)
    assert sorted(stored(control)) == ["kept"]
    assert queue.stats.dropped == {DropReason.RETRIES_EXHAUSTED: 1}
    assert "on_drop callback failed" in caplog.text
    assert_identity(queue.stats)


async def test_client_closed_underneath_drops_as_error(app: Starlette) -> None:
    drops = DropLog()
    async with sgp_client(app) as client:
        queue = make_queue(client, on_drop=drops)
        async with watching(queue), queue:
            queue.submit(span("a"))
            assert await queue.flush(timeout=5)
            await client.aclose()
            for i in range(3):
                queue.submit(span(f"b{i}"))
            assert await queue.flush(timeout=5)
            # The worker is still alive: later items are handled (and dropped) too.
            queue.submit(span("c"))
            assert await queue.flush(timeout=5)
    assert queue.stats.delivered == 1
    assert queue.stats.dropped == {DropReason.ERROR: 4}
    assert all(isinstance(error, ClientClosedError) for _, _, error in drops.calls)
    assert_identity(queue.stats)


class _ExplodingOnce(httpx.AsyncBaseTransport):
    """Raises an unexpected (non-httpx) exception on the first request, then serves ``app``."""

    def __init__(self, app: ASGIApp) -> None:
        self._inner = asgi_transport(app)
        self.exploded = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not self.exploded:
            self.exploded = True
            raise ZeroDivisionError("a bug below the queue")
        return await self._inner.handle_async_request(request)


async def test_unexpected_exception_in_a_send_never_kills_the_worker(
    app: Starlette, caplog: pytest.LogCaptureFixture
) -> None:
    drops = DropLog()
    control = get_control(app)
    async with AsyncSGPClient(
        api_key=DEFAULT_API_KEY,
        account_id=DEFAULT_ACCOUNT_ID,
        base_url=BASE_URL,
        transport=_ExplodingOnce(app),
    ) as client:
        queue = make_queue(client, on_drop=drops)
        async with watching(queue), queue:
            queue.submit(span("a"))
            assert await queue.flush(timeout=5)
            queue.submit(span("b"))
            assert await queue.flush(timeout=5)
    assert queue.stats.dropped == {DropReason.ERROR: 1}
    assert drops.ids() == ["a"]
    assert isinstance(drops.calls[0][2], ZeroDivisionError)
    assert sorted(stored(control)) == ["b"]
    assert "unexpected error" in caplog.text
    assert_identity(queue.stats)


# ---------------------------------------------------------------------------- flush barrier


async def test_flush_is_a_barrier(client: AsyncSGPClient, control: ServerControl) -> None:
    control.set_faults(latency=0.02)
    queue = make_queue(client, flush_interval=60.0, max_batch_size=7)
    async with watching(queue), queue:
        for round_ in range(3):
            for i in range(20):
                queue.submit(span(f"r{round_}-{i}", end=True))
            assert await queue.flush(timeout=10)
            # Everything submitted before the call is settled when it returns.
            assert control.store.count() == 20 * (round_ + 1)
            assert queue.stats.pending == queue.stats.in_flight == 0
        assert await queue.flush(timeout=10)  # nothing new: at once
    assert_identity(queue.stats)


async def test_flush_returns_false_when_its_timeout_runs_out(
    client: AsyncSGPClient, control: ServerControl
) -> None:
    control.set_faults(hang=True)
    queue = make_queue(client, shutdown_timeout=0.3)
    async with watching(queue), queue:
        queue.submit(span("a"))
        assert await queue.flush(timeout=0.2) is False
        assert queue.stats.in_flight == 1
        assert_identity(queue.stats)
    assert queue.stats.dropped == {DropReason.SHUTDOWN: 1}
    assert_identity(queue.stats)


async def test_concurrent_flushes_all_return(
    client: AsyncSGPClient, control: ServerControl
) -> None:
    control.set_faults(latency=0.01, latency_jitter=0.02, seed=3)
    results: list[bool] = []
    queue = make_queue(client, max_batch_size=3)
    async with watching(queue), queue:

        async def flusher(n: int) -> None:
            for i in range(5):
                queue.submit(span(f"f{n}-{i}", end=True))
            results.append(await queue.flush(timeout=10))

        async with anyio.create_task_group() as tg:
            for n in range(6):
                tg.start_soon(flusher, n)
    assert results == [True] * 6
    assert control.store.count() == 30
    assert_identity(queue.stats)


# ---------------------------------------------------------------------------- lifecycle


async def test_exit_drains_what_is_pending(client: AsyncSGPClient, control: ServerControl) -> None:
    queue = make_queue(client, flush_interval=60.0, max_batch_size=50)
    async with watching(queue), queue:
        for i in range(120):
            queue.submit(span(f"s{i}", end=True))
    assert control.store.count() == 120
    assert queue.stats.delivered == 120
    assert_identity(queue.stats)


async def test_exit_drains_when_the_body_raises(
    client: AsyncSGPClient, control: ServerControl
) -> None:
    queue = make_queue(client, flush_interval=60.0)

    async def failing_body() -> None:
        async with queue:
            queue.submit(span("a"))
            raise KeyError("boom")

    with pytest.raises(KeyError):
        await failing_body()
    assert control.store.count() == 1
    assert_identity(queue.stats)


async def test_exit_drain_is_shielded_from_an_outer_cancellation(
    client: AsyncSGPClient, control: ServerControl
) -> None:
    queue = make_queue(client, flush_interval=60.0, shutdown_timeout=5.0)
    with anyio.CancelScope() as scope:
        async with queue:
            for i in range(30):
                queue.submit(span(f"s{i}", end=True))
            scope.cancel()
            await anyio.sleep(1)  # cancelled here
    assert scope.cancelled_caught
    assert queue.stats.dropped == {}, queue.stats
    assert queue.stats.delivered == 30
    assert control.store.count() == 30
    assert_identity(queue.stats)


async def test_every_shutdown_drop_is_reported_to_on_drop(
    client: AsyncSGPClient, control: ServerControl
) -> None:
    control.set_faults(hang=True)
    drops = DropLog()
    queue = make_queue(client, max_batch_size=10, shutdown_timeout=0.3, on_drop=drops)
    async with queue:
        for i in range(50):
            queue.submit(span(f"s{i}", end=True))
        await wait_until(lambda: queue.stats.in_flight > 0)
    assert queue.stats.dropped == {DropReason.SHUTDOWN: 50}
    # In-flight items abandoned at the deadline are drops like any other.
    assert sorted(drops.ids(DropReason.SHUTDOWN)) == sorted(f"s{i}" for i in range(50))


async def test_cancelling_a_producer_loses_nothing_it_submitted(
    client: AsyncSGPClient, control: ServerControl
) -> None:
    queue = make_queue(client, flush_interval=0.05)
    async with watching(queue), queue:

        async def producer(n: int) -> None:
            for i in range(1000):
                queue.submit(span(f"p{n}-{i}"))
                queue.submit(span(f"p{n}-{i}", end=True))
                await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as tg:
            for n in range(3):
                tg.start_soon(producer, n)
            await anyio.sleep(0.02)
            tg.cancel_scope.cancel()
        submitted = queue.stats.submitted
        assert 0 < submitted < 6000
    assert queue.stats.dropped_total == 0
    assert queue.stats.delivered + queue.stats.coalesced == submitted
    assert control.store.count() == queue.stats.delivered
    assert_identity(queue.stats)


async def test_constructor_validates_settings(client: AsyncSGPClient) -> None:
    for bad in (
        {"max_batch_size": 0},
        {"max_batch_size": 1001},
        {"max_in_flight": 0},
        {"max_pending": 0},
        {"max_pending_bytes": 0},
        {"max_batch_bytes": 0},
        {"flush_interval": -1.0},
        {"retry_deadline": float("nan")},
        {"shutdown_timeout": float("inf")},
        {"request_timeout": 0.0},
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            UpsertQueue(client, **bad)
