"""Waiting for a slot or for a key's write in flight: what it must not cost the other items.

A key waiting behind its own write in flight must not hold back keys that nothing blocks,
and the time an item waits for a free slot counts against its retry deadline. The servers
here are written for the tests (``httpx.MockTransport``): they hold the requests that carry
one span, and answer the others.
"""

from __future__ import annotations

import json

import anyio
import httpx
import pytest

from sgp_client import AsyncSGPClient, UpsertQueue
from tests._helpers import END, FAST_BACKOFF, span_item

pytestmark = pytest.mark.anyio


async def test_a_new_key_is_sent_while_another_key_waits_on_its_write_in_flight() -> None:
    release = anyio.Event()
    slow_seen = anyio.Event()
    other_seen = anyio.Event()
    sent: list[list[str]] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        ids = [item["id"] for item in json.loads(request.content)["items"]]
        sent.append(ids)
        if "slow" in ids:
            slow_seen.set()
            await release.wait()
        if "other" in ids:
            other_seen.set()
        return httpx.Response(200, json={"items": [], "object": "list"})

    async with (
        AsyncSGPClient(
            api_key="test-key",
            account_id="test-account",
            base_url="http://127.0.0.1/public",
            transport=httpx.MockTransport(handler),
            backoff=FAST_BACKOFF,
        ) as client,
        UpsertQueue(client, flush_interval=0.05, max_in_flight=4) as queue,
    ):
        queue.submit(span_item(id="slow"))
        with anyio.fail_after(5):
            await slow_seen.wait()  # the start of "slow" is in flight, and stays there
        queue.submit(span_item(id="slow", end_timestamp=END))  # waits on its own key
        await anyio.sleep(0.2)  # the dispatcher finds only that blocked key, and waits
        queue.submit(span_item(id="other"))
        # Sent within a few flush intervals, not when "slow"'s request is answered.
        with anyio.fail_after(2):
            await other_seen.wait()
        assert not release.is_set()
        release.set()
        assert await queue.flush(timeout=5)
        stats = queue.stats
    assert stats.delivered == 3
    assert stats.balanced
    assert sent[0] == ["slow"]
    assert ["other"] in sent
    assert sent[-1] == ["slow"]  # the end of "slow", once its start was answered


async def test_the_retry_deadline_counts_from_when_an_item_was_queued() -> None:
    # One slot, taken by a request the server holds for 1 s; meanwhile another item waits
    # for the slot. Its retry deadline (0.3 s) has passed by the time it is sent: it gets
    # one try, not another 0.3 s of retries on top of the second it already waited.
    tries: dict[str, int] = {}
    held_seen = anyio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        ids = [item["id"] for item in json.loads(request.content)["items"]]
        for span_id in ids:
            tries[span_id] = tries.get(span_id, 0) + 1
        if "held" in ids:
            held_seen.set()
            await anyio.sleep(1.0)
            return httpx.Response(200, json={"items": [], "object": "list"})
        return httpx.Response(503, json={"detail": "busy"})

    async with (
        AsyncSGPClient(
            api_key="test-key",
            account_id="test-account",
            base_url="http://127.0.0.1/public",
            transport=httpx.MockTransport(handler),
            backoff=FAST_BACKOFF,
        ) as client,
        UpsertQueue(client, flush_interval=0.01, max_in_flight=1, retry_deadline=0.3) as queue,
    ):
        queue.submit(span_item(id="held"))
        with anyio.fail_after(5):
            await held_seen.wait()
        queue.submit(span_item(id="late"))
        assert await queue.flush(timeout=5)
        stats = queue.stats
    assert tries == {"held": 1, "late": 1}
    assert stats.delivered == 1
    assert stats.dropped == {"retries_exhausted": 1}
    assert stats.balanced
