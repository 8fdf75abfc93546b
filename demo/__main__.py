"""``python -m demo``: agent-run workflows on a Temporal fleet, traced into SGP.

It starts Temporal's dev server (in memory, free loopback ports), the local SGP-compatible
server in legacy-store mode (SGP's legacy store keeps the last write of a span id, so a late
in-progress write reopens a completed span: the strictest case), and worker processes on one
task queue with eager activity execution off, so every span start and end activity may run on
any worker. Then it reads back what SGP stored. With ``--remote`` it sends to real SGP
(``SGP_API_KEY``, ``SGP_ACCOUNT_ID``, ``SGP_CLIENT_BASE_URL`` from the environment) instead of
the local server. ``--stateful`` runs the same fleet with the old per-process-dict processor
to show what that design loses. Every process it starts is stopped by its PID, on Ctrl-C,
SIGTERM and errors too.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from sgp_client import AsyncSGPClient

from .devserver import TemporalDevServer
from .fleet import read_back
from .temporal_fleet import TemporalFleetResult, run_temporal_fleet
from .workflows import SPANS_PER_RUN


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__)
    parser.add_argument("--workers", type=int, default=4, help="worker processes (default 4)")
    parser.add_argument(
        "--runs", type=int, default=100, help=f"workflows, {SPANS_PER_RUN} spans each (default 100)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=50, help="workflows at once (default 50)"
    )
    parser.add_argument(
        "--stateful", action="store_true", help="use the old per-process-dict processor"
    )
    parser.add_argument(
        "--no-starts", action="store_true", help="send_starts=False: write only span ends"
    )
    parser.add_argument(
        "--remote",
        action="store_true",
        help="send to real SGP (needs SGP_API_KEY and SGP_ACCOUNT_ID in the environment)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress display")
    args = parser.parse_args(argv)
    for name in ("workers", "runs", "concurrency"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.remote:
        missing = [v for v in ("SGP_API_KEY", "SGP_ACCOUNT_ID") if not os.environ.get(v)]
        if missing:
            print(f"--remote needs {' and '.join(missing)} in the environment", file=sys.stderr)
            return 2
        with TemporalDevServer() as temporal:
            return _run(args, temporal, env={}, where="SGP at " + _remote_url(), server=None)
    from sgp_client.testing import ServerProcess

    with (
        tempfile.TemporaryDirectory(prefix="sgp-demo-") as tmp,
        TemporalDevServer() as temporal,
        ServerProcess(db=str(Path(tmp) / "spans.sqlite3"), store="legacy") as server,
    ):
        env = {
            "SGP_API_KEY": server.api_key,
            "SGP_ACCOUNT_ID": server.account_id,
            "SGP_CLIENT_BASE_URL": server.base_url,
        }
        where = f"local SGP server at {server.base_url} (SQLite, legacy store)"
        return _run(args, temporal, env=env, where=where, server=server)


def _remote_url() -> str:
    return os.environ.get("SGP_CLIENT_BASE_URL") or "the production environment"


def _run(
    args: argparse.Namespace,
    temporal: TemporalDevServer,
    *,
    env: dict[str, str],
    where: str,
    server: Any,
) -> int:
    if args.stateful:
        design = "old per-process-dict processor (--stateful)"
    else:
        design = "sgp_tracing.temporal" + (" (send_starts=False)" if args.no_starts else "")
    print(
        f"SGP tracing demo: {args.workers} Temporal workers, {args.runs} agent-run workflows "
        f"x {SPANS_PER_RUN} spans, {design}\n  -> Temporal dev server at {temporal.address}"
        f"\n  -> {where}",
        flush=True,
    )

    async def go() -> tuple[TemporalFleetResult, dict[str, int]]:
        # SIGTERM like Ctrl-C: cancel, so every process started is stopped on the way out.
        main_task = asyncio.current_task()
        assert main_task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
        result = await run_temporal_fleet(
            temporal_address=temporal.address,
            workers=args.workers,
            runs=args.runs,
            env=env,
            stateful=args.stateful,
            send_starts=not args.no_starts,
            concurrency=args.concurrency,
            progress=not args.no_progress,
        )
        async with AsyncSGPClient(
            api_key=env.get("SGP_API_KEY"),
            account_id=env.get("SGP_ACCOUNT_ID"),
            base_url=env.get("SGP_CLIENT_BASE_URL"),
        ) as client:
            stored = await read_back(client, result)
        return result, stored

    try:
        result, stored = asyncio.run(go())
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("\ninterrupted: every process the demo started was stopped", file=sys.stderr)
        return 130
    reopened = None if server is None else int(server.stats().get("reopened", 0))
    _print_report(result, stored, reopened, stateful=args.stateful)
    lost = stored["running"] + stored["missing"] + (reopened or 0)
    return 0 if args.stateful or lost == 0 else 1


def _print_report(
    result: TemporalFleetResult, stored: dict[str, int], reopened: int | None, *, stateful: bool
) -> None:
    reports = result.worker_reports
    dropped: dict[str, int] = {}
    for report in reports:
        for reason, count in report["queue"]["dropped"].items():
            dropped[reason] = dropped.get(reason, 0) + count
        for reason, count in report.get("processor_dropped", {}).items():
            dropped[f"processor:{reason}"] = dropped.get(f"processor:{reason}", 0) + count
    dropped_text = ", ".join(f"{k}={v}" for k, v in sorted(dropped.items())) or "none"
    spans = max(stored["expected"], 1)
    rows: list[tuple[str, str]] = [
        ("traces (workflows)", f"{result.traces:,}"),
        ("spans", f"{stored['expected']:,}"),
        ("completed on the server", f"{stored['completed']:,}"),
        ('stuck "Running"', f"{stored['running']:,}"),
        ("missing on the server", f"{stored['missing']:,}"),
        (
            "reopened (in-progress after completed)",
            "n/a (real SGP)" if reopened is None else f"{reopened:,}",
        ),
        ("START/END on different workers", f"{result.cross_worker_pairs:,}"),
        ("dropped", f"{sum(dropped.values()):,} ({dropped_text})"),
        ("writes per span", f"{result.queue_total('delivered') / spans:.2f}"),
        ("upsert requests per span", f"{result.queue_total('requests') / spans:.2f}"),
        (
            "queue accounting balanced",
            "yes" if all(r["queue"]["balanced"] for r in reports) else "NO",
        ),
        (
            "workflow wall time p50 / p95",
            f"{result.wall_time(0.5):.2f} s / {result.wall_time(0.95):.2f} s",
        ),
        ("fleet wall time", f"{result.seconds:.1f} s"),
    ]
    if stateful:
        rows.append(
            (
                "ends lost (start on another worker)",
                f"{sum(r.get('lost_ends', 0) for r in reports):,}",
            )
        )
        rows.append(
            (
                "leaked open-span dict entries",
                f"{sum(r.get('leaked_open_spans', 0) for r in reports):,}",
            )
        )
    width = max(len(label) for label, _ in rows)
    print()
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")
    print()
    never = stored["running"] + stored["missing"]
    if never:
        print(f"  {never:,} spans never completed on the server.")
    elif reopened:
        print(f"  {reopened:,} completed spans were reopened by a late in-progress write.")
    else:
        print("  Every span started was completed on the server, wherever its end ran.")


if __name__ == "__main__":
    sys.exit(main())
