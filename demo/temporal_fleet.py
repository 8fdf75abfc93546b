"""The Temporal fleet: worker processes on one task queue, agent-run workflows driven on them.

``run_temporal_fleet`` starts the worker processes (``demo.temporal_worker``), waits until
each runs, starts the workflows with a bounded number at once, optionally SIGKILLs one
worker in the middle, then stops the others with SIGTERM (their plugin drains their queue)
and collects their reports. Every process it started is stopped by its PID, on errors and
cancellation too. Asyncio-only, like temporalio.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import statistics
import sys
import time
import uuid
from collections.abc import Mapping
from typing import Any

import attrs
import orjson
from temporalio.client import Client

from sgp_tracing.temporal import END_SPAN_ACTIVITY, START_SPAN_ACTIVITY

from .workflows import SPANS_PER_RUN, AgentRun

__all__ = ["TemporalFleetResult", "run_temporal_fleet"]

_READY_TIMEOUT = 90.0


@attrs.define
class TemporalFleetResult:
    """What the driver saw and what the surviving workers reported."""

    traces: int = 0
    span_ids: dict[str, str] = attrs.Factory(dict)  # span id -> trace id
    workflow_seconds: list[float] = attrs.Factory(list)
    seconds: float = 0.0
    worker_reports: list[dict[str, Any]] = attrs.Factory(list)
    killed_worker: int | None = None

    @property
    def spans(self) -> int:
        return len(self.span_ids)

    def ran_on(self, activity: str) -> dict[str, int]:
        """Span id -> the worker that completed its ``activity`` (last one, if retried)."""
        where: dict[str, int] = {}
        for report in self.worker_reports:
            for span_id in report["ran"][activity]:
                where[span_id] = int(report["worker"])
        return where

    @property
    def cross_worker_pairs(self) -> int:
        """Spans whose START and END activities completed on different workers."""
        starts, ends = self.ran_on(START_SPAN_ACTIVITY), self.ran_on(END_SPAN_ACTIVITY)
        return sum(1 for span, worker in ends.items() if span in starts and starts[span] != worker)

    def queue_total(self, key: str) -> int:
        return sum(int(r["queue"].get(key, 0)) for r in self.worker_reports)

    def wall_time(self, quantile: float) -> float:
        """A quantile of the workflows' wall times (start to result), in seconds."""
        times = sorted(self.workflow_seconds)
        if not times:
            return 0.0
        if len(times) == 1:
            return times[0]
        return statistics.quantiles(times, n=100, method="inclusive")[round(quantile * 100) - 1]


async def run_temporal_fleet(
    *,
    temporal_address: str,
    workers: int,
    runs: int,
    env: Mapping[str, str],
    stateful: bool = False,
    agentex: bool = False,
    send_starts: bool = True,
    concurrency: int = 50,
    activity_timeout: float = 180.0,
    retry_deadline: float | None = None,
    kill_after: int | None = None,
    progress: bool = False,
) -> TemporalFleetResult:
    """Run ``runs`` workflows on ``workers`` worker processes and collect their reports.

    ``env`` holds the workers' SGP settings. ``stateful`` / ``agentex`` choose the workers'
    span activities (see ``demo.temporal_worker``). With ``kill_after``, worker 0 is SIGKILLed once
    that many workflows completed; its activities are retried on the others once their
    ``activity_timeout`` expires. ``retry_deadline`` sets the workers' queue retry deadline
    (keep it below ``activity_timeout``: see ``sgp_tracing.temporal``).
    """
    result = TemporalFleetResult()
    task_queue = f"sgp-demo-{uuid.uuid4().hex[:8]}"
    procs: list[asyncio.subprocess.Process] = []
    try:
        for index in range(workers):
            # One at a time: each is in ``procs`` (so stopped in ``finally``) once it exists.
            proc = await _start_worker(
                index, temporal_address, task_queue, env,
                stateful=stateful, agentex=agentex, send_starts=send_starts,
                retry_deadline=retry_deadline,
            )  # fmt: skip
            procs.append(proc)
        for index, proc in enumerate(procs):
            await asyncio.wait_for(_read_until(proc, "ready", index), _READY_TIMEOUT)
        client = await Client.connect(temporal_address)
        started = time.perf_counter()
        await _drive(
            client, task_queue, result, runs, concurrency, activity_timeout, procs, kill_after,
            progress,
        )  # fmt: skip
        result.worker_reports = await _stop_workers(procs)
        result.seconds = time.perf_counter() - started
    finally:
        await _kill_all(procs)
    return result


