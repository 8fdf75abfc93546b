"""The local SGP-compatible server as a Starlette ASGI app: `create_app` and its control object.

Routes under the prefix (default ``/public``) implement the spans endpoints of the API doc
(authenticated, fault-injected, counted). Routes under ``/_admin`` (no auth, no faults) let
tests and benchmarks switch faults, read counters and stored spans, and reset the server.

In-process code controls the app through `get_control(app)` (also ``app.state.sgp``), a
`ServerControl` with `faults`, `set_faults()`, `stats()`, `reset()` and the `store`.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import anyio
import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ._faults import Counters, Decision, FaultInjector, Faults
from ._masking import mask_items
from ._search import parse_search
from ._spans import ApiError, parse_json, prepare_items
from ._store import SpanStore, StoreKind

__all__ = [
    "DEFAULT_ACCOUNT_ID",
    "DEFAULT_API_KEY",
    "DEFAULT_MAX_BODY_BYTES",
    "ConnectionDropped",
    "ServerControl",
    "create_app",
    "get_control",
]

DEFAULT_API_KEY = "sgp-local-dev-key"
DEFAULT_ACCOUNT_ID = "sgp-local-account"
#: The largest request body the server reads: 1000 spans of 32 KiB each fit, with room.
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024

# Set by the CLI's uvicorn protocol: aborts the TCP connection, so "drop" faults look like a
# real network failure (no bytes at all) instead of an error response.
ABORT_SCOPE_KEY = "sgp.abort_connection"
_ACCOUNT_SCOPE_KEY = "sgp.account_id"

_JSON = b"application/json"


class ConnectionDropped(Exception):
    """Raised by the app for a "drop" fault when it cannot abort the transport itself.

    `asgi_transport` turns it into `httpx.RemoteProtocolError`; under another ASGI server the
    response has already started, so the server closes the connection mid-response.
    """


class ServerControl:
    """Programmatic control of one app: faults, counters and the span store."""

    def __init__(
        self,
        *,
        store: SpanStore,
        api_keys: Mapping[str, str],
        prefix: str,
        faults: Faults | None = None,
        mask_credentials: bool = True,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        if max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be >= 1, got {max_body_bytes!r}")
        self._store = store
        #: The largest request body read; larger ones answer 413 (see `read_body`).
        self.max_body_bytes = max_body_bytes
        #: Mask credential-shaped values before storing, as the real API does (see _masking).
        self.mask_credentials = mask_credentials
        self.prefix = prefix
        self._api_keys = dict(api_keys)
        self._injector = FaultInjector(faults)
        self.counters = Counters()
        self.created_by: dict[str, Any] = {
            "id": "sgp-local-identity",
            "type": "service_account",
            "object": "identity",
        }

    def __repr__(self) -> str:
        # Never show the keys themselves.
        return (
            f"ServerControl(store={self.store!r}, prefix={self.prefix!r}, "
            f"api_keys=<{len(self._api_keys)} keys>, faults={self.faults!r})"
        )

    @property
    def store(self) -> SpanStore:
        return self._store

    @store.setter
    def store(self, store: SpanStore) -> None:
        """Replace the store; the old one is closed (its connection would leak otherwise)."""
        old, self._store = self._store, store
        if old is not store:
            old.close()

    @property
    def injector(self) -> FaultInjector:
        return self._injector

    @property
    def faults(self) -> Faults:
        """The active faults; assigning activates new ones (outage windows start then)."""
        return self._injector.faults

    @faults.setter
    def faults(self, faults: Faults) -> None:
        self._injector.set(faults)

    def set_faults(self, **settings: Any) -> Faults:
        """Replace the faults with `Faults(**settings)` (unset ones off); returns them."""
        faults = Faults.from_dict(settings)
        self._injector.set(faults)
        return faults

    def update_faults(self, **changes: Any) -> Faults:
        """Merge `changes` into the active faults; returns the result."""
        faults = self.faults.merged(changes)
        self._injector.set(faults)
        return faults

    def clear_faults(self) -> None:
        self._injector.set(Faults())

    def stats(self) -> dict[str, Any]:
        """Counters as served by ``GET /_admin/stats`` (with ``store``: the store's kind)."""
        return {**self.counters.snapshot(items_stored=self.store.count()), "store": self.store.kind}

    def reset(self) -> None:
        """Forget spans, counters and faults."""
        self.store.clear()
        self.counters = Counters()
        self.clear_faults()

    def close(self) -> None:
        """Close the store's database connection (the app cannot serve spans afterwards).

        Called on the app's lifespan shutdown; in-process tests (no lifespan) call it."""
        self.store.close()

    def account_for(self, api_key: str) -> str | None:
        return self._api_keys.get(api_key)


def get_control(app: Starlette) -> ServerControl:
    """The `ServerControl` of an app made by `create_app` (typed access to ``app.state.sgp``)."""
    control = app.state.sgp
    assert isinstance(control, ServerControl)
    return control


# -- raw ASGI responses (used by the gate, outside Starlette's routing) --------------------


async def _send_json(
    send: Send, status: int, payload: Any, headers: Mapping[str, str] | None = None
) -> None:
    body = orjson.dumps(payload)
    raw_headers = [(b"content-type", _JSON), (b"content-length", str(len(body)).encode())]
    for name, value in (headers or {}).items():
        raw_headers.append((name.encode("latin-1"), value.encode("latin-1")))
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _endpoint_name(method: str, path: str) -> str:
    if path == "/v5/spans/batch":
        return "upsert_batch" if method == "PUT" else "create_batch"
    if path == "/v5/spans":
        return "create"
    if path == "/v5/spans/search":
        return "search"
    if path.startswith("/v5/spans/"):
        return "update" if method == "PATCH" else "get"
    return "other"


class _Gate:
    """ASGI middleware: request ids, counters, faults and auth for the API routes.

    Raw ASGI rather than BaseHTTPMiddleware, which would buffer bodies and cost throughput.
    """

    def __init__(self, app: ASGIApp, control: ServerControl, api: _Api) -> None:
        self.app = app
        self.control = control
        self.api = api
        self._batch_path = f"{control.prefix}/v5/spans/batch"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex.encode()
        control = self.control
        prefix = control.prefix
        path: str = scope["path"]
        is_api = path.startswith(prefix) and path[len(prefix) : len(prefix) + 1] == "/"
        counters = control.counters

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", request_id)]
                if is_api:
                    counters.count_status(message["status"])
            await send(message)

        if not is_api:
            await self.app(scope, receive, send_with_id)
            return

        counters.requests += 1
        name = _endpoint_name(scope["method"], path[len(prefix) :])
        counters.by_endpoint[name] = counters.by_endpoint.get(name, 0) + 1
        counters.in_flight += 1
        counters.max_concurrent = max(counters.max_concurrent, counters.in_flight)
        try:
            await self._serve(scope, receive, send_with_id)
        finally:
            counters.in_flight -= 1

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        control = self.control
        injector = control.injector
        counters = control.counters
        faults = injector.faults
        decision = injector.decide()
        if decision is Decision.HANG:
            counters.count_fault("hang")
            # Never answer; return once the client goes away (or get cancelled on shutdown).
            await _wait_disconnect(receive)
            return
        retry = {"retry-after": faults.retry_after} if faults.retry_after is not None else {}
        if decision is Decision.OUTAGE_503:
            counters.count_fault("outage")
            await _send_json(send, 503, {"detail": "Service unavailable (outage)"}, retry)
            return
        if decision is Decision.OUTAGE_DROP:
            counters.count_fault("outage")
            await self._drop(scope, receive, send)
            return
        delay = injector.latency()
        if delay > 0:
            counters.count_fault("latency")
            await anyio.sleep(delay)
        if decision is Decision.DROP:
            counters.count_fault("drop")
            await self._drop(scope, receive, send)
            return
        if decision is Decision.STATUS:
            counters.count_fault(str(faults.status_code))
            detail = "Too many requests" if faults.status_code == 429 else "Injected failure"
            await _send_json(send, faults.status_code, {"detail": detail}, retry)
            return
        api_key: str | None = None
        account: str | None = None
        for header, value in scope["headers"]:
            if header == b"x-api-key":
                api_key = value.decode("latin-1")
            elif header == b"x-selected-account-id":
                account = value.decode("latin-1")
        if api_key is None:
            await _send_json(send, 401, {"detail": "Missing x-api-key header"})
            return
        key_account = control.account_for(api_key)
        if key_account is None:
            await _send_json(send, 403, {"detail": "Invalid API key"})
            return
        if account is None:
            await _send_json(send, 401, {"detail": "Missing x-selected-account-id header"})
            return
        if account != key_account:
            await _send_json(send, 403, {"detail": "API key has no access to this account"})
            return
        scope[_ACCOUNT_SCOPE_KEY] = account
        method = scope["method"]
        if scope["path"] == self._batch_path and method in ("PUT", "POST"):
            # The hot endpoint, served as raw ASGI: no routing, Request or Response objects.
            await self.api.raw_batch(scope, receive, send, replace=method == "PUT")
            return
        await self.app(scope, receive, send)

    @staticmethod
    async def _drop(scope: Scope, receive: Receive, send: Send) -> None:
        abort = scope.get(ABORT_SCOPE_KEY)
        if abort is not None:
            abort()
            # Returning once the server has seen the disconnect keeps it from answering 500.
            await _wait_disconnect(receive)
            return
        # No transport to abort: start a response that can never complete, then fail, so a
        # server closes the connection mid-response (asgi_transport maps this to an error).
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [(b"content-length", b"1000")],
            }
        )
        raise ConnectionDropped


