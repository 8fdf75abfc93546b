"""The stateless SGP processor: every span event becomes one fresh ``SpanItem``, submitted.

No per-span state, on purpose (see "Why the tracing layer is stateless" in the API notes):
a start and its end may be seen by different processes, so each event carries everything its
item needs and the idempotent upsert (and the queue's coalescing) does the rest. An END seen
without its START still produces a complete span; a START never seen ends nothing here.

Processors are called from agent code, so ``SGPTracingProcessor`` never raises into it. It
coerces what it can (the slow path, ``_coerce``) and drops, counts and logs what it cannot.
The usual event takes the fast path: ``sgp_client.plain_record`` checks its shape and
snapshots its payloads in one call, and a sink that takes records (``UpsertQueue``) gets
that record, with no ``SpanItem`` built.
"""

from __future__ import annotations

import logging
import reprlib
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Final, Protocol, runtime_checkable

import attrs

from sgp_client import (
    SPAN_STATUSES,
    SPAN_TYPES,
    InvalidSpanError,
    QueueNotRunningError,
    SpanDroppedError,
    SpanItem,
    SpanRecord,
    SpanType,
    plain_record,
)
from sgp_client._models import id_problem

from ._coerce import PayloadFitter, fix_str, to_json_safe
from ._ratelimit import RateLimitedLog, logger
from ._span import Span

__all__ = [
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "ERROR_METADATA_KEY",
    "ORIGINAL_TYPE_METADATA_KEY",
    "AwaitableRecordSink",
    "AwaitableSink",
    "DeliveringProcessor",
    "ProcessorStats",
    "RecordSink",
    "SGPTracingProcessor",
    "SpanSink",
    "TracingProcessor",
]

#: Default limit of one encoded payload (input, output or metadata) of one item.
DEFAULT_MAX_PAYLOAD_BYTES: Final = 256 * 1024
#: Metadata key of an ended span's error details (agentex's convention for the same thing).
ERROR_METADATA_KEY: Final = "__error__"
#: Metadata key keeping a span type the API does not know (the item says ``CUSTOM``).
ORIGINAL_TYPE_METADATA_KEY: Final = "__span_type__"
_MAX_NAME_CHARS: Final = 4096
# The fast path measures the payloads together, as one JSON object: their keys and commas
# add at most this many bytes to the limit of one payload. Anything bigger takes the slow
# path, which checks each payload against the limit on its own.
_CONTENT_KEYS_BYTES: Final = 32


class SpanSink(Protocol):
    """Anything that takes span items: ``sgp_client.UpsertQueue``, or a test double.

    ``submit`` should be quick and must not block; it may raise ``InvalidSpanError`` for an
    item it refuses and ``QueueNotRunningError`` when it is not accepting items.
    """

    def submit(self, item: SpanItem, /) -> None:
        """Take one item."""


@runtime_checkable
class RecordSink(SpanSink, Protocol):
    """A sink that also takes ``SpanRecord``s (``UpsertQueue``): the processor's fast path
    then builds no ``SpanItem``. ``takes_records`` says whether ``submit_record`` may be
    used (a test sink offers both paths); the processor reads it once, when constructed.
    """

    @property
    def takes_records(self) -> bool:
        """True when ``submit_record`` may be used."""

    def submit_record(self, record: SpanRecord, /) -> None:
        """Take one record (``sgp_client.plain_record``)."""


@runtime_checkable
class AwaitableSink(Protocol):
    """A sink whose writes can be awaited until delivered (``UpsertQueue.upsert``); what
    ``SGPTracingProcessor.deliver_start`` / ``deliver_end`` need."""

    async def upsert(self, item: SpanItem, /) -> None:
        """Take one item; return once it is delivered, raise ``SpanDroppedError`` if not."""


@runtime_checkable
class AwaitableRecordSink(Protocol):
    """A sink whose record writes can be awaited (``UpsertQueue.upsert_record``)."""

    async def upsert_record(self, record: SpanRecord, /) -> None:
        """``upsert`` for a record."""


@runtime_checkable
class TracingProcessor(Protocol):
    """Receives span events from a ``Tracer``; synchronous, cheap, and keeps no span state."""

    def on_span_start(self, span: Span, /) -> None:
        """A span started (``end_time`` and ``status`` are None)."""

    def on_span_end(self, span: Span, /) -> None:
        """A span ended (``end_time`` and ``status`` are set)."""

    def on_spans_start(self, spans: Iterable[Span], /) -> None:
        """Several spans started."""

    def on_spans_end(self, spans: Iterable[Span], /) -> None:
        """Several spans ended."""

    def shutdown(self) -> None:
        """No more events will come."""


