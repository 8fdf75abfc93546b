"""The client's default transport (``H11Transport``: h11 on anyio), over real loopback only.

Two kinds of peers: the local SGP server in a subprocess (``ServerProcess``), for what the API
really does (round trips, keep-alive, errors, faults, a crash and restart); and a tiny raw TCP
server written here, for what that server never does (chunked, gzip and close-delimited
answers, ``Connection: close``, interim answers, malformed answers, a connection closed under
a request).
"""

from __future__ import annotations

import functools
import gzip
import shutil
import ssl
import subprocess
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
import httpx
import pytest
from anyio.streams.tls import TLSListener

from sgp_client import (
    APIConnectionError,
    APITimeoutError,
    AsyncSGPClient,
    InternalServerError,
    NotFoundError,
    RateLimitError,
    RequestTooLargeError,
    ResponseDecodingError,
)
from sgp_client._transport import MAX_HEAD, H11Transport
from sgp_client.testing import (
    DEFAULT_ACCOUNT_ID,
    DEFAULT_API_KEY,
    ServerProcess,
    asgi_transport,
    create_app,
)
from tests._helpers import FAST_BACKOFF, loopback_client, span_item

pytestmark = pytest.mark.anyio

KEY = "sk-wire-test-SECRET-0123456789"


#: This file's spans share one trace, so a search by trace finds exactly them.
span = functools.partial(span_item, trace_id="trace-wire")


def pool(client: AsyncSGPClient) -> H11Transport:
    assert client.transport is not None, "the client should use its own transport"
    return client.transport


def client_of(server: ServerProcess, **kwargs: Any) -> AsyncSGPClient:
    """No client retries by default: each test sees exactly the requests it makes."""
    settings: dict[str, Any] = {"max_retries": 0, **kwargs}
    return loopback_client(server, **settings)


# ------------------------------------------------------------- against the real local server


async def test_round_trip(server: ServerProcess) -> None:
    async with client_of(server) as sgp:
        items = [span(f"s{i}", input={"i": i}) for i in range(3)]
        stored = await sgp.spans.upsert_batch(items)
        assert [s.id for s in stored] == [i.id for i in items]
        assert (await sgp.spans.get(items[1].id)).input == {"i": 1}
        found = {s.id async for s in sgp.spans.search(trace_ids=["trace-wire"], page_size=2)}
        assert found == {i.id for i in items}
    assert server.count(trace_id="trace-wire") == 3


async def test_sequential_requests_share_one_connection(server: ServerProcess) -> None:
    async with client_of(server) as sgp:
        for i in range(5):
            await sgp.spans.upsert_batch([span(f"s{i}")])
        response = await sgp.send_once("POST", "/v5/spans/search", content=b"{}")
        assert pool(sgp).connections_opened == 1
        assert pool(sgp).idle_connections == 1
        # The httpcore-style extension still tells which connection answered.
        assert response.extensions["network_stream"].get_extra_info("client_addr")[0] == (
            "127.0.0.1"
        )
    assert server.stats()["requests"] == 6


async def test_concurrent_requests_are_bounded_by_max_connections(server: ServerProcess) -> None:
    server.set_faults(latency=0.3)
    async with client_of(server, max_connections=3) as sgp:
        started = anyio.current_time()
        async with anyio.create_task_group() as tg:
            for i in range(7):
                tg.start_soon(sgp.spans.upsert_batch, [span(f"s{i}")])
        elapsed = anyio.current_time() - started
        assert pool(sgp).connections_opened == 3
        assert pool(sgp).idle_connections == 3
    assert elapsed >= 0.85  # three waves of at most three requests
    stats = server.stats()
    assert stats["items_stored"] == 7
    assert stats["max_concurrent"] == 3


