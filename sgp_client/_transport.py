"""``H11Transport``: the client's default httpx transport, HTTP/1.1 parsed by h11 on anyio.

Why not httpx's own transport (httpcore): httpcore 1.0.9 starts the next exchange on bytes
h11 already holds, so a server (or proxy) that sends more than one answer gets its extra
bytes read as the answer to the next request; this transport never reuses such a
connection. It is also somewhat leaner (256 KiB reads, one deadline per exchange, no
per-read exception-mapping context managers); the measurements are in the README ("The
client"). It is the default only when nothing httpx-specific applies (no ``transport=``, no
``http_client=``, no proxy in the environment).

Rules:

- ``timeout.connect`` bounds opening a connection, ``timeout.pool`` the wait for a free one;
  ``timeout.read`` bounds the whole exchange, from the first byte sent to the last byte of
  the answer's body (not each read, as in httpcore): a server trickling one byte at a time
  cannot hold a request past it.
- At most ``max_connections`` exchanges at once. A connection goes back to the pool only
  after a complete answer that neither side asked to close, with no byte left over (in h11,
  in the TLS layer or in the socket). Any failure, cancellation or unread body closes it.
- An idle connection is not reused after ``keepalive_expiry`` seconds, nor once readable
  (closed by the server, or sent bytes nobody asked for). A request that a reused connection
  loses before any byte of its answer is sent again once on a new connection, for idempotent
  methods only (the server's idle close racing our request).
- TLS uses the context httpx would build (``httpx.create_ssl_context``: certifi, or
  ``SSL_CERT_FILE``/``SSL_CERT_DIR``), made when the first TLS connection opens.
- Failures are httpx's own exceptions (``ConnectError``, ``ReadTimeout``,
  ``RemoteProtocolError``...), whose messages never quote the answer: a broken server may
  echo the request, key included.
"""

from __future__ import annotations

import logging
import select
import ssl
import time
from collections.abc import AsyncIterator
from typing import Any, Final

import anyio
import anyio.abc
import h11
import httpx
from anyio.streams.tls import TLSAttribute

__all__ = ["MAX_HEAD", "H11Transport"]

logger = logging.getLogger("sgp_client.transport")

#: Large reads: a 458 KB answer in a couple of receives, not dozens.
_RECEIVE_SIZE: Final = 256 * 1024
#: Longest answer head (status line and headers) accepted.
MAX_HEAD: Final = 64 * 1024
#: The most body bytes handed on per step (the limits are checked per step).
_STEP: Final = 512 * 1024
#: Bodies up to this size go out with the head in one send; copying more costs more than a send.
_JOIN_LIMIT: Final = 1024 * 1024
_IDEMPOTENT: Final = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
_BROKEN: Final = (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)

_Origin = tuple[bytes, bytes, int]


class _Disconnected(Exception):
    """The server closed a connection before any byte of an answer (retry-once material)."""


