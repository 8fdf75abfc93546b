"""Security: the API key never leaks, TLS is verified, plain HTTP only to loopback, and the
client-side ``redact`` hook masks credential-shaped values before span data leaves the process.

The end-to-end tests of the hook's wiring check ``AsyncSGPClient(redact=...)`` as applied by
the queue and by direct calls.
"""

from __future__ import annotations

import logging
import ssl
import traceback
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette

from sgp_client import (
    APIConnectionError,
    APIStatusError,
    AsyncSGPClient,
    Backoff,
    ConfigurationError,
    DroppedSpan,
    PermissionDeniedError,
    SpanItem,
    UpsertQueue,
)
from sgp_client._redact import REDACTED, redact_credentials
from sgp_client.testing import (
    DEFAULT_ACCOUNT_ID,
    DEFAULT_API_KEY,
    ServerControl,
    ServerProcess,
    asgi_transport,
    create_app,
    get_control,
)

START = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
FAST = Backoff(initial=0.001, maximum=0.01)
SECRET_KEY = "sk-live-SECRET-0123456789abcdefXYZ"
MARK = REDACTED.decode()


def everything_said(exc: BaseException) -> str:
    """Every string an exception chain offers: str, repr, the formatted traceback."""
    parts = ["".join(traceback.format_exception(exc))]
    seen: BaseException | None = exc
    while seen is not None:
        parts += [str(seen), repr(seen), repr(getattr(seen, "args", ()))]
        seen = seen.__cause__ or seen.__context__
    return "\n".join(parts)


# ------------------------------------------------------------------------- the key never leaks


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    for name in ("sgp_client", "httpx", "httpcore"):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


