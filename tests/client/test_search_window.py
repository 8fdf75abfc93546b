"""``search(from_ts=..., to_ts=...)`` sends the time window in the query string (issue 14).

That is where the API reads it, and where the official client (scale-gp-beta) sends it; in
the body it was ignored by a real server.
"""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import orjson
import pytest

from sgp_client import AsyncSGPClient

pytestmark = pytest.mark.anyio


async def test_the_time_window_goes_in_the_query_string() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"items": [], "has_more": False})

    since = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    async with AsyncSGPClient(
        api_key="sk-search-window-0123456789",
        account_id="a",
        transport=httpx.MockTransport(handler),
    ) as client:
        found = [
            span
            async for span in client.spans.search(
                trace_ids=["t"], from_ts=since, to_ts="2025-01-03T00:00:00Z"
            )
        ]
    assert found == []
    [request] = seen
    assert request.url.params["from_ts"] == "2025-01-02T03:04:05+00:00"
    assert request.url.params["to_ts"] == "2025-01-03T00:00:00Z"
    body = orjson.loads(request.content)
    assert body == {"trace_ids": ["t"]}
