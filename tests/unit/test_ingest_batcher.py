"""The batcher: records in, batches out, in order, every record in exactly one batch."""

from __future__ import annotations

import pytest

from sluicegate.services.ingest.batcher import Batcher, Known


def lines(first: int, count: int) -> bytes:
    return b"".join(b"r%d\n" % n for n in range(first, first + count))


def test_full_batches_are_cut_as_records_arrive_and_the_rest_on_flush() -> None:
    batcher = Batcher(4)
    assert batcher.feed(0, lines(0, 3), 3, 10, 20) == []
    cuts = batcher.feed(3, lines(3, 4), 4, 5, 30)
    assert [(c.seq, c.first, c.count, c.data) for c in cuts] == [(1, 0, 4, lines(0, 4))]
    assert (cuts[0].min_ts, cuts[0].max_ts) == (5, 30)  # the uploads' ranges: a superset
    assert batcher.open_count == 3
    more = batcher.feed(7, lines(7, 5), 5, 1, 2)
    assert [(c.seq, c.first, c.data) for c in more] == [(2, 4, lines(4, 4)), (3, 8, lines(8, 4))]
    assert batcher.flush() is None
    batcher.feed(12, lines(12, 1), 1, 0, 0)
    last = batcher.flush()
    assert last is not None and (last.seq, last.first, last.count, last.data) == (4, 12, 1, lines(12, 1))
    assert batcher.received == 13


def test_one_upload_larger_than_a_batch_is_cut_into_several() -> None:
    batcher = Batcher(1000)
    cuts = batcher.feed(0, lines(0, 10_000), 10_000, 0, 1)
    assert [c.first for c in cuts] == list(range(0, 10_000, 1000))
    assert b"".join(c.data for c in cuts) == lines(0, 10_000)


def test_records_fed_again_are_ignored_and_an_overlap_keeps_only_the_new_ones() -> None:
    batcher = Batcher(10, next_index=5, next_seq=3)
    assert batcher.feed(0, lines(0, 5), 5, 0, 0) == []  # in batches stored already
    batcher.feed(3, lines(3, 4), 4, 0, 0)
    assert batcher.open_count == 2
    cut = batcher.flush()
    assert cut is not None and (cut.seq, cut.first, cut.data) == (3, 5, lines(5, 2))


def test_a_hole_before_the_records_is_refused() -> None:
    batcher = Batcher(10)
    with pytest.raises(ValueError, match="missing"):
        batcher.feed(2, lines(2, 1), 1, 0, 0)


def test_known_batches_gather_their_records_across_entries_and_cutting_resumes_after_them() -> None:
    batcher = Batcher(3, next_index=7, next_seq=4)
    batcher.resume([Known(2, 2, 3, 100, 200), Known(3, 5, 2, 300, 400)])  # batch 1 is stored
    assert batcher.gathering
    done = batcher.feed(0, lines(0, 4), 4, 0, 0)
    assert done == []
    done = batcher.feed(4, lines(4, 5), 5, 7, 8)
    assert [(c.seq, c.first, c.count, c.data, c.min_ts) for c in done] == [
        (2, 2, 3, lines(2, 3), 100),
        (3, 5, 2, lines(5, 2), 300),
    ]
    assert not batcher.gathering
    assert batcher.open_count == 2  # records 7 and 8
    done = batcher.feed(9, lines(9, 1), 1, 0, 0)
    assert [(c.seq, c.first, c.data) for c in done] == [(4, 7, lines(7, 3))]
