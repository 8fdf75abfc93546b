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
from ._record import (
    Content,
    SpanRecord,
    encoding_error,
    kept,
    record_head,
    record_of,
)
from ._redact import Redactor, may_hold_credentials, redact_credentials

logger = logging.getLogger("sgp_client")

#: What a field becomes when the redact hook raises on it (valid JSON, visibly masked).
REDACTOR_FAILED: Final = b'"[REDACTED:redactor error]"'

__all__ = [
    "encode_item",
    "encode_items_body",
    "encode_record",
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


def encode_record(record: SpanRecord, redact: Redactor | None = None) -> bytes:
    """The JSON of one record, as sent (``InvalidSpanError`` names a field that does not
    encode; ``redact`` masks the name and the content fields, never the ids)."""
    return encode_head(record_head(record), record.content, redact)


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
