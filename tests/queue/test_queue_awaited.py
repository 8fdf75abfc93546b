"""``await UpsertQueue.upsert(item)``: delivered when it returns, group commit, drops raise.

Against the local server in-process (its request counter shows the group commit, its faults
the failures). The accounting identity is checked after every scenario.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest

from sgp_client import (
    APIStatusError,
    AsyncSGPClient,
    DropReason,
    QueueNotRunningError,
    QueueStats,
    SGPError,
    SpanDroppedError,
    SpanItem,
    UpsertQueue,
)
from sgp_client.testing import ServerControl
from tests.conftest import FAST_BACKOFF

pytestmark = pytest.mark.anyio

START = datetime(2025, 1, 15, 12, 0, 0, tzinfo=UTC)
# Long enough that nothing here is sent because an item got old: only the awaited path (or
# the exit) sends.
NEVER = 60.0


def item(key: str, *, end: bool = False, trace: str = "trace-a", **fields: Any) -> SpanItem:
    return SpanItem(
        name=f"span-{key}",
        trace_id=trace,
        id=key,
        start_timestamp=START,
        end_timestamp=START + timedelta(seconds=1) if end else None,
        **fields,
    )


def queue_of(client: AsyncSGPClient, **overrides: Any) -> UpsertQueue:
    settings: dict[str, Any] = {
        "flush_interval": NEVER,
        "backoff": FAST_BACKOFF,
        "shutdown_timeout": 5.0,
    }
    settings.update(overrides)
    return UpsertQueue(client, **settings)


def assert_identity(stats: QueueStats) -> None:
    assert stats.submitted == (
        stats.delivered
        + stats.coalesced
        + stats.pending
        + stats.in_flight
        + sum(stats.dropped.values())
    ), stats


def stored(control: ServerControl) -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in control.store.all_spans()}


async def test_upsert_returns_once_the_write_is_stored(
    client: AsyncSGPClient, control: ServerControl
) -> None:
    async with queue_of(client) as queue:
        with anyio.fail_after(5):  # not the 60 s flush interval: the dispatcher is woken
            await queue.upsert(item("a"))
        # Stored before upsert returned, not merely sent.
        assert stored(control)["a"]["end_timestamp"] is None
        assert queue.stats.delivered == 1
        assert_identity(queue.stats)
    assert control.stats()["upsert_requests"] == 1


async def test_concurrent_awaiters_share_a_request(
    client: AsyncSGPClient, control: ServerControl
) -> None:
    awaiters = 50
    async with queue_of(client) as queue:
        async with anyio.create_task_group() as tg:
            for n in range(awaiters):
                tg.start_soon(queue.upsert, item(f"s{n}"))
        assert queue.stats.delivered == awaiters
        assert_identity(queue.stats)
    # Group commit: every write awaited meanwhile rode in the first request (or, at most,
    # in the one after it), never one request per awaiter.
    assert 1 <= control.stats()["upsert_requests"] <= 2
    assert len(stored(control)) == awaiters


async def test_awaited_start_and_end_merge_into_one_write(
    client: AsyncSGPClient, control: ServerControl
) -> None:
    async with queue_of(client) as queue:
        async with anyio.create_task_group() as tg:
            tg.start_soon(queue.upsert, item("m"))
            tg.start_soon(queue.upsert, item("m", end=True))
        stats = queue.stats
        assert (stats.delivered, stats.coalesced) == (1, 1)
        assert_identity(stats)
    assert stored(control)["m"]["end_timestamp"] is not None
    assert control.stats()["upsert_requests"] == 1


async def test_a_late_start_of_a_delivered_span_returns_without_a_write(
    client: AsyncSGPClient, control: ServerControl
) -> None:
    async with queue_of(client) as queue:
        await queue.upsert(item("late", end=True))
        await queue.upsert(item("late"))  # absorbed: sent after the end it would reopen it
        stats = queue.stats
        assert (stats.delivered, stats.coalesced) == (1, 1)
        assert_identity(stats)
    assert stored(control)["late"]["end_timestamp"] is not None
    assert control.stats()["upsert_requests"] == 1


async def test_a_cancelled_awaiter_leaves_its_write_to_be_delivered(
    client: AsyncSGPClient, control: ServerControl
) -> None:
    control.set_faults(latency=0.3)
    async with queue_of(client) as queue:
        with anyio.move_on_after(0.05) as scope:
            await queue.upsert(item("c", end=True))
        assert scope.cancelled_caught  # the wait ended, the write did not
        assert_identity(queue.stats)
        assert await queue.flush(timeout=5)
        stats = queue.stats
        assert stats.delivered == 1
        assert stats.dropped == {}
        assert_identity(stats)
    assert stored(control)["c"]["end_timestamp"] is not None


async def test_a_cancelled_awaiter_of_a_dropped_write_leaves_it_counted(
    client: AsyncSGPClient, control: ServerControl
) -> None:
    control.set_faults(status_code=503, status_every_n=1, retry_after="0")
    async with queue_of(client, retry_deadline=0.3) as queue:
        with anyio.move_on_after(0.05):
            await queue.upsert(item("x"))
        assert await queue.flush(timeout=5)
        assert queue.stats.dropped == {DropReason.RETRIES_EXHAUSTED: 1}
        assert_identity(queue.stats)


async def test_a_write_the_server_rejects_raises_with_the_reason(
    client: AsyncSGPClient, control: ServerControl
) -> None:
    control.set_faults(status_code=422, status_every_n=1)
    async with queue_of(client) as queue:
        with pytest.raises(SpanDroppedError) as caught:
            await queue.upsert(item("bad", trace="trace-r"))
        assert_identity(queue.stats)
    error = caught.value
    assert isinstance(error, SGPError)
    assert (error.reason, error.trace_id, error.span_id) == (
        DropReason.REJECTED,
        "trace-r",
        "bad",
    )
    assert isinstance(error.__cause__, APIStatusError)
    assert error.__cause__.status_code == 422
    assert queue.stats.dropped == {DropReason.REJECTED: 1}


async def test_retries_exhausted_raise_with_the_last_error(
    client: AsyncSGPClient, control: ServerControl
) -> None:
    control.set_faults(status_code=503, status_every_n=1, retry_after="0")
    async with queue_of(client, retry_deadline=0.2) as queue:
        with pytest.raises(SpanDroppedError) as caught:
            await queue.upsert(item("busy"))
        assert_identity(queue.stats)
    assert caught.value.reason == DropReason.RETRIES_EXHAUSTED
    assert isinstance(caught.value.__cause__, APIStatusError)
    assert queue.stats.retries >= 1


async def test_a_full_queue_raises_queue_full(client: AsyncSGPClient) -> None:
    async with queue_of(client, max_pending=1) as queue:
        queue.submit(item("first", end=True))  # fills it; no start to evict
        with pytest.raises(SpanDroppedError) as caught:
            await queue.upsert(item("second", end=True))
        assert caught.value.reason == DropReason.QUEUE_FULL
        assert caught.value.__cause__ is None
        assert_identity(queue.stats)


async def test_a_write_left_at_shutdown_raises_shutdown(
    client: AsyncSGPClient, control: ServerControl
) -> None:
    control.set_faults(hang=True)
    failures: list[SpanDroppedError] = []

    async def awaiter(queue: UpsertQueue) -> None:
        try:
            await queue.upsert(item("stuck"))
        except SpanDroppedError as exc:
            failures.append(exc)

    queue = queue_of(client, shutdown_timeout=0.2, request_timeout=30.0)
    async with anyio.create_task_group() as tg, queue:
        tg.start_soon(awaiter, queue)
        await anyio.wait_all_tasks_blocked()
    assert [exc.reason for exc in failures] == [DropReason.SHUTDOWN]
    assert queue.stats.dropped == {DropReason.SHUTDOWN: 1}
    assert_identity(queue.stats)


async def test_upsert_outside_the_block_raises_not_running(client: AsyncSGPClient) -> None:
    queue = queue_of(client)
    with pytest.raises(QueueNotRunningError):
        await queue.upsert(item("early"))
    async with queue:
        pass
    with pytest.raises(QueueNotRunningError):
        await queue.upsert(item("late"))
    assert queue.stats.submitted == 0
