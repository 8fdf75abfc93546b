"""A tiny OTLP/HTTP trace sink that counts spans, for benchmarking OpenTelemetry's exporter.

Run it as its own process (`python -m benchmarks.peers.otlp_sink --port 0`); it prints
`OTLP sink listening on http://127.0.0.1:PORT` once it accepts connections.

- `POST /v1/traces`: a protobuf `ExportTraceServiceRequest` (plain, gzip or deflate);
  spans are counted and an empty `ExportTraceServiceResponse` is answered.
  With faults on, every Nth request is answered 503 with `Retry-After` and not counted;
  with a latency set, every trace request is answered that many seconds late (each request
  has its own thread, so slow requests are still served concurrently).
- `GET /count`: JSON counters. `POST /reset`: zero them.
  `POST /faults` with `{"every": N, "retry_after": S, "latency": S}`: every Nth request
  fails (0 = never), every trace request waits `latency` seconds first.

`OtlpSinkProcess` runs the sink in a subprocess and talks to it from the parent.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import queue
import subprocess
import sys
import threading
import time
import urllib.request
import zlib
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

__all__ = ["OtlpSinkProcess", "SinkCounts", "main"]

_READY_PREFIX = "OTLP sink listening on "
_PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True, kw_only=True)
class SinkCounts:
    """Counters of a running sink."""

    requests: int
    spans: int
    unique_spans: int
    faults: int
    bad_requests: int


class _State:
    """Counters shared by the handler threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.fault_every = 0
        self.retry_after = 1.0
        self.latency = 0.0
        self.since_faults = 0  # trace requests since the fault setting last changed
        self.reset()

    def reset(self) -> None:
        self.requests = 0
        self.spans = 0
        self.faults = 0
        self.bad_requests = 0
        self.seen: set[bytes] = set()

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return {
                "requests": self.requests,
                "spans": self.spans,
                "unique_spans": len(self.seen),
                "faults": self.faults,
                "bad_requests": self.bad_requests,
            }


class _Handler(BaseHTTPRequestHandler):
    # Keep-alive: the OTLP exporter reuses its connection (requests.Session).
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, the body waits for a delayed ACK
    # (about 40 ms per request on Linux loopback).
    disable_nagle_algorithm = True
    state: ClassVar[_State]

    def log_message(self, format: str, *args: Any) -> None:
        return  # one line per request would cost more than the parsing

    def _reply(
        self,
        status: int,
        body: bytes,
        content_type: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, value: Any) -> None:
        self._reply(status, json.dumps(value).encode(), "application/json")

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def do_GET(self) -> None:
        if self.path == "/count":
            self._json(200, self.state.snapshot())
        else:
            self._json(404, {"detail": "not found"})

    def do_POST(self) -> None:
        body = self._body()
        if self.path == "/v1/traces":
            self._traces(body)
        elif self.path == "/reset":
            with self.state.lock:
                self.state.reset()
            self._json(200, self.state.snapshot())
        elif self.path == "/faults":
            config = json.loads(body or b"{}")
            with self.state.lock:
                self.state.fault_every = int(config.get("every", 0))
                self.state.retry_after = float(config.get("retry_after", 1.0))
                self.state.latency = float(config.get("latency", 0.0))
                self.state.since_faults = 0
            self._json(200, {"every": self.state.fault_every})
        else:
            self._json(404, {"detail": "not found"})

    def _traces(self, body: bytes) -> None:
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

        state = self.state
        if state.latency > 0:
            time.sleep(state.latency)  # like the SGP server's latency fault
        with state.lock:
            state.requests += 1
            state.since_faults += 1
            fault = state.fault_every > 0 and state.since_faults % state.fault_every == 0
            if fault:
                state.faults += 1
                retry_after = state.retry_after
        if fault:
            self._reply(
                503,
                b"",
                "application/x-protobuf",
                {"Retry-After": _retry_after_header(retry_after)},
            )
            return
        try:
            encoding = (self.headers.get("Content-Encoding") or "").lower()
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            request = trace_service_pb2.ExportTraceServiceRequest()
            request.ParseFromString(body)
        except Exception as exc:
            with state.lock:
                state.bad_requests += 1
            self._reply(400, str(exc).encode(), "text/plain")
            return
        keys = [
            span.trace_id + span.span_id
            for resource_spans in request.resource_spans
            for scope_spans in resource_spans.scope_spans
            for span in scope_spans.spans
        ]
        with state.lock:
            state.spans += len(keys)
            state.seen.update(keys)
        response = trace_service_pb2.ExportTraceServiceResponse()
        self._reply(200, response.SerializeToString(), "application/x-protobuf")


