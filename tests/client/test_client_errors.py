"""Precise HTTP mapping and retry policy of the client, with ``httpx.MockTransport``.

The behaviour against the real local server is in ``test_client.py`` and
``test_client_http.py``; here are the cases a server does not produce on demand: exact
headers and bodies, 3xx, malformed answers, transport exceptions, attempt accounting.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import httpx
import orjson
import pytest

from sgp_client import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AsyncSGPClient,
    AuthenticationError,
    Backoff,
    BadRequestError,
    ClientClosedError,
    ConflictError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RequestTooLargeError,
    SGPError,
    SpanItem,
    UnprocessableEntityError,
)
from tests._helpers import FAST_BACKOFF, span_item, span_json

KEY = "sk-mock-0123456789abcdefSECRET"
ACCOUNT = "acct-mock"
BASE = "http://127.0.0.1:9/public"

Handler = (
    Callable[[httpx.Request], httpx.Response]
    | Callable[[httpx.Request], Coroutine[None, None, httpx.Response]]
)


class Recorder:
    """A MockTransport handler answering from a script, recording every request."""

    def __init__(self, *responses: httpx.Response | Exception) -> None:
        self.script = list(responses)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        step = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(step, Exception):
            raise step
        return step


def make_client(handler: Handler, **kwargs: Any) -> AsyncSGPClient:
    settings: dict[str, Any] = {
        "api_key": KEY,
        "account_id": ACCOUNT,
        "base_url": BASE,
        "transport": httpx.MockTransport(handler),
        "backoff": FAST_BACKOFF,
    }
    settings.update(kwargs)
    return AsyncSGPClient(**settings)


def ok_list(*ids: str) -> httpx.Response:
    return httpx.Response(200, json={"items": [span_json(i) for i in ids], "object": "list"})


def error(status: int, detail: Any = "nope", **headers: str) -> httpx.Response:
    return httpx.Response(status, json={"detail": detail}, headers=headers)


def item(span_id: str = "s1") -> SpanItem:
    return span_item("n", trace_id="t1", id=span_id)


# -- requests ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_upsert_batch_request_shape() -> None:
    recorder = Recorder(ok_list("a", "b"))
    async with make_client(recorder) as client:
        stored = await client.spans.upsert_batch([item("a"), item("b")])
    assert [s.id for s in stored] == ["a", "b"]
    [request] = recorder.requests
    assert request.method == "PUT"
    assert str(request.url) == f"{BASE}/v5/spans/batch"
    assert request.headers["x-api-key"] == KEY
    assert request.headers["x-selected-account-id"] == ACCOUNT
    assert request.headers["content-type"] == "application/json"
    body = orjson.loads(request.content)
    assert [i["id"] for i in body["items"]] == ["a", "b"]
    assert body["items"][0]["start_timestamp"] == "2025-03-01T12:00:00+00:00"


@pytest.mark.anyio
async def test_other_endpoints_request_shapes() -> None:
    recorder = Recorder(ok_list("a"))
    async with make_client(recorder) as client:
        await client.spans.batch([item("a")])
        recorder.script = [httpx.Response(200, json=span_json("a"))]
        created = await client.spans.create(item("a"))
        fetched = await client.spans.get("a")
    assert created.id == fetched.id == "a"
    assert [(r.method, r.url.path) for r in recorder.requests] == [
        ("POST", "/public/v5/spans/batch"),
        ("POST", "/public/v5/spans"),
        ("GET", "/public/v5/spans/a"),
    ]
    assert orjson.loads(recorder.requests[1].content)["id"] == "a"
    assert all(r.headers["x-api-key"] == KEY for r in recorder.requests)


@pytest.mark.anyio
async def test_get_quotes_the_id() -> None:
    recorder = Recorder(httpx.Response(200, json=span_json("a?b#c d%")))
    async with make_client(recorder) as client:
        await client.spans.get("a?b#c d%")
    [request] = recorder.requests
    assert request.url.raw_path == b"/public/v5/spans/a%3Fb%23c%20d%25"
    assert not request.url.query


@pytest.mark.anyio
@pytest.mark.parametrize("span_id", ["", "a/b", None, 5])
async def test_get_refuses_unusable_ids(span_id: Any) -> None:
    recorder = Recorder(ok_list())
    async with make_client(recorder) as client:
        with pytest.raises(ValueError, match="invalid span id"):
            await client.spans.get(span_id)
    assert recorder.requests == []


@pytest.mark.anyio
async def test_more_than_1000_items_refused_before_any_io() -> None:
    recorder = Recorder(ok_list())
    async with make_client(recorder) as client:
        items = [item(str(i)) for i in range(1001)]
        with pytest.raises(ValueError, match="at most 1000"):
            await client.spans.upsert_batch(items)
        with pytest.raises(ValueError, match="at most 1000"):
            await client.spans.batch(iter(items))  # any iterable, even a one-shot one
        assert recorder.requests == []
        await client.spans.upsert_batch(items[:1000])
    assert len(orjson.loads(recorder.requests[0].content)["items"]) == 1000


@pytest.mark.anyio
async def test_non_items_refused_before_any_io() -> None:
    recorder = Recorder(ok_list())
    async with make_client(recorder) as client:
        with pytest.raises(TypeError, match=r"items\[1\] is a dict"):
            await client.spans.upsert_batch([item(), {"id": "x"}])  # type: ignore[list-item]
        with pytest.raises(TypeError, match="expected SpanItem"):
            await client.spans.create({"id": "x"})  # type: ignore[arg-type]
    assert recorder.requests == []


# -- status mapping ---------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (403, PermissionDeniedError),
        (404, NotFoundError),
        (409, ConflictError),
        (413, RequestTooLargeError),
        (422, UnprocessableEntityError),
        (429, RateLimitError),
        (500, InternalServerError),
        (502, InternalServerError),
        (503, InternalServerError),
        (504, InternalServerError),
        (418, APIStatusError),
    ],
)
async def test_status_mapping(status: int, cls: type[APIStatusError]) -> None:
    recorder = Recorder(error(status, "what went wrong", **{"x-request-id": "req-42"}))
    async with make_client(recorder, max_retries=0) as client:
        with pytest.raises(APIStatusError) as info:
            await client.spans.upsert_batch([item()])
    exc = info.value
    assert type(exc) is cls
    assert isinstance(exc, APIError)
    assert isinstance(exc, SGPError)
    assert exc.status_code == status
    assert exc.detail == "what went wrong"
    assert exc.request_id == "req-42"
    assert exc.method == "PUT"
    assert exc.url == f"{BASE}/v5/spans/batch"
    assert str(status) in str(exc)
    assert "what went wrong" in str(exc)
    assert "req-42" in str(exc)
    assert KEY not in str(exc)
    assert KEY not in repr(exc)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("response", "detail"),
    [
        (
            httpx.Response(422, json={"detail": [{"loc": ["x"], "msg": "bad"}]}),
            [{"loc": ["x"], "msg": "bad"}],
        ),
        (httpx.Response(400, json={"error": "other shape"}), {"error": "other shape"}),
        (httpx.Response(400, json=["a list"]), ["a list"]),
        (httpx.Response(502, text="<html>Bad Gateway</html>"), "<html>Bad Gateway</html>"),
        (httpx.Response(503), "Service Unavailable"),
    ],
)
async def test_status_detail_shapes(response: httpx.Response, detail: Any) -> None:
    async with make_client(Recorder(response), max_retries=0) as client:
        with pytest.raises(APIStatusError) as info:
            await client.spans.get("s1")
    assert info.value.detail == detail
    assert info.value.request_id is None


@pytest.mark.anyio
async def test_key_echoed_by_the_server_is_masked() -> None:
    echo = httpx.Response(
        403, json={"detail": {"message": f"key {KEY} is not valid", "keys": [KEY]}}
    )
    async with make_client(Recorder(echo), max_retries=0) as client:
        with pytest.raises(PermissionDeniedError) as info:
            await client.spans.get("s1")
    assert KEY not in str(info.value)
    assert KEY not in repr(info.value.detail)
    assert info.value.detail == {"message": "key *** is not valid", "keys": ["***"]}


@pytest.mark.anyio
async def test_transport_error_quoting_the_key_is_masked() -> None:
    failure = httpx.LocalProtocolError(f"Illegal header value b'{KEY}'")
    async with make_client(Recorder(failure), max_retries=0) as client:
        with pytest.raises(APIConnectionError) as info:
            await client.spans.get("s1")
    assert KEY not in str(info.value)
    assert "LocalProtocolError" in str(info.value)


@pytest.mark.anyio
async def test_redirects_are_not_followed() -> None:
    moved = httpx.Response(307, headers={"location": "https://elsewhere.example.com/steal"})
    recorder = Recorder(moved)
    async with make_client(recorder) as client:
        with pytest.raises(APIStatusError) as info:
            await client.spans.get("s1")
    assert info.value.status_code == 307
    assert [r.url.host for r in recorder.requests] == ["127.0.0.1"]


@pytest.mark.anyio
async def test_redirects_are_not_followed_on_a_callers_http_client() -> None:
    recorder = Recorder(httpx.Response(302, headers={"location": "https://elsewhere.example.com/"}))
    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(recorder), follow_redirects=True) as http,
        AsyncSGPClient(api_key=KEY, account_id=ACCOUNT, base_url=BASE, http_client=http) as client,
    ):
        with pytest.raises(APIStatusError):
            await client.spans.get("s1")
    assert len(recorder.requests) == 1


@pytest.mark.anyio
@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, text="<html>a captive portal</html>"),
        httpx.Response(200, json={"unexpected": "shape"}),
        httpx.Response(200, json={"items": [{"id": "no other fields"}]}),
    ],
)
async def test_malformed_answers_are_api_errors(response: httpx.Response) -> None:
    async with make_client(Recorder(response)) as client:
        with pytest.raises(APIError) as info:
            await client.spans.upsert_batch([item()])
    assert not isinstance(info.value, APIStatusError)
    assert "/v5/spans/batch" in str(info.value)


# -- retries ----------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("status", [429, 502, 503, 504])
async def test_transient_statuses_retried_then_succeed(status: int) -> None:
    recorder = Recorder(error(status), error(status), ok_list("a"))
    async with make_client(recorder, max_retries=2) as client:
        stored = await client.spans.upsert_batch([item("a")])
    assert [s.id for s in stored] == ["a"]
    assert len(recorder.requests) == 3


@pytest.mark.anyio
@pytest.mark.parametrize("max_retries", [0, 1, 3])
async def test_retries_bounded_by_max_retries(max_retries: int) -> None:
    recorder = Recorder(error(503))
    async with make_client(recorder, max_retries=max_retries) as client:
        with pytest.raises(InternalServerError):
            await client.spans.upsert_batch([item()])
    assert len(recorder.requests) == max_retries + 1


@pytest.mark.anyio
@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 413, 422, 501])
async def test_permanent_statuses_never_retried(status: int) -> None:
    recorder = Recorder(error(status), ok_list("a"))
    async with make_client(recorder, max_retries=5) as client:
        with pytest.raises(APIStatusError):
            await client.spans.upsert_batch([item()])
    assert len(recorder.requests) == 1


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("failure", "cls"),
    [
        (httpx.ConnectError("refused"), APIConnectionError),
        (httpx.RemoteProtocolError("Server disconnected"), APIConnectionError),
        (httpx.ReadError("reset"), APIConnectionError),
        (httpx.ReadTimeout("slow"), APITimeoutError),
        (httpx.ConnectTimeout("slow"), APITimeoutError),
    ],
)
async def test_transport_failures_retried_then_translated(
    failure: httpx.TransportError, cls: type[APIConnectionError]
) -> None:
    recorder = Recorder(failure)
    async with make_client(recorder, max_retries=2) as client:
        with pytest.raises(APIConnectionError) as info:
            await client.spans.get("s1")
    assert type(info.value) is cls
    assert info.value.__cause__ is failure
    assert len(recorder.requests) == 3


@pytest.mark.anyio
async def test_transport_failure_then_success() -> None:
    recorder = Recorder(httpx.ConnectError("refused"), httpx.ReadTimeout("t"), ok_list("a"))
    async with make_client(recorder, max_retries=2) as client:
        assert [s.id for s in await client.spans.upsert_batch([item("a")])] == ["a"]


@pytest.mark.anyio
async def test_per_call_max_retries_override() -> None:
    recorder = Recorder(error(503))
    async with make_client(recorder, max_retries=4) as client:
        with pytest.raises(InternalServerError):
            await client.request("GET", "/v5/spans/x", max_retries=0)
    assert len(recorder.requests) == 1


@pytest.mark.anyio
async def test_backoff_attempts_grow() -> None:
    attempts: list[tuple[int, float | None]] = []

    class Recording(Backoff):
        def delay(self, attempt: int, retry_after: float | None = None) -> float:
            attempts.append((attempt, retry_after))
            return 0.0

    recorder = Recorder(error(503), error(502), error(429, **{"retry-after": "2"}), ok_list())
    async with make_client(recorder, max_retries=3, backoff=Recording()) as client:
        await client.spans.upsert_batch([])
    assert attempts == [(0, None), (1, None), (2, 2.0)]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("headers", "asked"),
    [({"retry-after": "0.3"}, 0.3), ({"retry-after-ms": "300"}, 0.3)],
)
async def test_retry_after_honoured(headers: dict[str, str], asked: float) -> None:
    recorder = Recorder(error(503, **headers), ok_list())
    async with make_client(recorder, max_retries=1) as client:
        started = anyio.current_time()
        await client.spans.upsert_batch([])
        waited = anyio.current_time() - started
    assert len(recorder.requests) == 2
    assert waited >= asked


@pytest.mark.anyio
async def test_retry_after_is_exposed_and_capped() -> None:
    recorder = Recorder(error(429, **{"retry-after": "3600"}))
    backoff = Backoff(max_retry_after=7.0)
    async with make_client(recorder, max_retries=0, backoff=backoff) as client:
        with pytest.raises(RateLimitError) as info:
            await client.spans.get("s1")
    assert info.value.retry_after == 7.0


@pytest.mark.anyio
async def test_retry_after_beyond_the_deadline_gives_up_at_once() -> None:
    recorder = Recorder(error(503, **{"retry-after": "30"}), ok_list())
    async with make_client(recorder, max_retries=5, call_timeout=1.0) as client:
        with anyio.fail_after(20):  # it must not sleep the 30 s it was asked to
            with pytest.raises(InternalServerError) as info:
                await client.spans.upsert_batch([])
    assert info.value.retry_after == 30.0
    assert len(recorder.requests) == 1


# -- search -----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_search_follows_cursors() -> None:
    pages = [
        httpx.Response(200, json={"items": [span_json("a"), span_json("b")], "has_more": True}),
        httpx.Response(
            200, json={"items": [span_json("c")], "has_more": True, "next_cursor": "cur-2"}
        ),
        httpx.Response(200, json={"items": [span_json("d")], "has_more": False}),
    ]
    recorder = Recorder(*pages)
    async with make_client(recorder) as client:
        found = [s.id async for s in client.spans.search(trace_ids=["t1"], page_size=2)]
    assert found == ["a", "b", "c", "d"]
    params = [dict(r.url.params) for r in recorder.requests]
    assert params == [
        {"limit": "2"},
        {"limit": "2", "starting_after": "b"},
        {"limit": "2", "starting_after": "cur-2"},
    ]
    assert all(orjson.loads(r.content) == {"trace_ids": ["t1"]} for r in recorder.requests)


@pytest.mark.anyio
async def test_search_body_and_query() -> None:
    recorder = Recorder(httpx.Response(200, json={"items": [], "has_more": False}))
    async with make_client(recorder) as client:
        iterator = client.spans.search(
            trace_ids=("t1", "t2"),
            names=["n"],
            group_id="g",
            parents_only=True,
            sort_order="desc",
            sort_by="created_at",
            statuses=["ERROR"],
        )
        assert recorder.requests == []  # nothing is sent before iteration
        assert [s async for s in iterator] == []
    [request] = recorder.requests
    assert (request.method, request.url.path) == ("POST", "/public/v5/spans/search")
    assert dict(request.url.params) == {
        "limit": "100",
        "sort_order": "desc",
        "sort_by": "created_at",
    }
    assert orjson.loads(request.content) == {
        "trace_ids": ["t1", "t2"],
        "names": ["n"],
        "group_id": "g",
        "parents_only": True,
        "statuses": ["ERROR"],
    }


@pytest.mark.anyio
async def test_search_argument_checks() -> None:
    async with make_client(Recorder(ok_list())) as client:
        with pytest.raises(ValueError, match="page_size"):
            client.spans.search(page_size=0)
        with pytest.raises(ValueError, match="page_size"):
            client.spans.search(page_size=1001)
        with pytest.raises(TypeError, match="trace_ids"):
            client.spans.search(trace_ids="t1")


@pytest.mark.anyio
async def test_leaving_a_search_early_needs_no_cleanup() -> None:
    # An async generator left unfinished warns when collected (on trio); -W error makes that
    # fail the test, so this proves the iterator needs no aclose().
    page = httpx.Response(200, json={"items": [span_json("a"), span_json("b")], "has_more": True})
    recorder = Recorder(page)
    async with make_client(recorder) as client:
        async for span in client.spans.search(trace_ids=["t1"]):
            assert span.id == "a"
            break
        gc.collect()
        await anyio.lowlevel.checkpoint()
    assert len(recorder.requests) == 1


# -- lifecycle ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_use_after_close_raises() -> None:
    recorder = Recorder(ok_list())
    client = make_client(recorder)
    async with client:
        await client.spans.upsert_batch([])
    assert client.closed
    await client.aclose()  # idempotent
    with pytest.raises(ClientClosedError, match="closed"):
        await client.spans.upsert_batch([])
    with pytest.raises(ClientClosedError):
        await client.spans.get("s1")
    with pytest.raises(ClientClosedError):
        async for _ in client.spans.search():
            pass
    with pytest.raises(ClientClosedError):
        async with client:
            pass
    assert len(recorder.requests) == 1


@pytest.mark.anyio
async def test_a_callers_http_client_is_left_open() -> None:
    async with httpx.AsyncClient(transport=httpx.MockTransport(Recorder(ok_list()))) as http:
        async with AsyncSGPClient(
            api_key=KEY, account_id=ACCOUNT, base_url=BASE, http_client=http
        ) as client:
            await client.spans.upsert_batch([])
        assert client.closed
        assert not http.is_closed
        await http.get("http://127.0.0.1:9/still-usable")


@pytest.mark.anyio
async def test_own_http_client_is_closed() -> None:
    client = make_client(Recorder(ok_list()))
    await client.aclose()
    assert client._http.is_closed
