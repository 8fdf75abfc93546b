"""``AsyncSGPClient`` over real loopback HTTP, the local server in a subprocess (``ServerProcess``).

What only a socket shows: keep-alive, per-request timeouts, refused connections, dropped
connections, the environment-only configuration a new user relies on, the production
requests' own debug logs.
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import anyio
import pytest

from sgp_client import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AsyncSGPClient,
    ConflictError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RequestTooLargeError,
)
from sgp_client.testing import ServerProcess
from tests._helpers import FAST_BACKOFF, START, span_item
from tests._helpers import loopback_client as client_of

#: This file's spans share one trace, so a search by trace finds exactly them.
span = functools.partial(span_item, trace_id="trace-http")


@pytest.fixture
async def http_client(server: ServerProcess) -> AsyncIterator[AsyncSGPClient]:
    async with client_of(server) as sgp:
        yield sgp


@pytest.mark.anyio
async def test_round_trip(http_client: AsyncSGPClient, server: ServerProcess) -> None:
    root = span("root", input={"q": "hello"})
    child = span("child", parent_id=root.id, end_timestamp=START + timedelta(seconds=1),
                 status="SUCCESS", output={"a": "hi"})  # fmt: skip
    stored = await http_client.spans.upsert_batch([root, child])
    assert [s.id for s in stored] == [root.id, child.id]
    fetched = await http_client.spans.get(child.id)
    assert fetched.completed
    assert fetched.output == {"a": "hi"}
    created = await http_client.spans.create(span("created"))
    [inserted] = await http_client.spans.batch([span("inserted")])
    found = {s.id async for s in http_client.spans.search(trace_ids=["trace-http"], page_size=2)}
    assert found == {root.id, child.id, created.id, inserted.id}
    assert server.count(trace_id="trace-http") == 4


@pytest.mark.anyio
async def test_keep_alive_reuses_one_connection(http_client: AsyncSGPClient) -> None:
    local_addresses = set()
    for _ in range(5):
        response = await http_client.send_once("POST", "/v5/spans/search", content=b"{}")
        stream = response.extensions["network_stream"]
        local_addresses.add(stream.get_extra_info("client_addr"))
    assert len(local_addresses) == 1


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("faults", "cls", "status"),
    [
        ({"max_body_bytes": 100}, RequestTooLargeError, 413),
        ({"status_code": 429, "status_every_n": 1, "retry_after": "0"}, RateLimitError, 429),
        ({"status_code": 503, "status_every_n": 1, "retry_after": "0"}, InternalServerError, 503),
    ],
)
async def test_error_statuses(
    server: ServerProcess,
    faults: dict[str, Any],
    cls: type[APIStatusError],
    status: int,
) -> None:
    server.set_faults(**faults)
    async with client_of(server, max_retries=1) as sgp:
        with pytest.raises(cls) as info:
            await sgp.spans.upsert_batch([span(input={"pad": "x" * 200})])
    assert info.value.status_code == status
    assert info.value.request_id
    expected_requests = 2 if status in (429, 503) else 1
    assert server.stats()["requests"] == expected_requests


@pytest.mark.anyio
async def test_404_and_403(server: ServerProcess, http_client: AsyncSGPClient) -> None:
    with pytest.raises(NotFoundError):
        await http_client.spans.get("missing")
    async with client_of(server, api_key="sk-not-a-key-1234567") as wrong:
        with pytest.raises(PermissionDeniedError):
            await wrong.spans.get("missing")
    assert server.stats()["requests"] == 2


@pytest.mark.anyio
async def test_409_is_sent_exactly_once(server: ServerProcess) -> None:
    async with client_of(server, max_retries=5) as sgp:
        with pytest.raises(ConflictError):
            await sgp.spans.upsert_batch(
                [span("a", id="a", parent_id="b"), span("b", id="b", parent_id="a")]
            )
    assert server.stats()["requests"] == 1


@pytest.mark.anyio
async def test_503_every_second_request_with_retry_after(server: ServerProcess) -> None:
    server.set_faults(status_code=503, status_every_n=2, retry_after="1")
    async with client_of(server) as sgp:
        await sgp.spans.upsert_batch([span("first")])  # request 1 passes
        started = anyio.current_time()
        await sgp.spans.upsert_batch([span("second")])  # request 2: 503, Retry-After: 1
        waited = anyio.current_time() - started
    assert waited >= 1.0
    stats = server.stats()
    assert stats["requests"] == 3
    assert stats["items_stored"] == 2


@pytest.mark.anyio
async def test_dropped_connections_become_connection_errors(server: ServerProcess) -> None:
    server.set_faults(drop_every_n=1)
    async with client_of(server, max_retries=2) as sgp:
        with pytest.raises(APIConnectionError) as info:
            await sgp.spans.upsert_batch([span()])
    assert not isinstance(info.value, APITimeoutError)
    assert server.stats()["requests"] == 3


@pytest.mark.anyio
async def test_connections_dropped_before_the_body_is_read(server: ServerProcess) -> None:
    # The server aborts as soon as the request starts, often while the body is still being
    # written: the request-body iterator is then abandoned half-way. It must need no cleanup
    # (an unfinished async generator warns on trio, and warnings are errors here).
    server.set_faults(outage_seconds=60, outage_mode="drop")
    # Far more than the socket buffers hold, so the write is still going when the reset comes.
    batch = [span(input={"pad": "x" * 8_000_000})]
    failures = 0
    async with client_of(server, max_retries=0) as sgp:
        for _ in range(3):
            # Not pytest.raises: its traceback would keep the abandoned iterator alive.
            try:
                await sgp.spans.upsert_batch(batch)
            except APIConnectionError:
                failures += 1
            gc.collect()
            await anyio.lowlevel.checkpoint()
    assert failures == 3
    assert server.stats()["faults"]["outage"] == 3


@pytest.mark.anyio
async def test_per_request_timeout_is_retried(server: ServerProcess) -> None:
    server.set_faults(latency=2.0)
    async with client_of(server, timeout=0.2, max_retries=1) as sgp:
        with pytest.raises(APITimeoutError, match="timed out"):
            await sgp.spans.get("x")
    assert server.stats()["requests"] == 2


@pytest.mark.anyio
async def test_refused_connection() -> None:
    with socket.socket() as sock:  # a port nobody listens on once this socket is closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with AsyncSGPClient(
        api_key="sk-x-1234567890",
        account_id="a",
        base_url=f"http://127.0.0.1:{port}/public",
        backoff=FAST_BACKOFF,
        max_retries=1,
    ) as sgp:
        with pytest.raises(APIConnectionError, match="ConnectError"):
            await sgp.spans.get("x")


@pytest.mark.anyio
async def test_configured_from_the_environment(
    server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SGP_API_KEY", server.api_key)
    monkeypatch.setenv("SGP_ACCOUNT_ID", server.account_id)
    monkeypatch.setenv("SGP_CLIENT_BASE_URL", server.base_url)
    async with AsyncSGPClient() as sgp:
        item = span("from-env")
        await sgp.spans.upsert_batch([item])
        assert (await sgp.spans.get(item.id)).name == "from-env"


@pytest.mark.anyio
async def test_refused_key_absent_from_debug_logs(
    server: ServerProcess, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "sk-refused-over-http-SECRET-77"
    caplog.set_level(logging.DEBUG)
    async with client_of(server, api_key=secret) as sgp:
        with pytest.raises(PermissionDeniedError) as info:
            await sgp.spans.upsert_batch([span()])
        server.set_faults(status_code=503, status_every_n=1, retry_after="0")
        with pytest.raises(InternalServerError) as retried:
            await sgp.spans.get("x")
    # The production requests' own lines really were captured (the test server's admin client
    # logs through httpx and httpcore too, so those prove nothing): httpx's request lines
    # and the client's retry line name the API path; the transport logs its connections.
    loggers = {r.name for r in caplog.records if "/v5/spans" in r.getMessage()}
    assert {"httpx", "sgp_client"} <= loggers, loggers
    assert any(r.name == "sgp_client.transport" for r in caplog.records)
    for text in (caplog.text, str(info.value), repr(info.value), str(retried.value), repr(sgp)):
        assert secret not in text


def test_new_user_script(server: ServerProcess) -> None:
    """Five lines, configured by the environment only, in a fresh interpreter."""
    script = textwrap.dedent(
        """
        import anyio, datetime, sgp_client
        async def main():
            async with sgp_client.AsyncSGPClient() as client:
                now = datetime.datetime.now(datetime.timezone.utc)
                items = [sgp_client.SpanItem(name=f"hello-{i}", trace_id="new-user",
                                             start_timestamp=now) for i in range(3)]
                await client.spans.upsert_batch(items)
                print(sorted([s.name async for s in client.spans.search(trace_ids=["new-user"])]))
        anyio.run(main)
        """
    )
    env = {
        **os.environ,
        "SGP_API_KEY": server.api_key,
        "SGP_ACCOUNT_ID": server.account_id,
        "SGP_CLIENT_BASE_URL": server.base_url,
        "PYTHONWARNINGS": "error",
    }
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['hello-0', 'hello-1', 'hello-2']"
    assert server.count(trace_id="new-user") == 3
