"""The filters of ``POST /v5/spans/search``, validated and translated to a `SearchQuery`.

Every filter the official client (scale-gp-beta 0.7.0) sends is honoured as its docstrings
describe, or refused with a 422 naming it; a filter this server does not know is refused
too, so a misspelt filter never silently widens a search. Paging and the time window
(``limit``, ``starting_after``, ``ending_before``, ``sort_by``, ``sort_order``, ``from_ts``,
``to_ts``, ``allow_partial_results``) are read from the query string, where the official
client sends them; the body may carry them too (the query string wins).

Where the real API leaves room, this server picks one behaviour (and says so here):

- ``extra_metadata``: each key must be present in the span's metadata and equal its value
  (``true`` is not ``1``), or equal any element of an array value; keys are ANDed, and a
  ``$``-prefixed key is an ordinary key (the Postgres read path).
- ``search_texts``: case-insensitive, over the name and the string values of input, output
  and metadata; a term of up to 8 ASCII letter-and-digit words matches them as contiguous
  whole words in a value, any other term as a substring; an unquoted term also matches as a
  substring of the name; a double-quoted term must appear inside one value (not the name).
  Terms are ANDed; UUID-shaped terms match trace ids instead, ORed onto the text match.
  Each term needs 2 characters, at most 10 terms.
- ``min_duration_ms`` / ``max_duration_ms``: inclusive, on completed spans only.
- ``assessment_types``: this server keeps no assessments, so a non-empty list matches
  nothing. ``allow_partial_results``: accepted; pages are never cut short here.
- On the legacy store, as on the real one: ``obs_trace_ids``/``obs_span_ids`` and the token
  sorts answer 422.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import orjson

from ._spans import SPAN_STATUSES, SPAN_TYPES, ApiError, timestamp_us
from ._store import SORT_KEYS, SearchQuery, StoreKind, json_field

__all__ = ["MAX_SEARCH_LIMIT", "SearchRequest", "parse_search"]

DEFAULT_SEARCH_LIMIT = 100
MAX_SEARCH_LIMIT = 1000
MAX_IDS = 10_000  # combined count of the id filters (a pair counts 2), as the real API
MAX_TEXT_TERMS = 10

# Filters of plain string lists, mapped to the SQL expression they match (trusted names).
_LIST_FILTERS = {
    "trace_ids": "trace_id",
    "span_ids": "id",
    "parent_ids": json_field("parent_id"),
    "statuses": json_field("status"),
    "types": json_field("type"),
    "names": json_field("name"),
    "application_variant_ids": json_field("application_variant_id"),
    "obs_trace_ids": json_field("obs_trace_id"),
    "obs_span_ids": json_field("obs_span_id"),
    # agentex writes these metadata keys on every span it sends.
    "acp_types": json_field("metadata.__acp_type__"),
    "agentex_agent_ids": json_field("metadata.__agent_id__"),
    "agentex_agent_names": json_field("metadata.__agent_name__"),
}
_EXCLUDE_FILTERS = {"excluded_span_ids": "id", "excluded_trace_ids": "trace_id"}
_ALLOWED_VALUES = {"statuses": SPAN_STATUSES, "types": SPAN_TYPES}
_HEX = {"obs_trace_ids": re.compile(r"[0-9a-f]{32}"), "obs_span_ids": re.compile(r"[0-9a-f]{16}")}
_ID_FILTERS = ("trace_ids", "span_ids", "excluded_span_ids", "excluded_trace_ids", "parent_ids")
_LEGACY_REFUSED = ("obs_trace_ids", "obs_span_ids")
_TOKEN_SORTS = ("input_tokens", "output_tokens")

# Read from the query string (or, failing that, the body).
_PAGING = (
    "limit", "starting_after", "ending_before", "sort_by", "sort_order", "from_ts", "to_ts",
    "allow_partial_results",
)  # fmt: skip
_BODY_FILTERS = frozenset(
    {
        *_LIST_FILTERS, *_EXCLUDE_FILTERS, "excluded_spans", "spans", "group_id",
        "parents_only", "min_duration_ms", "max_duration_ms", "extra_metadata",
        "search_texts", "assessment_types",
    }
)  # fmt: skip
_KNOWN = _BODY_FILTERS | frozenset(_PAGING)


@attrs.frozen
class SearchRequest:
    """One validated search: its filters as SQL and its paging."""

    query: SearchQuery
    limit: int
    sort_by: str
    descending: bool
    starting_after: str | None
    ending_before: str | None


def parse_search(
    account_id: str, kind: StoreKind, filters: Any, params: Mapping[str, str]
) -> SearchRequest:
    """Validate a search (`filters`: the JSON body, `params`: the query string)."""
    if type(filters) is not dict:
        raise ApiError(422, "body: must be a JSON object of filters")
    unknown = sorted(set(filters) - _KNOWN)
    if unknown:
        raise ApiError(422, f"{unknown[0]}: unknown search filter (not supported here)")

    def paging(name: str) -> Any:
        return params[name] if name in params else filters.get(name)

    limit = _integer("limit", paging("limit"), DEFAULT_SEARCH_LIMIT)
    if not 1 <= limit <= MAX_SEARCH_LIMIT:
        raise ApiError(422, f"limit: must be within [1, {MAX_SEARCH_LIMIT}]")
    sort_order = paging("sort_order") or "asc"
    if sort_order not in ("asc", "desc"):
        raise ApiError(422, "sort_order: must be 'asc' or 'desc'")
    sort_by = paging("sort_by") or "start_timestamp"
    if sort_by not in SORT_KEYS:
        raise ApiError(422, f"sort_by: must be one of {sorted(SORT_KEYS)}")
    if kind == "legacy" and sort_by in _TOKEN_SORTS:
        raise ApiError(422, f"sort_by: {sort_by} is not available on the legacy store")
    cursors = {name: paging(name) for name in ("starting_after", "ending_before")}
    for name, cursor in cursors.items():
        if cursor is not None and type(cursor) is not str:
            raise ApiError(422, f"{name}: must be a span id")
    partial = paging("allow_partial_results")
    if partial is not None and partial not in (True, False, "true", "false"):
        raise ApiError(422, "allow_partial_results: must be a boolean")
    query = SearchQuery(account_id)
    _time_window(query, paging("from_ts"), paging("to_ts"))
    _body_filters(query, kind, filters)
    return SearchRequest(
        query=query,
        limit=limit,
        sort_by=sort_by,
        descending=sort_order == "desc",
        starting_after=cursors["starting_after"],
        ending_before=cursors["ending_before"],
    )


def _integer(field: str, value: Any, default: int) -> int:
    if value is None:
        return default
    if type(value) is int:
        return value
    if type(value) is str and value.lstrip("-").isdigit():
        return int(value)
    raise ApiError(422, f"{field}: must be an integer")


def _timestamp(field: str, value: Any) -> int:
    try:
        return timestamp_us(0, field, value)
    except ApiError:
        raise ApiError(422, f"{field}: invalid ISO 8601 date-time") from None


def _time_window(query: SearchQuery, from_ts: Any, to_ts: Any) -> None:
    start = _timestamp("from_ts", from_ts) if from_ts is not None else None
    end = _timestamp("to_ts", to_ts) if to_ts is not None else None
    if start is not None and end is not None and start > end:
        raise ApiError(422, "from_ts: after to_ts")
    if start is not None:
        query.where("start_us >= ?", start)
    if end is not None:
        query.where("start_us <= ?", end)


def _strings(field: str, values: Any) -> list[str]:
    if type(values) is not list or not all(type(v) is str for v in values):
        raise ApiError(422, f"{field}: must be a list of strings")
    return values


def _pairs(field: str, values: Any) -> list[tuple[str, str]]:
    if type(values) is not list:
        raise ApiError(422, f"{field}: must be a list of {{trace_id, span_id}} objects")
    pairs = []
    for value in values:
        if (
            type(value) is not dict
            or set(value) != {"trace_id", "span_id"}
            or not all(type(v) is str for v in value.values())
        ):
            raise ApiError(422, f"{field}: must be a list of {{trace_id, span_id}} objects")
        pairs.append((value["trace_id"], value["span_id"]))
    return pairs


def _body_filters(query: SearchQuery, kind: StoreKind, filters: dict[str, Any]) -> None:
    id_count = 0
    for field, column in _LIST_FILTERS.items():
        if filters.get(field) is None:
            continue
        values = _strings(field, filters[field])
        if kind == "legacy" and field in _LEGACY_REFUSED:
            raise ApiError(422, f"{field}: not available on the legacy store")
        allowed = _ALLOWED_VALUES.get(field)
        if allowed is not None and not set(values) <= allowed:
            raise ApiError(422, f"{field}: must be among {sorted(allowed)}")
        pattern = _HEX.get(field)
        if pattern is not None and not all(pattern.fullmatch(v) for v in values):
            raise ApiError(422, f"{field}: must be lowercase hex ids of the right length")
        id_count += len(values) if field in _ID_FILTERS else 0
        query.any_of(column, values)
    excluded_spans = filters.get("excluded_spans")
    for field, column in _EXCLUDE_FILTERS.items():
        if filters.get(field) is None:
            continue
        values = _strings(field, filters[field])
        id_count += len(values)
        # excluded_spans takes precedence over excluded_span_ids when both are set.
        if values and not (field == "excluded_span_ids" and excluded_spans is not None):
            query.none_of(column, values)
    for field, negate in (("spans", False), ("excluded_spans", True)):
        if filters.get(field) is None:
            continue
        pairs = _pairs(field, filters[field])
        id_count += 2 * len(pairs)
        if pairs or not negate:
            rows = ", ".join(["(?, ?)"] * len(pairs))
            clause = f"(trace_id, id) IN (VALUES {rows})" if pairs else "0"
            query.where(f"NOT {clause}" if negate else clause, *(v for p in pairs for v in p))
    if id_count > MAX_IDS:
        raise ApiError(422, f"trace_ids: more than {MAX_IDS} ids in the id filters together")
    group_id = filters.get("group_id")
    if group_id is not None:
        if type(group_id) is not str:
            raise ApiError(422, "group_id: must be a string")
        query.where(f"{json_field('group_id')} = ?", group_id)
    parents_only = filters.get("parents_only")
    if parents_only is not None:
        if type(parents_only) is not bool:
            raise ApiError(422, "parents_only: must be a boolean")
        if parents_only:
            query.where(f"{json_field('parent_id')} IS NULL")
    for field, op in (("min_duration_ms", ">="), ("max_duration_ms", "<=")):
        bound = filters.get(field)
        if bound is None:
            continue
        if type(bound) is not int or bound < 0:
            raise ApiError(422, f"{field}: must be a non-negative integer")
        query.where(f"end_us IS NOT NULL AND end_us - start_us {op} ?", bound * 1000)
    assessment_types = filters.get("assessment_types")
    if assessment_types is not None and _strings("assessment_types", assessment_types):
        query.where("0")  # no span here has an assessment
    metadata = filters.get("extra_metadata")
    if metadata is not None:
        if type(metadata) is not dict:
            raise ApiError(422, "extra_metadata: must be a JSON object")
        _call(query, "sgp_metadata_matches", _metadata_matches, orjson.dumps(metadata))
    texts = filters.get("search_texts")
    if texts is not None:
        terms = _strings("search_texts", texts)
        if len(terms) > MAX_TEXT_TERMS:
            raise ApiError(422, f"search_texts: at most {MAX_TEXT_TERMS} terms")
        _compile_terms("\x00".join(terms))  # refuses bad terms now, not inside SQLite
        _call(query, "sgp_text_matches", _text_matches, "\x00".join(terms))


def _call(
    query: SearchQuery, name: str, function: Callable[[bytes, Any], bool], argument: Any
) -> None:
    """Match rows with a Python predicate of (stored span JSON, `argument`)."""
    query.functions[name] = function
    query.where(f"{name}(data, ?)", argument)


# -- extra_metadata ----------------------------------------------------------------------------


def _same(have: Any, want: Any) -> bool:
    # JSON equality: true is not 1, and 1 is 1.0.
    if type(have) is bool or type(want) is bool:
        return have is want
    return bool(have == want)


def _metadata_matches(data: bytes, spec: bytes) -> bool:
    metadata = orjson.loads(data).get("metadata")
    if type(metadata) is not dict:
        return False
    for key, want in orjson.loads(spec).items():
        if key not in metadata:
            return False
        have = metadata[key]
        if not (_same(have, want) or (type(want) is list and any(_same(have, w) for w in want))):
            return False
    return True


# -- search_texts ------------------------------------------------------------------------------

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_WORD = re.compile(r"[A-Za-z0-9]+")
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')


@attrs.frozen
class _Term:
    pattern: re.Pattern[str] | None  # whole words; None: a plain substring
    text: str  # lowercased
    in_name: bool  # also searched in the name


@functools.lru_cache(maxsize=64)
def _compile_terms(joined: str) -> tuple[tuple[_Term, ...], frozenset[str]]:
    """(text terms, lowercased UUIDs) of a ``search_texts`` list joined by NUL."""
    terms: list[_Term] = []
    uuids: set[str] = set()
    for raw in joined.split("\x00"):
        term = raw.strip()
        quoted = _QUOTED.fullmatch(term)
        text = re.sub(r"\\(.)", r"\1", quoted.group(1)).strip() if quoted else term
        if len(text) < 2:
            raise ApiError(422, "search_texts: each term must be at least 2 characters")
        if not quoted and _UUID.fullmatch(text):
            uuids.add(text.lower())
            continue
        words = text.split()
        pattern = None
        if len(words) <= 8 and all(_WORD.fullmatch(w) for w in words):
            body = r"\s+".join(re.escape(w.lower()) for w in words)
            pattern = re.compile(rf"(?<![a-z0-9]){body}(?![a-z0-9])")
        terms.append(_Term(pattern, text.lower(), in_name=not quoted))
    return tuple(terms), frozenset(uuids)


def _strings_in(value: Any, out: list[str]) -> list[str]:
    if type(value) is str:
        out.append(value.lower())
    elif type(value) is dict:
        for item in value.values():
            _strings_in(item, out)
    elif type(value) is list:
        for item in value:
            _strings_in(item, out)
    return out


def _term_matches(term: _Term, name: str, values: list[str]) -> bool:
    if term.in_name and term.text in name:  # the name: a substring match for a plain term
        return True
    if term.pattern is not None:
        return any(term.pattern.search(v) for v in values)
    return any(term.text in v for v in values)


def _text_matches(data: bytes, joined: str) -> bool:
    terms, uuids = _compile_terms(joined)
    span = orjson.loads(data)
    if uuids and str(span.get("trace_id", "")).lower() in uuids:
        return True
    if not terms:
        return False
    name = str(span.get("name") or "").lower()
    values: list[str] = []
    for field in ("input", "output", "metadata"):
        _strings_in(span.get(field), values)
    return all(_term_matches(term, name, values) for term in terms)
