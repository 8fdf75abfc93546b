"""A recording span sink for tests: what a processor submitted, checked like the queue would.

``RecordingSink`` encodes every item with the client's own encoder (so anything the queue
would refuse is refused here too, with the same ``InvalidSpanError``), re-validates it, and
keeps the decoded JSON without its nulls. Like ``UpsertQueue`` it takes items both ways:
``submit(item)`` and ``submit_record(record)`` (the processor's fast path); with
``prepared=False`` it says it takes no records (``takes_records``), as a third-party sink
that offers ``submit`` only. ``spans()`` merges
the records the way the server does (completed beats in-progress, otherwise the later one
wins). ``violations`` lists broken
invariants instead of raising, because a processor would swallow the exception.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson

from sgp_client import SpanItem, SpanRecord
from sgp_client._models import validate_span_item
from sgp_client._serialization import encode_item, encode_record

from ._span import datetime_from_ns

__all__ = ["RecordingSink"]


class RecordingSink:
    """Keeps every submitted item as decoded JSON; ``fail_with`` makes submitting raise."""

    #: The default of ``prepared`` (tests switch it to run a suite through both paths).
    PREPARED_DEFAULT = True

    def __init__(self, *, fail_with: Exception | None = None, prepared: bool | None = None) -> None:
        self.fail_with = fail_with
        self.records: list[dict[str, Any]] = []
        self.violations: list[str] = []
        #: Whether the processor may use ``submit_record`` (read once, by the processor).
        self.takes_records = self.PREPARED_DEFAULT if prepared is None else prepared

    def submit(self, item: SpanItem, /) -> None:
        """Encode, check and record ``item``."""
        if self.fail_with is not None:
            raise self.fail_with
        encoded = encode_item(item)
        try:
            validate_span_item(item)
        except ValueError as exc:
            self.violations.append(f"invalid item {item.id!r}: {exc}")
        self._record(encoded)

    def submit_record(self, record: SpanRecord, /) -> None:
        """``UpsertQueue.submit_record``: encode, check (as a ``SpanItem``) and record."""
        if self.fail_with is not None:
            raise self.fail_with
        if not self.takes_records:
            self.violations.append(f"submit_record used on a sink that takes none: {record.id!r}")
        encoded = encode_record(record)
        start, end = record.start, record.end
        try:
            SpanItem(
                name=record.name,
                trace_id=record.trace_id,
                id=record.id,
                parent_id=record.parent_id,
                group_id=record.group_id,
                start_timestamp=datetime_from_ns(start) if isinstance(start, int) else start,
                end_timestamp=datetime_from_ns(end) if isinstance(end, int) else end,
                status=record.status,  # type: ignore[arg-type]
                type=record.type,  # type: ignore[arg-type]
                **(orjson.loads(record.content) if record.content is not None else {}),
            )
        except (ValueError, TypeError) as exc:
            # The processor promised checked fields: one that is not is a processor bug.
            self.violations.append(f"invalid record {record.id!r}: {exc}")
        self._record(encoded)

    async def upsert(self, item: SpanItem, /) -> None:
        """``UpsertQueue.upsert``: ``submit``, delivered at once."""
        self.submit(item)

    async def upsert_record(self, record: SpanRecord, /) -> None:
        """``UpsertQueue.upsert_record``: ``submit_record``, delivered at once."""
        self.submit_record(record)

    def _record(self, encoded: bytes) -> None:
        # Nulls dropped: the encoder may send "not given" as null or leave the key out, and
        # both mean the same to the API; records compare the same either way.
        record = {k: v for k, v in orjson.loads(encoded).items() if v is not None}
        start = datetime.fromisoformat(record["start_timestamp"])
        if start.tzinfo is None:
            self.violations.append(f"naive start in {record['id']!r}")
        if "end_timestamp" in record:
            if datetime.fromisoformat(record["end_timestamp"]) < start:
                self.violations.append(f"end before start in {record['id']!r}")
            if record.get("status") not in ("SUCCESS", "ERROR", "CANCELED"):
                self.violations.append(f"completed {record['id']!r} without a status")
        elif "status" in record:
            self.violations.append(f"in-progress {record['id']!r} has a status")
        self.records.append(record)

    @property
    def starts(self) -> list[dict[str, Any]]:
        """Records without an end, in submission order."""
        return [r for r in self.records if "end_timestamp" not in r]

    @property
    def ends(self) -> list[dict[str, Any]]:
        """Records with an end, in submission order."""
        return [r for r in self.records if "end_timestamp" in r]

    def spans(self) -> dict[tuple[str, str], dict[str, Any]]:
        """One record per (trace_id, id), merged like the server merges upserts."""
        merged: dict[tuple[str, str], dict[str, Any]] = {}
        for record in self.records:
            key = (record["trace_id"], record["id"])
            old = merged.get(key)
            if old is not None and "end_timestamp" in old and "end_timestamp" not in record:
                continue
            merged[key] = record
        return merged

    def by_name(self, name: str) -> dict[str, Any]:
        """The merged record of the only span called ``name``."""
        found = [r for r in self.spans().values() if r["name"] == name]
        if len(found) != 1:
            raise LookupError(f"{len(found)} spans named {name!r}")
        return found[0]
