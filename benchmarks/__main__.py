"""``python -m benchmarks``: every scenario, ours on asyncio and trio, the peers alongside.

    python -m benchmarks [--quick] [--json PATH] [--scenario NAME ...] [--no-peers]

Starts the local SGP server and the OTLP sink on loopback (each its own process), runs the
scenarios (`benchmarks.scenarios`), prints one table with ratios to the peers measured in
this run, and the machine line. ``--json`` writes the rows as a JSON list, and the `wan`
chart (spans/s against server latency) as a PNG next to it. Progress goes to stderr. The
exit status is 1 when one of our rows did not deliver every span (or a scenario failed), so
CI can run ``--quick`` as a check.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from benchmarks._chart import chart_wan
from benchmarks._common import (
    BACKENDS,
    FULL,
    OURS,
    QUICK,
    Bench,
    Row,
    Sizes,
    machine_line,
    open_bench,
)
from benchmarks._table import add_ratios, format_table
from benchmarks.scenarios import SCENARIOS, load

__all__ = ["collect", "main"]


def collect(
    names: Sequence[str],
    sizes: Sizes,
    *,
    backends: tuple[str, ...] = BACKENDS,
    with_peers: bool = True,
    quiet: bool = False,
) -> list[Row]:
    """Run the named scenarios and return their rows, ratios filled in."""
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown:
        raise ValueError(f"unknown scenarios {unknown}; known: {list(SCENARIOS)}")
    rows: list[Row] = []
    with open_bench(sizes, backends=backends, with_peers=with_peers, quiet=quiet) as bench:
        for name in names:
            rows.extend(_run_one(bench, name))
    add_ratios(rows)
    return rows


def _run_one(bench: Bench, name: str) -> list[Row]:
    bench.reset_server()
    try:
        return load(name)(bench)
    except Exception as exc:
        # One broken scenario must not cost the rows of all the others.
        bench.progress(f"{name}: FAILED\n{traceback.format_exc()}")
        return [
            Row(
                scenario=name,
                system=OURS,
                backend="-",
                spans=0,
                delivered=None,
                spans_per_s=None,
                notes=[f"FAILED: {type(exc).__name__}: {exc}"],
                extra={"failed": True},
            )
        ]


_LEGEND = """\
delivered: counted where spans land (completed rows at the SGP server, distinct spans at
  the OTLP sink).
hot µs/span: hot-path rows, the median producer cost of one span with the exporter running;
  other rows, the producer loop's time per span, its per-span yield included (the sending
  work that runs during that yield is counted too, so it is an upper bound).
ratio: x times better than the peer in the same scenario (spans/s, or µs for hot-path).
cpu µs/span: time.process_time of the client process (every thread) per delivered span, from
  the first span to the end of the flush (peers: to the end of their shutdown); cpu vs: the
  peer's divided by ours.
wan-<ms>ms: the server answers every request that late; peers run fewer spans, time-capped
  (see the row's notes)."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smaller sizes (burst stays 20,000, wan 100,000): about 6 min on 2 cores",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the rows here")
    parser.add_argument(
        "--scenario",
        action="append",
        choices=list(SCENARIOS),
        metavar="NAME",
        help=f"run only this scenario (repeatable): {', '.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--backend", action="append", choices=list(BACKENDS), help="ours on this backend only"
    )
    parser.add_argument("--no-peers", action="store_true", help="skip the peer systems")
    args = parser.parse_args(argv)

    sizes = QUICK if args.quick else FULL
    names = args.scenario or list(SCENARIOS)
    backends = tuple(args.backend) if args.backend else BACKENDS
    began = time.monotonic()
    rows = collect(names, sizes, backends=backends, with_peers=not args.no_peers)
    elapsed = time.monotonic() - began

    print(format_table(rows))
    print()
    print(_LEGEND)
    print(machine_line())
    print(
        f"run: {'--quick' if args.quick else 'full'}, {elapsed:.0f} s; ratios above 1 favour "
        f"{OURS}; compare ratios within one run (shared, noisy machine)"
    )
    if args.json is not None:
        args.json.write_text(json.dumps([row.to_dict() for row in rows], indent=2) + "\n")
        print(f"JSON written to {args.json}")
        png = args.json.with_name(args.json.stem + "-wan.png")
        try:
            print(chart_wan(rows, png))
        except Exception as exc:  # a broken chart must not fail a finished run
            print(f"chart failed: {type(exc).__name__}: {exc}", file=sys.stderr)

    incomplete = [
        row for row in rows if row.system == OURS and (not row.complete or row.extra.get("failed"))
    ]
    for row in incomplete:
        print(
            f"NOT COMPLETE: {row.scenario} {row.system}/{row.backend}: "
            f"{row.delivered}/{row.spans} ({'; '.join(row.notes)})",
            file=sys.stderr,
        )
    return 1 if incomplete else 0


if __name__ == "__main__":
    sys.exit(main())
