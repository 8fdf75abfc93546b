"""The queue against a hostile server (issue 13): what each defect did to the accounting.

Before: a batch answered 422 was counted delivered (a forged answer left in the TLS layer),
301/308/405/407/410 were bisected down to single items (999 requests for 500 items), a 503
with an odd header or coding was dropped as ``error`` after one request, and an empty 200
"compressed" body was resent until ``retries_exhausted``.
"""

from __future__ import annotations

import gzip
import logging
import threading
from collections.abc import Sequence
from datetime import UTC, datetime

import anyio
import anyio.to_thread
import orjson
import pytest

from sgp_client import DroppedSpan, SpanItem, UpsertQueue
from tests.transport.hostile import (
    FAST,
    KEY,
    HostileServer,
    Peer,
    client_for,
    http,
    replies,
    tls_pair,
    trusting,
)

pytestmark = pytest.mark.anyio

START = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
OK = http(b'{"items": []}')


def item(name: str) -> SpanItem:
    return SpanItem(name=name, trace_id="trace-hostile", start_timestamp=START)


def queue_of(client: object, **settings: object) -> UpsertQueue:
    return UpsertQueue(client, flush_interval=0.01, backoff=FAST, **settings)  # type: ignore[arg-type]


async def test_a_422_is_never_counted_delivered_through_a_forged_tls_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    context, ca = tls_pair()
    sent = threading.Event()

    def forge(peer: Peer) -> None:
        peer.read_request()
        peer.send(OK)
        peer.send(OK)  # a forged answer for the next batch, in its own TLS record
        sent.set()
        peer.wait_closed()

    rejected = http(b'{"detail": "end before start"}', status=b"422 Unprocessable")
    with trusting(ca, monkeypatch), HostileServer(forge, replies(rejected), tls=context) as s:
        async with client_for(s) as client, queue_of(client) as queue:
            queue.submit(item("first"))
            assert await queue.flush()
            await anyio.to_thread.run_sync(sent.wait, 10)
            await anyio.sleep(0.05)  # for the forged bytes to arrive
            queue.submit(item("second"))
            await queue.flush()
            stats = queue.stats
    assert stats.delivered == 1
    assert stats.dropped == {"rejected": 1}
    assert stats.balanced


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (b"301 Moved Permanently", "error"),
        (b"308 Permanent Redirect", "error"),
        (b"405 Method Not Allowed", "error"),
        (b"407 Proxy Authentication Required", "unauthorized"),
        (b"410 Gone", "error"),
    ],
)
async def test_statuses_no_item_causes_are_one_loud_drop_never_bisected(
    status: bytes, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    answer = http(b'{"detail": "not here"}', b"location: https://elsewhere.example/", status=status)
    with HostileServer(replies(answer)) as server:
        async with client_for(server) as client, queue_of(client, max_batch_size=500) as queue:
            for i in range(500):
                queue.submit(item(f"s{i}"))
            await queue.flush()
            stats = queue.stats
    assert stats.requests == 1  # 999 before
    assert stats.dropped == {reason: 500}
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    "odd_503",
    [
        pytest.param(http(b"{}", b"retry-after: Wed, 21 Oct 99999 07:28:00 GMT", status=b"503 B"),
                     id="retry-after-year-99999"),
        pytest.param(http(gzip.compress(b"{}"), b"content-encoding: gzip, x-unknown",
                          status=b"503 B"), id="unknown-coding"),
        pytest.param(http(b'{"detail": ' + b"[" * 600 + b"]" * 600 + b"}", status=b"503 B"),
                     id="detail-600-deep"),
    ],
)  # fmt: skip
async def test_an_odd_503_is_retried_not_dropped_as_an_error(odd_503: bytes) -> None:
    # The retry comes on the same connection, or on a new one when the first was closed.
    with HostileServer(replies(odd_503, OK), replies(OK)) as server:
        async with client_for(server) as client, queue_of(client) as queue:
            queue.submit(item("x"))
            await queue.flush()
            stats = queue.stats
    assert (stats.delivered, stats.requests, stats.retries) == (1, 2, 1)
    assert stats.dropped == {}


async def test_an_empty_gzip_body_is_delivered_once_and_a_401_not_retried() -> None:
    empty_ok = http(b"", b"content-encoding: gzip")
    empty_401 = http(b"", b"content-encoding: gzip", status=b"401 Unauthorized")
    with HostileServer(replies(empty_ok, empty_401)) as server:
        async with client_for(server) as client, queue_of(client) as queue:
            queue.submit(item("ok"))
            await queue.flush()
            queue.submit(item("refused"))
            await queue.flush()
            stats = queue.stats
    assert stats.delivered == 1
    assert stats.dropped == {"unauthorized": 1}
    assert stats.requests == 2  # a 200 went out 5-6 times and was retries_exhausted


async def test_a_2xx_is_a_delivery_whatever_its_body_holds() -> None:
    # The spans are stored: an echo past the client's limits or in an unknown coding is no
    # reason to count them dropped (or to retry them, and halve the adaptive limit).
    from sgp_client import ResponseLimits

    too_big = http(b'{"items": [' + b"0," * 4096 + b"0]}")
    unknown_coding = http(gzip.compress(b"{}"), b"content-encoding: gzip, x-unknown")
    with HostileServer(replies(too_big, unknown_coding)) as server:
        limits = ResponseLimits(max_body_bytes=1024, max_decoded_bytes=1024)
        async with client_for(server, limits=limits) as client, queue_of(client) as queue:
            queue.submit(item("echoed too much"))
            await queue.flush()
            queue.submit(item("echoed in a strange coding"))
            await queue.flush()
            stats = queue.stats
    assert stats.delivered == 2
    assert stats.dropped == {}
    assert (stats.requests, stats.retries) == (2, 0)


async def test_an_echoed_key_and_a_16_mib_detail_stay_out_of_drops_and_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    body = orjson.dumps({"detail": KEY + "x" * (16 * 1024 * 1024)})
    answer = http(body, b"x-request-id: " + KEY.encode(), status=b"403 Forbidden")
    dropped: list[tuple[Sequence[DroppedSpan], str, BaseException | None]] = []
    with HostileServer(replies(answer)) as server:
        async with (
            client_for(server) as client,
            queue_of(client, on_drop=lambda *call: dropped.append(call)) as queue,
        ):
            queue.submit(item("x"))
            await queue.flush()
    [(_, reason, error)] = dropped
    assert reason == "unauthorized"
    texts = [str(error), repr(error), str(getattr(error, "request_id", ""))]
    texts += [record.getMessage() for record in caplog.records]
    assert any("403" in text for text in texts)
    for text in texts:
        assert KEY not in text
        assert len(text) < 10_000  # the detail was 16 MiB