# -- endpoints -------------------------------------------------------------------------------


def _json_response(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json")


def _list_body(spans: list[bytes]) -> bytes:
    """``{"items": [...], "object": "list"}`` around already-encoded spans, copying them once."""
    if not spans:
        return b'{"items":[],"object":"list"}'
    parts = list(spans)
    parts[0] = b'{"items":[' + parts[0]
    parts[-1] = parts[-1] + b'],"object":"list"}'
    return b",".join(parts)


def _batch_items(payload: Any) -> Any:
    if type(payload) is not dict or "items" not in payload:
        raise ApiError(422, "body: must be an object with an 'items' list")
    return payload["items"]


def _too_large(counters: Counters, limit: int) -> ApiError:
    counters.count_fault("413")
    # Closing the connection: what the client still sends is never read, nor buffered.
    return ApiError(413, f"Request body larger than {limit} bytes", {"connection": "close"})


async def read_body(control: ServerControl, scope: Scope, receive: Receive) -> bytes:
    """The whole request body, never more than the app's `max_body_bytes` (nor the fault's,
    when lower) in memory: a declared larger body answers 413 before a byte of it is read,
    and a streamed (chunked) one as soon as it grows past the limit. Raises
    `ClientDisconnect` if the client goes away first."""
    fault_limit = control.faults.max_body_bytes
    limit = (
        control.max_body_bytes if fault_limit is None else min(fault_limit, control.max_body_bytes)
    )
    counters = control.counters
    for header, value in scope["headers"]:
        # The ASGI server has checked that content-length is a number.
        if header == b"content-length" and value.isdigit() and int(value) > limit:
            raise _too_large(counters, limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientDisconnect
        chunk: bytes = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise _too_large(counters, limit)
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    counters.bytes_received += size
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class _Api:
    """The spans endpoints; one instance per app, bound to its control object."""

    def __init__(self, control: ServerControl) -> None:
        self.control = control

    async def _body(self, request: Request) -> bytes:
        return await read_body(self.control, request.scope, request.receive)

    def _store_items(
        self, account_id: str, body: bytes, items: Any, dirty: bool, *, replace: bool
    ) -> list[bytes]:
        """Validate, mask and store the `items` parsed from `body`; the stored spans."""
        control = self.control
        if type(items) is list:
            control.counters.items_received += len(items)
        if control.mask_credentials:
            control.counters.masked += mask_items(body, items)
        store = control.store
        rows, history = prepare_items(
            items,
            dirty=dirty,
            account_id=account_id,
            created_by=control.created_by,
            traces_of=store.traces_of,
            kind=store.kind,
        )
        stored, reopened = store.write(rows, replace=replace, history=history)
        control.counters.reopened += reopened
        return stored

    async def raw_batch(self, scope: Scope, receive: Receive, send: Send, *, replace: bool) -> None:
        """``PUT`` (upsert) or ``POST`` (insert, keeping stored spans) ``/v5/spans/batch``."""
        if replace:
            self.control.counters.upsert_requests += 1
        try:
            body = await read_body(self.control, scope, receive)
            payload, dirty = parse_json(body)
            account_id: str = scope[_ACCOUNT_SCOPE_KEY]
            answer = _list_body(
                self._store_items(account_id, body, _batch_items(payload), dirty, replace=replace)
            )
        except ApiError as exc:
            await _send_json(send, exc.status, {"detail": exc.detail}, exc.headers)
            return
        except ClientDisconnect:
            return
        headers = [(b"content-type", _JSON), (b"content-length", str(len(answer)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": answer})

    async def create(self, request: Request) -> Response:
        body = await self._body(request)
        payload, dirty = parse_json(body)
        account_id: str = request.scope[_ACCOUNT_SCOPE_KEY]
        try:
            [stored] = self._store_items(account_id, body, [payload], dirty, replace=False)
        except ApiError as exc:
            if isinstance(exc.detail, str) and exc.detail.startswith("items[0]"):
                exc.detail = exc.detail.replace("items[0].", "", 1)
            raise
        return Response(stored, media_type="application/json")

    async def update(self, request: Request) -> Response:
        """``PATCH /v5/spans/{id}``: the real API answers 501 once an account dual-writes to
        the tracing service (which has no partial update). This server models such an
        account, whichever store it runs: use ``PUT /v5/spans/batch``."""
        raise ApiError(
            501,
            "PATCH /v5/spans/{span_id} is not available once an account writes to the "
            "tracing service; upsert with PUT /v5/spans/batch instead",
        )

    async def get(self, request: Request) -> Response:
        span_id: str = request.path_params["span_id"]
        data = self.control.store.get_data(request.scope[_ACCOUNT_SCOPE_KEY], span_id)
        if data is None:
            raise ApiError(404, f"Span {span_id!r} not found")
        return Response(data, media_type="application/json")

    async def search(self, request: Request) -> Response:
        body = await self._body(request)
        filters, _ = parse_json(body) if body.strip() else ({}, False)
        store = self.control.store
        search = parse_search(
            request.scope[_ACCOUNT_SCOPE_KEY], store.kind, filters, request.query_params
        )
        spans, has_more = store.search(
            search.query,
            limit=search.limit,
            sort_by=search.sort_by,
            descending=search.descending,
            starting_after=search.starting_after,
            ending_before=search.ending_before,
        )
        body = (
            b'{"items":['
            + b",".join(spans)
            + b'],"has_more":'
            + (b"true" if has_more else b"false")
            + b',"object":"list","limit":'
            + str(search.limit).encode()
            + b"}"
        )
        return Response(body, media_type="application/json")


# -- admin ------------------------------------------------------------------------------------


class _Admin:
    def __init__(self, control: ServerControl) -> None:
        self.control = control

    async def health(self, request: Request) -> Response:
        return _json_response({"status": "ok"})

    async def faults(self, request: Request) -> Response:
        control = self.control
        if request.method in ("PUT", "PATCH"):
            changes, _ = parse_json(await read_body(control, request.scope, request.receive))
            if type(changes) is not dict:
                raise ApiError(422, "body: must be a JSON object")
            try:
                if request.method == "PUT":
                    control.set_faults(**changes)
                else:
                    control.update_faults(**changes)
            except (TypeError, ValueError) as exc:
                raise ApiError(422, str(exc)) from None
        return _json_response(control.faults.to_dict())

    async def stats(self, request: Request) -> Response:
        return _json_response(self.control.stats())

    async def reset(self, request: Request) -> Response:
        self.control.reset()
        return _json_response({"status": "reset"})

    async def spans(self, request: Request) -> Response:
        params = request.query_params
        spans = self.control.store.all_spans(
            trace_id=params.get("trace_id"),
            account_id=params.get("account_id"),
            span_id=params.get("span_id"),
        )
        return _json_response({"items": spans, "count": len(spans)})

    async def count(self, request: Request) -> Response:
        params = request.query_params
        n = self.control.store.count(
            trace_id=params.get("trace_id"), account_id=params.get("account_id")
        )
        return _json_response({"count": n})


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    response = _json_response({"detail": exc.detail}, exc.status)
    response.headers.update(exc.headers)
    return response


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return Response(
        orjson.dumps({"detail": exc.detail}),
        status_code=exc.status_code,
        headers=exc.headers,
        media_type="application/json",
    )


def create_app(
    *,
    db: str = ":memory:",
    store: StoreKind = "tracing",
    api_keys: Mapping[str, str] | None = None,
    prefix: str = "/public",
    faults: Faults | None = None,
    mask_credentials: bool = True,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> Starlette:
    """A new server app with its own store (`db`: SQLite file path or ``":memory:"``).

    `store` picks the upsert rule of one of SGP's two stores: ``"tracing"`` (the tracing
    service: keyed by trace, id and day, a completed span beats an in-progress one) or
    ``"legacy"`` (keyed by id alone, the last write wins, so a late in-progress write reopens
    a completed span). Both count such late writes as ``reopened`` in the stats.

    `api_keys` maps each accepted API key to the account id it may select (default
    ``{DEFAULT_API_KEY: DEFAULT_ACCOUNT_ID}``). `prefix` is where the API lives (``/public``
    like the official SDK's local environment; ``""`` for none). Control the app through
    `get_control(app)`.
    """
    prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
    control = ServerControl(
        store=SpanStore(db, kind=store),
        api_keys=api_keys if api_keys is not None else {DEFAULT_API_KEY: DEFAULT_ACCOUNT_ID},
        prefix=prefix,
        faults=faults,
        mask_credentials=mask_credentials,
        max_body_bytes=max_body_bytes,
    )
    api = _Api(control)
    admin = _Admin(control)
    routes = [
        Route(f"{prefix}/v5/spans/search", api.search, methods=["POST"]),
        Route(f"{prefix}/v5/spans", api.create, methods=["POST"]),
        Route(f"{prefix}/v5/spans/{{span_id:path}}", api.get, methods=["GET"]),
        Route(f"{prefix}/v5/spans/{{span_id:path}}", api.update, methods=["PATCH"]),
        Route("/_admin/health", admin.health, methods=["GET"]),
        Route("/_admin/faults", admin.faults, methods=["GET", "PUT", "PATCH"]),
        Route("/_admin/stats", admin.stats, methods=["GET"]),
        Route("/_admin/reset", admin.reset, methods=["POST"]),
        Route("/_admin/spans", admin.spans, methods=["GET"]),
        Route("/_admin/count", admin.count, methods=["GET"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            control.close()

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[Middleware(_Gate, control=control, api=api)],
        exception_handlers={ApiError: _api_error, HTTPException: _http_error},
    )
    app.state.sgp = control
    return app
