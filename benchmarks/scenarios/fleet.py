"""fleet: 4 worker processes, each span started on one and ended on another at random.

The demo's coordinator (`demo.fleet.run_fleet`) plays the workflow engine: it routes every
start and every end to a randomly chosen worker, which runs its own `UpsertQueue` against
the local server; `demo.fleet.read_back` then searches the server for every span. Delivered
counts completed spans; stuck counts spans stored but still "Running". spans/s is spans
over the whole run, worker start-up and drain included.
"""

from __future__ import annotations

import anyio

from benchmarks._common import OURS, Bench, Row
from demo.fleet import FleetResult, read_back, run_fleet

__all__ = ["run"]


def run(bench: Bench) -> list[Row]:
    return [_ours(bench, backend) for backend in bench.backends]


def _ours(bench: Bench, backend: str) -> Row:
    sizes = bench.sizes
    bench.progress(
        f"fleet {OURS}/{backend} {sizes.fleet_workers} workers, {sizes.fleet_runs} agent runs ..."
    )
    server = bench.server
    env = {
        "SGP_API_KEY": server.api_key,
        "SGP_ACCOUNT_ID": server.account_id,
        "SGP_CLIENT_BASE_URL": server.base_url,
    }

    async def main() -> tuple[FleetResult, dict[str, int]]:
        result = await run_fleet(
            workers=sizes.fleet_workers,
            runs=sizes.fleet_runs,
            concurrency=32,
            backend=backend,
            stateful=False,
            env=env,
            seed=7,
            progress=False,
        )
        async with bench.client() as client:
            stored = await read_back(client, result)
        return result, stored

    result, stored = anyio.run(main, backend=backend)
    reopened = int(bench.server.stats()["reopened"])  # the bench server is the legacy store
    bench.reset_server()
    spans = stored["expected"]
    dropped: dict[str, int] = {}
    for report in result.worker_reports:
        for reason, count in report["queue"]["dropped"].items():
            dropped[reason] = dropped.get(reason, 0) + int(count)
    notes = [
        f"stuck {stored['running']}, missing {stored['missing']}, reopened {reopened}",
        f"{result.cross_worker_ends:,} ends on another worker",
    ]
    if any(dropped.values()):
        notes.append("dropped " + ", ".join(f"{k}={v}" for k, v in sorted(dropped.items())))
    bench.progress(f"fleet {OURS}/{backend}: {stored['completed']:,}/{spans:,} completed")
    return Row(
        scenario="fleet",
        system=OURS,
        backend=backend,
        spans=spans,
        delivered=stored["completed"],
        spans_per_s=spans / result.seconds if result.seconds > 0 else None,
        seconds=result.seconds,
        notes=notes,
        extra={
            "workers": sizes.fleet_workers,
            "agent_runs": result.traces,
            "stuck": stored["running"],
            "missing": stored["missing"],
            "reopened": reopened,
            "cross_worker_ends": result.cross_worker_ends,
            "dropped": dropped,
            "balanced": all(r["queue"]["balanced"] for r in result.worker_reports),
        },
    )
