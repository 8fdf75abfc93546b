"""The tracer: span scopes as async context managers, parent propagation, explicit lifecycles.

The current span lives in a ``contextvars.ContextVar``: it follows ``await`` and is copied
into tasks started by anyio task groups on asyncio and trio, so concurrent children find
their parent without any bookkeeping here. The tracer holds no spans either: a scope object
lives as long as its ``async with`` block, and ``start_span``/``end_span`` pass everything in
the ``Span`` itself, which may travel to another process in between.

This is the hot path of the SDK, hence the hand-written ``__aenter__``/``__aexit__`` class
instead of ``contextlib.asynccontextmanager`` (a generator frame and several extra calls per
span), bound processor methods resolved once, and the clock read as an integer
(``time.time_ns()``) and stored in the span as is: ``Span`` converts it to a datetime only if
someone reads ``start_time`` or ``end_time`` (see ``_span``).
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final, ParamSpec, TypeVar, cast, overload

import anyio

from sgp_client import SPAN_STATUSES, SGPError, new_span_id
from sgp_client._constants import EPOCH

from ._coerce import fix_str
from ._processor import DeliveringProcessor, TracingProcessor
from ._ratelimit import RateLimitedLog, logger
from ._span import Span, new_span

__all__ = ["SpanScope", "Tracer", "current_span", "traced"]

P = ParamSpec("P")
R = TypeVar("R")

_MAX_ERROR_MESSAGE: Final = 4096

# The scope of the innermost span of the current context (None outside any span). A scope,
# not a span, so ``@traced`` can also find the tracer that opened it.
_current: ContextVar[SpanScope | None] = ContextVar("sgp_tracing_current", default=None)


def current_span() -> Span | None:
    """The innermost span opened with ``async with`` in this context, if any."""
    scope = _current.get()
    return None if scope is None else scope.span


class SpanScope:
    """``async with`` one span: start event on entry, end event on exit, current in between.

    Returned by ``Tracer.trace`` and ``Tracer.span``; entering yields the ``Span``.
    """

    __slots__ = ("_new_trace", "_token", "span", "tracer")

    def __init__(self, tracer: Tracer, span: Span, new_trace: bool) -> None:
        self.tracer = tracer
        self.span = span
        self._new_trace = new_trace
        self._token: Token[SpanScope | None] | None = None

    async def __aenter__(self) -> Span:
        span = self.span
        if not self._new_trace:
            # The parent is looked up on entry, not when the scope was made: that is the
            # context the block runs in.
            parent = _current.get()
            if parent is None:
                span.trace_id = span.id  # a new trace, named after its root span
            else:
                parent_span = parent.span
                span.trace_id = parent_span.trace_id
                span.parent_id = parent_span.id
        span._start_ns = time.time_ns()  # the clock reading, converted only if read
        self._token = _current.set(self)
        tracer = self.tracer
        try:
            tracer._on_start(span)
        except Exception as exc:  # a processor must never break the caller
            tracer._processor_failed("on_span_start", exc)
        return span

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        span = self.span
        start_ns = span._start_ns
        if start_ns is not None:
            end_ns = time.time_ns()
            span._end_ns = end_ns if end_ns >= start_ns else start_ns  # the clock may step back
        else:  # the block replaced start_time (with a datetime, or worse)
            start: Any = span._start_time
            end_time = datetime.now(UTC)
            try:
                later = end_time >= start
            except Exception:  # naive, or not a time at all: the processor sorts it out
                later = True
            span.end_time = end_time if later else start
        if exc is not None:
            record_error(span, exc)
        elif span.status is None:
            span.status = "SUCCESS"
        token = self._token
        if token is not None:
            self._token = None
            # try/except, not contextlib.suppress: free when nothing is raised, and this
            # runs once per span.
            try:  # noqa: SIM105
                _current.reset(token)
            except ValueError:
                # Exited in another context than it was entered in (an unusual hand-off of
                # the context manager); that context never saw this span as current.
                pass
        tracer = self.tracer
        try:
            tracer._on_end(span)
        except Exception as exc2:  # a processor must never break the caller
            tracer._processor_failed("on_span_end", exc2)
        # Returning None re-raises the block's exception, cancellation included.


def record_error(span: Span, exc: BaseException) -> None:
    """Set ``status`` (``CANCELED`` for a cancellation, else ``ERROR``) and ``error``."""
    span.status = "CANCELED" if _is_cancellation(exc) else "ERROR"
    try:
        message = str(exc)
    except Exception:  # __str__ of a user exception may raise
        message = f"<unprintable {type(exc).__name__}>"
    span.error = {
        "type": type(exc).__name__,
        "message": fix_str(message, _MAX_ERROR_MESSAGE),
    }


def _is_cancellation(exc: BaseException) -> bool:
    try:
        cancelled: type[BaseException] = anyio.get_cancelled_exc_class()
    except Exception:  # no async library running (a sync end_span)
        return type(exc).__name__ in ("CancelledError", "Cancelled")
    if isinstance(exc, cancelled):
        return True
    if isinstance(exc, BaseExceptionGroup):
        # A task group cancelled as a whole raises a group of cancellations.
        return all(_is_cancellation(e) for e in exc.exceptions)
    return False


class _FanOut:
    """Several processors behind one: each call isolated, so one failing skips no other."""

    __slots__ = ("_processors", "_tracer")

    def __init__(self, tracer: Tracer, processors: Sequence[TracingProcessor]) -> None:
        self._tracer = tracer
        self._processors = tuple(processors)

    def on_span_start(self, span: Span) -> None:
        for processor in self._processors:
            try:
                processor.on_span_start(span)
            except Exception as exc:  # isolation is the point
                self._tracer._processor_failed("on_span_start", exc)

    def on_span_end(self, span: Span) -> None:
        for processor in self._processors:
            try:
                processor.on_span_end(span)
            except Exception as exc:  # isolation is the point
                self._tracer._processor_failed("on_span_end", exc)


def _ignore(span: Span) -> None:
    """The event handler of a tracer without processors."""


class Tracer:
    """Opens spans and reports their start and end to one or more processors.

    ``Tracer(processor)`` or ``Tracer([p1, p2])``. A processor raising never affects the
    others or the caller: the failure is counted (``processor_errors``) and logged.
    """

    __slots__ = ("_log", "_on_end", "_on_start", "_processor_error_count", "_processors")

    def __init__(self, processors: TracingProcessor | Iterable[TracingProcessor]) -> None:
        # Duck-typed on purpose: a processor implementing only the single-span methods is
        # still a processor, not an iterable of them.
        if hasattr(processors, "on_span_start"):
            procs: tuple[TracingProcessor, ...] = (cast(TracingProcessor, processors),)
        else:
            procs = tuple(processors)
        self._processors = procs
        self._processor_error_count = 0
        self._log = RateLimitedLog(logger)
        self._on_start: Callable[[Span], None]
        self._on_end: Callable[[Span], None]
        if not procs:
            self._on_start = self._on_end = _ignore
        elif len(procs) == 1:
            # One processor: its bound methods directly, guarded by the scope's own
            # try/except (free in CPython 3.11+ when nothing is raised).
            self._on_start = procs[0].on_span_start
            self._on_end = procs[0].on_span_end
        else:
            fan_out = _FanOut(self, procs)
            self._on_start = fan_out.on_span_start
            self._on_end = fan_out.on_span_end

    @property
    def processors(self) -> tuple[TracingProcessor, ...]:
        """The processors, in call order."""
        return self._processors

    @property
    def processor_errors(self) -> int:
        """How many processor calls raised (and were contained)."""
        return self._processor_error_count

    def trace(
        self,
        name: str,
        *,
        trace_id: str | None = None,
        input: Any = None,
        metadata: Any = None,
        type: str | None = None,
        group_id: str | None = None,
    ) -> SpanScope:
        """``async with`` a new trace: its root span, whatever span is current.

        ``trace_id`` defaults to the root span's id (one id fewer to make).
        """
        span_id = new_span_id()
        span = new_span(
            span_id,
            span_id if trace_id is None else trace_id,
            name,
            EPOCH,  # set on entry
            None,
            input,
            metadata,
            type,
            group_id,
        )
        return SpanScope(self, span, True)

    def span(
        self,
        name: str,
        *,
        input: Any = None,
        metadata: Any = None,
        type: str | None = None,
        group_id: str | None = None,
    ) -> SpanScope:
        """``async with`` a child of the current span, or the root of a new trace if none."""
        # trace_id is settled on entry; the placeholders keep the Span well-typed until then.
        return SpanScope(
            self,
            new_span(new_span_id(), "", name, EPOCH, None, input, metadata, type, group_id),
            False,
        )

    def start_span(
        self,
        name: str,
        *,
        trace_id: str | None = None,
        parent_id: str | None = None,
        input: Any = None,
        metadata: Any = None,
        type: str | None = None,
        group_id: str | None = None,
        span_id: str | None = None,
        start_time: datetime | None = None,
    ) -> Span:
        """Start a span without a block; end it with ``end_span``, here or elsewhere.

        Without ``trace_id`` the span joins the current span's trace (as its child unless
        ``parent_id`` says otherwise), or starts a new trace. The span does not become the
        current span. Send ``span.to_dict()`` to the process that will end it only once its
        start is delivered: use ``start_span_delivered`` for that (with a fire-and-forget
        start, this process's start may land after the other process's end).
        """
        span = self._new_span(
            name, trace_id, parent_id, input, metadata, type, group_id, span_id, start_time
        )
        self._emit_start(span)
        return span

    async def start_span_delivered(
        self,
        name: str,
        *,
        trace_id: str | None = None,
        parent_id: str | None = None,
        input: Any = None,
        metadata: Any = None,
        type: str | None = None,
        group_id: str | None = None,
        span_id: str | None = None,
        start_time: datetime | None = None,
    ) -> Span:
        """``start_span`` that returns once the start is delivered (the Temporal shape).

        Each processor with ``deliver_start`` (``SGPTracingProcessor``) is awaited; the others
        get ``on_span_start``. Raises ``SpanDroppedError`` when the start was dropped (a
        Temporal activity then fails and is retried). The returned span, or its
        ``to_dict()``, is then safe to hand to another process, which may end it at once.
        """
        span = self._new_span(
            name, trace_id, parent_id, input, metadata, type, group_id, span_id, start_time
        )
        await self._deliver(span, completed=False)
        return span

    def _new_span(
        self,
        name: str,
        trace_id: str | None,
        parent_id: str | None,
        input: Any,
        metadata: Any,
        kind: str | None,
        group_id: str | None,
        span_id: str | None,
        start_time: datetime | None,
    ) -> Span:
        if trace_id is None:
            scope = _current.get()
            if scope is not None:
                trace_id = scope.span.trace_id
                if parent_id is None:
                    parent_id = scope.span.id
        sid = new_span_id() if span_id is None else span_id
        return Span(
            id=sid,
            trace_id=sid if trace_id is None else trace_id,
            name=name,
            start_time=datetime.now(UTC) if start_time is None else start_time,
            parent_id=parent_id,
            input=input,
            metadata=metadata,
            type=kind,
            group_id=group_id,
        )

    def end_span(
        self,
        span: Span,
        *,
        output: Any = None,
        error: BaseException | dict[str, Any] | None = None,
        status: str | None = None,
        end_time: datetime | None = None,
    ) -> Span:
        """End ``span`` (possibly rebuilt with ``Span.from_dict`` in another process).

        ``output`` replaces the span's output when given; ``error`` (an exception or a
        ``{"type", "message"}`` dict) marks it failed, a cancellation as ``CANCELED``;
        ``status`` overrides both. Returns the span.
        """
        self._finish(span, output, error, status, end_time)
        self._emit_end(span)
        return span

    async def end_span_delivered(
        self,
        span: Span,
        *,
        output: Any = None,
        error: BaseException | dict[str, Any] | None = None,
        status: str | None = None,
        end_time: datetime | None = None,
    ) -> Span:
        """``end_span`` that returns once the end is delivered; raises ``SpanDroppedError``
        when it was dropped (see ``start_span_delivered``)."""
        self._finish(span, output, error, status, end_time)
        await self._deliver(span, completed=True)
        return span

    def _finish(
        self,
        span: Span,
        output: Any,
        error: BaseException | dict[str, Any] | None,
        status: str | None,
        end_time: datetime | None,
    ) -> None:
        try:
            if output is not None:
                span.output = output
            if isinstance(error, BaseException):
                record_error(span, error)
            elif error is not None:
                span.error = error
                span.status = "ERROR"
            if status is not None:
                span.status = status
            elif span.status not in SPAN_STATUSES:
                span.status = "SUCCESS"
            end = datetime.now(UTC) if end_time is None else end_time
            start = span.start_time
            if isinstance(start, datetime) and _comparable(start, end) and end < start:
                end = start  # the other process's clock may be behind this one's
            span.end_time = end
        except Exception as exc:  # a hostile span object; still report it
            self._processor_failed("end_span", exc)

    async def _deliver(self, span: Span, *, completed: bool) -> None:
        """Hand ``span`` to every processor, awaiting those that deliver (in order).

        A write that was not delivered (``SGPError``: ``SpanDroppedError``, a queue not
        running) is the caller's to see, which is the point; it is raised once every
        processor has had the event, so one processor's failure costs the others nothing.
        """
        undelivered: SGPError | None = None
        for processor in self._processors:
            if isinstance(processor, DeliveringProcessor):
                try:
                    if completed:
                        await processor.deliver_end(span)
                    else:
                        await processor.deliver_start(span)
                except SGPError as exc:
                    undelivered = undelivered or exc
                except Exception as exc:  # a processor must never break the caller
                    self._processor_failed("deliver_end" if completed else "deliver_start", exc)
                continue
            try:
                if completed:
                    processor.on_span_end(span)
                else:
                    processor.on_span_start(span)
            except Exception as exc:  # a processor must never break the caller
                self._processor_failed("on_span_end" if completed else "on_span_start", exc)
        if undelivered is not None:
            raise undelivered

    def shutdown(self) -> None:
        """Call ``shutdown()`` on every processor, each isolated from the others."""
        for processor in self._processors:
            try:
                processor.shutdown()
            except Exception as exc:  # isolation is the point
                self._processor_failed("shutdown", exc)

    @overload
    def traced(self, func: Callable[P, Awaitable[R]], /) -> Callable[P, Awaitable[R]]: ...

    @overload
    def traced(
        self,
        func: None = None,
        /,
        *,
        name: str | None = None,
        type: str | None = None,
        capture_args: bool = False,
        capture_result: bool = False,
    ) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]: ...

    def traced(
        self,
        func: Callable[P, Awaitable[R]] | None = None,
        /,
        *,
        name: str | None = None,
        type: str | None = None,
        capture_args: bool = False,
        capture_result: bool = False,
    ) -> Any:
        """``traced`` bound to this tracer: spans even outside any open span."""
        return traced(
            func,  # type: ignore[arg-type]
            name=name,
            type=type,
            capture_args=capture_args,
            capture_result=capture_result,
            tracer=self,
        )

    def _emit_start(self, span: Span) -> None:
        try:
            self._on_start(span)
        except Exception as exc:  # a processor must never break the caller
            self._processor_failed("on_span_start", exc)

    def _emit_end(self, span: Span) -> None:
        try:
            self._on_end(span)
        except Exception as exc:  # a processor must never break the caller
            self._processor_failed("on_span_end", exc)

    def _processor_failed(self, where: str, exc: Exception) -> None:
        self._processor_error_count += 1
        self._log.warning(f"processor:{where}", "a tracing processor's %s raised %r", where, exc)


def _comparable(a: datetime, b: datetime) -> bool:
    return (a.tzinfo is None) is (b.tzinfo is None)


@overload
def traced(func: Callable[P, Awaitable[R]], /) -> Callable[P, Awaitable[R]]: ...


@overload
def traced(
    func: None = None,
    /,
    *,
    name: str | None = None,
    type: str | None = None,
    capture_args: bool = False,
    capture_result: bool = False,
    tracer: Tracer | None = None,
) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]: ...


def traced(
    func: Callable[P, Awaitable[R]] | None = None,
    /,
    *,
    name: str | None = None,
    type: str | None = None,
    capture_args: bool = False,
    capture_result: bool = False,
    tracer: Tracer | None = None,
) -> Any:
    """Trace each call of an async function as a span named after it.

    ``@traced`` or ``@traced(name=..., type=..., capture_args=True, capture_result=True)``.
    Without ``tracer`` the span goes to the tracer of the current span, and a call outside
    any span is not traced (there is no global tracer). Arguments and the return value are
    recorded only when asked (``capture_args``: ``input`` maps parameter names to values;
    ``capture_result``: ``output`` is the value), since they may be large or sensitive.
    """

    def decorate(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"@traced supports async functions only, got {fn!r}")
        span_name = name if name is not None else getattr(fn, "__qualname__", repr(fn))
        signature = inspect.signature(fn) if capture_args else None

        @functools.wraps(fn)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            active = tracer
            if active is None:
                scope = _current.get()
                if scope is None:
                    return await fn(*args, **kwargs)
                active = scope.tracer
            inputs = None if signature is None else _bind_arguments(signature, args, kwargs)
            async with active.span(span_name, input=inputs, type=type) as span:
                result = await fn(*args, **kwargs)
                if capture_result:
                    span.output = result
                return result

        return wrapper

    return decorate if func is None else decorate(func)


def _bind_arguments(
    signature: inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, Any] | None:
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError:
        return None  # the call itself will raise the same TypeError, traced as an error
    arguments = dict(bound.arguments)
    arguments.pop("self", None)
    arguments.pop("cls", None)
    return arguments
