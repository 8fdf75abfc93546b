"""Smoke tests of the benchmark peers: the OTLP sink counts, and each peer runner delivers.

Small workloads on 127.0.0.1 only; skipped when a peer package is not installed.
No assertion here is about speed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from benchmarks.peers import (
    OtlpSinkProcess,
    PeerResult,
    PeerUnavailable,
    check_available,
    otel_hot_path_us,
    run_otel_burst,
    run_scale_gp_burst,
    scale_gp_hot_path_us,
)
from benchmarks.peers._common import require


def _otel_sdk() -> tuple[Any, Any, Any]:
    trace_sdk = pytest.importorskip("opentelemetry.sdk.trace")
    export = pytest.importorskip("opentelemetry.sdk.trace.export")
    otlp = pytest.importorskip("opentelemetry.exporter.otlp.proto.http.trace_exporter")
    return trace_sdk.TracerProvider, export.BatchSpanProcessor, otlp.OTLPSpanExporter


@pytest.fixture(scope="module")
def sink() -> Iterator[OtlpSinkProcess]:
    pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")
    with OtlpSinkProcess() as running:
        yield running


@pytest.fixture
def fresh_sink(sink: OtlpSinkProcess) -> OtlpSinkProcess:
    sink.set_faults(0)
    sink.reset()
    return sink


def _export_spans(endpoint: str, n: int) -> None:
    tracer_provider, batch_processor, exporter = _otel_sdk()
    provider = tracer_provider()
    provider.add_span_processor(batch_processor(exporter(endpoint=endpoint)))
    tracer = provider.get_tracer("test")
    try:
        for i in range(n):
            with tracer.start_as_current_span(f"span-{i}") as span:
                span.set_attribute("input.q", "hello")
        assert provider.force_flush()
    finally:
        provider.shutdown()


def test_sink_counts_spans_from_batch_span_processor(fresh_sink: OtlpSinkProcess) -> None:
    _export_spans(fresh_sink.traces_endpoint, 50)

    counts = fresh_sink.counts()
    assert counts.spans == 50
    assert counts.unique_spans == 50
    assert fresh_sink.count() == 50
    assert counts.faults == 0
    assert counts.bad_requests == 0


def test_sink_faults_are_retried_by_the_exporter(fresh_sink: OtlpSinkProcess) -> None:
    # Retry-After 0 keeps the test fast; every 2nd request fails, the exporter retries it.
    fresh_sink.set_faults(2, retry_after=0)
    for _ in range(2):
        _export_spans(fresh_sink.traces_endpoint, 10)

    counts = fresh_sink.counts()
    assert counts.faults >= 1
    assert counts.unique_spans == 20


def test_sink_latency_delays_every_trace_request(fresh_sink: OtlpSinkProcess) -> None:
    import time

    fresh_sink.set_faults(latency=0.2)
    began = time.monotonic()
    _export_spans(fresh_sink.traces_endpoint, 5)  # one export request
    waited = time.monotonic() - began
    fresh_sink.set_faults()

    # A lower bound only (the fault's own wait), never a speed.
    assert waited >= 0.2
    assert fresh_sink.count() == 5


def test_sink_reset_zeroes_counts(fresh_sink: OtlpSinkProcess) -> None:
    _export_spans(fresh_sink.traces_endpoint, 5)
    assert fresh_sink.count() == 5

    fresh_sink.reset()

    assert fresh_sink.count() == 0


def _check_burst(result: PeerResult, system: str, spans: int) -> None:
    assert result.system == system
    assert result.spans == spans
    assert result.submitted == spans
    assert result.delivered == spans
    assert result.lost == 0
    assert result.dropped == 0
    assert not result.timed_out
    assert result.seconds > 0
    assert result.spans_per_s > 0
    assert result.to_dict()["delivered"] == spans
    # The child's own CPU, first span to the end of its shutdown.
    assert result.cpu_seconds is not None
    assert result.cpu_seconds > 0


def test_otel_burst_is_delivered_to_the_sink(fresh_sink: OtlpSinkProcess) -> None:
    _otel_sdk()

    result = run_otel_burst(
        fresh_sink.traces_endpoint, 50, count_delivered=fresh_sink.count, timeout=60
    )

    _check_burst(result, "opentelemetry", 50)
    assert fresh_sink.count() == 50


def test_otel_hot_path_reports_a_cost(fresh_sink: OtlpSinkProcess) -> None:
    _otel_sdk()

    assert otel_hot_path_us(fresh_sink.traces_endpoint, samples=200, round_size=100) > 0


@pytest.fixture(scope="module")
def sgp_server() -> Iterator[Any]:
    pytest.importorskip("scale_gp_beta.lib.tracing")
    testing = pytest.importorskip("sgp_client.testing")
    with testing.ServerProcess() as server:
        yield server


def test_scale_gp_burst_is_delivered_to_the_local_server(sgp_server: Any) -> None:
    before = sgp_server.count()

    result = run_scale_gp_burst(
        sgp_server.base_url,
        sgp_server.api_key,
        sgp_server.account_id,
        50,
        count_delivered=sgp_server.count,
        timeout=60,
    )

    _check_burst(result, "scale-gp-beta", 50)
    assert sgp_server.count() - before == 50


def test_scale_gp_hot_path_reports_a_cost(sgp_server: Any) -> None:
    cost = scale_gp_hot_path_us(
        sgp_server.base_url, sgp_server.api_key, sgp_server.account_id, samples=200, round_size=100
    )

    assert cost > 0


def test_missing_peer_raises_peer_unavailable() -> None:
    with pytest.raises(PeerUnavailable, match="pip install"):
        require("no_such_peer_package_xyz", "nope")


def test_check_available_rejects_unknown_peer() -> None:
    with pytest.raises(ValueError, match="unknown peer"):
        check_available("zipkin")
