"""Shared plumbing for the peer runners: result types and the child-process driver.

Both peers keep process-wide state (scale-gp-beta a global queue manager, OpenTelemetry a
global tracer provider and atexit hooks), so every peer workload runs in a fresh child
process. The child prints one JSON line; the parent meanwhile polls the receiving server's
count, so the delivery time is measured where the spans land, not where they are produced.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "HotPathResult",
    "PeerResult",
    "PeerUnavailable",
    "drive_child",
    "require",
]

# The project root, so `python -m benchmarks.peers.<peer>` works whatever the caller's cwd.
_PROJECT_ROOT = Path(__file__).resolve().parents[2]

# Exit status a child uses when its peer package cannot be imported.
EXIT_UNAVAILABLE = 3


class PeerUnavailable(RuntimeError):
    """A peer package is not importable; the caller should skip that peer's scenarios."""

    def __init__(self, peer: str, detail: str = "") -> None:
        self.peer = peer
        message = (
            f"peer {peer!r} is not available ({detail or 'import failed'}); "
            "install the benchmark extra: pip install '.[bench]'"
        )
        super().__init__(message)


@dataclass(frozen=True, kw_only=True)
class PeerResult:
    """What one peer workload achieved.

    `delivered` is counted by the receiving server (growth of `count_delivered()` over its
    value before the run). `seconds` runs from the first span start to the last observed
    growth of that count. `dropped` is what the peer itself admits to dropping (queue-full
    events), which may differ from `spans - delivered`.
    """

    system: str
    scenario: str
    spans: int
    submitted: int
    delivered: int
    seconds: float
    spans_per_s: float
    dropped: int
    producer_seconds: float
    producer_us_per_span: float
    timed_out: bool = False
    # `time.process_time()` of the child from its first span to the end of its shutdown
    # (None when it reported nothing).
    cpu_seconds: float | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def lost(self) -> int:
        """Spans the server never saw."""
        return max(0, self.spans - self.delivered)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict, `lost` included."""
        return {
            "system": self.system,
            "scenario": self.scenario,
            "spans": self.spans,
            "submitted": self.submitted,
            "delivered": self.delivered,
            "lost": self.lost,
            "seconds": self.seconds,
            "spans_per_s": self.spans_per_s,
            "dropped": self.dropped,
            "producer_seconds": self.producer_seconds,
            "producer_us_per_span": self.producer_us_per_span,
            "timed_out": self.timed_out,
            "cpu_seconds": self.cpu_seconds,
            "notes": list(self.notes),
        }


@dataclass(frozen=True, kw_only=True)
class HotPathResult:
    """Producer cost of one span (start + end with small input/output), in microseconds."""

    system: str
    samples: int
    median_us: float
    p90_us: float
    p99_us: float
    mean_us: float


def require(module: str, peer: str) -> None:
    """Raise `PeerUnavailable` unless `module` imports in this interpreter."""
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise PeerUnavailable(peer, f"cannot import {module}: {exc}") from exc


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    root = str(_PROJECT_ROOT)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    # A peer's own kill switch in the caller's environment would silently measure nothing.
    env.pop("DISABLE_SCALE_TRACING", None)
    env.pop("OTEL_SDK_DISABLED", None)
    if extra:
        env.update(extra)
    return env


@dataclass(frozen=True, kw_only=True)
class ChildRun:
    """The child's JSON report, plus what the parent observed at the server."""

    report: dict[str, Any]
    delivered: int
    last_growth: float | None  # time.time() of the last observed growth of the count
    timed_out: bool
    launched: float  # time.time() when the child was started (a t0 if it never reported)


