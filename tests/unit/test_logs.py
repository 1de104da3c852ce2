"""Structured logs and credential redaction (observability/logs.py)."""

from __future__ import annotations

import io
import json
import logging
import pkgutil
import sys
from typing import TYPE_CHECKING, Any

import pytest

from sluicegate.observability.logs import JSONFormatter, TextFormatter, logging_config, redact

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator


# --- redact --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["secret", "token", "access_token", "api_key", "apikey", "key"])
@pytest.mark.parametrize("sep", ["?", "&"])
def test_secret_query_parameter_is_redacted(name: str, sep: str) -> None:
    line = f"GET /api/stream{'?a=1' if sep == '&' else ''}{sep}{name}=hunter2value HTTP/1.1"
    out = redact(line)
    assert "hunter2value" not in out
    assert f"{sep}{name}=[redacted]" in out
    assert out.endswith(" HTTP/1.1")


@pytest.mark.parametrize("name", ["TOKEN", "Access_Token", "API_KEY", "Key"])
def test_parameter_names_are_case_insensitive(name: str) -> None:
    assert redact(f"/x?{name}=hunter2value") == f"/x?{name}=[redacted]"


def test_only_the_secret_value_is_redacted_other_params_kept() -> None:
    assert redact("/s?channel=news&token=abc123&lastEventId=42") == "/s?channel=news&token=[redacted]&lastEventId=42"


def test_several_secrets_in_one_line_are_all_redacted() -> None:
    out = redact("/a?key=one1&b=2 then /c?access_token=two2&secret=three3")
    assert "one1" not in out and "two2" not in out and "three3" not in out
    assert out.count("[redacted]") == 3


def test_value_ends_at_quote_or_whitespace() -> None:
    assert redact("'GET /x?token=abc' done") == "'GET /x?token=[redacted]' done"
    assert redact('"GET /x?token=abc HTTP/1.1" 200') == '"GET /x?token=[redacted] HTTP/1.1" 200'


@pytest.mark.parametrize(
    "text",
    [
        "/x?keyboard=1",
        "/x?monkey=1",
        "/x?a=1&monkey=1",
        "/x?tokens=1",
        "/x?my_token=1",
        "/x?secretary=1",
        "key=value outside a query",
        "token=abc without a separator",
        "nothing to see here",
    ],
)
def test_unrelated_text_is_left_alone(text: str) -> None:
    assert redact(text) == text


@pytest.mark.parametrize("token", ["abc.def-ghi_jkl", "eyJhbGciOi.eyJzdWIi.sig+/=", "x~y"])
def test_bearer_token_is_redacted(token: str) -> None:
    assert redact(f"Authorization: Bearer {token}") == "Authorization: Bearer [redacted]"


def test_lowercase_bearer_is_redacted_and_surrounding_text_kept() -> None:
    assert redact("authorization: bearer   abc123 ok") == "authorization: bearer   [redacted] ok"


@pytest.mark.parametrize("scheme", ["BEARER", "BeArEr"])
def test_bearer_scheme_in_any_case_is_redacted(scheme: str) -> None:
    assert redact(f"Authorization: {scheme} abc123 ok") == f"Authorization: {scheme} [redacted] ok"


# --- JSONFormatter -------------------------------------------------------------------------------


@pytest.fixture
def emit() -> Iterator[Callable[..., str]]:
    """Log one record through a formatter and return what the handler wrote."""
    logger = logging.getLogger("sluicegate.test_logs")
    old_level, old_propagate = logger.level, logger.propagate
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    handlers: list[logging.Handler] = []

    def log(formatter: logging.Formatter, level: int, msg: str, *args: Any, **kwargs: Any) -> str:
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        handler.setFormatter(formatter)
        logger.addHandler(handler)
        handlers.append(handler)
        try:
            logger.log(level, msg, *args, **kwargs)
        finally:
            logger.removeHandler(handler)
        return stream.getvalue()

    yield log
    for handler in handlers:
        logger.removeHandler(handler)
    logger.setLevel(old_level)
    logger.propagate = old_propagate


