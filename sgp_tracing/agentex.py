"""An agentex tracing processor backed by this SDK: agentex spans in, SGP span items out.

agentex calls its processors through an async interface (``AsyncTracingProcessor``:
``async on_span_start``, ``on_span_end``, ``on_spans_start``, ``on_spans_end``, ``shutdown``)
with its own span model (``id``, ``trace_id``, ``parent_id``, ``name``, ``start_time``,
``end_time``, ``input``, ``output``, ``data``). ``AgentexTracingProcessor`` has exactly that
interface, so it can be registered with agentex as is, and hands each span, converted, to a
processor of this package (usually ``SGPTracingProcessor`` over an ``UpsertQueue``).

agentex conventions kept: ``data`` becomes the metadata; ``data["__span_type__"]`` is the
span type (``STANDALONE`` when absent, as agentex does); ``data["__error__"]`` (``{"type",
"message"}``) marks the span ``ERROR``. The caller's span is only read, never changed: agentex
may hand the same object to other processors. agentex itself is not a dependency; any object
with those attributes works.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Final, Protocol

from ._processor import SGPTracingProcessor, SpanSink, TracingProcessor
from ._ratelimit import RateLimitedLog, logger
from ._span import Span

__all__ = ["AgentexSpan", "AgentexTracingProcessor", "from_agentex_span"]

#: ``data`` key agentex uses for the span type.
SPAN_TYPE_KEY: Final = "__span_type__"
#: ``data`` key agentex uses for the error of a failed span.
ERROR_KEY: Final = "__error__"
_DEFAULT_TYPE: Final = "STANDALONE"


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


def from_agentex_span(span: AgentexSpan) -> Span:
    """The ``Span`` of an agentex span; reads it, shares its payloads, changes nothing."""
    data = getattr(span, "data", None)
    kind: Any = _DEFAULT_TYPE
    error: dict[str, Any] | None = None
    if isinstance(data, Mapping):
        kind = data.get(SPAN_TYPE_KEY, _DEFAULT_TYPE)
        raw_error = data.get(ERROR_KEY)
        if isinstance(raw_error, Mapping):
            error = dict(raw_error)  # a copy: the processor may not alias the caller's dict
        elif raw_error is not None:
            error = {"type": "Error", "message": str(raw_error)}
    return Span(
        id=getattr(span, "id", None),  # type: ignore[arg-type] # checked by the processor
        trace_id=getattr(span, "trace_id", None),  # type: ignore[arg-type]
        name=getattr(span, "name", None),  # type: ignore[arg-type]
        start_time=getattr(span, "start_time", None),  # type: ignore[arg-type]
        parent_id=getattr(span, "parent_id", None),
        end_time=getattr(span, "end_time", None),
        input=getattr(span, "input", None),
        output=getattr(span, "output", None),
        metadata=data,
        type=kind if isinstance(kind, str) else str(kind),
        error=error,
    )


class AgentexTracingProcessor:
    """agentex's async processor interface over a processor of this package; never raises.

    ``AgentexTracingProcessor(SGPTracingProcessor(queue))``, or
    ``AgentexTracingProcessor.for_sink(queue, **processor_options)``.
    """

    __slots__ = ("_errors", "_log", "processor")

    def __init__(self, processor: TracingProcessor) -> None:
        self.processor = processor
        self._errors = 0
        self._log = RateLimitedLog(logger)

    @classmethod
    def for_sink(cls, sink: SpanSink, **options: Any) -> AgentexTracingProcessor:
        """An adapter over a new ``SGPTracingProcessor(sink, **options)``."""
        return cls(SGPTracingProcessor(sink, **options))

    @property
    def errors(self) -> int:
        """Spans that could not be read, and wrapped-processor calls that raised (contained)."""
        return self._errors

    async def on_span_start(self, span: AgentexSpan) -> None:
        """agentex started a span."""
        converted = self._convert(span)
        if converted is not None:
            self._call("on_span_start", converted)

    async def on_span_end(self, span: AgentexSpan) -> None:
        """agentex ended a span."""
        converted = self._convert(span)
        if converted is not None:
            self._call("on_span_end", converted)

    async def on_spans_start(self, spans: Iterable[AgentexSpan]) -> None:
        """agentex started several spans."""
        self._call("on_spans_start", self._convert_all(spans))

    async def on_spans_end(self, spans: Iterable[AgentexSpan]) -> None:
        """agentex ended several spans."""
        self._call("on_spans_end", self._convert_all(spans))

    async def shutdown(self) -> None:
        """Shut the wrapped processor down (the sink stays with its owner)."""
        try:
            self.processor.shutdown()
        except Exception as exc:  # never into agentex
            self._failed("shutdown", exc)

    def _convert(self, span: AgentexSpan) -> Span | None:
        try:
            return from_agentex_span(span)
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

    def _call(self, method: str, arg: Any) -> None:
        try:
            getattr(self.processor, method)(arg)
        except Exception as exc:  # a broken processor
            self._failed(method, exc)

    def _failed(self, where: str, exc: Exception) -> None:
        self._errors += 1
        self._log.warning(f"agentex:{where}", "agentex tracing adapter: %s failed: %r", where, exc)