async def test_error_statuses_keep_detail_request_id_and_retry_after(
    server: ServerProcess,
) -> None:
    async with client_of(server) as sgp:
        server.set_faults(status_code=503, status_every_n=1, retry_after="7")
        with pytest.raises(InternalServerError) as unavailable:
            await sgp.spans.upsert_batch([span()])
        server.set_faults(status_code=429, status_every_n=1, retry_after="2")
        with pytest.raises(RateLimitError) as limited:
            await sgp.spans.upsert_batch([span()])
        server.clear_faults()
        with pytest.raises(NotFoundError) as missing:
            await sgp.spans.get("missing")
        # Error answers are read to their end: the connection stays in use.
        assert pool(sgp).connections_opened == 1
    assert (unavailable.value.status_code, unavailable.value.retry_after) == (503, 7.0)
    assert unavailable.value.detail == "Injected failure"
    assert (limited.value.status_code, limited.value.retry_after) == (429, 2.0)
    assert limited.value.detail == "Too many requests"
    assert missing.value.status_code == 404
    for error in (unavailable.value, limited.value, missing.value):
        assert error.request_id


async def test_hanging_server_times_out_then_a_new_connection_works(
    server: ServerProcess,
) -> None:
    async with client_of(server, timeout=0.4) as sgp:
        await sgp.spans.upsert_batch([span("before")])
        server.set_faults(hang=True)
        started = anyio.current_time()
        with pytest.raises(APITimeoutError, match="timed out"):
            await sgp.spans.upsert_batch([span("hung")])
        assert 0.4 <= anyio.current_time() - started < 5
        server.clear_faults()
        await sgp.spans.upsert_batch([span("after")])
        # The timed-out connection had a request in flight: it was closed, not reused.
        assert pool(sgp).connections_opened == 2


async def test_per_request_timeout_overrides_the_client_timeout(server: ServerProcess) -> None:
    server.set_faults(latency=1.0)
    async with client_of(server) as sgp:
        with pytest.raises(APITimeoutError):
            await sgp.send_once("POST", "/v5/spans/search", content=b"{}", timeout=0.2)


async def test_killed_server_is_a_connection_error_then_a_restart_works(
    server: ServerProcess,
) -> None:
    async with client_of(server) as sgp:
        await sgp.spans.upsert_batch([span("before")])
        await anyio.to_thread.run_sync(server.kill)
        with pytest.raises(APIConnectionError) as info:
            await sgp.spans.upsert_batch([span("down")])
        assert not isinstance(info.value, APITimeoutError)
        await anyio.to_thread.run_sync(server.start)
        await sgp.spans.upsert_batch([span("after")])
        assert pool(sgp).connections_opened == 2
    assert server.count() == 1  # an in-memory store: only what came after the restart


async def test_dropped_reused_connection_is_retried_once_for_put_only(
    server: ServerProcess,
) -> None:
    # Every second request is dropped before any answer: on a kept-alive connection that is
    # what a server's idle close looks like, so PUT goes again on a new connection.
    server.set_faults(drop_every_n=2)
    async with client_of(server) as sgp:
        await sgp.spans.upsert_batch([span("first")])
        await sgp.spans.upsert_batch([span("second")])
        assert server.stats()["requests"] == 3
        server.set_faults(drop_every_n=2)
        await sgp.spans.batch([span("third")])  # POST, not dropped
        with pytest.raises(APIConnectionError, match="without answering"):
            await sgp.spans.batch([span("fourth")])  # POST: not sent twice
        assert server.stats()["requests"] == 5
    assert server.count(trace_id="trace-wire") == 3


# --------------------------------------------------------------- against a raw TCP server

Script = Callable[[anyio.abc.ByteStream, int], Awaitable[bool]]


