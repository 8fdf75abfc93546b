"""Defects found by playing a hostile or broken server (issue 13), each against one, over TCP.

Every test here failed before the h11 transport and ``ResponseLimits``: the old pool
buffered whatever it was sent, inflated bombs whole, let foreign exceptions out, leaked the
key through echoed headers and followed a cursor that never moves. The TLS ones are in
``test_hostile_tls.py``, the queue's consequences in ``tests/queue/test_queue_hostile.py``.
"""

from __future__ import annotations

import gzip
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import orjson
import pytest

from sgp_client import (
    APIError,
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    ClientClosedError,
    ConfigurationError,
    InternalServerError,
    ResponseDecodingError,
    ResponseLimits,
    ResponseTooLargeError,
    SGPError,
)

from .hostile import KEY, HostileServer, Peer, client_for, http, replies

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024
SMALL = ResponseLimits(max_body_bytes=MiB, max_decoded_bytes=MiB)


def everything_said(exc: BaseException) -> str:
    parts = []
    seen: BaseException | None = exc
    while seen is not None:
        parts += [str(seen), repr(seen), repr(getattr(seen, "args", ()))]
        seen = seen.__cause__ or seen.__context__
    return "\n".join(parts)


async def put(server: HostileServer, **settings: Any) -> Any:
    async with client_for(server, **settings) as sgp:
        return await sgp.send_once("PUT", "/v5/spans/batch", content=b"{}")


@pytest.fixture
def peak_memory() -> Iterator[Callable[[], int]]:
    """The peak of Python allocations (this process, server threads included) since start."""
    tracemalloc.start()
    try:
        yield lambda: tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# ---------------------------------------------------------------- no cap on an answer body


def endless(head: bytes, piece: bytes) -> Callable[[Peer], None]:
    """Answer with ``head`` then ``piece`` forever (until the client goes away)."""

    def script(peer: Peer) -> None:
        peer.read_request()
        peer.send(head)
        while True:
            peer.send(piece)

    return script


ZEROS = b"\0" * 65536


@pytest.mark.parametrize(
    "script",
    [
        pytest.param(endless(http(b"", b"content-length: 10000000000", length=False), ZEROS),
                     id="content-length-10GB"),
        pytest.param(endless(http(b"", b"transfer-encoding: chunked", length=False),
                             b"10000\r\n" + ZEROS + b"\r\n"), id="endless-chunked"),
        pytest.param(endless(http(b"", length=False), ZEROS), id="close-framed-stream"),
    ],
)  # fmt: skip
async def test_an_endless_body_stops_at_the_limit(
    script: Callable[[Peer], None], peak_memory: Callable[[], int]
) -> None:
    with HostileServer(script) as server:
        async with client_for(server, limits=SMALL) as sgp:
            with pytest.raises(ResponseTooLargeError, match="over 1048576 bytes") as info:
                await sgp.send_once("PUT", "/v5/spans/batch", content=b"{}")
            assert sgp.transport is not None
            assert sgp.transport.idle_connections == 0
        # Closed, not drained: the server's endless send fails.
        assert await anyio.to_thread.run_sync(server.closed[0].wait, 10)
    assert info.value.limit == MiB
    assert isinstance(info.value, SGPError)
    # Streamed and counted: never much more than the limit held (it was 1.5 GiB in 6 s).
    assert peak_memory() < 8 * MiB


# ------------------------------------------------------------------ no cap on a decoded body


