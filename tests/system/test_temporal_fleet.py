"""A real Temporal fleet: the dev server, 4 worker processes, 50 workflows x 5 spans, SGP's
legacy store (last write of a span id wins, so a late in-progress write would reopen a span).

asyncio only: temporalio's client, workers and activities run on asyncio alone, so this
module pins ``anyio_backend`` to asyncio (the SDK itself is tested on both backends
elsewhere). Each span's start and end is an activity that Temporal routes to any worker
(eager activity execution off); the driver stops the workers with SIGTERM, which the
plugin turns into a graceful shutdown and a drained queue, and collects their reports.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from demo.devserver import TemporalDevServer
from demo.fleet import read_back
from demo.temporal_fleet import TemporalFleetResult, run_temporal_fleet
from demo.workflows import SPANS_PER_RUN
from sgp_client import AsyncSGPClient
from sgp_client.testing import ServerProcess

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

WORKERS = 4
RUNS = 50


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def legacy_server() -> Iterator[ServerProcess]:
    with ServerProcess(store="legacy") as process:
        yield process


def _env(server: ServerProcess) -> dict[str, str]:
    return {
        "SGP_API_KEY": server.api_key,
        "SGP_ACCOUNT_ID": server.account_id,
        "SGP_CLIENT_BASE_URL": server.base_url,
    }


async def _stored(server: ServerProcess, result: TemporalFleetResult) -> dict[str, int]:
    async with AsyncSGPClient(
        api_key=server.api_key, account_id=server.account_id, base_url=server.base_url
    ) as client:
        return await read_back(client, result)


def _assert_every_report_clean(result: TemporalFleetResult) -> None:
    for report in result.worker_reports:
        queue = report["queue"]
        assert queue["balanced"], report
        assert queue["dropped"] == {}, report  # nothing dropped, "shutdown" included
        assert report["processor_dropped"] == {}, report


async def test_fifty_workflows_on_four_workers_leave_nothing_stuck_or_reopened(
    temporal_server: TemporalDevServer, legacy_server: ServerProcess
) -> None:
    result = await run_temporal_fleet(
        temporal_address=temporal_server.address, workers=WORKERS, runs=RUNS,
        env=_env(legacy_server),
    )  # fmt: skip
    stored = await _stored(legacy_server, result)

    assert result.traces == RUNS
    assert stored["expected"] == RUNS * SPANS_PER_RUN
    assert stored["completed"] == RUNS * SPANS_PER_RUN
    assert stored["running"] == stored["missing"] == 0
    assert legacy_server.stats()["reopened"] == 0
    # The case that matters happened: most starts and ends ran on different workers.
    assert result.cross_worker_pairs > RUNS
    # Every worker stopped by SIGTERM reported, after its queue drained.
    assert len(result.worker_reports) == WORKERS
    _assert_every_report_clean(result)
    # Each span's start and end were each delivered as their own write.
    assert result.queue_total("delivered") == 2 * RUNS * SPANS_PER_RUN


async def test_a_worker_sigkilled_mid_run_loses_nothing(
    temporal_server: TemporalDevServer, legacy_server: ServerProcess
) -> None:
    # Short activity timeouts so the killed worker's activities are retried soon; the
    # queues' retry deadline stays below them (see sgp_tracing.temporal).
    result = await run_temporal_fleet(
        temporal_address=temporal_server.address, workers=WORKERS, runs=RUNS,
        env=_env(legacy_server), activity_timeout=8.0, retry_deadline=4.0, kill_after=RUNS // 4,
    )  # fmt: skip
    stored = await _stored(legacy_server, result)

    assert result.killed_worker == 0
    assert result.traces == RUNS
    assert stored["completed"] == RUNS * SPANS_PER_RUN
    assert stored["running"] == stored["missing"] == 0
    assert legacy_server.stats()["reopened"] == 0
    assert sorted(r["worker"] for r in result.worker_reports) == [1, 2, 3]
    _assert_every_report_clean(result)


async def test_the_stateful_processor_on_the_same_fleet_leaves_spans_running(
    temporal_server: TemporalDevServer, legacy_server: ServerProcess
) -> None:
    # The control: the fleet and the read-back do see the failure this project exists for.
    result = await run_temporal_fleet(
        temporal_address=temporal_server.address, workers=WORKERS, runs=10,
        env=_env(legacy_server), stateful=True,
    )  # fmt: skip
    stored = await _stored(legacy_server, result)

    lost_ends = sum(r["lost_ends"] for r in result.worker_reports)
    assert lost_ends > 0
    assert stored["running"] == lost_ends
