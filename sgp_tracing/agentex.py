"""agentex's tracing processor, backed by this SDK: agentex spans in, SGP span items out.

```python
from sgp_tracing.agentex import registered

async with AsyncSGPClient() as client, UpsertQueue(client) as queue, registered(queue):
    ...  # agentex's AsyncTracer spans (and its start-span/end-span activities) reach SGP
```

``register(sink)`` appends an ``AgentexTracingProcessor`` to agentex's
``GLOBAL_TRACING_PROCESSOR_MANAGER`` (agentex's own registration only takes its two built-in
config types); ``registered(sink)`` does that for a block and, on the way out, drains
agentex's span queue BEFORE the adapter stops: whatever agentex still holds reaches our
queue while it is open. With agentex-sdk installed (Python >= 3.12) the adapter is a real
subclass of agentex's ``AsyncTracingProcessor``; without it, the same interface duck-typed,
and any object with agentex's span attributes works.

What each span becomes is what agentex's own SGP processor writes, for the same SGP views:
``data`` is the metadata, plus ``__source__`` and the agent's ``__acp_type__``,
``__agent_name__``, ``__agent_id__``, ``__agent_version__`` (from agentex's environment
variables unless given); ``data["__span_type__"]`` is the type (``STANDALONE`` when absent);
``data["__error__"]`` marks it ``ERROR`` and adds ``error``, ``error_type``,
``error_message`` and ``error_category`` (as scale-gp-beta's ``set_error`` does); an absent
input or output is ``{}``. Unlike agentex's processor, the caller's span is never changed,
and a span agentex's processor cannot send (an unknown type, a list payload), which costs it
its whole batch, is coerced by ``SGPTracingProcessor`` and kept.

Starts are awaited: agentex awaits ``on_span_start``/``on_spans_start`` (in its span queue,
or in an activity that calls the processor), and it returns once the start is delivered, so
a span handed to another process is never overtaken by its own start. It raises ``SGPError``
when the start was not delivered; nothing else is raised into agentex.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timezone
from types import MappingProxyType
from typing import Any, Final, Protocol

import anyio

from sgp_client import SGPError

from ._processor import DeliveringProcessor, SGPTracingProcessor, SpanSink, TracingProcessor
from ._ratelimit import RateLimitedLog, logger
from ._span import Span

try:  # agentex-sdk installed: be one of its processors for real (its list is typed so)
    from agentex.lib.core.tracing.processors.tracing_processor_interface import (
        AsyncTracingProcessor as _AgentexProcessor,
    )
except ImportError:  # no agentex (or Python 3.11): the same methods, duck-typed
    _AgentexProcessor = object  # type: ignore[assignment, misc, unused-ignore]

__all__ = [
    "AgentexSpan",
    "AgentexTracingProcessor",
    "agent_metadata",
    "from_agentex_span",
    "register",
    "registered",
    "unregister",
]

#: ``data`` key agentex uses for the span type.
SPAN_TYPE_KEY: Final = "__span_type__"
#: ``data`` key agentex uses for the error of a failed span.
ERROR_KEY: Final = "__error__"
_DEFAULT_TYPE: Final = "STANDALONE"
_NO_IDENTITY: Final[Mapping[str, str]] = MappingProxyType({})


class AgentexSpan(Protocol):
    """The attributes read from an agentex span (``agentex.types.span.Span``)."""

    @property
    def id(self) -> str: ...
    @property
    def trace_id(self) -> str: ...
    @property
    def parent_id(self) -> str | None: ...
    @property
    def name(self) -> str: ...
    @property
    def start_time(self) -> datetime: ...
    @property
    def end_time(self) -> datetime | None: ...
    @property
    def input(self) -> Any: ...
    @property
    def output(self) -> Any: ...
    @property
    def data(self) -> Any: ...


def agent_metadata(
    *,
    acp_type: str | None = None,
    agent_name: str | None = None,
    agent_id: str | None = None,
    agent_version: str | None = None,
) -> dict[str, str]:
    """The keys agentex's SGP processor adds to each span's metadata; None leaves one out.

    Called with no argument: read from the environment variables agentex reads
    (``ACP_TYPE``, default ``async``; ``AGENT_NAME``, ``AGENT_ID``, ``AGENT_VERSION``).
    """
    if acp_type is agent_name is agent_id is agent_version is None:
        env = os.environ
        acp_type = env.get("ACP_TYPE", "async")
        agent_name, agent_id = env.get("AGENT_NAME"), env.get("AGENT_ID")
        agent_version = env.get("AGENT_VERSION")
    named = {
        "__acp_type__": acp_type,
        "__agent_name__": agent_name,
        "__agent_id__": agent_id,
        "__agent_version__": agent_version,
    }
    return {"__source__": "agentex", **{k: v for k, v in named.items() if v is not None}}


def _utc(value: Any) -> Any:
    # Temporal's pydantic converter gives datetimes with pydantic's TzInfo, which the
    # processor's fast path does not take (it trusts only datetime.timezone). astimezone(UTC)
    # is the same instant for about 1 µs; an END from an activity went from 22-32 µs to
    # 10-12 µs (python -m benchmarks.agentex_events, a loaded 2-core machine). Naive and
    # non-datetime values are the processor's to judge.
    if type(value) is datetime and value.tzinfo is not None and type(value.tzinfo) is not timezone:
        return value.astimezone(UTC)
    return value


def from_agentex_span(span: AgentexSpan, *, identity: Mapping[str, str] = _NO_IDENTITY) -> Span:
    """The ``Span`` of an agentex span, metadata as agentex's SGP processor writes it.

    ``identity`` is added to a dict ``data`` (see ``agent_metadata``); list-shaped data has
    no place for keys (agentex's processor leaves it alone too): the processor wraps it as
    ``{"value": [...]}``. Reads the span, shares its payloads, changes nothing.
    """
    data = getattr(span, "data", None)
    kind: Any = _DEFAULT_TYPE
    error: dict[str, Any] | None = None
    metadata: Any = data
    if data is None or isinstance(data, Mapping):
        kind = _DEFAULT_TYPE if data is None else data.get(SPAN_TYPE_KEY, _DEFAULT_TYPE)
        raw_error = None if data is None else data.get(ERROR_KEY)
        if isinstance(raw_error, Mapping):
            error = dict(raw_error)  # a copy: the processor may not alias the caller's dict
        elif raw_error is not None:
            error = {"type": "Error", "message": str(raw_error)}
        metadata = {**data, **identity} if data is not None else dict(identity)
        if error is not None:  # scale-gp-beta's set_error, and agentex's category default
            metadata["error"] = True
            metadata["error_type"] = error.get("type")
            metadata["error_message"] = error.get("message")
            metadata["error_category"] = error.get("category", "unknown")
    inp = getattr(span, "input", None)
    out = getattr(span, "output", None)
    return Span(
        id=getattr(span, "id", None),  # type: ignore[arg-type] # checked by the processor
        trace_id=getattr(span, "trace_id", None),  # type: ignore[arg-type]
        name=getattr(span, "name", None),  # type: ignore[arg-type]
        start_time=_utc(getattr(span, "start_time", None)),
        parent_id=getattr(span, "parent_id", None),
        end_time=_utc(getattr(span, "end_time", None)),
        input={} if inp is None else inp,  # agentex's processor sends {} for "none"
        output={} if out is None else out,
        metadata=metadata,
        type=kind if isinstance(kind, str) else str(kind),
        error=error,
    )


async def _deliver(processor: TracingProcessor, spans: list[Span], *, completed: bool) -> None:
    """Hand ``spans`` to the processor and return once their writes are delivered.

    Awaited concurrently, so the queue's group commit sends them in one request. Raises the
    first ``SGPError`` (``SpanDroppedError``, ``QueueNotRunningError``) when one was not
    delivered, after every other one was. A processor that cannot be awaited
    (``DeliveringProcessor``) gets them fire-and-forget.
    """
    if not isinstance(processor, DeliveringProcessor):
        (processor.on_spans_end if completed else processor.on_spans_start)(spans)
        return
    deliver_one = processor.deliver_end if completed else processor.deliver_start
    if len(spans) == 1:
        await deliver_one(spans[0])
        return
    failures: list[SGPError] = []

    async def deliver(span: Span) -> None:
        try:
            await deliver_one(span)
        except SGPError as exc:  # collected, not a task-group failure: the others go on
            failures.append(exc)

    async with anyio.create_task_group() as group:
        for span in spans:
            group.start_soon(deliver, span)
    if failures:
        raise failures[0]


class AgentexTracingProcessor(_AgentexProcessor):  # type: ignore[misc, unused-ignore]
    """agentex's async processor interface over a processor of this package.

    ``AgentexTracingProcessor.for_sink(queue, **processor_options)``, or
    ``AgentexTracingProcessor(SGPTracingProcessor(queue))``; a start is awaited with the
    processor's ``deliver_start``. ``identity``: the agent keys of each span's metadata, from
    agentex's environment variables when None (see ``agent_metadata``). Never raises into agentex,
    except ``SGPError`` from a start that was not delivered.
    """

    __slots__ = ("_errors", "_identity", "_log", "processor")

    def __init__(
        self,
        processor: TracingProcessor,
        *,
        identity: Mapping[str, str] | None = None,
    ) -> None:
        self.processor = processor
        self._identity: Mapping[str, str] = MappingProxyType(
            agent_metadata() if identity is None else dict(identity)
        )
        self._errors = 0
        self._log = RateLimitedLog(logger)

    @classmethod
    def for_sink(
        cls, sink: SpanSink, *, identity: Mapping[str, str] | None = None, **options: Any
    ) -> AgentexTracingProcessor:
        """An adapter over a new ``SGPTracingProcessor(sink, **options)``."""
        return cls(SGPTracingProcessor(sink, **options), identity=identity)

    @property
    def errors(self) -> int:
        """Spans that could not be read, and wrapped-processor calls that raised (contained)."""
        return self._errors

    @property
    def identity(self) -> Mapping[str, str]:
        """The agent keys added to each span's metadata."""
        return self._identity

    async def on_span_start(self, span: AgentexSpan) -> None:
        """agentex started a span: returns once its start is delivered."""
        await self._deliver_all((span,), completed=False)

    async def on_span_end(self, span: AgentexSpan) -> None:
        """agentex ended a span: returns once its end is delivered."""
        await self._deliver_all((span,), completed=True)

    async def on_spans_start(self, spans: Iterable[AgentexSpan]) -> None:
        """agentex started several spans: returns once their starts are delivered."""
        await self._deliver_all(spans, completed=False)

    async def on_spans_end(self, spans: Iterable[AgentexSpan]) -> None:
        """agentex ended several spans: returns once their ends are delivered."""
        await self._deliver_all(spans, completed=True)

    async def _deliver_all(self, spans: Iterable[AgentexSpan], *, completed: bool) -> None:
        # Awaited: agentex awaits its processors inside its start-span and end-span
        # activities, so an activity completes only once its write is delivered (a worker
        # SIGKILLed before that loses nothing: Temporal retries the activity elsewhere).
        converted = self._convert_all(spans)
        if not converted:  # nothing to wait for
            return
        try:
            await _deliver(self.processor, converted, completed=completed)
        except SGPError:
            raise  # not delivered: agentex (or Temporal) should know
        except Exception as exc:  # a broken processor
            self._failed("on_spans_end" if completed else "on_spans_start", exc)

    async def shutdown(self) -> None:
        """Shut the wrapped processor down (the sink stays with its owner)."""
        try:
            self.processor.shutdown()
        except Exception as exc:  # never into agentex
            self._failed("shutdown", exc)

    def _convert(self, span: AgentexSpan) -> Span | None:
        try:
            return from_agentex_span(span, identity=self._identity)
        except Exception as exc:  # a span we cannot even read
            self._failed("convert", exc)
            return None

    def _convert_all(self, spans: Iterable[AgentexSpan]) -> list[Span]:
        converted: list[Span] = []
        try:
            for span in spans:
                one = self._convert(span)
                if one is not None:
                    converted.append(one)
        except Exception as exc:  # a broken iterable
            self._failed("convert", exc)
        return converted

    def _failed(self, where: str, exc: Exception) -> None:
        self._errors += 1
        self._log.warning(f"agentex:{where}", "agentex tracing adapter: %s failed: %r", where, exc)


# -- registration with agentex ----------------------------------------------------------


def _manager(manager: Any) -> Any:
    if manager is not None:
        return manager
    try:
        from agentex.lib.core.tracing.tracing_processor_manager import (
            GLOBAL_TRACING_PROCESSOR_MANAGER,
        )
    except ImportError as exc:
        raise ImportError(
            "sgp_tracing.agentex.register needs agentex-sdk (Python >= 3.12): "
            "pip install 'sgp-async[agentex]'"
        ) from exc
    return GLOBAL_TRACING_PROCESSOR_MANAGER


def register(
    sink: SpanSink,
    *,
    identity: Mapping[str, str] | None = None,
    manager: Any = None,
    **options: Any,
) -> AgentexTracingProcessor:
    """A new adapter over ``sink``, added to agentex's async processors; returns it.

    ``manager`` defaults to agentex's ``GLOBAL_TRACING_PROCESSOR_MANAGER``; every trace an
    ``AsyncTracer`` opens afterwards sends its spans to the adapter too. ``options`` go to
    ``SGPTracingProcessor``. Undo with ``unregister``, or use ``registered`` instead.
    """
    adapter = AgentexTracingProcessor.for_sink(sink, identity=identity, **options)
    target = _manager(manager)
    with target.lock:  # agentex's own registration takes this lock too
        target.async_processors.append(adapter)
    return adapter


def unregister(adapter: AgentexTracingProcessor, *, manager: Any = None) -> None:
    """Remove ``adapter`` from agentex's async processors (no error if it is not there).

    Events agentex's span queue still holds for it are then lost: drain that queue first
    (``registered`` does).
    """
    target = _manager(manager)
    with target.lock:
        if adapter in target.async_processors:
            target.async_processors.remove(adapter)


@asynccontextmanager
async def registered(
    sink: SpanSink,
    *,
    span_queue: Any = None,
    identity: Mapping[str, str] | None = None,
    manager: Any = None,
    **options: Any,
) -> AsyncIterator[AgentexTracingProcessor]:
    """``register`` for the block; on exit, in this order: agentex's span queue is drained
    (``span_queue``, default agentex's default queue), the adapter is unregistered and shut
    down. Open it inside the sink's ``async with`` so the sink closes last. asyncio only
    (agentex's span queue is).
    """
    adapter = register(sink, identity=identity, manager=manager, **options)
    try:
        yield adapter
    finally:
        try:
            # First: what agentex still queues reaches the adapter, and through it the sink.
            if span_queue is not None:
                await span_queue.shutdown()
            else:
                from agentex.lib.core.tracing.span_queue import shutdown_default_span_queue

                await shutdown_default_span_queue()
        finally:
            unregister(adapter, manager=manager)
            await adapter.shutdown()
