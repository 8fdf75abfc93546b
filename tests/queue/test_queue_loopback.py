"""``UpsertQueue`` against the local SGP server in a subprocess, over real loopback HTTP.

That ``submit`` sends nothing itself, seen by a server in another process. The big
scenarios: a 20,000-span burst with default settings, 503 on every second request,
five-second outages (503 and dropped connections), a server killed and restarted. Both
backends, as everywhere. A server that never answers: ``tests/system/test_server_never_answers.py``.
"""

from __future__ import annotations

import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest

from sgp_client import SpanItem, UpsertQueue
from sgp_client.testing import ServerProcess
from tests._helpers import (
    OUTAGE_BACKOFF,
    loopback_client,
    server_call,
    span_item,
    wait_until,
    watching,
)

pytestmark = pytest.mark.anyio


def span(key: str, *, end: bool = False, trace: str = "trace-1") -> SpanItem:
    return span_item(
        f"span-{key}",
        trace_id=trace,
        id=key,
        end=end,
        input={"key": key},
        output={"done": True} if end else None,
    )


async def produce(queue: UpsertQueue, count: int, *, prefix: str = "s") -> None:
    """Start and end ``count`` spans, yielding now and then like a real producer."""
    for i in range(count):
        queue.submit(span(f"{prefix}{i}"))
        queue.submit(span(f"{prefix}{i}", end=True))
        if i % 200 == 0:
            await anyio.lowlevel.checkpoint()


def assert_all_completed(server: ServerProcess, count: int) -> None:
    spans = server.spans()
    assert len(spans) == count
    assert all(s["end_timestamp"] is not None and s["output"] == {"done": True} for s in spans)


async def test_submit_does_no_io_until_the_caller_yields(server: ServerProcess) -> None:
    """``submit`` is synchronous and never sends: even past a batch's worth the request goes
    out from the dispatcher, once the caller yields to the event loop.

    Over loopback with the transport production uses, a request written from inside
    ``submit`` would reach the server subprocess; its counters are read here by a blocking
    admin call, which lets the server run but not this event loop (nor the dispatcher).
    """
    async with loopback_client(server, max_retries=0) as client:
        queue = UpsertQueue(client, flush_interval=60.0, max_batch_size=10)
        async with watching(queue), queue:
            for i in range(100):
                assert queue.submit(span(f"s{i}")) is None  # type: ignore[func-returns-value]
            assert server.stats()["requests"] == 0
            assert queue.stats.pending == 100
            # Once the loop runs, the full batches go out (flush_interval is 60 s).
            await wait_until(lambda: server.stats()["requests"] >= 1)
            assert await queue.flush(timeout=10)
    assert queue.stats.delivered == 100
    assert server.count() == 100


@pytest.mark.slow
async def test_burst_of_20000_spans_with_defaults(server: ServerProcess) -> None:
    async with loopback_client(server, max_retries=0) as client:
        queue = UpsertQueue(client)
        async with watching(queue), queue:
            await produce(queue, 20_000)
            assert await queue.flush(timeout=60)
    stats = queue.stats
    assert stats.submitted == 40_000
    assert stats.delivered + stats.coalesced == 40_000
    assert stats.dropped_total == 0
    assert stats.balanced
    server_stats = await server_call(server, "stats")
    assert server_stats["items_stored"] == 20_000
    assert server_stats["items_received"] == stats.delivered
    assert_all_completed(server, 20_000)


async def test_every_second_request_answered_503(server: ServerProcess) -> None:
    await server_call(server, "set_faults", status_code=503, status_every_n=2, retry_after="0")
    async with loopback_client(server, max_retries=0) as client:
        queue = UpsertQueue(client, max_batch_size=100, backoff=OUTAGE_BACKOFF)
        async with watching(queue), queue:
            await produce(queue, 3000)
            assert await queue.flush(timeout=60)
    stats = queue.stats
    assert stats.dropped_total == 0
    assert stats.retries >= 1
    assert stats.balanced
    server_stats = await server_call(server, "stats")
    assert server_stats["faults"]["503"] == stats.retries
    assert_all_completed(server, 3000)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["503", "drop"])
async def test_five_second_outage_loses_nothing(server: ServerProcess, mode: str) -> None:
    async with loopback_client(server, max_retries=0) as client:
        queue = UpsertQueue(
            client, backoff=OUTAGE_BACKOFF, retry_deadline=30.0, shutdown_timeout=20.0
        )
        async with watching(queue), queue:
            await produce(queue, 500, prefix="before")
            assert await queue.flush(timeout=30)
            await server_call(
                server, "set_faults", outage_seconds=5, outage_mode=mode, retry_after="0.2"
            )
            t0 = anyio.current_time()
            await produce(queue, 1500, prefix="during")
            assert await queue.flush(timeout=40)
            assert anyio.current_time() - t0 >= 4.0  # really waited the outage out
    stats = queue.stats
    assert stats.dropped_total == 0
    assert stats.retries >= 1
    assert stats.balanced
    assert (await server_call(server, "stats"))["faults"]["outage"] >= 1
    assert_all_completed(server, 2000)


@pytest.mark.slow
async def test_server_killed_and_restarted_loses_nothing(server: ServerProcess) -> None:
    async with loopback_client(server, max_retries=0) as client:
        queue = UpsertQueue(
            client, backoff=OUTAGE_BACKOFF, retry_deadline=30.0, request_timeout=5.0
        )
        async with watching(queue), queue:
            await anyio.to_thread.run_sync(server.kill)
            await produce(queue, 1000)
            # Refused connections meanwhile: retried, never dropped.
            with anyio.move_on_after(0.5):
                await queue.flush()
            assert queue.stats.dropped_total == 0
            await anyio.to_thread.run_sync(server.start)
            assert await queue.flush(timeout=30)
    stats = queue.stats
    assert stats.dropped_total == 0
    assert stats.retries >= 1
    assert stats.balanced
    assert_all_completed(server, 1000)
