"""Peer systems for side-by-side benchmarks: scale-gp-beta's tracing and OpenTelemetry.

Each peer runs with its default settings, pointed at loopback only, in a fresh child
process; delivery is counted where the spans land (the local SGP server, or the OTLP sink
in `otlp_sink`). Importing this package never imports a peer: a missing one surfaces as
`PeerUnavailable` when its runner is called, so the caller can skip it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._common import HotPathResult, PeerResult, PeerUnavailable, require

if TYPE_CHECKING:
    from .otel import hot_path as otel_hot_path
    from .otel import hot_path_us as otel_hot_path_us
    from .otel import run_burst as run_otel_burst
    from .otel import run_faults as run_otel_faults
    from .otlp_sink import OtlpSinkProcess, SinkCounts
    from .scale_gp import hot_path as scale_gp_hot_path
    from .scale_gp import hot_path_us as scale_gp_hot_path_us
    from .scale_gp import run_burst as run_scale_gp_burst

# The runner modules are also run as `python -m benchmarks.peers.<module>`; importing them
# here eagerly would make runpy warn that the module was imported before it ran as __main__.
_LAZY = {
    "OtlpSinkProcess": ("otlp_sink", "OtlpSinkProcess"),
    "SinkCounts": ("otlp_sink", "SinkCounts"),
    "otel_hot_path": ("otel", "hot_path"),
    "otel_hot_path_us": ("otel", "hot_path_us"),
    "run_otel_burst": ("otel", "run_burst"),
    "run_otel_faults": ("otel", "run_faults"),
    "run_scale_gp_burst": ("scale_gp", "run_burst"),
    "scale_gp_hot_path": ("scale_gp", "hot_path"),
    "scale_gp_hot_path_us": ("scale_gp", "hot_path_us"),
}


def __getattr__(name: str) -> Any:
    try:
        module, attribute = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f".{module}", __name__), attribute)
    globals()[name] = value
    return value


__all__ = [
    "HotPathResult",
    "OtlpSinkProcess",
    "PeerResult",
    "PeerUnavailable",
    "SinkCounts",
    "check_available",
    "otel_hot_path",
    "otel_hot_path_us",
    "run_otel_burst",
    "run_otel_faults",
    "run_scale_gp_burst",
    "scale_gp_hot_path",
    "scale_gp_hot_path_us",
]

_REQUIREMENTS = {
    "scale-gp-beta": ("scale_gp_beta.lib.tracing",),
    "opentelemetry": (
        "opentelemetry.sdk.trace",
        "opentelemetry.exporter.otlp.proto.http.trace_exporter",
        "opentelemetry.proto.collector.trace.v1.trace_service_pb2",
    ),
}


def check_available(system: str) -> None:
    """Raise `PeerUnavailable` unless peer `system` ("scale-gp-beta" or "opentelemetry")
    can be imported here."""
    try:
        modules = _REQUIREMENTS[system]
    except KeyError:
        raise ValueError(f"unknown peer {system!r}; one of {sorted(_REQUIREMENTS)}") from None
    for module in modules:
        require(module, system)
