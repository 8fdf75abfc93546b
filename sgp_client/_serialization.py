"""JSON encoding of span records and decoding of API answers.

A span is encoded in two parts: its content fields (input, output, metadata, expected) as one
JSON object when its ``SpanRecord`` is built (the snapshot, see ``_record``), and the rest
(ids, name, timestamps, status, type) only when the version of the span that survives
coalescing is sent; the two objects are spliced together. Answers are structured into
``Span`` models by the one private cattrs converter.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

import cattrs
import orjson
from cattrs.preconf.orjson import make_converter

from ._constants import DUMPS_OPTIONS
from ._models import SpanItem
from ._record import Content, SpanRecord, encoding_error, kept, record_of
from ._redact import Redactor, may_hold_credentials, redact_credentials

logger = logging.getLogger("sgp_client")

#: What a field becomes when the redact hook raises on it (valid JSON, visibly masked).
REDACTOR_FAILED: Final = b'"[REDACTED:redactor error]"'

__all__ = [
    "encode_item",
    "encode_items_body",
    "encode_record",
    "estimate_size",
    "structure",
    "unstructure",
]

T = TypeVar("T")


def _make_converter() -> cattrs.Converter:
    converter = make_converter()
    converter.register_structure_hook(datetime, lambda value, _: _parse_datetime(value))
    # Naive means UTC here too, so every timestamp leaves with an explicit offset.
    converter.register_unstructure_hook(
        datetime,
        lambda value: (
            value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        ).isoformat(),
    )
    return converter


def _parse_datetime(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(value)


_converter: Final = _make_converter()


def structure(data: Any, cls: type[T]) -> T:
    """Build a model (``Span``, ``list[Span]``) from decoded JSON; unknown keys are ignored."""
    return _converter.structure(data, cls)


def unstructure(obj: Any) -> Any:
    """Turn a model into plain JSON-able data."""
    return _converter.unstructure(obj)


def encode_item(item: SpanItem, redact: Redactor | None = None) -> bytes:
    """Encode one item to JSON, redacting its content fields if ``redact`` is given.

    ``InvalidSpanError`` names the field that cannot be encoded.
    """
    return encode_record(record_of(item), redact)


def encode_items_body(encoded_items: list[bytes]) -> bytes:
    """The ``{"items": [...]}`` body of a batch request, from already-encoded items."""
    return b'{"items":[' + b",".join(encoded_items) + b"]}"


def dumps(data: Any) -> bytes:
    """Encode any JSON-able value the way the client sends it."""
    return orjson.dumps(data, option=DUMPS_OPTIONS)


def loads(data: bytes | str) -> Any:
    """Decode a JSON answer."""
    return orjson.loads(data)


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


def _head(record: SpanRecord) -> dict[str, Any]:
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


def encode_record(record: SpanRecord, redact: Redactor | None = None) -> bytes:
    """The JSON of one record, as sent (``InvalidSpanError`` names a field that does not
    encode; ``redact`` masks the name and the content fields, never the ids)."""
    return encode_head(_head(record), record.content, redact)


def encode_head(head: dict[str, Any], content: Content | None, redact: Redactor | None) -> bytes:
    """The item's JSON: ``head`` encoded, with the content object's members spliced in."""
    if redact is not None:
        head, content = _redact_item(head, content, redact)
    try:
        encoded = orjson.dumps(head, option=DUMPS_OPTIONS)
    except (TypeError, ValueError) as exc:
        raise encoding_error(head, exc) from None
    if content is None:
        return kept(encoded)
    # '{"name":...}' + '{"input":...}' -> '{"name":...,"input":...}': both are objects.
    # join sizes its result exactly (see kept).
    return b"".join((encoded[:-1], b",", content[1:]))


def _redact_item(
    head: dict[str, Any], content: Content | None, redact: Redactor
) -> tuple[dict[str, Any], Content | None]:
    """Apply ``redact`` to the JSON of the name and of each content field, never the ids."""
    name = head.get("name")
    if redact is redact_credentials and not (
        (type(name) is str and may_hold_credentials(name))
        or (content is not None and may_hold_credentials(content))
    ):
        # The default hook's prefilter, once over the whole content: when nothing looks
        # like a credential, no field would change.
        return head, content
    if type(name) is str:
        encoded_name = orjson.dumps(name)
        redacted = _redacted(redact, encoded_name)
        if redacted != encoded_name:
            head = {**head, "name": orjson.Fragment(redacted)}
    if content is not None:
        members = [
            orjson.dumps(key) + b":" + _redacted(redact, orjson.dumps(value, option=DUMPS_OPTIONS))
            for key, value in orjson.loads(content).items()
        ]
        content = b"{" + b",".join(members) + b"}"
    return head, content


def _redacted(redact: Redactor, encoded: bytes) -> bytes:
    # A failing hook fails closed: the field is masked, never sent unredacted, and the
    # dispatcher never dies of it.
    try:
        return redact(encoded)
    except Exception:
        logger.exception("the redact hook failed; the field is sent masked")
        return REDACTOR_FAILED


def _measure_head_overhead() -> int:
    # The encoded size of a record with one-character ids, no name, no content and no rarely
    # used field, but every other field at its longest (keys, nulls, timestamps, status, type).
    moment = datetime(2026, 1, 1, 0, 0, 0, 1, tzinfo=UTC)
    sample = SpanRecord(
        "t", "i", "p", None, "", moment, moment, "CANCELED", "OUTPUT_GUARDRAIL", None
    )
    return len(encode_record(sample)) - 3 - 2  # minus the three ids and the empty name


_HEAD_OVERHEAD: Final = _measure_head_overhead()


def estimate_size(record: SpanRecord) -> int:
    """An upper bound of ``len(encode_record(record))``, without encoding it.

    The ids, the name (four bytes a character: UTF-8 or escapes) and the snapshotted content
    on top of the fixed part; the rarely used fields (group, application and obs ids) are
    measured when set.
    """
    # One unpacking instead of nine attribute reads: this runs for every submitted record
    # (measured: 0.26 against 0.11 us a call).
    trace_id, span_id, parent, group, name, _, _, _, _, content, app, variant, obs, obs_span = (
        record
    )
    size = _HEAD_OVERHEAD + 4 * len(name) + len(span_id) + len(trace_id)
    if parent is not None:
        size += len(parent)
    if content is not None:
        size += len(content)
    if not (group is None and app is None and variant is None and obs is None and obs_span is None):
        size += 4 * len(orjson.dumps(_head(record), option=DUMPS_OPTIONS)) - _HEAD_OVERHEAD
    return size
