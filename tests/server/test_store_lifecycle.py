"""The local server's SQLite connection is always closed: on app shutdown, when the store is
replaced, and when a store nobody closed is garbage-collected (Python 3.13 turns every
unclosed connection into a ResourceWarning, an error under this suite's filterwarnings)."""

from __future__ import annotations

import gc
import sqlite3
from typing import Any

import anyio
import pytest
from starlette.types import Message

from sgp_client.testing import SpanStore, create_app, get_control


def assert_closed(connection: sqlite3.Connection) -> None:
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        connection.execute("SELECT 1")


@pytest.mark.anyio
async def test_app_shutdown_closes_the_store() -> None:
    """The ASGI lifespan as a server (uvicorn, hypercorn) drives it."""
    app = create_app()
    control = get_control(app)
    to_app, app_inbox = anyio.create_memory_object_stream[Message](2)
    from_app, outbox = anyio.create_memory_object_stream[Message](2)

    async def send(message: Message) -> None:
        await from_app.send(message)

    scope: dict[str, Any] = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    async with anyio.create_task_group() as tg, to_app, app_inbox, from_app, outbox:
        tg.start_soon(app, scope, app_inbox.receive, send)
        await to_app.send({"type": "lifespan.startup"})
        assert (await outbox.receive())["type"] == "lifespan.startup.complete"
        assert not control.store.closed
        await to_app.send({"type": "lifespan.shutdown"})
        assert (await outbox.receive())["type"] == "lifespan.shutdown.complete"
    assert control.store.closed
    assert_closed(control.store._db)


def test_replacing_the_store_closes_the_old_one() -> None:
    control = get_control(create_app())
    old = control.store
    new = SpanStore(kind="legacy")
    control.store = new
    assert old.closed
    assert not new.closed
    control.store = new  # the same store again: still open
    assert not new.closed
    control.close()
    assert new.closed


def test_reset_keeps_the_store_open() -> None:
    control = get_control(create_app())
    control.reset()
    assert not control.store.closed
    assert control.store.count() == 0
    control.close()
    control.close()  # idempotent
    assert control.store.closed


def test_a_dropped_store_closes_its_connection() -> None:
    store = SpanStore()
    connection = store._db
    connection.execute("SELECT 1")
    del store
    gc.collect()
    assert_closed(connection)


def test_a_dropped_app_closes_its_connection() -> None:
    app = create_app()
    connection = get_control(app).store._db
    del app
    gc.collect()  # the app and its control refer to each other: a cycle
    assert_closed(connection)