class RawServer:
    """Runs ``script(stream, request_number)`` for each request; it answers and says whether
    to keep the connection. Records which connection carried which request."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.port = 0
        self.connections = 0
        self.closed_connections = 0
        self.requests: list[tuple[int, bytes]] = []  # (connection number, request head)

    async def handle(self, stream: anyio.abc.ByteStream) -> None:
        self.connections += 1
        number = self.connections
        buffer = bytearray()
        try:
            async with stream:
                while (head := await read_request(stream, buffer)) is not None:
                    self.requests.append((number, head))
                    if not await self.script(stream, len(self.requests)):
                        return
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream):
            pass
        finally:
            self.closed_connections += 1

    def connection_of(self, request_number: int) -> int:
        return self.requests[request_number - 1][0]


async def read_request(stream: anyio.abc.ByteStream, buffer: bytearray) -> bytes | None:
    """The next request's head (its body read and dropped); None once the client closed."""
    while (end := buffer.find(b"\r\n\r\n")) < 0:
        try:
            buffer += await stream.receive()
        except anyio.EndOfStream:
            return None
    head = bytes(buffer[:end])
    del buffer[: end + 4]
    length = 0
    for line in head.lower().split(b"\r\n")[1:]:
        if line.startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    while len(buffer) < length:
        buffer += await stream.receive()
    del buffer[:length]
    return head


@asynccontextmanager
async def raw_server(
    script: Script, *, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[RawServer]:
    server = RawServer(script)
    listener: anyio.abc.Listener[Any] = await anyio.create_tcp_listener(
        local_host="127.0.0.1", local_port=0
    )
    server.port = listener.extra(anyio.abc.SocketAttribute.local_port)
    if ssl_context is not None:
        listener = TLSListener(listener, ssl_context, standard_compatible=False)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, server.handle)
        yield server
        tg.cancel_scope.cancel()


def answer(*parts: bytes, keep: bool = True) -> Script:
    """A script sending ``parts`` (separate sends) to every request."""

    async def script(stream: anyio.abc.ByteStream, number: int) -> bool:
        for part in parts:
            await stream.send(part)
        return keep

    return script


