"""``UpsertQueue``: the coalescing, bounded, fault-tolerant ``upsert_batch`` queue.

Producers call ``submit(item)`` (synchronous, O(1), no I/O), or ``submit_prepared(...)``
with fields they checked themselves (the tracing layer). The item's mutable parts (input,
output, metadata, expected) are encoded at once, together: that is the snapshot eventually
sent, so a caller's dict changed afterwards changes nothing. Submit only appends to an intake
list; when a batch is due, the dispatcher folds the intake into the pending map keyed by
(``trace_id``, ``id``): a new version of a pending key merges instead of queueing (a
completed span beats an in-progress one, otherwise the later wins), so a start and its end
that meet here go out as one write, encoded once. A dispatcher task sends batches
concurrently (``max_in_flight``) with at most one write per key in flight, classifies
failures (retry, split, bisect, drop) and accounts for every item:
``submitted == delivered + coalesced + pending + in_flight + sum(dropped)``.
"""

from __future__ import annotations

import logging
import math
import operator
import os
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from types import MappingProxyType, TracebackType
from typing import Any, Final, Literal, Self

import anyio
import attrs
from anyio.abc import TaskGroup, TaskStatus

from ._client import MAX_BATCH_ITEMS, AsyncSGPClient
from ._concurrency import Concurrency, concurrency_from
from ._exceptions import (
    APIStatusError,
    APITimeoutError,
    InvalidSpanError,
    QueueNotRunningError,
    SGPError,
)
from ._models import SpanItem
from ._redact import Redactor
from ._retry import Backoff, is_transient
from ._serialization import (
    Content,
    encode_fields,
    encode_items_body,
    encode_snapshot,
    loads,
    snapshot_content,
)

__all__ = ["DropReason", "DroppedSpan", "QueueStats", "UpsertQueue"]

logger = logging.getLogger("sgp_client.queue")

_Key = tuple[str, str]
# One submitted item, a flat tuple (one allocation per item, on the producer's path):
# (trace_id, id, end or None for a start, an upper estimate of its encoded size, its content
# snapshot, then either the SpanItem itself or, from ``submit_prepared``, its name,
# parent_id, start, status and type).
_Intake = tuple[Any, ...]
_SIZE: Final = 3
_estimate_of: Final = operator.itemgetter(_SIZE)
_BATCH_PATH: Final = "/v5/spans/batch"


def _measure_item_overhead() -> int:
    # The encoded size of an item with one-character ids and no name or content, but every
    # other field at its longest (keys, nulls, both timestamps, status, type). Submit adds
    # the ids, the name (four bytes a character: UTF-8 or escapes) and the snapshotted
    # content: an upper bound of the real size, used until the item is encoded.
    moment = datetime(2026, 1, 1, 0, 0, 0, 1, tzinfo=UTC)
    sample = SpanItem(
        name="",
        trace_id="t",
        id="i",
        parent_id="p",
        start_timestamp=moment,
        end_timestamp=moment,
        status="CANCELED",
        type="OUTPUT_GUARDRAIL",
    )
    return len(encode_snapshot(sample, None)) - 3 - 2  # minus the ids and the empty name


_ITEM_OVERHEAD: Final = _measure_item_overhead()
# Room in a request body for the ``{"items":[...]}`` envelope.
_ENVELOPE_BYTES: Final = 12


def _encode_record(record: _Intake, redact: Redactor | None) -> bytes:
    """The JSON of one intake record, whichever way it was submitted."""
    if len(record) == 6:
        return encode_snapshot(record[5], record[4], redact)
    trace_id, span_id, end, _, content, name, parent_id, start, status, kind = record
    return encode_fields(
        trace_id, span_id, parent_id, name, start, end, status, kind, content, redact
    )


class DropReason:
    """Why items were dropped; the keys of ``QueueStats.dropped``."""

    QUEUE_FULL: Final = "queue_full"
    SHED_START: Final = "shed_start"
    REJECTED: Final = "rejected"
    RETRIES_EXHAUSTED: Final = "retries_exhausted"
    UNAUTHORIZED: Final = "unauthorized"
    NOT_FOUND: Final = "not_found"
    SHUTDOWN: Final = "shutdown"
    ERROR: Final = "error"


@attrs.frozen(kw_only=True)
class DroppedSpan:
    """An item the queue gave up on, as handed to ``on_drop``: its key and encoded JSON."""

    trace_id: str
    span_id: str
    completed: bool
    payload: bytes = attrs.field(repr=lambda p: f"<{len(p)} bytes>")

    def to_dict(self) -> dict[str, object]:
        """The item as the JSON object that would have been sent."""
        data: dict[str, object] = loads(self.payload)
        return data


