"""The local SGP server in-process (httpx + asgi_transport), on asyncio and trio."""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import httpx
import orjson
import pytest
from anyio import wait_all_tasks_blocked
from anyio.lowlevel import checkpoint
from starlette.applications import Starlette

import sgp_client.testing as sgp_testing
from sgp_client.testing import (
    DEFAULT_ACCOUNT_ID,
    DEFAULT_API_KEY,
    Faults,
    ServerControl,
    StoreKind,
    _spans,
    asgi_transport,
    create_app,
    get_control,
)

AUTH = {"x-api-key": DEFAULT_API_KEY, "x-selected-account-id": DEFAULT_ACCOUNT_ID}
START = "2025-03-01T12:00:00+00:00"
END = "2025-03-01T12:00:01+00:00"


def span(span_id: str = "s1", trace_id: str = "t1", **fields: Any) -> dict[str, Any]:
    return {"id": span_id, "trace_id": trace_id, "name": "op", "start_timestamp": START, **fields}


@pytest.fixture
def app() -> Iterator[Starlette]:
    app = create_app(api_keys={DEFAULT_API_KEY: DEFAULT_ACCOUNT_ID, "other-key": "other-acct"})
    yield app
    get_control(app).close()


@pytest.fixture
def control(app: Starlette) -> ServerControl:
    return get_control(app)


@pytest.fixture
async def client(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        transport=asgi_transport(app), base_url="http://sgp.local/public", headers=AUTH
    ) as c:
        yield c


async def upsert(client: httpx.AsyncClient, *items: dict[str, Any]) -> httpx.Response:
    return await client.put("/v5/spans/batch", json={"items": list(items)})


def test_all_is_sorted_and_public() -> None:
    assert sgp_testing.__all__ == sorted(sgp_testing.__all__)
    for name in sgp_testing.__all__:
        assert hasattr(sgp_testing, name)


def test_control_repr_hides_keys(control: ServerControl) -> None:
    assert DEFAULT_API_KEY not in repr(control)
    assert "other-key" not in repr(control)


# -- auth ---------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("headers", "status", "word"),
    [
        ({}, 401, "x-api-key"),
        ({"x-api-key": "nope", "x-selected-account-id": DEFAULT_ACCOUNT_ID}, 403, "key"),
        ({"x-api-key": DEFAULT_API_KEY}, 401, "x-selected-account-id"),
        ({"x-api-key": DEFAULT_API_KEY, "x-selected-account-id": "other-acct"}, 403, "account"),
    ],
)
async def test_auth(app: Starlette, headers: dict[str, str], status: int, word: str) -> None:
    async with httpx.AsyncClient(
        transport=asgi_transport(app), base_url="http://sgp.local/public"
    ) as c:
        r = await c.put("/v5/spans/batch", json={"items": [span()]}, headers=headers)
    assert r.status_code == status
    assert word in r.json()["detail"]
    assert "nope" not in r.text
    assert DEFAULT_API_KEY not in r.text
    assert r.headers["x-request-id"]


@pytest.mark.anyio
async def test_second_key_selects_its_own_account(app: Starlette) -> None:
    headers = {"x-api-key": "other-key", "x-selected-account-id": "other-acct"}
    async with httpx.AsyncClient(
        transport=asgi_transport(app), base_url="http://sgp.local/public", headers=headers
    ) as c:
        r = await upsert(c, span())
        assert r.status_code == 200
        assert r.json()["items"][0]["account_id"] == "other-acct"
    assert get_control(app).store.count(account_id=DEFAULT_ACCOUNT_ID) == 0


# -- upsert semantics -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_upsert_answer_shape(client: httpx.AsyncClient) -> None:
    r = await upsert(client, span(input={"q": 1}, type="COMPLETION", status="SUCCESS"))
    assert r.status_code == 200
    assert r.headers["x-request-id"]
    body = r.json()
    assert body["object"] == "list"
    [item] = body["items"]
    assert item["object"] == "span"
    assert item["account_id"] == DEFAULT_ACCOUNT_ID
    assert item["created_by"]["object"] == "identity"
    assert item["input_tokens"] is None
    assert item["output_tokens"] is None
    assert item["input"] == {"q": 1}
    assert DEFAULT_API_KEY not in r.text


