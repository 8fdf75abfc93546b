"""A misbehaving HTTP server for tests: raw sockets on 127.0.0.1, one script per connection.

It runs in threads, outside the test's event loop, so one server serves asyncio and trio
tests alike, sync tests, and a client moved from one event loop to another. A script gets a
``Peer`` (the accepted connection) and does what a broken server or proxy would: answer
twice, announce 10 GB, send a bomb, echo the key. TLS with a throwaway certificate made by
``trustme`` (``tls_pair()``).

    with HostileServer(replies(http(b"{}"), http(b"{}", status=b"422 Unprocessable"))) as s:
        client = client_for(s)  # trusts s's certificate when it speaks TLS
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import trustme

from sgp_client import AsyncSGPClient, Backoff

KEY = "sk-hostile-test-SECRET-0123456789"
FAST = Backoff(initial=0.001, maximum=0.01)

Script = Callable[["Peer"], None]


class Peer:
    """The server's side of one accepted connection."""

    def __init__(self, sock: socket.socket, number: int, server: HostileServer) -> None:
        self.sock = sock
        #: 1 for the first connection the server accepted.
        self.number = number
        self._server = server
        self._buffer = bytearray()

    def read_request(self) -> bytes | None:
        """The next request's head (its body read and recorded); None once the client closed."""
        while (end := self._buffer.find(b"\r\n\r\n")) < 0:
            data = self._recv()
            if not data:
                return None
            self._buffer += data
        head = bytes(self._buffer[:end])
        del self._buffer[: end + 4]
        length = 0
        for line in head.lower().split(b"\r\n")[1:]:
            if line.startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        while len(self._buffer) < length:
            data = self._recv()
            if not data:
                return None
            self._buffer += data
        body = bytes(self._buffer[:length])
        del self._buffer[:length]
        self._server.requests.append((self.number, head, body))
        return head

    def send(self, data: bytes) -> None:
        """One send (with TLS: its own record(s), never merged with the next send)."""
        self.sock.sendall(data)

    def wait_closed(self) -> None:
        """Until the client closes the connection (everything it sends is ignored)."""
        while self._recv():
            pass

    def _recv(self) -> bytes:
        try:
            return self.sock.recv(65536)
        except (OSError, ssl.SSLError):
            return b""


class HostileServer:
    """Serves connection ``n`` with ``scripts[n - 1]`` (the last script for every later one)."""

    def __init__(self, *scripts: Script, tls: ssl.SSLContext | None = None) -> None:
        if not scripts:
            raise ValueError("give at least one script")
        self.scripts = scripts
        self.tls = tls
        self.requests: list[tuple[int, bytes, bytes]] = []  # (connection, head, body)
        self.connections = 0
        #: Set once a script's connection ended (the client closed it, or the script returned).
        self.closed: list[threading.Event] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._peers: list[socket.socket] = []
        self._stopping = False

    def url(self, path: str = "/public") -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> HostileServer:
        thread = threading.Thread(target=self._accept, daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for sock in list(self._peers):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(timeout=10)

    def _accept(self) -> None:
        while not self._stopping:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            closed = threading.Event()
            self.closed.append(closed)
            script = self.scripts[min(self.connections, len(self.scripts)) - 1]
            thread = threading.Thread(
                target=self._serve, args=(sock, self.connections, script, closed), daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def _serve(
        self, sock: socket.socket, number: int, script: Script, closed: threading.Event
    ) -> None:
        self._peers.append(sock)
        try:
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_side=True)
                self._peers.append(sock)
            script(Peer(sock, number, self))
        except (OSError, ssl.SSLError):
            pass  # the client went away mid-script: that is its right
        finally:
            with contextlib.suppress(OSError):
                sock.close()
            closed.set()

    def heads(self) -> list[bytes]:
        return [head for _, head, _ in self.requests]


def http(
    body: bytes = b'{"ok": true}',
    *headers: bytes,
    status: bytes = b"200 OK",
    length: bool = True,
) -> bytes:
    """An answer: status line, headers (a content-length unless ``length=False``), body."""
    lines = [b"HTTP/1.1 " + status, b"content-type: application/json", *headers]
    if length:
        lines.append(b"content-length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def replies(*answers: bytes | Sequence[bytes], keep: bool = True) -> Script:
    """Answer request ``i`` of the connection with ``answers[i]`` (the last one for later
    requests); a sequence is sent as separate sends. ``keep=False``: close after the last."""

    def script(peer: Peer) -> None:
        index = 0
        while peer.read_request() is not None:
            answer = answers[min(index, len(answers) - 1)]
            for part in [answer] if isinstance(answer, bytes) else answer:
                peer.send(part)
            index += 1
            if not keep and index >= len(answers):
                return

    return script


def tls_pair() -> tuple[ssl.SSLContext, trustme.CA]:
    """A server context with a certificate for 127.0.0.1, and the CA that signed it."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    return context, ca


def client_for(server: HostileServer, **settings: Any) -> AsyncSGPClient:
    """A client of ``server``, no retries, fast backoff (settings override)."""
    options: dict[str, Any] = {
        "api_key": KEY,
        "account_id": "acct-hostile",
        "base_url": server.url(),
        "backoff": FAST,
        "max_retries": 0,
    }
    options.update(settings)
    return AsyncSGPClient(**options)


@contextlib.contextmanager
def trusting(ca: trustme.CA, monkeypatch: Any) -> Iterator[None]:
    """Clients made inside trust ``ca`` (through ``SSL_CERT_FILE``, as httpx reads it)."""
    with ca.cert_pem.tempfile() as path:
        monkeypatch.setenv("SSL_CERT_FILE", path)
        yield