def http(
    body: bytes = b'{"ok": true}',
    *headers: bytes,
    status: bytes = b"200 OK",
    length: bool = True,
) -> bytes:
    lines = [b"HTTP/1.1 " + status, b"content-type: application/json", *headers]
    if length:
        lines.append(b"content-length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def raw_client(server: RawServer, *, scheme: str = "http", **kwargs: Any) -> AsyncSGPClient:
    return AsyncSGPClient(
        api_key=KEY,
        account_id="acct-wire",
        base_url=f"{scheme}://127.0.0.1:{server.port}/public",
        backoff=FAST_BACKOFF,
        max_retries=0,
        **kwargs,
    )


async def put(client: AsyncSGPClient, body: bytes = b"{}") -> httpx.Response:
    return await client.send_once("PUT", "/v5/spans/batch", content=body)


async def test_the_request_on_the_wire() -> None:
    async with raw_server(answer(http())) as server, raw_client(server) as sgp:
        response = await sgp.send_once(
            "POST", "/v5/spans/search", content=b'{"a": 1}', params={"limit": 2, "x": "a b"}
        )
        await sgp.send_once("GET", "/v5/spans/id%2F1")
    assert response.json() == {"ok": True}
    assert response.request.method == "POST"
    post, get = (head.split(b"\r\n") for _, head in server.requests)
    assert post[0] == b"POST /public/v5/spans/search?limit=2&x=a+b HTTP/1.1"
    assert get[0] == b"GET /public/v5/spans/id%2F1 HTTP/1.1"
    fields = {n.lower(): v for n, _, v in (line.partition(b": ") for line in post[1:])}
    assert fields[b"host"] == f"127.0.0.1:{server.port}".encode()
    assert fields[b"x-api-key"] == KEY.encode()
    assert fields[b"x-selected-account-id"] == b"acct-wire"
    assert fields[b"content-length"] == b"8"
    assert fields[b"accept-encoding"] == b"gzip, deflate"
    assert not any(line.lower().startswith(b"content-length") for line in get)


@pytest.mark.parametrize(
    "chunks",
    [
        [b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"],
        [b"B\r\nhello world\r\n0\r\nx-trailer: yes\r\nx-more: 1\r\n\r\n"],
        # Split everywhere: inside the size line, the data, the CRLFs and the last chunk.
        [b"5", b"\r", b"\nhel", b"lo\r", b"\n6\r\n wor", b"ld\r\n0", b"\r\n", b"\r\n"],
    ],
)
async def test_chunked_answer(chunks: list[bytes]) -> None:
    head = http(b"", b"transfer-encoding: chunked", length=False)
    async with raw_server(answer(head, *chunks)) as server, raw_client(server) as sgp:
        first = await put(sgp)
        second = await put(sgp)
        assert first.content == second.content == b"hello world"
        assert pool(sgp).connections_opened == 1  # chunked answers keep the connection
    assert server.connections == 1


@pytest.mark.parametrize(
    ("coding", "compress"),
    [
        (b"gzip", gzip.compress),
        (b"deflate", zlib.compress),
        (b"deflate", lambda data: zlib.compress(data, wbits=-zlib.MAX_WBITS)),  # raw deflate
    ],
)
async def test_compressed_answer_is_decoded(
    coding: bytes, compress: Callable[[bytes], bytes]
) -> None:
    body = b'{"items": [' + b",".join(b'{"n": %d}' % i for i in range(2000)) + b"]}"
    data = http(compress(body), b"content-encoding: " + coding)
    async with raw_server(answer(data)) as server, raw_client(server) as sgp:
        response = await put(sgp)
        assert response.content == body
        assert len(response.json()["items"]) == 2000
        assert "content-encoding" not in response.headers
        assert pool(sgp).idle_connections == 1


async def test_corrupt_gzip_is_a_connection_error() -> None:
    data = http(gzip.compress(b"x" * 1000)[:-12], b"content-encoding: gzip")
    async with raw_server(answer(data)) as server, raw_client(server) as sgp:
        with pytest.raises(ResponseDecodingError, match="could not decode"):
            await put(sgp)


async def test_close_delimited_answer() -> None:
    data = http(b'{"until": "close"}', length=False)
    async with raw_server(answer(data, keep=False)) as server, raw_client(server) as sgp:
        assert (await put(sgp)).json() == {"until": "close"}
        assert (await put(sgp)).json() == {"until": "close"}
        assert pool(sgp).connections_opened == 2
    assert server.connections == 2


async def test_connection_close_answer_is_not_reused() -> None:
    # The server keeps its side open: only the header says the connection is done.
    data = http(b"{}", b"Connection: close")
    async with raw_server(answer(data)) as server, raw_client(server) as sgp:
        await put(sgp)
        assert pool(sgp).idle_connections == 0
        await put(sgp)
        assert pool(sgp).connections_opened == 2
    assert [server.connection_of(1), server.connection_of(2)] == [1, 2]


async def test_http_1_0_answer_is_not_reused() -> None:
    data = http(b"{}").replace(b"HTTP/1.1", b"HTTP/1.0")
    async with raw_server(answer(data)) as server, raw_client(server) as sgp:
        await put(sgp)
        await put(sgp)
        assert pool(sgp).connections_opened == 2


async def test_interim_answers_are_skipped() -> None:
    interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n"
    async with raw_server(answer(interim, http(b'{"n": 1}'))) as server, raw_client(server) as sgp:
        response = await put(sgp)
        assert response.status_code == 200
        assert response.json() == {"n": 1}
        assert "link" not in response.headers
        await put(sgp)
        assert pool(sgp).connections_opened == 1


async def test_head_and_204_have_no_body() -> None:
    async def script(stream: anyio.abc.ByteStream, number: int) -> bool:
        # A HEAD answer announces a length it does not send; a 204 has nothing after its head.
        await stream.send(http(b"", b"content-length: 50", length=False) if number == 1 else
                          http(b"", status=b"204 No Content", length=False))  # fmt: skip
        return True

    async with raw_server(script) as server, raw_client(server) as sgp:
        head = await sgp.send_once("HEAD", "/v5/spans/x")
        empty = await sgp.send_once("DELETE", "/v5/spans/x")
        assert head.content == empty.content == b""
        assert empty.status_code == 204
        assert pool(sgp).connections_opened == 1


async def test_idle_connection_closed_by_the_server_is_not_used() -> None:
    closed = anyio.Event()

    async def script(stream: anyio.abc.ByteStream, number: int) -> bool:
        await stream.send(http())
        if number == 1:
            closed.set()
            return False  # answer, then close the kept-alive connection while it is idle
        return True

    async with raw_server(script) as server, raw_client(server) as sgp:
        await put(sgp)
        await closed.wait()
        await anyio.sleep(0.05)  # for the FIN to arrive
        await sgp.send_once("POST", "/v5/spans", content=b"{}")
        assert pool(sgp).connections_opened == 2
    # Seen closed before anything was sent on it: not even a POST was at risk.
    assert [server.connection_of(1), server.connection_of(2)] == [1, 2]


async def test_connections_idle_too_long_are_not_reused() -> None:
    async with raw_server(answer(http())) as server, raw_client(server) as sgp:
        pool(sgp).keepalive_expiry = 0.05
        await put(sgp)
        await put(sgp)
        await anyio.sleep(0.1)
        await put(sgp)
        assert pool(sgp).connections_opened == 2
    assert [server.connection_of(n) for n in (1, 2, 3)] == [1, 1, 2]


def close_at_second_request() -> Script:
    async def script(stream: anyio.abc.ByteStream, number: int) -> bool:
        if number == 2:
            return False  # closed as the request arrives: the race an idle check cannot see
        await stream.send(http())
        return True

    return script


async def test_connection_closed_under_a_put_is_retried_once() -> None:
    async with raw_server(close_at_second_request()) as server, raw_client(server) as sgp:
        await put(sgp)
        assert (await put(sgp)).json() == {"ok": True}
        assert pool(sgp).connections_opened == 2
    assert [server.connection_of(n) for n in (1, 2, 3)] == [1, 1, 2]


async def test_connection_closed_under_a_post_is_not_retried() -> None:
    async with raw_server(close_at_second_request()) as server, raw_client(server) as sgp:
        await sgp.send_once("POST", "/v5/spans", content=b"{}")
        with pytest.raises(APIConnectionError, match="without answering") as info:
            await sgp.send_once("POST", "/v5/spans", content=b"{}")
        assert not isinstance(info.value, APITimeoutError)
        await sgp.send_once("POST", "/v5/spans", content=b"{}")
    assert [server.connection_of(n) for n in (1, 2, 3)] == [1, 1, 2]


async def test_a_fresh_connection_dropped_is_not_retried() -> None:
    async with raw_server(answer(keep=False)) as server, raw_client(server) as sgp:
        with pytest.raises(APIConnectionError, match="without answering"):
            await put(sgp)
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"HTTX/1.1 200 OK\r\n\r\n", id="bad-version"),
        pytest.param(b"HTTP/1.1 20 OK\r\ncontent-length: 0\r\n\r\n", id="bad-status"),
        pytest.param(b"HTTP/1.1 099 Odd\r\n\r\n", id="status-below-100"),
        pytest.param(b"hello\r\n\r\n", id="garbage"),
        pytest.param(http(b"{}", b"no colon here"), id="header-without-colon"),
        pytest.param(http(b"{}", b"x-bad : 1"), id="space-before-colon"),
        pytest.param(http(b"{}", b"content-length: 5"), id="conflicting-lengths"),
        pytest.param(http(b"{}", b"content-length: -2", length=False), id="negative-length"),
        pytest.param(
            http(b"zz\r\nhello\r\n0\r\n\r\n", b"transfer-encoding: chunked", length=False),
            id="bad-chunk-size",
        ),
        pytest.param(
            http(b"+5\r\nhello\r\n0\r\n\r\n", b"transfer-encoding: chunked", length=False),
            id="signed-chunk-size",
        ),
        pytest.param(
            http(b"5\r\nhelloXX0\r\n\r\n", b"transfer-encoding: chunked", length=False),
            id="chunk-without-crlf",
        ),
        pytest.param(
            http(b"", b"transfer-encoding: chunked", b"x: " + b"a" * 5000, length=False)
            + b"1" * 5000
            + b"\r\n",
            id="overlong-chunk-size",
        ),
        pytest.param(http(b"{}", *[b"x-pad: " + b"a" * 1000] * 70), id="oversized-head"),
        pytest.param(b"HTTP/1.1 200 OK\r\n" + b"x-pad: " + b"a" * (MAX_HEAD + 10), id="no-end"),
        pytest.param(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", id="upgrade"),
    ],
)
async def test_malformed_answers_are_connection_errors(data: bytes) -> None:
    async def script(stream: anyio.abc.ByteStream, number: int) -> bool:
        await stream.send(data)
        await anyio.sleep_forever()  # an error must come from the client, not from a close
        return False

    async with raw_server(script) as server, raw_client(server, timeout=10) as sgp:
        with pytest.raises(APIConnectionError, match="ProtocolError") as info:
            with anyio.fail_after(5):
                await put(sgp)
        assert not isinstance(info.value, APITimeoutError)
        assert pool(sgp).idle_connections == 0


