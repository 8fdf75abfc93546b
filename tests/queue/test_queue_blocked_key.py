"""A key waiting behind its own write in flight must not hold back keys that nothing blocks.

The server here is written for the test (an ``httpx.MockTransport``): it holds every request
that carries span ``slow`` until the test lets it go, and answers the others at once.
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
