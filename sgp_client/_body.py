"""Reading an answer's body within ``ResponseLimits``: streamed, counted, decoded in bounded steps.

httpx's own decoders inflate a whole received chunk at once (a 2 KB ``gzip, gzip`` body
becomes GiBs in one call), so bodies are read raw (``response.stream``) and decoded here, each
step asked for at most the room left under the limit. Codings: ``gzip``, ``deflate`` (zlib
wrapped or raw, as httpx accepts) and ``identity``; the client asks for no others
(``accept-encoding: gzip, deflate``). An empty body is empty whatever its coding says.
"""

from __future__ import annotations

import zlib
from typing import Final

import httpx

from ._config import ResponseLimits
from ._exceptions import ResponseDecodingError, ResponseTooLargeError

__all__ = ["ACCEPT_ENCODING", "read_body"]

#: What the client asks for: the codings decoded here.
ACCEPT_ENCODING: Final = "gzip, deflate"
_GZIP: Final = frozenset({"gzip", "x-gzip"})
_PASS: Final = frozenset({"identity", ""})


class _Inflater:
    """One coding's decompressor, never producing more than it is allowed to."""

    def __init__(self, coding: str) -> None:
        self.coding = coding
        self._raw_fallback = coding == "deflate"
        wbits = 16 + zlib.MAX_WBITS if coding in _GZIP else zlib.MAX_WBITS
        self._zlib = zlib.decompressobj(wbits)

    def feed(self, data: bytes, room: int) -> bytes:
        """Decode ``data``; at most ``room + 1`` bytes come out (one more says "too large")."""
        try:
            out = self._zlib.decompress(data, room + 1)
        except zlib.error:
            if not self._raw_fallback:
                raise
            # Some servers send raw deflate without the zlib wrapper (httpx allows it): known
            # at the first bytes, so start again on them.
            self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
            out = self._zlib.decompress(data, room + 1)
        self._raw_fallback = False
        return out

    def finished(self) -> bool:
        return self._zlib.eof


async def read_body(
    response: httpx.Response, limits: ResponseLimits, method: str, url: str
) -> bytes:
    """The decoded body of a streamed ``response``; the caller closes the response.

    Raises ``ResponseTooLargeError`` past a limit (nothing more is read) and
    ``ResponseDecodingError`` for a corrupt, truncated or unknown coding.
    """
    if response.is_stream_consumed:
        # Built whole in-process (``httpx.MockTransport``): httpx decoded it already.
        if len(response.content) > limits.max_decoded_bytes:
            raise _too_large("decoded body", limits.max_decoded_bytes, method, url)
        return response.content
    header = ",".join(response.headers.get_list("content-encoding"))
    codings = [coding.strip().lower() for coding in header.split(",")] if header else []
    unknown = [c for c in codings if c not in _GZIP and c not in _PASS and c != "deflate"]
    if unknown:
        # Quoted with repr and cut: it comes from the server.
        raise ResponseDecodingError(
            f"{method} {url}: unknown content coding {unknown[0][:40]!r}", method=method, url=url
        )
    # Decoded in the reverse order they were applied.
    inflaters = [_Inflater(c) for c in reversed(codings) if c not in _PASS]
    produced = [0] * len(inflaters)
    parts: list[bytes] = []
    received = 0
    # The raw stream, iterated by hand and closed in all cases: httpx's ``aiter_raw`` is an
    # async generator over another one, and leaving it at a limit leaves both unfinished
    # (trio warns when they are collected).
    stream = response.stream
    if not isinstance(stream, httpx.AsyncByteStream):
        raise TypeError("an async client's response has an async stream")
    chunks = stream.__aiter__()
    try:
        async for chunk in chunks:
            received += len(chunk)
            if received > limits.max_body_bytes:
                raise _too_large("body", limits.max_body_bytes, method, url)
            for index, inflater in enumerate(inflaters):
                try:
                    chunk = inflater.feed(chunk, limits.max_decoded_bytes - produced[index])
                except zlib.error:
                    raise _undecodable(inflater.coding, method, url) from None
                produced[index] += len(chunk)
                if produced[index] > limits.max_decoded_bytes:
                    raise _too_large("decoded body", limits.max_decoded_bytes, method, url)
            parts.append(chunk)
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
    if received and not all(inflater.finished() for inflater in inflaters):
        raise _undecodable(header, method, url, truncated=True)
    return b"".join(parts)


def _too_large(what: str, limit: int, method: str, url: str) -> ResponseTooLargeError:
    return ResponseTooLargeError(
        f"{method} {url}: the answer's {what} is over {limit} bytes (ResponseLimits); "
        "the connection was closed",
        limit=limit,
        method=method,
        url=url,
    )


def _undecodable(
    coding: str, method: str, url: str, *, truncated: bool = False
) -> ResponseDecodingError:
    state = "truncated" if truncated else "corrupt"
    return ResponseDecodingError(
        f"{method} {url}: could not decode the {coding[:40]!r} body ({state})",
        method=method,
        url=url,
    )
