"""Plain helpers shared by the tests: constants, span builders, client factories, watchers.

Fixtures live in ``tests/conftest.py``, where pytest finds them by name. What a test reads or
calls lives here and is imported by name (``from tests._helpers import FAST_BACKOFF``): the
import line shows a reader where it comes from, mypy checks it, and it is imported once under
one name (a ``conftest`` module imported by hand can end up loaded twice).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
import pydantic
from starlette.types import ASGIApp

from sgp_client import AsyncSGPClient, Backoff, QueueStats, SpanItem, UpsertQueue
from sgp_client.testing import DEFAULT_ACCOUNT_ID, DEFAULT_API_KEY, ServerProcess, asgi_transport

#: Base URL of the in-process app (loopback, so plain http is allowed; nothing listens there).
IN_PROCESS_BASE_URL = "http://127.0.0.1/public"

#: Short waits between retries: tests exercise the retry logic, not its default pacing.
FAST_BACKOFF = Backoff(initial=0.001, maximum=0.01)
#: Retries paced for outages of seconds over loopback (a killed server, 503 for 1.5 s): at
#: ``FAST_BACKOFF`` pace the queue would send hundreds of requests into the outage and load
#: the server subprocess on a shared machine; this still retries several times a second.
OUTAGE_BACKOFF = Backoff(initial=0.01, maximum=0.2)

#: Slack on top of a deadline the code promises (scheduling, a server subprocess on a loaded
#: machine): tests check deadlines are kept, never how fast anything is.
DEADLINE_MARGIN = 2.0

#: When every test span starts (a fixed instant, so payloads and assertions are exact).
START = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
#: When a completed test span ends: one second after ``START``.
END = START + timedelta(seconds=1)
#: ``START`` / ``END`` as JSON text, for tests that speak raw HTTP to the server.
START_ISO = START.isoformat()
END_ISO = END.isoformat()


def span_item(
    name: str = "step", *, trace_id: str = "trace-1", end: bool = False, **fields: Any
) -> SpanItem:
    """A valid ``SpanItem`` starting at ``START``; ``end=True`` completes it at ``END``.

    Any other field (``id``, ``input``, ``end_timestamp``...) is passed through as given.
    """
    values: dict[str, Any] = {"name": name, "trace_id": trace_id, "start_timestamp": START}
    if end:
        values["end_timestamp"] = END
    values.update(fields)
    return SpanItem(**values)


def span_json(span_id: str = "s1", trace_id: str = "t1", **fields: Any) -> dict[str, Any]:
    """A span as the API's JSON carries it (request item or response body), from ``START``."""
    return {
        "id": span_id,
        "trace_id": trace_id,
        "name": "op",
        "start_timestamp": START_ISO,
        **fields,
    }


def in_process_client(app: ASGIApp, **overrides: Any) -> AsyncSGPClient:
    """A client of the in-process ``app`` (``asgi_transport``), with ``FAST_BACKOFF``.

    The ``client`` fixture is one; call this for a second client or other settings.
    """
    settings: dict[str, Any] = {
        "api_key": DEFAULT_API_KEY,
        "account_id": DEFAULT_ACCOUNT_ID,
        "base_url": IN_PROCESS_BASE_URL,
        "transport": asgi_transport(app),
        "backoff": FAST_BACKOFF,
    }
    settings.update(overrides)
    return AsyncSGPClient(**settings)


def loopback_client(server: ServerProcess, **overrides: Any) -> AsyncSGPClient:
    """A client of ``server`` over real loopback HTTP (the transport production uses)."""
    settings: dict[str, Any] = {
        "api_key": server.api_key,
        "account_id": server.account_id,
        "base_url": server.base_url,
        "backoff": FAST_BACKOFF,
    }
    settings.update(overrides)
    return AsyncSGPClient(**settings)


async def server_call(server: ServerProcess, method: str, *args: Any, **kwargs: Any) -> Any:
    """A ``ServerProcess`` admin call (a blocking HTTP call) in a thread, so the event loop
    and the queue's dispatcher on it keep running while the server answers."""
    bound = getattr(server, method)
    return await anyio.to_thread.run_sync(lambda: bound(*args, **kwargs))


@asynccontextmanager
async def watching(queue: UpsertQueue) -> AsyncIterator[list[QueueStats]]:
    """Check the accounting identity at every checkpoint while the block runs.

    Enter it around ``async with queue`` so the exit drain is sampled too.
    """
    broken: list[QueueStats] = []
    samples = 0

    async def watch() -> None:
        nonlocal samples
        while True:
            stats = queue.stats
            samples += 1
            if not stats.balanced:
                broken.append(stats)
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        try:
            yield broken
        finally:
            tg.cancel_scope.cancel()
    assert samples > 0
    assert broken == [], f"identity broken in {len(broken)} samples, first {broken[0]}"


async def wait_until(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    """Poll ``predicate()`` (for conditions no task can signal, like a server-side counter)."""
    with anyio.fail_after(timeout):
        # Polling on purpose: server counters and the clock signal no event.
        while not predicate():  # noqa: ASYNC110
            await anyio.sleep(0.005)


class AgentexSpan(pydantic.BaseModel):
    """Field for field agentex.types.span.Span (a generated pydantic model)."""

    id: str
    name: str
    start_time: datetime
    trace_id: str
    data: dict[str, object] | list[dict[str, object]] | None = None
    end_time: datetime | None = None
    input: dict[str, object] | list[dict[str, object]] | None = None
    output: dict[str, object] | list[dict[str, object]] | None = None
    parent_id: str | None = None
    task_id: str | None = None