def drive_child(
    module: str,
    args: Sequence[str],
    *,
    peer: str,
    env: Mapping[str, str] | None = None,
    count_delivered: Callable[[], int] | None = None,
    expected: int = 0,
    timeout: float = 300.0,
    settle: float = 0.5,
    poll_interval: float = 0.02,
) -> ChildRun:
    """Run `python -m module *args`, polling `count_delivered` while it runs.

    Polling stops when the count reaches `expected`, or the child has exited and the count
    has not grown for `settle` seconds, or `timeout` passes (then the child is killed).
    """
    baseline = count_delivered() if count_delivered is not None else 0
    delivered = 0
    last_growth: float | None = None
    timed_out = False
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        launched = time.time()
        proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            env=child_env(env),
        )
        started = time.monotonic()
        deadline = started + timeout
        exited_at: float | None = None
        last_growth_mono = started
        try:
            while True:
                now_wall = time.time()
                now = time.monotonic()
                if count_delivered is not None:
                    current = count_delivered() - baseline
                    if current > delivered:
                        delivered = current
                        last_growth = now_wall
                        last_growth_mono = now
                if exited_at is None and proc.poll() is not None:
                    exited_at = now
                if exited_at is not None and (
                    count_delivered is None
                    or delivered >= expected
                    or now - max(exited_at, last_growth_mono) >= settle
                ):
                    break
                if now > deadline:
                    timed_out = True
                    break
                time.sleep(poll_interval)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode("utf-8", "replace")
        stderr = err.read().decode("utf-8", "replace")
    if proc.returncode == EXIT_UNAVAILABLE:
        raise PeerUnavailable(peer, stderr.strip().splitlines()[-1] if stderr.strip() else "")
    report = _last_json_line(stdout)
    if report is None:
        if timed_out:
            report = {}
        else:
            tail = "\n".join(stderr.strip().splitlines()[-20:])
            raise RuntimeError(
                f"{module} exited with status {proc.returncode} and no report:\n{tail}"
            )
    return ChildRun(
        report=report,
        delivered=delivered,
        last_growth=last_growth,
        timed_out=timed_out,
        launched=launched,
    )


def _last_json_line(text: str) -> dict[str, Any] | None:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
    return None


def burst_result(
    *,
    system: str,
    scenario: str,
    spans: int,
    run: ChildRun,
    notes: Sequence[str] = (),
) -> PeerResult:
    """Turn a child's burst report and the parent's observations into a `PeerResult`."""
    report = run.report
    t0 = float(report.get("t0", run.launched))
    producer_seconds = float(report.get("producer_seconds", 0.0))
    if run.delivered and run.last_growth is not None and t0:
        seconds = max(run.last_growth - t0, 1e-9)
    else:
        seconds = producer_seconds
    all_notes = [*notes, *report.get("notes", [])]
    if run.timed_out:
        all_notes.append("timed out: the child was killed before delivery finished")
    if "t0" not in report:
        all_notes.append("no report from the child: time counted from its launch")
    return PeerResult(
        system=system,
        scenario=scenario,
        spans=spans,
        submitted=int(report.get("submitted", 0)),
        delivered=run.delivered,
        seconds=seconds,
        spans_per_s=run.delivered / seconds if seconds > 0 else 0.0,
        dropped=int(report.get("dropped", 0)),
        producer_seconds=producer_seconds,
        producer_us_per_span=producer_seconds / spans * 1e6 if spans else 0.0,
        timed_out=run.timed_out,
        cpu_seconds=float(report["cpu_seconds"]) if "cpu_seconds" in report else None,
        notes=tuple(all_notes),
    )


def hot_path_result(system: str, run: ChildRun) -> HotPathResult:
    report = run.report
    if "median_us" not in report:
        raise RuntimeError(f"{system} hot path produced no measurement: {report!r}")
    return HotPathResult(
        system=system,
        samples=int(report["samples"]),
        median_us=float(report["median_us"]),
        p90_us=float(report["p90_us"]),
        p99_us=float(report["p99_us"]),
        mean_us=float(report["mean_us"]),
    )


def summarize_ns(samples_ns: Sequence[int]) -> dict[str, float]:
    """Median, p90, p99 and mean of nanosecond samples, in microseconds."""
    ordered = sorted(samples_ns)
    n = len(ordered)

    def pct(q: float) -> float:
        return ordered[min(n - 1, int(q * n))] / 1000.0

    return {
        "samples": float(n),
        "median_us": pct(0.5),
        "p90_us": pct(0.9),
        "p99_us": pct(0.99),
        "mean_us": sum(ordered) / n / 1000.0,
    }


def emit(report: Mapping[str, Any]) -> None:
    """Print the child's one JSON line and make sure it leaves the process."""
    sys.stdout.write(json.dumps(dict(report)) + "\n")
    sys.stdout.flush()