async def _start_worker(
    index: int,
    address: str,
    task_queue: str,
    env: Mapping[str, str],
    *,
    stateful: bool,
    agentex: bool,
    send_starts: bool,
    retry_deadline: float | None,
) -> asyncio.subprocess.Process:
    command = [
        sys.executable, "-m", "demo.temporal_worker", "--temporal", address,
        "--task-queue", task_queue, "--worker-id", str(index),
    ]  # fmt: skip
    if stateful:
        command.append("--stateful")
    if agentex:
        command.append("--agentex")
    if not send_starts:
        command.append("--no-starts")
    if retry_deadline is not None:
        command += ["--retry-deadline", str(retry_deadline)]
    return await asyncio.create_subprocess_exec(
        *command, env={**os.environ, **env}, stdout=asyncio.subprocess.PIPE
    )


async def _read_until(
    proc: asyncio.subprocess.Process, key: str, index: int
) -> dict[str, Any] | None:
    """The next ``{key: ...}`` line of a worker's stdout (other lines are passed on), or None
    when the worker exited first."""
    assert proc.stdout is not None
    while line := await proc.stdout.readline():
        if line.startswith(b"{"):
            message = orjson.loads(line)
            if isinstance(message, dict) and key in message:
                return message
        sys.stdout.buffer.write(line)
    if key == "ready":
        raise RuntimeError(f"worker {index} exited with {await proc.wait()} before it ran")
    return None


async def _drive(
    client: Client,
    task_queue: str,
    result: TemporalFleetResult,
    runs: int,
    concurrency: int,
    activity_timeout: float,
    procs: list[asyncio.subprocess.Process],
    kill_after: int | None,
    progress: bool,
) -> None:
    limit = asyncio.Semaphore(concurrency)
    prefix = uuid.uuid4().hex[:8]
    done = 0

    async def one(run: int) -> None:
        nonlocal done
        async with limit:
            begun = time.perf_counter()
            outcome = await client.execute_workflow(
                AgentRun.run,
                {"run": run, "activity_timeout": activity_timeout},
                id=f"agent-run-{prefix}-{run}",
                task_queue=task_queue,
            )
            result.workflow_seconds.append(time.perf_counter() - begun)
        for span_id in outcome["span_ids"]:
            result.span_ids[span_id] = outcome["trace_id"]
        result.traces += 1
        done += 1
        if kill_after is not None and done == kill_after and result.killed_worker is None:
            procs[0].send_signal(signal.SIGKILL)
            result.killed_worker = 0
        if progress:
            _print_progress(result, runs)

    async with asyncio.TaskGroup() as group:
        for run in range(runs):
            group.create_task(one(run))
    if progress:
        _print_progress(result, runs, final=True)


async def _stop_workers(procs: list[asyncio.subprocess.Process]) -> list[dict[str, Any]]:
    """SIGTERM each live worker (its plugin shuts it down and drains), collect its report."""
    for proc in procs:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
    reports: list[dict[str, Any]] = []
    for index, proc in enumerate(procs):
        with contextlib.suppress(TimeoutError):
            message = await asyncio.wait_for(_read_until(proc, "report", index), 60)
            if message is not None:
                reports.append(message["report"])
            await asyncio.wait_for(proc.wait(), 30)
    return reports


async def _kill_all(procs: list[asyncio.subprocess.Process]) -> None:
    for proc in procs:
        if proc.returncode is None:
            proc.kill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 10)


def _print_progress(result: TemporalFleetResult, runs: int, *, final: bool = False) -> None:
    line = f"[demo] workflows {result.traces}/{runs}  spans {result.spans}/{runs * SPANS_PER_RUN}"
    if sys.stderr.isatty():
        print("\r" + line, end="\n" if final else "", file=sys.stderr, flush=True)
    elif final or result.traces % max(runs // 10, 1) == 0:
        print(line, file=sys.stderr, flush=True)
