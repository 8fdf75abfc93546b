"""Fault injection for the local SGP server: the configuration, the per-request decision, counters.

`Faults` is an immutable description of what should go wrong; `FaultInjector` owns the mutable
state a decision needs (request number since the faults were set, the outage window, a seeded
RNG) and `Counters` the numbers the admin endpoint reports. Nothing here does I/O, so the same
logic serves the in-process app and the subprocess server.
"""

from __future__ import annotations

import enum
import random
import time
from collections.abc import Mapping
from typing import Any, Literal

import attrs

__all__ = ["Counters", "Decision", "FaultInjector", "Faults"]

OutageMode = Literal["503", "drop"]


def _non_negative(_inst: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


def _probability(_inst: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be within [0, 1], got {value!r}")


def _status(_inst: object, _attribute: attrs.Attribute[Any], value: int) -> None:
    if not 400 <= value <= 599:
        raise ValueError(f"status_code must be an HTTP error status, got {value!r}")


def _outage_mode(_inst: object, _attribute: attrs.Attribute[Any], value: str) -> None:
    if value not in ("503", "drop"):
        raise ValueError(f"outage_mode must be '503' or 'drop', got {value!r}")


def _optional_positive(_inst: object, attribute: attrs.Attribute[Any], value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{attribute.name} must be >= 1 or null, got {value!r}")


@attrs.frozen(kw_only=True)
class Faults:
    """What the server does wrong on API requests (never on `/_admin`). All off by default.

    - `latency` seconds (plus a uniform `latency_jitter`) are added to every API request; the
      wait is an `anyio.sleep`, so slow requests are still served concurrently.
    - `status_code` (503 or 429 usually) answers every `status_every_n`-th API request and/or
      a `status_rate` fraction of them, with a `Retry-After: retry_after` header when set
      (seconds such as ``"0"`` or an HTTP date; `None` sends no header).
    - `drop_every_n` / `drop_rate`: the connection is dropped without an answer.
    - `outage_seconds`: from the moment the faults are set, every API request answers 503 with
      `Retry-After` (`outage_mode="503"`) or has its connection dropped (`"drop"`).
    - `max_body_bytes`: request bodies above this size answer 413.
    - `hang`: every API request is accepted and never answered, until the client goes away.
    - `seed` seeds the RNG behind the rates and the jitter, for reproducible runs.

    "Every n-th" counts API requests from the moment these faults were set. When several
    faults apply to one request, the order is: hang, outage, latency, drop, status.
    """

    latency: float = attrs.field(default=0.0, converter=float, validator=_non_negative)
    latency_jitter: float = attrs.field(default=0.0, converter=float, validator=_non_negative)
    status_code: int = attrs.field(default=503, converter=int, validator=_status)
    status_every_n: int = attrs.field(default=0, converter=int, validator=_non_negative)
    status_rate: float = attrs.field(default=0.0, converter=float, validator=_probability)
    retry_after: str | None = attrs.field(default="1", converter=attrs.converters.optional(str))
    drop_every_n: int = attrs.field(default=0, converter=int, validator=_non_negative)
    drop_rate: float = attrs.field(default=0.0, converter=float, validator=_probability)
    outage_seconds: float = attrs.field(default=0.0, converter=float, validator=_non_negative)
    outage_mode: OutageMode = attrs.field(default="503", validator=_outage_mode)
    max_body_bytes: int | None = attrs.field(default=None, validator=_optional_positive)
    hang: bool = attrs.field(default=False, validator=attrs.validators.instance_of(bool))
    seed: int | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Faults:
        """Build from JSON-like data; unknown keys are an error (a typo must not go unnoticed)."""
        unknown = set(data) - set(attrs.fields_dict(cls))
        if unknown:
            raise ValueError(f"unknown fault settings: {sorted(unknown)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape served by ``GET /_admin/faults``."""
        return attrs.asdict(self)

    def merged(self, changes: Mapping[str, Any]) -> Faults:
        """A copy with `changes` applied (same validation as `from_dict`)."""
        return Faults.from_dict({**self.to_dict(), **changes})


class Decision(enum.Enum):
    """What the fault layer decided for one API request, beyond latency."""

    SERVE = "serve"
    STATUS = "status"
    DROP = "drop"
    HANG = "hang"
    OUTAGE_503 = "outage_503"
    OUTAGE_DROP = "outage_drop"


class FaultInjector:
    """Holds the active `Faults` and decides, request by request, which one fires."""

    def __init__(self, faults: Faults | None = None) -> None:
        self._faults = Faults()
        self._rng = random.Random()  # noqa: S311 - fault injection, not cryptography
        self._since_set = 0
        self._outage_until = 0.0
        self.set(faults or Faults())

    @property
    def faults(self) -> Faults:
        return self._faults

    def set(self, faults: Faults) -> None:
        """Activate `faults`: restarts the every-n counting and opens any outage window now."""
        self._faults = faults
        self._rng = random.Random(faults.seed)  # noqa: S311
        self._since_set = 0
        self._outage_until = (
            time.monotonic() + faults.outage_seconds if faults.outage_seconds > 0 else 0.0
        )

    def outage_remaining(self) -> float:
        """Seconds left in the current outage window (0 when there is none)."""
        if not self._outage_until:
            return 0.0
        return max(0.0, self._outage_until - time.monotonic())

    def latency(self) -> float:
        """Seconds to delay the current request."""
        f = self._faults
        if f.latency_jitter:
            return f.latency + self._rng.uniform(0.0, f.latency_jitter)
        return f.latency

    def decide(self) -> Decision:
        """Count one API request and say which fault, if any, it gets."""
        self._since_set += 1
        n = self._since_set
        f = self._faults
        if f.hang:
            return Decision.HANG
        if self._outage_until and time.monotonic() < self._outage_until:
            return Decision.OUTAGE_DROP if f.outage_mode == "drop" else Decision.OUTAGE_503
        if (f.drop_every_n and n % f.drop_every_n == 0) or (
            f.drop_rate and self._rng.random() < f.drop_rate
        ):
            return Decision.DROP
        if (f.status_every_n and n % f.status_every_n == 0) or (
            f.status_rate and self._rng.random() < f.status_rate
        ):
            return Decision.STATUS
        return Decision.SERVE


@attrs.define(kw_only=True)
class Counters:
    """Cheap counters (plain integer increments on the event loop thread)."""

    requests: int = 0
    by_endpoint: dict[str, int] = attrs.Factory(dict)
    upsert_requests: int = 0
    items_received: int = 0
    rejections: dict[str, int] = attrs.Factory(dict)
    faults: dict[str, int] = attrs.Factory(dict)
    in_flight: int = 0
    max_concurrent: int = 0
    bytes_received: int = 0
    # In-progress writes that came after their span's completed one (see count_reopened):
    # ignored by the tracing store, reopening the span on the legacy store.
    reopened: int = 0
    # Field values whose credential-shaped parts were masked before storing.
    masked: int = 0

    def count_fault(self, kind: str) -> None:
        self.faults[kind] = self.faults.get(kind, 0) + 1

    def count_status(self, status: int) -> None:
        if status >= 400:
            key = str(status)
            self.rejections[key] = self.rejections.get(key, 0) + 1

    def snapshot(self, *, items_stored: int) -> dict[str, Any]:
        """The JSON shape served by ``GET /_admin/stats``."""
        return {
            "requests": self.requests,
            "by_endpoint": dict(self.by_endpoint),
            "upsert_requests": self.upsert_requests,
            "items_received": self.items_received,
            "items_stored": items_stored,
            "rejections": dict(self.rejections),
            "faults": dict(self.faults),
            "in_flight": self.in_flight,
            "max_concurrent": self.max_concurrent,
            "bytes_received": self.bytes_received,
            "reopened": self.reopened,
            "masked": self.masked,
        }
