"""The peers' side of the scenarios: run a peer workload, turn its result into a `Row`.

A peer that is not installed yields a "skipped" row saying why (`PeerUnavailable`), so the
table shows the gap instead of hiding it. Delivery is counted where the spans land: completed
rows of the run's trace at the local SGP server for scale-gp-beta, distinct spans at the OTLP
sink for OpenTelemetry.
"""

from __future__ import annotations

from benchmarks import peers
from benchmarks._common import OTEL, SCALE_GP, Bench, Row, new_trace_id
from benchmarks.peers import HotPathResult, PeerResult, PeerUnavailable

__all__ = ["PEER_BACKEND", "peer_burst", "peer_hot_path", "skipped"]

#: Both peers send from a worker thread.
PEER_BACKEND = "thread"


def skipped(bench: Bench, scenario: str, system: str, spans: int, reason: str) -> Row:
    bench.progress(f"{scenario} {system}: skipped ({reason})")
    return Row(
        scenario=scenario,
        system=system,
        backend=PEER_BACKEND,
        spans=spans,
        delivered=None,
        spans_per_s=None,
        notes=[f"skipped: {reason}"],
        extra={"skipped": True},
    )


def peer_burst(
    bench: Bench,
    system: str,
    spans: int,
    *,
    scenario: str,
    yield_per_span: bool = True,
    faults: bool = False,
    notes: list[str] | None = None,
    timeout: float | None = None,
) -> Row:
    """`spans` spans through peer `system` in a child process (faults: every 2nd request 503
    with ``Retry-After: 1``)."""
    reason = bench.peer_unavailable(system)
    if reason is not None:
        return skipped(bench, scenario, system, spans, reason)
    mode = "time.sleep(0) per span" if yield_per_span else "no yield"
    bench.progress(f"{scenario} {system}/{PEER_BACKEND} {spans:,} spans ({mode}) ...")
    timeout = bench.sizes.peer_timeout if timeout is None else timeout
    try:
        if system == SCALE_GP:
            trace_id = new_trace_id()
            server = bench.server
            if faults:
                server.set_faults(status_code=503, status_every_n=2, retry_after="1")
            try:
                result = peers.run_scale_gp_burst(
                    server.base_url,
                    server.api_key,
                    server.account_id,
                    spans,
                    count_delivered=lambda: bench.completed_polled(trace_id),
                    timeout=timeout,
                    yield_per_span=yield_per_span,
                    scenario=scenario,
                    trace_id=trace_id,
                )
            finally:
                if faults:
                    server.clear_faults()
            # The exact count once the run is over (polling is rate-limited).
            delivered = max(result.delivered, bench.completed(trace_id))
        else:
            sink = bench.sink
            assert sink is not None
            sink.reset()
            if faults:
                result = peers.run_otel_faults(
                    sink, spans, every=2, retry_after=1.0, timeout=timeout,
                    yield_per_span=yield_per_span,
                )  # fmt: skip
            else:
                result = peers.run_otel_burst(
                    sink.traces_endpoint,
                    spans,
                    count_delivered=sink.count,
                    timeout=timeout,
                    yield_per_span=yield_per_span,
                    scenario=scenario,
                )
            delivered = max(result.delivered, sink.count())
    except PeerUnavailable as exc:
        return skipped(bench, scenario, system, spans, str(exc))
    row = _row(result, scenario, delivered, [mode, *(notes or [])])
    bench.progress(
        f"{scenario} {system}/{PEER_BACKEND}: {delivered:,}/{spans:,} delivered, "
        f"{row.spans_per_s or 0:,.0f} spans/s ({result.seconds:.2f} s)"
    )
    return row


def _row(result: PeerResult, scenario: str, delivered: int, notes: list[str]) -> Row:
    seconds = result.seconds
    lost = max(0, result.spans - delivered)
    all_notes = list(notes)
    if lost:
        all_notes.append(f"LOST {lost:,} ({lost / result.spans:.0%})")
    if result.dropped:
        all_notes.append(f"peer admits dropping {result.dropped:,} events")
    all_notes.extend(result.notes)
    return Row(
        scenario=scenario,
        system=result.system,
        backend=PEER_BACKEND,
        spans=result.spans,
        delivered=delivered,
        spans_per_s=delivered / seconds if seconds > 0 else None,
        # The peer's producer loop per span (its sleep(0), when on, included).
        hot_us_per_span=result.producer_us_per_span,
        seconds=seconds,
        cpu_us_per_span=(
            result.cpu_seconds / delivered * 1e6 if result.cpu_seconds and delivered else None
        ),
        notes=all_notes,
        extra={
            "submitted": result.submitted,
            "lost": lost,
            "peer_dropped": result.dropped,
            "producer_seconds": result.producer_seconds,
            "timed_out": result.timed_out,
            "cpu_seconds": result.cpu_seconds,
        },
    )


def peer_hot_path(bench: Bench, system: str, samples: int, round_size: int) -> Row:
    """Median producer µs of one span start+end through peer `system`, its exporter running."""
    scenario = "hot-path"
    reason = bench.peer_unavailable(system)
    if reason is not None:
        return skipped(bench, scenario, system, samples, reason)
    bench.progress(f"{scenario} {system}/{PEER_BACKEND} {samples:,} samples ...")
    timeout = bench.sizes.peer_timeout
    server = bench.server
    try:
        result: HotPathResult
        if system == SCALE_GP:
            result = peers.scale_gp_hot_path(
                server.base_url, server.api_key, server.account_id,
                samples=samples, round_size=round_size, timeout=timeout,
            )  # fmt: skip
        else:
            assert system == OTEL
            assert bench.sink is not None
            result = peers.otel_hot_path(
                bench.sink.traces_endpoint, samples=samples, round_size=round_size,
                timeout=timeout,
            )  # fmt: skip
    except PeerUnavailable as exc:
        return skipped(bench, scenario, system, samples, str(exc))
    bench.progress(f"{scenario} {system}/{PEER_BACKEND}: median {result.median_us:.2f} µs")
    return Row(
        scenario=scenario,
        system=system,
        backend=PEER_BACKEND,
        spans=result.samples,
        delivered=None,
        spans_per_s=None,
        hot_us_per_span=result.median_us,
        notes=[f"p99 {result.p99_us:.1f} µs"],
        extra={"p90_us": result.p90_us, "p99_us": result.p99_us, "mean_us": result.mean_us},
    )
