"""CPU cost of one agentex END event through ``AgentexTracingProcessor`` into a running
``UpsertQueue``, for a span as Temporal's pydantic converter delivers it (datetimes carrying
pydantic's ``TzInfo``) and for one built in-process (``datetime.timezone``).

``python -m benchmarks.agentex_events``. "before" is the adapter without its datetime
normalization (so the processor's slow path takes the TzInfo span); "after" is the adapter
as shipped. Nothing is sent while timing (the flush interval is out of reach, and the loop
never yields to the dispatcher); the queue is flushed between rounds. Uses agentex's own
span model when agentex-sdk is installed.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import orjson
import pydantic

import sgp_tracing.agentex as adapter_module
from sgp_client import AsyncSGPClient, UpsertQueue
from sgp_client.testing import DEFAULT_ACCOUNT_ID, DEFAULT_API_KEY, asgi_transport, create_app
from sgp_tracing.agentex import AgentexTracingProcessor


class _LookAlikeSpan(pydantic.BaseModel):
    """Field for field agentex.types.span.Span, when agentex-sdk is not installed."""

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


def _span_model() -> Any:
    try:
        from agentex.types.span import Span
    except ImportError:
        return _LookAlikeSpan
    return Span


def make_spans(count: int, *, temporal: bool, prefix: str = "span") -> list[Any]:
    """``count`` ended spans; ``temporal``: decoded from JSON as an activity receives them."""
    model = _span_model()
    start = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
    spans = []
    for i in range(count):
        fields = {
            "id": f"{prefix}-{i}",
            "trace_id": "trace-1",
            "parent_id": "span-root",
            "name": "llm-call",
            "start_time": start + timedelta(milliseconds=i),
            "end_time": start + timedelta(milliseconds=i + 5),
            "input": {"messages": [{"role": "user", "content": "hello"}]},
            "output": {"text": "hi there"},
            "data": {"__span_type__": "COMPLETION", "model": "m-1"},
        }
        if temporal:
            spans.append(model.model_validate_json(orjson.dumps(fields)))
        else:
            spans.append(model(**fields))
    return spans


def _unchanged(value: Any) -> Any:
    return value


@contextmanager
def _without_normalization(enabled: bool) -> Iterator[None]:
    original = adapter_module._utc
    if enabled:
        adapter_module._utc = _unchanged
    try:
        yield
    finally:
        adapter_module._utc = original


async def measure(variants: list[tuple[list[Any], bool]], rounds: int) -> list[float]:
    """Median µs per END event of each ``(spans, normalize)`` variant; the variants take
    turns within each round, so a busy machine weighs on all of them alike. Each round takes
    the next ``len(spans) // rounds`` spans: no span id is seen twice."""
    app = create_app()
    async with (
        AsyncSGPClient(
            api_key=DEFAULT_API_KEY,
            account_id=DEFAULT_ACCOUNT_ID,
            base_url="http://127.0.0.1/public",
            transport=asgi_transport(app),
        ) as client,
        UpsertQueue(client, flush_interval=3600) as queue,
    ):
        adapter = AgentexTracingProcessor.for_sink(queue, identity={"__source__": "agentex"})
        per_event: list[list[float]] = [[] for _ in variants]
        for _ in range(rounds):
            for costs, (spans, normalize) in zip(per_event, variants, strict=True):
                size = len(spans) // rounds
                chunk = spans[len(costs) * size : (len(costs) + 1) * size]
                with _without_normalization(not normalize):
                    began = time.perf_counter()
                    for span in chunk:
                        await adapter.on_span_end(span)
                    costs.append((time.perf_counter() - began) / size * 1e6)
                await queue.flush()
        return [statistics.median(costs) for costs in per_event]


async def main(count: int, rounds: int) -> None:
    before = make_spans(count * rounds, temporal=True, prefix="before")
    after = make_spans(count * rounds, temporal=True, prefix="after")
    local = make_spans(count * rounds, temporal=False, prefix="local")
    print(f"span model: {_span_model().__module__}; {count} END events x {rounds} rounds")
    print(f"tzinfo of a Temporal span: {type(after[0].start_time.tzinfo).__name__}")
    rows = [
        ("Temporal span (TzInfo), before", before, False),
        ("Temporal span (TzInfo), after", after, True),
        ("in-process span (timezone)", local, True),
    ]
    costs = await measure([(spans, normalize) for _, spans, normalize in rows], rounds)
    for (label, _, _), cost in zip(rows, costs, strict=True):
        print(f"{label:34} {cost:6.2f} µs/event")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    anyio.run(main, args.events, args.rounds)