def _retry_after_header(seconds: float) -> str:
    # The header is delta-seconds (an integer); round up so a client never comes back early.
    whole = int(seconds)
    return str(whole if whole == seconds else whole + 1)


def main(argv: list[str] | None = None) -> None:
    """Serve until killed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--fault-every", type=int, default=0, help="fail every Nth request")
    parser.add_argument("--retry-after", type=float, default=1.0)
    args = parser.parse_args(argv)

    state = _State()
    state.fault_every = args.fault_every
    state.retry_after = args.retry_after
    handler = type("Handler", (_Handler,), {"state": state})
    server = ThreadingHTTPServer((args.host, args.port), handler)
    host, port = server.server_address[:2]
    print(f"{_READY_PREFIX}http://{host!s}:{port}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


class OtlpSinkProcess:
    """The sink in a child process; a sync context manager.

    >>> with OtlpSinkProcess() as sink:        # doctest: +SKIP
    ...     exporter = OTLPSpanExporter(endpoint=sink.traces_endpoint)
    ...     sink.count()
    """

    def __init__(self, *, fault_every: int = 0, retry_after: float = 1.0) -> None:
        self._args = ["--fault-every", str(fault_every), "--retry-after", str(retry_after)]
        self._proc: subprocess.Popen[str] | None = None
        self.base_url = ""

    @property
    def endpoint(self) -> str:
        """Base URL, e.g. `http://127.0.0.1:4318`."""
        return self.base_url

    @property
    def traces_endpoint(self) -> str:
        """What `OTLPSpanExporter(endpoint=...)` takes: the full `/v1/traces` URL."""
        return f"{self.base_url}/v1/traces"

    def start(self, timeout: float = 15.0) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(_PROJECT_ROOT), env.get("PYTHONPATH", "")) if p
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.peers.otlp_sink", "--port", "0", *self._args],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        self._proc = proc
        lines: queue.Queue[str] = queue.Queue()

        def read_first_line() -> None:
            assert proc.stdout is not None
            lines.put(proc.stdout.readline())

        threading.Thread(target=read_first_line, daemon=True).start()
        try:
            line = lines.get(timeout=timeout)
        except queue.Empty:
            self.stop()
            raise RuntimeError(f"OTLP sink did not start within {timeout} s") from None
        if not line.startswith(_READY_PREFIX):
            self.stop()
            raise RuntimeError(f"OTLP sink failed to start: {line!r}")
        self.base_url = line[len(_READY_PREFIX) :].strip()

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> OtlpSinkProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.base_url}{path}", data=data, method=method)
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def counts(self) -> SinkCounts:
        """All counters."""
        return SinkCounts(**self._call("GET", "/count"))

    def count(self) -> int:
        """Distinct spans received (a retried batch is not counted twice)."""
        return int(self._call("GET", "/count")["unique_spans"])

    def reset(self) -> None:
        """Zero the counters (fault settings are kept)."""
        self._call("POST", "/reset", {})

    def set_faults(self, every: int = 0, *, retry_after: float = 1.0, latency: float = 0.0) -> None:
        """Answer every `every`-th trace request 503 with Retry-After (0 switches faults off),
        and every trace request `latency` seconds late."""
        self._call(
            "POST", "/faults", {"every": every, "retry_after": retry_after, "latency": latency}
        )


if __name__ == "__main__":
    main()