@pytest.mark.anyio
async def test_missing_id_gets_one(client: httpx.AsyncClient, control: ServerControl) -> None:
    item = span()
    del item["id"]
    r = await upsert(client, item)
    assert r.status_code == 200
    span_id = r.json()["items"][0]["id"]
    assert len(span_id) == 32
    assert control.store.get_span(span_id) is not None


@pytest.mark.anyio
@pytest.mark.parametrize("completed_first", [True, False])
async def test_completed_beats_in_progress_across_batches(
    client: httpx.AsyncClient, control: ServerControl, completed_first: bool
) -> None:
    done = span(end_timestamp=END, output={"a": 1})
    running = span(input={"x": 1})
    for item in (done, running) if completed_first else (running, done):
        assert (await upsert(client, item)).status_code == 200
    stored = control.store.get_span("s1")
    assert stored is not None
    assert stored["end_timestamp"] == END
    assert control.store.count() == 1
    if completed_first:
        # The echo is what is stored, not the losing in-progress write.
        r = await upsert(client, running)
        assert r.json()["items"][0]["end_timestamp"] == END


@pytest.mark.anyio
@pytest.mark.parametrize("completed_first", [True, False])
async def test_completed_beats_in_progress_within_batch(
    client: httpx.AsyncClient, control: ServerControl, completed_first: bool
) -> None:
    done = span(end_timestamp=END)
    running = span()
    items = (done, running) if completed_first else (running, done)
    r = await upsert(client, *items)
    assert [i["end_timestamp"] for i in r.json()["items"]] == [END]
    assert control.store.count() == 1


@pytest.mark.anyio
async def test_later_wins(client: httpx.AsyncClient, control: ServerControl) -> None:
    await upsert(client, span(name="a"), span(name="b"))
    assert control.store.all_spans()[0]["name"] == "b"
    await upsert(client, span(name="c"))
    assert control.store.all_spans()[0]["name"] == "c"
    await upsert(client, span(name="d", end_timestamp=END), span(name="e", end_timestamp=END))
    await upsert(client, span(name="f", end_timestamp=END))
    assert [s["name"] for s in control.store.all_spans()] == ["f"]


@pytest.mark.anyio
async def test_same_id_in_two_traces_is_two_spans(
    client: httpx.AsyncClient, control: ServerControl
) -> None:
    await upsert(client, span(trace_id="t1"), span(trace_id="t2"))
    assert control.store.count() == 2


@pytest.mark.anyio
async def test_utc_day_of_start_is_part_of_identity(
    client: httpx.AsyncClient, control: ServerControl
) -> None:
    await upsert(client, span(start_timestamp="2025-03-01T23:59:00Z"))
    # Same UTC day written with another offset: same row.
    await upsert(client, span(start_timestamp="2025-03-02T00:30:00+01:00"))
    assert control.store.count() == 1
    await upsert(client, span(start_timestamp="2025-03-02T00:00:01Z"))
    assert control.store.count() == 2


@pytest.mark.anyio
async def test_post_batch_keeps_existing(client: httpx.AsyncClient, control: ServerControl) -> None:
    await upsert(client, span(name="first"))
    r = await client.post("/v5/spans/batch", json={"items": [span(name="second"), span("s2")]})
    assert r.status_code == 200
    assert [i["name"] for i in r.json()["items"]] == ["first", "op"]
    assert control.store.count() == 2


