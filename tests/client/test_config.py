"""Client configuration: keyword arguments, the environment, named environments, URL safety."""

from __future__ import annotations

import pytest

from sgp_client import ENVIRONMENTS, AsyncSGPClient, ConfigurationError, SGPError
from sgp_client._config import ClientConfig, resolve_config

KEY = "sk-config-test-0123456789abcdef"
ACCOUNT = "acct-config-test"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test here may see the developer's real SGP settings."""
    for name in ("SGP_API_KEY", "SGP_ACCOUNT_ID", "SGP_CLIENT_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


def test_keyword_arguments() -> None:
    client = AsyncSGPClient(api_key=KEY, account_id=ACCOUNT, base_url="https://sgp.example.com/")
    assert client.base_url == "https://sgp.example.com"  # trailing slash dropped
    assert client.account_id == ACCOUNT
    assert not client.closed


def test_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SGP_API_KEY", KEY)
    monkeypatch.setenv("SGP_ACCOUNT_ID", ACCOUNT)
    monkeypatch.setenv("SGP_CLIENT_BASE_URL", "https://env.example.com/api")
    client = AsyncSGPClient()
    assert client.base_url == "https://env.example.com/api"
    assert client.account_id == ACCOUNT
    assert client._headers["x-api-key"] == KEY
    assert client._headers["x-selected-account-id"] == ACCOUNT


def test_keyword_arguments_beat_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SGP_API_KEY", "env-key")
    monkeypatch.setenv("SGP_ACCOUNT_ID", "env-account")
    monkeypatch.setenv("SGP_CLIENT_BASE_URL", "https://env.example.com")
    client = AsyncSGPClient(api_key=KEY, account_id=ACCOUNT, base_url="https://kw.example.com")
    assert client.base_url == "https://kw.example.com"
    assert client.account_id == ACCOUNT
    assert client._headers["x-api-key"] == KEY


def test_default_is_production() -> None:
    client = AsyncSGPClient(api_key=KEY, account_id=ACCOUNT)
    assert client.base_url == ENVIRONMENTS["production"] == "https://api.egp.scale.com"


def test_empty_base_url_variable_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SGP_CLIENT_BASE_URL", "")
    client = AsyncSGPClient(api_key=KEY, account_id=ACCOUNT)
    assert client.base_url == ENVIRONMENTS["production"]


@pytest.mark.parametrize("name", ["SGP_API_KEY", "SGP_ACCOUNT_ID"])
def test_empty_credential_variables_mean_unset(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv("SGP_API_KEY", KEY)
    monkeypatch.setenv("SGP_ACCOUNT_ID", ACCOUNT)
    monkeypatch.setenv(name, "")
    with pytest.raises(ConfigurationError, match=name):
        AsyncSGPClient()


@pytest.mark.parametrize(
    ("name", "url"),
    [
        ("production", "https://api.egp.scale.com"),
        ("production-multitenant", "https://api.sgp.scale.com"),
        ("staging", ENVIRONMENTS["staging"]),
        ("development", ENVIRONMENTS["development"]),
        ("local", "http://127.0.0.1:5003/public"),
    ],
)
def test_named_environments(name: str, url: str) -> None:
    client = AsyncSGPClient(api_key=KEY, account_id=ACCOUNT, environment=name)
    assert client.base_url == url
    assert url.startswith("https://") or name == "local"


def test_environment_beats_base_url_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SGP_CLIENT_BASE_URL", "https://env.example.com")
    client = AsyncSGPClient(api_key=KEY, account_id=ACCOUNT, environment="local")
    assert client.base_url == ENVIRONMENTS["local"]


def test_unknown_environment_lists_the_known_ones() -> None:
    with pytest.raises(ConfigurationError, match=r"unknown environment 'prod'.*production"):
        AsyncSGPClient(api_key=KEY, account_id=ACCOUNT, environment="prod")


def test_base_url_and_environment_together_is_an_error() -> None:
    with pytest.raises(ConfigurationError, match="not both"):
        AsyncSGPClient(
            api_key=KEY, account_id=ACCOUNT, base_url="https://x.example.com", environment="local"
        )


def test_missing_api_key_names_the_variable() -> None:
    with pytest.raises(ConfigurationError, match="SGP_API_KEY"):
        AsyncSGPClient(account_id=ACCOUNT)


def test_missing_account_names_the_variable() -> None:
    with pytest.raises(ConfigurationError, match="SGP_ACCOUNT_ID"):
        AsyncSGPClient(api_key=KEY)


def test_configuration_error_is_a_value_error_in_the_tree() -> None:
    assert issubclass(ConfigurationError, ValueError)
    assert issubclass(ConfigurationError, SGPError)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:5003/public",
        "http://127.0.0.2:8080",
        "http://localhost:5003",
        "http://LOCALHOST",
        "http://[::1]:5003/public",
    ],
)
def test_plain_http_allowed_for_loopback(url: str) -> None:
    AsyncSGPClient(api_key=KEY, account_id=ACCOUNT, base_url=url)