@attrs.frozen(kw_only=True)
class QueueStats:
    """A consistent snapshot of the queue's counters.

    ``submitted == delivered + coalesced + pending + in_flight + sum(dropped.values())``.
    """

    submitted: int
    coalesced: int
    delivered: int
    requests: int
    retries: int
    pending: int
    pending_bytes: int
    in_flight: int
    dropped: Mapping[str, int]

    @property
    def dropped_total(self) -> int:
        """All items dropped, whatever the reason."""
        return sum(self.dropped.values())

    @property
    def balanced(self) -> bool:
        """True when the accounting identity holds (it always should)."""
        return self.submitted == (
            self.delivered + self.coalesced + self.pending + self.in_flight + self.dropped_total
        )


class _Entry:
    """One pending or in-flight write: the newest encoded version of one key."""

    __slots__ = ("completed", "created", "data", "key", "seq", "size")

    def __init__(
        self, key: _Key, data: bytes, size: int, completed: bool, seq: int, created: float
    ) -> None:
        self.key = key
        self.data = data
        self.size = size  # len(data), or an upper estimate for a drop report
        self.completed = completed
        self.seq = seq  # submission number of the first item merged into this entry
        self.created = created


class _RecentKeys:
    """The keys of the latest delivered completed writes: at least the last ``size`` of them.

    Two generations of plain sets, the older dropped whole when the newer fills: adding a key
    is one ``set.add``. (An OrderedDict trimmed to exactly ``size`` cost an insert and a
    ``popitem`` per delivered span, a measurable part of the dispatcher's time in a burst.)
    """

    __slots__ = ("_newer", "_older")

    def __init__(self) -> None:
        self._newer: set[_Key] = set()
        self._older: set[_Key] = set()

    def __contains__(self, key: _Key) -> bool:
        return key in self._newer or key in self._older

    def add_completed(self, entries: list[_Entry], size: int) -> None:
        """Remember the keys of the completed ones among ``entries``, ``size`` at least."""
        if not size:
            return
        newer = self._newer
        newer.update([entry.key for entry in entries if entry.completed])
        if len(newer) >= size:
            self._older, self._newer = newer, set()


OnDrop = Callable[[Sequence[DroppedSpan], str, BaseException | None], None]

# Every running queue, so a forked child can switch off the copies it inherited: their
# dispatcher task does not exist in the child, so accepting items there would lose them.
_running_queues: weakref.WeakSet[UpsertQueue] = weakref.WeakSet()


def _disable_inherited_queues() -> None:
    for queue in list(_running_queues):
        queue._running = False
    _running_queues.clear()


os.register_at_fork(after_in_child=_disable_inherited_queues)


