"""``python -m demo``: run the fleet demo and print what reached SGP.

Without SGP credentials (or without ``--remote``) it starts the local SGP-compatible server
(SQLite) in a subprocess. ``--stateful`` runs the same fleet with the old per-process-dict
processor to show what that design loses.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import anyio

from sgp_client import AsyncSGPClient

from .fleet import FleetResult, read_back, run_fleet


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__)
    parser.add_argument("--workers", type=int, default=4, help="worker processes (default 4)")
    parser.add_argument("--runs", type=int, default=200, help="agent runs (default 200)")
    parser.add_argument("--concurrency", type=int, default=32, help="runs at once (default 32)")
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--stateful", action="store_true", help="use the old per-process-dict processor"
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
        return _run(args, env={}, where="SGP at " + _remote_url())
    from sgp_client.testing import ServerProcess

    with tempfile.TemporaryDirectory(prefix="sgp-demo-") as tmp:
        db = Path(tmp) / "spans.sqlite3"
        with ServerProcess(db=str(db)) as server:
            env = {
                "SGP_API_KEY": server.api_key,
                "SGP_ACCOUNT_ID": server.account_id,
                "SGP_CLIENT_BASE_URL": server.base_url,
            }
            return _run(args, env=env, where=f"local SGP server at {server.base_url} (SQLite)")


def _remote_url() -> str:
    return os.environ.get("SGP_CLIENT_BASE_URL") or "the production environment"


def _run(args: argparse.Namespace, *, env: dict[str, str], where: str) -> int:
    design = "old per-process-dict processor (--stateful)" if args.stateful else "stateless"
    print(
        f"SGP tracing demo: {args.workers} worker processes, {args.runs} agent runs, "
        f"{design} design, {args.backend}\n  -> {where}",
        flush=True,
    )

    async def go() -> tuple[FleetResult, dict[str, int]]:
        result = await run_fleet(
            workers=args.workers,
            runs=args.runs,
            concurrency=args.concurrency,
            backend=args.backend,
            stateful=args.stateful,
            env=env,
            seed=args.seed,
            progress=not args.no_progress,
        )
        async with AsyncSGPClient(
            api_key=env.get("SGP_API_KEY"),
            account_id=env.get("SGP_ACCOUNT_ID"),
            base_url=env.get("SGP_CLIENT_BASE_URL"),
        ) as client:
            stored = await read_back(client, result)
        return result, stored

    result, stored = anyio.run(go, backend=args.backend)
    _print_report(result, stored, stateful=args.stateful)
    lost = stored["running"] + stored["missing"]
    return 0 if args.stateful or lost == 0 else 1


def _sum(reports: list[dict[str, Any]], key: str) -> int:
    return sum(int(report["queue"][key]) for report in reports)


def _print_report(result: FleetResult, stored: dict[str, int], *, stateful: bool) -> None:
    reports = result.worker_reports
    dropped: dict[str, int] = {}
    for report in reports:
        for reason, count in report["queue"]["dropped"].items():
            dropped[reason] = dropped.get(reason, 0) + count
        for reason, count in report.get("processor_dropped", {}).items():
            dropped[f"processor:{reason}"] = dropped.get(f"processor:{reason}", 0) + count
    dropped_text = ", ".join(f"{k}={v}" for k, v in sorted(dropped.items())) or "none"
    rows: list[tuple[str, str]] = [
        ("traces (agent runs)", f"{result.traces:,}"),
        ("spans", f"{stored['expected']:,}"),
        ("completed on the server", f"{stored['completed']:,}"),
        ('stuck "Running"', f"{stored['running']:,}"),
        ("missing on the server", f"{stored['missing']:,}"),
        ("ends run on another worker", f"{result.cross_worker_ends:,}"),
        ("dropped", f"{sum(dropped.values()):,} ({dropped_text})"),
        ("upsert requests", f"{_sum(reports, 'requests'):,}"),
        ("coalesced writes", f"{_sum(reports, 'coalesced'):,} (start and end sent as one)"),
        (
            "queue accounting balanced",
            "yes" if all(r["queue"]["balanced"] for r in reports) else "NO",
        ),
        ("spans/s (start to drained)", f"{stored['expected'] / max(result.seconds, 1e-9):,.0f}"),
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
    if stored["running"] or stored["missing"]:
        print(f"  {stored['running'] + stored['missing']:,} spans never completed on the server.")
    else:
        print("  Every span started was completed on the server, wherever its end ran.")


if __name__ == "__main__":
    sys.exit(main())
