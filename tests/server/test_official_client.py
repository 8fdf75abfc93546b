"""The local server driven by scale-gp-beta's own client (the official SDK), as a user of it would.

Spans upsert, batch, create, retrieve, update, and search with every filter the official
client sends, in-process (``AsyncSGPClient`` over `asgi_transport`, asyncio and trio) and over
loopback (``SGPClient`` against `ServerProcess`). The official client sends paging and the
time window in the query string and the filters in the body.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import httpx
import pytest
import scale_gp_beta
from scale_gp_beta import AsyncSGPClient, SGPClient
from scale_gp_beta.types import Span, SpanCreateParam
from starlette.applications import Starlette

from sgp_client.testing import (
    DEFAULT_ACCOUNT_ID,
    DEFAULT_API_KEY,
    ServerProcess,
    asgi_transport,
    create_app,
    get_control,
)

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
TRACE_UUID = "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"
MARK = "[REDACTED:credential]"

SPANS: list[dict[str, Any]] = [
    {
        "trace_id": "t1",
        "id": "root",
        "name": "agent turn",
        "type": "AGENT_WORKFLOW",
        "status": "SUCCESS",
        "start_timestamp": T0,
        "end_timestamp": T0 + timedelta(seconds=5),
        "group_id": "g1",
        "application_variant_id": "v1",
        "input": {"question": "What is the weather in Paris today"},
        "metadata": {
            "__acp_type__": "agentic",
            "__agent_id__": "agent-1",
            "__agent_name__": "weather",
            "env": "prod",
            "tier": 2,
        },
    },
    {
        "trace_id": "t1",
        "id": "llm",
        "parent_id": "root",
        "name": "llm call",
        "type": "COMPLETION",
        "status": "ERROR",
        "start_timestamp": T0 + timedelta(seconds=1),
        "end_timestamp": T0 + timedelta(seconds=1, milliseconds=200),
        "output": {"text": "Sunny with light winds"},
        "obs_trace_id": "a" * 32,
        "obs_span_id": "b" * 16,
        "metadata": {
            "__acp_type__": "sync",
            "__agent_id__": "agent-2",
            "__agent_name__": "planner",
            "env": "dev",
            "flag": True,
        },
    },
    {
        "trace_id": "t1",
        "id": "tool",
        "parent_id": "root",
        "name": "tool",
        "type": "CUSTOM",
        "start_timestamp": T0 + timedelta(seconds=2),
        "input": {"query": "forecast-api v1.2"},
        "metadata": {"env": "prod", "tier": 1},
    },
    {
        "trace_id": TRACE_UUID,
        "id": "other",
        "name": "Paris report",
        "type": "TRACER",
        "status": "CANCELED",
        "start_timestamp": T0 + timedelta(days=1),
        "end_timestamp": T0 + timedelta(days=1, seconds=60),
        "metadata": {"flag": 1},
    },
]

# (filters as keyword arguments of search(), the ids expected)
FILTER_CASES: list[tuple[dict[str, Any], set[str]]] = [
    ({}, {"root", "llm", "tool", "other"}),
    ({"trace_ids": ["t1"]}, {"root", "llm", "tool"}),
    ({"span_ids": ["llm", "other"]}, {"llm", "other"}),
    ({"parent_ids": ["root"]}, {"llm", "tool"}),
    ({"names": ["tool"]}, {"tool"}),
    ({"statuses": ["ERROR", "CANCELED"]}, {"llm", "other"}),
    ({"types": ["AGENT_WORKFLOW"]}, {"root"}),
    ({"group_id": "g1"}, {"root"}),
    ({"parents_only": True}, {"root", "other"}),
    ({"parents_only": False}, {"root", "llm", "tool", "other"}),
    ({"application_variant_ids": ["v1"]}, {"root"}),
    ({"excluded_span_ids": ["root"]}, {"llm", "tool", "other"}),
    ({"excluded_trace_ids": ["t1"]}, {"other"}),
    ({"excluded_spans": [{"trace_id": "t1", "span_id": "llm"}]}, {"root", "tool", "other"}),
    # excluded_spans takes precedence over excluded_span_ids
    (
        {"excluded_spans": [{"trace_id": "t1", "span_id": "llm"}], "excluded_span_ids": ["root"]},
        {"root", "tool", "other"},
    ),
    # a pair never matches a same-id span of another trace
    (
        {"spans": [{"trace_id": "t1", "span_id": "tool"}, {"trace_id": "t1", "span_id": "other"}]},
        {"tool"},
    ),
    ({"spans": [{"trace_id": "t1", "span_id": "tool"}], "span_ids": ["root"]}, set()),
    ({"acp_types": ["agentic"]}, {"root"}),
    ({"agentex_agent_ids": ["agent-2"]}, {"llm"}),
    ({"agentex_agent_names": ["weather", "planner"]}, {"root", "llm"}),
    ({"extra_metadata": {"env": "prod"}}, {"root", "tool"}),
    ({"extra_metadata": {"env": "prod", "tier": 2}}, {"root"}),
    ({"extra_metadata": {"tier": [1, 2]}}, {"root", "tool"}),
    ({"extra_metadata": {"flag": True}}, {"llm"}),  # true is not 1
    ({"extra_metadata": {"flag": 1}}, {"other"}),
    ({"extra_metadata": {"missing": "x"}}, set()),
    ({"search_texts": ["sunny"]}, {"llm"}),
    ({"search_texts": ["PARIS"]}, {"root", "other"}),  # a word in input, a name substring
    ({"search_texts": ["paris", "today"]}, {"root"}),
    ({"search_texts": ["weather in paris"]}, {"root"}),
    ({"search_texts": ['"light winds"']}, {"llm"}),
    ({"search_texts": ["ather in Par"]}, set()),  # words match whole words only
    ({"search_texts": ["ecast-ap"]}, {"tool"}),  # not plain words: a substring
    ({"search_texts": ["wind"]}, set()),  # a word matches whole words only
    ({"search_texts": ["v1.2"]}, {"tool"}),
    ({"search_texts": [TRACE_UUID]}, {"other"}),
    ({"min_duration_ms": 1000}, {"root", "other"}),
    ({"max_duration_ms": 200}, {"llm"}),  # inclusive; never an in-progress span
    ({"min_duration_ms": 200, "max_duration_ms": 5000}, {"root", "llm"}),
    ({"obs_trace_ids": ["a" * 32]}, {"llm"}),
    ({"obs_span_ids": ["b" * 16]}, {"llm"}),
    ({"assessment_types": ["correctness"]}, set()),  # no span here has an assessment
    (
        {"from_ts": T0 + timedelta(milliseconds=500), "to_ts": T0 + timedelta(seconds=3)},
        {"llm", "tool"},
    ),
    ({"from_ts": T0 + timedelta(hours=1)}, {"other"}),
    ({"to_ts": T0}, {"root"}),
    ({"allow_partial_results": True, "trace_ids": ["t1"]}, {"root", "llm", "tool"}),
]


@pytest.fixture
def app() -> Iterator[Starlette]:
    app = create_app()
    yield app
    get_control(app).close()


@pytest.fixture
async def sgp(app: Starlette) -> AsyncIterator[AsyncSGPClient]:
    async with (
        httpx.AsyncClient(transport=asgi_transport(app)) as http,
        AsyncSGPClient(
            api_key=DEFAULT_API_KEY,
            account_id=DEFAULT_ACCOUNT_ID,
            base_url="http://127.0.0.1/public",
            http_client=http,
            max_retries=0,
        ) as client,
    ):
        yield client


def as_items(*spans: dict[str, Any]) -> list[SpanCreateParam]:
    """Plain dicts as the official client's item type (a TypedDict)."""
    return cast("list[SpanCreateParam]", list(spans))


