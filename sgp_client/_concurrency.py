"""How many upsert requests the queue keeps in flight: a fixed number, or an adaptive limit.

`AdaptiveConcurrency` is a gradient limiter after Netflix concurrency-limits' ``Gradient2``
(the same family as Envoy's adaptive concurrency filter), with AIMD's multiplicative
decrease for explicit overload signals. Why this mix:

- Loss-only AIMD (grow until the server refuses) would climb until SGP answers 429/503, that
  is, it would overload the server on purpose before backing off. A latency gradient backs
  off earlier, as soon as requests queue up at the server (their latency rises), and grows
  while latency stays flat: at 150 ms a request, throughput is concurrency x batch / latency,
  so growing is the only way to use the client's CPU.
- A gradient alone reacts to 429/503 or timeouts only through their latency, which says
  nothing (a 503 is fast). Those are the server asking us to slow down: each one halves the
  limit at once, so a storm brings it to the minimum (1 by default) within a few answers
  (from 64: six), and nothing new is sent until the retries get through.
- Envoy's controller measures its baseline by periodically dropping concurrency to a
  minimum; a burst of 100,000 spans is over in a few seconds, so like ``Gradient2`` the
  baseline here is learnt from the requests themselves (the lowest smoothed latency, drifting
  slowly towards the current one so a permanently slower server becomes the new normal).

On each finished request with a usable answer (``ok``) the limit moves as ``Gradient2``'s:
``gradient = clamp(tolerance * baseline / recent, 0.5, 1)``, ``target = limit * gradient +
headroom``, ``limit += smoothing * (target - limit)``. With flat latency that adds
``smoothing * headroom`` per answer (at 8 requests in flight, about +6 per round trip); with
latency beyond ``tolerance`` x the baseline it shrinks, towards ``headroom / (1 - gradient)``
(8 at the steepest gradient, 0.5). So latency alone never takes the limit below 8, the old
fixed default, deliberately: on loopback a request's "latency" is mostly the CPU of the
client and of the server, which fewer requests in flight would not relieve (measured: the
limit fell to 2-4 there, for no gain). Only the server's explicit overload signals take it
lower, to `minimum`. The limit grows only while it is being used (at least half of it in
flight when the request was sent): an idle queue must not accumulate a licence to flood the
server later.

Everything here is synchronous and pure (no clock, no I/O): the queue measures each request
and reports it with `record`, and reads `limit` before it sends the next one.
"""

from __future__ import annotations

import math
from typing import Final, Literal, Protocol, runtime_checkable

from ._exceptions import APIConnectionError, APIStatusError

__all__ = [
    "AdaptiveConcurrency",
    "Concurrency",
    "FixedConcurrency",
    "Outcome",
    "concurrency_from",
    "outcome_of",
]

#: What one finished request says about the server's capacity.
Outcome = Literal["ok", "overload", "ignore"]

# Statuses that mean "too much load": rate limited, unavailable, or a gateway that gave up
# waiting for an overloaded backend. Other failures (400, 401, 409, 413, 422, 500...) say
# nothing about capacity.
_OVERLOAD_STATUSES: Final = frozenset({429, 502, 503, 504})


def outcome_of(error: BaseException | None) -> Outcome:
    """Classify a finished request for the limiter (``None``: it succeeded)."""
    if error is None:
        return "ok"
    if isinstance(error, APIStatusError):
        return "overload" if error.status_code in _OVERLOAD_STATUSES else "ignore"
    # Timeouts (an ``APIConnectionError``), refused and reset connections: a server that
    # cannot keep up often looks like this; backing off is the safe reading.
    if isinstance(error, APIConnectionError):
        return "overload"
    return "ignore"


@runtime_checkable
class Concurrency(Protocol):
    """What the queue needs: the current limit, and a report of every finished request."""

    @property
    def limit(self) -> int:
        """Requests allowed in flight now (>= 1)."""
        ...

    def record(self, latency: float, error: BaseException | None, in_flight: int) -> None:
        """One request finished after `latency` seconds (`error` None when it succeeded);
        `in_flight` requests, itself included, were in flight when it was sent."""
        ...


class FixedConcurrency:
    """A constant limit (``UpsertQueue(max_in_flight=8)``)."""

    __slots__ = ("_limit",)

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("max_in_flight must be >= 1")
        self._limit = limit

    @property
    def limit(self) -> int:
        return self._limit

    def record(self, latency: float, error: BaseException | None, in_flight: int) -> None:
        return None

    def __repr__(self) -> str:
        return f"FixedConcurrency({self._limit})"


