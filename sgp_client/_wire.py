"""A lean HTTP/1.1 connection pool on anyio, for the client's own requests.

Why not httpx for these: one ``PUT /v5/spans/batch`` of 500 items (370 KB up, 458 KB of JSON
back) cost 3.3 ms of client CPU through httpx and 0.75 ms through a bare HTTP/1.1 exchange on
an anyio socket, measured on a 2-core machine; that CPU bounds the throughput of a busy
``UpsertQueue``. The difference is per-request machinery, not the bytes: httpcore reads 64 KiB
at a time, each read under its own cancel scope and exception-mapping context managers, and h11
turns the answer into events. Through ``AsyncSGPClient.send_once`` this pool costs about a third
of httpx's CPU (0.55-0.8 ms against 1.4-2.1 ms for that request across runs, asyncio and trio).
So the client sends its requests here when nothing httpx-specific applies (no custom transport
or client, no proxy).

One job: send a request with a bytes body, return status, headers and the whole body.
Keep-alive connections, at most ``max_connections`` of them; a connection is reused only after
a complete answer that neither side asked to close, and any failure or cancellation during an
exchange closes it. Bodies are framed by ``Content-Length``, chunked coding or the end of the
connection, and ``gzip``/``deflate`` codings are decoded (``accept-encoding: gzip, deflate``,
as httpx sends). An idle connection is not reused after 5 s, nor once the server has closed it
(checked with a zero-timeout poll); one the server closes as a request arrives, before any byte
of an answer, has that request retried once on a new connection, for idempotent methods only.
"""

from __future__ import annotations

import logging
import re
import select
import socket
import ssl
import time
import zlib
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urlsplit

import anyio
import anyio.abc
import attrs
import httpx
from anyio.streams.tls import TLSAttribute

__all__ = [
    "ConnectError",
    "ConnectionBroken",
    "ProtocolError",
    "ServerDisconnected",
    "WireError",
    "WirePool",
    "WireResponse",
    "WireTimeout",
]

logger = logging.getLogger("sgp_client.wire")

#: Large reads: a 458 KB answer in a couple of receives, not dozens.
_RECEIVE_SIZE: Final = 256 * 1024
#: Longest answer head (status line and headers) accepted.
MAX_HEAD: Final = 64 * 1024
#: Bodies up to this size go out with the head in one send; copying more costs more than a send.
_JOIN_LIMIT: Final = 1024 * 1024
#: Idle connections older than this are closed rather than reused (httpx's default too): a
#: server's idle timeout is likelier to strike during a request on an older connection.
KEEPALIVE_EXPIRY: Final = 5.0
_IDEMPOTENT: Final = frozenset({"GET", "HEAD", "PUT", "DELETE"})
#: Methods that need ``content-length: 0`` without a body (as httpx sends).
_BODY_METHODS: Final = frozenset({"POST", "PUT", "PATCH"})
_TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEX: Final = re.compile(rb"[0-9A-Fa-f]{1,16}")
_DIGITS: Final = re.compile(rb"[0-9]{1,18}")
_STATUS: Final = re.compile(rb"[1-9][0-9][0-9]")
_UNSAFE_HEADER: Final = re.compile(r"[\x00\r\n]")
_BROKEN: Final = (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)


class WireError(Exception):
    """No usable answer: the connection failed or broke, or the answer is not HTTP/1.1."""


class ConnectError(WireError):
    """No connection could be opened (refused, unknown host, TLS handshake or certificate)."""


class ConnectionBroken(WireError):
    """The connection broke (reset, closed) during the exchange."""


class ServerDisconnected(ConnectionBroken):
    """The server closed the connection without sending a byte of an answer."""


class ProtocolError(WireError):
    """The answer breaks HTTP/1.1 (malformed status line, headers, chunk sizes or coding).

    Messages never quote the answer: a broken server may echo the request, key included.
    """


class WireTimeout(WireError):
    """The connect timeout or the whole-request timeout ran out."""


