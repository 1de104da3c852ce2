"""Filling a handshake model from path, query and headers; reading Last-Event-ID."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import AliasChoices, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel
from starlette.requests import HTTPConnection

from sluicegate.errors import APIError, ErrCode
from sluicegate.streaming.handshake import build_handshake, last_event_id


def connection(
    *,
    path_params: dict[str, Any] | None = None,
    query: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
) -> HTTPConnection:
    scope: dict[str, Any] = {
        "type": "http",
        "method": "GET",
        "path": "/stream",
        "headers": headers or [],
        "query_string": query,
        "path_params": path_params or {},
    }
    return HTTPConnection(scope)


class Room(BaseModel):
    room: str
    user_id: str | None = None
    tags: list[str] = []
    limit: int = 10


def test_value_is_read_from_the_query() -> None:
    hs = build_handshake(Room, connection(query=b"room=lobby&limit=5"))
    assert hs == Room(room="lobby", limit=5)


def test_path_parameter_wins_over_query_and_header() -> None:
    conn = connection(path_params={"room": "from-path"}, query=b"room=from-query", headers=[(b"room", b"from-header")])
    assert build_handshake(Room, conn) == Room(room="from-path")


def test_query_wins_over_header() -> None:
    conn = connection(query=b"room=from-query", headers=[(b"room", b"from-header")])
    assert build_handshake(Room, conn) == Room(room="from-query")


def test_header_is_used_when_path_and_query_lack_the_field() -> None:
    conn = connection(headers=[(b"room", b"from-header")])
    assert build_handshake(Room, conn) == Room(room="from-header")


def test_underscore_field_matches_dashed_header_case_insensitively() -> None:
    conn = connection(query=b"room=r", headers=[(b"user-id", b"u1")])
    assert build_handshake(Room, conn) == Room(room="r", user_id="u1")


def test_list_field_takes_every_repeated_query_value() -> None:
    hs = build_handshake(Room, connection(query=b"room=r&tags=a&tags=b&tags=c"))
    assert isinstance(hs, Room)
    assert hs.tags == ["a", "b", "c"]


def test_list_field_takes_every_repeated_header_value() -> None:
    hs = build_handshake(Room, connection(query=b"room=r", headers=[(b"tags", b"x"), (b"tags", b"y")]))
    assert isinstance(hs, Room)
    assert hs.tags == ["x", "y"]


def test_scalar_field_with_repeated_query_value_takes_the_last() -> None:
    hs = build_handshake(Room, connection(query=b"room=first&room=second"))
    assert isinstance(hs, Room)
    assert hs.room == "second"


class MaybeTags(BaseModel):
    tags: list[str] | None = None


def test_optional_list_field_takes_every_repeated_query_value() -> None:
    assert build_handshake(MaybeTags, connection(query=b"tags=a&tags=b")) == MaybeTags(tags=["a", "b"])


class Aliased(BaseModel):
    room_name: str = Field(alias="roomName")
    session: str = Field(validation_alias="sessionId")


def test_field_alias_and_validation_alias_are_the_lookup_keys() -> None:
    hs = build_handshake(Aliased, connection(query=b"roomName=r&sessionId=s"))
    assert isinstance(hs, Aliased)
    assert (hs.room_name, hs.session) == ("r", "s")


def test_field_name_is_not_used_when_an_alias_is_set() -> None:
    with pytest.raises(APIError) as info:
        build_handshake(Aliased, connection(query=b"room_name=r&session=s"))
    assert sorted(f["field"] for f in info.value.details["fields"]) == ["roomName", "sessionId"]


class Choices(BaseModel):
    room: str = Field(validation_alias=AliasChoices("roomId", "room_id"))


def test_alias_choices_validation_alias_is_honoured() -> None:
    hs = build_handshake(Choices, connection(query=b"roomId=r"))
    assert isinstance(hs, Choices)
    assert hs.room == "r"


class Camel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel)

    user_id: str


def test_generated_alias_is_honoured() -> None:
    hs = build_handshake(Camel, connection(path_params={"userId": "u9"}))
    assert isinstance(hs, Camel)
    assert hs.user_id == "u9"


def test_missing_required_field_raises_invalid_argument_naming_it() -> None:
    with pytest.raises(APIError) as info:
        build_handshake(Room, connection(query=b"limit=3"))
    err = info.value
    assert err.code is ErrCode.INVALID_ARGUMENT
    assert err.message == "Invalid handshake"
    assert err.details["fields"] == [{"field": "room", "message": "Field required", "type": "missing"}]


def test_invalid_value_names_the_field_without_echoing_it() -> None:
    with pytest.raises(APIError) as info:
        build_handshake(Room, connection(query=b"room=r&limit=secret-xyz"))
    fields = info.value.details["fields"]
    assert [f["field"] for f in fields] == ["limit"]
    assert "secret-xyz" not in repr(info.value.body())


# --- last_event_id -----------------------------------------------------------------


def test_last_event_id_reads_the_header() -> None:
    assert last_event_id(connection(headers=[(b"last-event-id", b"42")])) == "42"


def test_last_event_id_header_wins_over_query() -> None:
    conn = connection(headers=[(b"last-event-id", b"42")], query=b"lastEventId=7")
    assert last_event_id(conn) == "42"


def test_last_event_id_falls_back_to_query() -> None:
    assert last_event_id(connection(query=b"lastEventId=7")) == "7"


def test_last_event_id_absent_is_none() -> None:
    assert last_event_id(connection()) is None


@pytest.mark.parametrize(
    "conn_kwargs",
    [{"headers": [(b"last-event-id", b"")]}, {"query": b"lastEventId="}],
    ids=["header", "query"],
)
def test_empty_last_event_id_is_none(conn_kwargs: dict[str, Any]) -> None:
    assert last_event_id(connection(**conn_kwargs)) is None