@pytest.mark.anyio
async def test_refused_key_from_the_environment_never_shows(
    server: ServerProcess, debug_logs: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over loopback, DEBUG logs of sgp_client, httpx and httpcore, direct call and queue."""
    monkeypatch.setenv("SGP_API_KEY", SECRET_KEY)
    monkeypatch.setenv("SGP_ACCOUNT_ID", server.account_id)
    monkeypatch.setenv("SGP_CLIENT_BASE_URL", server.base_url)
    dropped: list[tuple[Sequence[DroppedSpan], str, BaseException | None]] = []
    async with AsyncSGPClient(backoff=FAST) as client:
        with pytest.raises(PermissionDeniedError) as refused:
            await client.spans.upsert_batch(
                [SpanItem(name="n", trace_id="t", start_timestamp=START)]
            )
        async with UpsertQueue(
            client, flush_interval=0.01, on_drop=lambda *call: dropped.append(call)
        ) as queue:
            queue.submit(SpanItem(name="n", trace_id="t", start_timestamp=START))
        texts = [everything_said(refused.value), repr(client), str(client)]
    assert queue.stats.dropped == {"unauthorized": 1}
    [(_, reason, error)] = dropped
    assert reason == "unauthorized"
    assert error is not None
    texts.append(everything_said(error))
    loggers = {record.name.split(".")[0] for record in debug_logs.records}
    # The logs were captured (loopback requests go through the client's own HTTP/1.1 pool,
    # not httpx; its DEBUG lines are under sgp_client.wire).
    assert "sgp_client" in loggers, loggers
    assert any(r.levelno == logging.ERROR for r in debug_logs.records)  # the loud report
    texts.append(debug_logs.text)
    texts += [str(record.__dict__) for record in debug_logs.records]
    for text in texts:
        assert SECRET_KEY not in text


@pytest.mark.anyio
async def test_key_absent_from_connection_errors(
    server: ServerProcess, debug_logs: pytest.LogCaptureFixture
) -> None:
    server.kill()  # refused connections; the ``server`` fixture restarts it for the next test
    async with AsyncSGPClient(
        api_key=SECRET_KEY, account_id="acct", base_url=server.base_url, backoff=FAST
    ) as client:
        with pytest.raises(APIConnectionError) as info:
            await client.spans.get("x")
    assert SECRET_KEY not in everything_said(info.value)
    assert SECRET_KEY not in debug_logs.text


@pytest.mark.anyio
async def test_key_echoed_in_an_error_detail_is_masked(
    app: Starlette, control: ServerControl
) -> None:
    async def echo(request: httpx.Request) -> httpx.Response:
        key = request.headers["x-api-key"]
        return httpx.Response(400, json={"detail": f"bad key {key}", "echo": [key, {key: key}]})

    async with AsyncSGPClient(
        api_key=SECRET_KEY,
        account_id="acct",
        base_url="http://127.0.0.1/public",
        transport=httpx.MockTransport(echo),
    ) as client:
        with pytest.raises(APIStatusError, match="bad key") as info:
            await client.spans.get("x")
    assert SECRET_KEY not in everything_said(info.value)
    assert SECRET_KEY not in repr(info.value.detail)


def test_key_absent_from_repr_and_str_of_every_object() -> None:
    client = AsyncSGPClient(api_key=SECRET_KEY, account_id="acct")
    config = client._config
    for text in (repr(client), str(client), repr(config), str(config)):
        assert SECRET_KEY not in text
    with pytest.raises(ConfigurationError) as info:
        AsyncSGPClient(api_key=SECRET_KEY + "\n", account_id="acct")
    assert SECRET_KEY not in everything_said(info.value)


# --------------------------------------------------------------------- TLS and plain HTTP rules


def test_tls_verification_is_on_by_default() -> None:
    client = AsyncSGPClient(api_key="k", account_id="a")
    transport = client._http._transport
    assert isinstance(transport, httpx.AsyncHTTPTransport)
    context = transport._pool._ssl_context
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True
    assert client.base_url.startswith("https://")


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:5003/public",
        "http://127.9.9.9/public",
        "http://localhost:8080",
        "http://LOCALHOST.",
        "http://[::1]:5003/public",
    ],
)
def test_plain_http_allowed_for_loopback(url: str) -> None:
    assert AsyncSGPClient(api_key="k", account_id="a", base_url=url).base_url == url.rstrip("/")


@pytest.mark.parametrize(
    "url",
    [
        "http://api.egp.scale.com",
        "http://10.0.0.5:5003/public",
        "http://0.0.0.0:5003",
        "http://127.0.0.1.nip.io/public",
        "http://localhost.evil.example/public",
        "http://[::ffff:10.0.0.1]/",
    ],
)
def test_plain_http_refused_elsewhere_unless_explicitly_allowed(url: str) -> None:
    with pytest.raises(ConfigurationError, match="allow_insecure_http"):
        AsyncSGPClient(api_key="k", account_id="a", base_url=url)
    client = AsyncSGPClient(api_key="k", account_id="a", base_url=url, allow_insecure_http=True)
    assert client.base_url == url.rstrip("/")


# ------------------------------------------------------------------------- the redact hook


def redacted(value: Any) -> Any:
    return orjson.loads(redact_credentials(orjson.dumps(value)))


CREDENTIALS: list[tuple[Any, Any]] = [
    # Bearer tokens, in free text and in headers.
    (
        "curl -H 'Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOjF9.c2lnbmF0dXJl'",
        f"curl -H 'Authorization: Bearer {MARK}'",
    ),
    ("bearer\tabc123def456ghi789", f"bearer\t{MARK}"),
    ("line one\nBearer 0123456789abcdef", f"line one\nBearer {MARK}"),
    # sk- style keys.
    ("key: sk-proj-AbCdEf0123456789abcdefXYZ_-", f"key: {MARK}"),
    ("sk-ant-api03-abcdefghijklmnopqrstuvwxyz012345", MARK),
    ("first\nsk-0123456789abcdefghijABCDEFGHIJ", f"first\n{MARK}"),
    (["sk-0123456789abcdefghijABCDEFGHIJ"], [MARK]),
    # Passwords in URLs.
    (
        "postgres://admin:hunter2@db.internal:5432/app",
        f"postgres://admin:{MARK}@db.internal:5432/app",
    ),
    ("redis://:s3cr3t@cache:6379/0", f"redis://:{MARK}@cache:6379/0"),
    # Values of credential-named keys, strings and numbers, any case, nested.
    ({"password": "hunter2"}, {"password": MARK}),
    ({"DB_PASSWORD": "x", "passwd": "y"}, {"DB_PASSWORD": MARK, "passwd": MARK}),
    (
        {"clientSecret": "abc", "aws_secret_access_key": "def"},
        {"clientSecret": MARK, "aws_secret_access_key": MARK},
    ),
    (
        {"api_key": "k1", "apiKey": 12345, "x-api-key": "k3", "OPENAI_API_KEY": "k4"},
        {"api_key": MARK, "apiKey": MARK, "x-api-key": MARK, "OPENAI_API_KEY": MARK},
    ),
    (
        {"refresh_token": "r", "accessToken": "a", "token": "t"},
        {"refresh_token": MARK, "accessToken": MARK, "token": MARK},
    ),
    ({"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": MARK}),
    ({"private_key": "-----BEGIN KEY-----"}, {"private_key": MARK}),
    (
        {"a": {"b": [{"password": 'with "quotes" and \\ backslash'}]}},
        {"a": {"b": [{"password": MARK}]}},
    ),
    (
        {"password": None, "secret": True, "token": {"x": 1}},
        {"password": None, "secret": True, "token": {"x": 1}},
    ),
]


@pytest.mark.parametrize(("value", "expected"), CREDENTIALS)
def test_credentials_are_masked(value: Any, expected: Any) -> None:
    assert redacted(value) == expected


NOT_CREDENTIALS: list[Any] = [
    {"question": "What is the capital of France?", "temperature": 0.2},
    {"max_tokens": 256, "token_count": 3, "tokenizer": "cl100k_base", "tokens": [1, 2]},
    {"key": "user-123", "monkey": "business"},
    "task-0123456789abcdefghijklmnopqrstuv",  # an id-like value holding "sk-"
    "desk-0123456789abcdefghijklmnopqrstuv",
    "sk-short",
    "see https://example.com/docs?q=1#frag and http://user@host/",
    "mail a@b.example, or ask at the desk",
    "the bearer of bad news",
    "Bearer token",
    "",
    ["Bearer", "0123456789abcdef"],  # never across two strings
    {"note": "Bearer", "x": "0123456789abcdefghij"},
]


@pytest.mark.parametrize("value", NOT_CREDENTIALS)
def test_other_values_are_left_alone(value: Any) -> None:
    encoded = orjson.dumps(value)
    assert redact_credentials(encoded) == encoded


def test_clean_values_are_returned_without_a_copy() -> None:
    encoded = orjson.dumps({"question": "What is the capital of France?", "n": 3})
    assert redact_credentials(encoded) is encoded


def test_escapes_are_never_cut() -> None:
    # "\b" + "earer ..." is a backspace escape, not the word bearer: cutting it would leave a
    # broken escape. Literal backslashes before a key stay intact too.
    for value in ["\bearer 0123456789abcdef", "\\sk-0123456789abcdefghijABCD", "\\\\://u:p@h"]:
        out = redact_credentials(orjson.dumps(value))
        orjson.loads(out)


FRAGMENTS = [
    "Bearer ",
    "bearer\t",
    "BEARER  ",
    "sk-",
    "sk-proj-",
    "ABCDEFGHIJ",
    "0123456789",
    "://",
    "user:",
    "pa:ss",
    "@",
    '"',
    "\\",
    "\\u00",
    "\n",
    "\t",
    "\b",
    "\x00",
    ":",
    ",",
    "{",
    "]",
    "password",
    "Secret",
    "token",
    "api_key",
    "authorization",
    "é",
    "\U0001f600",
    "task-",
]
texts = st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=4), max_size=8).map("".join)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=20,
)


@given(json_values)
@settings(max_examples=400, deadline=None)
def test_redaction_always_returns_valid_json_and_is_idempotent(value: Any) -> None:
    once = redact_credentials(orjson.dumps(value))
    orjson.loads(once)  # valid JSON, always
    assert redact_credentials(once) == once


@given(texts)
@settings(max_examples=200, deadline=None)
def test_a_redacted_string_stays_one_string(text: str) -> None:
    out = orjson.loads(redact_credentials(orjson.dumps(text)))
    assert isinstance(out, str)
    assert out == text or MARK in out


# ------------------------------------------------------------- the hook, wired


def credential_item(span_id: str = "sk-0123456789abcdefghij-task") -> SpanItem:
    """Credentials in every redactable field; ids that look like keys but are ids."""
    return SpanItem(
        name="call with Bearer abcdef0123456789xyz",
        trace_id="task-sk-0123456789abcdefghijklmnop",
        id=span_id,
        parent_id="sk-parent-0123456789abcdefghij",
        start_timestamp=START,
        end_timestamp=START + timedelta(seconds=1),
        input={"api_key": "sk-in-0123456789abcdefghijk", "q": "hi"},
        output={"text": "use postgres://u:hunter2@db/x"},
        metadata={"headers": {"Authorization": "Bearer abcdef0123456789xyz"}},
        expected={"password": "hunter2"},
    )


def assert_stored_redacted(row: dict[str, Any], item: SpanItem) -> None:
    assert row["id"] == item.id
    assert row["trace_id"] == item.trace_id
    assert row["parent_id"] == item.parent_id
    assert row["name"] == f"call with Bearer {MARK}"
    assert row["input"] == {"api_key": MARK, "q": "hi"}
    assert row["output"] == {"text": f"use postgres://u:{MARK}@db/x"}
    assert row["metadata"] == {"headers": {"Authorization": MARK}}
    assert row["expected"] == {"password": MARK}


@pytest.fixture
def app() -> Iterator[Starlette]:
    """The local server storing values as sent: it masks credentials like the real API by
    default, which would hide what the client itself sends."""
    app = create_app(mask_credentials=False)
    yield app
    get_control(app).close()


def in_process_client(app: Starlette, **kwargs: Any) -> AsyncSGPClient:
    return AsyncSGPClient(
        api_key=DEFAULT_API_KEY,
        account_id=DEFAULT_ACCOUNT_ID,
        base_url="http://127.0.0.1/public",
        transport=asgi_transport(app),
        backoff=FAST,
        **kwargs,
    )


@pytest.mark.anyio
async def test_direct_calls_redact_when_asked(app: Starlette, control: ServerControl) -> None:
    item = credential_item()
    async with in_process_client(app, redact=redact_credentials) as client:
        await client.spans.upsert_batch([item])
        await client.spans.create(credential_item("second-id"))
    rows = {row["id"]: row for row in control.store.all_spans()}
    assert_stored_redacted(rows[item.id], item)
    assert rows["second-id"]["expected"] == {"password": MARK}


@pytest.mark.anyio
async def test_the_queue_redacts_when_asked_and_on_drop_sees_redacted_data(
    app: Starlette, control: ServerControl
) -> None:
    item = credential_item()
    async with in_process_client(app, redact=redact_credentials) as client:
        async with UpsertQueue(client, flush_interval=0.01) as queue:
            queue.submit(item)
        control.set_faults(status_code=422, status_every_n=1)
        dropped: list[DroppedSpan] = []
        async with UpsertQueue(
            client, flush_interval=0.01, on_drop=lambda items, *_: dropped.extend(items)
        ) as queue:
            queue.submit(credential_item("rejected-id"))
    [row] = control.store.all_spans()
    assert_stored_redacted(row, item)
    [drop] = dropped
    assert b"hunter2" not in drop.payload
    assert b"sk-in-" not in drop.payload


@pytest.mark.anyio
@pytest.mark.parametrize("explicit", [False, True])
async def test_without_redaction_values_are_sent_unchanged(
    app: Starlette, control: ServerControl, explicit: bool
) -> None:
    # Off by default: the SGP API redacts credential-shaped values itself, server side.
    item = credential_item()
    async with in_process_client(app, **({"redact": None} if explicit else {})) as client:
        assert client.redact is None
        await client.spans.upsert_batch([item])
        async with UpsertQueue(client, flush_interval=0.01) as queue:
            queue.submit(credential_item("queued-id"))
    for row in control.store.all_spans():
        assert row["expected"] == {"password": "hunter2"}
        assert row["name"] == item.name


@pytest.mark.anyio
async def test_a_custom_redactor_sees_each_field_value_but_never_ids(
    app: Starlette, control: ServerControl
) -> None:
    seen: list[bytes] = []

    def redactor(data: bytes) -> bytes:
        seen.append(data)
        return data.replace(b"classified", b"[gone]")

    item = SpanItem(
        name="classified report",
        trace_id="classified-trace",
        id="classified-id",
        start_timestamp=START,
        input={"text": "classified"},
        metadata={"k": "classified"},
    )
    async with in_process_client(app, redact=redactor) as client:
        await client.spans.upsert_batch([item])
    [row] = control.store.all_spans()
    assert (row["id"], row["trace_id"]) == ("classified-id", "classified-trace")
    assert row["name"] == "[gone] report"
    assert row["input"] == {"text": "[gone]"}
    assert row["metadata"] == {"k": "[gone]"}
    # One JSON value per call: the name as a JSON string, each payload as a JSON object.
    assert b'"classified report"' in seen
    assert all(b"classified-id" not in data for data in seen)
