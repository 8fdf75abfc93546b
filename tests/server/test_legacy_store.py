"""SGP's two stores in the local server: the tracing service and the legacy store, and the
``reopened`` count (an in-progress write arriving after its span's completed one).

In-process (httpx + asgi_transport, asyncio and trio) and over loopback (`ServerProcess`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from sgp_client.testing import (
    DEFAULT_ACCOUNT_ID,
    DEFAULT_API_KEY,
    ServerProcess,
    SpanStore,
    StoreKind,
    asgi_transport,
    create_app,
    get_control,
)
from sgp_client.testing._store import count_reopened

AUTH = {"x-api-key": DEFAULT_API_KEY, "x-selected-account-id": DEFAULT_ACCOUNT_ID}
START = "2025-03-01T12:00:00+00:00"
END = "2025-03-01T12:00:01+00:00"
KINDS: list[StoreKind] = ["tracing", "legacy"]


def started(span_id: str = "s1", **fields: Any) -> dict[str, Any]:
    return {"id": span_id, "trace_id": "t1", "name": "op", "start_timestamp": START, **fields}


def ended(span_id: str = "s1", **fields: Any) -> dict[str, Any]:
    return started(span_id, end_timestamp=END, status="SUCCESS", **fields)


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> StoreKind:
    value: StoreKind = request.param
    return value


@pytest.fixture
def app(kind: StoreKind) -> Iterator[Starlette]:
    app = create_app(store=kind)
    yield app
    get_control(app).close()


@pytest.fixture
async def http(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=asgi_transport(app), base_url="http://sgp.local/public", headers=AUTH
    ) as c:
        yield c


async def upsert(http: httpx.AsyncClient, *items: dict[str, Any]) -> list[dict[str, Any]]:
    r = await http.put("/v5/spans/batch", json={"items": list(items)})
    assert r.status_code == 200, r.text
    answer: list[dict[str, Any]] = r.json()["items"]
    return answer


async def read_back(http: httpx.AsyncClient, span_id: str = "s1") -> dict[str, Any]:
    r = await http.get(f"/v5/spans/{span_id}")
    assert r.status_code == 200, r.text
    span: dict[str, Any] = r.json()
    return span


async def stats(http: httpx.AsyncClient) -> dict[str, Any]:
    result: dict[str, Any] = (await http.get("http://sgp.local/_admin/stats")).json()
    return result


# -- the rule of each store ------------------------------------------------------------------


def test_count_reopened_rule() -> None:
    # (stored completed?, writes in arrival order) -> (tracing, legacy)
    cases: list[tuple[bool | None, list[bool], int, int]] = [
        (None, [False, True], 0, 0),  # start then end: in order
        (None, [True, False], 1, 1),  # end then start
        (True, [False], 1, 1),
        (False, [False, True, False], 1, 1),
        # legacy: the first late start reopens the span, the second finds it open already
        (True, [False, False], 2, 1),
        (None, [True, False, True, False], 2, 2),
        (True, [True], 0, 0),
        (None, [], 0, 0),
    ]
    for stored, writes, tracing, legacy in cases:
        assert count_reopened("tracing", stored, writes) == tracing, (stored, writes)
        assert count_reopened("legacy", stored, writes) == legacy, (stored, writes)


def test_unknown_store_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="store kind"):
        SpanStore(kind="nope")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="store"):
        ServerProcess(store="nope")  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_start_written_after_its_end(http: httpx.AsyncClient, kind: StoreKind) -> None:
    await upsert(http, ended(output={"answer": 42}))
    echo = await upsert(http, started(input={"q": 1}))
    span = await read_back(http)
    if kind == "legacy":  # last occurrence wins: the span reads back in progress again
        assert span["end_timestamp"] is None
        assert span["status"] is None
        assert span["input"] == {"q": 1}
        assert echo[0]["end_timestamp"] is None
    else:  # the tracing service keeps the completed span and echoes it
        assert span["end_timestamp"] == END
        assert span["output"] == {"answer": 42}
        assert echo[0]["end_timestamp"] == END
    result = await stats(http)
    assert result["reopened"] == 1
    assert result["store"] == kind
    assert result["items_stored"] == 1


@pytest.mark.anyio
async def test_start_then_end_reopens_nothing(http: httpx.AsyncClient) -> None:
    await upsert(http, started("a"), started("b"))
    await upsert(http, ended("a"), ended("b"))
    await upsert(http, ended("a", name="renamed"))  # a completed write over a completed span
    assert (await read_back(http, "a"))["name"] == "renamed"
    assert (await read_back(http, "b"))["end_timestamp"] == END
    assert (await stats(http))["reopened"] == 0


@pytest.mark.anyio
async def test_end_then_start_in_one_batch(http: httpx.AsyncClient, kind: StoreKind) -> None:
    echo = await upsert(http, ended(), started())
    assert len(echo) == 1
    expected_end = None if kind == "legacy" else END
    assert echo[0]["end_timestamp"] == expected_end
    assert (await read_back(http))["end_timestamp"] == expected_end
    assert (await stats(http))["reopened"] == 1


@pytest.mark.anyio
async def test_repeated_late_starts(http: httpx.AsyncClient, kind: StoreKind) -> None:
    await upsert(http, ended())
    await upsert(http, started(), started(name="again"))
    # The tracing store ignores both late starts; on the legacy store the first reopens the
    # span and the second overwrites a span already in progress.
    assert (await stats(http))["reopened"] == (2 if kind == "tracing" else 1)
    assert (await read_back(http))["name"] == ("op" if kind == "tracing" else "again")


@pytest.mark.anyio
async def test_legacy_keys_by_id_alone(http: httpx.AsyncClient, kind: StoreKind) -> None:
    await upsert(http, started(trace_id="t1"))
    await upsert(http, started(trace_id="t2"))
    await upsert(http, started(start_timestamp="2025-03-02T12:00:00+00:00", trace_id="t2"))
    control_count = (await http.get("http://sgp.local/_admin/count")).json()["count"]
    if kind == "legacy":
        assert control_count == 1
        span = await read_back(http)
        assert span["trace_id"] == "t2"
        assert span["start_timestamp"] == "2025-03-02T12:00:00+00:00"
        r = await http.post("/v5/spans/search", json={"trace_ids": ["t1"]})
        assert r.json()["items"] == []
    else:  # (trace, id, day) keys: three rows
        assert control_count == 3


@pytest.mark.anyio
async def test_legacy_later_wins_within_a_batch(http: httpx.AsyncClient, kind: StoreKind) -> None:
    await upsert(http, ended(name="first"), ended(name="second"), started("other"))
    assert (await read_back(http))["name"] == "second"
    await upsert(http, ended(trace_id="t9"), ended(trace_id="t1", name="third"))
    if kind == "legacy":
        assert (await read_back(http))["name"] == "third"
    assert (await stats(http))["reopened"] == 0


@pytest.mark.anyio
async def test_insert_only_batch(http: httpx.AsyncClient, kind: StoreKind) -> None:
    await upsert(http, ended())
    r = await http.post("/v5/spans/batch", json={"items": [started()]})
    assert r.status_code == 200
    # Neither store replaces on POST; only the tracing store counts the late start it ignored.
    assert r.json()["items"][0]["end_timestamp"] == END
    assert (await read_back(http))["end_timestamp"] == END
    assert (await stats(http))["reopened"] == (1 if kind == "tracing" else 0)


@pytest.mark.anyio
async def test_reset_forgets_reopened(http: httpx.AsyncClient) -> None:
    await upsert(http, ended(), started())
    assert (await stats(http))["reopened"] == 1
    assert (await http.post("http://sgp.local/_admin/reset")).status_code == 200
    assert (await stats(http))["reopened"] == 0


@pytest.mark.anyio
async def test_control_stats_count_reopened(app: Starlette, http: httpx.AsyncClient) -> None:
    control = get_control(app)
    await upsert(http, ended("a"), ended("b"))
    await upsert(http, started("a"), started("b"), started("c"))
    assert control.stats()["reopened"] == 2
    assert control.store.kind == control.stats()["store"]


# -- over loopback -----------------------------------------------------------------------------


def put(client: httpx.Client, *items: dict[str, Any]) -> None:
    r = client.put("/v5/spans/batch", json={"items": list(items)})
    assert r.status_code == 200, r.text


def test_serve_store_legacy_over_loopback(tmp_path: Path) -> None:
    db = tmp_path / "legacy.sqlite3"
    with ServerProcess(store="legacy", db=db) as srv:
        assert "legacy" in repr(srv)
        with httpx.Client(base_url=srv.base_url, headers=srv.headers(), timeout=10) as client:
            put(client, started("a"), started("b"))
            put(client, ended("a"), ended("b"))
            put(client, started("a"))  # a late start: reopens "a"
            assert client.get("/v5/spans/a").json()["end_timestamp"] is None
            assert client.get("/v5/spans/b").json()["end_timestamp"] == END
            stats_ = srv.stats()
            assert stats_["reopened"] == 1
            assert stats_["store"] == "legacy"
            assert srv.count() == 2
            srv.restart()  # the id index is rebuilt from the file, with the same rule
        with httpx.Client(base_url=srv.base_url, headers=srv.headers(), timeout=10) as client:
            put(client, started("b", trace_id="t2"))
            assert client.get("/v5/spans/b").json()["trace_id"] == "t2"
            assert srv.count() == 2
            assert srv.stats()["reopened"] == 1  # counters start again with the process


def test_serve_store_tracing_over_loopback() -> None:
    with ServerProcess() as srv:
        assert srv.store == "tracing"
        with httpx.Client(base_url=srv.base_url, headers=srv.headers(), timeout=10) as client:
            put(client, ended("a"))
            put(client, started("a"))
            assert client.get("/v5/spans/a").json()["end_timestamp"] == END
        stats_ = srv.stats()
        assert stats_["reopened"] == 1
        assert stats_["store"] == "tracing"
