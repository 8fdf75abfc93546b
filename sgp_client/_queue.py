"""``UpsertQueue``: the coalescing, bounded, fault-tolerant ``upsert_batch`` queue.

This module is the facade and the lifecycle; the work is done by three parts:

- ``_queue_pending.PendingMap``: intake, coalescing, memory bound, batches, counters
  (synchronous, no I/O);
- ``_queue_dispatch.Dispatcher``: when a batch is due, the senders, retry/split/bisect;
- ``_queue_drops.DropReporter``: log lines and the ``on_drop`` callback.

Producers call ``submit(item)`` or ``submit_record(record)`` (synchronous, O(1), no I/O), or
``await upsert(item)`` to wait until that write is delivered. Every item is accounted for:
``submitted == delivered + coalesced + pending + in_flight + sum(dropped)``.
"""

from __future__ import annotations

import math
import os
import weakref
from collections.abc import Mapping
from types import MappingProxyType, TracebackType
from typing import Final, Literal, NoReturn, Self

import anyio
import attrs
from anyio.abc import TaskGroup, TaskStatus

from ._client import AsyncSGPClient
from ._concurrency import Concurrency
from ._exceptions import QueueNotRunningError
from ._models import SpanItem
from ._queue_config import QueueConfig
from ._queue_dispatch import Dispatcher
from ._queue_drops import DroppedSpan, DropReason, DropReporter, OnDrop, SpanDroppedError
from ._queue_pending import PendingMap, Waiter
from ._record import SpanRecord, estimate_size, record_of
from ._retry import Backoff

