"""A server that accepts every request and never answers it: each layer's promise, once.

The local server's ``hang`` fault, in-process (``asgi_transport``) and over real loopback
HTTP (``ServerProcess``, the transport production uses); every test runs on both, on asyncio
and trio. What each layer promises:

- a direct client call ends at its call deadline with ``APITimeoutError``;
- the queue's ``request_timeout`` ends a hung request and the batch is retried, delivered once
  the server answers again;
- when ``retry_deadline`` runs out first, the writes are dropped and counted, none vanish;
- leaving ``async with queue`` keeps ``shutdown_timeout``: every write not delivered is a
  ``SHUTDOWN`` drop, and the accounting identity holds at every checkpoint meanwhile.

Other tests use a hung server for another promise and stay with it: ``flush(timeout=)`` in
``tests/queue/test_queue.py``, ``on_drop`` at shutdown there, Ctrl-C during a flush in
``test_reliability.py``, a timed-out connection not being reused in
``tests/transport/test_transport.py``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel
import attrs
import pytest
from starlette.applications import Starlette

from sgp_client import APITimeoutError, AsyncSGPClient, DropReason, UpsertQueue
from sgp_client.testing import ServerProcess, get_control
from tests._helpers import (
    DEADLINE_MARGIN,
    OUTAGE_BACKOFF,
    in_process_client,
    loopback_client,
    span_item,
    wait_until,
    watching,
)

pytestmark = pytest.mark.anyio


@attrs.frozen
class SilentServer:
    """The local server in one layer, with the ``hang`` fault on."""

    #: A client of this server (``in_process_client`` or ``loopback_client``, same overrides).
    connect: Callable[..., AsyncSGPClient]
    #: The server's counters (``/_admin/stats``).
    stats: Callable[[], dict[str, Any]]
    #: Spans stored.
    count: Callable[[], int]
    #: Switch the fault off: the server answers again.
    answer_again: Callable[[], None]

    def hung_requests(self) -> int:
        return int(self.stats()["faults"].get("hang", 0))


@pytest.fixture(params=["in_process", "loopback"])
def silent(request: pytest.FixtureRequest, app: Starlette) -> SilentServer:
    if request.param == "in_process":
        control = get_control(app)
        control.set_faults(hang=True)
        return SilentServer(
            connect=functools.partial(in_process_client, app),
            stats=control.stats,
            count=control.store.count,
            answer_again=control.clear_faults,
        )
    server: ServerProcess = request.getfixturevalue("server")
    server.set_faults(hang=True)
    return SilentServer(
        connect=functools.partial(loopback_client, server),
        stats=server.stats,
        count=server.count,
        answer_again=server.clear_faults,
    )


async def submit_spans(queue: UpsertQueue, count: int) -> None:
    """Start and end ``count`` spans (each pair coalesces in the queue), yielding now and
    then like a real producer, so batches go out while later spans are still pending."""
    for index in range(count):
        queue.submit(span_item(f"span-{index}", id=f"s{index}"))
        queue.submit(span_item(f"span-{index}", id=f"s{index}", end=True))
        if index % 50 == 49:
            await anyio.lowlevel.checkpoint()


async def test_a_direct_call_ends_at_its_call_deadline(silent: SilentServer) -> None:
    call_timeout = 0.5
    async with silent.connect(call_timeout=call_timeout) as client:
        started = anyio.current_time()
        with pytest.raises(APITimeoutError, match="deadline"):
            await client.spans.upsert_batch([span_item()])
        elapsed = anyio.current_time() - started
    assert elapsed >= call_timeout
    # A deadline, not a speed claim: the margin is generous.
    assert elapsed <= call_timeout + DEADLINE_MARGIN
    assert silent.hung_requests() == 1


async def test_the_queue_retries_a_hung_request_after_its_request_timeout(
    silent: SilentServer,
) -> None:
    async with silent.connect() as client:
        queue = UpsertQueue(
            client,
            flush_interval=0.01,
            backoff=OUTAGE_BACKOFF,
            request_timeout=0.3,
            retry_deadline=30.0,
            shutdown_timeout=5.0,
        )
        async with watching(queue), queue:
            for index in range(10):
                queue.submit(span_item(f"span-{index}", id=f"s{index}", end=True))
            await wait_until(lambda: silent.hung_requests() >= 1)
            assert await queue.flush(timeout=0.1) is False
            silent.answer_again()
            # The hung request times out after request_timeout and is retried.
            assert await queue.flush(timeout=20), queue.stats
    stats = queue.stats
    assert stats.delivered == 10
    assert stats.retries >= 1
    assert stats.balanced
    assert silent.count() == 10


async def test_the_queue_drops_and_counts_what_its_retry_deadline_gives_up(
    silent: SilentServer,
) -> None:
    async with silent.connect() as client:
        queue = UpsertQueue(
            client,
            max_batch_size=5,
            flush_interval=0.01,
            backoff=OUTAGE_BACKOFF,
            request_timeout=0.3,
            retry_deadline=0.8,
            shutdown_timeout=1.5,
        )
        async with watching(queue):
            async with queue:
                await submit_spans(queue, 10)
                started = anyio.current_time()
            elapsed = anyio.current_time() - started
    stats = queue.stats
    assert stats.delivered == 0
    assert set(stats.dropped) <= {DropReason.RETRIES_EXHAUSTED, DropReason.SHUTDOWN}, stats
    # Every write not merged into a newer one is counted as dropped, none vanished.
    assert stats.dropped_total == stats.submitted - stats.coalesced, stats
    assert stats.pending == stats.in_flight == 0
    assert stats.balanced
    assert elapsed <= 1.5 + DEADLINE_MARGIN


async def test_leaving_the_queue_keeps_its_shutdown_deadline(silent: SilentServer) -> None:
    shutdown_timeout = 1.0
    count = 200
    async with silent.connect() as client:
        queue = UpsertQueue(
            client,
            max_batch_size=10,
            flush_interval=0.01,
            request_timeout=60.0,
            shutdown_timeout=shutdown_timeout,
        )
        async with watching(queue):
            async with queue:
                await submit_spans(queue, count)
                await wait_until(lambda: queue.stats.in_flight > 0)
                assert await queue.flush(timeout=0.3) is False
                started = anyio.current_time()
            elapsed = anyio.current_time() - started
    # A deadline, not a speed claim: the margin is generous.
    assert elapsed <= shutdown_timeout + DEADLINE_MARGIN
    stats = queue.stats
    assert stats.delivered == 0
    assert stats.submitted - stats.coalesced == count
    assert stats.dropped == {DropReason.SHUTDOWN: count}
    assert stats.pending == stats.in_flight == 0
    assert stats.balanced
