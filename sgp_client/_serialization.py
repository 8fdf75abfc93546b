"""JSON encoding of span items and decoding of API answers.

An item is encoded in two parts: its content fields (input, output, metadata, expected) as one
JSON object at submit (the queue's snapshot), and the rest (ids, name, timestamps, status,
type) only when the version of the span that survives coalescing is sent; the two objects are
spliced together. Answers are structured into ``Span`` models by the one private cattrs
converter.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

import attrs
import cattrs
import orjson
from cattrs.preconf.orjson import make_converter

from ._exceptions import InvalidSpanError
from ._models import SpanItem
from ._redact import Redactor, may_hold_credentials, redact_credentials

logger = logging.getLogger("sgp_client")

#: What a field becomes when the redact hook raises on it (valid JSON, visibly masked).
REDACTOR_FAILED: Final = b'"[REDACTED:redactor error]"'

__all__ = ["encode_item", "encode_items_body", "structure", "unstructure"]

T = TypeVar("T")

# Naive datetimes are UTC (see _models); orjson then writes an explicit +00:00 offset.
_DUMPS_OPTIONS: Final = orjson.OPT_NAIVE_UTC

# The API fields, in declaration order (for SpanItem subclasses, whose __dict__ may hold more).
_FIELD_NAMES: Final = tuple(field.name for field in attrs.fields(SpanItem))


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
    return encode_snapshot(item, snapshot_content(item), redact)


def _encoding_error(data: dict[str, Any], exc: Exception) -> InvalidSpanError:
    # Find the field that broke encoding, so the message points at it.
    for name, value in data.items():
        try:
            orjson.dumps(value, option=_DUMPS_OPTIONS)
        except (TypeError, ValueError) as field_exc:
            return InvalidSpanError(name, f"cannot be encoded as JSON: {field_exc}")
    return InvalidSpanError("item", f"cannot be encoded as JSON: {exc}")


def encode_items_body(encoded_items: list[bytes]) -> bytes:
    """The ``{"items": [...]}`` body of a batch request, from already-encoded items."""
    return b'{"items":[' + b",".join(encoded_items) + b"]}"


def dumps(data: Any) -> bytes:
    """Encode any JSON-able value the way the client sends it."""
    return orjson.dumps(data, option=_DUMPS_OPTIONS)


def loads(data: bytes | str) -> Any:
    """Decode a JSON answer."""
    return orjson.loads(data)


#: An item's content fields (input, output, metadata, expected: the ones set), encoded
#: together as one JSON object at submit. Spliced into the item's JSON when it is sent.
Content = bytes
_CONTENT_FIELDS: Final = frozenset(("input", "output", "metadata", "expected"))


def kept(encoded: bytes) -> bytes:
    # orjson returns bytes in an oversized buffer that is shrunk in place; keeping thousands
    # of them alive makes the allocator crawl (measured: 1.9 us per dumps kept, 0.16 us with
    # this copy). A two-part join returns a fresh, exactly sized copy.
    return b"".join((encoded, b""))


def encode_content(content: dict[str, Any]) -> Content | None:
    """The snapshot of an item's content fields (a dict of the set ones), or None if empty.

    One ``orjson.dumps`` for all of them: the caller may change its dicts afterwards without
    changing what is sent. Raises ``InvalidSpanError`` naming a field that does not encode.
    """
    if not content:
        return None
    try:
        return kept(orjson.dumps(content, option=_DUMPS_OPTIONS))
    except (TypeError, ValueError) as exc:
        raise _encoding_error(content, exc) from None


def snapshot_content(item: SpanItem) -> Content | None:
    """``encode_content`` of the item's input, output, metadata and expected."""
    inp, out, meta, exp = item.input, item.output, item.metadata, item.expected
    if inp is None and out is None and meta is None and exp is None:
        return None
    content: dict[str, Any] = {}
    if inp is not None:
        content["input"] = inp
    if out is not None:
        content["output"] = out
    if meta is not None:
        content["metadata"] = meta
    if exp is not None:
        content["expected"] = exp
    return encode_content(content)


def item_head(item: SpanItem) -> dict[str, Any]:
    """The item's JSON object without its content fields: every other field, None as null.

    Sending nulls (rather than leaving the keys out) lets orjson encode a copy of the
    instance's own attribute dict in C; the API reads an explicit null as "not given".
    """
    if type(item) is SpanItem:
        head = item.__dict__.copy()
        del head["input"], head["output"], head["metadata"], head["expected"]
        return head
    return {name: getattr(item, name) for name in _FIELD_NAMES if name not in _CONTENT_FIELDS}


def encode_snapshot(
    item: SpanItem, content: Content | None, redact: Redactor | None = None
) -> bytes:
    """Encode one item whose content was snapshotted at submit (``snapshot_content``)."""
    return encode_head(item_head(item), content, redact)


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


def encode_fields(
    trace_id: str,
    span_id: str,
    parent_id: str | None,
    name: str,
    start: datetime | int,
    end: datetime | int | None,
    status: str | None,
    kind: str | None,
    content: Content | None,
    redact: Redactor | None = None,
) -> bytes:
    """Encode an item given as its fields (``UpsertQueue.submit_prepared``).

    A timestamp may be an int: nanoseconds since the epoch, UTC (``time.time_ns()``).
    """
    head = {
        "name": name,
        "trace_id": trace_id,
        "id": span_id,
        "parent_id": parent_id,
        "start_timestamp": format_ns(start) if type(start) is int else start,
        "end_timestamp": format_ns(end) if type(end) is int else end,
        "status": status,
        "type": kind,
    }
    return encode_head(head, content, redact)


def encode_head(head: dict[str, Any], content: Content | None, redact: Redactor | None) -> bytes:
    """The item's JSON: ``head`` encoded, with the content object's members spliced in."""
    if redact is not None:
        head, content = _redact_item(head, content, redact)
    try:
        encoded = orjson.dumps(head, option=_DUMPS_OPTIONS)
    except (TypeError, ValueError) as exc:
        raise _encoding_error(head, exc) from None
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
            orjson.dumps(key) + b":" + _redacted(redact, orjson.dumps(value, option=_DUMPS_OPTIONS))
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
