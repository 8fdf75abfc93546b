"""CLI of the local SGP server: ``python -m sgp_client.testing serve [options]``.

Serves `create_app` with uvicorn on loopback and prints exactly one line once listening::

    SGP local server listening on http://127.0.0.1:PORT/public

(`--port 0` picks a free port; the line carries the real one, which `ServerProcess` reads.)
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from collections.abc import Sequence
from typing import Any, cast

from ._app import (
    ABORT_SCOPE_KEY,
    DEFAULT_ACCOUNT_ID,
    DEFAULT_MAX_BODY_BYTES,
    ConnectionDropped,
    create_app,
)
from ._store import STORE_KINDS

__all__ = ["main"]

LISTENING_PREFIX = "SGP local server listening on "


def _parse_api_key(value: str) -> tuple[str, str]:
    key, sep, account = value.partition(":")
    if not key:
        raise argparse.ArgumentTypeError("an API key must not be empty")
    return key, account if sep and account else DEFAULT_ACCOUNT_ID


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sgp_client.testing")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the local SGP-compatible API")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=5003, help="port; 0 picks a free one")
    serve.add_argument("--prefix", default="/public", help="API path prefix (default /public)")
    serve.add_argument("--db", default=":memory:", help="SQLite file, or :memory: (default)")
    serve.add_argument(
        "--store",
        choices=STORE_KINDS,
        default="tracing",
        help="upsert rule: SGP's tracing service (default) or its legacy store (id alone, "
        "last write wins)",
    )
    serve.add_argument(
        "--api-key",
        action="append",
        type=_parse_api_key,
        default=[],
        metavar="KEY[:ACCOUNT]",
        help="accepted API key and its account (repeatable; default: the dev key)",
    )
    serve.add_argument(
        "--no-mask-credentials",
        dest="mask_credentials",
        action="store_false",
        help="store credential-shaped values as sent (the real API masks them)",
    )
    serve.add_argument(
        "--max-body-bytes",
        type=int,
        default=DEFAULT_MAX_BODY_BYTES,
        help=f"largest request body read, else 413 (default {DEFAULT_MAX_BODY_BYTES})",
    )
    serve.add_argument("--log-level", default="warning", help="uvicorn log level (warning)")
    return parser


class _HideInjectedDrops(logging.Filter):
    """Injected connection drops are the point of the fault, not server errors worth a trace."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], ConnectionDropped))


def _serve(args: argparse.Namespace) -> None:
    # uvicorn is imported here only: the library modules never depend on it.
    import uvicorn
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class _AbortableProtocol(HttpToolsProtocol):
        """Exposes `transport.abort` to the app so a "drop" fault really drops the socket."""

        def on_message_begin(self) -> None:
            super().on_message_begin()
            cast(dict[str, Any], self.scope)[ABORT_SCOPE_KEY] = self.transport.abort

    api_keys = dict(args.api_key) if args.api_key else None
    app = create_app(
        db=args.db,
        store=args.store,
        api_keys=api_keys,
        prefix=args.prefix,
        mask_credentials=args.mask_credentials,
        max_body_bytes=args.max_body_bytes,
    )
    prefix = app.state.sgp.prefix

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # A restarted server must get its old port back while old connections sit in TIME_WAIT.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(2048)
    sock.set_inheritable(True)
    host, port = sock.getsockname()[:2]

    class _Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:
                sys.stdout.write(f"{LISTENING_PREFIX}http://{host}:{port}{prefix}\n")
                sys.stdout.flush()

    config = uvicorn.Config(
        app,
        log_level=args.log_level,
        access_log=False,
        http=_AbortableProtocol,
        loop="uvloop",
        lifespan="off",
        # Hung requests ("hang" fault) must not keep a stopping server alive.
        timeout_graceful_shutdown=1,
    )
    logging.getLogger("uvicorn.error").addFilter(_HideInjectedDrops())
    server = _Server(config)
    try:
        server.run(sockets=[sock])
    finally:
        app.state.sgp.close()


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        _serve(args)


if __name__ == "__main__":
    main()
