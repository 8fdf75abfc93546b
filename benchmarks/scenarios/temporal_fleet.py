"""temporal-fleet: agent-run workflows on a real Temporal fleet, SGP's legacy store behind it.

Temporal's dev server (in memory), 4 worker processes on one task queue with eager activity
execution off, each span's start and end an activity routed to any worker (``demo.workflows``,
5 spans a workflow). Rows: our integration (``sgp_tracing.temporal``: each activity completes
once its write is delivered), the same with ``send_starts=False``, and the old
per-process-dict processor (fire and forget) for contrast. Measured: workflow wall time
(start to result, p50 and p95), upsert requests and writes (items delivered) per span, and
stuck / reopened spans on the legacy store, all counted at the server. Where agentex-sdk is
importable (it needs Python >= 3.12), agentex's own ``SGPAsyncTracingProcessor`` runs the same
activities on the same fleet, end-only (its default) and with starts; elsewhere a row says
it is not installed.
"""

from __future__ import annotations

import asyncio
import importlib.util

from benchmarks._common import OURS, Bench, Row
from demo.devserver import TemporalDevServer
from demo.fleet import read_back
from demo.temporal_fleet import TemporalFleetResult, run_temporal_fleet
from sgp_client import AsyncSGPClient
from sgp_client.testing import ServerProcess

__all__ = ["run"]

#: (system, label, worker options, extra environment)
_VARIANTS: tuple[tuple[str, str, dict[str, bool], dict[str, str]], ...] = (
    (OURS, "sgp_tracing.temporal", {}, {}),
    (OURS, "sgp_tracing.temporal, send_starts=False", {"send_starts": False}, {}),
    ("per-process dict", "--stateful, fire and forget", {"stateful": True}, {}),
)
_AGENTEX_VARIANTS: tuple[tuple[str, str, dict[str, bool], dict[str, str]], ...] = (
    ("agentex-sdk", "SGPAsyncTracingProcessor, end-only (its default)", {"agentex": True}, {}),
    (
        "agentex-sdk",
        "SGPAsyncTracingProcessor, with starts",
        {"agentex": True},
        {"AGENTEX_TRACING_SKIP_SPAN_START": "0"},
    ),
)


def run(bench: Bench) -> list[Row]:
    runs = max(bench.sizes.fleet_runs // 3, 10)
    variants = _VARIANTS
    with_agentex = importlib.util.find_spec("agentex") is not None
    if with_agentex:
        variants += _AGENTEX_VARIANTS
    rows: list[Row] = []
    with TemporalDevServer() as temporal, ServerProcess(store="legacy") as server:
        for system, label, options, env in variants:
            server.reset()
            rows.append(_row(bench, temporal.address, server, runs, system, label, options, env))
    if not with_agentex:
        rows.append(_unavailable("agentex-sdk not installed (it needs Python >= 3.12)"))
    return rows


def _row(
    bench: Bench,
    address: str,
    server: ServerProcess,
    runs: int,
    system: str,
    label: str,
    options: dict[str, bool],
    extra_env: dict[str, str],
) -> Row:
    workers = bench.sizes.fleet_workers
    bench.progress(f"temporal-fleet {label}: {workers} workers, {runs} workflows ...")
    env = {
        "SGP_API_KEY": server.api_key,
        "SGP_ACCOUNT_ID": server.account_id,
        "SGP_CLIENT_BASE_URL": server.base_url,
        **extra_env,
    }

    async def main() -> tuple[TemporalFleetResult, dict[str, int]]:
        result = await run_temporal_fleet(
            temporal_address=address, workers=workers, runs=runs, env=env, **options
        )  # fmt: skip
        async with AsyncSGPClient(
            api_key=server.api_key, account_id=server.account_id, base_url=server.base_url
        ) as client:
            return result, await read_back(client, result)

    result, stored = asyncio.run(main())
    spans = max(stored["expected"], 1)
    # Counted at the server, the same way for every system (agentex's has no queue).
    served = server.stats()
    reopened = int(served["reopened"])
    p50, p95 = result.wall_time(0.5), result.wall_time(0.95)
    requests, writes = served["upsert_requests"] / spans, served["items_received"] / spans
    bench.progress(
        f"temporal-fleet {label}: {stored['completed']}/{stored['expected']} completed, "
        f"workflow p50 {p50:.2f} s"
    )
    return Row(
        scenario="temporal-fleet",
        # Only our rows' losses fail the run's exit status (the contrast row loses spans).
        system=system,
        backend=f"asyncio, {label}",
        spans=stored["expected"],
        delivered=stored["completed"],
        spans_per_s=stored["expected"] / result.seconds if result.seconds > 0 else None,
        seconds=result.seconds,
        notes=[
            f"workflow p50 {p50:.2f} s, p95 {p95:.2f} s",
            f"{requests:.2f} requests/span, {writes:.2f} writes/span",
            f"stuck {stored['running']}, reopened {reopened}",
            f"{result.cross_worker_pairs} START/END on different workers",
        ],
        extra={
            "workers": workers,
            "workflows": result.traces,
            "workflow_p50_s": p50,
            "workflow_p95_s": p95,
            "requests_per_span": requests,
            "writes_per_span": writes,
            "stuck": stored["running"],
            "missing": stored["missing"],
            "reopened": reopened,
            "cross_worker_pairs": result.cross_worker_pairs,
        },
    )


def _unavailable(reason: str) -> Row:
    return Row(
        scenario="temporal-fleet",
        system="agentex-sdk",
        backend="-",
        spans=0,
        delivered=None,
        spans_per_s=None,
        notes=[reason],
        extra={"unavailable": True},
    )
