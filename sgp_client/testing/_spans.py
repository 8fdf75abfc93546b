"""Turn the items of a span write request into store rows, the way the real API judges them.

Parsing (orjson first, the stdlib for what orjson refuses), per-item validation, the
U+FFFD replacement of NUL / invalid UTF-8 outside the id fields, deduplication within the
batch, and the parent checks (cycles, parents in another trace). Any problem rejects the
whole batch with an `ApiError` whose detail names the item index and the field.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from ._store import Row

__all__ = [
    "MAX_BATCH_ITEMS",
    "SPAN_STATUSES",
    "SPAN_TYPES",
    "ApiError",
    "parse_json",
    "prepare_items",
    "timestamp_us",
]

MAX_BATCH_ITEMS = 1000
MAX_ID_BYTES = 256

SPAN_STATUSES = frozenset({"SUCCESS", "ERROR", "CANCELED"})
SPAN_TYPES = frozenset(
    {
        "TEXT_INPUT", "TEXT_OUTPUT", "COMPLETION_INPUT", "COMPLETION", "KB_RETRIEVAL",
        "KB_INPUT", "RERANKING", "EXTERNAL_ENDPOINT", "PROMPT_ENGINEERING", "DOCUMENT_INPUT",
        "MAP_REDUCE", "DOCUMENT_SEARCH", "DOCUMENT_PROMPT", "CUSTOM", "CODE_EXECUTION",
        "DATA_MANIPULATION", "EVALUATION", "FILE_RETRIEVAL", "KB_ADD_CHUNK", "KB_MANAGEMENT",
        "GUARDRAIL", "OUTPUT_GUARDRAIL", "TRACER", "AGENT_TRACER", "AGENT_WORKFLOW",
        "STANDALONE",
    }
)  # fmt: skip

_ID_FIELDS = ("trace_id", "id", "parent_id", "group_id")
_OBJECT_FIELDS = ("input", "output", "metadata", "expected")
_OPTIONAL_STR_FIELDS = ("application_interaction_id", "application_variant_id")
_TOKEN_FIELDS = ("input_tokens", "output_tokens")
# Fields of SpanCreate; anything else in an item is ignored, as a pydantic model would.
KNOWN_FIELDS = frozenset(
    {
        "name", "trace_id", "start_timestamp", "id", "parent_id", "group_id",
        "end_timestamp", "status", "type", "application_interaction_id",
        "application_variant_id", "obs_trace_id", "obs_span_id",
        *_OBJECT_FIELDS, *_TOKEN_FIELDS,
    }
)  # fmt: skip

_BAD_CHARS = re.compile("[\x00\ud800-\udfff]")
_OBS_TRACE_ID = re.compile(r"[0-9a-f]{32}")
_OBS_SPAN_ID = re.compile(r"[0-9a-f]{16}")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_US_PER_DAY = 86_400_000_000


class ApiError(Exception):
    """An API answer other than success: status, ``{"detail": ...}`` and extra headers."""

    def __init__(self, status: int, detail: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(status, detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}


def parse_json(body: bytes) -> tuple[Any, bool]:
    """Parse a request body: (value, dirty).

    `dirty` means the body may hold NUL characters, lone surrogates or invalid UTF-8, which
    the slow path must find (400 in ids) or replace (U+FFFD elsewhere). orjson refuses lone
    surrogates and invalid UTF-8, so those bodies go through the stdlib, with invalid bytes
    mapped to lone surrogates so both kinds of breakage look the same afterwards.
    """
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    else:
        # A NUL can only appear escaped in valid JSON; a false positive just costs a scan.
        return value, b"\\u0000" in body
    try:
        value = json.loads(body.decode("utf-8", errors="surrogateescape"))
    except ValueError as exc:
        raise ApiError(400, f"Malformed JSON body: {exc}") from None
    return value, True


def _replace_bad(value: Any) -> Any:
    if isinstance(value, str):
        return _BAD_CHARS.sub("\ufffd", value)
    if isinstance(value, dict):
        return {_replace_bad(k): _replace_bad(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace_bad(v) for v in value]
    return value


def _sanitize(i: int, item: dict[str, Any]) -> dict[str, Any]:
    for field in _ID_FIELDS:
        value = item.get(field)
        if isinstance(value, str) and (found := _BAD_CHARS.search(value)) is not None:
            what = "a NUL byte" if found.group() == "\x00" else "invalid UTF-8"
            raise ApiError(400, f"items[{i}].{field}: contains {what}")
    return {k: (v if k in _ID_FIELDS else _replace_bad(v)) for k, v in item.items()}


def _check_id(i: int, field: str, value: Any) -> None:
    if type(value) is not str or not value:
        raise ApiError(422, f"items[{i}].{field}: must be a non-empty string")
    # Four bytes per character at most: short strings need no encoding to be measured.
    if len(value) > MAX_ID_BYTES // 4 and len(value.encode()) > MAX_ID_BYTES:
        raise ApiError(422, f"items[{i}].{field}: longer than {MAX_ID_BYTES} bytes")


def timestamp_us(i: int, field: str, value: Any) -> int:
    """Microseconds since the epoch of an ISO 8601 string (naive means UTC)."""
    if type(value) is not str:
        raise ApiError(422, f"items[{i}].{field}: must be an ISO 8601 date-time string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ApiError(422, f"items[{i}].{field}: invalid ISO 8601 date-time") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return (parsed - _EPOCH) // _MICROSECOND


# How each optional field is checked; only the fields an item has are looked at.
_OBJECT, _ID, _STR, _STATUS, _TYPE, _TOKENS, _OBS, _END = range(8)
_OPTIONAL_KIND = {
    **dict.fromkeys(_OBJECT_FIELDS, _OBJECT),
    "parent_id": _ID,
    "group_id": _ID,
    **dict.fromkeys(_OPTIONAL_STR_FIELDS, _STR),
    "status": _STATUS,
    "type": _TYPE,
    **dict.fromkeys(_TOKEN_FIELDS, _TOKENS),
    "obs_trace_id": _OBS,
    "obs_span_id": _OBS,
    "end_timestamp": _END,
}
_OBS_PATTERN = {"obs_trace_id": _OBS_TRACE_ID, "obs_span_id": _OBS_SPAN_ID}


def _check_required(i: int, item: dict[str, Any]) -> None:
    """The slow, precise path for the required fields: raises the right error, if any."""
    if type(item.get("name")) is not str:
        raise ApiError(422, f"items[{i}].name: field required (a string)")
    if item.get("trace_id") is None:
        raise ApiError(422, f"items[{i}].trace_id: field required")
    _check_id(i, "trace_id", item["trace_id"])
    if item.get("id") is not None:
        _check_id(i, "id", item["id"])
    if item.get("start_timestamp") is None:
        raise ApiError(422, f"items[{i}].start_timestamp: field required")


def _check_optional(i: int, field: str, value: Any, start_us: int) -> int | None:
    """Check one optional field; returns end_us for end_timestamp."""
    kind = _OPTIONAL_KIND[field]
    if kind == _OBJECT:
        if type(value) is not dict:
            raise ApiError(422, f"items[{i}].{field}: must be a JSON object")
    elif kind == _ID:
        _check_id(i, field, value)
    elif kind == _END:
        end_us = timestamp_us(i, field, value)
        if end_us < start_us:
            raise ApiError(422, f"items[{i}].end_timestamp: before start_timestamp")
        return end_us
    elif kind == _STATUS:
        if type(value) is not str or value not in SPAN_STATUSES:
            raise ApiError(422, f"items[{i}].status: must be one of {sorted(SPAN_STATUSES)}")
    elif kind == _TYPE:
        if type(value) is not str or value not in SPAN_TYPES:
            raise ApiError(422, f"items[{i}].type: not a known span type")
    elif kind == _STR:
        if type(value) is not str:
            raise ApiError(422, f"items[{i}].{field}: must be a string")
    elif kind == _TOKENS:
        if type(value) is not int or value < 0:
            raise ApiError(422, f"items[{i}].{field}: must be a non-negative integer")
    elif type(value) is not str or not _OBS_PATTERN[field].fullmatch(value):
        raise ApiError(422, f"items[{i}].{field}: must be lowercase hex of the right length")
    return None


_SHORT_ID = MAX_ID_BYTES // 4  # ids up to this many characters cannot exceed the byte limit


def _check_item(i: int, item: dict[str, Any]) -> tuple[int, int | None]:
    """Validate one item in place (assigning a missing id); returns (start_us, end_us).

    Written for speed (this runs for every span received): the common shapes are checked
    inline and anything unusual goes to the precise, slower helpers.
    """
    trace_id = item.get("trace_id")
    span_id = item.get("id")
    start = item.get("start_timestamp")
    if (
        type(item.get("name")) is not str
        or type(trace_id) is not str
        or not 0 < len(trace_id) <= _SHORT_ID
        or type(start) is not str
        or (span_id is not None and (type(span_id) is not str or not 0 < len(span_id) <= _SHORT_ID))
    ):
        _check_required(i, item)
    if span_id is None:
        item["id"] = uuid.uuid4().hex
    try:
        parsed = datetime.fromisoformat(start)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ApiError(422, f"items[{i}].start_timestamp: invalid ISO 8601 date-time") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    start_us = (parsed - _EPOCH) // _MICROSECOND
    end_us = None
    kinds = _OPTIONAL_KIND
    for field, value in item.items():
        kind = kinds.get(field)
        if kind is None or value is None:
            continue
        # Inline fast paths for the fields nearly every span has.
        if kind == _OBJECT and type(value) is dict:
            continue
        if kind == _ID and type(value) is str and 0 < len(value) <= _SHORT_ID:
            continue
        if kind == _TYPE and type(value) is str and value in SPAN_TYPES:
            continue
        if kind == _STATUS and type(value) is str and value in SPAN_STATUSES:
            continue
        result = _check_optional(i, field, value, start_us)
        if result is not None:
            end_us = result
    return start_us, end_us


def _check_parents(
    account_id: str,
    entries: Iterable[tuple[int, dict[str, Any]]],
    traces_of: Callable[[str, Iterable[str]], dict[str, set[str]]],
) -> None:
    """409 for a cycle of parent links within the batch or a parent in another trace."""
    nodes: dict[tuple[str, str], str | None] = {}
    index: dict[tuple[str, str], int] = {}
    for i, item in entries:
        key = (item["trace_id"], item["id"])
        nodes[key] = item.get("parent_id")
        index[key] = i
    unresolved: list[tuple[int, str, str]] = []
    for key, parent in nodes.items():
        if parent is not None and (key[0], parent) not in nodes:
            unresolved.append((index[key], key[0], parent))
    if unresolved:
        in_batch: dict[str, set[str]] = {}
        for trace_id, span_id in nodes:
            in_batch.setdefault(span_id, set()).add(trace_id)
        stored = traces_of(account_id, (p for _, _, p in unresolved))
        for i, trace_id, parent in unresolved:
            if trace_id in stored.get(parent, ()):
                continue
            if parent in in_batch or parent in stored:
                raise ApiError(409, f"items[{i}].parent_id: parent span belongs to another trace")
    # Cycle detection: follow parent links inside the batch; 1 = on the current path.
    state: dict[tuple[str, str], int] = {}
    for start in nodes:
        path: list[tuple[str, str]] = []
        node: tuple[str, str] | None = start
        while node is not None and node not in state:
            state[node] = 1
            path.append(node)
            parent = nodes[node]
            node = (node[0], parent) if parent is not None and (node[0], parent) in nodes else None
        if node is not None and state[node] == 1:
            raise ApiError(409, f"items[{index[node]}].parent_id: cycle in parent links")
        for done in path:
            state[done] = 2


def prepare_items(
    items: Any,
    *,
    dirty: bool,
    account_id: str,
    created_by: dict[str, Any],
    traces_of: Callable[[str, Iterable[str]], dict[str, set[str]]],
) -> list[Row]:
    """Validate a batch and return its store rows, deduplicated by (trace_id, id, day).

    For a repeated key, a completed item (has end_timestamp) beats an in-progress one and
    otherwise the later one wins; the surviving row keeps the first occurrence's position.
    """
    if type(items) is not list:
        raise ApiError(422, "items: must be a list")
    if len(items) > MAX_BATCH_ITEMS:
        raise ApiError(422, f"items: at most {MAX_BATCH_ITEMS} items per request")
    chosen: dict[tuple[str, str, int], tuple[int, dict[str, Any], int, int | None]] = {}
    for i, raw in enumerate(items):
        if type(raw) is not dict:
            raise ApiError(422, f"items[{i}]: must be a JSON object")
        item: dict[str, Any] = raw
        if not item.keys() <= KNOWN_FIELDS:
            item = {k: v for k, v in item.items() if k in KNOWN_FIELDS}
        if dirty:
            item = _sanitize(i, item)
        start_us, end_us = _check_item(i, item)
        key = (item["trace_id"], item["id"], start_us // _US_PER_DAY)
        previous = chosen.get(key)
        if previous is None or end_us is not None or previous[3] is None:
            chosen[key] = (i, item, start_us, end_us)
    _check_parents(account_id, ((i, item) for i, item, _, _ in chosen.values()), traces_of)
    rows: list[Row] = []
    append = rows.append
    dumps = orjson.dumps
    for (trace_id, span_id, day), (_, item, start_us, end_us) in chosen.items():
        item["account_id"] = account_id
        item["object"] = "span"
        item["created_by"] = created_by
        if "input_tokens" not in item:
            item["input_tokens"] = None
        if "output_tokens" not in item:
            item["output_tokens"] = None
        try:
            data = dumps(item)
        except TypeError:  # integers beyond 64 bits, accepted by the stdlib parser only
            raise ApiError(422, "items: a value cannot be stored (integer out of range)") from None
        append((account_id, trace_id, span_id, day, start_us, end_us, data))
    return rows