__all__ = [
    "DropReason",
    "DroppedSpan",
    "QueueConfig",
    "QueueStats",
    "SpanDroppedError",
    "UpsertQueue",
]


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

    Settings (keyword-only; kept in ``queue.config``, a frozen ``QueueConfig``):
      max_batch_size: items per request (API maximum 1000).
      max_batch_bytes: encoded bytes per request body.
      flush_interval: longest time an item waits for its batch to fill, in seconds.
      max_in_flight: requests sent concurrently: ``"adaptive"`` (the default: an
        ``AdaptiveConcurrency`` limit, 1 to 64 starting at 8, that grows while latency stays
        flat and backs off on rising latency, 429/503 and timeouts), a fixed int, or a
        limiter object.
      max_pending, max_pending_bytes: the memory bound; past it starts are shed first.
      retry_deadline: how long an item's transient failures are retried, from when it was
        queued (its batch's oldest item): a write never outlives it by more than one request.
      request_timeout: seconds for one request.
      shutdown_timeout: how long exit waits for the drain.
      on_drop: ``callback(items, reason, error)`` called for every drop.
      backoff: the retry delays (``Retry-After`` is honoured over it).
      remember_completed: how many delivered completed spans to remember at least (up to
        twice as many), so that a late start of one of them is absorbed instead of
        reopening it (about 0.3 KiB each).

    Redaction is the client's ``redact``, read whenever items are encoded.
    """

    #: Tells ``sgp_tracing`` that this sink takes ``SpanRecord``s (``submit_record``).
    takes_records: Final = True

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
        config = QueueConfig(
            max_batch_size=max_batch_size,
            max_batch_bytes=max_batch_bytes,
            flush_interval=flush_interval,
            max_in_flight=max_in_flight,
            max_pending=max_pending,
            max_pending_bytes=max_pending_bytes,
            retry_deadline=retry_deadline,
            request_timeout=request_timeout,
            shutdown_timeout=shutdown_timeout,
            remember_completed=remember_completed,
            **({} if backoff is None else {"backoff": backoff}),
        )
        self._client = client
        #: The settings, validated and frozen.
        self.config = config
        self._reporter = DropReporter(on_drop)
        self._pending = PendingMap(config, self._reporter, self._set_progress)
        self._dispatcher = Dispatcher(client, config, self._pending, self._reporter)

        self._running = False
        self._closing = False
        self._senders: TaskGroup | None = None  # runs the senders
        self._outer: TaskGroup | None = None  # runs the shielded worker, in the caller's task
        self._work_scope: anyio.CancelScope | None = None
        self._progress = anyio.Event()
        self._room = anyio.Event()
        self._pid = os.getpid()

    @property
    def on_drop(self) -> OnDrop | None:
        """``callback(items, reason, error)`` called for every drop (may be replaced)."""
        return self._reporter.on_drop

    @on_drop.setter
    def on_drop(self, callback: OnDrop | None) -> None:
        self._reporter.on_drop = callback

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
                self._senders = senders
                task_status.started()
                await self._dispatcher.run(senders)

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
        pending, dispatcher = self._pending, self._dispatcher
        with anyio.CancelScope(shield=True):
            # Drain within the deadline, even when the caller is being cancelled.
            with anyio.move_on_after(self.config.shutdown_timeout):
                dispatcher.closing = True
                dispatcher.flush_target = pending.submitted
                dispatcher.wake()
                while len(pending) or pending.in_flight_items:
                    await self._wait_progress()
        # Whatever is still in flight after the deadline is abandoned, not waited for.
        work_scope.cancel()
        try:
            await outer.__aexit__(None, None, None)
        finally:
            self._senders = None
            pending.drop_leftovers(self._client.redact)
        return None

    # ------------------------------------------------------------------ producers

    def submit(self, item: SpanItem) -> None:
        """Queue one item for upsert. Synchronous, O(1), never blocks, never does I/O.

        Raises ``InvalidSpanError`` for an item the server would reject and
        ``QueueNotRunningError`` outside ``async with``. When memory is full the item (or
        a pending start) is dropped, counted and reported instead of blocking.
        """
        if not self._running:
            self._raise_not_running()
        self.submit_record(record_of(item))

    def submit_record(self, record: SpanRecord) -> None:
        """``submit`` for a ``SpanRecord`` (``sgp_client.plain_record`` or ``record_of``).

        A record from ``plain_record`` was checked when built; one built by hand is not: a
        record that turns out not to encode, or that the server refuses, is dropped and
        counted as ``rejected`` like any other.
        """
        if not self._running:
            self._raise_not_running()
        # plain_record and record_of fill in the size estimate; a record built by hand may not.
        size = record.size or estimate_size(record)
        if self._pending.enqueue(record, size, self._client.redact, None):
            self._dispatcher.on_submit()

    async def upsert(self, item: SpanItem) -> None:
        """Submit ``item`` and wait until that write is delivered.

        Delivered also means merged into a write that was delivered (its own end, a newer
        version), or absorbed as the late start of a span whose completed write was already
        delivered. The dispatcher is woken at once; every write awaited meanwhile by other
        tasks rides in the same request (group commit), so a busy worker still sends few
        requests.

        Raises ``SpanDroppedError`` (``reason``: the ``DropReason``; the underlying error as
        ``__cause__``) when the write is dropped instead: queue full, rejected by the server,
        retries exhausted, shutdown... ``InvalidSpanError`` and ``QueueNotRunningError`` as
        ``submit``. If the awaiting task is cancelled, the write stays queued: it is still
        delivered or counted as dropped, like any submitted item.

        Safe to await from any task of the process that owns the queue; a write awaited here
        is on the server when this returns, so the span may then leave the process (a
        Temporal activity result, ``span.to_dict()``) without a later write of this process
        overtaking another process's.
        """
        if not self._running:
            self._raise_not_running()
        await self.upsert_record(record_of(item))

    async def upsert_record(self, record: SpanRecord) -> None:
        """``upsert`` for a ``SpanRecord`` (see ``submit_record``)."""
        if not self._running:
            self._raise_not_running()
        delivered = anyio.Event()
        waiter = Waiter(delivered.set)
        pending, dispatcher = self._pending, self._dispatcher
        pending.enqueue(record, record.size or estimate_size(record), self._client.redact, waiter)
        # Due now: this write and everything submitted before it (a flush barrier).
        dispatcher.flush_target = max(dispatcher.flush_target, pending.submitted)
        dispatcher.wake()
        # A cancellation ends the wait, not the write: the waiter stays with its entry.
        await delivered.wait()
        if waiter.reason is not None:
            raise SpanDroppedError(waiter.reason, record.trace_id, record.id) from waiter.error

    async def put(self, item: SpanItem) -> None:
        """Like ``submit``, but wait for room instead of shedding when memory is full."""
        if not self._running:
            self._raise_not_running()
        record = record_of(item)
        size = record.size
        while self._running and self._pending.is_full(size):
            if self._room.is_set():
                self._room = anyio.Event()
            await self._room.wait()
        if not self._running:
            self._raise_not_running()
        if self._pending.enqueue(record, size, self._client.redact, None):
            self._dispatcher.on_submit()

    def _raise_not_running(self) -> NoReturn:
        if os.getpid() != self._pid:
            raise QueueNotRunningError(
                "this UpsertQueue belongs to another process (it was created before a fork); "
                "create a new client and queue in the child"
            )
        state = "closed" if self._closing else "not started"
        raise QueueNotRunningError(
            f"the UpsertQueue is {state}: submit inside `async with UpsertQueue(client)`"
        )

    # ------------------------------------------------------------------ flushing

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted before this call is delivered or dropped.

        Returns True when it is, False when ``timeout`` seconds ran out first.
        """
        pending, dispatcher = self._pending, self._dispatcher
        target = pending.submitted
        if target > dispatcher.flush_target:
            dispatcher.flush_target = target
        dispatcher.wake()
        with anyio.move_on_after(math.inf if timeout is None else timeout):
            while pending.oldest_live_seq() <= target:
                if not self._running and self._senders is None:
                    break
                await self._wait_progress()
        return pending.oldest_live_seq() > target

    async def _wait_progress(self) -> None:
        if self._progress.is_set():
            self._progress = anyio.Event()
        await self._progress.wait()

    def _set_progress(self) -> None:
        self._progress.set()
        self._room.set()

    # ------------------------------------------------------------------ stats

    @property
    def concurrency(self) -> Concurrency:
        """The in-flight limiter (its ``limit`` is the number of requests allowed now)."""
        return self._dispatcher.concurrency

    @property
    def stats(self) -> QueueStats:
        """A snapshot of the counters (the accounting identity holds in every snapshot)."""
        pending, dispatcher = self._pending, self._dispatcher
        return QueueStats(
            submitted=pending.submitted,
            coalesced=pending.coalesced,
            delivered=pending.delivered,
            requests=dispatcher.requests,
            retries=dispatcher.retries,
            pending=len(pending),
            pending_bytes=pending.pending_bytes,
            in_flight=pending.in_flight_items,
            dropped=MappingProxyType(dict(pending.dropped)),
        )

    @property
    def running(self) -> bool:
        """True inside ``async with`` (``submit`` is accepted)."""
        return self._running
