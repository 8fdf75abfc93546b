"""SpanItem validation, JSON encoding of items and decoding of the API's Span answers."""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any

import attrs
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sgp_client import (
    SPAN_STATUSES,
    SPAN_TYPES,
    Identity,
    InvalidSpanError,
    SGPError,
    Span,
    SpanItem,
    new_span_id,
)
from sgp_client._serialization import encode_item, encode_items_body, structure, unstructure
from tests._helpers import START as SHARED_START
from tests._helpers import span_item

#: The shared start with microseconds, so the wire format's sub-second precision shows.
START = SHARED_START.replace(microsecond=123456)


def item(**changes: Any) -> SpanItem:
    values: dict[str, Any] = {"start_timestamp": START, **changes}
    return span_item(**values)


def decoded(span: SpanItem) -> dict[str, Any]:
    result: dict[str, Any] = orjson.loads(encode_item(span))
    return result


# -- validation -----------------------------------------------------------------------------


def test_minimal_item_gets_a_fresh_id() -> None:
    first, second = item(), item()
    assert re.fullmatch(r"[0-9a-f]{32}", first.id)
    assert first.id != second.id
    assert not first.completed
    assert item(end_timestamp=START).completed


def test_new_span_ids_are_unique() -> None:
    ids = {new_span_id() for _ in range(10_000)}
    assert len(ids) == 10_000
    assert all(len(i) == 32 and set(i) <= set("0123456789abcdef") for i in ids)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_makes_other_ids_than_its_parent() -> None:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, then leave without running pytest's teardown
        os.write(write_end, " ".join(new_span_id() for _ in range(100)).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        child_ids = set(pipe.read().split())
    os.waitpid(pid, 0)
    parent_ids = {new_span_id() for _ in range(100)}
    assert len(child_ids) == 100
    assert not child_ids & parent_ids


def test_items_are_frozen() -> None:
    span = item()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        span.name = "other"  # type: ignore[misc]


def test_every_field_accepted() -> None:
    span = item(
        id="span-1",
        parent_id="parent-1",
        group_id="group-1",
        end_timestamp=START + timedelta(seconds=1),
        status="SUCCESS",
        type="COMPLETION",
        input={"q": "hi"},
        output={"a": "hello"},
        metadata={"model": "m"},
        expected={"a": "hello"},
        application_interaction_id="ai-1",
        application_variant_id="av-1",
        obs_trace_id="0" * 32,
        obs_span_id="f" * 16,
    )
    assert span.completed


def test_invalid_span_error_is_a_value_error_in_the_tree() -> None:
    assert issubclass(InvalidSpanError, ValueError)
    assert issubclass(InvalidSpanError, SGPError)
    with pytest.raises(InvalidSpanError) as info:
        item(trace_id="")
    assert info.value.field == "trace_id"
    assert str(info.value).startswith("trace_id: ")


@pytest.mark.parametrize("field", ["name", "trace_id", "start_timestamp"])
def test_required_fields(field: str) -> None:
    with pytest.raises(InvalidSpanError, match=f"^{field}: ") as info:
        item(**{field: None})
    assert info.value.field == field


def test_id_none_means_a_fresh_id() -> None:
    first, second = item(id=None), item(id=None)
    assert first.id != second.id
    assert len(first.id) == 32


def test_required_fields_must_be_passed() -> None:
    with pytest.raises(TypeError, match="start_timestamp"):
        SpanItem(name="x", trace_id="t")  # type: ignore[call-arg]


@pytest.mark.parametrize("field", ["id", "trace_id", "parent_id", "group_id"])
def test_id_fields_limit_is_256_utf8_bytes(field: str) -> None:
    item(**{field: "a" * 256})
    item(**{field: "é" * 128})  # 256 bytes in 128 characters
    item(**{field: "\U0001f600" * 64})  # 4 bytes each
    for too_long in ("a" * 257, "é" * 128 + "a", "\U0001f600" * 65):
        with pytest.raises(InvalidSpanError, match="UTF-8 bytes") as info:
            item(**{field: too_long})
        assert info.value.field == field


@pytest.mark.parametrize("field", ["id", "trace_id", "parent_id", "group_id"])
@pytest.mark.parametrize("value", ["\x00", "a\x00b", "é\x00", "x" * 200 + "\x00"])
def test_id_fields_refuse_nul(field: str, value: str) -> None:
    with pytest.raises(InvalidSpanError, match="NUL") as info:
        item(**{field: value})
    assert info.value.field == field


@pytest.mark.parametrize("field", ["id", "trace_id", "parent_id", "group_id"])
def test_id_fields_refuse_lone_surrogates(field: str) -> None:
    with pytest.raises(InvalidSpanError, match="UTF-8") as info:
        item(**{field: "bad\ud800"})
    assert info.value.field == field


@pytest.mark.parametrize("field", ["id", "trace_id", "parent_id", "group_id"])
@pytest.mark.parametrize("value", ["", 42, b"bytes"])
def test_id_fields_must_be_non_empty_str(field: str, value: object) -> None:
    with pytest.raises(InvalidSpanError) as info:
        item(**{field: value})
    assert info.value.field == field


@given(st.text(max_size=300))
def test_id_rule_matches_the_api(value: str) -> None:
    """An id is accepted exactly when the server would accept it."""
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        acceptable = False
    else:
        acceptable = 0 < size <= 256 and "\x00" not in value
    if acceptable:
        assert item(id=value, trace_id=value, group_id=value).id == value
    else:
        with pytest.raises(InvalidSpanError):
            item(id=value)


def test_end_before_start_refused() -> None:
    with pytest.raises(InvalidSpanError, match="before start") as info:
        item(end_timestamp=START - timedelta(microseconds=1))
    assert info.value.field == "end_timestamp"


def test_end_equal_to_start_accepted() -> None:
    assert item(end_timestamp=START).completed


def test_end_before_start_across_offsets() -> None:
    # 13:00 at +02:00 is 11:00 UTC: before a 12:00 UTC start, though the wall clock says later.
    plus_two = timezone(timedelta(hours=2))
    with pytest.raises(InvalidSpanError, match="before start"):
        item(end_timestamp=datetime(2025, 3, 1, 13, 0, tzinfo=plus_two))
    item(end_timestamp=datetime(2025, 3, 1, 14, 30, tzinfo=plus_two))


def test_end_before_start_naive_and_mixed() -> None:
    naive_start = START.replace(tzinfo=None)
    with pytest.raises(InvalidSpanError, match="before start"):
        item(start_timestamp=naive_start, end_timestamp=naive_start - timedelta(seconds=1))
    # Naive is UTC: a naive end one second before an aware start is before it.
    with pytest.raises(InvalidSpanError, match="before start"):
        item(end_timestamp=naive_start - timedelta(seconds=1))
    with pytest.raises(InvalidSpanError, match="before start"):
        item(start_timestamp=naive_start, end_timestamp=START - timedelta(seconds=1))
    item(start_timestamp=naive_start, end_timestamp=START)


@pytest.mark.parametrize("field", ["start_timestamp", "end_timestamp"])
@pytest.mark.parametrize("value", ["2025-03-01T12:00:00Z", 1700000000, START.date()])
def test_timestamps_must_be_datetimes(field: str, value: object) -> None:
    with pytest.raises(InvalidSpanError, match="datetime") as info:
        item(**{field: value})
    assert info.value.field == field


def test_name_must_be_a_str() -> None:
    with pytest.raises(InvalidSpanError, match=r"^name: "):
        item(name=3)


@pytest.mark.parametrize("status", sorted(SPAN_STATUSES))
def test_known_statuses(status: str) -> None:
    assert item(status=status).status == status


@pytest.mark.parametrize("status", ["success", "OK", "", 1, ["SUCCESS"], {"SUCCESS": 1}])
def test_unknown_statuses(status: object) -> None:
    # Unhashable values included: they must not escape as TypeError from a set lookup.
    with pytest.raises(InvalidSpanError) as info:
        item(status=status)
    assert info.value.field == "status"


def test_known_types() -> None:
    assert len(SPAN_TYPES) == 26
    for kind in SPAN_TYPES:
        assert item(type=kind).type == kind


@pytest.mark.parametrize("kind", ["completion", "LLM", ["CUSTOM"]])
def test_unknown_types(kind: object) -> None:
    with pytest.raises(InvalidSpanError) as info:
        item(type=kind)
    assert info.value.field == "type"


@pytest.mark.parametrize("field", ["input", "output", "metadata", "expected"])
@pytest.mark.parametrize("value", ["text", ["list"], 3, ("a", "b")])
def test_payloads_must_be_json_objects(field: str, value: object) -> None:
    with pytest.raises(InvalidSpanError, match="JSON object") as info:
        item(**{field: value})
    assert info.value.field == field


@pytest.mark.parametrize("field", ["application_interaction_id", "application_variant_id"])
def test_optional_strings(field: str) -> None:
    item(**{field: "x"})
    with pytest.raises(InvalidSpanError) as info:
        item(**{field: 5})
    assert info.value.field == field


@pytest.mark.parametrize(
    ("field", "good", "bad"),
    [
        ("obs_trace_id", "0123456789abcdef" * 2, ["0123456789ABCDEF" * 2, "0" * 31, "g" * 32]),
        ("obs_span_id", "0123456789abcdef", ["0123456789ABCDEF", "0" * 17, "z" * 16]),
    ],
)
def test_observability_ids(field: str, good: str, bad: list[str]) -> None:
    item(**{field: good})
    for value in bad:
        with pytest.raises(InvalidSpanError, match="hex") as info:
            item(**{field: value})
        assert info.value.field == field


# -- encoding -------------------------------------------------------------------------------


def test_encoding_sends_unset_fields_as_null_and_leaves_out_unset_content() -> None:
    span = item(id="s1")
    data = decoded(span)
    assert {key: value for key, value in data.items() if value is not None} == {
        "id": "s1",
        "trace_id": "trace-1",
        "name": "step",
        "start_timestamp": "2025-03-01T12:00:00.123456+00:00",
    }
    # Only API fields, never an unknown key; unset content fields are left out entirely
    # (the content snapshot holds only the set ones).
    content = {"input", "output", "metadata", "expected"}
    assert set(data) == {field.name for field in attrs.fields(SpanItem)} - content
    with_content = decoded(item(id="s2", output={"a": 1}, expected={"b": 2}))
    assert set(with_content) & content == {"output", "expected"}
    assert (with_content["output"], with_content["expected"]) == ({"a": 1}, {"b": 2})


def test_naive_datetimes_are_sent_as_utc() -> None:
    naive = datetime(2025, 3, 1, 12, 0, 0)
    data = decoded(item(start_timestamp=naive, end_timestamp=naive + timedelta(seconds=2)))
    assert data["start_timestamp"] == "2025-03-01T12:00:00+00:00"
    assert data["end_timestamp"] == "2025-03-01T12:00:02+00:00"


def test_aware_datetimes_keep_their_offset() -> None:
    minus_five = timezone(timedelta(hours=-5))
    data = decoded(item(start_timestamp=datetime(2025, 3, 1, 7, 0, tzinfo=minus_five)))
    assert data["start_timestamp"] == "2025-03-01T07:00:00-05:00"
    assert datetime.fromisoformat(data["start_timestamp"]) == datetime(2025, 3, 1, 12, tzinfo=UTC)


def test_every_encoded_timestamp_has_an_offset() -> None:
    for start in (START, START.replace(tzinfo=None)):
        data = decoded(item(start_timestamp=start, end_timestamp=start))
        for field in ("start_timestamp", "end_timestamp"):
            assert datetime.fromisoformat(data[field]).tzinfo is not None


def test_unstructure_gives_offsets_too() -> None:
    data = unstructure(item(start_timestamp=datetime(2025, 3, 1, 12, 0)))
    assert data["start_timestamp"] == "2025-03-01T12:00:00+00:00"


def test_encoding_full_item_round_trips_values() -> None:
    span = item(
        parent_id="p",
        status="ERROR",
        type="CUSTOM",
        input={"nested": {"list": [1, 2.5, None, True]}, "unicode": "héllo ☃"},
        metadata={"k": "v"},
    )
    data = decoded(span)
    assert data["input"] == {"nested": {"list": [1, 2.5, None, True]}, "unicode": "héllo ☃"}
    assert data["parent_id"] == "p"
    assert data["status"] == "ERROR"
    assert data["type"] == "CUSTOM"
    assert data["metadata"] == {"k": "v"}
    assert "output" not in data


@pytest.mark.parametrize(
    "payload", [{"when": object()}, {1: "non-str key"}, {"big": 2**70}, MappingProxyType({})]
)
def test_unencodable_payload_names_the_field(payload: Any) -> None:
    span = item(output=payload)
    with pytest.raises(InvalidSpanError, match="JSON") as info:
        encode_item(span)
    assert info.value.field == "output"


def test_encoded_item_is_a_snapshot() -> None:
    payload = {"step": 1}
    encoded = encode_item(item(input=payload))
    payload["step"] = 2
    assert orjson.loads(encoded)["input"] == {"step": 1}


def test_batch_body() -> None:
    spans = [item(id="a"), item(id="b")]
    body = orjson.loads(encode_items_body([encode_item(s) for s in spans]))
    assert [i["id"] for i in body["items"]] == ["a", "b"]
    assert orjson.loads(encode_items_body([])) == {"items": []}


# -- decoding -------------------------------------------------------------------------------


def test_span_from_api_answer() -> None:
    answer = {
        "id": "s1",
        "trace_id": "t1",
        "name": "step",
        "start_timestamp": "2025-03-01T12:00:00Z",
        "end_timestamp": "2025-03-01T12:00:01.5+00:00",
        "account_id": "acct",
        "object": "span",
        "status": "SUCCESS",
        "input": {"q": 1},
        "input_tokens": 10,
        "output_tokens": None,
        "created_by": {"id": "u1", "type": "user", "object": "identity"},
        "some_future_field": {"ignored": True},
    }
    span = structure(answer, Span)
    assert span.id == "s1"
    assert span.start_timestamp == datetime(2025, 3, 1, 12, tzinfo=UTC)
    assert span.end_timestamp == datetime(2025, 3, 1, 12, 0, 1, 500000, tzinfo=UTC)
    assert span.completed
    assert span.input == {"q": 1}
    assert span.input_tokens == 10
    assert span.created_by == Identity(id="u1", type="user", object="identity")
    assert span.object == "span"


def test_span_list_from_api_answer() -> None:
    spans = structure(
        [
            {"id": "a", "trace_id": "t", "name": "n", "start_timestamp": "2025-03-01T12:00:00Z"},
            {"id": "b", "trace_id": "t", "name": "n", "start_timestamp": "2025-03-01T12:00:00Z"},
        ],
        list[Span],
    )
    assert [s.id for s in spans] == ["a", "b"]
    assert not spans[0].completed