def compressed_zeros(size: int, wbits: int) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, wbits)
    chunk = b"\0" * MiB
    return b"".join(packer.compress(chunk) for _ in range(size // MiB)) + packer.flush()


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    """64 MiB of zeros, compressed: ``gzip, gzip`` is a few KB on the wire."""
    once = compressed_zeros(64 * MiB, 16 + zlib.MAX_WBITS)
    return {
        "gzip": once,
        "deflate": compressed_zeros(64 * MiB, zlib.MAX_WBITS),
        "gzip, gzip": gzip.compress(once),
    }


@pytest.mark.parametrize("coding", ["gzip", "deflate", "gzip, gzip"])
async def test_a_compression_bomb_stops_at_the_decoded_limit(
    coding: str, bombs: dict[str, bytes], peak_memory: Callable[[], int]
) -> None:
    body = bombs[coding]
    assert len(body) < MiB  # under the wire limit: only the decoded limit can stop it
    with HostileServer(replies(http(body, b"content-encoding: " + coding.encode()))) as server:
        with pytest.raises(ResponseTooLargeError, match="decoded body is over"):
            await put(server, limits=SMALL)
        assert await anyio.to_thread.run_sync(server.closed[0].wait, 10)
    # Decoded in bounded steps (it grew the process by 2 GiB and froze the loop for 4-6 s).
    assert peak_memory() < 8 * MiB


async def test_a_decoded_body_within_the_limit_is_read_whole() -> None:
    body = orjson.dumps({"items": ["x" * 100] * 10_000})
    answer = http(gzip.compress(gzip.compress(body)), b"content-encoding: gzip, gzip")
    with HostileServer(replies(answer)) as server:
        response = await put(server, limits=ResponseLimits(max_decoded_bytes=len(body)))
    assert response.content == body
    assert "content-encoding" not in response.headers


# --------------------------------------------------------------- an empty body "compressed"


async def test_an_empty_gzip_body_is_an_empty_body() -> None:
    answers = [
        http(b"", b"content-encoding: gzip"),
        http(b"", b"content-encoding: gzip", status=b"401 Unauthorized"),
    ]
    with HostileServer(replies(*answers)) as server:
        async with client_for(server, max_retries=3) as sgp:
            ok = await sgp.send_once("PUT", "/v5/spans/batch", content=b"{}")
            with pytest.raises(AuthenticationError):
                await sgp.request("PUT", "/v5/spans/batch", content=b"{}")
    assert ok.status_code == 200
    assert ok.content == b""
    # Neither was taken for a broken connection: not resent (a 200 went 5-6 times, 401 too).
    assert len(server.requests) == 2


# ---------------------------------------------------------- exceptions from outside the tree


async def test_an_error_detail_nested_600_deep_is_a_clean_status_error() -> None:
    deep = b'{"detail": ' + b"[" * 600 + b"1" + b"]" * 600 + b"}"
    with (
        HostileServer(replies(http(deep, status=b"400 Bad Request"))) as server,
        pytest.raises(BadRequestError) as info,
    ):  # was a RecursionError
        await put(server)
    assert info.value.status_code == 400
    assert len(str(info.value)) < 5000


async def test_retry_after_in_an_absurd_year_is_ignored_and_the_503_retried() -> None:
    absurd = http(b"{}", b"retry-after: Wed, 21 Oct 99999 07:28:00 GMT", status=b"503 Busy")
    with HostileServer(replies(absurd, http())) as server:
        async with client_for(server, max_retries=1) as sgp:
            assert await sgp.request("PUT", "/v5/spans/batch", content=b"{}") == {"ok": True}
    assert len(server.requests) == 2  # an OverflowError escaped before the retry


async def test_an_unknown_content_coding_is_an_sgp_error() -> None:
    weird = http(gzip.compress(b"{}"), b"content-encoding: gzip, x-unknown")
    with (
        HostileServer(replies(weird)) as server,
        pytest.raises(ResponseDecodingError, match="x-unknown") as info,
    ):  # was httpx's
        await put(server)
    assert isinstance(info.value, SGPError)


async def test_a_503_with_an_unknown_coding_is_still_a_503_and_retried() -> None:
    weird = http(b"\x00\x01", b"content-encoding: gzip, x-unknown", status=b"503 Busy")
    # Its body unread, the first connection is closed: the retry comes on a second one.
    with HostileServer(replies(weird), replies(http())) as server:
        async with client_for(server, max_retries=1) as sgp:
            assert await sgp.request("PUT", "/v5/spans/batch", content=b"{}") == {"ok": True}
    assert [number for number, _, _ in server.requests] == [1, 2]
    with (
        HostileServer(replies(weird)) as server,
        pytest.raises(InternalServerError, match="body not read"),
    ):
        await put(server)


# ----------------------------------------------------------------- the key echoed by a server


async def test_a_key_echoed_in_x_request_id_never_shows() -> None:
    echo = http(b'{"detail": "no"}', b"x-request-id: rid-" + KEY.encode(), status=b"403 No")
    with HostileServer(replies(echo)) as server, pytest.raises(APIStatusError) as info:
        await put(server)
    assert info.value.request_id == "rid-***"
    assert KEY not in everything_said(info.value)


async def test_a_key_straddling_the_detail_cut_is_masked_before_the_cut() -> None:
    limit = 100
    for offset in range(-len(KEY) + 1, 1):  # every way the cut can fall inside the key
        detail = "a" * (limit + offset) + KEY + "tail"
        body = orjson.dumps({"detail": detail})
        with (
            HostileServer(replies(http(body, status=b"422 Nope"))) as server,
            pytest.raises(APIStatusError) as info,
        ):
            await put(server, limits=ResponseLimits(max_error_detail=limit))
        said = everything_said(info.value)
        assert KEY[:6] not in said.replace("sk-hostile", "")  # not even its start
        assert KEY not in said


async def test_a_16_mib_error_detail_is_cut() -> None:
    body = orjson.dumps({"detail": "x" * (16 * MiB)})
    with (
        HostileServer(replies(http(body, status=b"400 Bad"))) as server,
        pytest.raises(BadRequestError) as info,
    ):
        await put(server)
    limit = ResponseLimits().max_error_detail
    assert len(info.value.detail) < limit + 100
    assert len(str(info.value)) < limit + 300
    assert "more characters" in info.value.detail


async def test_a_structured_detail_over_the_limit_becomes_cut_text() -> None:
    body = orjson.dumps({"detail": [{"loc": ["body", i], "msg": "bad"} for i in range(5000)]})
    with (
        HostileServer(replies(http(body, status=b"422 Nope"))) as server,
        pytest.raises(APIStatusError) as info,
    ):
        await put(server, limits=ResponseLimits(max_error_detail=500))
    assert isinstance(info.value.detail, str)
    assert info.value.detail.startswith('[{"loc":["body",0]')
    assert len(str(info.value)) < 800


# ------------------------------------------------------------------- a cursor that never moves


async def test_a_search_whose_cursor_never_advances_stops() -> None:
    page = orjson.dumps({"items": [], "has_more": True, "next_cursor": "same"})
    with HostileServer(replies(http(page))) as server:
        async with client_for(server) as sgp:
            with pytest.raises(APIError, match="cursor does not advance"):
                async for _ in sgp.spans.search(trace_ids=["t"]):
                    pass
    assert len(server.requests) == 2  # 10,000+ in 3 s before


# ----------------------------------------------------------------- user:pass@ in the base URL


def test_credentials_in_the_base_url_are_refused_without_showing_them() -> None:
    url = "https://user:hunter2-password@api.example.com/public"
    with pytest.raises(ConfigurationError, match="holds credentials") as info:
        client_for_url(url)
    assert "hunter2" not in everything_said(info.value)


def client_for_url(url: str) -> Any:
    from sgp_client import AsyncSGPClient

    return AsyncSGPClient(api_key=KEY, account_id="a", base_url=url)


# --------------------------------------------------------------- a client on a new event loop


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_client_reused_on_a_new_event_loop_is_a_clear_error(backend: str) -> None:
    import gc
    import warnings

    with HostileServer(replies(http())) as server:
        clients = [client_for(server)]

        async def call() -> Any:
            return (await clients[0].send_once("PUT", "/v5/spans/batch", content=b"{}")).json()

        async def again() -> None:
            with pytest.raises(ClientClosedError, match="another event loop"):  # RuntimeError
                await call()
            await clients[0].aclose()

        assert anyio.run(call, backend=backend) == {"ok": True}
        anyio.run(again, backend=backend)
        # The first loop's connection was never closed (its loop is gone, which is why the
        # client refuses): the event loop warns when it is collected.
        clients.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()
