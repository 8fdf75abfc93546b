"""``UpsertQueue`` with an adaptive ``max_in_flight`` against the in-process server and its
latency and 429/503 faults: the limit grows on a healthy slow server, a storm brings it to 1
and no new batch starts meanwhile, it stays within its bounds, and the accounting identity and
the one-write-per-key rule hold throughout. Behaviour only, never a speed; asyncio and trio.
"""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import pytest
from starlette.applications import Starlette

from sgp_client import AdaptiveConcurrency, AsyncSGPClient, UpsertQueue
from sgp_client.testing import ServerControl, get_control
from tests._helpers import FAST_BACKOFF, wait_until, watching
from tests.queue.test_queue import (
    Recorder,
    assert_identity,
    check_one_write_per_key,
    sgp_client,
    span,
)

pytestmark = pytest.mark.anyio


class History(AdaptiveConcurrency):
    """An adaptive limit that remembers, for every finished request, whether it failed and
    the limit right after it."""

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self.answers: list[tuple[bool, int]] = []

    def record(self, latency: float, error: BaseException | None, in_flight: int) -> None:
        super().record(latency, error, in_flight)
        self.answers.append((error is not None, self.limit))


def make_queue(client: AsyncSGPClient, limiter: AdaptiveConcurrency) -> UpsertQueue:
    # Batches of 5: a few hundred spans make dozens of requests, so the limit has answers to
    # learn from.
    return UpsertQueue(
        client,
        max_in_flight=limiter,
        max_batch_size=5,
        flush_interval=0.005,
        backoff=FAST_BACKOFF,
        shutdown_timeout=5.0,
    )


def submit_spans(queue: UpsertQueue, count: int, prefix: str = "s") -> None:
    for i in range(count):
        queue.submit(span(f"{prefix}{i}", end=True))


async def test_grows_on_a_healthy_slow_server(
    client: AsyncSGPClient, control: ServerControl
) -> None:
    control.set_faults(latency=0.03)
    limiter = History(initial=2, maximum=16)
    queue = make_queue(client, limiter)
    async with watching(queue), queue:
        submit_spans(queue, 400)
        assert await queue.flush(timeout=20)
    assert queue.concurrency is limiter
    assert limiter.limit > 2
    assert control.stats()["max_concurrent"] > 2  # the server really saw more at once
    assert all(not failed for failed, _ in limiter.answers)
    # From 2 to at least 8 (16 with a perfectly flat latency; a loaded test machine adds
    # spikes, which rightly cost a little).
    assert max(limit for _, limit in limiter.answers) >= 8
    assert control.store.count() == 400
    assert queue.stats.dropped_total == 0
    assert_identity(queue.stats)


async def test_respects_its_bounds(client: AsyncSGPClient, control: ServerControl) -> None:
    control.set_faults(latency=0.02)
    limiter = History(initial=2, minimum=2, maximum=4)
    queue = make_queue(client, limiter)
    async with watching(queue), queue:
        submit_spans(queue, 300)
        assert await queue.flush(timeout=20)
        assert limiter.limit == 4
        # A storm takes it down to its minimum, not below.
        control.set_faults(status_code=503, status_every_n=1, retry_after=None)
        submit_spans(queue, 50, prefix="storm")
        await wait_until(lambda: sum(failed for failed, _ in limiter.answers) >= 10)
        assert limiter.limit == 2
        control.clear_faults()
        assert await queue.flush(timeout=20)
    assert control.stats()["max_concurrent"] == 4
    assert min(limit for _, limit in limiter.answers) == 2
    assert control.store.count() == 350
    assert_identity(queue.stats)


@pytest.mark.parametrize("status", [429, 503])
async def test_a_storm_shrinks_it_to_one_and_starts_no_new_batch(
    client: AsyncSGPClient, control: ServerControl, status: int
) -> None:
    control.set_faults(status_code=status, status_every_n=1, retry_after=None)
    limiter = History(initial=8)
    queue = make_queue(client, limiter)
    async with watching(queue), queue:
        submit_spans(queue, 10)  # two batches
        await wait_until(lambda: limiter.limit == 1)
        # Three answers: 8 -> 4 -> 2 -> 1.
        assert [limit for _, limit in limiter.answers[:3]] == [4, 2, 1]
        # While the storm lasts, the batches already out retry (at their backoff and the
        # server's Retry-After) but no new one joins them, however much is waiting.
        submit_spans(queue, 90, prefix="more")
        while sum(failed for failed, _ in limiter.answers) < 40:
            assert queue.stats.in_flight <= 10
            await anyio.lowlevel.checkpoint()
        assert limiter.limit == 1
        assert queue.stats.pending > 0  # the rest waits instead of piling onto the server
        control.clear_faults()
        assert await queue.flush(timeout=20)
    assert limiter.limit > 1  # the server answers again: it recovers
    assert control.store.count() == 100
    assert queue.stats.dropped_total == 0
    assert queue.stats.retries >= 40
    assert_identity(queue.stats)


async def test_keeps_one_write_per_key_in_flight(app: Starlette) -> None:
    control = get_control(app)
    recorder = Recorder(app)
    # Jittered latency makes later requests overtake earlier ones while the limit moves.
    control.set_faults(latency=0.005, latency_jitter=0.03, seed=11)
    keys = [f"k{i}" for i in range(60)]
    async with sgp_client(recorder) as client:
        queue = make_queue(client, History(initial=2))
        async with watching(queue), queue:
            for version in range(3):
                for i, key in enumerate(keys):
                    queue.submit(span(key, version=version))
                    if i % 10 == 0:
                        await anyio.sleep(0.002)
            for key in keys:
                queue.submit(span(key, end=True, version=9))
                await anyio.sleep(0.0005)
            assert await queue.flush(timeout=20)
    assert queue.stats.dropped_total == 0
    assert control.stats()["max_concurrent"] > 2
    check_one_write_per_key(recorder.writes)
    stored = {s["id"]: s for s in control.store.all_spans()}
    assert all(stored[k]["metadata"] == {"version": 9} for k in keys)
    assert_identity(queue.stats)


async def test_the_default_is_adaptive(client: AsyncSGPClient) -> None:
    async with UpsertQueue(client) as queue:
        assert isinstance(queue.concurrency, AdaptiveConcurrency)
        assert queue.concurrency.limit == 8
    async with UpsertQueue(client, max_in_flight=3) as fixed:
        assert fixed.concurrency.limit == 3
