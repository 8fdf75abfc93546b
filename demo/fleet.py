"""The demo's coordinator: plays the workflow engine for a fleet of worker processes.

Every span of a simulated agent run is started by one randomly chosen worker and ended by
another randomly chosen one, the way Temporal routes activities. The coordinator only passes
``span.to_dict()`` payloads around; it never talks to SGP except to read the result back.
"""

from __future__ import annotations

import os
import random
import sys
import time
from collections.abc import Mapping
from typing import Any, Protocol, cast

import anyio
import attrs
from anyio.abc import Process, SocketListener, SocketStream
from anyio.streams.stapled import MultiListener

from sgp_client import AsyncSGPClient, new_span_id

from .wire import JsonLines

__all__ = ["FleetResult", "run_fleet"]


@attrs.define
class FleetResult:
    """What the coordinator saw and what the workers reported."""

    traces: int = 0
    spans_started: int = 0
    spans_ended: int = 0
    cross_worker_ends: int = 0
    span_ids: dict[str, str] = attrs.Factory(dict)  # span id -> trace id
    worker_reports: list[dict[str, Any]] = attrs.Factory(list)
    seconds: float = 0.0


class _Worker:
    """The coordinator's handle on one worker: requests with replies matched by task id."""

    def __init__(self, index: int, wire: JsonLines) -> None:
        self.index = index
        self._wire = wire
        self._waiting: dict[int, tuple[anyio.Event, list[dict[str, Any]]]] = {}
        self._tasks = 0
        self.final: dict[str, Any] | None = None
        self.finished = anyio.Event()
        self._send_lock = anyio.Lock()

    async def request(self, message: dict[str, Any]) -> dict[str, Any]:
        self._tasks += 1
        task = self._tasks
        done = anyio.Event()
        slot: list[dict[str, Any]] = []
        self._waiting[task] = (done, slot)
        async with self._send_lock:
            await self._wire.send({**message, "task": task})
        await done.wait()
        reply = slot[0]
        if "error" in reply:
            raise RuntimeError(f"worker {self.index}: {reply['error']}")
        return reply

    async def read_replies(self) -> None:
        while True:
            message = await self._wire.receive()
            if "final" in message:
                self.final = message["final"]
                self.finished.set()
                return
            done, slot = self._waiting.pop(message["task"])
            slot.append(message)
            done.set()

    async def stop(self) -> None:
        async with self._send_lock:
            await self._wire.send({"op": "stop"})

    async def aclose(self) -> None:
        await self._wire.aclose()


class _Fleet:
    def __init__(self, workers: list[_Worker], rng: random.Random, result: FleetResult) -> None:
        self.workers = workers
        self.rng = rng
        self.result = result

    def pick(self) -> _Worker:
        return self.rng.choice(self.workers)

    async def start(
        self, name: str, trace_id: str, parent_id: str | None, span_type: str, payload: Any
    ) -> tuple[dict[str, Any], int]:
        worker = self.pick()
        reply = await worker.request(
            {
                "op": "start",
                "name": name,
                "trace_id": trace_id,
                "parent_id": parent_id,
                "type": span_type,
                "input": payload,
            }
        )
        span: dict[str, Any] = reply["span"]
        self.result.spans_started += 1
        self.result.span_ids[span["id"]] = trace_id
        return span, worker.index

    async def end(
        self, span: dict[str, Any], started_on: int, output: Any, error: str | None = None
    ) -> None:
        worker = self.pick()
        await worker.request({"op": "end", "span": span, "output": output, "error": error})
        self.result.spans_ended += 1
        if worker.index != started_on:
            self.result.cross_worker_ends += 1

    async def agent_run(self, run: int) -> None:
        rng = self.rng
        trace_id = new_span_id()
        question = f"question #{run}: what is {rng.randint(2, 99)} squared?"
        root, root_worker = await self.start(
            "agent-run", trace_id, None, "AGENT_WORKFLOW", {"question": question}
        )
        for step in range(rng.randint(2, 4)):
            llm, llm_worker = await self.start(
                "llm", trace_id, root["id"], "COMPLETION", {"prompt": f"{question} step {step}"}
            )
            await anyio.sleep(rng.uniform(0, 0.004))
            await self.end(llm, llm_worker, {"text": f"call a tool for step {step}"})
            async with anyio.create_task_group() as tools:
                for tool in range(rng.randint(1, 2)):
                    tools.start_soon(self.tool_call, trace_id, root["id"], step, tool)
        self.result.traces += 1
        await self.end(root, root_worker, {"answer": "42"})

    async def tool_call(self, trace_id: str, parent_id: str, step: int, tool: int) -> None:
        span, worker = await self.start(
            "tool", trace_id, parent_id, "CODE_EXECUTION", {"step": step, "tool": tool}
        )
        lookup, lookup_worker = await self.start(
            "kb-lookup", trace_id, span["id"], "KB_RETRIEVAL", {"query": f"tool {tool}"}
        )
        await anyio.sleep(self.rng.uniform(0, 0.003))
        await self.end(lookup, lookup_worker, {"chunks": ["a", "b"]})
        failed = self.rng.random() < 0.05
        await self.end(
            span, worker, None if failed else {"result": tool * step}, "timeout" if failed else None
        )


