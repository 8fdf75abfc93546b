"""`ServerProcess`: the local SGP server in a child process on loopback, a sync context manager.

For code that must talk to a real socket (the demo, benchmarks, end-to-end tests): it starts
``python -m sgp_client.testing serve --port ...``, waits for the "listening" line, and drives
the ``/_admin`` endpoints with a small sync httpx client. `kill()` + `start()` reuse the port and
the database file, so a test can stage an outage and a recovery.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from types import TracebackType
from typing import IO, Any

import httpx

from ._app import DEFAULT_ACCOUNT_ID, DEFAULT_API_KEY, DEFAULT_MAX_BODY_BYTES
from ._store import STORE_KINDS, StoreKind

__all__ = ["ServerProcess", "ServerProcessError"]

_LISTENING = "SGP local server listening on "
_HOST = "127.0.0.1"


class ServerProcessError(RuntimeError):
    """The server process could not be started (the message includes its stderr)."""


class ServerProcess:
    """The local SGP server in a subprocess on 127.0.0.1.

    `port=0` picks a free port on first start and keeps it across restarts. `db` is
    ``":memory:"`` (data lost on restart) or a SQLite file path (kept across restarts).
    `store` is ``"tracing"`` or ``"legacy"`` and `mask_credentials=False` stores
    credential-shaped values as sent; `max_body_bytes` bounds a request body (see `create_app`).
    `api_keys` maps key to account (default: `DEFAULT_API_KEY` for `DEFAULT_ACCOUNT_ID`);
    `api_key` / `account_id` are the first pair, handy to configure a client.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        db: str | os.PathLike[str] = ":memory:",
        store: StoreKind = "tracing",
        api_keys: Mapping[str, str] | None = None,
        prefix: str = "/public",
        startup_timeout: float = 15.0,
        mask_credentials: bool = True,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        self.port = port
        self.db = os.fspath(db)
        if store not in STORE_KINDS:
            raise ValueError(f"store must be one of {list(STORE_KINDS)}, got {store!r}")
        self.store: StoreKind = store
        self.mask_credentials = mask_credentials
        self.max_body_bytes = max_body_bytes
        self._api_keys = dict(api_keys) if api_keys else {DEFAULT_API_KEY: DEFAULT_ACCOUNT_ID}
        self.prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
        self.startup_timeout = startup_timeout
        self._proc: subprocess.Popen[str] | None = None
        self._stderr: IO[str] | None = None
        self._admin: httpx.Client | None = None
        self._pump: threading.Thread | None = None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"ServerProcess(port={self.port}, db={self.db!r}, store={self.store!r}, {state})"

    # -- addresses and credentials ---------------------------------------------------------

    @property
    def api_key(self) -> str:
        return next(iter(self._api_keys))

    @property
    def account_id(self) -> str:
        return next(iter(self._api_keys.values()))

    @property
    def base_url(self) -> str:
        """Where the API lives, e.g. ``http://127.0.0.1:5003/public`` (a client's base URL)."""
        return f"http://{_HOST}:{self.port}{self.prefix}"

    @property
    def admin_url(self) -> str:
        return f"http://{_HOST}:{self.port}/_admin"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle ----------------------------------------------------------------------------

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start the server and wait until it listens (raises `ServerProcessError`)."""
        if self.running:
            raise ServerProcessError("server process already running")
        command = [
            sys.executable, "-m", "sgp_client.testing", "serve",
            "--host", _HOST, "--port", str(self.port), "--prefix", self.prefix or "/",
            "--db", self.db, "--store", self.store,
        ]  # fmt: skip
        for key, account in self._api_keys.items():
            command += ["--api-key", f"{key}:{account}"]
        if not self.mask_credentials:
            command.append("--no-mask-credentials")
        command += ["--max-body-bytes", str(self.max_body_bytes)]
        # stderr goes to a file: a pipe nobody drains could fill up and block the server.
        self._stderr = tempfile.TemporaryFile(mode="w+", encoding="utf-8")  # noqa: SIM115
        self._proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            command,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        lines: queue.Queue[str | None] = queue.Queue()
        self._pump = threading.Thread(
            target=self._pump_stdout, args=(self._proc, lines), daemon=True, name="sgp-server-out"
        )
        self._pump.start()
        deadline = time.monotonic() + self.startup_timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = lines.get(timeout=max(0.0, remaining))
            except queue.Empty:
                tail = self._stderr_tail()
                self.kill()
                raise ServerProcessError(
                    f"server did not report listening within {self.startup_timeout} s{tail}"
                ) from None
            if line is None:
                code = self._proc.wait()
                tail = self._stderr_tail()
                self._cleanup()
                raise ServerProcessError(f"server exited with code {code} before listening{tail}")
            if line.startswith(_LISTENING):
                url = line[len(_LISTENING) :].strip()
                self.port = int(url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
                break
        self._admin = httpx.Client(base_url=self.admin_url, timeout=10.0)

    @staticmethod
    def _pump_stdout(proc: subprocess.Popen[str], lines: queue.Queue[str | None]) -> None:
        # Keeps draining stdout for the life of the process, so it can never block on a write.
        assert proc.stdout is not None
        with proc.stdout:
            for line in proc.stdout:
                lines.put(line)
        lines.put(None)

    def _stderr_tail(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        text = self._stderr.read()[-4000:]
        return f"\n--- server stderr ---\n{text}" if text.strip() else ""

    def stop(self, timeout: float = 5.0) -> None:
        """Stop gracefully (SIGTERM), killing the process if it outlives `timeout`."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._cleanup()

    def kill(self) -> None:
        """Kill at once (SIGKILL), like a crash: nothing is flushed or answered."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._cleanup()

    def restart(self) -> None:
        """Stop gracefully and start again on the same port and database."""
        self.stop()
        self.start()

    def _cleanup(self) -> None:
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        if self._pump is not None:
            # The pump closes stdout itself at EOF, which comes once the process is gone.
            self._pump.join(timeout=5)
            self._pump = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    # -- admin ----------------------------------------------------------------------------

    def _client(self) -> httpx.Client:
        if self._admin is None:
            raise ServerProcessError("server process is not running")
        return self._admin

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._client().request(method, path, **kwargs)
        response.raise_for_status()
        return response.json()

    def headers(self) -> dict[str, str]:
        """Auth headers for API requests with the first configured key."""
        return {"x-api-key": self.api_key, "x-selected-account-id": self.account_id}

    def set_faults(self, **faults: Any) -> dict[str, Any]:
        """Replace the active faults (see `Faults`); returns the resulting configuration."""
        result: dict[str, Any] = self._call("PUT", "/faults", json=faults)
        return result

    def update_faults(self, **changes: Any) -> dict[str, Any]:
        """Merge `changes` into the active faults."""
        result: dict[str, Any] = self._call("PATCH", "/faults", json=changes)
        return result

    def clear_faults(self) -> None:
        self._call("PUT", "/faults", json={})

    def faults(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/faults")
        return result

    def stats(self) -> dict[str, Any]:
        """Counters: requests, by_endpoint, items_received, items_stored, reopened, rejections,
        faults… and ``store``, the store's kind."""
        result: dict[str, Any] = self._call("GET", "/stats")
        return result

    def reset(self) -> None:
        """Forget stored spans, counters and faults."""
        self._call("POST", "/reset")

    def spans(self, *, trace_id: str | None = None) -> list[dict[str, Any]]:
        """Stored spans (all accounts), optionally of one trace, in first-stored order."""
        params = {"trace_id": trace_id} if trace_id is not None else {}
        result: list[dict[str, Any]] = self._call("GET", "/spans", params=params)["items"]
        return result

    def count(self, *, trace_id: str | None = None) -> int:
        """Number of stored rows, optionally of one trace."""
        params = {"trace_id": trace_id} if trace_id is not None else {}
        return int(self._call("GET", "/count", params=params)["count"])

    def healthy(self) -> bool:
        try:
            self._call("GET", "/health")
        except (httpx.HTTPError, ServerProcessError):
            return False
        return True