def _one_json_line(output: str) -> dict[str, Any]:
    assert output.endswith("\n")
    line = output[:-1]
    assert "\n" not in line
    entry = json.loads(line)
    assert isinstance(entry, dict)
    return entry


def test_json_line_has_standard_fields(emit: Callable[..., str]) -> None:
    entry = _one_json_line(emit(JSONFormatter(), logging.WARNING, "hello %s", "world"))
    assert entry["level"] == "WARNING"
    assert entry["logger"] == "sluicegate.test_logs"
    assert entry["message"] == "hello world"
    assert entry["ts"].endswith("+00:00")
    assert "T" in entry["ts"]
    assert "exc" not in entry


def test_json_extras_become_keys_with_their_types(emit: Callable[..., str]) -> None:
    extra = {"stream_id": "abc", "tenant": 7, "duration_ms": 12.5, "ok": True, "tags": ["a", "b"]}
    entry = _one_json_line(emit(JSONFormatter(), logging.INFO, "done", extra=extra))
    for key, value in extra.items():
        assert entry[key] == value


def test_json_unserialisable_extra_is_written_as_text(emit: Callable[..., str]) -> None:
    class Thing:
        def __str__(self) -> str:
            return "a thing"

    entry = _one_json_line(emit(JSONFormatter(), logging.INFO, "x", extra={"thing": Thing()}))
    assert entry["thing"] == "a thing"


def test_json_exception_has_traceback(emit: Callable[..., str]) -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        output = emit(JSONFormatter(), logging.ERROR, "failed", exc_info=True)
    entry = _one_json_line(output)
    assert entry["message"] == "failed"
    assert entry["exc"].startswith("Traceback (most recent call last):")
    assert "RuntimeError: boom" in entry["exc"]


def test_json_secret_in_message_is_redacted_and_json_stays_valid(emit: Callable[..., str]) -> None:
    # A quote right after the secret: redacting after JSON-encoding once broke the escaping.
    message = '127.0.0.1 - "GET /api/stream?token=hunter2value" 200 \\ "Authorization: Bearer abc.def"'
    output = emit(JSONFormatter(), logging.INFO, message)
    entry = _one_json_line(output)
    assert "hunter2value" not in output
    assert "abc.def" not in output
    assert (
        entry["message"] == '127.0.0.1 - "GET /api/stream?token=[redacted]" 200 \\ "Authorization: Bearer [redacted]"'
    )


def test_json_secret_in_formatting_args_is_redacted(emit: Callable[..., str]) -> None:
    output = emit(JSONFormatter(), logging.INFO, '%s "%s" %d', "127.0.0.1", "GET /x?access_token=hunter2value", 200)
    entry = _one_json_line(output)
    assert "hunter2value" not in output
    assert entry["message"] == '127.0.0.1 "GET /x?access_token=[redacted]" 200'


def test_json_secret_in_extra_string_is_redacted(emit: Callable[..., str]) -> None:
    output = emit(JSONFormatter(), logging.INFO, "req", extra={"url": '/x?api_key=hunter2value"', "n": 1})
    entry = _one_json_line(output)
    assert "hunter2value" not in output
    assert entry["url"] == '/x?api_key=[redacted]"'
    assert entry["n"] == 1


def test_json_secret_in_exception_is_redacted(emit: Callable[..., str]) -> None:
    try:
        raise ValueError('bad url "/x?secret=hunter2value" and Bearer tok.en')
    except ValueError:
        output = emit(JSONFormatter(), logging.ERROR, "failed", exc_info=True)
    entry = _one_json_line(output)
    assert "hunter2value" not in output
    assert "tok.en" not in output
    assert 'ValueError: bad url "/x?secret=[redacted]" and Bearer [redacted]' in entry["exc"]


def test_json_secret_nested_in_extra_is_redacted(emit: Callable[..., str]) -> None:
    extra = {"request": {"url": "/x?token=hunter2value", "headers": {"authorization": "Bearer abc.def"}}}
    output = emit(JSONFormatter(), logging.INFO, "req", extra=extra)
    assert "hunter2value" not in output
    assert "abc.def" not in output


