"""TLS against a hostile server (issue 13), with a throwaway certificate made by ``trustme``.

The defect: bytes sent after a complete answer were read as the next answer when they were
already inside the TLS layer (decrypted or still encrypted in its buffer), where a check
of the raw socket cannot see them: a later call got an earlier call's forged answer.
"""

from __future__ import annotations

import threading

import anyio
import anyio.to_thread
import pytest

from sgp_client import APIConnectionError

from .hostile import HostileServer, Peer, Script, client_for, http, replies, tls_pair, trusting

pytestmark = pytest.mark.anyio

FORGED = http(b'{"n": "forged"}')


def answer_then_forge(sent: threading.Event) -> Script:
    def script(peer: Peer) -> None:
        peer.read_request()
        peer.send(http(b'{"n": 1}'))
        peer.send(FORGED)  # its own send, so with TLS its own record
        sent.set()
        while peer.read_request() is not None:
            peer.send(http(b'{"n": "reused"}'))

    return script


@pytest.mark.parametrize("tls", [True, False], ids=["tls", "plain"])
async def test_bytes_after_a_complete_answer_are_never_the_next_answer(
    tls: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    context, ca = tls_pair()
    sent = threading.Event()
    scripts = (answer_then_forge(sent), replies(http(b'{"n": 2}')))
    with trusting(ca, monkeypatch), HostileServer(*scripts, tls=context if tls else None) as s:
        async with client_for(s) as sgp:
            first = await sgp.send_once("PUT", "/v5/spans/batch", content=b"{}")
            await anyio.to_thread.run_sync(sent.wait, 10)
            await anyio.sleep(0.05)  # for the forged bytes to arrive over loopback
            second = await sgp.send_once("PUT", "/v5/spans/batch", content=b"{}")
    assert first.json() == {"n": 1}
    assert second.json() == {"n": 2}  # not "forged", and not on the tainted connection
    assert [number for number, _, _ in s.requests] == [1, 2]


async def test_a_certificate_for_another_host_is_refused_before_a_byte_is_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ssl

    ca = tls_pair()[1]
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("example.com").configure_cert(context)
    with trusting(ca, monkeypatch), HostileServer(replies(http()), tls=context) as server:
        async with client_for(server) as sgp:
            with pytest.raises(APIConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
                await sgp.send_once("PUT", "/v5/spans/batch", content=b"{}")
    assert server.requests == []


async def test_a_trusted_certificate_keeps_one_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    context, ca = tls_pair()
    with trusting(ca, monkeypatch), HostileServer(replies(http()), tls=context) as server:
        async with client_for(server) as sgp:
            for _ in range(3):
                assert (await sgp.send_once("PUT", "/v5/spans/batch", content=b"{}")).json()
            assert sgp.transport is not None
            assert sgp.transport.connections_opened == 1
    assert server.connections == 1