@pytest.mark.anyio
async def test_create_and_get_one(client: httpx.AsyncClient) -> None:
    r = await client.post("/v5/spans", json=span("one"))
    assert r.status_code == 200
    assert r.json()["object"] == "span"
    r = await client.get("/v5/spans/one")
    assert r.status_code == 200
    assert r.json()["id"] == "one"
    r = await client.get("/v5/spans/missing")
    assert r.status_code == 404
    assert "detail" in r.json()
    r = await client.post("/v5/spans", json={"trace_id": "t", "start_timestamp": START})
    assert r.status_code == 422
    assert r.json()["detail"].startswith("name")


# -- validation ----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_batch_limit(client: httpx.AsyncClient, control: ServerControl) -> None:
    r = await upsert(client, *(span(f"s{i}") for i in range(1001)))
    assert r.status_code == 422
    assert "1000" in r.json()["detail"]
    r = await upsert(client, *(span(f"s{i}") for i in range(1000)))
    assert r.status_code == 200
    assert control.store.count() == 1000


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("bad", "status", "field"),
    [
        ({"name": None}, 422, "name"),
        ({"trace_id": 5}, 422, "trace_id"),
        ({"start_timestamp": "yesterday"}, 422, "start_timestamp"),
        ({"end_timestamp": "2025-03-01T11:00:00Z"}, 422, "end_timestamp"),
        ({"status": "OK"}, 422, "status"),
        ({"type": "LLM"}, 422, "type"),
        ({"input": [1]}, 422, "input"),
        ({"metadata": "x"}, 422, "metadata"),
        ({"id": "x" * 257}, 422, "id"),
        ({"group_id": "é" * 129}, 422, "group_id"),
        ({"obs_trace_id": "ABC"}, 422, "obs_trace_id"),
        ({"id": "a\x00b"}, 400, "id"),
        ({"trace_id": "a\x00"}, 400, "trace_id"),
        ({"parent_id": "\x00"}, 400, "parent_id"),
        ({"group_id": "g\x00"}, 400, "group_id"),
    ],
)
async def test_invalid_item_rejects_whole_batch(
    client: httpx.AsyncClient,
    control: ServerControl,
    bad: dict[str, Any],
    status: int,
    field: str,
) -> None:
    r = await upsert(client, span("ok"), span("bad", **bad))
    assert r.status_code == status
    assert r.json()["detail"].startswith(f"items[1].{field}")
    assert control.store.count() == 0


@pytest.mark.anyio
async def test_long_id_within_byte_limit_is_fine(client: httpx.AsyncClient) -> None:
    assert (await upsert(client, span("x" * 256))).status_code == 200


@pytest.mark.anyio
async def test_lone_surrogate_in_id_is_400(client: httpx.AsyncClient) -> None:
    body = json.dumps({"items": [span("a\ud800b")]})  # stdlib escapes it as \ud800
    r = await client.put("/v5/spans/batch", content=body)
    assert r.status_code == 400
    assert r.json()["detail"] == "items[0].id: contains invalid UTF-8"


@pytest.mark.anyio
async def test_invalid_utf8_byte_in_trace_id_is_400(client: httpx.AsyncClient) -> None:
    body = json.dumps({"items": [span(trace_id="tXX")]}).encode().replace(b"XX", b"\xff")
    r = await client.put("/v5/spans/batch", content=body)
    assert r.status_code == 400
    assert r.json()["detail"].startswith("items[0].trace_id")


@pytest.mark.anyio
async def test_bad_characters_elsewhere_become_replacement_char(
    client: httpx.AsyncClient, control: ServerControl
) -> None:
    item = span(name="n\x00m", input={"k\ud800": ["v\x00"]}, metadata={"m": "a\udfffb"})
    body = json.dumps({"items": [item]}).encode().replace(b"op", b"o\xffp")
    r = await client.put("/v5/spans/batch", content=body)
    assert r.status_code == 200
    stored = control.store.get_span("s1")
    assert stored is not None
    assert stored["name"] == "n\ufffdm"
    assert stored["input"] == {"k\ufffd": ["v\ufffd"]}
    assert stored["metadata"] == {"m": "a\ufffdb"}


