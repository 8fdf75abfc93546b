"""Spans crossing processes on SGP's legacy store (id-keyed, last write wins), where a late
in-progress write reopens a completed span: in-process "processes" on both stores, and the
demo's fleet of 4 real worker processes (each span started on one, ended on another).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import pytest
from starlette.applications import Starlette

from demo.fleet import read_back, run_fleet
from sgp_client import AsyncSGPClient, UpsertQueue
from sgp_client.testing import (
    DEFAULT_ACCOUNT_ID,
    DEFAULT_API_KEY,
    ServerProcess,
    asgi_transport,
    create_app,
    get_control,
)
from sgp_tracing import SGPTracingProcessor, Span, Tracer
from tests._helpers import FAST_BACKOFF, IN_PROCESS_BASE_URL

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["tracing", "legacy"])
def store_app(request: pytest.FixtureRequest) -> Iterator[Starlette]:
    app = create_app(store=request.param)
    yield app
    get_control(app).close()


@asynccontextmanager
async def process(app: Starlette) -> AsyncIterator[tuple[Tracer, UpsertQueue]]:
    """One "process": its own client, queue, processor and tracer, all on ``app``."""
    async with (
        AsyncSGPClient(
            transport=asgi_transport(app),
            base_url=IN_PROCESS_BASE_URL,
            api_key=DEFAULT_API_KEY,
            account_id=DEFAULT_ACCOUNT_ID,
            backoff=FAST_BACKOFF,
        ) as client,
        UpsertQueue(client) as queue,
    ):
        yield Tracer(SGPTracingProcessor(queue)), queue


async def test_a_start_delivered_before_the_span_leaves_is_never_reopened(
    store_app: Starlette,
) -> None:
    control = get_control(store_app)
    async with process(store_app) as (tracer_a, _), process(store_app) as (tracer_b, queue_b):
        span = await tracer_a.start_span_delivered("activity", trace_id="wf-1", input={"x": 1})
        payload = span.to_dict()  # only now does the span leave process A
        tracer_b.end_span(Span.from_dict(payload), output={"y": 2})
        assert await queue_b.flush(timeout=10)
        # A's queue is still open: nothing of this span is left in it to land late.
    (stored,) = control.store.all_spans(trace_id="wf-1")
    assert stored["end_timestamp"]
    assert stored["status"] == "SUCCESS"
    assert control.stats()["reopened"] == 0


async def test_a_start_still_queued_when_the_span_leaves_reopens_it_on_the_legacy_store() -> None:
    # The hazard the guarantee exists for, made deterministic: A's start is still queued
    # when B's end lands; A's start lands last and the legacy store keeps it.
    app = create_app(store="legacy")
    control = get_control(app)
    try:
        async with process(app) as (tracer_a, queue_a):
            span = tracer_a.start_span("activity", trace_id="wf-2", input={"x": 1})
            async with process(app) as (tracer_b, queue_b):
                tracer_b.end_span(Span.from_dict(span.to_dict()), output={"y": 2})
                assert await queue_b.flush(timeout=10)
            assert await queue_a.flush(timeout=10)
        (stored,) = control.store.all_spans(trace_id="wf-2")
        assert not stored.get("end_timestamp")  # "Running" again
        assert control.stats()["reopened"] == 1
    finally:
        control.close()


@pytest.fixture
def legacy_process() -> Iterator[ServerProcess]:
    with ServerProcess(store="legacy") as server:
        yield server


@pytest.mark.slow
async def test_the_process_fleet_on_the_legacy_store_reopens_nothing(
    legacy_process: ServerProcess, anyio_backend: str
) -> None:
    server = legacy_process
    env = {
        "SGP_API_KEY": server.api_key,
        "SGP_ACCOUNT_ID": server.account_id,
        "SGP_CLIENT_BASE_URL": server.base_url,
    }
    result = await run_fleet(
        workers=4, runs=40, concurrency=16, backend=anyio_backend, stateful=False, env=env,
        seed=3, progress=False,
    )  # fmt: skip
    async with AsyncSGPClient(
        api_key=server.api_key, account_id=server.account_id, base_url=server.base_url
    ) as client:
        stored = await read_back(client, result)
    assert result.cross_worker_ends > 0
    assert stored["completed"] == stored["expected"] == result.spans_started
    assert stored["running"] == stored["missing"] == 0
    assert server.stats()["reopened"] == 0
    assert all(report["queue"]["balanced"] for report in result.worker_reports)