@attrs.frozen
class WireResponse:
    """A complete answer. ``content`` is decoded; ``headers`` then lack the coding's
    ``content-encoding`` and ``content-length``."""

    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    content: bytes
    #: The connection it came on (``get_extra_info`` like httpcore's ``network_stream``).
    network_stream: _Connection


class WirePool:
    """Keep-alive HTTP/1.1 connections to the host of ``base_url``.

    ``headers`` are sent with every request (with ``host``, ``accept-encoding`` and
    ``user-agent``). ``timeout.connect`` bounds opening a connection, ``timeout.read`` the
    whole request (waiting for a free connection included); a per-request ``timeout`` sets
    both, as a number does in httpx.
    """

    def __init__(
        self,
        base_url: str,
        headers: Mapping[str, str],
        *,
        max_connections: int,
        timeout: httpx.Timeout,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("base_url must be an http(s) URL with a host")
        self._tls = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._tls else 80)
        host = f"[{self._host}]" if ":" in self._host else self._host
        fields = {
            "host": host if parts.port is None else f"{host}:{parts.port}",
            "accept-encoding": "gzip, deflate",
            "user-agent": "sgp-async",
            **headers,
        }
        for name, value in fields.items():
            # Written as is: a CR or LF would start a header (or a request) of its own.
            if _UNSAFE_HEADER.search(name) or _UNSAFE_HEADER.search(value):
                raise ValueError(f"header {name!r} holds a control character")  # not the value
        self._fields = "".join(f"{n}: {v}\r\n" for n, v in fields.items()).encode() + b"\r\n"
        self._connect_timeout = timeout.connect
        self._request_timeout = timeout.read
        self._slots = anyio.Semaphore(max_connections, fast_acquire=True)
        self._idle: list[_Connection] = []  # most recently used last, reused first
        self._ssl_context: ssl.SSLContext | None = None
        self._closed = False
        #: Connections opened so far (observable keep-alive).
        self.connections_opened = 0

    @property
    def idle_connections(self) -> int:
        """Connections waiting in the pool for the next request."""
        return len(self._idle)

    async def aclose(self) -> None:
        """Close every pooled connection; requests in flight close theirs when they end."""
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            await connection.close()

    async def request(
        self, method: str, target: bytes, body: bytes | None = None, *, timeout: float | None = None
    ) -> WireResponse:
        """Send ``method target`` (origin form, already percent-encoded) with ``body``.

        Raises ``WireTimeout``, ``ConnectError``, ``ConnectionBroken`` or ``ProtocolError``.
        """
        if self._closed:
            raise WireError("the connection pool is closed")
        if not _TOKEN.fullmatch(method.encode()):
            raise ValueError(f"invalid HTTP method {method!r}")
        if timeout is None:
            connect_timeout, request_timeout = self._connect_timeout, self._request_timeout
        else:
            connect_timeout = request_timeout = timeout
        length = b""
        if body is not None or method in _BODY_METHODS:
            length = b"content-length: %d\r\n" % len(body or b"")
        head = b"%s %s HTTP/1.1\r\n%s%s" % (method.encode(), target, length, self._fields)
        with anyio.move_on_after(request_timeout):
            async with self._slots:
                return await self._send(method, head, body, connect_timeout)
        raise WireTimeout(f"no complete answer within {request_timeout} s")

    async def _send(
        self, method: str, head: bytes, body: bytes | None, connect_timeout: float | None
    ) -> WireResponse:
        connection = await self._take_idle()
        while True:
            reused = connection is not None
            if connection is None:
                connection = await self._connect(connect_timeout)
            try:
                response, keep_alive = await connection.exchange(method, head, body)
            except ServerDisconnected:
                await connection.close()
                # Most likely the server's idle timeout struck as the connection was reused;
                # an idempotent request can safely go again, once, on a new connection.
                if reused and method in _IDEMPOTENT:
                    connection = None
                    continue
                raise
            except BaseException:
                # Cancelled or failed mid-exchange: bytes may be unsent or unread, never reuse.
                await connection.close()
                raise
            if keep_alive and not self._closed:
                connection.idle_since = time.monotonic()
                self._idle.append(connection)
            else:
                await connection.close()
            return response

    async def _take_idle(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            if now - connection.idle_since < KEEPALIVE_EXPIRY and not connection.readable():
                return connection
            # Expired, or readable while idle: the server closed it (or sent garbage).
            await connection.close()
        return None

    async def _connect(self, timeout: float | None) -> _Connection:
        stream: anyio.abc.ByteStream
        try:
            with anyio.fail_after(timeout):
                if self._tls:
                    stream = await anyio.connect_tcp(
                        self._host,
                        self._port,
                        ssl_context=self._context(),
                        # No close_notify exchange at close: HTTP framing says where answers end.
                        tls_standard_compatible=False,
                    )
                else:
                    stream = await anyio.connect_tcp(self._host, self._port)
        except TimeoutError:  # before OSError, its base class
            raise WireTimeout(f"no connection within {timeout} s") from None
        except _BROKEN as exc:
            raise ConnectError(_describe(exc)) from exc
        self.connections_opened += 1
        logger.debug("connected to %s:%d", self._host, self._port)
        return _Connection(stream)

    def _context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            # httpx's own context (certifi, or SSL_CERT_FILE/SSL_CERT_DIR): the same checks.
            context = httpx.create_ssl_context()
            context.set_alpn_protocols(["http/1.1"])
            self._ssl_context = context
        return self._ssl_context


class _Connection:
    """One socket (or TLS) stream and the reading of one answer at a time from it."""

    __slots__ = ("_socket", "idle_since", "stream")

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream = stream
        self._socket: socket.socket = stream.extra(anyio.abc.SocketAttribute.raw_socket)
        self.idle_since = 0.0

    def get_extra_info(self, info: str) -> Any:
        """httpcore's ``network_stream`` interface, for code reading ``response.extensions``."""
        attribute = {
            "client_addr": anyio.abc.SocketAttribute.local_address,
            "server_addr": anyio.abc.SocketAttribute.remote_address,
            "socket": anyio.abc.SocketAttribute.raw_socket,
            "ssl_object": TLSAttribute.ssl_object,
        }.get(info)
        return None if attribute is None else self.stream.extra(attribute, None)

    def readable(self) -> bool:
        """True if the idle socket has data, an EOF or an error pending (or is closed)."""
        fd = self._socket.fileno()
        if fd < 0:
            return True
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            return bool(poller.poll(0))
        return bool(select.select([fd], [], [], 0)[0])

    async def close(self) -> None:
        await anyio.aclose_forcefully(self.stream)

    async def exchange(
        self, method: str, head: bytes, body: bytes | None
    ) -> tuple[WireResponse, bool]:
        """Send one request, read its answer; the flag says whether the connection is reusable."""
        try:
            if body is not None and len(body) <= _JOIN_LIMIT:
                await self.stream.send(head + body)
            else:
                await self.stream.send(head)
                if body:
                    await self.stream.send(body)
        except _BROKEN as exc:
            # A server may answer early (413) and close while the body is still going out.
            try:
                response, _ = await self._read_response(method)
            except ServerDisconnected:
                raise ServerDisconnected(f"{_describe(exc)} while sending") from exc
            except ConnectionBroken:
                raise ConnectionBroken(f"{_describe(exc)} while sending") from exc
            return response, False
        return await self._read_response(method)

    async def _receive(self, buffer: bytearray, what: str) -> None:
        """Append what arrives to ``buffer``; raise ``ConnectionBroken`` at its end."""
        try:
            buffer += await self.stream.receive(_RECEIVE_SIZE)
        except anyio.EndOfStream:
            raise ConnectionBroken(f"the server closed the connection in the {what}") from None
        except _BROKEN as exc:
            raise ConnectionBroken(f"{_describe(exc)} in the {what}") from exc

    async def _read_response(self, method: str) -> tuple[WireResponse, bool]:
        buffer = bytearray()
        try:
            await self._receive(buffer, "status line")
        except ConnectionBroken as exc:
            raise ServerDisconnected(
                "the server closed the connection without answering"
            ) from exc.__cause__
        # Interim answers (100 Continue, 103 Early Hints) come before the real one.
        status, reason, version, headers = await self._read_head(buffer)
        while status < 200:
            if status == 101:
                raise ProtocolError("unexpected 101 Switching Protocols")
            status, reason, version, headers = await self._read_head(buffer)

        length = encoding = None
        chunked = close = False
        transfer_encoding = False
        for name, value in headers:
            lower = name.lower()
            if lower == b"content-length":
                if length is not None and value != length:
                    raise ProtocolError("conflicting content-length headers")
                length = value
            elif lower == b"transfer-encoding":
                transfer_encoding = True
                chunked = value.lower().rsplit(b",", 1)[-1].strip() == b"chunked"
            elif lower == b"connection":
                close = close or b"close" in [t.strip() for t in value.lower().split(b",")]
            elif lower == b"content-encoding":
                encoding = value if encoding is None else encoding + b"," + value
        keep_alive = version == b"HTTP/1.1" and not close

        if method == "HEAD" or status in (204, 304):
            content, extra = b"", bool(buffer)
        elif chunked:
            content, extra = await self._read_chunked(buffer)
            # Both framings at once is a smuggling pattern: answer read, connection not reused.
            keep_alive = keep_alive and length is None
        elif transfer_encoding or length is None:
            content, extra = await self._read_to_close(buffer), False
            keep_alive = False
        else:
            if not _DIGITS.fullmatch(length):
                raise ProtocolError("malformed content-length header")
            content, extra = await self._read_exact(buffer, int(length))

        if encoding is not None:
            decoded = _decode(content, encoding)
            if decoded is not None:
                content = decoded
                skip = (b"content-encoding", b"content-length")
                headers = [(n, v) for n, v in headers if n.lower() not in skip]
        response = WireResponse(status, reason, headers, content, self)
        # Bytes past the answer's end: the next answer would not start where we think.
        return response, keep_alive and not extra

    async def _read_head(
        self, buffer: bytearray
    ) -> tuple[int, bytes, bytes, list[tuple[bytes, bytes]]]:
        """Parse the head at the start of ``buffer`` (receiving more as needed); drop it."""
        start = 0
        while (end := buffer.find(b"\r\n\r\n", start)) < 0:
            if len(buffer) > MAX_HEAD:
                raise ProtocolError(f"answer head larger than {MAX_HEAD} bytes")
            start = max(len(buffer) - 3, 0)
            await self._receive(buffer, "answer head")
        if end > MAX_HEAD:
            raise ProtocolError(f"answer head larger than {MAX_HEAD} bytes")
        lines = bytes(buffer[:end]).split(b"\r\n")
        del buffer[: end + 4]
        version, _, rest = lines[0].partition(b" ")
        code, _, reason = rest.partition(b" ")
        if version not in (b"HTTP/1.1", b"HTTP/1.0") or not _STATUS.fullmatch(code):
            raise ProtocolError("malformed status line")
        headers = []
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            # No whitespace before the colon, no obsolete line folding (RFC 9112 5.1, 5.2).
            if not colon or not _TOKEN.fullmatch(name):
                raise ProtocolError("malformed header line")
            headers.append((name, value.strip(b" \t")))
        return int(code), reason, version, headers

    async def _read_exact(self, buffer: bytearray, length: int) -> tuple[bytes, bool]:
        if len(buffer) >= length:
            return bytes(buffer[:length]), len(buffer) > length
        chunks = [bytes(buffer)]
        received = len(buffer)
        while received < length:
            try:
                chunk = await self.stream.receive(_RECEIVE_SIZE)
            except anyio.EndOfStream:
                raise ConnectionBroken(
                    f"the server closed the connection after {received} of {length} body bytes"
                ) from None
            except _BROKEN as exc:
                raise ConnectionBroken(f"{_describe(exc)} in the body") from exc
            chunks.append(chunk)
            received += len(chunk)
        content = b"".join(chunks)
        if received > length:
            return content[:length], True
        return content, False

    async def _read_to_close(self, buffer: bytearray) -> bytes:
        chunks = [bytes(buffer)]
        while True:
            try:
                chunks.append(await self.stream.receive(_RECEIVE_SIZE))
            except anyio.EndOfStream:
                return b"".join(chunks)
            except _BROKEN as exc:
                raise ConnectionBroken(f"{_describe(exc)} in the body") from exc

    async def _read_chunked(self, buffer: bytearray) -> tuple[bytes, bool]:
        chunks: list[bytes] = []
        while True:
            line = await self._read_line(buffer, "chunk size line")
            size_text = line.split(b";", 1)[0].strip(b" \t")
            if not _HEX.fullmatch(size_text):
                raise ProtocolError("malformed chunk size")
            size = int(size_text, 16)
            if size == 0:
                break
            while len(buffer) < size + 2:
                await self._receive(buffer, "chunked body")
            if buffer[size : size + 2] != b"\r\n":
                raise ProtocolError("chunk data not followed by CRLF")
            chunks.append(bytes(buffer[:size]))
            del buffer[: size + 2]  # cheap: a bytearray drops its front without moving the rest
        trailers = 0
        while line := await self._read_line(buffer, "chunked trailer"):
            trailers += len(line) + 2
            if trailers > MAX_HEAD:
                raise ProtocolError(f"chunked trailers larger than {MAX_HEAD} bytes")
        return b"".join(chunks), bool(buffer)

    async def _read_line(self, buffer: bytearray, what: str) -> bytes:
        """The line at the start of ``buffer``, without its CRLF; dropped from ``buffer``."""
        start = 0
        while (end := buffer.find(b"\r\n", start)) < 0:
            if len(buffer) > 4096:
                raise ProtocolError(f"{what} longer than 4096 bytes")
            start = max(len(buffer) - 1, 0)
            await self._receive(buffer, what)
        line = bytes(buffer[:end])
        del buffer[: end + 2]
        return line


def _decode(content: bytes, encoding: bytes) -> bytes | None:
    """``content`` without its codings (last applied first); None for a coding we don't know."""
    codings = [c.strip() for c in encoding.lower().split(b",")]
    if any(c not in (b"gzip", b"x-gzip", b"deflate", b"identity", b"") for c in codings):
        return None
    try:
        for coding in reversed(codings):
            if coding in (b"gzip", b"x-gzip"):
                content = _inflate(content, 16 + zlib.MAX_WBITS)
            elif coding == b"deflate":
                try:
                    content = _inflate(content, zlib.MAX_WBITS)
                except zlib.error:
                    # Some servers send raw deflate without the zlib wrapper (httpx allows it).
                    content = _inflate(content, -zlib.MAX_WBITS)
    except zlib.error as exc:
        raise ProtocolError(f"could not decode the {encoding.decode('latin-1')} body") from exc
    return content


def _inflate(content: bytes, wbits: int) -> bytes:
    decompressor = zlib.decompressobj(wbits)
    result = decompressor.decompress(content) + decompressor.flush()
    if not decompressor.eof:
        raise zlib.error("truncated compressed body")
    return result


def _describe(exc: BaseException) -> str:
    # anyio's broken-stream errors carry their reason as the cause, not the message.
    cause = exc.__cause__ if not str(exc) and exc.__cause__ is not None else exc
    text = str(cause)
    return f"{type(cause).__name__}: {text}" if text else type(cause).__name__