@runtime_checkable
class DeliveringProcessor(Protocol):
    """A processor whose events can be awaited until delivered (``SGPTracingProcessor``);
    ``Tracer.start_span_delivered`` / ``end_span_delivered`` use it."""

    async def deliver_start(self, span: Span, /) -> None:
        """``on_span_start``, returning once the start is delivered."""

    async def deliver_end(self, span: Span, /) -> None:
        """``on_span_end``, returning once the end is delivered."""


@attrs.frozen(kw_only=True)
class ProcessorStats:
    """What a processor had to fix (``coerced``) or give up on (``dropped``), by reason.

    ``coerced`` reasons: ``input_not_dict`` / ``output_not_dict`` / ``metadata_not_dict``
    (wrapped as ``{"value": ...}``), ``not_json`` (values converted), ``truncated`` (a payload
    over the size limit replaced by a marker), ``name``, ``start_time``, ``missing_end_time``,
    ``end_before_start``, ``invalid_status``, ``unknown_type``, ``resubmitted`` (the sink
    refused the fast item and took the fully converted one).

    ``dropped`` reasons: ``invalid_id``, ``invalid_start_time``, ``invalid_item``,
    ``rejected`` (the sink refused even the converted item), ``sink_not_running``,
    ``sink_error``, ``shutdown`` (event after ``shutdown()``), ``processor_error``.
    """

    coerced: Mapping[str, int]
    dropped: Mapping[str, int]

    @property
    def total_dropped(self) -> int:
        """Events that produced no item."""
        return sum(self.dropped.values())