async def test_truncated_body_is_a_connection_error() -> None:
    data = http(b"{}", length=False).replace(b"\r\n\r\n", b"\r\ncontent-length: 10\r\n\r\n")
    async with raw_server(answer(data, keep=False)) as server, raw_client(server) as sgp:
        with pytest.raises(APIConnectionError, match="complete message body"):
            await put(sgp)


async def test_error_messages_never_hold_the_key() -> None:
    # A broken server echoing what it got into its status line.
    data = b"HTTP/1.1 2OO " + KEY.encode() + b"\r\n\r\n"
    async with raw_server(answer(data)) as server, raw_client(server) as sgp:
        with pytest.raises(APIConnectionError) as info:
            await put(sgp)
    seen: BaseException | None = info.value
    while seen is not None:
        assert KEY not in str(seen)
        assert KEY not in repr(seen)
        seen = seen.__cause__ or seen.__context__


async def test_cancelled_mid_answer_discards_the_connection() -> None:
    async def script(stream: anyio.abc.ByteStream, number: int) -> bool:
        if number == 1:
            await stream.send(http(b'{"a": 1234567890}')[:-5])  # then never the rest
            await stream.receive()  # ends when the client closes the connection
        await stream.send(http())
        return True

    async with raw_server(script) as server, raw_client(server) as sgp:
        with anyio.move_on_after(0.2) as scope:
            await put(sgp)
        assert scope.cancelled_caught
        assert pool(sgp).idle_connections == 0
        assert (await put(sgp)).json() == {"ok": True}
        assert pool(sgp).connections_opened == 2
        await anyio.sleep(0.05)
        assert server.closed_connections == 1  # the server saw the first one go


