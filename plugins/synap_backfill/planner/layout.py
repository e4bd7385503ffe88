"""Laying a plan out on the calendar: the planned buckets in windows of ``window_size``.

Busy windows are cut between buckets, quiet neighbours joined, the number of
partitions capped. A partition reads its span minus every bucket it must not read
(its ``ranges``); unchanged rows inside its span are counted in its report, so its
label adds up with what it read. ``difference`` says which buckets are
planned; this module only places them.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from dataclasses import dataclass
from datetime import datetime
from typing import Iterable

from synap_backfill.common.buckets import UNTIMED, bucket_end, bucket_of, bucket_start
from synap_backfill.common.windows import Grid, window_between
from synap_backfill.planner.difference import UNTIMED_LABEL, BucketCount, Difference, PlannedPartition, Range


@dataclass
class Plan:
    """The partitions of a run, what each should read bucket by bucket, and what was not planned."""

    partitions: list[PlannedPartition]
    buckets: dict[str, list[BucketCount]]  # partition key -> its planned buckets
    unchanged_outside: int  # unchanged rows that lie in no partition's span

    @property
    def rows(self) -> int:
        return sum(p.rows for p in self.partitions)


@dataclass
class _Piece:
    lo: datetime
    hi: datetime
    rows: int


def lay_out(diff: Difference, grid: Grid, *, start: datetime | None, end: datetime | None,
            max_rows: int, min_rows: int, max_partitions: int) -> Plan:
    """Planned buckets as partitions on the calendar of ``grid``.

    * A window holding more than ``max_rows`` planned rows is cut between buckets into
      ``ceil(rows / max_rows)`` pieces (a bucket is never cut, so a piece can be larger).
    * Quiet neighbours are joined until a piece holds ``min_rows`` (never past ``max_rows``).
    * While there are more than ``max_partitions`` pieces, neighbours are merged pairwise.
    """
    timed = sorted((b for b in diff.planned if b.bucket != UNTIMED), key=lambda c: c.bucket)
    by_window: dict[int, list[BucketCount]] = {}
    for count, k in zip(timed, grid.windows_of([c.bucket for c in timed])):
        by_window.setdefault(k, []).append(count)
    pieces: list[_Piece] = []
    for k in sorted(by_window):
        lo, hi = grid.lower(k), grid.lower(k + 1)
        if start is not None:
            lo = max(lo, start)
        if end is not None:
            hi = min(hi, end)
        cells = by_window[k]
        rows = sum(c.rows for c in cells)
        if rows <= max_rows:
            pieces.append(_Piece(lo, hi, rows))
            continue
        limit = math.ceil(rows / math.ceil(rows / max_rows))
        bounds, running = [lo], 0
        for cell in cells:
            if running and running + cell.rows > limit and lo < bucket_start(cell.bucket) < hi:
                bounds.append(bucket_start(cell.bucket))
                running = 0
            running += cell.rows
        bounds.append(hi)
        for a, b in zip(bounds, bounds[1:]):
            pieces.append(_Piece(a, b, sum(c.rows for c in cells
                                           if a <= max(bucket_start(c.bucket), lo) < b)))
    if min_rows > 1:
        groups: list[list[_Piece]] = []
        for piece in pieces:
            taken = sum(p.rows for p in groups[-1]) if groups else 0
            if groups and taken < min_rows and taken + piece.rows <= max_rows:
                groups[-1].append(piece)
            else:
                groups.append([piece])
        pieces = [_join(group) for group in groups]
    while len(pieces) > max_partitions:
        pieces = [_join(pieces[i:i + 2]) for i in range(0, len(pieces), 2)]

    skip = sorted([(bucket_start(c.bucket), bucket_end(c.bucket)) for c in diff.unchanged
                   if c.bucket != UNTIMED] + [(bucket_start(b), bucket_end(b)) for b in diff.outside])
    # Buckets as sorted numbers: a piece's share is a slice, found by bisection.
    planned_at = [c.bucket for c in timed]
    unchanged = sorted((c.bucket, c.rows) for c in diff.unchanged if c.bucket != UNTIMED)
    unchanged_at = [b for b, _ in unchanged]
    partitions: list[PlannedPartition] = []
    planned_by_key: dict[str, list[BucketCount]] = {}
    attributed = 0
    for piece in pieces:
        first, past = _first_bucket_at_or_after(piece.lo), _first_bucket_at_or_after(piece.hi)
        # Planned buckets touching the piece (one cut by an explicit start begins before it).
        mine = timed[bisect_left(planned_at, bucket_of(piece.lo)):bisect_left(planned_at, past)]
        held = sum(n for _, n in unchanged[bisect_left(unchanged_at, first):
                                           bisect_left(unchanged_at, past)])
        attributed += held
        window = window_between(piece.lo, piece.hi, grid.tz)
        partition = PlannedPartition(window.label, window.start, window.end,
                                     _ranges(piece, skip, mine), sum(c.rows for c in mine), held,
                                     reads_held=any(c.bucket in diff.held_planned for c in mine))
        partitions.append(partition)
        planned_by_key[partition.key] = mine
    untimed = [c for c in diff.planned if c.bucket == UNTIMED]
    if untimed:
        partition = PlannedPartition(UNTIMED_LABEL, None, None, (), untimed[0].rows)
        partitions.append(partition)
        planned_by_key[partition.key] = untimed
    return Plan(partitions, planned_by_key, diff.unchanged_rows - attributed)


def _first_bucket_at_or_after(instant: datetime) -> int:
    bucket = bucket_of(instant)
    return bucket if bucket_start(bucket) == instant else bucket + 1


def _join(pieces: list[_Piece]) -> _Piece:
    return _Piece(pieces[0].lo, pieces[-1].hi, sum(p.rows for p in pieces))


def _ranges(piece: _Piece, skip: list[Range], planned: list[BucketCount]) -> tuple[Range, ...]:
    """The piece minus the buckets it must not read, keeping only ranges that hold a planned bucket."""
    ranges: list[Range] = []
    cursor = piece.lo
    for lo, hi in skip:
        if hi <= piece.lo or lo >= piece.hi:
            continue
        if lo > cursor:
            ranges.append((cursor, lo))
        cursor = max(cursor, hi)
    if cursor < piece.hi:
        ranges.append((cursor, piece.hi))
    starts = [max(bucket_start(c.bucket), piece.lo) for c in planned]
    return tuple((lo, hi) for lo, hi in ranges if any(lo <= s < hi for s in starts))


def in_plan(bucket: int, planned: Iterable[PlannedPartition]) -> bool:
    """Whether one of ``planned`` reads ``bucket`` whole."""
    lo, hi = bucket_start(bucket), bucket_end(bucket)
    return any(s <= lo and hi <= e for p in planned for s, e in p.ranges)
