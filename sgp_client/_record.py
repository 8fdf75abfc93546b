"""``SpanRecord``: one span write as the queue takes it, and the ways to build one.

A record holds every field of a ``SpanItem``, with its content fields (input, output,
metadata, expected) already encoded together as one JSON object: that snapshot is what is
eventually sent, so a caller's dict changed afterwards changes nothing. There are two ways in:

- ``record_of(item)``: from a ``SpanItem`` (validated when it was built);
- ``plain_record(...)``: from loose fields in the usual shape (``is_plain_span``), with no
  ``SpanItem`` built at all. This is the tracing layer's fast path: the check, the snapshot
  (which also answers "does orjson take the payloads, and do they fit") and the record, in
  one call. It returns None for anything else; the caller then builds a ``SpanItem``, whose
  thorough validation says what is wrong.

Timestamps may be an int of nanoseconds since the epoch, UTC (``time.time_ns()``): they are
formatted when the record is encoded, to the microsecond. ``record_head`` is the record's JSON
object without its content, and ``size`` an estimate of its encoded size (the queue's
memory accounting), filled in by both builders.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final, NamedTuple

import orjson

from ._constants import DUMPS_OPTIONS
from ._exceptions import InvalidSpanError
from ._models import SpanItem, is_plain_span

__all__ = [
    "Content",
    "SpanRecord",
    "encode_content",
    "encoding_error",
    "estimate_size",
    "format_ns",
    "kept",
    "plain_record",
    "record_head",
    "record_of",
]

#: An item's content fields (the set ones), encoded together as one JSON object.
Content = bytes


class SpanRecord(NamedTuple):
    """One span write: a ``SpanItem``'s fields, its content snapshotted as JSON.

    Build one with ``record_of`` or ``plain_record``; ``UpsertQueue.submit_record`` takes it.
    The queue keys records by (``trace_id``, ``id``); one is *completed* when it has an
    ``end``.
    """

    trace_id: str
    id: str
    parent_id: str | None
    group_id: str | None
    name: str
    #: A datetime, or an int of nanoseconds since the epoch (UTC).
    start: datetime | int
    end: datetime | int | None
    status: str | None
    type: str | None
    #: input, output, metadata and expected (the set ones) as one JSON object, or None.
    content: Content | None
    application_interaction_id: str | None = None
    application_variant_id: str | None = None
    obs_trace_id: str | None = None
    obs_span_id: str | None = None
    #: An estimate of the encoded size (``estimate_size``), or 0 when not known (the queue
    #: estimates it then).
    size: int = 0

    @property
    def completed(self) -> bool:
        """True when the span has ended."""
        return self.end is not None


def kept(encoded: bytes) -> bytes:
    """An exactly sized copy of an orjson result that will be kept a while.

    orjson returns bytes in an oversized buffer that is shrunk in place; keeping thousands of
    them alive makes the allocator crawl (measured: 1.9 us per dumps kept, 0.16 us with this
    copy). A two-part join returns a fresh, exactly sized copy.
    """
    return b"".join((encoded, b""))


def encoding_error(data: dict[str, Any], exc: Exception) -> InvalidSpanError:
    # Find the field that broke encoding, so the message points at it.
    for name, value in data.items():
        try:
            orjson.dumps(value, option=DUMPS_OPTIONS)
        except (TypeError, ValueError) as field_exc:
            return InvalidSpanError(name, f"cannot be encoded as JSON: {field_exc}")
    return InvalidSpanError("item", f"cannot be encoded as JSON: {exc}")


def encode_content(content: dict[str, Any]) -> Content | None:
    """The snapshot of an item's content fields (a dict of the set ones), or None if empty.

    One ``orjson.dumps`` for all of them: the caller may change its dicts afterwards without
    changing what is sent. Raises ``InvalidSpanError`` naming a field that does not encode.
    """
    if not content:
        return None
    try:
        return kept(orjson.dumps(content, option=DUMPS_OPTIONS))
    except (TypeError, ValueError) as exc:
        raise encoding_error(content, exc) from None


def record_of(item: SpanItem) -> SpanRecord:
    """The record of a (validated) ``SpanItem``; ``InvalidSpanError`` if its content does not
    encode (a payload holding an object orjson does not know)."""
    if type(item) is not SpanItem and not isinstance(item, SpanItem):
        raise InvalidSpanError("item", f"expected a SpanItem, got {type(item).__name__}")
    content: dict[str, Any] = {}
    if item.input is not None:
        content["input"] = item.input
    if item.output is not None:
        content["output"] = item.output
    if item.metadata is not None:
        content["metadata"] = item.metadata
    if item.expected is not None:
        content["expected"] = item.expected
    snapshot = encode_content(content)
    rare = (
        item.application_interaction_id,
        item.application_variant_id,
        item.obs_trace_id,
        item.obs_span_id,
    )
    size = _full_size(
        item.name, item.id, item.trace_id, item.parent_id, item.group_id, snapshot, rare
    )
    return SpanRecord(
        item.trace_id,
        item.id,
        item.parent_id,
        item.group_id,
        item.name,
        item.start_timestamp,
        item.end_timestamp,
        item.status,
        item.type,
        snapshot,
        *rare,
        size,
    )


def plain_record(
    trace_id: object,
    span_id: object,
    parent_id: object,
    group_id: object,
    name: object,
    start: object,
    end: object,
    status: object,
    type: object,
    input: object,
    output: object,
    metadata: object,
    max_content_bytes: int,
) -> SpanRecord | None:
    """The record of these fields if they are in the usual shape and their payloads encode
    in at most ``max_content_bytes`` (together, as the JSON object sent); else None.

    Positional on purpose: it runs for every span event (keyword binding of 13 arguments
    cost 0.2 us more per call, measured).
    """
    if not is_plain_span(
        trace_id,
        span_id,
        parent_id,
        group_id,
        name,
        start,
        end,
        status,
        type,
        input,
        output,
        metadata,
    ):
        return None
    content: Content | None = None
    if input is not None or output is not None or metadata is not None:
        payloads = {}
        if input is not None:
            payloads["input"] = input
        if output is not None:
            payloads["output"] = output
        if metadata is not None:
            payloads["metadata"] = metadata
        try:
            encoded = orjson.dumps(payloads, option=DUMPS_OPTIONS)
        except Exception:  # refused: a cycle, too deep, a surrogate, an unknown type
            return None
        if len(encoded) > max_content_bytes:
            return None
        content = kept(encoded)
    # is_plain_span has just checked these are str (or None).
    size = _size_of(name, span_id, trace_id, parent_id, group_id, content)  # type: ignore[arg-type]
    # tuple.__new__: a NamedTuple's own __new__ is a Python function binding 15 arguments by
    # name; is_plain_span has just checked every field. Measured: 0.3 against 0.6 us a
    # record, about 6% of the hot-path row.
    return tuple.__new__(
        SpanRecord,
        (
            trace_id,
            span_id,
            parent_id,
            group_id,
            name,
            start,
            end,
            status,
            type,
            content,
            None,
            None,
            None,
            None,
            size,
        ),
    )


# format_ns caches the text of the last millisecond it formatted (items of a burst share it),
# as one tuple replaced whole, so concurrent threads can only miss the cache, never see half
# of it; the microseconds within come from a table of the 1000 endings.
_millisecond_text: tuple[int, str] = (-1, "")
_MICROSECOND_ENDINGS: Final = tuple(f"{n:03d}+00:00" for n in range(1000))


def format_ns(ns: int) -> str:
    """ISO 8601 of ``ns`` nanoseconds since the epoch in UTC, to the microsecond (floored)."""
    global _millisecond_text
    millisecond, microseconds = divmod(ns // 1000, 1000)
    cached, text = _millisecond_text
    if millisecond != cached:
        seconds, milliseconds = divmod(millisecond, 1000)
        second = datetime.fromtimestamp(seconds, UTC).isoformat()[:-6]  # without "+00:00"
        text = f"{second}.{milliseconds:03d}"
        _millisecond_text = (millisecond, text)
    return text + _MICROSECOND_ENDINGS[microseconds]


def _timestamp(value: datetime | int) -> datetime | str:
    return format_ns(value) if isinstance(value, int) else value


def record_head(record: SpanRecord) -> dict[str, Any]:
    """The record's JSON object without its content: every other API field, None as null
    (the API reads an explicit null as "not given")."""
    end = record.end
    return {
        "name": record.name,
        "trace_id": record.trace_id,
        "id": record.id,
        "parent_id": record.parent_id,
        "group_id": record.group_id,
        "start_timestamp": _timestamp(record.start),
        "end_timestamp": None if end is None else _timestamp(end),
        "status": record.status,
        "type": record.type,
        "application_interaction_id": record.application_interaction_id,
        "application_variant_id": record.application_variant_id,
        "obs_trace_id": record.obs_trace_id,
        "obs_span_id": record.obs_span_id,
    }


def _measure_head_overhead() -> int:
    # The encoded size of a record with one-character ids, no name, no content and no rarely
    # used field, but every other field at its longest (keys, nulls, timestamps, status, type).
    moment = datetime(2026, 1, 1, 0, 0, 0, 1, tzinfo=UTC)
    sample = SpanRecord(
        "t", "i", "p", None, "", moment, moment, "CANCELED", "OUTPUT_GUARDRAIL", None
    )
    encoded = orjson.dumps(record_head(sample), option=DUMPS_OPTIONS)
    return len(encoded) - 3 - 2  # minus the three ids and the empty name


_HEAD_OVERHEAD: Final = _measure_head_overhead()


def _size_of(
    name: str,
    span_id: str,
    trace_id: str,
    parent_id: str | None,
    group_id: str | None,
    content: Content | None,
) -> int:
    # The ids, the name (four bytes a character: UTF-8 or escapes) and the snapshotted
    # content on top of the fixed part of a record's JSON.
    size = _HEAD_OVERHEAD + 4 * len(name) + len(span_id) + len(trace_id)
    if parent_id is not None:
        size += len(parent_id)
    if group_id is not None:
        size += len(group_id)
    if content is not None:
        size += len(content)
    return size


def _full_size(
    name: str,
    span_id: str,
    trace_id: str,
    parent_id: str | None,
    group_id: str | None,
    content: Content | None,
    rare: tuple[str | None, ...],
) -> int:
    # _size_of, plus the application and obs ids when set (their keys are in the fixed part
    # already).
    size = _size_of(name, span_id, trace_id, parent_id, group_id, content)
    if rare != _NO_RARE_FIELDS:
        size += sum(4 * len(value) + 2 for value in rare if value is not None)
    return size


def estimate_size(record: SpanRecord) -> int:
    """An estimate of the record's encoded size, without encoding it (the name counted at
    four bytes a character; ids by their length)."""
    return _full_size(
        record.name,
        record.id,
        record.trace_id,
        record.parent_id,
        record.group_id,
        record.content,
        (
            record.application_interaction_id,
            record.application_variant_id,
            record.obs_trace_id,
            record.obs_span_id,
        ),
    )


# The application and obs ids unset (the usual case).
_NO_RARE_FIELDS: Final = (None, None, None, None)
