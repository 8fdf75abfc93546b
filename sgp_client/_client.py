"""``AsyncSGPClient``: the typed async client of the SGP spans API.

Every request goes through an ``httpx.AsyncClient``. Its transport is, by default, the
client's own ``H11Transport`` (keep-alive HTTP/1.1 parsed by h11, never reusing a
connection with bytes left over, which httpx's own transport does);
httpx's default transport when a proxy is set in the environment (httpx applies it); or
what the caller passes (``transport=``, ``http_client=``). Answers are read streamed within
``ResponseLimits``. Every request carries the key and account headers; errors are translated
to the ``SGPError`` tree at this seam; direct calls retry what ``classify`` says is worth it,
with backoff, within a deadline for the whole call.
"""

from __future__ import annotations

import logging
import os
import urllib.request
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Final, Self, TypeVar
from urllib.parse import quote, urlsplit

import anyio
import anyio.lowlevel
import httpx

from ._body import ACCEPT_ENCODING, read_body
from ._classify import Action, classify
from ._config import ClientConfig, ResponseLimits, resolve_config
from ._constants import BATCH_PATH
from ._exceptions import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    ClientClosedError,
    ResponseDecodingError,
    ResponseTooLargeError,
    SGPError,
    status_error_class,
)
from ._models import Span, SpanItem
from ._redact import Redactor
from ._retry import Backoff, parse_retry_after
from ._serialization import dumps, encode_item, encode_items_body, loads, structure
from ._transport import H11Transport

__all__ = ["DEFAULT_TIMEOUT", "MAX_BATCH_ITEMS", "AsyncSGPClient", "SpansResource"]

logger = logging.getLogger("sgp_client")

#: The API rejects batches larger than this.
MAX_BATCH_ITEMS: Final = 1000
#: Per-request timeouts, as the official SDK: 60 s overall, 5 s to connect.
DEFAULT_TIMEOUT: Final = httpx.Timeout(60.0, connect=5.0)
_BATCH_PATH: Final = BATCH_PATH
#: The longest request id kept from an answer (it is the server's text, shown in errors).
_MAX_REQUEST_ID: Final = 200

T = TypeVar("T")