@pytest.mark.anyio
async def test_malformed_json_is_400(client: httpx.AsyncClient) -> None:
    r = await client.put("/v5/spans/batch", content=b'{"items": [')
    assert r.status_code == 400
    assert "JSON" in r.json()["detail"]
    r = await client.put("/v5/spans/batch", content=b"[]")
    assert r.status_code == 422


@pytest.mark.anyio
async def test_cycle_is_409(client: httpx.AsyncClient, control: ServerControl) -> None:
    r = await upsert(
        client, span("a", parent_id="b"), span("b", parent_id="c"), span("c", parent_id="a")
    )
    assert r.status_code == 409
    assert "cycle" in r.json()["detail"]
    r = await upsert(client, span("self", parent_id="self"))
    assert r.status_code == 409
    assert control.store.count() == 0


@pytest.mark.anyio
async def test_parent_in_another_trace_is_409(
    client: httpx.AsyncClient, control: ServerControl
) -> None:
    r = await upsert(client, span("p", trace_id="t1"), span("c", trace_id="t2", parent_id="p"))
    assert r.status_code == 409
    assert r.json()["detail"] == "items[1].parent_id: parent span belongs to another trace"
    assert (await upsert(client, span("p", trace_id="t1"))).status_code == 200
    r = await upsert(client, span("c", trace_id="t2", parent_id="p"))
    assert r.status_code == 409
    # Parents in the same trace, stored or in the batch, and unknown parents are fine.
    r = await upsert(client, span("c", trace_id="t1", parent_id="p"), span("d", parent_id="c"))
    assert r.status_code == 200
    assert (await upsert(client, span("e", parent_id="not-yet-sent"))).status_code == 200
    assert control.store.count() == 4


# -- search ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_search_pagination(client: httpx.AsyncClient) -> None:
    items = [span(f"s{i:02}", start_timestamp=f"2025-03-01T12:00:{i:02}Z") for i in range(7)]
    await upsert(client, *items, span("other", trace_id="t2"))
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor:
            params["starting_after"] = cursor
        r = await client.post("/v5/spans/search", json={"trace_ids": ["t1"]}, params=params)
        assert r.status_code == 200
        page = r.json()
        assert page["object"] == "list"
        seen += [s["id"] for s in page["items"]]
        if not page["has_more"]:
            break
        cursor = page["items"][-1]["id"]
    assert seen == [f"s{i:02}" for i in range(7)]
    r = await client.post(
        "/v5/spans/search",
        json={"trace_ids": ["t1"]},
        params={"limit": 2, "ending_before": "s04"},
    )
    assert [s["id"] for s in r.json()["items"]] == ["s02", "s03"]
    assert r.json()["has_more"] is True
    r = await client.post(
        "/v5/spans/search", json={"trace_ids": ["t1"]}, params={"sort_order": "desc", "limit": 2}
    )
    assert [s["id"] for s in r.json()["items"]] == ["s06", "s05"]


@pytest.mark.anyio
async def test_search_filters(client: httpx.AsyncClient) -> None:
    await upsert(
        client,
        span("root", status="SUCCESS", type="AGENT_WORKFLOW", end_timestamp=END),
        span("child", parent_id="root", status="ERROR", group_id="g", name="llm"),
    )

    async def ids(filters: dict[str, Any], **params: Any) -> list[str]:
        r = await client.post("/v5/spans/search", json=filters, params=params)
        assert r.status_code == 200, r.text
        return sorted(s["id"] for s in r.json()["items"])

    assert await ids({}) == ["child", "root"]
    assert await ids({"span_ids": ["root"]}) == ["root"]
    assert await ids({"parent_ids": ["root"]}) == ["child"]
    assert await ids({"statuses": ["ERROR"]}) == ["child"]
    assert await ids({"types": ["AGENT_WORKFLOW"]}) == ["root"]
    assert await ids({"names": ["llm"]}) == ["child"]
    assert await ids({"group_id": "g"}) == ["child"]
    assert await ids({"parents_only": True}) == ["root"]
    assert await ids({"excluded_span_ids": ["root"]}) == ["child"]
    assert await ids({}, sort_by="duration_ms") == ["child", "root"]
    r = await client.post("/v5/spans/search", json={}, params={"sort_by": "nope"})
    assert r.status_code == 422


