"""Client configuration: keyword arguments first, then the environment, then defaults."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Final, Literal
from urllib.parse import urlsplit

import attrs

from ._exceptions import ConfigurationError

__all__ = ["ENVIRONMENTS", "ClientConfig", "Environment", "resolve_config"]

Environment = Literal["production", "production-multitenant", "staging", "development", "local"]

#: Base URLs of SGP's named environments (same as the official SDK).
ENVIRONMENTS: Final[Mapping[str, str]] = {
    "production": "https://api.egp.scale.com",
    "production-multitenant": "https://api.sgp.scale.com",
    "staging": "https://api.staging-sgp.scale.com",
    "development": "https://api.dev-sgp.scale.com",
    "local": "http://127.0.0.1:5003/public",
}

_LOOPBACK_HOSTS: Final = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


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
    return host is not None and (host in _LOOPBACK_HOSTS or host.startswith("127."))


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
    account = account_id or _env("SGP_ACCOUNT_ID", env)
    if not account:
        raise ConfigurationError(
            "no account id: pass account_id=... or set the SGP_ACCOUNT_ID environment variable"
        )
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
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(f"base URL must be an http(s) URL with a host, got {url!r}")
    # Plain HTTP would send the API key in clear text: only loopback gets it for free.
    if parts.scheme == "http" and not _is_loopback(parts.hostname) and not allow_insecure_http:
        raise ConfigurationError(
            f"refusing plain http:// to non-loopback host {parts.hostname!r}: "
            "use https, or pass allow_insecure_http=True"
        )
    return ClientConfig(api_key=key, account_id=account, base_url=url.rstrip("/"))
