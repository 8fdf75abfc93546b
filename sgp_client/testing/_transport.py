"""In-process HTTP to the app: `asgi_transport`, an httpx transport that fails like a network.

`httpx.ASGITransport` would hand the app's "drop connection" fault to the caller as the
app's own exception; a client under test must see what a real socket gives it instead, a
`httpx.RemoteProtocolError`. A "hang" fault needs nothing special: the app never answers,
so the request waits until the caller cancels it.
"""

from __future__ import annotations

import httpx
from starlette.types import ASGIApp

from ._app import ConnectionDropped

__all__ = ["asgi_transport"]


class _NetworkLikeASGITransport(httpx.AsyncBaseTransport):
    def __init__(self, app: ASGIApp) -> None:
        self._inner = httpx.ASGITransport(app=app)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await self._inner.handle_async_request(request)
        except ConnectionDropped as exc:
            raise httpx.RemoteProtocolError(
                "Server disconnected without sending a response.", request=request
            ) from exc

    async def aclose(self) -> None:
        await self._inner.aclose()


def asgi_transport(app: ASGIApp) -> httpx.AsyncBaseTransport:
    """An httpx transport serving `app` in-process, with network-like connection failures.

    Use ``httpx.AsyncClient(transport=asgi_transport(app), base_url="http://sgp.local/public")``.
    """
    return _NetworkLikeASGITransport(app)
