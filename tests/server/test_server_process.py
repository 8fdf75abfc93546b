"""The local SGP server in a subprocess, over real loopback HTTP."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sgp_client.testing import ServerProcess
from tests._helpers import START_ISO as START
from tests._helpers import span_json as span


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with ServerProcess() as srv:
        yield srv


@pytest.fixture
def srv(server: ServerProcess) -> Iterator[ServerProcess]:
    server.reset()
    yield server
    server.clear_faults()


@pytest.fixture
def client(srv: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=srv.base_url, headers=srv.headers(), timeout=5) as c:
        yield c


def test_upsert_and_read_back(srv: ServerProcess, client: httpx.Client) -> None:
    assert srv.base_url == f"http://127.0.0.1:{srv.port}/public"
    assert srv.port > 0
    r = client.put("/v5/spans/batch", json={"items": [span("a"), span("b", parent_id="a")]})
    assert r.status_code == 200
    assert r.headers["x-request-id"]
    assert client.get("/v5/spans/b").json()["parent_id"] == "a"
    page = client.post("/v5/spans/search", json={"trace_ids": ["t1"]}).json()
    assert {s["id"] for s in page["items"]} == {"a", "b"}
    assert srv.count() == 2
    assert [s["id"] for s in srv.spans(trace_id="t1")] == ["a", "b"]
    stats = srv.stats()
    assert stats["upsert_requests"] == 1
    assert stats["items_stored"] == 2
    assert client.get("/v5/spans/a", headers={"x-api-key": "wrong"}).status_code == 403


def test_faults_over_the_wire(srv: ServerProcess, client: httpx.Client) -> None:
    srv.set_faults(status_every_n=2, retry_after="0")
    codes = [client.get("/v5/spans/x").status_code for _ in range(4)]
    assert codes == [404, 503, 404, 503]
    srv.set_faults(drop_every_n=1)
    with pytest.raises(httpx.RemoteProtocolError):
        client.get("/v5/spans/x")
    srv.set_faults(hang=True)
    with pytest.raises(httpx.ReadTimeout):
        client.get("/v5/spans/x", timeout=0.2)
    srv.set_faults(max_body_bytes=100)
    r = client.put("/v5/spans/batch", json={"items": [span(f"s{i}") for i in range(10)]})
    assert r.status_code == 413
    srv.clear_faults()
    assert client.get("/v5/spans/x").status_code == 404
    faults = srv.stats()["faults"]
    assert faults == {"503": 2, "drop": 1, "hang": 1, "413": 1}


def test_kill_and_restart_keeps_file_data(tmp_path: Path) -> None:
    with ServerProcess(db=tmp_path / "spans.db") as srv:
        port = srv.port
        with httpx.Client(base_url=srv.base_url, headers=srv.headers()) as client:
            r = client.put("/v5/spans/batch", json={"items": [span("a")]})
            assert r.status_code == 200
        srv.kill()
        assert not srv.running
        with pytest.raises(httpx.ConnectError):
            httpx.get(srv.base_url + "/v5/spans/a", headers=srv.headers())
        srv.start()
        assert srv.port == port
        with httpx.Client(base_url=srv.base_url, headers=srv.headers()) as client:
            assert client.get("/v5/spans/a").json()["id"] == "a"
            # The key index is rebuilt from the file: an upsert still replaces.
            client.put("/v5/spans/batch", json={"items": [span("a", end_timestamp=START)]})
        assert srv.count() == 1
        srv.restart()
        assert srv.spans()[0]["end_timestamp"] == START


def test_startup_failure_reports_stderr(tmp_path: Path) -> None:
    srv = ServerProcess(db=str(tmp_path / "missing-dir" / "x.db"))
    with pytest.raises(RuntimeError, match="stderr"):
        srv.start()
    assert not srv.running


def test_cli_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "sgp_client.testing", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--api-key" in out