class UpsertQueue:
    """Coalescing, bounded queue in front of ``client.spans.upsert_batch``.

    Use it as ``async with UpsertQueue(client) as queue:``; leaving the block drains what is
    pending within ``shutdown_timeout`` (shielded from an outer cancellation) and counts the
    rest as dropped with reason ``shutdown``.

    Settings (keyword-only):
      max_batch_size: items per request (API maximum 1000).
      max_batch_bytes: encoded bytes per request body.
      flush_interval: longest time an item waits for its batch to fill, in seconds.
      max_in_flight: requests sent concurrently: ``"adaptive"`` (the default: an
        `AdaptiveConcurrency` limit, 1 to 64, that grows while latency stays flat and
        backs off on rising latency, 429/503 and timeouts), a fixed int, or a limiter.
      max_pending, max_pending_bytes: the memory bound; past it starts are shed first.
      retry_deadline: how long a batch's transient failures are retried, from its first try.
      request_timeout: seconds for one request.
      shutdown_timeout: how long exit waits for the drain.
      on_drop: ``callback(items, reason, error)`` called for every drop.
      backoff: the retry delays (``Retry-After`` is honoured over it).
      remember_completed: how many delivered completed spans to remember at least (up to
        twice as many), so that a late start of one of them is absorbed instead of
        reopening it (about 0.3 KiB each).
    """

    def __init__(
        self,
        client: AsyncSGPClient,
        *,
        max_batch_size: int = 500,
        max_batch_bytes: int = 4 * 1024 * 1024,
        flush_interval: float = 0.2,
        max_in_flight: int | Literal["adaptive"] | Concurrency = "adaptive",
        max_pending: int = 100_000,
        max_pending_bytes: int = 128 * 1024 * 1024,
        retry_deadline: float = 120.0,
        request_timeout: float = 30.0,
        shutdown_timeout: float = 10.0,
        on_drop: OnDrop | None = None,
        backoff: Backoff | None = None,
        remember_completed: int = 10_000,
    ) -> None:
        if not 1 <= max_batch_size <= MAX_BATCH_ITEMS:
            raise ValueError(f"max_batch_size must be between 1 and {MAX_BATCH_ITEMS}")
        for name, value in (
            ("max_batch_bytes", max_batch_bytes),
            ("max_pending", max_pending),
            ("max_pending_bytes", max_pending_bytes),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1")
        if remember_completed < 0:
            raise ValueError("remember_completed must be >= 0")
        for name, seconds in (
            ("flush_interval", flush_interval),
            ("retry_deadline", retry_deadline),
            ("request_timeout", request_timeout),
            ("shutdown_timeout", shutdown_timeout),
        ):
            if not seconds >= 0 or math.isinf(seconds):
                raise ValueError(f"{name} must be a finite number >= 0")
        self._client = client
        self._redact = client.redact
        self.max_batch_size = max_batch_size
        self.max_batch_bytes = max_batch_bytes
        self.flush_interval = flush_interval
        self.max_in_flight = max_in_flight
        # Read before each batch is started, told about each request (see ``_concurrency``).
        self.concurrency: Concurrency = concurrency_from(max_in_flight)
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self.retry_deadline = retry_deadline
        self.request_timeout = request_timeout
        self.shutdown_timeout = shutdown_timeout
        self.on_drop = on_drop
        self.remember_completed = remember_completed
        self.backoff = backoff or Backoff(initial=0.1, maximum=2.0)

        # Submitted items not yet folded into ``_pending``, in submission order.
        self._intake: list[_Intake] = []
        self._intake_since = 0.0
        # Insertion-ordered: the first entry is the oldest, and has the lowest ``seq``.
        self._pending: dict[_Key, _Entry] = {}
        # Pending keys that are starts only: the ones to shed first when memory is full.
        self._pending_starts: OrderedDict[_Key, None] = OrderedDict()
        # Keys whose completed write was delivered (the last ``remember_completed`` at
        # least): late starts for them are absorbed, not sent.
        self._completed_keys = _RecentKeys()
        # Keys being written now -> the entry being written (one per key).
        self._in_flight: dict[_Key, _Entry] = {}
        # Each batch being written: its lowest ``seq`` (for the flush barrier) and entries.
        self._batches: dict[int, tuple[int, list[_Entry]]] = {}
        self._batch_ids = 0

        self._submitted = 0
        self._coalesced = 0
        self._delivered = 0
        self._requests = 0
        self._retries = 0
        self._pending_bytes = 0
        self._in_flight_items = 0
        self._dropped: dict[str, int] = {}

        self._running = False
        self._closing = False
        self._flush_target = 0
        self._task_group: TaskGroup | None = None  # runs the senders
        self._outer: TaskGroup | None = None  # runs the shielded worker, in the caller's task
        self._work_scope: anyio.CancelScope | None = None
        self._wake = anyio.Event()
        self._wake_armed = False
        self._idle = False  # the dispatcher waits with no deadline (nothing pending)
        self._saturated = False  # the dispatcher waits for a batch to finish
        self._progress = anyio.Event()
        self._room = anyio.Event()
        self._pid = os.getpid()
        self._warned: dict[str, float] = {}
        self._unwarned: dict[str, int] = {}
        self._loud_errors: set[str] = set()

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        if self._running or self._closing:
            raise RuntimeError("an UpsertQueue can be entered only once")
        self._pid = os.getpid()
        outer = anyio.create_task_group()
        await outer.__aenter__()
        self._outer = outer
        self._running = True
        _running_queues.add(self)
        self._wake = anyio.Event()
        try:
            await outer.start(self._work)
        except BaseException:
            self._running = False
            _running_queues.discard(self)
            outer.cancel_scope.cancel()
            await outer.__aexit__(None, None, None)
            raise
        return self

    async def _work(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The dispatcher and its senders, shielded: only ``__aexit__`` stops them.

        A cancellation of the caller's scope must not kill the senders mid-drain: exit
        still delivers what was submitted, within ``shutdown_timeout``.
        """
        with anyio.CancelScope(shield=True) as scope:
            self._work_scope = scope
            async with anyio.create_task_group() as senders:
                self._task_group = senders
                task_status.started()
                await self._dispatch()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        outer, work_scope = self._outer, self._work_scope
        assert outer is not None
        assert work_scope is not None
        self._running = False
        _running_queues.discard(self)
        self._closing = True
        with anyio.CancelScope(shield=True):
            # Drain within the deadline, even when the caller is being cancelled.
            with anyio.move_on_after(self.shutdown_timeout):
                self._flush_target = self._submitted
                self._wake.set()
                while self._intake or self._pending or self._in_flight_items:
                    await self._wait_progress()
        # Whatever is still in flight after the deadline is abandoned, not waited for.
        work_scope.cancel()
        try:
            await outer.__aexit__(None, None, None)
        finally:
            self._task_group = None
            self._drop_leftovers()
        return None

    def _drop_leftovers(self) -> None:
        self._absorb_intake()
        leftovers = list(self._pending.values())
        self._pending.clear()
        self._pending_starts.clear()
        self._pending_bytes = 0
        if leftovers:
            self._drop(leftovers, DropReason.SHUTDOWN, None, pending=True)
        if self._in_flight_items:
            # Cancelled mid-request: the senders could not settle these themselves.
            unsettled = [
                entry
                for _, entries in self._batches.values()
                for entry in entries
                if self._in_flight.get(entry.key) is entry
            ]
            self._settle(unsettled, DropReason.SHUTDOWN, None)
            if self._in_flight_items:  # pragma: no cover - every in-flight entry is in a batch
                self._count_drop(DropReason.SHUTDOWN, self._in_flight_items)
                self._in_flight_items = 0
            self._in_flight.clear()
        self._batches.clear()
        self._set_progress()

    # ------------------------------------------------------------------ producers

    def submit(self, item: SpanItem) -> None:
        """Queue one item for upsert. Synchronous, O(1), never blocks, never does I/O.

        Raises ``InvalidSpanError`` for an item the server would reject and
        ``QueueNotRunningError`` outside ``async with``. When memory is full the item (or
        a pending start) is dropped, counted and reported instead of blocking.
        """
        if not self._running:
            self._raise_not_running()
        self._enqueue(self._intake_record(item))

    def submit_prepared(
        self,
        trace_id: str,
        span_id: str,
        parent_id: str | None,
        name: str,
        start: datetime | int,
        end: datetime | int | None,
        status: str | None,
        type: str | None,
        content: Content | None,
    ) -> None:
        """``submit`` for a caller that checked the fields itself (``sgp_tracing`` does).

        The fields of a ``SpanItem`` without group, expected or application ids; ``content``
        is ``encode_content({"input": ..., "output": ..., "metadata": ...})`` of the set ones,
        encoded by the caller when the span event happened (the snapshot). A timestamp may
        be an int of nanoseconds since the epoch, UTC (``time.time_ns()``): it is formatted
        when the item is sent, to the microsecond. Nothing is
        validated here: that is the point (no ``SpanItem`` is built, nothing encoded twice).
        An item that turns out not to encode, or that the server refuses, is dropped and
        counted as ``rejected`` like any other.
        """
        if not self._running:
            self._raise_not_running()
        size = _ITEM_OVERHEAD + 4 * len(name) + len(span_id) + len(trace_id)
        if parent_id is not None:
            size += len(parent_id)
        if content is not None:
            size += len(content)
        self._enqueue((trace_id, span_id, end, size, content, name, parent_id, start, status, type))

    async def put(self, item: SpanItem) -> None:
        """Like ``submit``, but wait for room instead of shedding when memory is full."""
        if not self._running:
            self._raise_not_running()
        record = self._intake_record(item)
        while self._running and self._is_full(record[_SIZE]):
            if self._room.is_set():
                self._room = anyio.Event()
            await self._room.wait()
        if not self._running:
            self._raise_not_running()
        self._enqueue(record)

    @staticmethod
    def _intake_record(item: SpanItem) -> _Intake:
        """The item's intake record: its content snapshot and an upper estimate of its size."""
        if type(item) is not SpanItem and not isinstance(item, SpanItem):
            raise InvalidSpanError("item", f"expected a SpanItem, got {type(item).__name__}")
        # SpanItem validated itself when built; the snapshot checks that it encodes.
        content = snapshot_content(item)
        parent = item.parent_id
        size = (
            _ITEM_OVERHEAD
            + 4 * len(item.name)
            + len(item.id)
            + len(item.trace_id)
            + (len(parent) if parent is not None else 0)
            + (len(content) if content is not None else 0)
        )
        return item.trace_id, item.id, item.end_timestamp, size, content, item

    def _is_full(self, size: int) -> bool:
        pending = len(self._intake) + len(self._pending)
        return pending >= self.max_pending or (
            pending > 0 and self._pending_bytes + size > self.max_pending_bytes
        )

    def _enqueue(self, record: _Intake) -> None:
        # Runs for every item (twice per span): _is_full is inlined, each length is taken
        # once, and the wake-up conditions are looked at only past a threshold.
        intake = self._intake
        in_intake = len(intake)
        in_pending = len(self._pending)
        pending_bytes = self._pending_bytes + record[_SIZE]
        if in_intake + in_pending >= self.max_pending or (
            pending_bytes > self.max_pending_bytes and (in_intake or in_pending)
        ):
            self._submit_when_full(record)
            return
        if not in_intake:
            self._intake_since = time.monotonic()
            if self._idle:
                # The dispatcher sleeps without a deadline: start the flush_interval clock.
                self._idle = False
                self._wake.set()
        intake.append(record)
        self._submitted += 1
        self._pending_bytes = pending_bytes
        batch = self.max_batch_size
        if (
            # A batch's worth (see _is_due), or its bytes.
            (in_intake >= batch - 1 or in_pending >= batch or pending_bytes >= self.max_batch_bytes)
            and not self._wake_armed
            # A saturated dispatcher cannot send more: only a full intake is news then.
            and (in_intake >= batch - 1 or not self._saturated)
        ):
            self._wake_armed = True
            self._wake.set()

    def _absorb_intake(self) -> None:
        """Fold submitted items into the pending map, coalescing by key, then encode.

        Coalescing runs first, within the intake, so a start whose end arrived in the same
        intake is never encoded at all: only the surviving version of each key is.
        """
        intake = self._intake
        if not intake:
            return
        self._intake = []
        # Every entry made here takes the number of the intake's first item as its ``seq``:
        # never later than its own first item, so a flush barrier may wait for a few items
        # submitted after it (delivered in the same round), never too little. Exact numbers
        # cost a pass of Python per item; this fold is C-speed comprehensions plus one pass
        # over the survivors.
        seq = self._submitted - len(intake) + 1
        self._pending_bytes -= sum(map(_estimate_of, intake))
        # The later version of each key wins, in the order of first submission...
        latest = {(record[0], record[1]): record for record in intake}
        coalesced = len(intake) - len(latest)
        self._coalesced += coalesced
        # ...except that a completed version beats an in-progress one: a start that came
        # after its own end. Possible only when something merged, and looked for only when
        # a start survived (rare in a burst, where nearly every start met its end).
        last_ends: dict[_Key, _Intake] | None = None
        created = self._intake_since
        pending, in_flight, completed_keys = self._pending, self._in_flight, self._completed_keys
        starts, redact = self._pending_starts, self._redact
        added_bytes = 0
        for key, record in latest.items():
            completed = record[2] is not None
            if not completed and coalesced:
                if last_ends is None:
                    last_ends = {(r[0], r[1]): r for r in intake if r[2] is not None}
                end = last_ends.get(key)
                if end is not None:
                    record, completed = end, True
            if key in pending or (not completed and (key in in_flight or key in completed_keys)):
                self._add(key, record, seq, created)  # merges with what is known of it
                continue
            # A key seen for the first time (the usual case in a burst): _add's last step,
            # with _encode's call inlined.
            try:
                data = _encode_record(record, redact)
            except Exception as exc:
                self._encoding_failed(key, record, seq, exc)
                continue
            pending[key] = _Entry(key, data, len(data), completed, seq, created)
            added_bytes += len(data)
            if not completed:
                starts[key] = None
        self._pending_bytes += added_bytes
        # What merged away is settled: a flush may be waiting for exactly that.
        self._set_progress()

    def _add(
        self, key: _Key, record: _Intake, seq: int, created: float, data: bytes | None = None
    ) -> None:
        """Merge an absorbed item into the pending map (encoding it unless ``data`` is given).

        Pending entries count their exact encoded size in ``pending_bytes``.
        """
        completed = record[2] is not None
        entry = self._pending.get(key)
        if entry is not None:
            self._coalesced += 1
            if entry.completed and not completed:
                return  # a completed version beats this in-progress one
            if data is None:
                data = self._encode(key, record, seq)
            if data is None:
                self._coalesced -= 1  # counted as dropped instead
                return
            self._pending_bytes += len(data) - entry.size
            entry.data, entry.size = data, len(data)
            if completed and not entry.completed:
                entry.completed = True
                del self._pending_starts[key]
            return
        if not completed and (self._completed_in_flight(key) or key in self._completed_keys):
            # The completed write of this span is on its way or done: a late start adds
            # nothing, and sent after it would reopen the span on a last-write-wins store.
            self._coalesced += 1
            return
        if data is None:
            data = self._encode(key, record, seq)
        if data is None:
            return
        self._pending[key] = _Entry(key, data, len(data), completed, seq, created)
        self._pending_bytes += len(data)
        if not completed:
            self._pending_starts[key] = None

    def _encode(self, key: _Key, record: _Intake, seq: int) -> bytes | None:
        try:
            return _encode_record(record, self._redact)
        except Exception as exc:
            self._encoding_failed(key, record, seq, exc)
            return None

    def _encoding_failed(self, key: _Key, record: _Intake, seq: int, exc: Exception) -> None:
        # A SpanItem was validated at submit, so this is a bug, an exotic subclass or a bad
        # ``submit_prepared`` field: lose this item, counted and reported, never the
        # dispatcher.
        logger.error("could not encode a span item; it is dropped", exc_info=exc)
        shed = _Entry(key, b"{}", 0, record[2] is not None, seq, 0.0)
        self._drop([shed], DropReason.REJECTED, exc, pending=True)

    def _submit_when_full(self, record: _Intake) -> None:
        """The slow path of ``submit`` once memory looks full: coalesce, measure, then shed.

        The intake is folded in first (merging starts with their ends, and exact sizes
        replacing estimates), and the new item is encoded to know its real size. It is
        counted as submitted only once evictions are done, so every ``on_drop`` callback
        sees the accounting identity hold.
        """
        self._absorb_intake()
        key = (record[0], record[1])
        completed = record[2] is not None
        try:
            data: bytes | None = _encode_record(record, self._redact)
        except Exception:  # encoded again (and reported) by _add; see _encode
            data = None
        exact = record[_SIZE] if data is None else len(data)
        merges = key in self._pending or (
            not completed and (self._completed_in_flight(key) or key in self._completed_keys)
        )
        if merges or self._make_room(completed, exact):
            self._submitted += 1
            self._add(key, record, self._submitted, time.monotonic(), data)
            return
        self._submitted += 1
        reason = DropReason.QUEUE_FULL if completed else DropReason.SHED_START
        shed = _Entry(key, data or b"{}", exact, completed, self._submitted, 0.0)
        self._drop([shed], reason, None, pending=False)

    def _raise_not_running(self) -> None:
        if os.getpid() != self._pid:
            raise QueueNotRunningError(
                "this UpsertQueue belongs to another process (it was created before a fork); "
                "create a new client and queue in the child"
            )
        state = "closed" if self._closing else "not started"
        raise QueueNotRunningError(
            f"the UpsertQueue is {state}: submit inside `async with UpsertQueue(client)`"
        )

    def _make_room(self, completed: bool, size: int) -> bool:
        """Whether an item of ``size`` fits, evicting pending starts for a completed one.

        A new start never evicts anything: its end will carry everything it has.
        """
        if not self._is_full(size):
            return True
        if not completed:
            return False
        while self._pending_starts and (
            len(self._pending) >= self.max_pending
            or self._pending_bytes + size > self.max_pending_bytes
        ):
            key, _ = self._pending_starts.popitem(last=False)
            victim = self._pending.pop(key)
            self._pending_bytes -= victim.size
            self._drop([victim], DropReason.SHED_START, None, pending=True)
        return len(self._pending) < self.max_pending and (
            self._pending_bytes + size <= self.max_pending_bytes or not self._pending
        )

    # ------------------------------------------------------------------ flushing

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted before this call is delivered or dropped.

        Returns True when it is, False when ``timeout`` seconds ran out first.
        """
        target = self._submitted
        if target > self._flush_target:
            self._flush_target = target
        self._wake.set()
        with anyio.move_on_after(math.inf if timeout is None else timeout):
            while self._oldest_live_seq() <= target:
                if not self._running and self._task_group is None:
                    break
                await self._wait_progress()
        return self._oldest_live_seq() > target

    def _oldest_live_seq(self) -> float:
        # Pending entries are older than anything still in the intake.
        oldest: float = math.inf
        if self._intake:
            oldest = self._submitted - len(self._intake) + 1
        for entry in self._pending.values():
            oldest = entry.seq
            break
        for seq, _ in self._batches.values():
            oldest = min(oldest, seq)
        return oldest

    async def _wait_progress(self) -> None:
        if self._progress.is_set():
            self._progress = anyio.Event()
        await self._progress.wait()

    def _set_progress(self) -> None:
        self._progress.set()
        self._room.set()

    # ------------------------------------------------------------------ dispatching

    async def _dispatch(self) -> None:
        while True:
            if len(self._batches) >= self.concurrency.limit:
                if len(self._intake) >= self.max_batch_size:
                    # Folding a full intake in while every slot is busy (an outage) keeps
                    # merging starts with their ends: memory holds one write per span.
                    self._absorb_intake()
                await self._wait_wake(math.inf, saturated=True)  # a finished batch wakes us
                continue
            if not self._is_due():
                # The intake is folded in only when a batch is formed: meanwhile the ends of
                # the spans it holds keep arriving, so more starts merge with their end
                # before anything is encoded (folding in at every wake-up encoded both
                # halves of most spans in a burst: 5.5 us a span of folding and encoding,
                # measured, against 2.8 now).
                await self._wait_wake(self._time_until_due(), saturated=False)
                continue
            self._absorb_intake()
            batch, due = self._take_batch_if_due()
            if batch:
                self._start_batch(batch)
            elif due:
                # Everything pending waits on a key in flight: a finished batch unblocks it.
                await self._wait_wake(math.inf, saturated=True)
            else:
                # What was folded in merged down to less than a batch (a span's start and
                # end), or away (late starts of delivered spans).
                await self._wait_wake(self._time_until_due(), saturated=False)

    def _is_due(self) -> bool:
        """Whether a batch should be formed now, counting the intake not folded in yet."""
        intake, pending = self._intake, self._pending
        if not intake and not pending:
            return False
        if (
            self._closing
            # A batch's worth in the intake, or folded in already. Not their sum: a span's
            # start and end usually merge in the intake, so a fold at "pending + intake"
            # left pending short of a batch and the next fold came sooner, on a smaller
            # intake (500, 250, 125, ... records), each cutting more spans in two and
            # encoding both halves.
            or len(intake) >= self.max_batch_size
            or len(pending) >= self.max_batch_size
            or self._pending_bytes >= self.max_batch_bytes  # the intake's estimates included
        ):
            return True
        if pending:
            oldest = next(iter(pending.values()))
            oldest_seq, created = oldest.seq, oldest.created
        else:
            oldest_seq, created = self._submitted - len(intake) + 1, self._intake_since
        return oldest_seq <= self._flush_target or time.monotonic() - created >= self.flush_interval

    async def _wait_wake(self, delay: float, *, saturated: bool) -> None:
        self._wake_armed = False
        self._saturated = saturated
        # Idle: nothing pending, so the first submitted item must start the interval clock.
        self._idle = not saturated and delay == math.inf
        if self._wake.is_set():
            self._wake = anyio.Event()
        with anyio.move_on_after(delay):
            await self._wake.wait()
        self._idle = self._saturated = False

    def _time_until_due(self) -> float:
        if self._pending:
            created = next(iter(self._pending.values())).created
        elif self._intake:
            created = self._intake_since
        else:
            return math.inf
        return max(created + self.flush_interval - time.monotonic(), 0.0)

    def _take_batch_if_due(self) -> tuple[list[_Entry], bool]:
        """The next batch to send, if one is due, and whether one was due.

        Called with the intake folded in, so ``_is_due`` looks at the pending map alone.
        """
        if not self._is_due():
            return [], False
        batch: list[_Entry] = []
        size = _ENVELOPE_BYTES
        in_flight = self._in_flight
        max_bytes, max_items = self.max_batch_bytes, self.max_batch_size
        for key, entry in self._pending.items():
            if key in in_flight:
                continue  # one write per key in flight: this newer version waits
            entry_size = entry.size + 1  # and its comma
            if batch and size + entry_size > max_bytes:
                break
            batch.append(entry)
            size += entry_size
            if len(batch) >= max_items:
                break
        pending, starts = self._pending, self._pending_starts
        taken_bytes = 0
        for entry in batch:
            key = entry.key
            del pending[key]
            if not entry.completed:
                del starts[key]
            in_flight[key] = entry
            taken_bytes += entry.size
        self._pending_bytes -= taken_bytes
        self._in_flight_items += len(batch)
        if batch:
            self._room.set()
        return batch, True

    def _start_batch(self, batch: list[_Entry]) -> None:
        assert self._task_group is not None
        self._batch_ids += 1
        batch_id = self._batch_ids
        self._batches[batch_id] = (min(entry.seq for entry in batch), batch)
        self._task_group.start_soon(self._run_batch, batch_id, batch)

    async def _run_batch(self, batch_id: int, batch: list[_Entry]) -> None:
        settled = False
        try:
            await self._deliver(batch, time.monotonic() + self.retry_deadline)
            settled = True  # _deliver settles every entry on each of its returns
        except Exception as exc:
            # A bug here must never kill the dispatcher: account for the items and go on.
            logger.exception("unexpected error while sending a batch of %d spans", len(batch))
            unsettled = self._unsettled(batch)
            if unsettled:
                self._settle(unsettled, DropReason.ERROR, exc)
        finally:
            # Cancelled at the shutdown deadline: what this batch still holds is dropped
            # here, reported like any other drop.
            unsettled = [] if settled else self._unsettled(batch)
            if unsettled:
                self._settle(unsettled, DropReason.SHUTDOWN, None)
            del self._batches[batch_id]
            self._wake.set()
            self._set_progress()

    async def _deliver(self, batch: list[_Entry], deadline: float) -> None:
        """Send a batch until every entry in it is delivered or dropped."""
        body = encode_items_body([entry.data for entry in batch])
        attempt = 0
        while True:
            self._requests += 1
            in_flight, sent = len(self._batches), time.monotonic()
            try:
                await self._send(body)
            except SGPError as exc:
                self.concurrency.record(time.monotonic() - sent, exc, in_flight)
                status = exc.status_code if isinstance(exc, APIStatusError) else None
                if is_transient(exc) or (status is not None and status >= 500):
                    delay = self.backoff.delay(attempt, getattr(exc, "retry_after", None))
                    if time.monotonic() + delay > deadline:
                        self._settle(batch, DropReason.RETRIES_EXHAUSTED, exc)
                        return
                    self._retries += 1
                    attempt += 1
                    await anyio.sleep(delay)
                    continue
                if status is None:
                    # Not an HTTP failure (for example the client was closed): not retryable.
                    self._report_configuration_error(exc)
                    self._settle(batch, DropReason.ERROR, exc)
                    return
                if status in (401, 403, 404):
                    self._report_configuration_error(exc)
                    reason = DropReason.NOT_FOUND if status == 404 else DropReason.UNAUTHORIZED
                    self._settle(batch, reason, exc)
                    return
                if len(batch) == 1:
                    self._settle(batch, DropReason.REJECTED, exc)
                    return
                # 400, 409, 413, 422...: isolate the offenders, deliver the rest.
                await self._deliver_halves(batch, deadline)
                return
            self.concurrency.record(time.monotonic() - sent, None, in_flight)
            self._settle(batch, None, None)
            return

    async def _send(self, body: bytes) -> None:
        # httpx enforces the timeout on real sockets only; a custom or in-process transport,
        # or a server trickling bytes, would not end: bound the whole request here too.
        try:
            with anyio.fail_after(self.request_timeout):
                await self._client.send_once(
                    "PUT", _BATCH_PATH, content=body, timeout=self.request_timeout
                )
        except TimeoutError:
            raise APITimeoutError(
                f"PUT {_BATCH_PATH} took longer than request_timeout={self.request_timeout} s",
                method="PUT",
                url=self._client.base_url + _BATCH_PATH,
            ) from None

    async def _deliver_halves(self, batch: list[_Entry], deadline: float) -> None:
        middle = len(batch) // 2
        await self._deliver(batch[:middle], deadline)
        await self._deliver(batch[middle:], deadline)

    def _completed_in_flight(self, key: _Key) -> bool:
        entry = self._in_flight.get(key)
        return entry is not None and entry.completed

    def _unsettled(self, batch: list[_Entry]) -> list[_Entry]:
        # By identity, not by key: once a half of a bisected batch is settled, a newer
        # version of one of its keys may already be in flight in another batch.
        in_flight = self._in_flight
        return [entry for entry in batch if in_flight.get(entry.key) is entry]

    def _settle(
        self, entries: list[_Entry], reason: str | None, error: BaseException | None
    ) -> None:
        in_flight = self._in_flight
        self._in_flight_items -= len(entries)
        if reason is None:
            self._delivered += len(entries)
            for entry in entries:
                del in_flight[entry.key]
            self._completed_keys.add_completed(entries, self.remember_completed)
        else:
            for entry in entries:
                del in_flight[entry.key]
            self._drop(entries, reason, error, pending=False)

    # ------------------------------------------------------------------ drops

    def _count_drop(self, reason: str, count: int) -> None:
        self._dropped[reason] = self._dropped.get(reason, 0) + count

    def _drop(
        self, entries: list[_Entry], reason: str, error: BaseException | None, *, pending: bool
    ) -> None:
        self._count_drop(reason, len(entries))
        if pending:
            self._set_progress()
        self._warn(reason, len(entries), error)
        if self.on_drop is not None:
            dropped = [
                DroppedSpan(
                    trace_id=entry.key[0],
                    span_id=entry.key[1],
                    completed=entry.completed,
                    payload=entry.data,
                )
                for entry in entries
            ]
            try:
                self.on_drop(dropped, reason, error)
            except Exception:
                logger.exception("on_drop callback failed")

    def _warn(self, reason: str, count: int, error: BaseException | None) -> None:
        # At most one line per reason every 10 s, with the count since the last line.
        now = time.monotonic()
        self._unwarned[reason] = self._unwarned.get(reason, 0) + count
        if now - self._warned.get(reason, -math.inf) < 10.0:
            return
        self._warned[reason] = now
        total = self._unwarned.pop(reason)
        logger.warning(
            "UpsertQueue dropped %d span write(s) (reason: %s)%s",
            total,
            reason,
            f": {error}" if error is not None else "",
        )

    def _report_configuration_error(self, exc: SGPError) -> None:
        # Loud, but once per kind of failure: these do not fix themselves.
        kind = str(exc.status_code) if isinstance(exc, APIStatusError) else type(exc).__name__
        if kind not in self._loud_errors:
            self._loud_errors.add(kind)
            logger.error(
                "SGP span upload failed and will not be retried (%s): check the API key, the "
                "account id, the base URL and the client's lifecycle; affected spans are dropped",
                exc,
            )

    # ------------------------------------------------------------------ stats

    @property
    def stats(self) -> QueueStats:
        """A snapshot of the counters (the accounting identity holds in every snapshot)."""
        return QueueStats(
            submitted=self._submitted,
            coalesced=self._coalesced,
            delivered=self._delivered,
            requests=self._requests,
            retries=self._retries,
            pending=len(self._intake) + len(self._pending),
            pending_bytes=self._pending_bytes,
            in_flight=self._in_flight_items,
            dropped=MappingProxyType(dict(self._dropped)),
        )

    @property
    def running(self) -> bool:
        """True inside ``async with`` (``submit`` is accepted)."""
        return self._running
