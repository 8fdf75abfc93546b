"""The public surface of ``sgp_client``: ``__all__`` is sorted, complete and importable."""

from __future__ import annotations
import __future__

import importlib
import inspect
from importlib.resources import files
from types import ModuleType

import pytest

import sgp_client
from sgp_client import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ClientClosedError,
    ConfigurationError,
    ConflictError,
    InternalServerError,
    InvalidSpanError,
    NotFoundError,
    PermissionDeniedError,
    QueueNotRunningError,
    RateLimitError,
    RequestTooLargeError,
    SGPError,
    UnprocessableEntityError,
)


def _sort_key(name: str) -> tuple[int, str]:
    # ruff's RUF022 "isort-style" order: SCREAMING_CASE constants, then CamelCase, then the rest.
    if name.isupper():
        return (0, name)
    if name[0].isupper():
        return (1, name)
    return (2, name)


def test_all_is_sorted_without_duplicates() -> None:
    names = list(sgp_client.__all__)
    assert len(names) == len(set(names))
    assert names == sorted(names, key=_sort_key)


def test_every_name_in_all_is_importable() -> None:
    for name in sgp_client.__all__:
        assert hasattr(sgp_client, name), name
    namespace: dict[str, object] = {}
    exec("from sgp_client import *", namespace)  # the star import users may write
    assert set(sgp_client.__all__) <= namespace.keys()


def test_no_public_name_missing_from_all() -> None:
    public = {
        name
        for name, value in vars(sgp_client).items()
        if not name.startswith("_")
        and not isinstance(value, ModuleType | __future__._Feature)  # `annotations` is no API
    }
    assert public == set(sgp_client.__all__)


@pytest.mark.parametrize("name", ["AsyncSGPClient", "SpanItem", "Span", "SGPError", "Backoff"])
def test_essential_names(name: str) -> None:
    assert name in sgp_client.__all__


def test_public_objects_are_documented() -> None:
    for name in sgp_client.__all__:
        value = getattr(sgp_client, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert inspect.getdoc(value), f"{name} has no docstring"


def test_private_modules_define_what_they_export() -> None:
    for module_name in ("_client", "_config", "_exceptions", "_models", "_retry"):
        module = importlib.import_module(f"sgp_client.{module_name}")
        for name in module.__all__:
            assert hasattr(module, name), f"{module_name}.{name}"


def test_exception_tree() -> None:
    for base in (ConfigurationError, InvalidSpanError, ClientClosedError, QueueNotRunningError,
                 APIError):  # fmt: skip
        assert issubclass(base, SGPError)
    assert issubclass(ConfigurationError, ValueError)
    assert issubclass(InvalidSpanError, ValueError)
    assert issubclass(ClientClosedError, RuntimeError)
    assert issubclass(APIConnectionError, APIError)
    assert issubclass(APITimeoutError, APIConnectionError)
    assert issubclass(APIStatusError, APIError)
    for cls in (BadRequestError, AuthenticationError, PermissionDeniedError, NotFoundError,
                ConflictError, RequestTooLargeError, UnprocessableEntityError, RateLimitError,
                InternalServerError):  # fmt: skip
        assert issubclass(cls, APIStatusError)
    assert not issubclass(APIStatusError, APIConnectionError)


def test_py_typed_ships() -> None:
    assert sgp_client.__file__ is not None
    assert (files("sgp_client") / "py.typed").is_file()