async def retrieve(sgp: AsyncSGPClient, span_id: str) -> Span:
    with pytest.deprecated_call():  # scale-gp-beta 0.7.0 marks spans.retrieve deprecated
        return await sgp.spans.retrieve(span_id)


async def ids(sgp: AsyncSGPClient, **filters: Any) -> set[str]:
    return {span.id async for span in sgp.spans.search(**filters)}


# -- writes and reads ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_upsert_batch_and_retrieve(sgp: AsyncSGPClient) -> None:
    answer = await sgp.spans.upsert_batch(items=as_items(*SPANS))
    assert [span.id for span in answer.items] == ["root", "llm", "tool", "other"]
    llm = await retrieve(sgp, "llm")
    assert llm.trace_id == "t1"
    assert llm.parent_id == "root"
    assert llm.status == "ERROR"
    assert llm.type == "COMPLETION"
    assert llm.start_timestamp == T0 + timedelta(seconds=1)
    assert llm.end_timestamp == T0 + timedelta(seconds=1, milliseconds=200)
    assert llm.output == {"text": "Sunny with light winds"}
    assert llm.account_id == DEFAULT_ACCOUNT_ID
    assert llm.object == "span"
    assert llm.obs_trace_id == "a" * 32
    tool = await retrieve(sgp, "tool")
    assert tool.end_timestamp is None
    # Upserting the end completes it.
    await sgp.spans.upsert_batch(
        items=as_items(
            {**SPANS[2], "end_timestamp": T0 + timedelta(seconds=3), "status": "SUCCESS"}
        )
    )
    assert (await retrieve(sgp, "tool")).status == "SUCCESS"


