"""Error codes, their HTTP status and WebSocket close codes, and the client-facing body."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from pydantic import BaseModel, ValidationError

from sluicegate.errors import (
    APIError,
    ConfigurationError,
    ErrCode,
    SluicegateError,
    SSEFieldError,
    StreamClosed,
    invalid_fields,
)

if TYPE_CHECKING:
    from collections.abc import Callable

EXPECTED_STATUS = {
    ErrCode.CANCELLED: 499,
    ErrCode.UNKNOWN: 500,
    ErrCode.INVALID_ARGUMENT: 400,
    ErrCode.DEADLINE_EXCEEDED: 504,
    ErrCode.NOT_FOUND: 404,
    ErrCode.ALREADY_EXISTS: 409,
    ErrCode.PERMISSION_DENIED: 403,
    ErrCode.RESOURCE_EXHAUSTED: 429,
    ErrCode.FAILED_PRECONDITION: 400,
    ErrCode.ABORTED: 409,
    ErrCode.OUT_OF_RANGE: 400,
    ErrCode.UNIMPLEMENTED: 501,
    ErrCode.INTERNAL: 500,
    ErrCode.UNAVAILABLE: 503,
    ErrCode.DATA_LOSS: 500,
    ErrCode.UNAUTHENTICATED: 401,
    ErrCode.PAYLOAD_TOO_LARGE: 413,
    ErrCode.METHOD_NOT_ALLOWED: 405,
    ErrCode.CONFLICT: 409,
    ErrCode.SLOW_CONSUMER: 429,
}

STANDARD_CLOSE = {
    ErrCode.INTERNAL: 1011,
    ErrCode.UNKNOWN: 1011,
    ErrCode.DATA_LOSS: 1011,
    ErrCode.SLOW_CONSUMER: 1008,
}


def test_every_code_has_an_expected_status() -> None:
    assert set(EXPECTED_STATUS) == set(ErrCode)


@pytest.mark.parametrize("code", list(ErrCode), ids=lambda c: c.value)
def test_http_status_of_each_code(code: ErrCode) -> None:
    assert code.http_status == EXPECTED_STATUS[code]


@pytest.mark.parametrize("code", [c for c in ErrCode if c not in STANDARD_CLOSE], ids=lambda c: c.value)
def test_close_code_is_4000_plus_http_status(code: ErrCode) -> None:
    assert code.close_code == 4000 + code.http_status


@pytest.mark.parametrize("code", list(STANDARD_CLOSE), ids=lambda c: c.value)
def test_server_failures_and_slow_consumer_use_standard_close_codes(code: ErrCode) -> None:
    assert code.close_code == STANDARD_CLOSE[code]


def test_not_found_closes_with_4404() -> None:
    assert ErrCode.NOT_FOUND.close_code == 4404


def test_close_codes_are_valid_websocket_codes() -> None:
    for code in ErrCode:
        assert code.close_code in (1008, 1011) or 4000 <= code.close_code <= 4999


def test_error_code_is_its_string_value() -> None:
    assert ErrCode("not_found") is ErrCode.NOT_FOUND
    assert f"{ErrCode.NOT_FOUND}" == "not_found"


def test_body_is_flat_error_code_and_details() -> None:
    err = APIError(ErrCode.NOT_FOUND, "No such session", details={"sessionId": "s1", "suggestions": ["a"]})
    assert err.body() == {"error": "No such session", "code": "not_found", "sessionId": "s1", "suggestions": ["a"]}


def test_body_without_details_has_only_error_and_code() -> None:
    assert APIError(ErrCode.INTERNAL, "boom").body() == {"error": "boom", "code": "internal"}


def test_error_exposes_status_close_code_message_and_headers() -> None:
    err = APIError(ErrCode.RESOURCE_EXHAUSTED, "slow down", headers={"Retry-After": "5"})
    assert (err.status, err.close_code, err.message, str(err)) == (429, 4429, "slow down", "slow down")
    assert err.headers == {"Retry-After": "5"}


def test_details_are_copied_so_later_changes_do_not_leak_in() -> None:
    details: dict[str, Any] = {"a": 1}
    err = APIError(ErrCode.ABORTED, "x", details=details)
    details["b"] = 2
    assert err.body() == {"error": "x", "code": "aborted", "a": 1}


@pytest.mark.parametrize("key", ["error", "code"])
def test_details_may_not_override_error_or_code(key: str) -> None:
    with pytest.raises(ValueError, match="may not set"):
        APIError(ErrCode.NOT_FOUND, "x", details={key: "spoofed"})


def test_classmethod_constructor_cannot_override_reserved_keys_either() -> None:
    with pytest.raises(ValueError, match="may not set"):
        APIError.not_found("x", code="ok")


@pytest.mark.parametrize(
    ("make", "code"),
    [
        (APIError.invalid_argument, ErrCode.INVALID_ARGUMENT),
        (APIError.unauthenticated, ErrCode.UNAUTHENTICATED),
        (APIError.permission_denied, ErrCode.PERMISSION_DENIED),
        (APIError.not_found, ErrCode.NOT_FOUND),
        (APIError.already_exists, ErrCode.ALREADY_EXISTS),
        (APIError.failed_precondition, ErrCode.FAILED_PRECONDITION),
        (APIError.resource_exhausted, ErrCode.RESOURCE_EXHAUSTED),
        (APIError.payload_too_large, ErrCode.PAYLOAD_TOO_LARGE),
        (APIError.unavailable, ErrCode.UNAVAILABLE),
        (APIError.internal, ErrCode.INTERNAL),
        (APIError.slow_consumer, ErrCode.SLOW_CONSUMER),
    ],
    ids=lambda v: v.value if isinstance(v, ErrCode) else "",
)
def test_classmethod_constructors_set_code_and_details(make: Callable[..., APIError], code: ErrCode) -> None:
    err = make("msg", extra=1)
    assert err.code is code
    assert err.status == code.http_status
    assert err.body() == {"error": "msg", "code": code.value, "extra": 1}


def test_internal_has_a_generic_default_message() -> None:
    assert APIError.internal().body() == {"error": "Internal server error", "code": "internal"}


def test_repr_names_code_and_message() -> None:
    assert repr(APIError.not_found("gone")) == "APIError('not_found', 'gone')"


def test_exception_tree() -> None:
    assert issubclass(APIError, SluicegateError)
    assert issubclass(ConfigurationError, SluicegateError) and issubclass(ConfigurationError, ValueError)
    assert issubclass(SSEFieldError, SluicegateError) and issubclass(SSEFieldError, ValueError)
    assert issubclass(StreamClosed, SluicegateError) and issubclass(StreamClosed, ConnectionError)


# --- invalid_fields ----------------------------------------------------------------


class Inner(BaseModel):
    token: str


class Outer(BaseModel):
    name: str
    count: int
    inner: Inner


def validation_errors(data: dict[str, Any]) -> list[dict[str, Any]]:
    with pytest.raises(ValidationError) as info:
        Outer.model_validate(data)
    return [dict(e) for e in info.value.errors()]


def test_invalid_fields_names_each_field_with_a_dotted_location() -> None:
    err = invalid_fields(validation_errors({"count": "many", "inner": {"token": 5}}))
    assert err.code is ErrCode.INVALID_ARGUMENT
    body = err.body()
    assert body["error"] == "Invalid request"
    assert {f["field"]: f["type"] for f in body["fields"]} == {
        "name": "missing",
        "count": "int_parsing",
        "inner.token": "string_type",
    }
    assert all(f["message"] for f in body["fields"])


def test_invalid_fields_uses_the_given_message() -> None:
    err = invalid_fields([{"loc": ("a",), "msg": "bad", "type": "t"}], message="Invalid handshake")
    assert err.body() == {
        "error": "Invalid handshake",
        "code": "invalid_argument",
        "fields": [{"field": "a", "message": "bad", "type": "t"}],
    }


def test_invalid_fields_drops_leading_location_parts() -> None:
    errors: list[dict[str, Any]] = [
        {"loc": ("body", "items", 0, "name"), "msg": "Field required", "type": "missing"},
        {"loc": ("query", "limit"), "msg": "bad", "type": "int_parsing"},
    ]
    fields = invalid_fields(errors, drop_prefix=("body", "query")).body()["fields"]
    assert [f["field"] for f in fields] == ["items.0.name", "limit"]


def test_drop_prefix_only_drops_leading_parts() -> None:
    errors = [{"loc": ("query", "body"), "msg": "m", "type": "t"}]
    assert invalid_fields(errors, drop_prefix=("query",)).body()["fields"][0]["field"] == "body"


def test_error_with_empty_location_is_named_root() -> None:
    errors: list[dict[str, Any]] = [{"loc": ("body",), "msg": "m", "type": "t"}, {"msg": "m"}]
    fields = invalid_fields(errors, drop_prefix=("body",)).body()["fields"]
    assert fields == [
        {"field": "(root)", "message": "m", "type": "t"},
        {"field": "(root)", "message": "m", "type": "value_error"},
    ]


def test_invalid_fields_does_not_echo_input_values() -> None:
    secret = "sk-super-secret-value"
    errors = validation_errors({"name": "n", "count": secret, "inner": {"token": 123}})
    assert any(e.get("input") == secret for e in errors)  # pydantic carries the input...
    body = invalid_fields(errors).body()
    assert secret not in repr(body)  # ...but the client body does not
    assert "123" not in repr(body)
    assert all(set(f) == {"field", "message", "type"} for f in body["fields"])