# -- faults ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_latency_serves_concurrently(
    client: httpx.AsyncClient, control: ServerControl
) -> None:
    control.set_faults(latency=0.2)
    statuses: list[int] = []

    async def one(i: int) -> None:
        statuses.append((await upsert(client, span(f"s{i}"))).status_code)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for i in range(5):
                tg.start_soon(one, i)
    assert statuses == [200] * 5
    stats = control.stats()
    assert stats["max_concurrent"] == 5
    assert stats["faults"]["latency"] == 5


@pytest.mark.anyio
@pytest.mark.parametrize(("status", "retry_after"), [(503, "0"), (429, "2")])
async def test_status_every_nth(
    client: httpx.AsyncClient, control: ServerControl, status: int, retry_after: str
) -> None:
    control.set_faults(status_code=status, status_every_n=2, retry_after=retry_after)
    results = [(await upsert(client, span(f"s{i}"))) for i in range(4)]
    assert [r.status_code for r in results] == [200, status, 200, status]
    assert results[1].headers["retry-after"] == retry_after
    assert "detail" in results[1].json()
    assert control.store.count() == 2
    assert control.stats()["rejections"] == {str(status): 2}


@pytest.mark.anyio
async def test_status_rate_is_seeded(client: httpx.AsyncClient, control: ServerControl) -> None:
    async def run() -> list[int]:
        control.set_faults(status_rate=0.5, seed=7)
        return [(await client.get("/v5/spans/x")).status_code for _ in range(20)]

    first = await run()
    assert first == await run()
    assert set(first) == {404, 503}


@pytest.mark.anyio
async def test_drop_is_a_connection_error(
    client: httpx.AsyncClient, control: ServerControl
) -> None:
    control.set_faults(drop_every_n=2)
    assert (await upsert(client, span("a"))).status_code == 200
    with pytest.raises(httpx.RemoteProtocolError):
        await upsert(client, span("b"))
    assert control.store.count() == 1
    assert control.stats()["faults"] == {"drop": 1}


@pytest.mark.anyio
async def test_outage_window(client: httpx.AsyncClient, control: ServerControl) -> None:
    control.set_faults(outage_seconds=60, retry_after="0")
    r = await upsert(client, span())
    assert r.status_code == 503
    assert r.headers["retry-after"] == "0"
    control.set_faults(outage_seconds=60, outage_mode="drop")
    with pytest.raises(httpx.RemoteProtocolError):
        await upsert(client, span())
    control.set_faults(outage_seconds=0.05)
    await anyio.sleep(0.1)  # the window itself is wall-clock time
    assert (await upsert(client, span())).status_code == 200


@pytest.mark.anyio
async def test_body_limit(client: httpx.AsyncClient, control: ServerControl) -> None:
    control.set_faults(max_body_bytes=2000)
    r = await upsert(client, *(span(f"s{i}") for i in range(50)))
    assert r.status_code == 413
    assert "2000" in r.json()["detail"]
    assert (await upsert(client, span())).status_code == 200


@pytest.mark.anyio
async def test_hang_is_cancellable(client: httpx.AsyncClient, control: ServerControl) -> None:
    control.set_faults(hang=True)
    finished = False

    async def request() -> None:
        nonlocal finished
        await upsert(client, span())
        finished = True

    async with anyio.create_task_group() as tg:
        tg.start_soon(request)
        await wait_all_tasks_blocked()
        assert control.stats()["in_flight"] == 1
        tg.cancel_scope.cancel()
    assert not finished
    with anyio.move_on_after(0.05) as scope:
        await upsert(client, span())
    assert scope.cancelled_caught
    control.clear_faults()
    await checkpoint()
    assert control.stats()["in_flight"] == 0
    assert (await upsert(client, span())).status_code == 200