class H11Transport(httpx.AsyncBaseTransport):
    """Keep-alive HTTP/1.1 connections, at most ``max_connections`` in use at once."""

    def __init__(self, *, max_connections: int = 64, keepalive_expiry: float = 5.0) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        self._slots = anyio.Semaphore(max_connections)
        self.keepalive_expiry = keepalive_expiry
        self._idle: dict[_Origin, list[_Connection]] = {}  # most recently used last
        self._ssl_context: ssl.SSLContext | None = None
        self._closed = False
        #: Connections opened so far (observable keep-alive).
        self.connections_opened = 0

    @property
    def idle_connections(self) -> int:
        """Connections waiting in the pool for the next request."""
        return sum(len(idle) for idle in self._idle.values())

    async def aclose(self) -> None:
        """Close every pooled connection; exchanges in flight close theirs when they end."""
        self._closed = True
        idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                await connection.close()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise httpx.ConnectError("the transport is closed", request=request)
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        read_timeout = timeouts.get("read")
        deadline = None if read_timeout is None else anyio.current_time() + read_timeout
        try:
            self._slots.acquire_nowait()  # the usual case, without a cancel scope
        except anyio.WouldBlock:
            try:
                with anyio.fail_after(timeouts.get("pool")):
                    await self._slots.acquire()
            except TimeoutError:
                raise httpx.PoolTimeout("no free connection in time", request=request) from None
        try:
            return await self._exchange(request, deadline, timeouts.get("connect"))
        except BaseException:
            self._slots.release()
            raise

    async def _exchange(
        self, request: httpx.Request, deadline: float | None, connect_timeout: float | None
    ) -> httpx.Response:
        url = request.url
        port = url.port or (443 if url.scheme == "https" else 80)
        origin: _Origin = (url.raw_scheme, url.raw_host, port)
        body = b"".join([chunk async for chunk in request.stream])  # type: ignore[union-attr]
        connection = await self._take_idle(origin)
        while True:
            reused = connection is not None
            if connection is None:
                connection = await self._connect(request, origin, connect_timeout)
            try:
                with anyio.fail_after(_remaining(deadline)):
                    head = await connection.send_and_read_head(request, body)
            except _Disconnected:
                await connection.close()
                # Most likely the server's idle timeout struck as the connection was reused:
                # an idempotent request can safely go again, once, on a new connection.
                if reused and request.method in _IDEMPOTENT:
                    connection = None
                    continue
                raise httpx.RemoteProtocolError(
                    "the server closed the connection without answering", request=request
                ) from None
            except TimeoutError:
                await connection.close()
                raise httpx.ReadTimeout(
                    "no answer within the read timeout", request=request
                ) from None
            except BaseException:
                # Cancelled or failed mid-exchange: bytes may be unsent or unread, never reuse.
                await connection.close()
                raise
            return httpx.Response(
                status_code=head.status_code,
                headers=head.headers.raw_items(),
                stream=_ResponseBody(self, connection, origin, request, deadline),
                extensions={
                    "http_version": b"HTTP/1.1",
                    "reason_phrase": head.reason,
                    "network_stream": connection,
                },
            )

    async def _take_idle(self, origin: _Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            if now - connection.idle_since < self.keepalive_expiry and connection.clean():
                return connection
            # Expired, or readable while idle: the server closed it (or sent garbage).
            await connection.close()
        return None

    async def _connect(
        self, request: httpx.Request, origin: _Origin, timeout: float | None
    ) -> _Connection:
        scheme, host, port = origin
        stream: anyio.abc.ByteStream
        try:
            with anyio.fail_after(timeout):
                if scheme == b"https":
                    stream = await anyio.connect_tcp(
                        host.decode("ascii"),
                        port,
                        ssl_context=self.ssl_context,
                        # No close_notify exchange at close: HTTP framing says where answers end.
                        tls_standard_compatible=False,
                    )
                else:
                    stream = await anyio.connect_tcp(host.decode("ascii"), port)
        except TimeoutError:  # before OSError, its base class
            raise httpx.ConnectTimeout(
                f"no connection within {timeout} s", request=request
            ) from None
        except _BROKEN as exc:
            raise httpx.ConnectError(_describe(exc), request=request) from exc
        self.connections_opened += 1
        logger.debug("connected to %s:%d", host.decode("ascii"), port)
        return _Connection(stream)

    @property
    def ssl_context(self) -> ssl.SSLContext:
        """The TLS context of every https connection, made when first needed."""
        if self._ssl_context is None:
            # httpx's own context (certifi, or SSL_CERT_FILE/SSL_CERT_DIR): the same checks.
            context = httpx.create_ssl_context()
            context.set_alpn_protocols(["http/1.1"])
            self._ssl_context = context
        return self._ssl_context

    async def give_back(self, connection: _Connection, origin: _Origin, reusable: bool) -> None:
        self._slots.release()
        if reusable and not self._closed:
            connection.idle_since = time.monotonic()
            self._idle.setdefault(origin, []).append(connection)
        else:
            await connection.close()


class _Head:
    __slots__ = ("headers", "reason", "status_code")

    def __init__(self, event: h11.Response) -> None:
        self.status_code = event.status_code
        self.reason = event.reason
        self.headers = event.headers


class _Connection:
    """One socket (or TLS) stream, its h11 state machine, one exchange at a time."""

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        self._socket = stream.extra(anyio.abc.SocketAttribute.raw_socket)
        self._tls: ssl.SSLObject | None = stream.extra(TLSAttribute.ssl_object, None)
        self.idle_since = 0.0
        #: Both framings in one answer (a smuggling pattern): read, but never reused.
        self.must_close = False

    def get_extra_info(self, info: str) -> Any:
        """The ``network_stream`` extension of httpx responses (which connection answered)."""
        attribute = {
            "client_addr": anyio.abc.SocketAttribute.local_address,
            "server_addr": anyio.abc.SocketAttribute.remote_address,
            "socket": anyio.abc.SocketAttribute.raw_socket,
            "ssl_object": TLSAttribute.ssl_object,
        }.get(info)
        return None if attribute is None else self.stream.extra(attribute, None)

    def clean(self) -> bool:
        """True if nothing is waiting to be read: no byte, EOF or error in the socket, and no
        byte already inside the TLS layer (the socket check cannot see those)."""
        fd = self._socket.fileno()
        if fd < 0:
            return False
        if self._tls is not None:
            if self._tls.pending():
                return False
            try:
                # Decrypts what the TLS layer holds, without I/O; only a leftover record gives
                # data (a session ticket gives nothing). The connection is dropped if so.
                if self._tls.read(1):
                    return False
            except ssl.SSLWantReadError:
                pass
            except (ssl.SSLError, OSError):
                return False
        if hasattr(select, "poll"):  # not limited to descriptors below 1024, unlike select
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            return not poller.poll(0)
        return not select.select([fd], [], [], 0)[0]

    async def close(self) -> None:
        await anyio.aclose_forcefully(self.stream)

    async def send_and_read_head(self, request: httpx.Request, body: bytes) -> _Head:
        events = self.h11
        head = events.send(
            h11.Request(
                method=request.method, target=request.url.raw_path, headers=request.headers.raw
            )
        )
        assert head is not None
        parts = [head]
        if body:
            parts += events.send_with_data_passthrough(h11.Data(data=body)) or ()
        end = events.send(h11.EndOfMessage())
        if end:
            parts.append(end)
        try:
            if len(body) <= _JOIN_LIMIT:
                await self.stream.send(b"".join(parts))
            else:
                for part in parts:
                    await self.stream.send(part)
        except _BROKEN as exc:
            # A server may answer early (413) and close while the body is still going out.
            try:
                answer = await self._read_head(request)
            except _Disconnected:
                raise  # no answer at all: the retry-once rule applies
            except httpx.ReadError:
                raise httpx.WriteError(f"{_describe(exc)} while sending", request=request) from None
            self.must_close = True
            return answer
        return await self._read_head(request)

    async def _read_head(self, request: httpx.Request) -> _Head:
        received = False
        while True:
            event = await self.next_event(request, received)
            if isinstance(event, h11.Response):
                # h11 bounds a head still arriving; one that came whole is bounded here.
                if sum(len(name) + len(value) + 4 for name, value in event.headers) > MAX_HEAD:
                    raise httpx.RemoteProtocolError(
                        f"the answer's head is larger than {MAX_HEAD} bytes", request=request
                    )
                names = {name for name, _ in event.headers}
                if b"transfer-encoding" in names and b"content-length" in names:
                    self.must_close = True
                return _Head(event)
            # Interim answers (100 Continue, 103 Early Hints) come before the real one.
            received = True

    async def next_event(self, request: httpx.Request, received: bool = True) -> Any:
        """The next h11 event, receiving as needed. ``received`` False: no byte of the answer
        arrived yet (a close then is ``_Disconnected``)."""
        events = self.h11
        while True:
            failure: str | None = None
            try:
                event = events.next_event()
            except h11.RemoteProtocolError as exc:
                # Only the start of h11's message: the rest quotes the answer.
                failure = f"the answer breaks HTTP/1.1: {str(exc).split(':', 1)[0][:80]}"
            if failure is not None:
                # Raised outside the except block: the h11 error (quoting) is not chained.
                raise httpx.RemoteProtocolError(failure, request=request)
            if event is not h11.NEED_DATA:
                return event
            try:
                data = await self.stream.receive(_RECEIVE_SIZE)
            except anyio.EndOfStream:
                data = b""
            except _BROKEN as exc:
                if not received:
                    raise _Disconnected from None
                raise httpx.ReadError(_describe(exc), request=request) from None
            if not data and not received and events.their_state is h11.SEND_RESPONSE:
                raise _Disconnected
            received = True
            events.receive_data(data)


class _ResponseBody(httpx.AsyncByteStream):
    """The answer's body as it arrives; the connection goes back to the pool at its end."""

    def __init__(
        self,
        transport: H11Transport,
        connection: _Connection,
        origin: _Origin,
        request: httpx.Request,
        deadline: float | None,
    ) -> None:
        self._transport = transport
        self._connection: _Connection | None = connection
        self._origin = origin
        self._request = request
        self._deadline = deadline

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        connection = self._connection
        if connection is None:
            raise StopAsyncIteration
        parts: list[bytes] = []
        size = 0
        reusable: bool | None = None  # set once the answer ended
        try:
            with anyio.fail_after(_remaining(self._deadline)):
                # Up to _STEP bytes per step, over several receives if need be: each step
                # crosses httpx's stream and a cancel scope, so fewer and larger cost less.
                while size < _STEP:
                    event = await connection.next_event(self._request)
                    if not isinstance(event, h11.Data):
                        # EndOfMessage, or ConnectionClosed ending a close-delimited body.
                        end = isinstance(event, h11.EndOfMessage)
                        reusable = end and self._reusable(connection)
                        break
                    parts.append(event.data)
                    size += len(event.data)
        except TimeoutError:
            await self._finish(reusable=False)
            raise httpx.ReadTimeout(
                "the answer did not end within the read timeout", request=self._request
            ) from None
        except BaseException:
            await self._finish(reusable=False)
            raise
        if reusable is not None:
            await self._finish(reusable=reusable)
            if not parts:
                raise StopAsyncIteration
        return b"".join(parts)

    @staticmethod
    def _reusable(connection: _Connection) -> bool:
        events = connection.h11
        if connection.must_close or events.our_state is not h11.DONE:
            return False
        if events.their_state is not h11.DONE or events.trailing_data[0]:
            # Bytes past the answer's end: the next answer would not start where we think.
            return False
        events.start_next_cycle()
        return True

    async def _finish(self, *, reusable: bool) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            await self._transport.give_back(connection, self._origin, reusable)

    async def aclose(self) -> None:
        # Unread body (or a failure): the connection cannot carry another exchange.
        await self._finish(reusable=False)


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    return max(deadline - anyio.current_time(), 0.0)


def _describe(exc: BaseException) -> str:
    # anyio's broken-stream errors carry their reason as the cause, not the message.
    cause = exc.__cause__ if not str(exc) and exc.__cause__ is not None else exc
    text = str(cause)
    return f"{type(cause).__name__}: {text}" if text else type(cause).__name__
