"""Turn the items of a span write request into store rows, the way the real API judges them.

Parsing (orjson first, the stdlib for what orjson refuses), per-item validation, the
U+FFFD replacement of NUL / invalid UTF-8 outside the id fields, deduplication within the
batch, and the parent checks (cycles, parents in another trace). Any problem rejects the
whole batch with an `ApiError` whose detail names the item index and the field.
"""

from __future__ import annotations

import json
import operator
import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from itertools import repeat
from typing import Any, NamedTuple, cast

import orjson

from .._constants import EPOCH, MAX_ID_BYTES
from ._store import Row, StoreKind

__all__ = [
    "MAX_BATCH_ITEMS",
    "SPAN_STATUSES",
    "SPAN_TYPES",
    "ApiError",
    "Prepared",
    "parse_json",
    "prepare_items",
    "timestamp_us",
]

MAX_BATCH_ITEMS = 1000

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
    except RecursionError:  # orjson stops at 1024 levels, the stdlib at the stack's depth
        raise ApiError(400, "Malformed JSON body: nested too deeply") from None
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
    return (parsed - EPOCH) // _MICROSECOND


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


# orjson cannot encode integers beyond 64 bits (only the stdlib parser accepts them) nor lone
# surrogates (only in-process callers can pass them on a clean body).
_UNSTORABLE = "items: a value cannot be stored (integer out of range, or nested too deeply)"
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
    start_us = (parsed - EPOCH) // _MICROSECOND
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


# A batch's key of one item: (trace_id, id, UTC day) on the tracing store, id on the legacy one.
_Key = tuple[str, str, int] | str
_Chosen = dict[_Key, tuple[int, dict[str, Any], int, int | None]]


def _check_parents(
    account_id: str,
    chosen: _Chosen,
    traces_of: Callable[[str, Iterable[str]], dict[str, set[str]]],
) -> None:
    """409 for a cycle of parent links within the batch or a parent in another trace."""
    # (trace_id, id) -> (parent_id, item index); the last chosen entry wins.
    nodes: dict[tuple[str, str], tuple[str | None, int]] = {}
    for i, item, _, _ in chosen.values():
        nodes[item["trace_id"], item["id"]] = (item.get("parent_id"), i)
    trace_ids = [key[0] for key in nodes]
    span_ids = [key[1] for key in nodes]
    parents = [parent for parent, _ in nodes.values()]
    positions = [i for _, i in nodes.values()]
    _check_links(account_id, trace_ids, span_ids, parents, positions, traces_of)


def _check_links(
    account_id: str,
    trace_ids: Sequence[str],
    span_ids: Sequence[str],
    parent_ids: Sequence[str | None],
    positions: Iterable[int],
    traces_of: Callable[[str, Iterable[str]], dict[str, set[str]]],
) -> None:
    """The parent checks on columns: distinct (trace_id, id) keys with their parent ids and
    the item index each came from (for the error detail)."""
    keys = list(zip(trace_ids, span_ids, strict=True))
    nodes = set(keys)
    parent_keys = list(zip(trace_ids, parent_ids, strict=True))
    index = list(positions)
    # A (trace, None) parent key is never a node: ids are strings.
    up = {key: parent for key, parent in zip(keys, parent_keys, strict=True) if parent in nodes}
    if len(up) < len(keys) and any(p is not None for _, p in set(parent_keys) - nodes):
        in_batch: dict[str, set[str]] = {}
        for trace_id, span_id in keys:
            in_batch.setdefault(span_id, set()).add(trace_id)
        unresolved = [
            (i, trace_id, parent)
            for i, (trace_id, parent) in zip(index, parent_keys, strict=True)
            if parent is not None and (trace_id, parent) not in nodes
        ]
        stored = traces_of(account_id, (p for _, _, p in unresolved))
        for i, trace_id, parent in unresolved:
            if trace_id in stored.get(parent, ()):
                continue
            if parent in in_batch or parent in stored:
                raise ApiError(409, f"items[{i}].parent_id: parent span belongs to another trace")
    if not up:
        return
    # Only nodes with a parent in the batch can be on a cycle: drop, round by round, those
    # whose parent has none; whatever is left is on (or hangs below) a cycle.
    # A few rounds settle the usual shallow trees; deeper ones get the walk below.
    left = up
    for _ in range(4):
        left = {key: parent for key, parent in left.items() if parent in left}
        if not left:
            return
    # Walk the links in batch order (which also names the same item a cycle is found at).
    where = dict(zip(keys, index, strict=True))
    state: dict[tuple[str, str], int] = {}
    for start in up:
        if start in state:
            continue
        path: list[tuple[str, str]] = []
        node: tuple[str, str] | None = start
        while node is not None and node not in state:
            state[node] = 1
            path.append(node)
            node = up.get(node)
        if node is not None and state[node] == 1:
            raise ApiError(409, f"items[{where[node]}].parent_id: cycle in parent links")
        for done in path:
            state[done] = 2