@pytest.mark.anyio
async def test_batch_inserts_without_replacing(sgp: AsyncSGPClient) -> None:
    await sgp.spans.batch(items=as_items({**SPANS[0], "name": "first"}))
    answer = await sgp.spans.batch(items=as_items({**SPANS[0], "name": "second"}, SPANS[1]))
    assert [span.name for span in answer.items] == ["first", "llm call"]
    assert (await retrieve(sgp, "root")).name == "first"


@pytest.mark.anyio
async def test_create_one_and_server_assigned_id(sgp: AsyncSGPClient) -> None:
    span = await sgp.spans.create(name="solo", trace_id="t9", start_timestamp=T0)
    assert span.id  # assigned by the server
    assert (await retrieve(sgp, span.id)).name == "solo"
    named = await sgp.spans.create(name="named", trace_id="t9", start_timestamp=T0, id="mine")
    assert named.id == "mine"


@pytest.mark.anyio
async def test_errors_map_to_the_official_exceptions(sgp: AsyncSGPClient) -> None:
    with pytest.raises(scale_gp_beta.NotFoundError):
        await retrieve(sgp, "nope")
    with pytest.raises(scale_gp_beta.UnprocessableEntityError, match="end_timestamp"):
        await sgp.spans.upsert_batch(
            items=as_items({**SPANS[0], "end_timestamp": T0 - timedelta(seconds=1)})
        )
    with pytest.raises(scale_gp_beta.ConflictError, match="cycle"):
        await sgp.spans.upsert_batch(
            items=[
                {"trace_id": "t", "id": "a", "parent_id": "b", "name": "a", "start_timestamp": T0},
                {"trace_id": "t", "id": "b", "parent_id": "a", "name": "b", "start_timestamp": T0},
            ]
        )


@pytest.mark.anyio
async def test_update_answers_501_as_for_a_dual_writing_account(sgp: AsyncSGPClient) -> None:
    await sgp.spans.upsert_batch(items=as_items(SPANS[2]))
    with pytest.raises(scale_gp_beta.InternalServerError) as caught:
        await sgp.spans.update("tool", end_timestamp=T0 + timedelta(seconds=3), status="SUCCESS")
    assert caught.value.status_code == 501
    assert "PUT /v5/spans/batch" in str(caught.value)
    assert (await retrieve(sgp, "tool")).end_timestamp is None  # nothing changed


