"""Client configuration: keyword arguments first, then the environment, then defaults."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from typing import Final, Literal
from urllib.parse import urlsplit

import attrs

from ._exceptions import ConfigurationError

__all__ = ["ENVIRONMENTS", "ClientConfig", "Environment", "ResponseLimits", "resolve_config"]

Environment = Literal["production", "production-multitenant", "staging", "development", "local"]

#: Base URLs of SGP's named environments (same as the official SDK).
ENVIRONMENTS: Final[Mapping[str, str]] = {
    "production": "https://api.egp.scale.com",
    "production-multitenant": "https://api.sgp.scale.com",
    "staging": "https://api.staging-sgp.scale.com",
    "development": "https://api.dev-sgp.scale.com",
    "local": "http://127.0.0.1:5003/public",
}

# Anything a header value cannot carry: control characters (a trailing newline read from a
# key file is the usual culprit) and surrounding whitespace. h11 would refuse such a header
# with an error message quoting the value, which for the key would leak it.
_BAD_HEADER_VALUE = re.compile(r"[\x00-\x1f\x7f]|^\s|\s$")


def _mask(secret: str) -> str:
    return "***" if secret else "<empty>"


@attrs.frozen(kw_only=True)
class ClientConfig:
    """Resolved settings. The key is excluded from ``repr`` so it never lands in a log."""

    api_key: str = attrs.field(repr=_mask)
    account_id: str
    base_url: str


def _env(name: str, environ: Mapping[str, str]) -> str | None:
    # An empty variable means "unset": templates often export VAR="" (a real peer bug).
    value = environ.get(name)
    return value if value else None


def _is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host.rstrip(".").lower() == "localhost":
        return True
    try:
        # An IP literal, not a name: "127.example.com" is a DNS name like any other.
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_header_value(value: str, what: str, variable: str) -> None:
    if not value.isascii() or _BAD_HEADER_VALUE.search(value):
        # Never quote the value itself: it may be the key.
        raise ConfigurationError(
            f"the {what} (argument or {variable}) contains whitespace at its ends, control "
            "characters or non-ASCII characters; a trailing newline from a file is typical"
        )


def resolve_config(
    *,
    api_key: str | None,
    account_id: str | None,
    base_url: str | None,
    environment: str | None,
    allow_insecure_http: bool = False,
    environ: Mapping[str, str] | None = None,
) -> ClientConfig:
    """Resolve the client settings, raising ``ConfigurationError`` naming what is missing."""
    env = os.environ if environ is None else environ
    key = api_key or _env("SGP_API_KEY", env)
    if not key:
        raise ConfigurationError(
            "no API key: pass api_key=... or set the SGP_API_KEY environment variable"
        )
    _check_header_value(key, "API key", "SGP_API_KEY")
    account = account_id or _env("SGP_ACCOUNT_ID", env)
    if not account:
        raise ConfigurationError(
            "no account id: pass account_id=... or set the SGP_ACCOUNT_ID environment variable"
        )
    _check_header_value(account, "account id", "SGP_ACCOUNT_ID")
    if base_url and environment:
        raise ConfigurationError("pass either base_url or environment, not both")
    if environment is not None:
        try:
            url = ENVIRONMENTS[environment]
        except KeyError:
            known = ", ".join(ENVIRONMENTS)
            raise ConfigurationError(
                f"unknown environment {environment!r}; known: {known}"
            ) from None
    else:
        url = base_url or _env("SGP_CLIENT_BASE_URL", env) or ENVIRONMENTS["production"]
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        # Never quoted: the URL holds a password. SGP authenticates with the API key; a
        # user:password@ would go out as Basic auth and show in every error's URL.
        raise ConfigurationError(
            "the base URL holds credentials (user:password@host); remove them: SGP "
            "authenticates with the API key"
        )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(f"base URL must be an http(s) URL with a host, got {url!r}")
    # Plain HTTP would send the API key in clear text: only loopback gets it for free.
    if parts.scheme == "http" and not _is_loopback(parts.hostname) and not allow_insecure_http:
        raise ConfigurationError(
            f"refusing plain http:// to non-loopback host {parts.hostname!r}: "
            "use https, or pass allow_insecure_http=True"
        )
    return ClientConfig(api_key=key, account_id=account, base_url=url.rstrip("/"))


@attrs.frozen(kw_only=True)
class ResponseLimits:
    """How much of an answer the client accepts (``AsyncSGPClient(limits=...)``).

    Past a limit the client raises ``ResponseTooLargeError`` and closes the connection; it
    never buffers more than the limit: bodies are read as they arrive and counted.

    - ``max_body_bytes``: the largest body on the wire, before decoding (64 MiB). The largest
      answer the API gives is a batch echoed back: the queue sends at most 4 MiB a batch
      (``max_batch_bytes``), so this is 16 times that, and room for a direct
      ``upsert_batch`` of 1000 large spans.
    - ``max_decoded_bytes``: the largest body after ``gzip``/``deflate`` decoding (64 MiB, the
      same reasoning); a 2 KB "zip bomb" stops here instead of growing the process by GiBs.
    - ``max_error_detail``: the most characters of a server's error detail kept in an
      exception's message and ``detail`` (and so in a log line): 4000, a validation error
      naming a few dozen fields. The key is masked before the cut.
    """

    max_body_bytes: int = attrs.field(default=64 * 1024 * 1024, validator=attrs.validators.gt(0))
    max_decoded_bytes: int = attrs.field(default=64 * 1024 * 1024, validator=attrs.validators.gt(0))
    max_error_detail: int = attrs.field(default=4000, validator=attrs.validators.gt(0))