# The fields the SDK sends. An item with exactly these keys takes the fast path of
# `_quick_check`; anything else goes to `_check_item`. A batch whose items leave some of them
# out (the SDK omits unset content fields, and its tracing layer the fields it never sets)
# has them filled in as null first, which is what a missing field means to the API.
SDK_FIELDS = (
    "name", "trace_id", "start_timestamp", "id", "parent_id", "group_id", "end_timestamp",
    "status", "type", "input", "output", "metadata", "expected", "application_interaction_id",
    "application_variant_id", "obs_trace_id", "obs_span_id",
)  # fmt: skip
_sdk_values = operator.itemgetter(*SDK_FIELDS)
_SDK_LEN = len(SDK_FIELDS)
_SDK_NULLS: dict[str, Any] = dict.fromkeys(SDK_FIELDS)


def _with_sdk_nulls(item: dict[str, Any]) -> dict[str, Any]:
    return {**_SDK_NULLS, **item}


_OBJECT_OR_NONE = frozenset({dict, type(None)})
_STR_OR_NONE = frozenset({str, type(None)})
_STATUS_OR_NONE = frozenset({*SPAN_STATUSES, None})
_TYPE_OR_NONE = frozenset({*SPAN_TYPES, None})
_fromisoformat = datetime.fromisoformat


def _quick_check(item: dict[str, Any]) -> tuple[int, int | None] | None:
    """(start_us, end_us) of an item of the SDK's shape whose every field is plainly valid.

    None means "not sure": the item has other keys, or something that needs a closer look
    (a missing id, a long id, obs ids, a naive or unparsable timestamp, end before start...),
    and `_check_item` must judge it. Never raises, never modifies the item; for the items it
    accepts, it agrees with `_check_item` (tests check this on tricky inputs).
    """
    if len(item) != _SDK_LEN:
        return None
    try:
        (
            name, trace_id, start, span_id, parent_id, group_id, end, status, type_,
            input_, output, metadata, expected, interaction_id, variant_id, obs_trace, obs_span,
        ) = _sdk_values(item)  # fmt: skip
        if not (
            type(name) is str
            and type(trace_id) is str
            and 0 < len(trace_id) <= _SHORT_ID
            and type(span_id) is str
            and 0 < len(span_id) <= _SHORT_ID
            and type(start) is str
            and (parent_id is None or (type(parent_id) is str and 0 < len(parent_id) <= _SHORT_ID))
            and (group_id is None or (type(group_id) is str and 0 < len(group_id) <= _SHORT_ID))
            and type(end) in _STR_OR_NONE
            and status in _STATUS_OR_NONE
            and type_ in _TYPE_OR_NONE
            and type(input_) in _OBJECT_OR_NONE
            and type(output) in _OBJECT_OR_NONE
            and type(metadata) in _OBJECT_OR_NONE
            and type(expected) in _OBJECT_OR_NONE
            and type(interaction_id) in _STR_OR_NONE
            and type(variant_id) in _STR_OR_NONE
            and obs_trace is None
            and obs_span is None
        ):
            return None
        parsed = _fromisoformat(start)
        if parsed.tzinfo is None:
            return None
        start_us: int = (parsed - EPOCH) // _MICROSECOND
        if end is None:
            return start_us, None
        parsed = _fromisoformat(end)
        if parsed.tzinfo is None:
            return None
        end_us: int = (parsed - EPOCH) // _MICROSECOND
    except (KeyError, TypeError, ValueError):  # missing key, unhashable status, bad date
        return None
    if end_us < start_us:
        return None
    return start_us, end_us


_ONLY_STR = frozenset({str})
_STR_OR_NONE_VALUES = frozenset({str, type(None)})
_NONE = frozenset({None})
_get_tzinfo = operator.attrgetter("tzinfo")
_sub = operator.sub
_floordiv = operator.floordiv


def _id_lengths_ok(values: Iterable[str]) -> bool:
    lengths = set(map(len, values))
    return not lengths or (min(lengths) > 0 and max(lengths) <= _SHORT_ID)