# -- search ------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("filters", "expected"), FILTER_CASES, ids=[str(sorted(f)) for f, _ in FILTER_CASES]
)
async def test_search_honours_every_filter(
    sgp: AsyncSGPClient, filters: dict[str, Any], expected: set[str]
) -> None:
    await sgp.spans.upsert_batch(items=as_items(*SPANS))
    assert await ids(sgp, **filters) == expected


@pytest.mark.anyio
async def test_search_pages_and_sorts_as_the_official_client_reads_them(
    sgp: AsyncSGPClient,
) -> None:
    await sgp.spans.upsert_batch(items=as_items(*SPANS))
    first = await sgp.spans.search(limit=2, sort_by="duration_ms", sort_order="desc")
    assert first.has_more is True
    assert [span.id for span in first.items] == ["tool", "other"]  # in progress sorts unbounded
    # Auto-paging follows starting_after in the query string.
    every = [span.id async for span in sgp.spans.search(limit=1, sort_by="duration_ms")]
    assert every == ["llm", "root", "other", "tool"]
    backwards = await sgp.spans.search(limit=2, ending_before="tool", sort_by="duration_ms")
    assert [span.id for span in backwards.items] == ["root", "other"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("filters", "field"),
    [
        ({"extra_body": {"not_a_filter": 1}}, "not_a_filter"),
        ({"statuses": ["OK"]}, "statuses"),
        ({"types": ["LLM"]}, "types"),
        ({"search_texts": ["x"]}, "search_texts"),
        ({"search_texts": [f"term{n}" for n in range(11)]}, "search_texts"),
        ({"min_duration_ms": -1}, "min_duration_ms"),
        ({"obs_trace_ids": ["ABC"]}, "obs_trace_ids"),
        ({"extra_metadata": ["a"]}, "extra_metadata"),
        ({"excluded_spans": [{"span_id": "a"}]}, "excluded_spans"),
        ({"from_ts": "yesterday"}, "from_ts"),
        ({"from_ts": T0, "to_ts": T0 - timedelta(seconds=1)}, "from_ts"),
        ({"limit": 0}, "limit"),
        ({"sort_by": "name"}, "sort_by"),
        ({"trace_ids": [f"t{n}" for n in range(10_001)]}, "trace_ids"),
    ],
)
async def test_search_refuses_what_it_does_not_honour(
    sgp: AsyncSGPClient, filters: dict[str, Any], field: str
) -> None:
    with pytest.raises(scale_gp_beta.UnprocessableEntityError, match=field):
        await sgp.spans.search(**filters)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("filters", "field"),
    [
        ({"obs_trace_ids": ["a" * 32]}, "obs_trace_ids"),
        ({"obs_span_ids": ["b" * 16]}, "obs_span_ids"),
        ({"sort_by": "input_tokens"}, "sort_by"),
    ],
)
async def test_legacy_store_refuses_what_the_legacy_store_refuses(
    filters: dict[str, Any], field: str
) -> None:
    app = create_app(store="legacy")
    try:
        async with (
            httpx.AsyncClient(transport=asgi_transport(app)) as http,
            AsyncSGPClient(
                api_key=DEFAULT_API_KEY,
                account_id=DEFAULT_ACCOUNT_ID,
                base_url="http://127.0.0.1/public",
                http_client=http,
                max_retries=0,
            ) as sgp,
        ):
            await sgp.spans.upsert_batch(items=as_items(*SPANS))
            assert await ids(sgp, trace_ids=["t1"]) == {"root", "llm", "tool"}
            with pytest.raises(scale_gp_beta.UnprocessableEntityError, match=field):
                await sgp.spans.search(**filters)
    finally:
        get_control(app).close()


# -- masking -----------------------------------------------------------------------------------

