"""Smoke tests of the benchmark harness (``python -m benchmarks``) in a tiny configuration.

A 500-span burst on both backends against the local server in a subprocess: every span
delivered, rows in the JSON schema, the table renders. Peers are left out (their runners
have their own tests in test_bench_peers.py). Nothing here asserts a speed.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.__main__ import collect
from benchmarks._chart import chart_wan
from benchmarks._common import OTEL, OURS, QUICK, SCALE_GP, Row
from benchmarks._table import CPU_RATIO_KEYS, RATIO_KEYS, add_ratios, format_table
from benchmarks.scenarios.burst import median_run

pytest.importorskip("sgp_client.testing")

REQUIRED_KEYS = {
    "system",
    "backend",
    "scenario",
    "spans",
    "delivered",
    "spans_per_s",
    "hot_us_per_span",
}


def test_tiny_burst_delivers_every_span_on_both_backends() -> None:
    sizes = dataclasses.replace(QUICK, burst_spans=500)

    rows = collect(["burst"], sizes, with_peers=False, quiet=True)

    ours = [row for row in rows if row.system == OURS]
    # Every producer (the tracer, SpanItems into the queue, submit_record) on both backends.
    assert sorted((row.scenario, row.backend, row.extra["producer"]) for row in ours) == [
        ("burst", "asyncio", "tracer"),
        ("burst", "trio", "tracer"),
        ("burst-items", "asyncio", "items"),
        ("burst-items", "trio", "items"),
        ("burst-prepared", "asyncio", "prepared"),
        ("burst-prepared", "trio", "prepared"),
    ]
    for row in ours:
        assert row.spans == 500
        assert row.delivered == 500
        assert row.spans_per_s is not None
        assert row.spans_per_s > 0
        assert row.extra["balanced"] is True
        assert row.extra["dropped"] == {}
    data = json.loads(json.dumps([row.to_dict() for row in rows]))
    for obj in data:
        assert obj.keys() >= REQUIRED_KEYS
    # Peers were not requested: they appear as skipped rows, never as silent gaps.
    skipped = [obj for obj in data if obj["system"] != OURS]
    assert {obj["system"] for obj in skipped} == {SCALE_GP, OTEL}
    assert all(obj["skipped"] and obj["backend"] == "thread" for obj in skipped)
    assert "burst" in format_table(rows)


def test_tiny_wan_scenario_rows_and_chart(tmp_path: Path) -> None:
    sizes = dataclasses.replace(QUICK, wan_spans=500, wan_runs=1, wan_latencies=(0.0, 0.05))

    rows = collect(["wan"], sizes, with_peers=False, quiet=True)

    ours = [row for row in rows if row.system == OURS]
    # Per latency: adaptive on both backends, then the old fixed default on the first.
    assert [(r.scenario, r.backend, r.extra["max_in_flight"]) for r in ours] == [
        ("wan-0ms", "asyncio", "adaptive"),
        ("wan-0ms", "trio", "adaptive"),
        ("wan-0ms", "asyncio", 8),
        ("wan-50ms", "asyncio", "adaptive"),
        ("wan-50ms", "trio", "adaptive"),
        ("wan-50ms", "asyncio", 8),
    ]
    for row in ours:
        assert row.delivered == 500
        assert row.extra["balanced"] is True
        assert row.cpu_us_per_span is not None
        assert row.cpu_us_per_span > 0
    assert {row.extra["latency_s"] for row in ours} == {0.0, 0.05}
    # Peers not requested and agentex (Python >= 3.12 only) appear as skipped rows.
    others = [row for row in rows if row.system != OURS]
    assert all(row.extra.get("skipped") for row in others)
    assert {row.system for row in others} == {SCALE_GP, OTEL, "sgp_async via agentex"}
    assert "cpu µs/span" in format_table(rows)
    png = tmp_path / "wan.png"
    message = chart_wan(rows, png)
    if "not installed" not in message:
        assert png.stat().st_size > 0


def _row(
    system: str,
    scenario: str,
    *,
    rate: float | None,
    hot: float | None = None,
    cpu: float | None = None,
) -> Row:
    return Row(
        scenario=scenario,
        system=system,
        backend="asyncio" if system == OURS else "thread",
        spans=10,
        delivered=10,
        spans_per_s=rate,
        hot_us_per_span=hot,
        cpu_us_per_span=cpu,
    )


def test_ratios_favour_ours_above_one() -> None:
    rows = [
        _row(OURS, "burst", rate=300.0, cpu=15.0),
        _row(SCALE_GP, "burst", rate=100.0, cpu=300.0),
        _row(OURS, "hot-path", rate=None, hot=10.0),
        _row(OTEL, "hot-path", rate=None, hot=20.0),
    ]

    add_ratios(rows)

    assert rows[0].extra[RATIO_KEYS[SCALE_GP]] == pytest.approx(3.0)
    assert rows[0].extra[RATIO_KEYS[OTEL]] is None  # no such peer row in this run
    assert rows[0].extra[CPU_RATIO_KEYS[SCALE_GP]] == pytest.approx(20.0)
    assert rows[2].extra[RATIO_KEYS[OTEL]] == pytest.approx(2.0)
    assert rows[2].extra[CPU_RATIO_KEYS[OTEL]] is None  # no CPU measured there
    table = format_table(rows)
    assert "3.00x" in table
    assert "20.00x" in table


def test_median_run_reports_the_median_but_never_hides_a_loss() -> None:
    def rows(*runs: tuple[float, int]) -> Iterator[Row]:
        for spans_per_s, delivered in runs:
            yield Row(
                scenario="burst",
                system=OURS,
                backend="asyncio",
                spans=100,
                delivered=delivered,
                spans_per_s=spans_per_s,
            )

    complete = rows((300.0, 100), (100.0, 100), (200.0, 100))
    median = median_run(3, lambda: next(complete))
    assert (median.spans_per_s, median.extra["runs_spans_per_s"]) == (200.0, [300, 100, 200])
    assert median.notes[0] == "median of 300, 100, 200 spans/s"

    lossy = rows((300.0, 100), (100.0, 90), (200.0, 95))
    worst = median_run(3, lambda: next(lossy))
    assert (worst.spans_per_s, worst.delivered) == (100.0, 90)
    assert worst.notes[0].startswith("worst of")