def _quick_batch(
    items: list[Any],
    account_id: str,
    created_by: dict[str, Any],
    traces_of: Callable[[str, Iterable[str]], dict[str, set[str]]],
    kind: StoreKind = "tracing",
) -> list[Row] | None:
    """The rows of a batch whose items all have the SDK's shape and plainly valid values,
    with no repeated key; None when `prepare_items` must look item by item.

    The checks run column by column with C-level loops (map, set, zip), which costs a
    fraction of a per-item Python check. The items are modified only once all checks pass.
    """
    if not items or set(map(type, items)) != {dict}:
        return None
    if set(map(len, items)) != {_SDK_LEN}:
        items = list(map(_with_sdk_nulls, items))
        if set(map(len, items)) != {_SDK_LEN}:  # unknown keys: the precise path drops them
            return None
    try:
        (
            names, trace_ids, starts, span_ids, parent_ids, group_ids, ends, statuses, types,
            inputs, outputs, metadatas, expecteds, interaction_ids, variant_ids, obs_traces,
            obs_spans,
        ) = zip(*map(_sdk_values, items), strict=True)  # fmt: skip
    except KeyError:
        return None
    if not (
        set(map(type, names)) == _ONLY_STR
        and set(map(type, trace_ids)) == _ONLY_STR
        and set(map(type, span_ids)) == _ONLY_STR
        and set(map(type, starts)) == _ONLY_STR
        and set(map(type, parent_ids)) <= _STR_OR_NONE_VALUES
        and set(map(type, group_ids)) <= _STR_OR_NONE_VALUES
        and set(map(type, ends)) <= _STR_OR_NONE_VALUES
        and set(map(type, statuses)) <= _STR_OR_NONE_VALUES
        and set(map(type, types)) <= _STR_OR_NONE_VALUES
        and set(statuses) <= _STATUS_OR_NONE
        and set(types) <= _TYPE_OR_NONE
        and set(map(type, inputs)) <= _OBJECT_OR_NONE
        and set(map(type, outputs)) <= _OBJECT_OR_NONE
        and set(map(type, metadatas)) <= _OBJECT_OR_NONE
        and set(map(type, expecteds)) <= _OBJECT_OR_NONE
        and set(map(type, interaction_ids)) <= _STR_OR_NONE_VALUES
        and set(map(type, variant_ids)) <= _STR_OR_NONE_VALUES
        and set(obs_traces) == _NONE
        and set(obs_spans) == _NONE
        and _id_lengths_ok(trace_ids)
        and _id_lengths_ok(span_ids)
        and _id_lengths_ok(set(parent_ids) - _NONE)
        and _id_lengths_ok(set(group_ids) - _NONE)
    ):
        return None
    try:
        parsed = list(map(_fromisoformat, starts))
        if None in set(map(_get_tzinfo, parsed)):
            return None
        start_us: list[int] = list(
            map(_floordiv, map(_sub, parsed, repeat(EPOCH)), repeat(_MICROSECOND))
        )
        end_us: list[int | None]
        open_count = ends.count(None)
        if open_count == len(ends):  # all in progress
            end_us = list(ends)
        elif not open_count:  # all completed
            parsed = list(map(_fromisoformat, ends))
            if None in set(map(_get_tzinfo, parsed)):
                return None
            completed: list[int] = list(
                map(_floordiv, map(_sub, parsed, repeat(EPOCH)), repeat(_MICROSECOND))
            )
            if any(map(operator.lt, completed, start_us)):
                return None
            end_us = cast("list[int | None]", completed)  # no copy: only ints in it
        else:
            end_us = list(ends)
            done = [n for n, end in enumerate(ends) if end is not None]
            parsed = [_fromisoformat(ends[n]) for n in done]
            if None in set(map(_get_tzinfo, parsed)):
                return None
            for n, us in zip(
                done,
                map(_floordiv, map(_sub, parsed, repeat(EPOCH)), repeat(_MICROSECOND)),
                strict=True,
            ):
                if us < start_us[n]:
                    return None
                end_us[n] = us
    except ValueError:
        return None
    days = list(map(_floordiv, start_us, repeat(_US_PER_DAY)))
    count = len(items)
    keys = span_ids if kind == "legacy" else zip(trace_ids, span_ids, days, strict=True)
    if len(set(keys)) != count:
        return None  # repeated keys: the per-item path applies the upsert rule
    _check_links(account_id, trace_ids, span_ids, parent_ids, range(count), traces_of)
    extra = {
        "account_id": account_id,
        "object": "span",
        "created_by": created_by,
        "input_tokens": None,
        "output_tokens": None,
    }
    for _ in map(dict.update, items, repeat(extra)):
        pass
    try:
        return list(
            zip(
                repeat(account_id),
                trace_ids,
                span_ids,
                days,
                start_us,
                end_us,
                map(orjson.dumps, items),
            )
        )
    except TypeError:
        raise ApiError(422, _UNSTORABLE) from None