@pytest.mark.anyio
async def test_admin_endpoints(client: httpx.AsyncClient, control: ServerControl) -> None:
    admin = "http://sgp.local/_admin"
    r = await client.put(f"{admin}/faults", json={"status_every_n": 3, "retry_after": "0"})
    assert r.status_code == 200
    assert r.json()["status_every_n"] == 3
    assert control.faults == Faults(status_every_n=3, retry_after="0")
    r = await client.patch(f"{admin}/faults", json={"latency": 0.001})
    assert r.json()["status_every_n"] == 3
    assert (await client.put(f"{admin}/faults", json={"bogus": 1})).status_code == 422
    assert (await client.put(f"{admin}/faults", json={"status_rate": 2})).status_code == 422
    await client.put(f"{admin}/faults", json={})
    await upsert(client, span("a"), span("b", trace_id="t2"))
    assert (await client.get(f"{admin}/count", params={"trace_id": "t2"})).json() == {"count": 1}
    spans = (await client.get(f"{admin}/spans")).json()
    assert [s["id"] for s in spans["items"]] == ["a", "b"]
    assert (await client.get(f"{admin}/health")).json() == {"status": "ok"}
    stats = (await client.get(f"{admin}/stats")).json()
    assert stats["requests"] == 1
    assert stats["by_endpoint"] == {"upsert_batch": 1}
    assert stats["upsert_requests"] == 1
    assert stats["items_received"] == 2
    assert stats["items_stored"] == 2
    assert stats["bytes_received"] > 0
    assert (await client.post(f"{admin}/reset")).status_code == 200
    assert control.store.count() == 0
    assert control.stats()["requests"] == 0


@pytest.mark.anyio
async def test_unknown_api_path_is_json_404(client: httpx.AsyncClient) -> None:
    r = await client.get("/v5/nothing")
    assert r.status_code == 404
    assert r.json() == {"detail": "Not Found"}


def test_faults_validation() -> None:
    with pytest.raises(ValueError, match="unknown"):
        Faults.from_dict({"latncy": 1})
    with pytest.raises(ValueError, match="outage_mode"):
        Faults(outage_mode="boom")  # type: ignore[arg-type]
    assert Faults().merged({"hang": True}).hang is True


# -- fast paths agree with the precise path --------------------------------------------------

SDK_START = "2026-11-28T01:10:36.046063+00:00"
SDK_END = "2026-11-28T01:10:37.046063+00:00"


def sdk_item(span_id: Any = "a" * 32, trace_id: Any = "b" * 32, **fields: Any) -> dict[str, Any]:
    """An item as the SDK sends it: every field, unset ones null."""
    item: dict[str, Any] = dict.fromkeys(_spans.SDK_FIELDS)
    item.update(
        name="s",
        trace_id=trace_id,
        id=span_id,
        start_timestamp=SDK_START,
        end_timestamp=SDK_END,
        status="SUCCESS",
        input={"q": "x" * 150},
        output={"a": "y" * 150},
    )
    item.update(fields)
    return item


def outcome(
    items: list[dict[str, Any]], *, precise: bool, dirty: bool = False, kind: StoreKind = "tracing"
) -> Any:
    """What `prepare_items` makes of `items`; `precise` forces the item-by-item path (an
    unknown key keeps the items off both fast paths and is dropped before storing)."""
    items = copy.deepcopy(items)
    sent = {item.get("id") for item in items if type(item) is dict}
    if precise:
        items = [{**item, "zz_unknown": 1} if type(item) is dict else item for item in items]
    try:
        rows = _spans.prepare_items(
            items,
            dirty=dirty,
            account_id="acct",
            created_by={"id": "me"},
            traces_of=lambda _account, ids: {i: {"t-stored"} for i in ids if i == "p-stored"},
            kind=kind,
        ).rows
    except _spans.ApiError as exc:
        return ("error", exc.status, exc.detail)
    result = []
    for row in rows:
        data = orjson.loads(row[6])
        span_id = row[2] if row[2] in sent else "<generated>"  # a fresh uuid otherwise
        data["id"] = span_id
        result.append((row[0], row[1], span_id, *row[3:6], data))
    return result