@pytest.mark.parametrize(
    "url",
    [
        "http://api.egp.scale.com",
        "http://10.0.0.5:5003",
        "http://127.example.com",  # a DNS name that merely starts like a loopback address
        "http://localhost.example.com",
    ],
)
def test_plain_http_refused_elsewhere(url: str) -> None:
    with pytest.raises(ConfigurationError, match="allow_insecure_http"):
        AsyncSGPClient(api_key=KEY, account_id=ACCOUNT, base_url=url)
    client = AsyncSGPClient(api_key=KEY, account_id=ACCOUNT, base_url=url, allow_insecure_http=True)
    assert client.base_url == url


def test_plain_http_from_the_environment_is_refused_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SGP_CLIENT_BASE_URL", "http://sgp.internal")
    with pytest.raises(ConfigurationError, match="http://"):
        AsyncSGPClient(api_key=KEY, account_id=ACCOUNT)


@pytest.mark.parametrize("url", ["ftp://example.com", "example.com", "https://", "not a url"])
def test_malformed_base_url(url: str) -> None:
    with pytest.raises(ConfigurationError, match="base URL"):
        AsyncSGPClient(api_key=KEY, account_id=ACCOUNT, base_url=url)


def test_transport_and_http_client_are_exclusive() -> None:
    import httpx

    with pytest.raises(ValueError, match="not both"):
        AsyncSGPClient(
            api_key=KEY,
            account_id=ACCOUNT,
            transport=httpx.MockTransport(lambda r: httpx.Response(200)),
            http_client=httpx.AsyncClient(),
        )


def test_negative_max_retries_refused() -> None:
    with pytest.raises(ValueError, match="max_retries"):
        AsyncSGPClient(api_key=KEY, account_id=ACCOUNT, max_retries=-1)


@pytest.mark.parametrize("call_timeout", [0, -1.0, float("nan")])
def test_call_timeout_must_be_positive(call_timeout: float) -> None:
    with pytest.raises(ValueError, match="call_timeout"):
        AsyncSGPClient(api_key=KEY, account_id=ACCOUNT, call_timeout=call_timeout)
    AsyncSGPClient(api_key=KEY, account_id=ACCOUNT, call_timeout=None)


@pytest.mark.parametrize(
    "key", [KEY + "\n", " " + KEY, KEY + "\r\n", "sk-\x00nul", "sk-é-non-ascii", "sk-mid\nline"]
)
def test_unusable_api_key_refused_without_quoting_it(key: str) -> None:
    # A key read from a file with its newline would otherwise fail in h11, whose error quotes
    # the header value: the key would end up in an exception message.
    with pytest.raises(ConfigurationError, match="SGP_API_KEY") as info:
        AsyncSGPClient(api_key=key, account_id=ACCOUNT)
    assert key.strip() not in str(info.value)
    assert key.strip() not in repr(info.value)


def test_unusable_account_id_refused() -> None:
    with pytest.raises(ConfigurationError, match="SGP_ACCOUNT_ID"):
        AsyncSGPClient(api_key=KEY, account_id=ACCOUNT + "\n")


def test_config_repr_masks_the_key() -> None:
    config = resolve_config(
        api_key=KEY, account_id=ACCOUNT, base_url=None, environment="local", environ={}
    )
    assert isinstance(config, ClientConfig)
    assert config.api_key == KEY
    for text in (repr(config), str(config)):
        assert KEY not in text
        assert ACCOUNT in text
        assert "***" in text


def test_client_repr_masks_the_key() -> None:
    client = AsyncSGPClient(api_key=KEY, account_id=ACCOUNT, environment="local")
    for text in (repr(client), str(client), repr(client.spans), repr(vars(client.spans))):
        assert KEY not in text
    assert "127.0.0.1:5003" in repr(client)


def test_resolve_config_reads_the_given_mapping_only() -> None:
    config = resolve_config(
        api_key=None,
        account_id=None,
        base_url=None,
        environment=None,
        environ={"SGP_API_KEY": KEY, "SGP_ACCOUNT_ID": ACCOUNT, "SGP_CLIENT_BASE_URL": ""},
    )
    assert (config.api_key, config.account_id, config.base_url) == (
        KEY,
        ACCOUNT,
        ENVIRONMENTS["production"],
    )
