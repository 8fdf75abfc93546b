"""Request and response models of the spans API, and the checks a span item must pass.

``SpanItem`` is what you send (the API's SpanCreate); ``Span`` is what the API answers.
Both are frozen attrs classes without serialization code: see ``_serialization``.

Naive datetimes are taken to be UTC (the API stores UTC, and ``datetime.utcnow()`` is common
in agent code); they are sent with an explicit ``+00:00`` offset.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timezone
from itertools import count
from typing import Any, Final, Literal, TypeAlias, get_args

import attrs

from ._constants import MAX_ID_BYTES
from ._exceptions import InvalidSpanError

_type = type  # SpanItem's ``type`` argument shadows the builtin inside its constructor

__all__ = [
    "MAX_ID_BYTES",
    "SPAN_STATUSES",
    "SPAN_TYPES",
    "Identity",
    "Span",
    "SpanItem",
    "SpanStatus",
    "SpanType",
    "id_problem",
    "is_plain_span",
    "new_span_id",
    "validate_span_item",
]

SpanStatus: TypeAlias = Literal["SUCCESS", "ERROR", "CANCELED"]
SpanType: TypeAlias = Literal[
    "TEXT_INPUT",
    "TEXT_OUTPUT",
    "COMPLETION_INPUT",
    "COMPLETION",
    "KB_RETRIEVAL",
    "KB_INPUT",
    "RERANKING",
    "EXTERNAL_ENDPOINT",
    "PROMPT_ENGINEERING",
    "DOCUMENT_INPUT",
    "MAP_REDUCE",
    "DOCUMENT_SEARCH",
    "DOCUMENT_PROMPT",
    "CUSTOM",
    "CODE_EXECUTION",
    "DATA_MANIPULATION",
    "EVALUATION",
    "FILE_RETRIEVAL",
    "KB_ADD_CHUNK",
    "KB_MANAGEMENT",
    "GUARDRAIL",
    "OUTPUT_GUARDRAIL",
    "TRACER",
    "AGENT_TRACER",
    "AGENT_WORKFLOW",
    "STANDALONE",
]
SPAN_STATUSES: Final[frozenset[str]] = frozenset(get_args(SpanStatus))
SPAN_TYPES: Final[frozenset[str]] = frozenset(get_args(SpanType))

_OBS_TRACE_ID = re.compile(r"[0-9a-f]{32}")
_OBS_SPAN_ID = re.compile(r"[0-9a-f]{16}")


# A random 64-bit process prefix plus a 64-bit counter, as one 128-bit counter: unique across
# processes without the ~2 us that uuid4() costs on the hot path, and ``hex()`` of one int is
# the cheapest formatting (0.15 us against 0.23 for an f-string of prefix and counter). The
# prefix has its top bit set, so every id has exactly 32 digits. Reseeded after fork, so
# parent and child never collide.
def _seeded_counter() -> Iterator[int]:
    prefix = int.from_bytes(os.urandom(8), "big") | (1 << 63)
    return count(prefix << 64)


_next_id = _seeded_counter().__next__


def _reseed_ids() -> None:
    global _next_id
    _next_id = _seeded_counter().__next__


os.register_at_fork(after_in_child=_reseed_ids)


def new_span_id() -> str:
    """A fresh 32-hex-digit span id, unique across processes."""
    return hex(_next_id())[2:]


def id_problem(value: object, *, required: bool) -> str | None:
    """Why the API would reject ``value`` as an id (``id``, ``trace_id``...), or None."""
    if value is None:
        return "is required" if required else None
    if type(value) is not str:
        return f"must be a str, got {type(value).__name__}"
    if not value:
        return "must not be empty"
    if "\x00" in value:
        return "must not contain a NUL byte"
    if value.isascii() and len(value) <= MAX_ID_BYTES:
        return None  # short ASCII ids (the usual case) need no encoding
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        return "is not valid UTF-8 (lone surrogate)"
    if size > MAX_ID_BYTES:
        return f"is {size} UTF-8 bytes, the limit is {MAX_ID_BYTES}"
    return None


def _check_id(field: str, value: object, *, required: bool) -> None:
    problem = id_problem(value, required=required)
    if problem is not None:
        raise InvalidSpanError(field, problem)


def _check_optional_str(field: str, value: object) -> None:
    if value is not None and type(value) is not str:
        raise InvalidSpanError(field, f"must be a str or None, got {type(value).__name__}")
    _check_encodable(field, value)


def _check_encodable(field: str, value: object) -> None:
    # JSON text is UTF-8: a lone surrogate cannot be sent, so say so here, not at send time.
    if isinstance(value, str) and not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidSpanError(field, "is not valid UTF-8 (lone surrogate)") from None


def _check_object(field: str, value: object) -> None:
    if value is not None and not isinstance(value, Mapping):
        raise InvalidSpanError(
            field, f"must be a JSON object (a dict) or None, got {type(value).__name__}"
        )


def _as_utc(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _plain_datetime(field: str, value: datetime) -> datetime:
    """``value`` as a plain ``datetime`` with a ``timezone`` offset (or naive).

    orjson encodes only that safely: a datetime subclass fails to encode, and a foreign tzinfo
    whose ``utcoffset()`` raises crashes the interpreter inside orjson (seen with 3.13). Python
    checks the offset's type and range in ``utcoffset()``.
    """
    tz = value.tzinfo
    if type(value) is datetime and (tz is None or type(tz) is timezone):
        return value
    try:
        offset = value.utcoffset()
    except Exception as exc:
        raise InvalidSpanError(field, f"has a tzinfo whose utcoffset() fails: {exc!r}") from None
    return datetime(
        value.year,
        value.month,
        value.day,
        value.hour,
        value.minute,
        value.second,
        value.microsecond,
        tzinfo=None if offset is None else timezone(offset),
        fold=value.fold,
    )


def is_plain_span(
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
) -> bool:
    """True when these fields are in the usual shape, which ``validate_span_item`` accepts.

    The one statement of "the usual shape", used by ``SpanItem`` (to skip its thorough checks)
    and by the tracing layer's fast path (``plain_record``): short ASCII ids without NUL, an
    ASCII name, a start that is an int of nanoseconds or a ``datetime`` with a ``timezone``
    offset, an end of the same kind not before it, known status and type, dict payloads.
    False means "look closer" (coerce, or validate thoroughly), not "invalid". Written as one
    expression on the arguments: it runs for every span event.
    """
    return (
        _type(span_id) is str
        and 0 < len(span_id) <= MAX_ID_BYTES
        and span_id.isascii()
        and "\x00" not in span_id
        # A root span's trace id is often its own id (the tracer names traces that way).
        and (
            trace_id is span_id
            or (
                _type(trace_id) is str
                and 0 < len(trace_id) <= MAX_ID_BYTES
                and trace_id.isascii()
                and "\x00" not in trace_id
            )
        )
        and (
            parent_id is None
            or (
                _type(parent_id) is str
                and 0 < len(parent_id) <= MAX_ID_BYTES
                and parent_id.isascii()
                and "\x00" not in parent_id
            )
        )
        and (
            group_id is None
            or (
                _type(group_id) is str
                and 0 < len(group_id) <= MAX_ID_BYTES
                and group_id.isascii()
                and "\x00" not in group_id
            )
        )
        and _type(name) is str
        and name.isascii()
        and (
            (_type(start) is int and (end is None or (_type(end) is int and end >= start)))
            or (
                _type(start) is datetime
                and _type(start.tzinfo) is timezone
                and (
                    end is None
                    or (_type(end) is datetime and _type(end.tzinfo) is timezone and end >= start)
                )
            )
        )
        # The str check first: an unhashable value (a list) would make ``in`` raise.
        and (status is None or (isinstance(status, str) and status in SPAN_STATUSES))
        and (type is None or (isinstance(type, str) and type in SPAN_TYPES))
        and (input is None or _type(input) is dict)
        and (output is None or _type(output) is dict)
        and (metadata is None or _type(metadata) is dict)
    )


def validate_span_item(item: SpanItem) -> None:
    """Raise ``InvalidSpanError`` for anything the server would reject in this item.

    ``SpanItem`` runs this itself when constructed (and also normalizes its datetimes); it
    is public for checking items built by other means.
    """
    _validate_thoroughly(item, normalize=False)


def _validate_thoroughly(item: SpanItem, *, normalize: bool = True) -> None:
    _check_id("id", item.id, required=True)
    _check_id("trace_id", item.trace_id, required=True)
    _check_id("parent_id", item.parent_id, required=False)
    _check_id("group_id", item.group_id, required=False)
    if type(item.name) is not str:
        raise InvalidSpanError("name", f"must be a str, got {type(item.name).__name__}")
    _check_encodable("name", item.name)
    start, end = item.start_timestamp, item.end_timestamp
    if not isinstance(start, datetime):
        raise InvalidSpanError("start_timestamp", f"must be a datetime, got {type(start).__name__}")
    start = _plain_datetime("start_timestamp", start)
    if normalize:
        item.__dict__["start_timestamp"] = start  # still inside the constructor
    if end is not None:
        if not isinstance(end, datetime):
            raise InvalidSpanError("end_timestamp", f"must be a datetime, got {type(end).__name__}")
        end = _plain_datetime("end_timestamp", end)
        if normalize:
            item.__dict__["end_timestamp"] = end
        if (start.tzinfo is None) is (end.tzinfo is None):
            before = end < start
        else:
            before = _as_utc(end) < _as_utc(start)
        if before:
            raise InvalidSpanError(
                "end_timestamp", f"{end.isoformat()} is before start {start.isoformat()}"
            )
    # The str check first: an unhashable value (a list) would make ``in`` raise TypeError.
    if item.status is not None and (
        not isinstance(item.status, str) or item.status not in SPAN_STATUSES
    ):
        raise InvalidSpanError("status", f"{item.status!r} is not one of {sorted(SPAN_STATUSES)}")
    if item.type is not None and (not isinstance(item.type, str) or item.type not in SPAN_TYPES):
        raise InvalidSpanError("type", f"{item.type!r} is not a known span type")
    _check_object("input", item.input)
    _check_object("output", item.output)
    _check_object("metadata", item.metadata)
    _check_object("expected", item.expected)
    _check_optional_str("application_interaction_id", item.application_interaction_id)
    _check_optional_str("application_variant_id", item.application_variant_id)
    if item.obs_trace_id is not None and (
        type(item.obs_trace_id) is not str or not _OBS_TRACE_ID.fullmatch(item.obs_trace_id)
    ):
        raise InvalidSpanError("obs_trace_id", "must be 32 lowercase hex digits")
    if item.obs_span_id is not None and (
        type(item.obs_span_id) is not str or not _OBS_SPAN_ID.fullmatch(item.obs_span_id)
    ):
        raise InvalidSpanError("obs_span_id", "must be 16 lowercase hex digits")


# Not slotted, and with a hand-written __init__: attrs builds frozen dict-backed instances
# faster than slotted ones, and checking the usual shape on the arguments themselves before
# storing them costs about half of what a post-init validation reading them back costs. (The
# tracing layer no longer builds SpanItems on its fast path; applications still do.)
@attrs.frozen(kw_only=True, slots=False, init=False)
class SpanItem:
    """One span as sent to SGP (the API's SpanCreate). Validated when constructed.

    ``id`` defaults to a fresh unique id; the queue keys items by (``trace_id``, ``id``).
    A span is *completed* when it has an ``end_timestamp``.
    """

    name: str
    trace_id: str
    start_timestamp: datetime
    id: str
    parent_id: str | None
    group_id: str | None
    end_timestamp: datetime | None
    status: SpanStatus | None
    type: SpanType | None
    input: Mapping[str, Any] | None
    output: Mapping[str, Any] | None
    metadata: Mapping[str, Any] | None
    expected: Mapping[str, Any] | None
    application_interaction_id: str | None
    application_variant_id: str | None
    obs_trace_id: str | None
    obs_span_id: str | None

    def __init__(
        self,
        *,
        name: str,
        trace_id: str,
        start_timestamp: datetime,
        id: str | None = None,
        parent_id: str | None = None,
        group_id: str | None = None,
        end_timestamp: datetime | None = None,
        status: SpanStatus | None = None,
        type: SpanType | None = None,
        input: Mapping[str, Any] | None = None,
        output: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        expected: Mapping[str, Any] | None = None,
        application_interaction_id: str | None = None,
        application_variant_id: str | None = None,
        obs_trace_id: str | None = None,
        obs_span_id: str | None = None,
    ) -> None:
        if id is None:
            id = new_span_id()
        fields = self.__dict__  # frozen: attrs forbids setattr, so fill the dict directly
        fields["name"] = name
        fields["trace_id"] = trace_id
        fields["start_timestamp"] = start_timestamp
        fields["id"] = id
        fields["parent_id"] = parent_id
        fields["group_id"] = group_id
        fields["end_timestamp"] = end_timestamp
        fields["status"] = status
        fields["type"] = type
        fields["input"] = input
        fields["output"] = output
        fields["metadata"] = metadata
        fields["expected"] = expected
        fields["application_interaction_id"] = application_interaction_id
        fields["application_variant_id"] = application_variant_id
        fields["obs_trace_id"] = obs_trace_id
        fields["obs_span_id"] = obs_span_id
        # The usual shape (datetimes only: an int is a clock reading, not a SpanItem field),
        # with none of the rarely used fields, needs no thorough check.
        if (
            _type(start_timestamp) is datetime
            and (expected is None or _type(expected) is dict)
            and obs_trace_id is None
            and obs_span_id is None
            and application_interaction_id is None
            and application_variant_id is None
            and is_plain_span(
                trace_id,
                id,
                parent_id,
                group_id,
                name,
                start_timestamp,
                end_timestamp,
                status,
                type,
                input,
                output,
                metadata,
            )
        ):
            return
        _validate_thoroughly(self)

    @property
    def completed(self) -> bool:
        """True when the span has ended (it carries an ``end_timestamp``)."""
        return self.end_timestamp is not None


@attrs.frozen(kw_only=True)
class Identity:
    """Who created a span."""

    id: str
    type: str
    object: str | None = None


@attrs.frozen(kw_only=True)
class Span:
    """A span as stored by SGP and returned by the API."""

    id: str
    trace_id: str
    name: str
    start_timestamp: datetime
    account_id: str | None = None
    parent_id: str | None = None
    group_id: str | None = None
    end_timestamp: datetime | None = None
    status: str | None = None
    type: str | None = None
    input: dict[str, Any] | None = None
    output: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    expected: dict[str, Any] | None = None
    application_interaction_id: str | None = None
    application_variant_id: str | None = None
    obs_trace_id: str | None = None
    obs_span_id: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    created_by: Identity | None = None
    object: str | None = None

    @property
    def completed(self) -> bool:
        """True when the stored span has ended."""
        return self.end_timestamp is not None
