"""The log's frame codec: bytes in, entries out, torn tails left out."""

from __future__ import annotations

import pytest

from sluicegate.engines.log import LogError, LogState
from sluicegate.engines.log.frames import check_meta, decode, entry_header, mark_frame


def position(end: int, last: bool) -> str:
    return f"{end}{'!' if last else ''}"


def frame(records: bytes, count: int, ms: int = 1_700_000_000_123, meta: bytes = b"") -> bytes:
    return entry_header(count, len(records), ms, meta) + records


def test_entries_and_marks_decode_with_their_indices_from_the_base() -> None:
    data = frame(b"a\nb\n", 2, meta=b"1 2") + mark_frame(LogState.PAUSED, 5_000) + frame(b"c\n", 1)
    entries, used = decode(data, 10, position)
    assert used == len(data)
    assert [(e.first, e.count, e.data, e.meta, e.mark) for e in entries] == [
        (10, 2, b"a\nb\n", b"1 2", None),
        (12, 0, b"", b"", LogState.PAUSED),
        (12, 1, b"c\n", b"", None),
    ]
    assert entries[0].appended_at == 1_700_000_000.123
    assert entries[1].appended_at == 5.0
    assert [e.position for e in entries] == ["12", "12", "13!"]
    assert entries[2].end == 13


@pytest.mark.parametrize("cut", [1, 5, 20, 24])
def test_a_torn_last_frame_is_left_out(cut: int) -> None:
    whole = frame(b"x\n", 1)
    torn = frame(b"yyyyyyyy\n", 1)
    entries, used = decode(whole + torn[:cut], 0, position)
    assert [e.data for e in entries] == [b"x\n"]
    assert used == len(whole)


def test_records_are_sliced_by_size_whatever_they_hold() -> None:
    records = b"@3 4 5 six\n!sealed 1\n"  # records that look like headers
    entries, used = decode(frame(records, 2), 0, position)
    assert entries[0].data == records
    assert used == len(frame(records, 2))


@pytest.mark.parametrize("data", [b"?what\n", b"@x 1 2 \nz", b"!closed 12\n", b"!open x\n"])
def test_bytes_that_are_not_frames_are_refused(data: bytes) -> None:
    with pytest.raises(LogError, match="corrupt"):
        decode(data, 0, position)


def test_empty_input_has_no_entries() -> None:
    assert decode(b"", 7, position) == ([], 0)


@pytest.mark.parametrize("meta", [b"a\nb", b"\x00", b"x" * 201, "é".encode()])
def test_meta_a_header_cannot_carry_is_refused(meta: bytes) -> None:
    with pytest.raises(ValueError, match="meta"):
        check_meta(meta)


def test_meta_of_printable_ascii_is_taken() -> None:
    check_meta(b"1700000000000000 1700000001000000")
    check_meta(b"")
