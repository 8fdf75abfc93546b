"""Shared fixtures: the local SGP server in-process and in a subprocess, and clients of it.

- ``app`` / ``control``: a fresh in-process server app (``create_app``) and its control
  object (faults, stats, store).
- ``client``: an ``AsyncSGPClient`` talking to ``app`` through ``asgi_transport``, with a
  fast backoff so retry tests stay quick.
- ``server_process`` (session) / ``server`` (per test, reset first): the same server over
  loopback HTTP in a child process.
- ``temporal_server`` (session): Temporal's dev server in a child process (Temporal tests).

Plain helpers (constants, span builders, client factories) are in ``tests/_helpers.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import pytest
from starlette.applications import Starlette

from sgp_client import AsyncSGPClient
from sgp_client.testing import (
    ServerControl,
    ServerProcess,
    create_app,
    get_control,
)

# Re-exported: the brief names ``tests.conftest.FAST_BACKOFF``; new code imports ``tests._helpers``.
from tests._helpers import FAST_BACKOFF as FAST_BACKOFF
from tests._helpers import in_process_client

if TYPE_CHECKING:
    from demo.devserver import TemporalDevServer


@pytest.fixture
def app() -> Iterator[Starlette]:
    """A fresh in-process server with an in-memory store and the default key/account
    (its store closed after the test)."""
    app = create_app()
    yield app
    get_control(app).close()


@pytest.fixture
def control(app: Starlette) -> ServerControl:
    """Faults, counters and store of ``app``."""
    return get_control(app)


@pytest.fixture
async def client(app: Starlette) -> AsyncIterator[AsyncSGPClient]:
    """A client of ``app`` (in-process), closed after the test."""
    async with in_process_client(app) as sgp:
        yield sgp


@pytest.fixture(scope="session")
def server_process() -> Iterator[ServerProcess]:
    """One server subprocess on 127.0.0.1 for the whole session (prefer ``server``)."""
    with ServerProcess() as process:
        yield process


@pytest.fixture
def server(server_process: ServerProcess) -> ServerProcess:
    """The session's server subprocess, with spans, counters and faults reset for this test."""
    if not server_process.running:  # a test killed it: bring it back for the next ones
        server_process.start()
    server_process.reset()
    return server_process


@pytest.fixture(params=["prepared", "submit_only"])
def sink_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with ``RecordingSink`` taking the processor's fast path
    (``submit_record``, as ``UpsertQueue`` does) and with a submit-only sink."""
    from sgp_tracing.testing import RecordingSink

    monkeypatch.setattr(RecordingSink, "PREPARED_DEFAULT", request.param == "prepared")
    return str(request.param)


@pytest.fixture(scope="session")
def temporal_server() -> Iterator[TemporalDevServer]:
    """Temporal's dev server (``temporal server start-dev``, in memory) on free loopback
    ports for the whole session, stopped by its PID at the end."""
    from demo.devserver import TemporalDevServer

    with TemporalDevServer() as dev:
        yield dev
