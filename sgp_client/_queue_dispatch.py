"""The upsert queue's dispatcher: when a batch is due, who sends it, and what a failure means.

One task (``run``) sleeps until a batch is due (a full batch, its bytes, the oldest item's
``flush_interval``, or a flush barrier), folds the intake, takes a batch from the pending map
and starts a sender for it, while fewer than the in-flight limit are running. A sender
classifies each failure of its batch (``_classify``): retry with backoff until the deadline
of its oldest item (``retry_deadline`` from when it was queued), split or bisect to isolate
the items the server refuses, or drop with a reason.
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Final

import anyio
from anyio.abc import TaskGroup

from ._classify import Action, Verdict, classify
from ._concurrency import Concurrency, concurrency_from
from ._constants import BATCH_PATH
from ._exceptions import APITimeoutError, SGPError
from ._queue_config import QueueConfig
from ._queue_drops import DropReason, DropReporter
from ._queue_pending import Entry, PendingMap
from ._serialization import encode_items_body

if TYPE_CHECKING:
    from ._client import AsyncSGPClient

__all__ = ["Dispatcher"]

logger = logging.getLogger("sgp_client.queue")
#: The shortest wait before looking again for keys that nothing blocks, while everything
#: pending waits on a key in flight (so a flush_interval of 0 does not spin).
_RECHECK: Final = 0.01


class Dispatcher:
    """Forms batches from a ``PendingMap`` and sends them with a client."""

    def __init__(
        self,
        client: AsyncSGPClient,
        config: QueueConfig,
        pending: PendingMap,
        reporter: DropReporter,
    ) -> None:
        self._client = client
        self._config = config
        self._pending = pending
        self._reporter = reporter
        #: Read before each batch is started, told about each request (``_concurrency``).
        self.concurrency: Concurrency = concurrency_from(config.max_in_flight)
        self.requests = 0
        self.retries = 0
        #: Items submitted up to this number are due now (a flush barrier, or the exit).
        self.flush_target = 0
        #: Set by the queue's exit: everything pending is due.
        self.closing = False
        self._wake = anyio.Event()
        self._wake_armed = False
        self._idle = False  # waiting with no deadline (nothing pending)
        self._saturated = False  # waiting for a batch to finish

    # ------------------------------------------------------------------ waking

    def wake(self) -> None:
        """Look again now (a flush barrier, an awaited write, the exit)."""
        self._wake.set()

    def on_submit(self) -> None:
        """Called when a submitted item is news (``PendingMap.enqueue``): wake the
        dispatcher if it sleeps without a deadline, or if that made a batch due."""
        if self._idle:
            # The dispatcher sleeps without a deadline: start the flush_interval clock.
            self._idle = False
            self._wake.set()
        pending, config = self._pending, self._config
        batch = config.max_batch_size
        full_intake = len(pending.intake) >= batch
        if (
            # A batch's worth (see _is_due), or its bytes.
            (
                full_intake
                or len(pending.pending) >= batch
                or pending.pending_bytes >= config.max_batch_bytes
            )
            and not self._wake_armed
            # A saturated dispatcher cannot send more: only a full intake is news then.
            and (full_intake or not self._saturated)
        ):
            self._wake_armed = True
            self._wake.set()

    # ------------------------------------------------------------------ the loop

    def _may_send_another(self) -> bool:
        """Whether one more request may go out now: the one place the in-flight limit is
        decided."""
        return len(self._pending.batches) < self.concurrency.limit

    async def run(self, senders: TaskGroup) -> None:
        """Dispatch until cancelled; senders run in ``senders``."""
        pending = self._pending
        while True:
            if not self._may_send_another():
                if len(pending.intake) >= self._config.max_batch_size:
                    # Folding a full intake in while every slot is busy (an outage) keeps
                    # merging starts with their ends: memory holds one write per span.
                    pending.fold(self._client.redact)
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
            # Redaction is read from the client now, when the items are encoded.
            pending.fold(self._client.redact)
            if not self._is_due():
                # What was folded in merged down to less than a batch (a span's start and
                # end), or away (late starts of delivered spans).
                await self._wait_wake(self._time_until_due(), saturated=False)
                continue
            taken = pending.take_batch()
            if taken is None:
                # Everything pending waits on a key in flight: a finished batch unblocks it.
                # Meanwhile new keys may arrive that nothing blocks: look again every
                # flush_interval (not saturated, so a batch's worth wakes us sooner), or they
                # would wait for that batch, up to its whole retry_deadline in an outage.
                await self._wait_wake(max(self._config.flush_interval, _RECHECK), saturated=False)
                continue
            senders.start_soon(self._run_batch, *taken)

    def _is_due(self) -> bool:
        """Whether a batch should be formed now, counting the intake not folded in yet."""
        pending, config = self._pending, self._config
        oldest = pending.oldest()
        if oldest is None:
            return False
        batch = config.max_batch_size
        if (
            self.closing
            # A batch's worth in the intake, or folded in already. Not their sum: a span's
            # start and end usually merge in the intake, so a fold at "pending + intake"
            # left pending short of a batch and the next fold came sooner, on a smaller
            # intake (500, 250, 125, ... records), each cutting more spans in two and
            # encoding both halves.
            or len(pending.intake) >= batch
            or len(pending.pending) >= batch
            or pending.pending_bytes >= config.max_batch_bytes  # the intake's estimates included
        ):
            return True
        oldest_seq, created = oldest
        return (
            oldest_seq <= self.flush_target or time.monotonic() - created >= config.flush_interval
        )

    def _time_until_due(self) -> float:
        oldest = self._pending.oldest()
        if oldest is None:
            return math.inf
        return max(oldest[1] + self._config.flush_interval - time.monotonic(), 0.0)

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

    # ------------------------------------------------------------------ sending

    async def _run_batch(self, batch_id: int, batch: list[Entry]) -> None:
        pending = self._pending
        settled = False
        try:
            # A per-item deadline, from when the batch's oldest item was queued: time spent
            # waiting for a free slot (an outage) counts, so no write outlives it by more
            # than one request (what sgp_tracing.temporal's activity timeout relies on).
            queued = min(entry.created for entry in batch)
            await self._deliver(batch, queued + self._config.retry_deadline)
            settled = True  # _deliver settles every entry on each of its returns
        except Exception as exc:
            # A bug here must never kill the dispatcher: account for the items and go on.
            logger.exception("unexpected error while sending a batch of %d spans", len(batch))
            unsettled = pending.unsettled(batch)
            if unsettled:
                pending.settle(unsettled, DropReason.ERROR, exc)
        finally:
            # Cancelled at the shutdown deadline: what this batch still holds is dropped
            # here, reported like any other drop.
            unsettled = [] if settled else pending.unsettled(batch)
            if unsettled:
                pending.settle(unsettled, DropReason.SHUTDOWN, None)
            pending.finish_batch(batch_id)
            self._wake.set()

    def _classify(self, exc: SGPError) -> Verdict:
        """What a failed request of a batch means, by the rules shared with direct calls
        (``_classify.classify``); a failure no item causes is reported loudly once."""
        verdict = classify(exc)
        if verdict.action is Action.DROP:
            # No item causes these (a key, a URL, a proxy): one loud line, no bisection.
            self._reporter.configuration_error(exc)
        return verdict

    async def _deliver(self, batch: list[Entry], deadline: float) -> None:
        """Send a batch until every entry in it is delivered or dropped."""
        pending = self._pending
        body = encode_items_body([entry.data for entry in batch])
        attempt = 0
        while True:
            self.requests += 1
            in_flight, sent = len(self._pending.batches), time.monotonic()
            try:
                await self._send(body)
            except SGPError as exc:
                self.concurrency.record(time.monotonic() - sent, exc, in_flight)
                verdict = self._classify(exc)
                if verdict.action is Action.RETRY:
                    delay = self._config.backoff.delay(attempt, getattr(exc, "retry_after", None))
                    if time.monotonic() + delay > deadline:
                        pending.settle(batch, DropReason.RETRIES_EXHAUSTED, exc)
                        return
                    self.retries += 1
                    attempt += 1
                    await anyio.sleep(delay)
                    continue
                # SPLIT (413) or BISECT (400, 409, 422): halves until the offenders are alone.
                if verdict.action in (Action.SPLIT, Action.BISECT) and len(batch) > 1:
                    middle = len(batch) // 2
                    await self._deliver(batch[:middle], deadline)
                    await self._deliver(batch[middle:], deadline)
                    return
                reason = verdict.reason if verdict.action is Action.DROP else DropReason.REJECTED
                pending.settle(batch, reason or DropReason.ERROR, exc)
                return
            self.concurrency.record(time.monotonic() - sent, None, in_flight)
            pending.settle(batch, None, None)
            return

    async def _send(self, body: bytes) -> None:
        # httpx enforces the timeout on real sockets only; a custom or in-process transport,
        # or a server trickling bytes, would not end: bound the whole request here too.
        timeout = self._config.request_timeout
        try:
            with anyio.fail_after(timeout):
                # The echoed spans are not needed: a 2xx is a delivery, whatever its body.
                await self._client.send_once(
                    "PUT", BATCH_PATH, content=body, timeout=timeout, need_body=False
                )
        except TimeoutError:
            raise APITimeoutError(
                f"PUT {BATCH_PATH} took longer than request_timeout={timeout} s",
                method="PUT",
                url=self._client.base_url + BATCH_PATH,
            ) from None
