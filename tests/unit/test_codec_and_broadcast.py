"""MessageCodec and Frame (encode once), and BroadcastGroup fan-out to Outbox-backed streams."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from pydantic import BaseModel

from sluicegate.errors import APIError, ErrCode, SSEFieldError
from sluicegate.streaming.broadcast import BroadcastGroup
from sluicegate.streaming.codec import Frame, MessageCodec
from sluicegate.streaming.outbox import Outbox
from sluicegate.streaming.sse import SSEDecoder, SSEEvent


class Chat(BaseModel):
    user: str
    text: str
    n: int = 0


# --- MessageCodec ------------------------------------------------------------------


def test_model_encodes_to_compact_json_bytes() -> None:
    codec: MessageCodec[Chat] = MessageCodec(Chat)
    assert codec.encode(Chat(user="ann", text="hi there", n=2)) == b'{"user":"ann","text":"hi there","n":2}'


def test_model_decode_validates_and_returns_the_model() -> None:
    assert MessageCodec(Chat).decode('{"user":"ann","text":"hi"}') == Chat(user="ann", text="hi", n=0)


def test_model_decode_accepts_bytes() -> None:
    assert MessageCodec(Chat).decode(b'{"user":"a","text":"b","n":"3"}') == Chat(user="a", text="b", n=3)


def test_model_decode_of_invalid_field_raises_invalid_argument_naming_it() -> None:
    with pytest.raises(APIError) as info:
        MessageCodec(Chat).decode(b'{"user":"ann","text":"hi","n":"lots"}')
    err = info.value
    assert err.code is ErrCode.INVALID_ARGUMENT
    assert err.status == 400
    assert err.message == "Invalid message"
    assert [f["field"] for f in err.details["fields"]] == ["n"]
    assert "lots" not in repr(err.body())


def test_model_decode_of_missing_field_names_it() -> None:
    with pytest.raises(APIError) as info:
        MessageCodec(Chat).decode(b'{"user":"ann"}')
    assert [(f["field"], f["type"]) for f in info.value.details["fields"]] == [("text", "missing")]


def test_model_decode_of_non_json_raises_invalid_argument() -> None:
    with pytest.raises(APIError) as info:
        MessageCodec(Chat).decode(b"not json")
    assert info.value.code is ErrCode.INVALID_ARGUMENT
    assert info.value.details["fields"][0]["type"] == "json_invalid"


def test_builtin_type_goes_through_validation() -> None:
    codec: MessageCodec[list[int]] = MessageCodec(list[int])
    assert codec.encode([1, 2]) == b"[1,2]"
    assert codec.decode("[1, 2]") == [1, 2]
    with pytest.raises(APIError) as info:
        codec.decode('[1, "x"]')
    assert info.value.details["fields"][0]["field"] == "1"


@pytest.mark.parametrize("tp", [Any, dict, list, object])
def test_untyped_codec_uses_orjson_untouched(tp: Any) -> None:
    codec: MessageCodec[Any] = MessageCodec(tp)
    message = {"b": [1, 2.5, None], "a": "é"}
    assert codec.encode(message) == orjson.dumps(message)
    assert codec.decode(orjson.dumps(message)) == message


def test_untyped_codec_does_not_validate_shape() -> None:
    assert MessageCodec(dict).decode("[1]") == [1]


def test_untyped_decode_of_non_json_raises_invalid_argument() -> None:
    with pytest.raises(APIError) as info:
        MessageCodec(Any).decode("{oops")
    assert info.value.code is ErrCode.INVALID_ARGUMENT
    assert info.value.message.startswith("Invalid message: not JSON")


def test_codec_frame_carries_encoded_data_event_and_id() -> None:
    codec: MessageCodec[Chat] = MessageCodec(Chat)
    frame = codec.frame(Chat(user="a", text="b"), event="chat", id="3")
    assert (frame.data, frame.event, frame.id) == (b'{"user":"a","text":"b","n":0}', "chat", "3")


def test_codec_frame_refuses_line_break_in_id() -> None:
    with pytest.raises(SSEFieldError):
        codec: MessageCodec[Any] = MessageCodec(Any)
        codec.frame({}, id="1\n2")


# --- Frame -------------------------------------------------------------------------


def test_frame_sse_is_the_full_event() -> None:
    frame = Frame(b'{"a":1}', event="tick", id="5")
    assert frame.sse == b'event: tick\nid: 5\ndata: {"a":1}\n\n'
    assert list(SSEDecoder().feed(frame.sse)) == [SSEEvent(data='{"a":1}', event="tick", id="5")]


def test_frame_sse_is_built_once_and_cached() -> None:
    frame = Frame(b'{"a":1}')
    assert frame.sse is frame.sse


def test_frame_text_is_the_data_only_and_cached() -> None:
    frame = Frame('{"a":"é"}'.encode(), event="tick", id="5")
    assert frame.text == '{"a":"é"}'
    assert frame.text is frame.text


@pytest.mark.parametrize(("event", "id"), [("a\rb", None), ("a\nb", None), (None, "1\r\n2"), (None, "\0")])
def test_frame_with_bad_sse_field_is_refused_at_construction(event: str | None, id: str | None) -> None:
    with pytest.raises(SSEFieldError):
        Frame(b"{}", event=event, id=id)


def test_preframed_frame_sends_bytes_verbatim_and_empty_text() -> None:
    frame = Frame.preframed(b": ping\n\n")
    assert frame.sse == b": ping\n\n"
    assert frame.text == ""


def test_frame_repr_shows_data_event_and_id() -> None:
    assert repr(Frame(b"x", event="e", id="1")) == "Frame(b'x', event='e', id='1')"


# --- BroadcastGroup ----------------------------------------------------------------


class Stream:
    """A minimal subscriber: an Outbox it offers into, as a real stream does."""

    def __init__(self, maxsize: int = 10) -> None:
        self.outbox = Outbox(maxsize)

    def offer(self, frame: Frame) -> bool:
        return self.outbox.offer(frame)

    async def received(self) -> list[Frame]:
        self.outbox.close()
        return await self.outbox.take()


async def test_publish_encodes_once_and_queues_the_same_frame_to_every_member() -> None:
    group: BroadcastGroup[Chat] = BroadcastGroup(Chat)
    streams = [Stream() for _ in range(3)]
    for s in streams:
        group.add(s)
    assert group.publish(Chat(user="a", text="hi"), event="chat", id="1") == 3
    received = [await s.received() for s in streams]
    assert all(len(r) == 1 for r in received)
    frame = received[0][0]
    assert all(r[0] is frame for r in received)
    assert frame.data == b'{"user":"a","text":"hi","n":0}'
    assert (frame.event, frame.id) == ("chat", "1")


async def test_publish_to_empty_group_delivers_to_nobody() -> None:
    group: BroadcastGroup[Any] = BroadcastGroup()
    assert group.publish({"x": 1}) == 0


async def test_publish_excludes_the_given_member() -> None:
    group: BroadcastGroup[Any] = BroadcastGroup()
    sender, other = Stream(), Stream()
    group.add(sender)
    group.add(other)
    assert group.publish({"m": 1}, exclude=sender) == 1
    assert await sender.received() == []
    assert [f.data for f in await other.received()] == [b'{"m":1}']
    assert sender in group


async def test_full_member_is_cut_off_and_removed_while_others_get_the_frame() -> None:
    group: BroadcastGroup[Any] = BroadcastGroup()
    slow, fast = Stream(maxsize=1), Stream(maxsize=10)
    group.add(slow)
    group.add(fast)
    assert group.publish(1) == 2
    assert group.publish(2) == 1
    assert slow.outbox.overflowed
    assert slow not in group
    assert fast in group
    assert len(group) == 1
    assert group.publish(3) == 1
    assert [f.data for f in await fast.received()] == [b"1", b"2", b"3"]
    assert [f.data for f in await slow.received()] == [b"1"]


async def test_closed_member_is_removed_on_publish() -> None:
    group: BroadcastGroup[Any] = BroadcastGroup()
    gone = Stream()
    gone.outbox.close()
    group.add(gone)
    assert group.publish("x") == 0
    assert gone not in group
    assert not gone.outbox.overflowed


async def test_publish_with_bad_event_name_raises_before_queuing() -> None:
    group: BroadcastGroup[Any] = BroadcastGroup()
    member = Stream()
    group.add(member)
    with pytest.raises(SSEFieldError):
        group.publish("x", event="a\nb")
    assert await member.received() == []


async def test_publish_frame_sends_a_prebuilt_frame() -> None:
    group: BroadcastGroup[Any] = BroadcastGroup()
    member = Stream()
    group.add(member)
    ping = Frame.preframed(b": ping\n\n")
    assert group.publish_frame(ping) == 1
    assert (await member.received())[0] is ping


async def test_add_is_idempotent_and_discard_of_non_member_is_a_no_op() -> None:
    group: BroadcastGroup[Any] = BroadcastGroup()
    member = Stream()
    group.add(member)
    group.add(member)
    assert len(group) == 1
    group.discard(Stream())
    group.discard(member)
    group.discard(member)
    assert len(group) == 0


async def test_joined_adds_for_the_block_and_removes_on_exit() -> None:
    group: BroadcastGroup[Any] = BroadcastGroup()
    member = Stream()
    with group.joined(member):
        assert member in group
        assert group.publish("x") == 1
    assert member not in group
    assert group.publish("y") == 0


async def test_joined_removes_the_member_even_on_exception() -> None:
    group: BroadcastGroup[Any] = BroadcastGroup()
    member = Stream()
    with pytest.raises(RuntimeError, match="handler failed"), group.joined(member):
        assert member in group
        raise RuntimeError("handler failed")
    assert member not in group
    assert len(group) == 0