TRICKY_ITEMS: list[dict[str, Any]] = [
    sdk_item(),
    sdk_item(end_timestamp=None, status=None, output=None),
    sdk_item(end_timestamp=SDK_START),
    sdk_item(end_timestamp="2026-11-28T01:10:36.046062+00:00"),
    sdk_item(start_timestamp="2026-11-28T01:10:36", end_timestamp="2026-11-28T01:10:37"),
    sdk_item(start_timestamp="2026-11-28T01:10:36Z", end_timestamp="2026-11-28T02:10:37+01:00"),
    sdk_item(start_timestamp="2026-11-28T23:30:00-01:00", end_timestamp=None),
    sdk_item(start_timestamp="not a date"),
    sdk_item(start_timestamp=None),
    sdk_item(end_timestamp=5),
    sdk_item(span_id="é" * 64),
    sdk_item(span_id="x" * 65),
    sdk_item(span_id="é" * 129),
    sdk_item(span_id=""),
    sdk_item(span_id=None),
    sdk_item(trace_id=7),
    sdk_item(name=None),
    sdk_item(name="n\ud800m"),
    sdk_item(parent_id=""),
    sdk_item(parent_id="x" * 300),
    sdk_item(group_id=3),
    sdk_item(group_id="g"),
    sdk_item(status="OK"),
    sdk_item(status=["SUCCESS"]),
    sdk_item(status=True),
    sdk_item(type="COMPLETION"),
    sdk_item(type="LLM"),
    sdk_item(type={"a": 1}),
    sdk_item(input=[1]),
    sdk_item(metadata="m"),
    sdk_item(expected={"e": None}),
    sdk_item(application_variant_id=1),
    sdk_item(application_interaction_id="i"),
    sdk_item(obs_trace_id="0" * 32, obs_span_id="0" * 16),
    sdk_item(obs_trace_id="ABC"),
    sdk_item(parent_id="p-stored", trace_id="t-stored"),
    sdk_item(parent_id="p-stored", trace_id="t-else"),
]


@pytest.mark.parametrize("item", TRICKY_ITEMS)
def test_fast_and_precise_paths_agree_on_one_item(item: dict[str, Any]) -> None:
    assert outcome([item], precise=False) == outcome([item], precise=True)
    quick = _spans._quick_check(copy.deepcopy(item))
    if quick is not None:
        assert quick == _spans._check_item(0, copy.deepcopy(item))
    # Also as the odd one out in a batch of plain SDK items, and with nulls left out.
    batch = [sdk_item(f"{n:032x}") for n in range(3)]
    batch.insert(1, item)
    assert outcome(batch, precise=False) == outcome(batch, precise=True)
    bare = {k: v for k, v in item.items() if v is not None}
    fast, precise = outcome([bare], precise=False), outcome([bare], precise=True)
    assert fast == precise


