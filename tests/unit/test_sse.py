"""The SSE encoder and the incremental decoder in ``sluicegate.streaming.sse``."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import pytest

from sluicegate.errors import SSEFieldError
from sluicegate.streaming.sse import (
    HEARTBEAT,
    SSEDecoder,
    SSEEvent,
    encode_comment,
    encode_event,
    encode_json_event,
    encode_retry,
    retry_field,
)

if TYPE_CHECKING:
    from collections.abc import Callable


def decode_all(*chunks: bytes) -> tuple[list[SSEEvent], SSEDecoder]:
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    return events, decoder


def random_chunks(data: bytes, rng: random.Random) -> list[bytes]:
    chunks: list[bytes] = []
    i = 0
    while i < len(data):
        size = rng.randint(1, 7)
        chunks.append(data[i : i + size])
        i += size
    return chunks


# --- encoder -----------------------------------------------------------------------


def test_unnamed_data_only_event_is_one_data_line_and_blank_line() -> None:
    assert encode_event("hello") == b"data: hello\n\n"


def test_event_name_and_id_precede_the_data() -> None:
    assert encode_event("x", event="update", id="42") == b"event: update\nid: 42\ndata: x\n\n"


def test_none_data_sends_fields_without_a_data_line() -> None:
    assert encode_event(None, id="7") == b"id: 7\n\n"


def test_empty_data_still_sends_one_data_line() -> None:
    assert encode_event("") == b"data: \n\n"


def test_utf8_data_is_encoded_as_utf8() -> None:
    assert encode_event("héllo ✓") == "data: héllo ✓\n\n".encode()


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"], ids=["lf", "crlf", "cr"])
def test_multiline_data_becomes_several_data_lines(newline: str) -> None:
    data = newline.join(["one", "two", "three"])
    assert encode_event(data) == b"data: one\ndata: two\ndata: three\n\n"


def test_mixed_line_breaks_each_start_a_data_line_and_crlf_is_one_break() -> None:
    assert encode_event("a\r\nb\rc\nd") == b"data: a\ndata: b\ndata: c\ndata: d\n\n"


def test_trailing_line_break_in_data_gives_an_empty_last_data_line() -> None:
    assert encode_event("a\n") == b"data: a\ndata: \n\n"


def test_data_cannot_inject_a_second_event() -> None:
    events, _ = decode_all(encode_event("x\n\nevent: evil\ndata: injected"))
    assert events == [SSEEvent(data="x\n\nevent: evil\ndata: injected")]


@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "a\r\nb", "\n"])
def test_line_break_in_event_name_is_refused(bad: str) -> None:
    with pytest.raises(SSEFieldError, match="event name"):
        encode_event("x", event=bad)


@pytest.mark.parametrize("bad", ["1\n2", "1\r2", "1\r\n2"])
def test_line_break_in_id_is_refused(bad: str) -> None:
    with pytest.raises(SSEFieldError, match="id"):
        encode_event("x", id=bad)


def test_nul_in_id_is_refused() -> None:
    with pytest.raises(SSEFieldError, match="NUL"):
        encode_event("x", id="a\0b")


def test_sse_field_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="CR or LF"):
        encode_event("x", event="a\nb")


@pytest.mark.parametrize(
    ("data", "event", "id"),
    [
        (b'{"a":1}', None, None),
        (b'{"a":1}', "tick", None),
        (b'{"a":1}', None, "9"),
        (b'{"a":"\xc3\xa9"}', "tick", "9"),
        (b"", None, None),
        (b"two\nlines", None, None),
        (b"cr\r\nlf", "e", "1"),
        (b"lone\rcr", None, None),
    ],
)
def test_json_fast_path_matches_encode_event(data: bytes, event: str | None, id: str | None) -> None:
    assert encode_json_event(data, event=event, id=id) == encode_event(data.decode(), event=event, id=id)


def test_json_fast_path_refuses_line_break_in_event_name() -> None:
    with pytest.raises(SSEFieldError):
        encode_json_event(b"{}", event="a\rb")


def test_json_fast_path_refuses_nul_in_id() -> None:
    with pytest.raises(SSEFieldError):
        encode_json_event(b"{}", id="\0")


def test_retry_field_is_a_single_line() -> None:
    assert retry_field(3000) == b"retry: 3000\n"


def test_encode_retry_is_a_standalone_frame() -> None:
    assert encode_retry(1500) == b"retry: 1500\n\n"


def test_zero_retry_is_allowed() -> None:
    assert encode_retry(0) == b"retry: 0\n\n"


@pytest.mark.parametrize("encode", [retry_field, encode_retry])
def test_negative_retry_is_refused(encode: Callable[[int], bytes]) -> None:
    with pytest.raises(SSEFieldError, match="non-negative"):
        encode(-1)


def test_comment_frame() -> None:
    assert encode_comment("ping") == b": ping\n\n"
    assert encode_comment("ping") == HEARTBEAT


@pytest.mark.parametrize("bad", ["a\nb", "a\rb"])
def test_comment_with_line_break_is_refused(bad: str) -> None:
    with pytest.raises(SSEFieldError):
        encode_comment(bad)


# --- decoder -----------------------------------------------------------------------


ROUND_TRIP_FRAMES: list[tuple[str, str | None, str | None]] = [
    ("hello", None, None),
    ("multi\nline\ndata", "update", "1"),
    ("crlf\r\nbody", None, "2"),
    ("", "empty", None),
    ("unicode ✓ é 日本", "u", "3"),
    ("  leading spaces kept but one", None, None),
    ("colon: inside", "c", "4"),
    ("trailing\n", None, None),
]


def expected_events() -> list[SSEEvent]:
    expected: list[SSEEvent] = []
    last_id: str | None = None
    for data, event, id in ROUND_TRIP_FRAMES:
        last_id = id if id is not None else last_id
        normalised = data.replace("\r\n", "\n").replace("\r", "\n")
        expected.append(SSEEvent(data=normalised, event=event or "message", id=last_id))
    return expected


def stream_bytes() -> bytes:
    return b"".join(encode_event(data, event=event, id=id) for data, event, id in ROUND_TRIP_FRAMES)


def test_decoder_round_trips_encoded_events_in_one_chunk() -> None:
    events, _ = decode_all(stream_bytes())
    assert events == expected_events()


def test_decoder_round_trips_encoded_events_fed_byte_by_byte() -> None:
    raw = stream_bytes()
    events, _ = decode_all(*(raw[i : i + 1] for i in range(len(raw))))
    assert events == expected_events()


def test_decoder_round_trips_encoded_events_in_random_chunkings() -> None:
    rng = random.Random(0)
    raw = stream_bytes()
    for _ in range(50):
        events, _ = decode_all(*random_chunks(raw, rng))
        assert events == expected_events()


def test_decoder_accepts_crlf_line_endings() -> None:
    events, _ = decode_all(b"event: e\r\nid: 5\r\ndata: a\r\ndata: b\r\n\r\n")
    assert events == [SSEEvent(data="a\nb", event="e", id="5")]


def test_decoder_accepts_lone_cr_line_endings() -> None:
    events, _ = decode_all(b"data: a\rdata: b\r\rdata: c\r\r:")
    assert events == [SSEEvent(data="a\nb"), SSEEvent(data="c")]


def test_event_ending_in_lone_cr_is_dispatched_without_waiting_for_more_bytes() -> None:
    events, _ = decode_all(b"data: a\r\r")
    assert events == [SSEEvent(data="a")]


def test_cr_at_end_of_chunk_then_lf_in_next_chunk_is_one_line_break() -> None:
    decoder = SSEDecoder()
    assert list(decoder.feed(b"data: a\r")) == []
    assert list(decoder.feed(b"\ndata: b\r")) == []
    # The LF completes "data: b\r"; the CR is a blank line of its own and dispatches at once;
    # the LF after it belongs to that CR and is not a second blank line.
    assert list(decoder.feed(b"\n\r")) == [SSEEvent(data="a\nb")]
    assert list(decoder.feed(b"\ndata: c\n\n")) == [SSEEvent(data="c")]


def test_cr_at_end_of_chunk_followed_by_other_text_is_a_line_break() -> None:
    decoder = SSEDecoder()
    assert list(decoder.feed(b"data: a\r")) == []
    assert list(decoder.feed(b"data: b\r")) == []
    assert list(decoder.feed(b"\r:")) == [SSEEvent(data="a\nb")]


def test_event_is_not_dispatched_until_the_blank_line() -> None:
    decoder = SSEDecoder()
    assert list(decoder.feed(b"data: a\n")) == []
    assert list(decoder.feed(b"\n")) == [SSEEvent(data="a")]


def test_bytes_fed_without_iterating_the_result_are_not_lost() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"data: a\n")  # nothing can complete yet, so the caller ignores the result
    assert list(decoder.feed(b"\n")) == [SSEEvent(data="a")]


def test_comments_are_counted_and_not_dispatched() -> None:
    events, decoder = decode_all(HEARTBEAT, b":\n\n", b": x\ndata: y\n\n")
    assert events == [SSEEvent(data="y")]
    assert decoder.comments == 3


def test_retry_is_parsed_and_attached_to_later_events() -> None:
    events, decoder = decode_all(encode_retry(2500) + encode_event("a"))
    assert decoder.retry == 2500
    assert events == [SSEEvent(data="a", retry=2500)]


def test_non_numeric_retry_is_ignored() -> None:
    _, decoder = decode_all(b"retry: soon\n\nretry: -5\n\nretry: 1.5\n\n")
    assert decoder.retry is None


@pytest.mark.parametrize("value", ["²", "١٢"], ids=["superscript", "arabic-indic"])
def test_retry_with_non_ascii_digits_is_ignored(value: str) -> None:
    _, decoder = decode_all(f"retry: {value}\n\n".encode())
    assert decoder.retry is None


def test_id_persists_as_last_event_id_for_later_events() -> None:
    events, decoder = decode_all(b"id: 7\ndata: a\n\ndata: b\n\n")
    assert events == [SSEEvent(data="a", id="7"), SSEEvent(data="b", id="7")]
    assert decoder.last_event_id == "7"


def test_id_only_frame_sets_last_event_id_without_dispatching() -> None:
    events, decoder = decode_all(encode_event(None, id="9"), encode_event("x"))
    assert decoder.last_event_id == "9"
    assert events == [SSEEvent(data="x", id="9")]


def test_empty_id_resets_last_event_id() -> None:
    events, decoder = decode_all(b"id: 1\ndata: a\n\nid\ndata: b\n\n")
    assert [e.id for e in events] == ["1", ""]
    assert decoder.last_event_id == ""


def test_id_containing_nul_is_ignored() -> None:
    _, decoder = decode_all(b"id: 1\n\nid: 2\x003\n\n")
    assert decoder.last_event_id == "1"


def test_event_without_data_is_not_dispatched_and_its_name_is_forgotten() -> None:
    events, _ = decode_all(b"event: lonely\n\ndata: x\n\n")
    assert events == [SSEEvent(data="x", event="message")]


def test_field_without_colon_is_a_field_with_empty_value() -> None:
    events, _ = decode_all(b"data\n\n")
    assert events == [SSEEvent(data="")]


def test_only_one_space_after_the_colon_is_stripped() -> None:
    events, _ = decode_all(b"data:no-space\n\ndata:  two\n\n")
    assert [e.data for e in events] == ["no-space", " two"]


def test_unknown_fields_are_ignored() -> None:
    events, _ = decode_all(b"foo: bar\ndata: x\n\n")
    assert events == [SSEEvent(data="x")]


def test_property_decode_of_encode_returns_data_with_normalised_line_endings() -> None:
    rng = random.Random(0)
    alphabet = ["a", "b", " ", ":", "é", "✓", "\n", "\r", "\r\n", "\t", "data: ", "id: "]
    for _ in range(300):
        data = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 20)))
        raw = encode_event(data, event="e", id=str(rng.randint(0, 9)))
        events, _ = decode_all(*random_chunks(raw, rng))
        expected = data.replace("\r\n", "\n").replace("\r", "\n")
        assert len(events) == 1, repr(data)
        assert events[0].data == expected, repr(data)
        assert events[0].event == "e"