class AsyncSGPClient:
    """Async client of the SGP API.

    Settings come from keyword arguments, then ``SGP_API_KEY``, ``SGP_ACCOUNT_ID`` and
    ``SGP_CLIENT_BASE_URL`` (empty variables count as unset), then the production URL.
    Use it as ``async with AsyncSGPClient() as client:`` or call ``aclose()``. A client
    belongs to the event loop it first sends on (its connections do).

    ``transport=`` takes any httpx async transport (``httpx.ASGITransport`` for in-process
    tests); ``http_client=`` an ``httpx.AsyncClient`` you own (it is not closed for you).
    Without either, requests go through the client's own ``H11Transport`` (at most
    ``max_connections`` connections), or through httpx's default transport when a proxy
    variable (``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY``) applies to the base URL's scheme.
    ``limits`` bounds what an answer may hold (``ResponseLimits``).
    ``max_retries`` applies to direct calls; ``call_timeout`` bounds a whole call, retries
    included. ``redact`` (off by default: the SGP API masks credential-shaped values itself,
    server side) is applied to every span's name, input, output, metadata and expected before
    they leave the process; ``redact=sgp_client.redact_credentials`` masks them client side.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        account_id: str | None = None,
        base_url: str | None = None,
        environment: str | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        max_retries: int = 2,
        call_timeout: float | None = 180.0,
        backoff: Backoff | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        http_client: httpx.AsyncClient | None = None,
        max_connections: int = 64,
        allow_insecure_http: bool = False,
        redact: Redactor | None = None,
        limits: ResponseLimits | None = None,
    ) -> None:
        if transport is not None and http_client is not None:
            raise ValueError("pass either transport= or http_client=, not both")
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if call_timeout is not None and not call_timeout > 0:
            raise ValueError("call_timeout must be > 0 seconds, or None for no deadline")
        self._config: ClientConfig = resolve_config(
            api_key=api_key,
            account_id=account_id,
            base_url=base_url,
            environment=environment,
            allow_insecure_http=allow_insecure_http,
        )
        self.max_retries = max_retries
        self.call_timeout = call_timeout
        #: Applied to span content before it is sent (see ``sgp_client.redact_credentials``).
        self.redact = redact
        self.backoff = backoff or Backoff()
        #: How much of an answer is accepted.
        self.limits = limits or ResponseLimits()
        self._headers = {
            "x-api-key": self._config.api_key,
            "x-selected-account-id": self._config.account_id,
            "content-type": "application/json",
            "accept": "application/json",
            # Only the codings ``read_body`` decodes within the limits.
            "accept-encoding": ACCEPT_ENCODING,
        }
        #: The client's own transport, when it is the one in use.
        self.transport: H11Transport | None = None
        if transport is None and http_client is None and not _proxied(self.base_url):
            transport = self.transport = H11Transport(max_connections=max_connections)
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient(
            transport=transport,
            timeout=timeout,
            # Keep-alive pooling: a queue sends many batches over few connections.
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            # TLS verification stays on (httpx's default); never follow redirects with a key.
            follow_redirects=False,
        )
        self._closed = False
        self._pid = os.getpid()
        self._loop: object | None = None
        self.spans = SpansResource(self)

    @property
    def base_url(self) -> str:
        """The base URL every path is joined to."""
        return self._config.base_url

    @property
    def account_id(self) -> str:
        """The account every request is made for."""
        return self._config.account_id

    @property
    def closed(self) -> bool:
        """True once ``aclose()`` ran."""
        return self._closed

    def __repr__(self) -> str:
        return f"AsyncSGPClient(base_url={self.base_url!r}, account_id={self.account_id!r})"

    async def __aenter__(self) -> Self:
        self._check_usable()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool (if the client created it). Idempotent."""
        if self._closed:
            return
        self._closed = True
        # In a forked child the sockets are the parent's: closing would shut them down there.
        if os.getpid() != self._pid:
            return
        # Connections of another (finished) event loop cannot be closed from this one.
        if self._loop is not None and anyio.lowlevel.current_token() != self._loop:
            return
        with anyio.CancelScope(shield=True):
            if self._owns_http:
                await self._http.aclose()

    def _check_usable(self) -> None:
        if self._closed:
            raise ClientClosedError("this AsyncSGPClient is closed; create a new one")
        if os.getpid() != self._pid:
            # A forked child would share the parent's sockets: refuse rather than corrupt them.
            raise ClientClosedError(
                "this AsyncSGPClient was created in another process (before a fork); "
                "create a new client in the child"
            )
        loop = anyio.lowlevel.current_token()
        if self._loop is None:
            self._loop = loop
        elif loop != self._loop:
            # Its pooled connections belong to the first loop (closed or not): using them
            # here fails deep in the event loop with a bare RuntimeError.
            raise ClientClosedError(
                "this AsyncSGPClient was used on another event loop; create one client per "
                "event loop (for example inside the function given to anyio.run/asyncio.run)"
            )

    async def send_once(
        self,
        method: str,
        path: str,
        *,
        content: bytes | None = None,
        params: Mapping[str, Any] | None = None,
        timeout: float | None = None,
        need_body: bool = True,
    ) -> httpx.Response:
        """Send one request, no retries; translate failures into the ``SGPError`` tree.

        Returns the (fully read) response of a 2xx answer; raises ``APIStatusError``
        subclasses otherwise, ``ResponseTooLargeError`` past ``limits``. With
        ``need_body=False`` (the queue, which only needs to know the write succeeded) a 2xx
        whose body is past the limits or cannot be decoded is returned with an empty body.
        """
        self._check_usable()
        url = self._config.base_url + path
        request = self._http.build_request(
            method,
            url,
            content=content,
            params=params,
            headers=self._headers,
            timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
        )
        if content is not None:
            request.stream = _Body(content)
        try:
            # Even on a caller's http_client: a redirect would carry the key elsewhere.
            streamed = await self._http.send(request, stream=True, follow_redirects=False)
            try:
                body, unreadable = await self._read(streamed, method, url, need_body)
            finally:
                # Unread bytes (a limit, a failure): the transport closes the connection.
                await streamed.aclose()
        except httpx.TimeoutException as exc:
            raise APITimeoutError(
                f"{method} {url} timed out ({type(exc).__name__})", method=method, url=url
            ) from exc
        except httpx.TransportError as exc:
            # Some transport errors quote what was sent (h11 quotes a refused header value).
            message = self._scrub(f"{method} {url} failed: {type(exc).__name__}: {exc}")
            raise APIConnectionError(message, method=method, url=url) from exc
        # The decoded body, without the headers that described the encoded one.
        headers = [
            (name, value)
            for name, value in streamed.headers.multi_items()
            if name not in ("content-encoding", "content-length")
        ]
        response = httpx.Response(
            streamed.status_code,
            headers=headers,
            content=body,
            request=request,
            extensions=streamed.extensions,
        )
        # Redirects are never followed (the key would go along), so for a JSON API one is an
        # error too.
        if response.status_code >= 300:
            raise self._status_error(response, method, url, unreadable)
        return response

    async def _read(
        self, response: httpx.Response, method: str, url: str, need_body: bool
    ) -> tuple[bytes, str | None]:
        """The body and, when it could not be read (an error status, or a 2xx whose body is
        not needed), why not."""
        try:
            return await read_body(response, self.limits, method, url), None
        except (ResponseTooLargeError, ResponseDecodingError) as exc:
            # An error status stays what it is (a 503 is retried) whatever its body holds,
            # and a success is one (the spans are stored) for a caller that needs no body.
            if response.status_code < 300 and need_body:
                raise
            return b"", f"<body not read: {type(exc).__name__}>"

    def _scrub(self, text: str) -> str:
        """``text`` with the API key masked (servers may echo it)."""
        key = self._config.api_key
        return text.replace(key, "***") if key in text else text

    def _status_error(
        self, response: httpx.Response, method: str, url: str, unreadable: str | None
    ) -> APIStatusError:
        limit = self.limits.max_error_detail
        # Masked first, cut after: a key straddling the cut would otherwise leak half of it.
        text = self._scrub(response.content.decode("utf-8", "replace"))
        detail: Any = None
        try:
            body = loads(text) if text else None
            detail = body.get("detail", body) if isinstance(body, dict) else body
            # Still a key in it? Only through JSON escapes ("\u0073k-..."): keep the text.
            if detail is not None and not isinstance(detail, str):
                shown = dumps(detail).decode()
                if len(shown) > limit or self._config.api_key in shown:
                    detail = _cut(self._scrub(shown), limit)
        except (ValueError, TypeError, RecursionError):
            detail = None
        if isinstance(detail, str):
            detail = _cut(self._scrub(detail), limit)
        elif detail is None:
            detail = _cut(text, limit) or unreadable or response.reason_phrase
        request_id = response.headers.get("x-request-id")
        if request_id is not None:
            request_id = _cut(self._scrub(request_id), _MAX_REQUEST_ID)
        cls = status_error_class(response.status_code)
        return cls(
            status_code=response.status_code,
            detail=detail,
            request_id=request_id,
            method=method,
            url=url,
            retry_after=self._retry_after(response.headers),
        )

    def _retry_after(self, headers: httpx.Headers) -> float | None:
        cap = self.backoff.max_retry_after
        # ``retry-after-ms`` (sent by some gateways, honoured by the official SDK) is finer.
        millis = headers.get("retry-after-ms")
        if millis:
            try:
                seconds = float(millis) / 1000
            except ValueError:
                pass
            else:
                if seconds == seconds:  # not NaN
                    return min(max(seconds, 0.0), cap)
        return parse_retry_after(headers.get("retry-after"), cap=cap)

    async def request(
        self,
        method: str,
        path: str,
        *,
        content: bytes | None = None,
        params: Mapping[str, Any] | None = None,
        max_retries: int | None = None,
    ) -> Any:
        """Send a request with retries of transient failures; return the decoded JSON answer.

        What ``classify`` calls ``RETRY`` (connection errors, timeouts, 408, 429 and most 5xx)
        is retried with backoff and jitter, honouring ``Retry-After``; nothing else is.
        ``call_timeout`` bounds it all.
        """
        retries = self.max_retries if max_retries is None else max_retries
        # The event loop's clock, the one ``fail_after`` and ``sleep`` measure with.
        deadline = None if self.call_timeout is None else anyio.current_time() + self.call_timeout
        attempt = 0
        while True:
            try:
                with anyio.fail_after(_remaining(deadline)):
                    response = await self.send_once(method, path, content=content, params=params)
                return self._decode(response, method, path)
            except TimeoutError:
                raise APITimeoutError(
                    f"{method} {path}: call deadline of {self.call_timeout} s exceeded",
                    method=method,
                    url=self._config.base_url + path,
                ) from None
            except SGPError as exc:
                if attempt >= retries or classify(exc).action is not Action.RETRY:
                    raise
                delay = self.backoff.delay(attempt, getattr(exc, "retry_after", None))
                remaining = _remaining(deadline)
                if remaining is not None and delay >= remaining:
                    raise
                logger.debug(
                    "retrying %s %s in %.2f s after %s", method, path, delay, type(exc).__name__
                )
                attempt += 1
                await anyio.sleep(delay)

    def _decode(self, response: httpx.Response, method: str, path: str) -> Any:
        if not response.content:
            return None
        try:
            return loads(response.content)
        except ValueError:
            raise APIError(
                f"{method} {path}: the answer ({response.status_code}) is not JSON",
                method=method,
                url=self._config.base_url + path,
            ) from None

    def _structure(self, data: Any, cls: type[T], method: str, path: str) -> T:
        """Build the answer's model; an answer of the wrong shape is an ``APIError``."""
        try:
            return structure(data, cls)
        except Exception as exc:
            raise APIError(
                f"{method} {path}: unexpected answer shape: {exc}",
                method=method,
                url=self._config.base_url + path,
            ) from exc


