"""Cutting a session's records into batches: records in, batches out, no I/O.

The processor feeds :class:`Batcher` the records of the session's log in index order
(each group with its time range) and gets back the batches to store: every full
``batchSize`` at once, the rest when it asks (:meth:`Batcher.flush`, after
``maxBatchDelayMs`` or at the end). Batches are numbered from 1 and hold consecutive
records; a batch's time range is a superset of its records' (the range of the uploads
it was cut from), which is all the read-back index needs.

A processor that takes a session over resumes it: batches already cut (recorded in the
database) are *known*; their records are gathered again from the log for those not
stored yet (:meth:`Batcher.resume`), and cutting goes on after the last of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Batcher", "Cut", "Known"]


def _line_end(data: bytes, lines: int, start: int = 0) -> int:
    """The offset just after the first ``lines`` lines of ``data`` from ``start``."""
    cut = start
    for _ in range(lines):
        cut = data.index(b"\n", cut) + 1
    return cut


@dataclass(slots=True)
class _Chunk:
    """Consecutive records: lines and time range."""

    data: bytes
    count: int
    min_ts: int
    max_ts: int

    def split(self, take: int) -> tuple[_Chunk, _Chunk]:
        """The first ``take`` records, and the rest (time ranges stay the chunk's: a superset)."""
        cut = _line_end(self.data, take)
        return (
            _Chunk(self.data[:cut], take, self.min_ts, self.max_ts),
            _Chunk(self.data[cut:], self.count - take, self.min_ts, self.max_ts),
        )


@dataclass(slots=True, eq=False)
class Cut:
    """A batch: its number, its records and their time range."""

    seq: int
    first: int
    count: int
    data: bytes
    min_ts: int
    max_ts: int

    @property
    def end(self) -> int:
        return self.first + self.count


@dataclass(slots=True)
class Known:
    """A batch cut before (by this processor's predecessor) whose records must be gathered."""

    seq: int
    first: int
    count: int
    min_ts: int
    max_ts: int
    parts: list[bytes] = field(default_factory=list)
    gathered: int = 0


class Batcher:
    """Cuts records into batches of ``size``.

    Args:
        size: records per batch (``batchSize``).
        next_index: the index of the first record not in any batch yet.
        next_seq: the number of the next batch.
    """

    def __init__(self, size: int, *, next_index: int = 0, next_seq: int = 1) -> None:
        self.size = size
        self.next_index = next_index  # the first record not in a cut batch
        self.next_seq = next_seq
        self._open: list[_Chunk] = []
        self._open_count = 0
        self._known: list[Known] = []

    @property
    def open_count(self) -> int:
        """Records received and not in a batch yet."""
        return self._open_count

    @property
    def gathering(self) -> bool:
        """Whether known batches still wait for their records."""
        return bool(self._known)

    @property
    def received(self) -> int:
        """The index after the last record fed."""
        return self.next_index + self._open_count

    def resume(self, known: list[Known]) -> None:
        """Gather the records of these batches (cut before, not stored yet) from what is fed next."""
        self._known = sorted(known, key=lambda k: k.first)

    def feed(self, first: int, data: bytes, count: int, min_ts: int, max_ts: int) -> list[Cut]:
        """Add records ``first`` to ``first + count`` (each line of ``data`` one record).

        Records before what was fed already, or in a batch stored already, are ignored.

        Returns:
            The batches that are now complete: known ones whose records are all gathered,
            then every new full batch.

        Raises:
            ValueError: records are missing before ``first`` (the log skipped some).
        """
        done = self._gather(first, data, count) if self._known else []
        end = first + count
        if end <= self.received:
            return done
        if first > self.received:
            raise ValueError(f"records {self.received} to {first} are missing")
        skip = self.received - first
        if skip:
            data = data[_line_end(data, skip) :]
        new = end - self.received
        self._open.append(_Chunk(data, new, min_ts, max_ts))
        self._open_count += new
        while self._open_count >= self.size:
            done.append(self._cut(self.size))
        return done

    def flush(self) -> Cut | None:
        """Cut whatever is open into one batch (``None`` if nothing is)."""
        if not self._open_count:
            return None
        return self._cut(self._open_count)

    def _cut(self, take: int) -> Cut:
        parts: list[_Chunk] = []
        need = take
        while need:
            chunk = self._open[0]
            if chunk.count <= need:
                parts.append(self._open.pop(0))
                need -= chunk.count
            else:
                head, self._open[0] = chunk.split(need)
                parts.append(head)
                need = 0
        self._open_count -= take
        data = parts[0].data if len(parts) == 1 else b"".join([p.data for p in parts])
        cut = Cut(
            self.next_seq,
            self.next_index,
            take,
            data,
            min(p.min_ts for p in parts),
            max(p.max_ts for p in parts),
        )
        self.next_seq += 1
        self.next_index += take
        return cut

    def _gather(self, first: int, data: bytes, count: int) -> list[Cut]:
        """Give known batches the records of theirs among ``first .. first + count``."""
        done: list[Cut] = []
        end = first + count
        for known in list(self._known):
            lo = max(first, known.first + known.gathered)
            hi = min(end, known.first + known.count)
            if lo >= hi:
                continue
            start = _line_end(data, lo - first)
            stop = _line_end(data, hi - lo, start)
            known.parts.append(data[start:stop])
            known.gathered += hi - lo
            if known.gathered == known.count:
                self._known.remove(known)
                records = b"".join(known.parts)
                done.append(Cut(known.seq, known.first, known.count, records, known.min_ts, known.max_ts))
        return done