async def test_a_large_body_both_ways() -> None:
    big = b'{"pad": "' + b"x" * 3_000_000 + b'"}'

    async def script(stream: anyio.abc.ByteStream, number: int) -> bool:
        await stream.send(http(big))
        return True

    async with raw_server(script) as server, raw_client(server) as sgp:
        for _ in range(2):
            assert (await put(sgp, big)).content == big
        assert pool(sgp).connections_opened == 1


async def test_early_answer_while_the_body_is_still_sent(anyio_backend: str) -> None:
    # A gateway refusing a large body answers at once and closes, unread bytes and all.
    async def early(stream: anyio.abc.ByteStream) -> None:
        async with stream:
            await stream.receive()
            await stream.send(http(b'{"detail": "too large"}', status=b"413 Too Large"))

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, early)
        async with AsyncSGPClient(
            api_key=KEY, account_id="a", base_url=f"http://127.0.0.1:{port}", max_retries=0
        ) as sgp:
            with pytest.raises((RequestTooLargeError, APIConnectionError)) as info:
                await put(sgp, b"x" * 20_000_000)
        tg.cancel_scope.cancel()
    # asyncio closes the socket at the failed write, losing the answer (httpx there too).
    if anyio_backend == "trio":
        assert isinstance(info.value, RequestTooLargeError)
        assert info.value.detail == "too large"