@pytest.mark.parametrize(
    "items",
    [
        # duplicates: completed beats in progress, else the later wins
        [sdk_item(end_timestamp=None, status=None), sdk_item()],
        [sdk_item(), sdk_item(end_timestamp=None, status=None, name="later")],
        [sdk_item(name="one"), sdk_item(name="two")],
        # same id, another UTC day: two rows
        [sdk_item(), sdk_item(start_timestamp="2026-11-29T00:00:00+00:00", end_timestamp=None)],
        # parent links: in the batch, cycles, another trace, deep chains
        [sdk_item("p"), sdk_item("c", parent_id="p"), sdk_item("g", parent_id="c")],
        [sdk_item("a", parent_id="b"), sdk_item("b", parent_id="a")],
        [sdk_item("a", parent_id="a")],
        [sdk_item("p", trace_id="t1"), sdk_item("c", trace_id="t2", parent_id="p")],
        [sdk_item(f"n{k}", parent_id=f"n{k + 1}" if k < 9 else None) for k in range(10)],
        [sdk_item(f"n{k}", parent_id=f"n{(k + 1) % 10}") for k in range(10)],
        [sdk_item(f"n{k}", parent_id=f"n{k + 1}") for k in range(10)] + [sdk_item("r")],
        # mixed open and completed items, one ending before it starts
        [sdk_item("o", end_timestamp=None), sdk_item("c"), sdk_item("o2", end_timestamp=None)],
        [sdk_item("o", end_timestamp=None), sdk_item("bad", end_timestamp="2020-01-01T00:00:00Z")],
        [sdk_item("c"), sdk_item("bad", end_timestamp="2020-01-01T00:00:00Z")],
        [sdk_item(), "not an object"],
        [],
    ],
)
@pytest.mark.parametrize("kind", ["tracing", "legacy"])
def test_fast_and_precise_paths_agree_on_batches(
    items: list[dict[str, Any]], kind: StoreKind
) -> None:
    assert outcome(items, precise=False, kind=kind) == outcome(items, precise=True, kind=kind)


def test_sdk_shape_takes_the_fast_paths() -> None:
    items = [sdk_item(f"{n:032x}", parent_id=None if n == 0 else f"{0:032x}") for n in range(5)]
    assert _spans._quick_batch(copy.deepcopy(items), "acct", {}, lambda _a, _i: {}) is not None
    assert _spans._quick_check(items[0]) is not None
    open_item = sdk_item(end_timestamp=None, status=None)
    assert _spans._quick_batch([open_item], "acct", {}, lambda _a, _i: {}) is not None


def test_items_leaving_out_unset_fields_take_the_fast_path_too() -> None:
    # What the SDK sends: unset content fields left out, and from the tracing layer only
    # the fields it sets. Stored the same as with explicit nulls.
    full = [sdk_item(f"{n:032x}", input=None, expected=None) for n in range(3)]
    lean = [
        {k: v for k, v in item.items() if not (k in ("input", "expected") or v is None)}
        for item in copy.deepcopy(full)
    ]
    assert _spans._quick_batch(copy.deepcopy(lean), "acct", {}, lambda _a, _i: {}) is not None
    assert outcome(lean, precise=False) == outcome(full, precise=False)
    assert outcome(lean, precise=True) == outcome(full, precise=True)


def test_dirty_bodies_agree_with_clean_ones() -> None:
    items = [sdk_item(name="plain"), sdk_item("c" * 32, parent_id="a" * 32)]
    assert outcome(items, precise=False, dirty=True) == outcome(items, precise=False)


@pytest.mark.anyio
async def test_new_spans_then_updates_and_inserts(
    client: httpx.AsyncClient, control: ServerControl
) -> None:
    opened = [sdk_item(f"{n:032x}", end_timestamp=None, status=None) for n in range(20)]
    r = await upsert(client, *opened)
    assert r.status_code == 200
    assert [i["end_timestamp"] for i in r.json()["items"]] == [None] * 20
    closed = [sdk_item(f"{n:032x}") for n in range(10)] + [sdk_item("new" + "0" * 29)]
    r = await upsert(client, *closed)
    assert [i["end_timestamp"] for i in r.json()["items"]] == [SDK_END] * 11
    assert control.store.count() == 21
    r = await upsert(client, *opened[:2])  # in progress again: the completed spans stay
    assert [i["end_timestamp"] for i in r.json()["items"]] == [SDK_END] * 2
    r = await client.post("/v5/spans/batch", json={"items": [sdk_item("x" * 32, name="late")]})
    assert r.json()["items"][0]["name"] == "late"
    assert control.store.count() == 22