def test_json_extra_dict_with_integer_keys_is_written() -> None:
    record = logging.getLogger("sluicegate.test_logs").makeRecord(
        "sluicegate.test_logs", logging.INFO, __file__, 1, "stats", (), None, extra={"by_status": {200: 3, 404: 1}}
    )
    entry = json.loads(JSONFormatter().format(record))
    assert entry["by_status"] == {"200": 3, "404": 1}


# --- TextFormatter -------------------------------------------------------------------------------


def test_text_line_has_level_logger_and_message(emit: Callable[..., str]) -> None:
    output = emit(TextFormatter(), logging.WARNING, "hello %s", "world")
    assert output.endswith(" WARNING sluicegate.test_logs: hello world\n")


def test_text_extras_are_key_value_pairs_in_braces(emit: Callable[..., str]) -> None:
    output = emit(TextFormatter(), logging.INFO, "done", extra={"stream_id": "abc", "tenant": 7})
    assert output.rstrip("\n").endswith("done {stream_id=abc, tenant=7}")


def test_text_without_extras_has_no_braces(emit: Callable[..., str]) -> None:
    assert "{" not in emit(TextFormatter(), logging.INFO, "plain")


def test_text_redacts_message_and_extras(emit: Callable[..., str]) -> None:
    output = emit(
        TextFormatter(),
        logging.INFO,
        "GET /x?token=hunter2value",
        extra={"url": "/y?key=otherhunter", "auth": "Bearer abc.def"},
    )
    assert "hunter2value" not in output
    assert "otherhunter" not in output
    assert "abc.def" not in output
    assert "url=/y?key=[redacted]" in output
    assert "auth=Bearer [redacted]" in output


def test_text_redacts_exception(emit: Callable[..., str]) -> None:
    try:
        raise ValueError("/x?secret=hunter2value")
    except ValueError:
        output = emit(TextFormatter(), logging.ERROR, "failed", exc_info=True)
    assert "hunter2value" not in output
    assert "ValueError: /x?secret=[redacted]" in output


# --- logging_config ------------------------------------------------------------------------------


def _formatter(config: dict[str, Any]) -> str:
    return str(config["formatters"]["main"]["()"])


def test_json_format_uses_json_formatter() -> None:
    assert _formatter(logging_config("info", "json")) == "sluicegate.observability.logs.JSONFormatter"


def test_text_format_uses_text_formatter() -> None:
    assert _formatter(logging_config("info", "text")) == "sluicegate.observability.logs.TextFormatter"


@pytest.mark.parametrize(("tty", "expected"), [(True, "TextFormatter"), (False, "JSONFormatter")])
def test_auto_format_depends_on_terminal(monkeypatch: pytest.MonkeyPatch, tty: bool, expected: str) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: tty)
    assert _formatter(logging_config("info", "auto")) == f"sluicegate.observability.logs.{expected}"
    assert _formatter(logging_config("info")) == f"sluicegate.observability.logs.{expected}"


def test_level_is_upper_cased_for_every_logger() -> None:
    config = logging_config("debug", "json")
    assert {name: cfg["level"] for name, cfg in config["loggers"].items()} == {
        "sluicegate": "DEBUG",
        "uvicorn": "DEBUG",
        "uvicorn.error": "DEBUG",
        "uvicorn.access": "DEBUG",
    }


@pytest.mark.parametrize(("fmt", "cls"), [("json", JSONFormatter), ("text", TextFormatter)])
def test_formatter_path_resolves_to_the_class(fmt: str, cls: type[logging.Formatter]) -> None:
    assert pkgutil.resolve_name(_formatter(logging_config("info", fmt))) is cls


def test_every_logger_writes_to_stderr_handler() -> None:
    config = logging_config("info", "json")
    assert config["handlers"]["stderr"]["stream"] == "ext://sys.stderr"
    assert config["disable_existing_loggers"] is False
    for name in ("sluicegate", "uvicorn", "uvicorn.access"):
        assert config["loggers"][name]["handlers"] == ["stderr"]
        assert config["loggers"][name]["propagate"] is False