async def run_fleet(
    *,
    workers: int,
    runs: int,
    concurrency: int,
    backend: str,
    stateful: bool,
    env: Mapping[str, str],
    seed: int,
    progress: bool,
) -> FleetResult:
    """Start ``workers`` processes, play ``runs`` agent runs across them, stop them."""
    result = FleetResult()
    rng = random.Random(seed)
    child_env = {**os.environ, **env}
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    processes: list[Process] = []
    try:
        for index in range(workers):
            command = [
                sys.executable,
                "-m",
                "demo.worker",
                "--port",
                str(port),
                "--worker-id",
                str(index),
                "--backend",
                backend,
            ]
            if stateful:
                command.append("--stateful")
            processes.append(
                await anyio.open_process(command, env=child_env, stdout=None, stderr=None)
            )
        handles = await _accept_workers(listener, workers)
    finally:
        await listener.aclose()
    fleet = _Fleet(handles, rng, result)
    started = time.perf_counter()
    async with anyio.create_task_group() as group:
        for handle in handles:
            group.start_soon(handle.read_replies)
        if progress:
            group.start_soon(_show_progress, result, runs)
        limiter = anyio.CapacityLimiter(concurrency)

        async def one_run(run: int) -> None:
            async with limiter:
                await fleet.agent_run(run)

        async with anyio.create_task_group() as runs_group:
            for run in range(runs):
                runs_group.start_soon(one_run, run)
        for handle in handles:
            await handle.stop()
        # read_replies returns once each worker has drained and sent its final report.
        for handle in handles:
            await handle.finished.wait()
        group.cancel_scope.cancel()
    for handle in handles:
        await handle.aclose()
    result.seconds = time.perf_counter() - started
    result.worker_reports = [handle.final for handle in handles if handle.final is not None]
    for process in processes:
        with anyio.move_on_after(30):
            await process.wait()
    if progress:
        _print_progress(result, runs, final=True)
    return result


async def _accept_workers(listener: MultiListener[SocketStream], count: int) -> list[_Worker]:
    handles: list[_Worker | None] = [None] * count
    with anyio.fail_after(60):
        for _ in range(count):
            stream = await cast(SocketListener, listener.listeners[0]).accept()
            wire = JsonLines(stream)
            hello = await wire.receive()
            handles[int(hello["hello"])] = _Worker(int(hello["hello"]), wire)
    return [handle for handle in handles if handle is not None]


async def _show_progress(result: FleetResult, runs: int) -> None:
    last = 0.0
    while True:
        now = time.monotonic()
        # On a terminal one line redrawn in place; elsewhere (CI logs) a line every 2 s.
        if sys.stderr.isatty() or now - last >= 2.0:
            last = now
            _print_progress(result, runs, final=False)
        await anyio.sleep(0.2)


def _print_progress(result: FleetResult, runs: int, *, final: bool) -> None:
    line = (
        f"[demo] agent runs {result.traces}/{runs}  spans started {result.spans_started}"
        f"  ended {result.spans_ended}  ends on another worker {result.cross_worker_ends}"
    )
    if sys.stderr.isatty():
        print("\r" + line, end="\n" if final else "", file=sys.stderr)
    else:
        print(line, file=sys.stderr)
    sys.stderr.flush()


class HasSpanIds(Protocol):
    """A fleet's result: the span ids it made, each with its trace id."""

    @property
    def span_ids(self) -> dict[str, str]: ...


async def read_back(client: AsyncSGPClient, result: HasSpanIds) -> dict[str, int]:
    """Count what the server stored for a fleet's traces: found, completed, stuck running."""
    trace_ids = sorted(set(result.span_ids.values()))
    found = completed = 0
    seen: set[str] = set()
    for start in range(0, len(trace_ids), 50):
        async for span in client.spans.search(
            trace_ids=trace_ids[start : start + 50], page_size=1000
        ):
            if span.id in result.span_ids and span.id not in seen:
                seen.add(span.id)
                found += 1
                completed += span.end_timestamp is not None
    return {
        "expected": len(result.span_ids),
        "found": found,
        "completed": completed,
        "running": found - completed,
        "missing": len(result.span_ids) - found,
    }