class AdaptiveConcurrency:
    """A gradient limit of requests in flight, between `minimum` and `maximum` (see module).

    Settings (keyword-only):
      initial: the limit before any answer (8, the old fixed default, within the bounds: a
        queue starts no worse than it used to).
      minimum, maximum: the bounds (1 and 64; at 150 ms and 500 spans a request, 64 in flight
        would be 200,000 spans/s, well past one client process's CPU).
      tolerance: how many times the baseline latency counts as "flat" (2.0).
      headroom: requests added to the target (4, ``Gradient2``'s queue size): the growth
        while latency is flat, and half the floor that latency alone can push the limit to.
      smoothing: how far the limit moves towards its target per answer (0.2).
      backoff: the factor applied on a 429/503/504/502, timeout or dropped connection (0.5).
    """

    __slots__ = (
        "_baseline",
        "_estimate",
        "_recent",
        "backoff",
        "headroom",
        "maximum",
        "minimum",
        "smoothing",
        "tolerance",
    )

    # Weight of the newest latency in the recent average: about the last 5 answers, so one
    # slow answer on a noisy machine does not cut the limit by itself.
    _RECENT_WEIGHT: Final = 1 / 3
    # How fast the baseline follows a recent average above it, per answer: a server that got
    # slower for good becomes the new normal (half the gap in about 140 answers) instead of
    # pinning the limit low forever.
    _BASELINE_DRIFT: Final = 0.005

    def __init__(
        self,
        *,
        initial: int | None = None,
        minimum: int = 1,
        maximum: int = 64,
        tolerance: float = 2.0,
        headroom: float = 4.0,
        smoothing: float = 0.2,
        backoff: float = 0.5,
    ) -> None:
        if not 1 <= minimum <= maximum:
            raise ValueError("need 1 <= minimum <= maximum")
        if initial is None:
            initial = max(minimum, min(maximum, 8))
        elif not minimum <= initial <= maximum:
            raise ValueError("initial must be between minimum and maximum")
        if not (tolerance >= 1.0 and math.isfinite(tolerance)):
            raise ValueError("tolerance must be a finite number >= 1")
        if not (headroom >= 0.0 and math.isfinite(headroom)):
            raise ValueError("headroom must be a finite number >= 0")
        if not 0.0 < smoothing <= 1.0:
            raise ValueError("smoothing must be in (0, 1]")
        if not 0.0 < backoff < 1.0:
            raise ValueError("backoff must be in (0, 1)")
        self.minimum = minimum
        self.maximum = maximum
        self.tolerance = tolerance
        self.headroom = headroom
        self.smoothing = smoothing
        self.backoff = backoff
        self._estimate = float(initial)  # the limit, unrounded
        self._recent: float | None = None  # smoothed latency of the last few answers
        self._baseline: float | None = None  # the latency of an unloaded server, as learnt

    @property
    def limit(self) -> int:
        return max(self.minimum, min(self.maximum, int(self._estimate)))

    @property
    def baseline(self) -> float | None:
        """The latency currently taken as "flat", in seconds (None before any answer)."""
        return self._baseline

    def record(self, latency: float, error: BaseException | None, in_flight: int) -> None:
        outcome = outcome_of(error)
        if outcome == "ignore":
            return
        if outcome == "overload":
            # No smoothing: the server said it is overloaded, every answer counts.
            self._estimate = max(float(self.minimum), self._estimate * self.backoff)
            return
        latency = max(latency, 1e-6)
        recent = self._recent
        recent = latency if recent is None else recent + (latency - recent) * self._RECENT_WEIGHT
        self._recent = recent
        baseline = self._baseline
        if baseline is None or recent < baseline:
            baseline = recent
        else:
            baseline += (recent - baseline) * self._BASELINE_DRIFT
        self._baseline = baseline
        gradient = max(0.5, min(1.0, self.tolerance * baseline / recent))
        if gradient >= 1.0 and in_flight * 2 < self._estimate:
            return  # latency is flat but the limit is not being used: no reason to grow
        target = self._estimate * gradient + self.headroom
        estimate = self._estimate + (target - self._estimate) * self.smoothing
        self._estimate = max(float(self.minimum), min(float(self.maximum), estimate))

    def __repr__(self) -> str:
        return (
            f"AdaptiveConcurrency(limit={self.limit}, minimum={self.minimum}, "
            f"maximum={self.maximum})"
        )


def concurrency_from(max_in_flight: int | str | Concurrency) -> Concurrency:
    """The limiter for ``UpsertQueue(max_in_flight=...)``: ``"adaptive"`` (the default), a
    fixed int, or a limiter object such as ``AdaptiveConcurrency(maximum=16)``."""
    if isinstance(max_in_flight, bool):
        raise TypeError("max_in_flight must be 'adaptive', an int or a limiter")
    if isinstance(max_in_flight, int):
        return FixedConcurrency(max_in_flight)
    if not isinstance(max_in_flight, str):
        if not isinstance(max_in_flight, Concurrency):  # a float, say: refused at once
            raise TypeError(
                "max_in_flight must be 'adaptive', an int or a limiter (with `limit` and "
                f"`record`), got {type(max_in_flight).__name__}"
            )
        return max_in_flight
    if max_in_flight != "adaptive":
        raise ValueError(f"max_in_flight must be 'adaptive' or an int, got {max_in_flight!r}")
    return AdaptiveConcurrency()