async def test_aclose_closes_pooled_connections_and_is_idempotent() -> None:
    async with raw_server(answer(http())) as server:
        sgp = raw_client(server)
        await put(sgp)
        wire = pool(sgp)
        await sgp.aclose()
        await sgp.aclose()
        await wire.aclose()
        assert wire.idle_connections == 0
        await anyio.sleep(0.05)
        assert server.closed_connections == 1


# ------------------------------------------------------------------------------------ TLS


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl command to make a certificate")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def server_context(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    return context


def test_tls_verification_is_on() -> None:
    context = pool(AsyncSGPClient(api_key=KEY, account_id="a")).ssl_context
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname


async def test_https_verifies_like_httpx(
    certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    context = server_context(certificate)
    async with raw_server(answer(http()), ssl_context=context) as server:
        async with raw_client(server, scheme="https") as untrusting:
            with pytest.raises(APIConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
                await put(untrusting)
        # httpx's SSL_CERT_FILE convention, read when the first connection opens.
        monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
        async with raw_client(server, scheme="https") as trusting:
            for _ in range(3):
                assert (await put(trusting)).json() == {"ok": True}
            assert pool(trusting).connections_opened == 1
            response = await put(trusting)
            assert response.extensions["network_stream"].get_extra_info("ssl_object")


# -------------------------------------------------------------------- when httpx is kept


async def test_asgi_transport_keeps_httpx() -> None:
    async with AsyncSGPClient(
        api_key=DEFAULT_API_KEY,
        account_id=DEFAULT_ACCOUNT_ID,
        base_url="http://127.0.0.1/public",
        transport=asgi_transport(create_app()),
    ) as sgp:
        assert sgp.transport is None
        [stored] = await sgp.spans.upsert_batch([span("asgi")])
        assert (await sgp.spans.get(stored.id)).name == "asgi"


async def test_mock_transport_and_http_client_keep_httpx() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"id": "x"})

    transport = httpx.MockTransport(handler)
    async with httpx.AsyncClient(transport=transport) as http_client:
        for settings in ({"transport": transport}, {"http_client": http_client}):
            async with AsyncSGPClient(api_key=KEY, account_id="a", **settings) as sgp:
                assert sgp.transport is None
                assert (await sgp.send_once("GET", "/v5/spans/x")).json() == {"id": "x"}


@pytest.mark.parametrize(
    ("environment", "wire"),
    [
        ({}, True),
        ({"HTTP_PROXY": "http://proxy.invalid:3128"}, False),
        ({"ALL_PROXY": "http://proxy.invalid:3128"}, False),
        ({"HTTPS_PROXY": "http://proxy.invalid:3128"}, True),  # the base URL is plain http
        # A proxy variable for the scheme: httpx's transport, and httpx applies NO_PROXY.
        ({"HTTP_PROXY": "http://proxy.invalid:3128", "NO_PROXY": "127.0.0.1"}, False),
        ({"HTTP_PROXY": "http://proxy.invalid:3128", "NO_PROXY": "*"}, False),
        ({"HTTP_PROXY": "http://proxy.invalid:3128", "NO_PROXY": "example.com"}, False),
    ],
)
def test_a_proxy_in_the_environment_keeps_httpx(
    environment: dict[str, str], wire: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    sgp = AsyncSGPClient(api_key=KEY, account_id="a", base_url="http://127.0.0.1:9/public")
    assert (sgp.transport is not None) is wire


def test_https_proxy_applies_to_https_base_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert AsyncSGPClient(api_key=KEY, account_id="a").transport is None
