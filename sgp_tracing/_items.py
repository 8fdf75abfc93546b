"""Building ``SpanItem``s cheaply: a conservative shape check plus a trusted constructor.

``SpanItem(...)`` validates every field (about 2 us); the processor builds two items per span,
which alone would eat most of the hot-path budget. So the processor first checks the usual
shape itself, on plain locals (short ASCII ids, an aware start, known type and status, dict
payloads orjson encodes within the size limit). Whatever passes that check is something
``validate_span_item`` accepts and the queue encodes, so the item is assembled without
re-validation. Anything else
goes through the real, validating constructor on the slow path.

The trusted constructor relies on ``SpanItem`` being a dict-backed attrs class (documented in
``sgp_client._models``). If that ever changes, ``TRUSTED`` turns false at import time and every
item takes the validating constructor: slower, never wrong. The proper fix is a trusted
constructor in ``sgp_client`` itself (see the project notes).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

import attrs
import orjson

from sgp_client import SpanItem

__all__ = ["MAX_ID_BYTES", "TRUSTED", "id_problem", "make_item", "payloads_fit"]

MAX_ID_BYTES: Final = 256
# The options the queue encodes with, so "accepted here" means "accepted there".
_DUMPS_OPTIONS: Final = orjson.OPT_NAIVE_UTC
_dumps = orjson.dumps

_FIELDS: Final = (
    "name",
    "trace_id",
    "start_timestamp",
    "id",
    "parent_id",
    "group_id",
    "end_timestamp",
    "status",
    "type",
    "input",
    "output",
    "metadata",
    "expected",
    "application_interaction_id",
    "application_variant_id",
    "obs_trace_id",
    "obs_span_id",
)


def _trusted_supported() -> bool:
    try:
        names = tuple(f.name for f in attrs.fields(SpanItem))
    except Exception:  # not an attrs class any more: use the constructor
        return False
    return set(names) == set(_FIELDS) and "__slots__" not in SpanItem.__dict__


#: Whether ``make_item`` may skip ``SpanItem``'s validation for pre-checked fields.
TRUSTED: Final = _trusted_supported()

_new = object.__new__
_set_attr = object.__setattr__
_TEMPLATE: Final[dict[str, Any]] = dict.fromkeys(_FIELDS)


def make_item(
    name: str,
    trace_id: str,
    span_id: str,
    parent_id: str | None,
    group_id: str | None,
    start: datetime,
    end: datetime | None,
    status: str | None,
    kind: str | None,
    input_: dict[str, Any] | None,
    output: dict[str, Any] | None,
    metadata: dict[str, Any] | None,
) -> SpanItem:
    """A ``SpanItem`` from fields the caller has already checked (``is_plain`` and co)."""
    if not TRUSTED:
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
            input=input_,
            output=output,
            metadata=metadata,
        )
    item: SpanItem = _new(SpanItem)
    # Copy a presized all-None template and fill what is set: a 17-key dict display costs
    # about 0.7 us (it grows its table several times), the copy 0.1 us. Frozen attrs blocks
    # attribute assignment, not the instance dict.
    fields = _TEMPLATE.copy()
    fields["name"] = name
    fields["trace_id"] = trace_id
    fields["id"] = span_id
    fields["start_timestamp"] = start
    if parent_id is not None:
        fields["parent_id"] = parent_id
    if group_id is not None:
        fields["group_id"] = group_id
    if end is not None:
        fields["end_timestamp"] = end
    if status is not None:
        fields["status"] = status
    if kind is not None:
        fields["type"] = kind
    if input_ is not None:
        fields["input"] = input_
    if output is not None:
        fields["output"] = output
    if metadata is not None:
        fields["metadata"] = metadata
    _set_attr(item, "__dict__", fields)
    return item


def payloads_fit(
    input_: dict[str, Any] | None,
    output: dict[str, Any] | None,
    metadata: dict[str, Any] | None,
    limit: int,
) -> bool:
    """True when orjson encodes the three payloads, together, in at most ``limit`` bytes.

    One C-speed encode (about 0.1 us for a small payload) answers "will the queue's encode
    accept it, and is it small enough" for any nesting, where a Python walk would cost more
    for even a flat two-key dict. False only means "let the slow path look": the slow path
    then checks each payload against the limit on its own.
    """
    try:
        return len(_dumps((input_, output, metadata), option=_DUMPS_OPTIONS)) <= limit
    except Exception:  # refused: cycle, depth, surrogate, unknown type
        return False


def id_problem(value: object, *, required: bool) -> str | None:
    """Why the API would reject ``value`` as an id (None if it would not)."""
    if value is None:
        return "is missing" if required else None
    if type(value) is not str:
        return f"is a {type(value).__name__}, not a str"
    if not value:
        return "is empty"
    if "\x00" in value:
        return "contains a NUL byte"
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        return "is not valid UTF-8 (lone surrogate)"
    if size > MAX_ID_BYTES:
        return f"is {size} UTF-8 bytes, over the limit of {MAX_ID_BYTES}"
    return None