class Prepared(NamedTuple):
    """A validated batch: its store rows, and for each row whose key the batch wrote several
    times, whether each of those writes was completed, in order (what `SpanStore.write` needs
    to count reopened spans; empty in the usual case)."""

    rows: list[Row]
    history: dict[int, list[bool]]


def prepare_items(
    items: Any,
    *,
    dirty: bool,
    account_id: str,
    created_by: dict[str, Any],
    traces_of: Callable[[str, Iterable[str]], dict[str, set[str]]],
    kind: StoreKind = "tracing",
) -> Prepared:
    """Validate a batch and return its store rows, deduplicated by key: (trace_id, id, day)
    on the tracing store, the id alone on the legacy store.

    For a repeated key, the tracing store keeps a completed item (has end_timestamp) over an
    in-progress one and otherwise the later one; the legacy store keeps the later one. The
    surviving row keeps the first occurrence's position. Items of the SDK's usual shape are
    checked by `_quick_check` and used as they are (no copy); anything else goes through the
    precise path.
    """
    if type(items) is not list:
        raise ApiError(422, "items: must be a list")
    if len(items) > MAX_BATCH_ITEMS:
        raise ApiError(422, f"items: at most {MAX_BATCH_ITEMS} items per request")
    if not dirty:
        quick_rows = _quick_batch(items, account_id, created_by, traces_of, kind)
        if quick_rows is not None:
            return Prepared(quick_rows, {})
    legacy = kind == "legacy"
    chosen: _Chosen = {}
    # key -> completed or not, for each write of a key written more than once
    repeated: dict[_Key, list[bool]] = {}
    setdefault = chosen.setdefault
    quick = _quick_check
    for i, item in enumerate(items):
        if type(item) is not dict:
            raise ApiError(422, f"items[{i}]: must be a JSON object")
        checked = None if dirty else quick(item)
        if checked is None:
            if not item.keys() <= KNOWN_FIELDS:
                item = {k: v for k, v in item.items() if k in KNOWN_FIELDS}
            if dirty:
                try:
                    item = _sanitize(i, item)
                except RecursionError:  # far deeper than orjson can store anyway
                    raise ApiError(422, _UNSTORABLE) from None
            checked = _check_item(i, item)
        start_us, end_us = checked
        entry = (i, item, start_us, end_us)
        key: _Key = (
            item["id"] if legacy else (item["trace_id"], item["id"], start_us // _US_PER_DAY)
        )
        previous = setdefault(key, entry)
        if previous is entry:
            continue
        writes = repeated.get(key)
        if writes is None:
            writes = repeated[key] = [previous[3] is not None]
        writes.append(end_us is not None)
        if legacy or end_us is not None or previous[3] is None:
            chosen[key] = entry  # an existing key: keeps the first occurrence's position
    _check_parents(account_id, chosen, traces_of)
    rows: list[Row] = []
    history: dict[int, list[bool]] = {}
    append = rows.append
    dumps = orjson.dumps
    extra = {"account_id": account_id, "object": "span", "created_by": created_by}
    extra_all = {**extra, "input_tokens": None, "output_tokens": None}
    try:
        for key, (_, given, start_us, end_us) in chosen.items():
            if key in repeated:
                history[len(rows)] = repeated[key]
            # Stored with every field, as the fast path stores them (missing means null).
            item = given if _SDK_NULLS.keys() <= given.keys() else {**_SDK_NULLS, **given}
            if "input_tokens" in item or "output_tokens" in item:
                item.update(extra)
                item.setdefault("input_tokens", None)
                item.setdefault("output_tokens", None)
            else:
                item.update(extra_all)
            day = start_us // _US_PER_DAY
            append((account_id, item["trace_id"], item["id"], day, start_us, end_us, dumps(item)))
    except TypeError:
        raise ApiError(422, _UNSTORABLE) from None
    return Prepared(rows, history)
