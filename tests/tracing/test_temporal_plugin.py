"""``sgp_tracing.temporal`` in one process: the plugin, its activities and its queue, on a real
Temporal dev server, writing to the in-process local server's legacy store.

asyncio only: temporalio's client, workers and activities run on asyncio alone, so this
module pins ``anyio_backend`` to asyncio. The workflows below run unsandboxed (they live in a
test module, which the workflow sandbox would re-import with pytest in it).
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from starlette.applications import Starlette
from temporalio import workflow
from temporalio.client import Client, WorkflowFailureError
from temporalio.common import RetryPolicy
from temporalio.worker import UnsandboxedWorkflowRunner, Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from demo.devserver import TemporalDevServer
from sgp_client import AsyncSGPClient, UpsertQueue
from sgp_client.testing import (
    DEFAULT_ACCOUNT_ID,
    DEFAULT_API_KEY,
    asgi_transport,
    create_app,
    get_control,
)
from sgp_tracing.temporal import (
    END_SPAN_ACTIVITY,
    START_SPAN_ACTIVITY,
    SGPTracingPlugin,
    end_span,
    start_span,
)
from tests._helpers import FAST_BACKOFF, IN_PROCESS_BASE_URL

pytestmark = pytest.mark.anyio

_ONCE = RetryPolicy(maximum_attempts=1)
_TIMEOUT = timedelta(seconds=20)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def legacy_app() -> Any:
    app = create_app(store="legacy")
    yield app
    get_control(app).close()


def _client_of(app: Starlette, api_key: str = DEFAULT_API_KEY) -> Callable[[], AsyncSGPClient]:
    def make() -> AsyncSGPClient:
        return AsyncSGPClient(
            api_key=api_key,
            account_id=DEFAULT_ACCOUNT_ID,
            base_url=IN_PROCESS_BASE_URL,
            transport=asgi_transport(app),
            backoff=FAST_BACKOFF,
        )

    return make


@workflow.defn(name="test-two-spans")
class TwoSpans:
    @workflow.run
    async def run(self) -> list[str]:
        root = await start_span("root", input={"q": 1}, retry_policy=_ONCE)
        child = await start_span("child", parent=root, retry_policy=_ONCE)
        await end_span(child, output={"a": 2}, retry_policy=_ONCE)
        await end_span(root, error={"type": "E", "message": "m"}, retry_policy=_ONCE)
        return [root["id"], child["id"]]


@workflow.defn(name="test-bad-payload")
class BadPayload:
    @workflow.run
    async def run(self) -> None:
        await workflow.execute_activity(
            START_SPAN_ACTIVITY, {"id": ""}, start_to_close_timeout=_TIMEOUT, retry_policy=_ONCE
        )


@workflow.defn(name="test-wait")
class WaitForever:
    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: False)


def _running(queue: UpsertQueue) -> bool:
    # A call, not the property: mypy would keep an asserted property narrowed across awaits.
    return queue.running


def _worker(temporal: Client, plugin: SGPTracingPlugin, task_queue: str) -> Worker:
    return Worker(
        temporal,
        task_queue=task_queue,
        workflows=[TwoSpans, BadPayload, WaitForever],
        plugins=[plugin],
        workflow_runner=UnsandboxedWorkflowRunner(),
        disable_eager_activity_execution=True,
    )


async def _run(temporal: Client, plugin: SGPTracingPlugin, workflow_run: Any) -> Any:
    task_queue = f"test-{uuid.uuid4().hex[:8]}"
    worker = _worker(temporal, plugin, task_queue)
    run = asyncio.ensure_future(worker.run())
    try:
        return await temporal.execute_workflow(
            workflow_run, id=f"wf-{uuid.uuid4().hex}", task_queue=task_queue
        )
    finally:
        await worker.shutdown()
        await run


async def test_spans_are_delivered_through_one_queue_per_process(
    temporal_server: TemporalDevServer, legacy_app: Starlette
) -> None:
    temporal = await Client.connect(temporal_server.address)
    plugin = SGPTracingPlugin(client=_client_of(legacy_app), shutdown_signals=())
    # A second worker of the process (on another task queue) shares the plugin's queue.
    other = _worker(temporal, plugin, f"other-{uuid.uuid4().hex[:8]}")
    other_run = asyncio.ensure_future(other.run())
    root_id, child_id = await _run(temporal, plugin, TwoSpans.run)
    queue = plugin.queue
    assert queue is not None
    assert _running(queue)  # the other worker still runs
    await other.shutdown()
    await other_run
    assert plugin.queue is queue
    assert not _running(queue)  # drained when the last worker stopped

    control = get_control(legacy_app)
    root = control.store.get_span(root_id)
    child = control.store.get_span(child_id)
    assert root is not None
    assert child is not None
    assert root["status"] == "ERROR"
    assert child["status"] == "SUCCESS"
    assert child["parent_id"] == root_id
    assert child["output"] == {"a": 2}
    assert control.stats()["reopened"] == 0
    # Each start and each end went out on its own: the start was delivered before its
    # end was sent.
    assert queue.stats.delivered == 4
    assert queue.stats.balanced
    assert plugin.dropped == {}


async def test_an_invalid_payload_is_counted_and_the_activity_completes(
    temporal_server: TemporalDevServer, legacy_app: Starlette
) -> None:
    temporal = await Client.connect(temporal_server.address)
    plugin = SGPTracingPlugin(client=_client_of(legacy_app), shutdown_signals=())
    await _run(temporal, plugin, BadPayload.run)  # no WorkflowFailureError
    assert plugin.dropped == {"invalid_payload": 1}
    assert plugin.queue is not None
    assert plugin.queue.stats.submitted == 0


async def test_a_dropped_write_fails_the_activity(
    temporal_server: TemporalDevServer, legacy_app: Starlette
) -> None:
    # A key the server refuses: the queue drops the write (unauthorized), so the activity
    # must fail (Temporal would retry it elsewhere) rather than complete.
    temporal = await Client.connect(temporal_server.address)
    plugin = SGPTracingPlugin(client=_client_of(legacy_app, "wrong-key"), shutdown_signals=())
    with pytest.raises(WorkflowFailureError):
        await _run(temporal, plugin, TwoSpans.run)
    assert plugin.queue is not None
    assert plugin.queue.stats.dropped == {"unauthorized": 1}


async def test_send_starts_false_writes_only_ends(
    temporal_server: TemporalDevServer, legacy_app: Starlette
) -> None:
    temporal = await Client.connect(temporal_server.address)
    plugin = SGPTracingPlugin(client=_client_of(legacy_app), send_starts=False, shutdown_signals=())
    root_id, child_id = await _run(temporal, plugin, TwoSpans.run)
    control = get_control(legacy_app)
    assert control.stats()["items_received"] == 2
    assert plugin.queue is not None
    assert plugin.queue.stats.submitted == 2
    for span_id in (root_id, child_id):
        stored = control.store.get_span(span_id)
        assert stored is not None
        assert stored["end_timestamp"] is not None


async def test_sigterm_shuts_the_worker_down_and_drains_the_queue(
    temporal_server: TemporalDevServer, legacy_app: Starlette
) -> None:
    temporal = await Client.connect(temporal_server.address)
    plugin = SGPTracingPlugin(client=_client_of(legacy_app))
    worker = _worker(temporal, plugin, f"test-{uuid.uuid4().hex[:8]}")
    run = asyncio.ensure_future(worker.run())
    while plugin.queue is None or not _running(plugin.queue):  # noqa: ASYNC110 (no event)
        await asyncio.sleep(0.01)
    # Only with the plugin's handler in place: the default SIGTERM would end pytest.
    assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN)
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(run, 30)
    assert not _running(plugin.queue)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handler removed again


async def test_the_plugin_configures_the_worker_for_draining_and_the_sandbox(
    temporal_server: TemporalDevServer, legacy_app: Starlette
) -> None:
    temporal = await Client.connect(temporal_server.address)
    plugin = SGPTracingPlugin(client=_client_of(legacy_app), shutdown_signals=())
    # No workflows: the sandbox would validate this test module's (it does not import here).
    worker = Worker(temporal, task_queue="unused", plugins=[plugin])
    config = worker.config(active_config=True)
    # Long enough for a running span activity to finish on shutdown rather than be cancelled.
    assert config.get("graceful_shutdown_timeout") == timedelta(seconds=10)
    runner = config.get("workflow_runner")
    assert isinstance(runner, SandboxedWorkflowRunner)
    assert {"sgp_tracing", "sgp_client"} <= set(runner.restrictions.passthrough_modules)
    activity_names = {
        getattr(fn, "__temporal_activity_definition").name for fn in config.get("activities", [])
    }
    assert activity_names == {START_SPAN_ACTIVITY, END_SPAN_ACTIVITY}


async def test_a_worker_starting_while_the_queue_opens_waits_for_it(legacy_app: Any) -> None:
    # Two workers of one process start together; the client takes a while to open. The
    # second must not run its activities without the queue the first is still opening.
    from sgp_tracing.temporal import _WorkerTracing

    class SlowClient(AsyncSGPClient):
        async def __aenter__(self) -> SlowClient:
            await asyncio.sleep(0.2)
            await super().__aenter__()
            return self

    def make_slow() -> AsyncSGPClient:
        return SlowClient(
            api_key=DEFAULT_API_KEY,
            account_id=DEFAULT_ACCOUNT_ID,
            base_url=IN_PROCESS_BASE_URL,
            transport=asgi_transport(legacy_app),
            backoff=FAST_BACKOFF,
        )

    tracing = _WorkerTracing(make_slow, {}, {}, True)
    seen: list[bool] = []

    async def worker() -> None:
        async with tracing.running():
            seen.append(tracing.processor is not None)

    await asyncio.gather(worker(), worker())
    assert seen == [True, True]


async def test_a_cancelled_attempt_ends_only_once_its_write_is_settled() -> None:
    # The worker shuts down and cancels a span activity whose write is still in flight. If
    # the attempt ended at once, Temporal would retry it elsewhere while this write could
    # still land after the retry's; so it ends once the write is settled.
    import json
    from datetime import UTC, datetime

    import httpx

    from sgp_tracing import Span
    from sgp_tracing.temporal import _WorkerTracing

    release = asyncio.Event()
    seen = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        assert json.loads(request.content)["items"][0]["id"] == "held"
        seen.set()
        await release.wait()
        return httpx.Response(200, json={"items": [], "object": "list"})

    def make() -> AsyncSGPClient:
        return AsyncSGPClient(
            api_key=DEFAULT_API_KEY,
            account_id=DEFAULT_ACCOUNT_ID,
            base_url=IN_PROCESS_BASE_URL,
            transport=httpx.MockTransport(handler),
            backoff=FAST_BACKOFF,
        )

    tracing = _WorkerTracing(make, {}, {}, True)
    payload = Span(id="held", trace_id="t", name="tool", start_time=datetime.now(UTC)).to_dict()
    async with tracing.running():
        attempt = asyncio.ensure_future(tracing.start_span(payload))
        await asyncio.wait_for(seen.wait(), 5)
        attempt.cancel()
        await asyncio.sleep(0.2)
        assert not attempt.done()  # still waiting for its write
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(attempt, 5)
        assert tracing.queue is not None
        assert tracing.queue.stats.delivered == 1
