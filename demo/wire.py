"""JSON lines over a loopback TCP stream: how the coordinator and its workers talk.

A TCP connection (not stdin/stdout) because anyio streams it the same way on asyncio and trio.
"""

from __future__ import annotations

from typing import Any

import orjson
from anyio.abc import ByteStream
from anyio.streams.buffered import BufferedByteReceiveStream

__all__ = ["JsonLines"]

_MAX_LINE = 16 * 1024 * 1024


class JsonLines:
    """Send and receive one JSON object per line."""

    def __init__(self, stream: ByteStream) -> None:
        self._stream = stream
        self._reader = BufferedByteReceiveStream(stream)

    async def send(self, message: dict[str, Any]) -> None:
        await self._stream.send(orjson.dumps(message) + b"\n")

    async def receive(self) -> dict[str, Any]:
        line = await self._reader.receive_until(b"\n", _MAX_LINE)
        message = orjson.loads(line)
        if not isinstance(message, dict):
            raise TypeError(f"expected a JSON object, got {type(message).__name__}")
        return message

    async def aclose(self) -> None:
        await self._stream.aclose()
