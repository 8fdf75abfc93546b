"""``QueueConfig``: the upsert queue's settings, validated once, frozen.

The dispatcher reads them while it runs; frozen means a setting cannot change under it.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import attrs

from ._client import MAX_BATCH_ITEMS
from ._concurrency import Concurrency, concurrency_from
from ._retry import Backoff

__all__ = ["QueueConfig"]


def _at_least_one(instance: Any, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name} must be >= 1")


def _seconds(instance: Any, attribute: attrs.Attribute[float], value: float) -> None:
    if not value >= 0 or math.isinf(value):
        raise ValueError(f"{attribute.name} must be a finite number >= 0")


def _positive_seconds(instance: Any, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0 or math.isinf(value):
        raise ValueError(f"{attribute.name} must be a finite number > 0")


def _batch_size(instance: Any, attribute: attrs.Attribute[int], value: int) -> None:
    if not 1 <= value <= MAX_BATCH_ITEMS:
        raise ValueError(f"{attribute.name} must be between 1 and {MAX_BATCH_ITEMS}")


def _in_flight(
    instance: Any, attribute: attrs.Attribute[Any], value: int | str | Concurrency
) -> None:
    concurrency_from(value)  # raises the error a wrong value deserves (a type, >= 1...)


def _not_negative(instance: Any, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0")


@attrs.frozen(kw_only=True)
class QueueConfig:
    """The settings of an ``UpsertQueue`` (its keyword arguments, documented there)."""

    max_batch_size: int = attrs.field(default=500, validator=_batch_size)
    max_batch_bytes: int = attrs.field(default=4 * 1024 * 1024, validator=_at_least_one)
    flush_interval: float = attrs.field(default=0.2, validator=_seconds)
    #: ``"adaptive"`` (an ``AdaptiveConcurrency`` per queue), a fixed int, or a limiter.
    max_in_flight: int | Literal["adaptive"] | Concurrency = attrs.field(
        default="adaptive", validator=_in_flight
    )
    max_pending: int = attrs.field(default=100_000, validator=_at_least_one)
    max_pending_bytes: int = attrs.field(default=128 * 1024 * 1024, validator=_at_least_one)
    retry_deadline: float = attrs.field(default=120.0, validator=_seconds)
    # 0 would time every request out: refused.
    request_timeout: float = attrs.field(default=30.0, validator=_positive_seconds)
    shutdown_timeout: float = attrs.field(default=10.0, validator=_seconds)
    backoff: Backoff = attrs.field(factory=lambda: Backoff(initial=0.1, maximum=2.0))
    remember_completed: int = attrs.field(default=10_000, validator=_not_negative)