def _proxied(url: str) -> bool:
    """Whether a proxy variable of the environment names the scheme of ``url`` (or all).

    Then httpx's own transport is used, and httpx decides (``NO_PROXY`` included): the one
    place proxies are understood.
    """
    proxies = urllib.request.getproxies_environment()
    return bool(proxies.get(urlsplit(url).scheme) or proxies.get("all"))


def _cut(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    return max(deadline - anyio.current_time(), 0.0)


class _Body(httpx.AsyncByteStream):
    """A request body whose async iteration needs no cleanup.

    httpx's own ``ByteStream.__aiter__`` is an async generator: when a connection breaks
    after the body was taken but before the generator finished, it is garbage collected
    unfinished, which trio reports with a ResourceWarning on every dropped request.
    """

    def __init__(self, content: bytes) -> None:
        self.content = content

    def __aiter__(self) -> AsyncIterator[bytes]:
        return _OneChunk(self.content)


class _OneChunk:
    def __init__(self, chunk: bytes) -> None:
        self._chunk: bytes | None = chunk

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        chunk, self._chunk = self._chunk, None
        if chunk is None:
            raise StopAsyncIteration
        return chunk


class SpansResource:
    """The ``/v5/spans`` endpoints, reached as ``client.spans``."""

    def __init__(self, client: AsyncSGPClient) -> None:
        self._client = client

    async def upsert_batch(self, items: Iterable[SpanItem]) -> list[Span]:
        """Insert or replace up to 1000 spans (``PUT /v5/spans/batch``); returns what is stored.

        Spans are keyed by (``trace_id``, ``id``); a completed span beats an in-progress one.
        """
        return await self._send_batch("PUT", items)

    async def batch(self, items: Iterable[SpanItem]) -> list[Span]:
        """Insert up to 1000 new spans (``POST /v5/spans/batch``), without replacing."""
        return await self._send_batch("POST", items)

    async def _send_batch(self, method: str, items: Iterable[SpanItem]) -> list[Span]:
        body = _batch_body(items, self._client.redact)
        answer = await self._client.request(method, _BATCH_PATH, content=body)
        if not isinstance(answer, dict):
            answer = {}
        return self._client._structure(answer.get("items"), list[Span], method, _BATCH_PATH)

    async def create(self, item: SpanItem) -> Span:
        """Create one span (``POST /v5/spans``)."""
        if not isinstance(item, SpanItem):
            raise TypeError(f"item is a {type(item).__name__}, expected SpanItem")
        content = encode_item(item, self._client.redact)
        answer = await self._client.request("POST", "/v5/spans", content=content)
        return self._client._structure(answer, Span, "POST", "/v5/spans")

    async def get(self, span_id: str) -> Span:
        """Fetch one span by id (``GET /v5/spans/{span_id}``); ``NotFoundError`` if absent."""
        if not isinstance(span_id, str) or not span_id or "/" in span_id:
            raise ValueError(f"invalid span id {span_id!r}")
        # Quoted, so an id holding "?", "#" or "%" still names one span and nothing else.
        path = f"/v5/spans/{quote(span_id, safe='')}"
        answer = await self._client.request("GET", path)
        return self._client._structure(answer, Span, "GET", path)

    def search(
        self,
        *,
        trace_ids: Sequence[str] | None = None,
        span_ids: Sequence[str] | None = None,
        parent_ids: Sequence[str] | None = None,
        names: Sequence[str] | None = None,
        group_id: str | None = None,
        parents_only: bool | None = None,
        page_size: int = 100,
        sort_order: str | None = None,
        sort_by: str | None = None,
        from_ts: datetime | str | None = None,
        to_ts: datetime | str | None = None,
        **filters: Any,
    ) -> AsyncIterator[Span]:
        """Iterate over every span matching the filters, fetching cursor pages as needed.

        Filters go in the JSON body (``POST /v5/spans/search``); other API filters can be
        passed as keyword arguments. The time window (``from_ts``, ``to_ts``: a datetime or
        an ISO 8601 string) goes in the query string, where the API reads it (as the
        official client sends it). Nothing is sent until iteration starts; leaving the loop
        early needs no cleanup. A server whose cursor stops advancing is an ``APIError``.
        """
        if not 1 <= page_size <= 1000:
            raise ValueError("page_size must be between 1 and 1000")
        for name, value in (
            ("trace_ids", trace_ids),
            ("span_ids", span_ids),
            ("parent_ids", parent_ids),
            ("names", names),
        ):
            # A bare string is a Sequence[str] too, and would be sent as a list of letters.
            if isinstance(value, str):
                raise TypeError(f"{name} must be a list of strings, not a str")
        body: dict[str, Any] = {
            key: list(value) if isinstance(value, (list, tuple)) else value
            for key, value in {
                "trace_ids": trace_ids,
                "span_ids": span_ids,
                "parent_ids": parent_ids,
                "names": names,
                "group_id": group_id,
                "parents_only": parents_only,
                **filters,
            }.items()
            if value is not None
        }
        params: dict[str, Any] = {"limit": page_size}
        if sort_order is not None:
            params["sort_order"] = sort_order
        if sort_by is not None:
            params["sort_by"] = sort_by
        for name, when in (("from_ts", from_ts), ("to_ts", to_ts)):
            if isinstance(when, datetime):
                params[name] = when.isoformat()
            elif when is not None:
                params[name] = when
        return _SearchPages(self._client, dumps(body), params)


class _SearchPages:
    """The async iterator ``search`` returns: one request per cursor page, on demand.

    A class rather than an async generator: an unfinished generator must be closed
    explicitly (trio warns when one is garbage collected), and callers break out of
    ``async for`` loops over search results all the time.
    """

    _PATH: Final = "/v5/spans/search"

    def __init__(self, client: AsyncSGPClient, body: bytes, params: dict[str, Any]) -> None:
        self._client = client
        self._body = body
        self._params = params
        self._buffer: list[Span] = []
        self._index = 0
        self._done = False
        self._cursors: set[str] = set()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Span:
        while self._index >= len(self._buffer):
            if self._done:
                raise StopAsyncIteration
            await self._fetch()
        span = self._buffer[self._index]
        self._index += 1
        return span

    async def _fetch(self) -> None:
        page = await self._client.request(
            "POST", self._PATH, content=self._body, params=self._params
        )
        if not isinstance(page, dict):
            page = {"items": page}
        items = page.get("items") or []
        self._buffer = self._client._structure(items, list[Span], "POST", self._PATH)
        self._index = 0
        cursor = page.get("next_cursor") or (self._buffer[-1].id if self._buffer else None)
        if not page.get("has_more") or cursor is None:
            self._done = True
            return
        if cursor in self._cursors:
            # A page we had already asked for: following it would request forever.
            self._done = True
            raise APIError(
                f"POST {self._PATH}: the search cursor does not advance (a page repeats)",
                method="POST",
                url=self._client.base_url + self._PATH,
            )
        self._cursors.add(cursor)
        self._params = {**self._params, "starting_after": cursor}


def _batch_body(items: Iterable[SpanItem], redact: Redactor | None) -> bytes:
    items = list(items)
    if len(items) > MAX_BATCH_ITEMS:
        raise ValueError(
            f"a batch holds at most {MAX_BATCH_ITEMS} items, got {len(items)}; "
            "split it, or use UpsertQueue"
        )
    for index, item in enumerate(items):
        if not isinstance(item, SpanItem):
            raise TypeError(f"items[{index}] is a {type(item).__name__}, expected SpanItem")
    return encode_items_body([encode_item(item, redact) for item in items])