class SGPTracingProcessor:
    """Turns span events into items and submits them to ``sink``; never raises.

    ``max_payload_bytes`` bounds each encoded payload (input, output, metadata); a bigger one
    is replaced by a ``{"__truncated__": true, ...}`` marker with a preview. ``default_type``
    is the type of spans that have none (None lets the server decide); an unknown type is
    sent as ``CUSTOM`` with the original in ``metadata["__span_type__"]``. The status of an
    end is the span's, or ``ERROR`` when it carries an error, else ``SUCCESS``; a start has
    none. ``send_starts=False`` writes no starts at all, only ends: half the writes, but no
    "Running" state is visible while a span is open. Problems are counted in ``stats`` and
    logged at most once per ``log_interval`` seconds per reason.
    """

    __slots__ = (
        "_awaitable",
        "_awaitable_records",
        "_coerced",
        "_default_type",
        "_dropped",
        "_fitter",
        "_log",
        "_max_bytes",
        "_max_content_bytes",
        "_open",
        "_send_starts",
        "_sink",
        "_submit",
        "_submit_record",
    )

    def __init__(
        self,
        sink: SpanSink,
        *,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        default_type: SpanType | None = None,
        send_starts: bool = True,
        log_interval: float = 10.0,
        log: logging.Logger = logger,
    ) -> None:
        if max_payload_bytes < 256:
            raise ValueError(f"max_payload_bytes must be at least 256, got {max_payload_bytes}")
        if default_type is not None and default_type not in SPAN_TYPES:
            raise ValueError(f"default_type {default_type!r} is not a known span type")
        self._sink = sink
        self._submit = sink.submit
        # A sink that takes records gets them: no SpanItem built, the payloads encoded once
        # (the encode that checks their size is the record's snapshot).
        self._submit_record = (
            sink.submit_record if isinstance(sink, RecordSink) and sink.takes_records else None
        )
        # What deliver_start / deliver_end await, if the sink offers it.
        self._awaitable = sink if isinstance(sink, AwaitableSink) else None
        self._awaitable_records = sink if isinstance(sink, AwaitableRecordSink) else None
        self._default_type = default_type
        self._send_starts = send_starts
        self._fitter = PayloadFitter(max_payload_bytes)
        self._max_bytes = max_payload_bytes
        self._max_content_bytes = max_payload_bytes + _CONTENT_KEYS_BYTES
        self._open = True
        self._coerced: dict[str, int] = {}
        self._dropped: dict[str, int] = {}
        self._log = RateLimitedLog(log, interval=log_interval)

    @property
    def stats(self) -> ProcessorStats:
        """A snapshot of the counters."""
        return ProcessorStats(coerced=dict(self._coerced), dropped=dict(self._dropped))

    # -- events -------------------------------------------------------------------------

    def on_span_start(self, span: Span, /) -> None:
        """Submit the in-progress item of ``span`` (no end, no status)."""
        if self._send_starts:
            self._event(span, False, self._submit_record, self._submit)

    def on_span_end(self, span: Span, /) -> None:
        """Submit the completed item of ``span``: everything its start had, plus the end."""
        self._event(span, True, self._submit_record, self._submit)

    def _event(
        self,
        span: Span,
        completed: bool,
        submit_record: Callable[[SpanRecord], object] | None,
        submit: Callable[[SpanItem], object],
    ) -> None:
        """The one implementation of both events: build the item of ``span``, hand it over.

        The usual event becomes a record in one call (``plain_record``: the shape check and
        the payload snapshot, which also measures them), for ``submit_record`` when given;
        anything else, or a sink that takes no records, becomes a ``SpanItem`` for
        ``submit``. Problems are counted, never raised.
        """
        item: SpanItem | None
        try:
            record: SpanRecord | None = None
            name = span.name
            if (
                type(name) is str
                and len(name) <= _MAX_NAME_CHARS
                # An error goes into the metadata: the slow path.
                and not (completed and span.error is not None)
            ):
                start: Any
                end: Any
                if type(span) is Span:
                    # A tracer's span keeps its clock readings (int ns) in these slots: they
                    # go to the record as they are (the queue formats them). Read here, not
                    # through a helper: this runs for every event.
                    start, end = span._start_ns, span._end_ns
                    if start is None:
                        start = span._start_time
                    if end is None:
                        end = span._end_time
                else:
                    start, end = span.start_time, span.end_time
                kind = span.type
                if kind is None:
                    kind = self._default_type
                status = None
                if not completed:
                    end = None
                elif end is not None:  # a missing end is "now": the slow path
                    status = span.status
                    if status is None:
                        status = "SUCCESS"
                if end is not None or not completed:
                    record = plain_record(
                        span.trace_id,
                        span.id,
                        span.parent_id,
                        span.group_id,
                        name,
                        start,
                        end,
                        status,
                        kind,
                        span.input,
                        span.output,
                        span.metadata,
                        self._max_content_bytes,
                    )
            if record is None:
                item = self._slow_item(span, completed=completed, force=False)
                if item is None:
                    return
            elif submit_record is not None:
                try:
                    submit_record(record)
                except Exception as exc:  # the sink's problem, never the caller's
                    self._sink_failed(exc, span, completed=completed)
                return
            else:
                # A sink without records: the same fields as a SpanItem, datetimes included.
                item = SpanItem(
                    name=record.name,
                    trace_id=record.trace_id,
                    start_timestamp=span.start_time,
                    id=record.id,
                    parent_id=record.parent_id,
                    group_id=record.group_id,
                    end_timestamp=span.end_time if completed else None,
                    status=record.status,  # type: ignore[arg-type]
                    type=record.type,  # type: ignore[arg-type]
                    input=span.input,
                    output=span.output,
                    metadata=span.metadata,
                )
        except Exception as exc:  # e.g. a duck-typed span whose attribute raises
            event = "end" if completed else "start"
            self._drop("processor_error", "building the %s of a span failed: %r", event, exc)
            return
        try:
            submit(item)
        except Exception as exc:  # the sink's problem, never the caller's
            self._sink_failed(exc, span, completed=completed)

    # -- awaited delivery ---------------------------------------------------------------

    async def deliver_start(self, span: Span, /) -> None:
        """``on_span_start``, but return only once the start is delivered.

        Awaits the sink's ``upsert`` (``UpsertQueue.upsert``: the dispatcher sends at once,
        sharing the request with every write awaited meanwhile). Raises
        ``SpanDroppedError`` when the write was dropped, so a caller such as a Temporal
        activity fails and is retried elsewhere; ``QueueNotRunningError`` when the sink is
        not running. An event the processor itself cannot turn into an item is counted in
        ``stats`` (as by ``on_span_start``) and not raised. With ``send_starts=False``, or a
        sink that cannot be awaited (no ``upsert``: the start is submitted), it returns at
        once. Once it returns, ``span`` (or its ``to_dict()``) may be handed to
        another process: no write of this process can overtake that process's end.
        """
        if self._send_starts:
            await self._deliver(span, False)

    async def deliver_end(self, span: Span, /) -> None:
        """``on_span_end``, but return only once the end is delivered (see
        ``deliver_start``)."""
        await self._deliver(span, True)

    async def _deliver(self, span: Span, completed: bool) -> None:
        sink = self._awaitable
        if sink is None:
            # A sink that cannot be awaited (``submit`` only): the event goes in as by
            # on_span_start / on_span_end, and there is nothing to wait for.
            if completed:
                self.on_span_end(span)
            else:
                self.on_span_start(span)
            return
        if not self._open:
            self._drop("shutdown", "span %r dropped: the processor is shut down", span.id)
            return
        record_sink = self._awaitable_records
        records = record_sink is not None and self._submit_record is not None
        # The same build as on_span_start / on_span_end, handed to a list instead of the sink.
        built: list[SpanRecord | SpanItem] = []
        self._event(span, completed, built.append if records else None, built.append)
        if not built:
            return  # the processor could not make an item of it: counted
        try:
            [write] = built
            if isinstance(write, SpanRecord):
                assert record_sink is not None  # records were asked for
                await record_sink.upsert_record(write)
            else:
                await sink.upsert(write)
        except InvalidSpanError:
            # The sink refused what the fast path let through: convert everything, once.
            item = self._slow_item(span, completed=completed, force=True)
            if item is None:
                return
            try:
                await sink.upsert(item)
            except InvalidSpanError as again:
                self._drop("rejected", "span dropped: the sink refused it: %s", again)
                raise SpanDroppedError("rejected", item.trace_id, item.id) from again
            _count(self._coerced, "resubmitted")
        except QueueNotRunningError as exc:
            self._drop("sink_not_running", "span dropped: the sink is not running (%s)", exc)
            raise

    def on_spans_start(self, spans: Iterable[Span], /) -> None:
        """``on_span_start`` for each span."""
        try:
            for span in spans:
                self.on_span_start(span)
        except Exception as exc:  # a broken iterable
            self._drop("processor_error", "iterating started spans failed: %r", exc)

    def on_spans_end(self, spans: Iterable[Span], /) -> None:
        """``on_span_end`` for each span."""
        try:
            for span in spans:
                self.on_span_end(span)
        except Exception as exc:  # a broken iterable
            self._drop("processor_error", "iterating ended spans failed: %r", exc)

    def shutdown(self) -> None:
        """Stop submitting; later events are dropped (``shutdown``). The sink is not closed:
        whoever opened it (``async with UpsertQueue(...)``) owns its lifecycle."""
        self._open = False
        self._submit = self._closed
        self._submit_record = None  # so every event reaches _closed

    # -- the slow path ------------------------------------------------------------------

    def _slow_item(self, span: Span, *, completed: bool, force: bool) -> SpanItem | None:
        """The careful build: check ids, coerce everything else, validate for real."""
        counts = self._coerced
        span_id: Any = getattr(span, "id", None)
        trace_id: Any = getattr(span, "trace_id", None)
        parent_id: Any = getattr(span, "parent_id", None)
        group_id: Any = getattr(span, "group_id", None)
        for field, value, required in (
            ("id", span_id, True),
            ("trace_id", trace_id, True),
            ("parent_id", parent_id, False),
            ("group_id", group_id, False),
        ):
            problem = id_problem(value, required=required)
            if problem is not None:
                # An id cannot be guessed: a made-up one would be another span.
                self._drop("invalid_id", "span dropped: %s %s (%r)", field, problem, value)
                return None

        name = getattr(span, "name", None)
        if type(name) is not str or len(name) > _MAX_NAME_CHARS or not name.isascii():
            fixed = fix_str(name if type(name) is str else _text(name), _MAX_NAME_CHARS)
            if fixed != name:
                _count(counts, "name")
            name = fixed

        raw_start = getattr(span, "start_time", None)
        start = _as_datetime(raw_start)
        if start is None:
            # The start is part of the span's identity on the server: no guessing either.
            self._drop("invalid_start_time", "span %r dropped: no usable start_time", span_id)
            return None
        if type(raw_start) is str:
            _count(counts, "start_time")

        end: datetime | None = None
        status: str | None = None
        error = getattr(span, "error", None)
        if completed:
            given_end = _as_datetime(getattr(span, "end_time", None))
            if given_end is None:
                _count(counts, "missing_end_time")
                given_end = datetime.now(UTC)
            end = given_end
            if _utc(given_end) < _utc(start):
                # A wall clock stepping back (NTP) must not cost the span: the API would
                # reject the whole batch (422). Zero duration is the honest fallback.
                _count(counts, "end_before_start")
                end = start
            status = getattr(span, "status", None)
            # The str check first: an unhashable value (a list) would make ``in`` raise.
            if not (isinstance(status, str) and status in SPAN_STATUSES):
                if status is not None:
                    _count(counts, "invalid_status")
                status = "ERROR" if error is not None else "SUCCESS"

        kind = getattr(span, "type", None)
        original_kind: Any = None
        if kind is None:
            kind = self._default_type
        elif not (isinstance(kind, str) and kind in SPAN_TYPES):
            _count(counts, "unknown_type")
            original_kind, kind = kind, "CUSTOM"

        fit = self._fitter.fit
        inp = fit(getattr(span, "input", None), "input", counts, force=force)
        out = fit(getattr(span, "output", None), "output", counts, force=force)
        meta = fit(getattr(span, "metadata", None), "metadata", counts, force=force)
        if (completed and error is not None) or original_kind is not None:
            meta = dict(meta) if meta is not None else {}
            if completed and error is not None:
                meta[ERROR_METADATA_KEY] = to_json_safe(error, max_str=self._fitter.max_bytes // 4)
            if original_kind is not None:
                meta[ORIGINAL_TYPE_METADATA_KEY] = to_json_safe(original_kind, max_str=256)

        try:
            return SpanItem(
                name=name,
                trace_id=trace_id,
                start_timestamp=start,
                id=span_id,
                parent_id=parent_id,
                group_id=group_id,
                end_timestamp=end,
                status=status,  # type: ignore[arg-type]
                type=kind,  # type: ignore[arg-type]
                input=inp,
                output=out,
                metadata=meta,
            )
        except InvalidSpanError as exc:
            self._drop("invalid_item", "span %r dropped: %s", span_id, exc)
            return None

    def _sink_failed(self, exc: Exception, span: Span, *, completed: bool) -> None:
        if isinstance(exc, QueueNotRunningError):
            self._drop("sink_not_running", "span dropped: the sink is not running (%s)", exc)
            return
        if not isinstance(exc, InvalidSpanError):
            self._drop("sink_error", "span dropped: the sink raised %r", exc)
            return
        # The sink refused what the fast path let through (it may check more than we do):
        # convert everything and try once more.
        try:
            item = self._slow_item(span, completed=completed, force=True)
            if item is None:
                return
            self._submit(item)
        except InvalidSpanError as again:
            self._drop("rejected", "span dropped: the sink refused it: %s", again)
        except QueueNotRunningError as again:
            self._drop("sink_not_running", "span dropped: the sink is not running (%s)", again)
        except Exception as again:  # the sink's problem, never the caller's
            self._drop("sink_error", "span dropped: the sink raised %r", again)
        else:
            _count(self._coerced, "resubmitted")

    def _closed(self, item: SpanItem, /) -> None:
        self._drop("shutdown", "span %r dropped: the processor is shut down", item.id)

    def _drop(self, reason: str, message: str, *args: object) -> None:
        _count(self._dropped, reason)
        self._log.warning(reason, message, *(_Short(arg) for arg in args))


def _short_repr() -> reprlib.Repr:
    short = reprlib.Repr()
    short.maxstring = short.maxother = short.maxlong = 200
    return short


_SHORT_REPR: Final = _short_repr()


class _Short:
    """A log argument cut to a readable length: a hostile 10 MB id must not become a log line."""

    __slots__ = ("_value",)

    def __init__(self, value: object) -> None:
        self._value = value

    def __repr__(self) -> str:
        return _SHORT_REPR.repr(self._value)

    def __str__(self) -> str:
        text = str(self._value)
        return text if len(text) <= 200 else f"{text[:200]}... ({len(text)} chars)"


def _count(counts: dict[str, int], reason: str) -> None:
    counts[reason] = counts.get(reason, 0) + 1


def _text(value: object) -> str:
    try:
        return str(value)
    except Exception:  # __str__ of a hostile object
        return f"<unprintable {type(value).__name__}>"


def _as_datetime(value: object) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if type(value) is str:
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None
    return None


def _utc(value: datetime) -> datetime:
    # Naive means UTC everywhere in the SDK; normalizing lets naive and aware compare.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value
