"""A hypothesis state machine driving ``UpsertQueue`` against the in-process SGP server.

Rules submit starts and ends for a few keys with random payloads, switch 503 faults on and
off, slip in items the server rejects, and flush. After every step the accounting identity
holds; at teardown (faults off, final flush) the server's state for each key is the model's:
a completed version beats an in-progress one, otherwise the last submitted wins.

The machine is synchronous, so the queue runs in an anyio blocking portal (an event loop in
a thread, on asyncio or trio) for the whole example, and each rule calls into it.
"""

from __future__ import annotations

from contextlib import ExitStack
from datetime import timedelta
from typing import Any

import anyio.from_thread
import attrs
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from sgp_client import DropReason, QueueStats, SpanItem, UpsertQueue
from sgp_client.testing import (
    ServerControl,
    create_app,
    get_control,
)
from tests._helpers import FAST_BACKOFF, START, in_process_client, span_item

KEYS = [("trace-a", "s1"), ("trace-a", "s2"), ("trace-a", "s3"), ("trace-b", "s1")]

# No NUL: the server would store it as U+FFFD (tested elsewhere), not what the model says.
text = st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"]), max_size=8)
payloads = st.dictionaries(
    text,
    st.one_of(st.integers(-1000, 1000), text, st.booleans(), st.none()),
    max_size=3,
)


@attrs.define
class Expected:
    completed: bool
    version: int
    payload: dict[str, Any]


def make_machine(backend: str) -> type[RuleBasedStateMachine]:
    class QueueMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.stack = ExitStack()
            self.portal = self.stack.enter_context(anyio.from_thread.start_blocking_portal(backend))
            self.app = create_app()
            self.control: ServerControl = get_control(self.app)
            client = in_process_client(
                self.app,
                max_retries=0,
                # The model compares payloads byte for byte; redaction has its own tests.
                redact=None,
            )
            self.stack.enter_context(self.portal.wrap_async_context_manager(client))
            self.queue = UpsertQueue(
                client,
                flush_interval=0.002,
                max_batch_size=3,
                max_in_flight=2,
                backoff=FAST_BACKOFF,
                retry_deadline=30.0,
                shutdown_timeout=10.0,
            )
            self.stack.enter_context(self.portal.wrap_async_context_manager(self.queue))
            self.model: dict[tuple[str, str], Expected] = {}
            self.version = 0
            self.rejected = 0
            self.faulty = False

        def _stats(self) -> QueueStats:
            stats: QueueStats = self.portal.call(lambda: self.queue.stats)
            return stats

        def _submit(self, item: SpanItem) -> None:
            self.portal.call(self.queue.submit, item)

        def _item(self, key: tuple[str, str], *, end: bool, payload: dict[str, Any]) -> SpanItem:
            self.version += 1
            return span_item(
                f"span-{key[1]}",
                trace_id=key[0],
                id=key[1],
                end_timestamp=START + timedelta(seconds=self.version) if end else None,
                input=payload,
                metadata={"version": self.version},
            )

        @rule(key=st.sampled_from(KEYS), payload=payloads)
        def submit_start(self, key: tuple[str, str], payload: dict[str, Any]) -> None:
            self._submit(self._item(key, end=False, payload=payload))
            known = self.model.get(key)
            if known is None or not known.completed:
                self.model[key] = Expected(False, self.version, payload)

        @rule(key=st.sampled_from(KEYS), payload=payloads)
        def submit_end(self, key: tuple[str, str], payload: dict[str, Any]) -> None:
            self._submit(self._item(key, end=True, payload=payload))
            self.model[key] = Expected(True, self.version, payload)

        @rule()
        def submit_rejected(self) -> None:
            # Its own parent: the server answers 409 for any batch holding it.
            self.rejected += 1
            key = f"bad-{self.rejected}"
            self._submit(
                SpanItem(
                    name="bad", trace_id="trace-a", id=key, parent_id=key, start_timestamp=START
                )
            )

        @rule(on=st.booleans())
        def toggle_503(self, on: bool) -> None:
            if on:
                self.portal.call(
                    lambda: self.control.set_faults(
                        status_code=503, status_every_n=2, retry_after="0"
                    )
                )
            else:
                self.portal.call(self.control.clear_faults)
            self.faulty = on

        @rule()
        def flush(self) -> None:
            assert self.portal.call(self.queue.flush, 10.0)
            stats = self._stats()
            assert stats.pending == stats.in_flight == 0

        @precondition(lambda self: self.rejected > 0)
        @rule()
        def rejected_are_counted_after_a_flush(self) -> None:
            assert self.portal.call(self.queue.flush, 10.0)
            assert self._stats().dropped.get(DropReason.REJECTED, 0) == self.rejected

        @invariant()
        def identity_holds(self) -> None:
            stats = self._stats()
            assert stats.balanced, stats
            # Nothing but the rejected items is ever lost.
            assert set(stats.dropped) <= {DropReason.REJECTED}, stats.dropped

        def teardown(self) -> None:
            try:
                self.portal.call(self.control.clear_faults)
                assert self.portal.call(self.queue.flush, 10.0)
                stats = self._stats()
                assert stats.balanced, stats
                assert dict(stats.dropped) == (
                    {DropReason.REJECTED: self.rejected} if self.rejected else {}
                )
                stored = {
                    (s["trace_id"], s["id"]): s
                    for s in self.portal.call(self.control.store.all_spans)
                }
                # The rejected are never stored; every modelled key is.
                assert set(stored) == set(self.model)
                for key, expected in self.model.items():
                    span = stored[key]
                    assert (span["end_timestamp"] is not None) == expected.completed, key
                    assert span["metadata"] == {"version": expected.version}, key
                    assert span["input"] == expected.payload, key
            finally:
                self.stack.close()

    return QueueMachine


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_queue_state_machine(backend: str) -> None:
    run_state_machine_as_test(
        make_machine(backend),
        settings=settings(
            max_examples=50,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
