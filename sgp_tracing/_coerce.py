"""Turning arbitrary agent payloads into bounded, JSON-safe values: the tracing slow path.

Agent code puts anything into spans: datetimes, sets, bytes, enums, dataclasses, pydantic
models, NaN, objects that refer to themselves, dicts nested ten thousand levels deep,
ten-megabyte strings. None of that may crash the caller or stall it. orjson (C, fast) gets the
first try; only what it refuses is walked in Python, and that walk is bounded in depth, in the
number of nodes it visits and in string length, so its cost is bounded whatever the input.

Nothing here runs for a plain payload on the hot path: the processor checks the cheap shape
first and calls in here only when that check fails.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from enum import Enum
from pathlib import PurePath
from typing import Any, Final
from uuid import UUID

import attrs
import orjson

# The queue encodes with exactly these options, so "orjson accepts it" means "the queue will".
from sgp_client._constants import DUMPS_OPTIONS

__all__ = [
    "CYCLE_MARKER",
    "DEPTH_MARKER",
    "TRUNCATED_KEY",
    "PayloadFitter",
    "fix_str",
    "to_json_safe",
]

#: Replaces a container that contains itself.
CYCLE_MARKER: Final = "[cycle]"
#: Replaces whatever lies deeper than the walk's depth limit.
DEPTH_MARKER: Final = "[max depth]"
#: Replaces the rest of a container once the walk's node budget is spent.
BUDGET_MARKER: Final = "[truncated: too many values]"
#: Key of the marker object that replaces a payload over the size limit.
TRUNCATED_KEY: Final = "__truncated__"

_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**64 - 1
_SURROGATES: Final = re.compile("[\ud800-\udfff]")
_PREVIEW_CHARS: Final = 1024


def fix_str(value: str, max_chars: int) -> str:
    """``value`` cut to ``max_chars`` and with lone surrogates replaced by U+FFFD."""
    if len(value) > max_chars:
        # Cut first, so a 10 MB string is never encoded just to be checked.
        value = f"{value[:max_chars]}...[truncated {len(value) - max_chars} chars]"
    if value.isascii():
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATES.sub("\ufffd", value)
    return value


class _Walker:
    """One bounded walk over a value, producing plain JSON types only."""

    __slots__ = ("max_depth", "max_str", "nodes_left", "on_path")

    def __init__(self, *, max_depth: int, max_nodes: int, max_str: int) -> None:
        self.max_depth = max_depth
        self.max_str = max_str
        self.nodes_left = max_nodes
        # ids of the containers between the root and the current node: a repeat is a cycle
        # (a value shared by two branches is not, and is converted twice).
        self.on_path: set[int] = set()

    def walk(self, value: Any, depth: int) -> Any:
        self.nodes_left -= 1
        if self.nodes_left < 0:
            return BUDGET_MARKER
        kind = type(value)
        if value is None or kind is bool:
            return value
        if kind is str:
            return fix_str(value, self.max_str)
        if kind is int:
            return value if _INT_MIN <= value <= _INT_MAX else _big_int(value)
        if kind is float:
            # NaN and infinities have no JSON spelling; orjson writes null for them too.
            return value if value - value == 0.0 else None
        if kind is dict or kind is list or kind is tuple:
            return self._container(value, depth)
        # Enums before the str/int checks: a StrEnum member is also a str.
        if isinstance(value, Enum):
            return self.walk(value.value, depth)
        if isinstance(value, str):
            return fix_str(str.__str__(value), self.max_str)
        if isinstance(value, int):
            return self.walk(int.__index__(value), depth)
        if isinstance(value, float):
            return self.walk(float.__float__(value), depth)
        if isinstance(value, datetime | date | time):
            return value.isoformat()
        if isinstance(value, timedelta):
            return value.total_seconds()
        if isinstance(value, bytes | bytearray | memoryview):
            raw = bytes(value[: self.max_str])
            return fix_str(raw.decode("utf-8", "replace"), self.max_str)
        if isinstance(value, UUID | Decimal | PurePath):
            return str(value)
        if isinstance(value, Mapping | list | tuple | set | frozenset):
            return self._container(value, depth)
        if isinstance(value, BaseException):
            return {"type": type(value).__name__, "message": self._text(value, str)}
        return self._object(value, depth)

    def _container(self, value: Any, depth: int) -> Any:
        if depth >= self.max_depth:
            return DEPTH_MARKER
        key = id(value)
        if key in self.on_path:
            return CYCLE_MARKER
        self.on_path.add(key)
        try:
            if isinstance(value, Mapping):
                out: dict[str, Any] = {}
                for k, v in value.items():
                    if self.nodes_left <= 0:
                        out[TRUNCATED_KEY] = BUDGET_MARKER
                        break
                    out[self._key(k)] = self.walk(v, depth + 1)
                return out
            items = value
            if isinstance(value, set | frozenset):
                try:
                    items = sorted(value)  # a stable order, when the members allow one
                except Exception:  # unorderable members: keep set order
                    items = list(value)
            result: list[Any] = []
            for v in items:
                if self.nodes_left <= 0:
                    result.append(BUDGET_MARKER)
                    break
                result.append(self.walk(v, depth + 1))
            return result
        finally:
            self.on_path.discard(key)

    def _object(self, value: Any, depth: int) -> Any:
        fields: dict[str, Any] | None = None
        try:
            if attrs.has(type(value)):
                fields = {f.name: getattr(value, f.name, None) for f in attrs.fields(type(value))}
            elif dataclasses.is_dataclass(value) and not isinstance(value, type):
                fields = {f.name: getattr(value, f.name, None) for f in dataclasses.fields(value)}
            else:
                # pydantic v2 (and look-alikes), found by duck typing: no import, no dependency.
                dump = getattr(value, "model_dump", None)
                if callable(dump):
                    try:
                        dumped = dump(mode="json")
                    except TypeError:
                        dumped = dump()
                    return self.walk(dumped, depth)
        except Exception:  # a hostile object must not break tracing
            fields = None
        if fields is not None:
            # The object itself goes on the path, so a field pointing back at it is a cycle.
            key = id(value)
            if key in self.on_path:
                return CYCLE_MARKER
            self.on_path.add(key)
            try:
                return self._container(fields, depth)
            finally:
                self.on_path.discard(key)
        return self._text(value, repr)

    def _key(self, key: Any) -> str:
        if type(key) is str:
            return fix_str(key, self.max_str)
        if isinstance(key, Enum):
            key = key.value
        if key is None or isinstance(key, bool):
            return "null" if key is None else ("true" if key else "false")
        return self._text(key, str)

    def _text(self, value: Any, how: Any) -> str:
        try:
            text = how(value)
            if type(text) is not str:
                text = str.__str__(text) if isinstance(text, str) else object.__repr__(value)
        except Exception:  # __repr__/__str__ may raise anything
            text = f"<unrepresentable {type(value).__name__}>"
        return fix_str(text, self.max_str)


def _big_int(value: int) -> str:
    # orjson only encodes 64-bit integers; huge ones become text (str() refuses > 4300 digits).
    try:
        return str(value)
    except ValueError:
        return f"<int of {value.bit_length()} bits>"


def to_json_safe(
    value: Any, *, max_depth: int = 32, max_nodes: int = 100_000, max_str: int = 10_000_000
) -> Any:
    """A copy of ``value`` made of plain JSON types (dict, list, str, int, float, bool, None).

    Never raises. What JSON cannot say is converted (see the module docstring); cycles,
    depth over ``max_depth`` and values past ``max_nodes`` become short markers.
    """
    if value is None:
        return None
    try:
        # orjson round trip: fast, and it already converts datetimes, enums, dataclasses and
        # UUIDs. Non-str keys are refused here on purpose: the walker stringifies them.
        return orjson.loads(orjson.dumps(value, option=DUMPS_OPTIONS))
    except Exception:  # anything orjson refuses takes the walk
        return _Walker(max_depth=max_depth, max_nodes=max_nodes, max_str=max_str).walk(value, 0)


class PayloadFitter:
    """Makes one span payload (input, output, metadata) an encodable dict within a size limit.

    ``fit`` returns the payload to put in the item and records what it had to do in
    ``counts`` (reason -> count): ``<field>_not_dict`` when a non-dict was wrapped as
    ``{"value": ...}``, ``not_json`` when values had to be converted, ``truncated`` when
    the encoded payload was over ``max_bytes`` and was replaced by a marker object
    ``{"__truncated__": true, "bytes": n, "limit": max_bytes, "preview": "..."}``.
    """

    __slots__ = ("max_bytes", "max_depth", "max_nodes")

    def __init__(self, max_bytes: int, *, max_depth: int = 32) -> None:
        self.max_bytes = max_bytes
        self.max_depth = max_depth
        # A payload of max_bytes holds at most about max_bytes / 2 values ("1,"), so a bigger
        # node budget could only produce something that is truncated anyway.
        self.max_nodes = max(1_000, min(max_bytes // 2, 1_000_000))

    def fit(
        self, value: Any, field: str, counts: dict[str, int], *, force: bool = False
    ) -> dict[str, Any] | None:
        """The payload as it should be sent; never raises.

        ``force`` converts even what orjson accepts (used when a sink refused the payload).
        """
        if value is None:
            return None
        if type(value) is not dict or force:
            converted = self._walk(value)
            if type(converted) is dict:
                _count(counts, "not_json")
                value = converted
            else:
                _count(counts, f"{field}_not_dict")
                value = {"value": converted}
            return self._bounded(value, counts)
        try:
            encoded = orjson.dumps(value, option=DUMPS_OPTIONS)
        except Exception:  # e.g. a Mapping whose items() raises
            _count(counts, "not_json")
        else:
            if len(encoded) <= self.max_bytes:
                return value
        # Refused or too big: the walk converts and cuts long strings, which often brings a
        # payload under the limit with most of its structure kept.
        walked = self._walk(value)
        if type(walked) is not dict:
            walked = {"value": walked}
        return self._bounded(walked, counts)

    def _walk(self, value: Any) -> Any:
        # Strings are cut to a quarter of the limit: one huge string then no longer pushes the
        # whole payload over it, and the rest of its structure survives.
        max_str = max(64, self.max_bytes // 4)
        walker = _Walker(max_depth=self.max_depth, max_nodes=self.max_nodes, max_str=max_str)
        try:
            return walker.walk(value, 0)
        except Exception as exc:  # refused by orjson: convert below
            return f"<unconvertible {type(value).__name__}: {type(exc).__name__}>"

    def _bounded(self, value: dict[str, Any], counts: dict[str, int]) -> dict[str, Any]:
        try:
            encoded = orjson.dumps(value, option=DUMPS_OPTIONS)
        except Exception as exc:  # cannot happen for walked values; be safe
            _count(counts, "not_json")
            return {TRUNCATED_KEY: True, "error": f"{type(exc).__name__}: {exc}"[:200]}
        if len(encoded) <= self.max_bytes:
            return value
        _count(counts, "truncated")
        preview = encoded[: min(_PREVIEW_CHARS, self.max_bytes // 2)].decode("utf-8", "ignore")
        return {
            TRUNCATED_KEY: True,
            "bytes": len(encoded),
            "limit": self.max_bytes,
            "preview": preview,
        }


def _count(counts: dict[str, int], reason: str) -> None:
    counts[reason] = counts.get(reason, 0) + 1
