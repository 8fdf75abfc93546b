"""The benchmark scenarios, in the order `python -m benchmarks` runs them.

Each module has ``run(bench) -> list[Row]``: our SDK on every backend of the run, then the
peers where the scenario has a peer workload. Modules are imported when their scenario runs:
`pending_memory` is also run as ``python -m`` in a child, and runpy warns about a module
that its package imported first.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import cast

from benchmarks._common import Bench, Row

__all__ = ["SCENARIOS", "Scenario", "load"]

Scenario = Callable[[Bench], list[Row]]

#: Scenario name -> module in this package.
SCENARIOS: dict[str, str] = {
    "wan": "wan",
    "burst": "burst",
    "hot-path": "hot_path",
    "trickle": "trickle",
    "faults": "faults",
    "slow-server": "slow_server",
    "pending-memory": "pending_memory",
    "scaling": "scaling",
    "fleet": "fleet",
    "temporal-fleet": "temporal_fleet",
}


def load(name: str) -> Scenario:
    """The ``run`` function of scenario `name`."""
    module = importlib.import_module(f".{SCENARIOS[name]}", __name__)
    return cast(Scenario, module.run)
