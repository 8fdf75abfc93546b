"""The upsert queue's pending map: what is waiting to be sent and what is being sent.

Synchronous and free of I/O (no anyio here), so every rule of coalescing and of the memory
bound can be tested on its own:

- **intake**: ``enqueue`` only appends a record to a list (the producer's path stays cheap);
- **fold**: ``fold`` merges the intake into the map keyed by (``trace_id``, ``id``): a
  completed version beats an in-progress one, otherwise the later one wins; only the
  surviving version of each key is encoded;
- **shed**: when memory is full, a new start is shed first, a new end evicts a pending start;
- **take a batch**: ``take_batch`` moves entries to in-flight, at most one write per key;
- **settle**: ``settle`` counts a sent batch's entries delivered or dropped;
- **counters**: ``submitted == delivered + coalesced + pending + in_flight + sum(dropped)``.

An awaited write (``UpsertQueue.upsert``) brings a ``Waiter``: it rides with the entry its
record ends up in and is settled with that entry's fate.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable

from ._queue_config import QueueConfig
from ._queue_drops import DropReason, DropReporter
from ._record import SpanRecord
from ._redact import Redactor
from ._serialization import encode_record

__all__ = ["Entry", "Key", "PendingMap", "Waiter"]

logger = logging.getLogger("sgp_client.queue")

Key = tuple[str, str]
# Room in a request body for the ``{"items":[...]}`` envelope.
ENVELOPE_BYTES = 12


class Waiter:
    """The outcome of one awaited write, filled in when the entry carrying it is settled."""

    __slots__ = ("_on_settled", "error", "reason", "settled")

    def __init__(self, on_settled: Callable[[], None]) -> None:
        self._on_settled = on_settled
        self.settled = False
        #: None when delivered (or merged into a delivered write), else the ``DropReason``.
        self.reason: str | None = None
        self.error: BaseException | None = None

    def settle(self, reason: str | None, error: BaseException | None) -> None:
        if self.settled:
            return
        self.settled, self.reason, self.error = True, reason, error
        self._on_settled()


def _settle_all(
    waiters: list[Waiter] | None, reason: str | None, error: BaseException | None
) -> None:
    if waiters:
        for waiter in waiters:
            waiter.settle(reason, error)


class Entry:
    """One pending or in-flight write: the newest encoded version of one key."""

    __slots__ = ("completed", "created", "data", "key", "seq", "size", "waiters")

    def __init__(
        self,
        key: Key,
        data: bytes,
        size: int,
        completed: bool,
        seq: int,
        created: float,
        waiters: list[Waiter] | None = None,
    ) -> None:
        self.key = key
        self.data = data
        self.size = size  # len(data), or the estimate for a drop report
        self.completed = completed
        self.seq = seq  # submission number of the first item merged into this entry
        self.created = created
        self.waiters = waiters  # awaited writes that this entry carries


class _RecentKeys:
    """The keys of the latest delivered completed writes: at least the last ``size`` of them.

    Two generations of plain sets, the older dropped whole when the newer fills: adding a key
    is one ``set.add``. (An OrderedDict trimmed to exactly ``size`` cost an insert and a
    ``popitem`` per delivered span, a measurable part of the dispatcher's time in a burst.)
    """

    __slots__ = ("_newer", "_older")

    def __init__(self) -> None:
        self._newer: set[Key] = set()
        self._older: set[Key] = set()

    def __contains__(self, key: Key) -> bool:
        return key in self._newer or key in self._older

    def add_completed(self, entries: list[Entry], size: int) -> None:
        """Remember the keys of the completed ones among ``entries``, ``size`` at least."""
        if not size:
            return
        newer = self._newer
        newer.update([entry.key for entry in entries if entry.completed])
        if len(newer) >= size:
            self._older, self._newer = newer, set()


class PendingMap:
    """Intake, pending map, in-flight writes and the counters of one queue."""

    def __init__(
        self, config: QueueConfig, reporter: DropReporter, on_progress: Callable[[], None]
    ) -> None:
        self._config = config
        self._reporter = reporter
        #: Called when items were settled or room was made (flush barriers, ``put``).
        self._on_progress = on_progress
        # Submitted records not yet folded into ``pending``, in submission order, and the
        # sum of their size estimates.
        self.intake: list[SpanRecord] = []
        self._intake_estimates = 0
        self.intake_since = 0.0
        # The waiters of records still in the intake, by key.
        self._intake_waiters: dict[Key, list[Waiter]] = {}
        # Insertion-ordered: the first entry is the oldest, and has the lowest ``seq``.
        self.pending: dict[Key, Entry] = {}
        # Pending keys that are starts only: the ones to shed first when memory is full.
        self._pending_starts: OrderedDict[Key, None] = OrderedDict()
        # Keys whose completed write was delivered (the last ``remember_completed`` at
        # least): late starts for them are absorbed, not sent.
        self._completed_keys = _RecentKeys()
        # Keys being written now -> the entry being written (one per key).
        self.in_flight: dict[Key, Entry] = {}
        # Each batch being written: its lowest ``seq`` (for the flush barrier) and entries.
        self.batches: dict[int, tuple[int, list[Entry]]] = {}
        self._batch_ids = 0

        self.submitted = 0
        self.coalesced = 0
        self.delivered = 0
        #: Exact encoded bytes of pending entries plus the estimates of the intake.
        self.pending_bytes = 0
        self.in_flight_items = 0
        self.dropped: dict[str, int] = {}

    # ------------------------------------------------------------------ intake

    def __len__(self) -> int:
        """Items waiting to be sent (intake and pending map)."""
        return len(self.intake) + len(self.pending)

    def is_full(self, size: int) -> bool:
        """Whether one more item of ``size`` bytes would exceed the memory bound."""
        waiting = len(self.intake) + len(self.pending)
        config = self._config
        return waiting >= config.max_pending or (
            waiting > 0 and self.pending_bytes + size > config.max_pending_bytes
        )

    def enqueue(
        self, record: SpanRecord, size: int, redact: Redactor | None, waiter: Waiter | None
    ) -> bool:
        """Take one record (``size``: an estimate of its encoded size, ``estimate_size``).

        Appends to the intake; once memory looks full, folds, measures and sheds instead.
        Returns True when this record is news for the dispatcher: it started the intake (the
        ``flush_interval`` clock starts), or it made the intake reach a batch's worth of items,
        or the pending bytes reach a batch's worth. Only the record that makes a condition
        true is news: once told, the dispatcher folds the intake whenever it runs, and a
        saturated one is woken by its finished batch. (Asking the dispatcher after every
        record cost 0.1 us a record, measured: 5% of the hot-path row; asking it after every
        record past a batch's worth, as this did before, cost 6-8% of the hot-path rows.)
        """
        if self.is_full(size):
            self._enqueue_when_full(record, size, redact, waiter)
            return False
        intake = self.intake
        if not intake:
            self.intake_since = time.monotonic()
        intake.append(record)
        self.submitted += 1
        self._intake_estimates += size
        bytes_before = self.pending_bytes
        self.pending_bytes = bytes_before + size
        if waiter is not None:
            self._intake_waiters.setdefault((record.trace_id, record.id), []).append(waiter)
        config = self._config
        items = len(intake)
        return (
            items == 1
            or items == config.max_batch_size
            or bytes_before < config.max_batch_bytes <= bytes_before + size
        )

    def _enqueue_when_full(
        self, record: SpanRecord, size: int, redact: Redactor | None, waiter: Waiter | None
    ) -> None:
        """The slow path once memory looks full: coalesce, measure, then shed.

        The intake is folded in first (merging starts with their ends, and exact sizes
        replacing estimates), and the new record is encoded to know its real size. It is
        counted as submitted only once evictions are done, so every ``on_drop`` callback
        sees the accounting identity hold.
        """
        self.fold(redact)
        key = (record.trace_id, record.id)
        completed = record.end is not None
        waiters = None if waiter is None else [waiter]
        try:
            data: bytes | None = encode_record(record, redact)
        except Exception:  # encoded again (and reported) by _add; see _encode
            data = None
        exact = size if data is None else len(data)
        merges = key in self.pending or (
            not completed and (self._completed_in_flight(key) or key in self._completed_keys)
        )
        if merges or self._make_room(completed, exact):
            self.submitted += 1
            self._add(key, record, self.submitted, time.monotonic(), redact, waiters, data)
            return
        self.submitted += 1
        reason = DropReason.QUEUE_FULL if completed else DropReason.SHED_START
        shed = Entry(key, data or b"{}", exact, completed, self.submitted, 0.0, waiters)
        self._drop([shed], reason, None)

    def _make_room(self, completed: bool, size: int) -> bool:
        """Whether an item of ``size`` fits, evicting pending starts for a completed one.

        A new start never evicts anything: its end will carry everything it has.
        """
        if not self.is_full(size):
            return True
        if not completed:
            return False
        config = self._config
        while self._pending_starts and (
            len(self.pending) >= config.max_pending
            or self.pending_bytes + size > config.max_pending_bytes
        ):
            key, _ = self._pending_starts.popitem(last=False)
            victim = self.pending.pop(key)
            self.pending_bytes -= victim.size
            self._drop([victim], DropReason.SHED_START, None)
            self._on_progress()
        return len(self.pending) < config.max_pending and (
            self.pending_bytes + size <= config.max_pending_bytes or not self.pending
        )

    # ------------------------------------------------------------------ fold

    def fold(self, redact: Redactor | None) -> None:
        """Fold the intake into the pending map, coalescing by key, then encode.

        Coalescing runs first, within the intake, so a start whose end arrived in the same
        intake is never encoded at all: only the surviving version of each key is.
        """
        intake = self.intake
        if not intake:
            return
        self.intake = []
        waiting = self._intake_waiters
        self._intake_waiters = {}
        # Every entry made here takes the number of the intake's first item as its ``seq``:
        # never later than its own first item, so a flush barrier may wait for a few items
        # submitted after it (delivered in the same round), never too little. Exact numbers
        # cost a pass of Python per item; this fold is C-speed comprehensions plus one pass
        # over the survivors.
        seq = self.submitted - len(intake) + 1
        self.pending_bytes -= self._intake_estimates
        self._intake_estimates = 0
        # The later version of each key wins, in the order of first submission...
        latest = {(record.trace_id, record.id): record for record in intake}
        coalesced = len(intake) - len(latest)
        self.coalesced += coalesced
        # ...except that a completed version beats an in-progress one: a start that came
        # after its own end. Possible only when something merged, and looked for only when
        # a start survived (rare in a burst, where nearly every start met its end).
        last_ends: dict[Key, SpanRecord] | None = None
        created = self.intake_since
        pending, in_flight, completed_keys = self.pending, self.in_flight, self._completed_keys
        starts = self._pending_starts
        added_bytes = 0
        for key, record in latest.items():
            completed = record.end is not None
            if not completed and coalesced:
                if last_ends is None:
                    last_ends = {(r.trace_id, r.id): r for r in intake if r.end is not None}
                end = last_ends.get(key)
                if end is not None:
                    record, completed = end, True
            waiters = waiting.pop(key, None) if waiting else None
            if key in pending or (not completed and (key in in_flight or key in completed_keys)):
                self._add(key, record, seq, created, redact, waiters)  # merges with what is known
                continue
            # A key seen for the first time (the usual case in a burst): _add's last step.
            try:
                data = encode_record(record, redact)
            except Exception as exc:
                self._encoding_failed(key, record, seq, exc, waiters)
                continue
            pending[key] = Entry(key, data, len(data), completed, seq, created, waiters)
            added_bytes += len(data)
            if not completed:
                starts[key] = None
        self.pending_bytes += added_bytes
        # What merged away is settled: a flush may be waiting for exactly that.
        self._on_progress()

    def _add(
        self,
        key: Key,
        record: SpanRecord,
        seq: int,
        created: float,
        redact: Redactor | None,
        waiters: list[Waiter] | None,
        data: bytes | None = None,
    ) -> None:
        """Merge a folded record into the pending map (encoding it unless ``data`` is given).

        Pending entries count their exact encoded size in ``pending_bytes``.
        """
        completed = record.end is not None
        entry = self.pending.get(key)
        if entry is not None:
            self.coalesced += 1
            if entry.completed and not completed:
                _join_waiters(entry, waiters)  # a completed version beats this one
                return
            if data is None:
                data = self._encode(key, record, seq, redact, waiters)
            if data is None:
                self.coalesced -= 1  # counted as dropped instead
                return
            self.pending_bytes += len(data) - entry.size
            entry.data, entry.size = data, len(data)
            _join_waiters(entry, waiters)
            if completed and not entry.completed:
                entry.completed = True
                del self._pending_starts[key]
            return
        if not completed:
            flying = self.in_flight.get(key)
            if (flying is not None and flying.completed) or key in self._completed_keys:
                # The completed write of this span is on its way or done: a late start adds
                # nothing, and sent after it would reopen the span on a last-write-wins store.
                self.coalesced += 1
                if flying is not None and flying.completed:
                    _join_waiters(flying, waiters)
                else:
                    _settle_all(waiters, None, None)
                return
        if data is None:
            data = self._encode(key, record, seq, redact, waiters)
        if data is None:
            return
        self.pending[key] = Entry(key, data, len(data), completed, seq, created, waiters)
        self.pending_bytes += len(data)
        if not completed:
            self._pending_starts[key] = None

    def _encode(
        self,
        key: Key,
        record: SpanRecord,
        seq: int,
        redact: Redactor | None,
        waiters: list[Waiter] | None,
    ) -> bytes | None:
        try:
            return encode_record(record, redact)
        except Exception as exc:
            self._encoding_failed(key, record, seq, exc, waiters)
            return None

    def _encoding_failed(
        self,
        key: Key,
        record: SpanRecord,
        seq: int,
        exc: Exception,
        waiters: list[Waiter] | None,
    ) -> None:
        # A SpanItem was validated at submit, so this is a bug, an exotic subclass or a bad
        # field of a record built by hand: lose this item, counted and reported, never the
        # dispatcher.
        logger.error("could not encode a span item; it is dropped", exc_info=exc)
        shed = Entry(key, b"{}", 0, record.end is not None, seq, 0.0, waiters)
        self._drop([shed], DropReason.REJECTED, exc)
        self._on_progress()

    def _completed_in_flight(self, key: Key) -> bool:
        entry = self.in_flight.get(key)
        return entry is not None and entry.completed

    # ------------------------------------------------------------------ batches

    def oldest(self) -> tuple[int, float] | None:
        """The ``seq`` and creation time of the oldest item waiting, if any."""
        for entry in self.pending.values():
            return entry.seq, entry.created
        if self.intake:
            return self.submitted - len(self.intake) + 1, self.intake_since
        return None

    def oldest_live_seq(self) -> float:
        """The lowest ``seq`` not settled yet (intake, pending or in flight), or infinity."""
        # Pending entries are older than anything still in the intake.
        oldest: float = float("inf")
        if self.intake:
            oldest = self.submitted - len(self.intake) + 1
        for entry in self.pending.values():
            oldest = entry.seq
            break
        for seq, _ in self.batches.values():
            oldest = min(oldest, seq)
        return oldest

    def take_batch(self) -> tuple[int, list[Entry]] | None:
        """Move the next batch from pending to in flight: its id and entries, or None.

        Oldest first, skipping keys already in flight (one write per key in flight: a newer
        version waits), within ``max_batch_size`` items and ``max_batch_bytes``.
        """
        batch: list[Entry] = []
        size = ENVELOPE_BYTES
        in_flight = self.in_flight
        max_bytes, max_items = self._config.max_batch_bytes, self._config.max_batch_size
        for key, entry in self.pending.items():
            if key in in_flight:
                continue
            entry_size = entry.size + 1  # and its comma
            if batch and size + entry_size > max_bytes:
                break
            batch.append(entry)
            size += entry_size
            if len(batch) >= max_items:
                break
        if not batch:
            return None
        pending, starts = self.pending, self._pending_starts
        taken_bytes = 0
        for entry in batch:
            key = entry.key
            del pending[key]
            if not entry.completed:
                del starts[key]
            in_flight[key] = entry
            taken_bytes += entry.size
        self.pending_bytes -= taken_bytes
        self.in_flight_items += len(batch)
        self._batch_ids += 1
        self.batches[self._batch_ids] = (min(entry.seq for entry in batch), batch)
        self._on_progress()  # room was made
        return self._batch_ids, batch

    def unsettled(self, entries: list[Entry]) -> list[Entry]:
        """The ones among ``entries`` still in flight."""
        # By identity, not by key: once a half of a bisected batch is settled, a newer
        # version of one of its keys may already be in flight in another batch.
        in_flight = self.in_flight
        return [entry for entry in entries if in_flight.get(entry.key) is entry]

    def settle(self, entries: list[Entry], reason: str | None, error: BaseException | None) -> None:
        """Count in-flight ``entries`` delivered (``reason`` None) or dropped for ``reason``."""
        in_flight = self.in_flight
        self.in_flight_items -= len(entries)
        for entry in entries:
            del in_flight[entry.key]
        if reason is None:
            self.delivered += len(entries)
            self._completed_keys.add_completed(entries, self._config.remember_completed)
            for entry in entries:
                _settle_all(entry.waiters, None, None)
        else:
            self._drop(entries, reason, error)

    def finish_batch(self, batch_id: int) -> None:
        """Forget a batch whose entries are all settled."""
        del self.batches[batch_id]
        self._on_progress()

    def drop_leftovers(self, redact: Redactor | None) -> None:
        """Count everything not delivered as dropped (``shutdown``): the queue is closed."""
        self.fold(redact)
        leftovers = list(self.pending.values())
        self.pending.clear()
        self._pending_starts.clear()
        self.pending_bytes = 0
        if leftovers:
            self._drop(leftovers, DropReason.SHUTDOWN, None)
        if self.in_flight_items:
            # Cancelled mid-request: the senders could not settle these themselves.
            unsettled = [
                entry
                for _, entries in self.batches.values()
                for entry in entries
                if self.in_flight.get(entry.key) is entry
            ]
            self.settle(unsettled, DropReason.SHUTDOWN, None)
            if self.in_flight_items:  # pragma: no cover - every in-flight entry is in a batch
                self.dropped[DropReason.SHUTDOWN] = (
                    self.dropped.get(DropReason.SHUTDOWN, 0) + self.in_flight_items
                )
                self.in_flight_items = 0
            self.in_flight.clear()
        self.batches.clear()
        self._on_progress()

    # ------------------------------------------------------------------ drops

    def _drop(self, entries: list[Entry], reason: str, error: BaseException | None) -> None:
        # Counted first, so the identity holds inside the report's ``on_drop`` callback.
        self.dropped[reason] = self.dropped.get(reason, 0) + len(entries)
        for entry in entries:
            _settle_all(entry.waiters, reason, error)
        self._reporter.report(entries, reason, error)


def _join_waiters(entry: Entry, waiters: list[Waiter] | None) -> None:
    if waiters:
        if entry.waiters is None:
            entry.waiters = waiters
        else:
            entry.waiters.extend(waiters)
