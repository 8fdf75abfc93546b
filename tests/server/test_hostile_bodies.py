"""The local server against hostile request bodies, over raw loopback sockets (framed by h11).

A body larger than the server's limit answers 413 before it is read when its size is
declared, and as soon as it grows past the limit when it is streamed (chunked); the
connection is closed after the 413, so the rest is never read. A body nested 10^5 levels
deep answers 400, on every endpoint that reads JSON.
"""

from __future__ import annotations

import select
import socket
from collections.abc import Iterator

import h11
import httpx
import orjson
import psutil
import pytest
from starlette.applications import Starlette

from sgp_client.testing import (
    DEFAULT_ACCOUNT_ID,
    DEFAULT_API_KEY,
    ServerProcess,
    asgi_transport,
    create_app,
    get_control,
)

LIMIT = 1024 * 1024
AUTH = [("x-api-key", DEFAULT_API_KEY), ("x-selected-account-id", DEFAULT_ACCOUNT_ID)]
NESTED = b'{"items": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with ServerProcess(max_body_bytes=LIMIT) as srv:
        yield srv


class Raw:
    """One HTTP/1.1 connection on a raw socket; h11 frames what we send and parses answers."""

    def __init__(self, server: ServerProcess) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        self.conn = h11.Connection(h11.CLIENT)
        self.host = f"127.0.0.1:{server.port}"

    def close(self) -> None:
        self.sock.close()

    def head(self, method: str, target: str, headers: list[tuple[str, str]]) -> None:
        request = h11.Request(
            method=method, target=target, headers=[("host", self.host), *AUTH, *headers]
        )
        self.sock.sendall(self.conn.send(request) or b"")

    def data(self, chunk: bytes) -> None:
        self.sock.sendall(self.conn.send(h11.Data(data=chunk)) or b"")

    def answered(self) -> bool:
        readable, _, _ = select.select([self.sock], [], [], 0)
        return bool(readable)

    def answer(self) -> tuple[int, dict[str, str], bytes]:
        """The status, headers and body of the server's answer."""
        response: h11.Response | None = None
        body = b""
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(self.sock.recv(65536))
                continue
            if isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                break
        assert response is not None
        headers = {k.decode(): v.decode() for k, v in response.headers}
        return response.status_code, headers, body

    def closed_by_server(self) -> bool:
        """True once the server has closed the connection (reads until EOF or reset)."""
        try:
            while self.sock.recv(65536):
                pass
        except ConnectionResetError:
            pass
        return True


def rss(server: ServerProcess) -> int:
    assert server.pid is not None
    return int(psutil.Process(server.pid).memory_info().rss)


def test_a_declared_huge_body_is_refused_before_it_is_read(server: ServerProcess) -> None:
    raw = Raw(server)
    try:
        # 10^9 bytes announced, none sent: the answer cannot wait for them.
        raw.head("PUT", "/public/v5/spans/batch", [("content-length", str(10**9))])
        status, headers, body = raw.answer()
        assert status == 413
        assert str(LIMIT) in orjson.loads(body)["detail"]
        assert headers["connection"] == "close"
        assert raw.closed_by_server()
    finally:
        raw.close()
    assert server.healthy()
    assert server.stats()["faults"]["413"] >= 1


@pytest.mark.parametrize("target", ["/public/v5/spans/batch", "/public/v5/spans/search"])
def test_an_endless_chunked_body_is_cut_at_the_limit(server: ServerProcess, target: str) -> None:
    before = rss(server)
    raw = Raw(server)
    sent = 0
    chunk = b"x" * 65536
    try:
        raw.head(
            "PUT" if target.endswith("batch") else "POST",
            target,
            [("transfer-encoding", "chunked")],
        )
        # Keep sending until the server answers; 64x the limit means it buffered everything.
        try:
            while not raw.answered() and sent < 64 * LIMIT:
                raw.data(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed on us after its answer
        assert sent < 64 * LIMIT, "the server never answered the endless body"
        status, headers, _ = raw.answer()
        assert status == 413
        assert headers["connection"] == "close"
    finally:
        raw.close()
    # What the server holds stays near the limit, not near what was sent.
    assert rss(server) - before < 16 * LIMIT
    assert server.healthy()


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("PUT", "/public/v5/spans/batch"),
        ("POST", "/public/v5/spans/batch"),
        ("POST", "/public/v5/spans"),
        ("POST", "/public/v5/spans/search"),
        ("PUT", "/_admin/faults"),
    ],
)
def test_deeply_nested_json_is_a_400(server: ServerProcess, method: str, target: str) -> None:
    raw = Raw(server)
    try:
        raw.head(method, target, [("content-length", str(len(NESTED)))])
        raw.data(NESTED)
        raw.sock.sendall(raw.conn.send(h11.EndOfMessage()) or b"")
        status, _, body = raw.answer()
    finally:
        raw.close()
    assert status == 400
    assert "nested too deeply" in orjson.loads(body)["detail"]
    assert server.healthy()


@pytest.fixture
def small_app() -> Iterator[Starlette]:
    app = create_app(max_body_bytes=2000)
    yield app
    get_control(app).close()


@pytest.mark.anyio
async def test_the_limit_in_process(small_app: Starlette) -> None:
    async with httpx.AsyncClient(
        transport=asgi_transport(small_app), base_url="http://sgp.local/public", headers=dict(AUTH)
    ) as http:
        item = {"id": "s", "trace_id": "t", "name": "n", "start_timestamp": "2025-01-01T00:00:00Z"}
        assert (await http.put("/v5/spans/batch", json={"items": [item]})).status_code == 200
        big = {**item, "input": {"text": "x" * 3000}}
        r = await http.put("/v5/spans/batch", json={"items": [big]})
        assert r.status_code == 413
        assert r.headers["connection"] == "close"
        # A fault limit below the app's still applies; the lower of both wins.
        get_control(small_app).set_faults(max_body_bytes=50)
        assert (await http.put("/v5/spans/batch", json={"items": [item]})).status_code == 413


def test_a_limit_below_one_byte_is_refused() -> None:
    with pytest.raises(ValueError, match="max_body_bytes"):
        create_app(max_body_bytes=0)