CREDENTIALS: dict[str, Any] = {
    "trace_id": "task-sk-0123456789abcdefghijklmnop",
    "id": "sk-0123456789abcdefghij-task",
    "name": "call with Bearer abcdef0123456789xyz",
    "start_timestamp": T0,
    "input": {"api_key": "sk-in-0123456789abcdefghijk", "q": "hi"},
    "output": {"text": "use postgres://u:hunter2@db/x"},
    "metadata": {"headers": {"Authorization": "Bearer abcdef0123456789xyz"}},
    "expected": {"password": "hunter2"},
}


@pytest.mark.anyio
async def test_credentials_are_masked_as_the_real_api_does(
    sgp: AsyncSGPClient, app: Starlette
) -> None:
    echoed = (await sgp.spans.upsert_batch(items=as_items(CREDENTIALS))).items[0]
    stored = await retrieve(sgp, CREDENTIALS["id"])
    for span in (echoed, stored):
        assert span.id == CREDENTIALS["id"]  # ids are never masked
        assert span.trace_id == CREDENTIALS["trace_id"]
        assert span.name == f"call with Bearer {MARK}"
        assert span.input == {"api_key": MARK, "q": "hi"}
        assert span.output == {"text": f"use postgres://u:{MARK}@db/x"}
        assert span.metadata == {"headers": {"Authorization": MARK}}
        assert span.expected == {"password": MARK}
    assert get_control(app).stats()["masked"] == 5
    created = await sgp.spans.create(**{**CREDENTIALS, "id": "second"})
    assert created.expected == {"password": MARK}


@pytest.mark.anyio
async def test_masking_can_be_turned_off() -> None:
    app = create_app(mask_credentials=False)
    try:
        async with (
            httpx.AsyncClient(transport=asgi_transport(app)) as http,
            AsyncSGPClient(
                api_key=DEFAULT_API_KEY,
                account_id=DEFAULT_ACCOUNT_ID,
                base_url="http://127.0.0.1/public",
                http_client=http,
                max_retries=0,
            ) as sgp,
        ):
            await sgp.spans.upsert_batch(items=as_items(CREDENTIALS))
            stored = await retrieve(sgp, CREDENTIALS["id"])
        assert stored.expected == {"password": "hunter2"}
        assert stored.name == CREDENTIALS["name"]
        assert get_control(app).stats()["masked"] == 0
    finally:
        get_control(app).close()


# -- over loopback -----------------------------------------------------------------------------


def official(server: ServerProcess) -> SGPClient:
    return SGPClient(
        api_key=server.api_key,
        account_id=server.account_id,
        base_url=server.base_url,
        max_retries=0,
    )


def test_official_sync_client_over_loopback(server: ServerProcess) -> None:
    with official(server) as sgp:
        sgp.spans.upsert_batch(items=as_items(*SPANS))
        with pytest.deprecated_call():
            root = sgp.spans.retrieve("root")
        assert root.metadata == SPANS[0]["metadata"]
        window = sgp.spans.search(
            from_ts=T0 + timedelta(milliseconds=500), to_ts=T0 + timedelta(seconds=3)
        )
        assert {span.id for span in window} == {"llm", "tool"}
        assert {span.id for span in sgp.spans.search(acp_types=["sync"])} == {"llm"}
        assert [span.id for span in sgp.spans.search(limit=1)] == ["root", "llm", "tool", "other"]
        with pytest.raises(scale_gp_beta.UnprocessableEntityError, match="not_a_filter"):
            sgp.spans.search(extra_body={"not_a_filter": True})
        with pytest.raises(scale_gp_beta.InternalServerError):
            sgp.spans.update("root", name="renamed")
        sgp.spans.upsert_batch(items=as_items({**CREDENTIALS, "id": "cred"}))
        with pytest.deprecated_call():
            assert sgp.spans.retrieve("cred").expected == {"password": MARK}


def test_no_mask_credentials_over_loopback() -> None:
    with ServerProcess(mask_credentials=False) as server, official(server) as sgp:
        sgp.spans.upsert_batch(items=as_items(CREDENTIALS))
        with pytest.deprecated_call():
            assert sgp.spans.retrieve(CREDENTIALS["id"]).expected == {"password": "hunter2"}
