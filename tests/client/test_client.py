"""``AsyncSGPClient`` against the real local server, in-process (``asgi_transport``).

Round trips of every endpoint, every error status the server produces mapped to its exception
class, retries under injected faults, the call deadline, and API-key hygiene in logs.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

import anyio
import httpx
import pytest
from starlette.applications import Starlette

from sgp_client import (
    MAX_BATCH_ITEMS,
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AsyncSGPClient,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RequestTooLargeError,
    Span,
    SpanItem,
    UnprocessableEntityError,
)
from sgp_client.testing import (
    DEFAULT_ACCOUNT_ID,
    DEFAULT_API_KEY,
    ServerControl,
    asgi_transport,
)
from tests._helpers import START
from tests._helpers import in_process_client as other_client
from tests._helpers import span_item as span

# -- round trips ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_upsert_then_get(client: AsyncSGPClient, control: ServerControl) -> None:
    root = span("root", input={"question": "why?"}, metadata={"user": "u1"}, type="AGENT_WORKFLOW")
    child = span("llm", parent_id=root.id, type="COMPLETION", input={"prompt": "p"})
    stored = await client.spans.upsert_batch([root, child])
    assert [s.id for s in stored] == [root.id, child.id]
    assert all(isinstance(s, Span) for s in stored)
    assert stored[0].account_id == DEFAULT_ACCOUNT_ID
    assert stored[0].object == "span"
    assert stored[0].created_by is not None

    fetched = await client.spans.get(child.id)
    assert fetched.trace_id == "trace-1"
    assert fetched.parent_id == root.id
    assert fetched.name == "llm"
    assert fetched.type == "COMPLETION"
    assert fetched.input == {"prompt": "p"}
    assert fetched.start_timestamp == START
    assert not fetched.completed
    assert control.stats()["items_stored"] == 2


@pytest.mark.anyio
async def test_upsert_completes_an_open_span(client: AsyncSGPClient) -> None:
    opened = span("tool", input={"x": 1})
    await client.spans.upsert_batch([opened])
    end = START + timedelta(seconds=3)
    closed = span("tool", id=opened.id, input={"x": 1}, output={"y": 2}, end_timestamp=end,
                  status="SUCCESS")  # fmt: skip
    await client.spans.upsert_batch([closed])
    fetched = await client.spans.get(opened.id)
    assert fetched.completed
    assert fetched.end_timestamp == end
    assert fetched.output == {"y": 2}
    assert fetched.status == "SUCCESS"
    # An older in-progress write arriving late does not reopen it.
    await client.spans.upsert_batch([opened])
    assert (await client.spans.get(opened.id)).completed


@pytest.mark.anyio
async def test_naive_timestamps_stored_as_utc(client: AsyncSGPClient) -> None:
    naive = SpanItem(name="n", trace_id="t", start_timestamp=datetime(2025, 3, 1, 12, 0))
    [stored] = await client.spans.upsert_batch([naive])
    assert stored.start_timestamp == START
    assert stored.start_timestamp.utcoffset() == timedelta(0)


@pytest.mark.anyio
async def test_create_and_batch(client: AsyncSGPClient, control: ServerControl) -> None:
    one = span("one")
    created = await client.spans.create(one)
    assert created.id == one.id
    first, second = span("a"), span("b")
    inserted = await client.spans.batch([first, second])
    assert {s.id for s in inserted} == {first.id, second.id}
    # POST /batch inserts without replacing: the stored version is kept and echoed back.
    changed = span("a-renamed", id=first.id)
    [kept] = await client.spans.batch([changed])
    assert kept.name == "a"
    assert (await client.spans.get(first.id)).name == "a"
    assert control.stats()["by_endpoint"] == {"create": 1, "create_batch": 2, "get": 1}


@pytest.mark.anyio
async def test_upsert_of_1000_items(client: AsyncSGPClient, control: ServerControl) -> None:
    items = [span(f"s{i}", trace_id="big") for i in range(MAX_BATCH_ITEMS)]
    stored = await client.spans.upsert_batch(items)
    assert len(stored) == MAX_BATCH_ITEMS
    assert control.stats()["items_stored"] == MAX_BATCH_ITEMS


@pytest.mark.anyio
async def test_search_pages_through_everything(
    client: AsyncSGPClient, control: ServerControl
) -> None:
    wanted = [span(f"s{i}", trace_id="wanted") for i in range(7)]
    await client.spans.upsert_batch([*wanted, span("noise", trace_id="other")])
    found = [s async for s in client.spans.search(trace_ids=["wanted"], page_size=3)]
    assert sorted(s.id for s in found) == sorted(i.id for i in wanted)
    assert control.stats()["by_endpoint"]["search"] == 3  # pages of 3, 3 and 1


@pytest.mark.anyio
async def test_search_filters(client: AsyncSGPClient) -> None:
    root = span("root", trace_id="tf")
    child = span("child", trace_id="tf", parent_id=root.id, group_id="g1")
    await client.spans.upsert_batch([root, child])
    assert [s.id async for s in client.spans.search(trace_ids=["tf"], parents_only=True)] == [
        root.id
    ]
    assert [s.id async for s in client.spans.search(group_id="g1")] == [child.id]
    assert [s.id async for s in client.spans.search(names=["child"])] == [child.id]
    assert [s.id async for s in client.spans.search(span_ids=[root.id])] == [root.id]
    assert [s async for s in client.spans.search(trace_ids=["absent"])] == []


@pytest.mark.anyio
async def test_search_can_be_left_early(client: AsyncSGPClient, control: ServerControl) -> None:
    await client.spans.upsert_batch([span(f"s{i}", trace_id="early") for i in range(5)])
    async for _ in client.spans.search(trace_ids=["early"], page_size=2):
        break
    assert control.stats()["by_endpoint"]["search"] == 1


# -- error statuses from the real server --------------------------------------------------------


@pytest.mark.anyio
async def test_404(client: AsyncSGPClient) -> None:
    with pytest.raises(NotFoundError) as info:
        await client.spans.get("no-such-span")
    assert info.value.status_code == 404
    assert "no-such-span" in str(info.value.detail)
    assert info.value.request_id  # the server's x-request-id


@pytest.mark.anyio
async def test_403_bad_key(app: Starlette, control: ServerControl) -> None:
    async with other_client(app, api_key="sk-wrong-key-0000000000") as wrong:
        with pytest.raises(PermissionDeniedError) as info:
            await wrong.spans.upsert_batch([span()])
    assert info.value.status_code == 403
    assert control.stats()["requests"] == 1  # never retried


@pytest.mark.anyio
async def test_403_wrong_account(app: Starlette) -> None:
    async with other_client(app, account_id="someone-else") as wrong:
        with pytest.raises(PermissionDeniedError, match="account"):
            await wrong.spans.get("x")


@pytest.mark.anyio
async def test_401_missing_header(app: Starlette, control: ServerControl) -> None:
    # The client always sends both headers; a proxy dropping one is how a 401 happens.
    async def strip_account(request: httpx.Request) -> None:
        del request.headers["x-selected-account-id"]

    async with (
        httpx.AsyncClient(
            transport=asgi_transport(app), event_hooks={"request": [strip_account]}
        ) as http,
        AsyncSGPClient(
            api_key=DEFAULT_API_KEY,
            account_id=DEFAULT_ACCOUNT_ID,
            base_url="http://127.0.0.1/public",
            http_client=http,
        ) as sgp,
    ):
        with pytest.raises(AuthenticationError) as info:
            await sgp.spans.get("x")
    assert info.value.status_code == 401
    assert control.stats()["requests"] == 1


@pytest.mark.anyio
async def test_409_cycle_never_retried(client: AsyncSGPClient, control: ServerControl) -> None:
    a_id, b_id = "cycle-a", "cycle-b"
    items = [span("a", id=a_id, parent_id=b_id), span("b", id=b_id, parent_id=a_id)]
    with pytest.raises(ConflictError, match="cycle") as info:
        await client.spans.upsert_batch(items)
    assert info.value.status_code == 409
    stats = control.stats()
    assert stats["requests"] == 1
    assert stats["items_stored"] == 0  # whole batch rejected


@pytest.mark.anyio
async def test_409_parent_in_another_trace(client: AsyncSGPClient) -> None:
    parent = span("parent", trace_id="t-one")
    await client.spans.upsert_batch([parent])
    with pytest.raises(ConflictError, match="another trace"):
        await client.spans.upsert_batch([span("child", trace_id="t-two", parent_id=parent.id)])


@pytest.mark.anyio
async def test_413(client: AsyncSGPClient, control: ServerControl) -> None:
    control.set_faults(max_body_bytes=200)
    with pytest.raises(RequestTooLargeError) as info:
        await client.spans.upsert_batch([span(input={"blob": "x" * 1000})])
    assert info.value.status_code == 413
    assert control.stats()["requests"] == 1


@pytest.mark.anyio
async def test_422_end_before_start(client: AsyncSGPClient, control: ServerControl) -> None:
    # SpanItem refuses this, so send raw JSON: the server must agree with the client's rule.
    body = (
        b'{"items":[{"id":"x","trace_id":"t","name":"n",'
        b'"start_timestamp":"2025-03-01T12:00:00Z","end_timestamp":"2025-03-01T11:00:00Z"}]}'
    )
    with pytest.raises(UnprocessableEntityError, match="end_timestamp") as info:
        await client.request("PUT", "/v5/spans/batch", content=body)
    assert info.value.status_code == 422
    assert control.stats()["requests"] == 1


@pytest.mark.anyio
async def test_422_from_search_arguments(client: AsyncSGPClient) -> None:
    with pytest.raises(UnprocessableEntityError, match="sort_order"):
        async for _ in client.spans.search(sort_order="sideways"):
            pass


@pytest.mark.anyio
async def test_400_nul_in_id(client: AsyncSGPClient, control: ServerControl) -> None:
    body = b'{"items":[{"id":"a\\u0000b","trace_id":"t","name":"n",'
    body += b'"start_timestamp":"2025-03-01T12:00:00Z"}]}'
    with pytest.raises(BadRequestError, match="NUL") as info:
        await client.request("PUT", "/v5/spans/batch", content=body)
    assert info.value.status_code == 400
    assert control.stats()["requests"] == 1


@pytest.mark.anyio
async def test_429_surfaces_after_retries(app: Starlette, control: ServerControl) -> None:
    control.set_faults(status_code=429, status_every_n=1, retry_after="0")
    async with other_client(app, max_retries=2) as sgp:
        with pytest.raises(RateLimitError) as info:
            await sgp.spans.upsert_batch([span()])
    assert info.value.status_code == 429
    assert info.value.retry_after == 0.0
    assert control.stats()["requests"] == 3


@pytest.mark.anyio
async def test_503_surfaces_after_retries(app: Starlette, control: ServerControl) -> None:
    control.set_faults(status_code=503, status_every_n=1, retry_after="0")
    async with other_client(app, max_retries=1) as sgp:
        with pytest.raises(InternalServerError) as info:
            await sgp.spans.upsert_batch([span()])
    assert info.value.status_code == 503
    assert control.stats()["requests"] == 2


# -- retries under faults -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_503_every_second_request_still_succeeds(
    client: AsyncSGPClient, control: ServerControl
) -> None:
    control.set_faults(status_code=503, status_every_n=2, retry_after="0")
    items = [span(f"s{i}", trace_id="flaky") for i in range(10)]
    for one in items:
        await client.spans.upsert_batch([one])
    stats = control.stats()
    assert stats["items_stored"] == 10
    assert stats["faults"]["503"] >= 5
    assert stats["requests"] == 10 + stats["faults"]["503"]


@pytest.mark.anyio
async def test_retry_after_is_honoured(client: AsyncSGPClient, control: ServerControl) -> None:
    control.set_faults(status_code=503, status_every_n=2, retry_after="0.5")
    await client.spans.upsert_batch([span("first")])  # request 1 passes, request 2 gets 503
    started = anyio.current_time()
    await client.spans.upsert_batch([span("second")])
    waited = anyio.current_time() - started
    assert waited >= 0.5
    assert control.stats()["requests"] == 3


@pytest.mark.anyio
async def test_connection_drops_retried_then_connection_error(
    app: Starlette, control: ServerControl
) -> None:
    control.set_faults(drop_every_n=1)
    async with other_client(app, max_retries=2) as sgp:
        with pytest.raises(APIConnectionError) as info:
            await sgp.spans.upsert_batch([span()])
    assert not isinstance(info.value, APITimeoutError)
    assert isinstance(info.value.__cause__, httpx.TransportError)
    assert control.stats()["requests"] == 3


@pytest.mark.anyio
async def test_connection_drop_then_success(client: AsyncSGPClient, control: ServerControl) -> None:
    control.set_faults(drop_every_n=2)
    for i in range(4):
        await client.spans.upsert_batch([span(f"s{i}")])
    assert control.stats()["items_stored"] == 4


@pytest.mark.anyio
async def test_concurrent_calls_share_one_client(
    client: AsyncSGPClient, control: ServerControl
) -> None:
    async def upsert(i: int) -> None:
        await client.spans.upsert_batch([span(f"s{i}", trace_id="concurrent")])

    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(upsert, i)
    assert control.stats()["items_stored"] == 20


# -- the key stays secret ------------------------------------------------------------------


@pytest.mark.anyio
async def test_refused_key_never_logged_or_shown(
    app: Starlette, control: ServerControl, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "sk-refused-SECRET-4242424242"
    caplog.set_level(logging.DEBUG)
    async with other_client(app, api_key=secret, max_retries=1) as sgp:
        with pytest.raises(PermissionDeniedError) as refused:
            await sgp.spans.upsert_batch([span()])
        control.set_faults(status_code=503, status_every_n=1, retry_after="0")
        with pytest.raises(InternalServerError) as retried:
            await sgp.spans.get("x")  # through the retry path, which logs
    assert any("retrying" in record.getMessage() for record in caplog.records)
    texts = [str(refused.value), repr(refused.value), str(retried.value), repr(retried.value),
             repr(sgp), str(sgp), repr(sgp._config), caplog.text]  # fmt: skip
    for text in texts:
        assert secret not in text


@pytest.mark.anyio
async def test_status_errors_carry_method_and_url(client: AsyncSGPClient) -> None:
    with pytest.raises(APIStatusError) as info:
        await client.spans.get("missing")
    assert info.value.method == "GET"
    assert info.value.url == "http://127.0.0.1/public/v5/spans/missing"
