"""A local SGP-compatible server for tests, demos and benchmarks (needs the ``server`` extra).

- `create_app(...)`: the Starlette ASGI app (spans endpoints + ``/_admin``), its state in
  SQLite with the upsert rule of SGP's tracing service (``store="tracing"``) or of its legacy
  store (``store="legacy"``); `get_control(app)` gives the `ServerControl` (faults, stats,
  store, reset, close).
- `asgi_transport(app)`: serve the app in-process to an ``httpx.AsyncClient``, with
  connection drops surfacing as ``httpx.RemoteProtocolError``.
- `ServerProcess`: the same server in a subprocess over loopback, as a sync context manager.
- ``python -m sgp_client.testing serve``: the CLI.
"""

from __future__ import annotations

from ._app import (
    DEFAULT_ACCOUNT_ID,
    DEFAULT_API_KEY,
    DEFAULT_MAX_BODY_BYTES,
    ServerControl,
    create_app,
    get_control,
)
from ._faults import Faults
from ._process import ServerProcess, ServerProcessError
from ._spans import MAX_BATCH_ITEMS
from ._store import SpanStore, StoreKind
from ._transport import asgi_transport

__all__ = [
    "DEFAULT_ACCOUNT_ID",
    "DEFAULT_API_KEY",
    "DEFAULT_MAX_BODY_BYTES",
    "Faults",
    "MAX_BATCH_ITEMS",
    "ServerControl",
    "ServerProcess",
    "ServerProcessError",
    "SpanStore",
    "StoreKind",
    "asgi_transport",
    "create_app",
    "get_control",
]
