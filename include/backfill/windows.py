"""Splitting a time range into half-open ``[start, end)`` partitions.

Bounds are UTC instants, and each window's end is the next one's start, so a
row sits in exactly one window whatever its timestamp, boundaries included.
The grid is laid out in a *partition* time zone: ``P1D`` in Europe/Berlin is
one local calendar day, which is 23 or 25 hours on the days the clocks
change; ``P1W`` runs Monday to Monday; ``P1M`` is a calendar month. A size
with a time part is absolute: ``PT24H`` is always 24 hours, and ``PT6H``
windows start at 00, 06, 12 and 18 UTC.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Callable, Mapping

import pendulum

from .config import window_duration


@dataclass(frozen=True)
class Window:
    """A half-open slice of time ``[start, end)`` in UTC."""

    start: datetime
    end: datetime
    label: str

    def contains(self, ts: datetime) -> bool:
        return self.start <= ts < self.end

    def to_dict(self) -> dict[str, str]:
        return {"start": self.start.isoformat(), "end": self.end.isoformat(), "label": self.label}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "Window":
        return cls(datetime.fromisoformat(raw["start"]), datetime.fromisoformat(raw["end"]),
                   raw["label"])


EPOCH_MONDAY = date(2000, 1, 3)  # day- and week-sized windows count from a Monday
LAST_LOCAL = datetime(9999, 12, 31)  # no window ends later (what Python can hold, less a day)


@dataclass(frozen=True)
class Grid:
    """The windows' calendar in the partition zone, and the fine buckets rows are counted in.

    One ``GROUP BY`` over ``fine_sql`` counts every row into a fine bucket of
    local wall-clock time: a day for month-sized windows, an hour for day- and
    week-sized ones, a divisor of the window for shorter ones. Each bucket lies
    in exactly one window, so the counts per window, and where to cut a busy
    window, come from that one pass, whatever the indexes. Only occupied
    windows exist: a row in year 9999 costs one bucket, not a calendar of
    millions of empty windows.
    """

    kind: str  # "months", "days" (local calendar) or "seconds" (absolute, from 1970 UTC)
    step: int  # months, days or seconds in a window
    fine: int  # seconds in a fine bucket (kind "seconds")
    tz: str

    @classmethod
    def of(cls, window_size: str, tz: str = "UTC") -> "Grid":
        size = window_duration(window_size)
        months = size.years * 12 + size.months
        if months:
            return cls("months", months, 0, tz)
        if "T" not in window_size:  # days and weeks: the local calendar's
            return cls("days", size.weeks * 7 + size.remaining_days, 0, tz)
        step = int(size.total_seconds())  # a time part (PT24H, P1DT12H): always that long
        parts = max([k for k in range(1, 65) if step % k == 0 and step // k >= 60] or [1])
        return cls("seconds", step, step // parts, tz)

    def fine_sql(self, column: str) -> str:
        """SQL: a row's fine bucket, from its timestamp ``column`` (``%(partition_tz)s`` bound)."""
        local = f"({column}::timestamptz AT TIME ZONE %(partition_tz)s)"
        if self.kind == "months":
            return f"date_trunc('day', {local})"
        if self.kind == "days":
            return f"date_trunc('hour', {local})"
        # Absolute time: a window with a time part is always that long, DST or not.
        return f"floor(extract(epoch FROM {column}::timestamptz) / {self.fine})::bigint"

    def windows(self, buckets: list[tuple[Any, int]], start: datetime | None = None,
                end: datetime | None = None) -> tuple[list["Window"], list[int], "SplitPoints"]:
        """The occupied windows in order, their row counts, and cut points within them.

        ``buckets``: (fine bucket, rows) as ``fine_sql`` groups them. ``start`` and
        ``end`` clip the first and last window to an explicit range.
        """
        # Local times only: converting to UTC is done per window, and per bucket
        # only for a window that is split (pendulum is slow per call).
        by_window: dict[int, list[tuple[datetime, int]]] = defaultdict(list)
        for bucket, rows in buckets:
            local = self._fine_local(bucket)
            by_window[self._index(local)].append((local, rows))
        windows, counts, fines = [], [], {}
        for k in sorted(by_window):
            lo, hi = self._utc(self._start(k)), self._utc(self._start(k + 1))
            lo, hi = max(lo, start) if start else lo, min(hi, end) if end else hi
            window = _window(pendulum.instance(lo), pendulum.instance(hi), self.tz)
            windows.append(window)
            counts.append(sum(n for _, n in by_window[k]))
            fines[window.start] = sorted(by_window[k])

        def split_points(window: Window, parts: int) -> list[datetime]:
            """Cuts so that no piece holds more than a ``parts``-th of the rows, unless one fine
            bucket does: from the counts, no query."""
            cells = fines[window.start]
            limit = math.ceil(sum(n for _, n in cells) / parts)
            cuts, running = [], 0
            for bucket_start, rows in cells:
                if running and running + rows > limit:
                    cuts.append(self._utc(bucket_start))
                    running = 0
                running += rows
            return cuts
        return windows, counts, split_points

    def _fine_local(self, bucket: Any) -> datetime:
        if self.kind == "seconds":
            return datetime(1970, 1, 1) + timedelta(seconds=int(bucket) * self.fine)
        return bucket.replace(tzinfo=None)

    def _index(self, local: datetime) -> int:
        if self.kind == "months":
            return (local.year * 12 + local.month - 1) // self.step
        if self.kind == "days":
            return (local.date() - EPOCH_MONDAY).days // self.step
        return int((local - datetime(1970, 1, 1)).total_seconds()) // self.step

    def _start(self, k: int) -> datetime:
        """Local wall-clock start of window ``k``."""
        try:
            if self.kind == "months":
                month = k * self.step
                return min(datetime(month // 12, month % 12 + 1, 1), LAST_LOCAL)
            if self.kind == "days":
                return min(datetime.combine(EPOCH_MONDAY, time()) + timedelta(days=k * self.step),
                           LAST_LOCAL)
            return min(datetime(1970, 1, 1) + timedelta(seconds=k * self.step), LAST_LOCAL)
        except (OverflowError, ValueError):  # past year 9999
            return LAST_LOCAL

    def _utc(self, local: datetime) -> datetime:
        """A grid time as a UTC instant: local wall-clock time, or already UTC (kind "seconds")."""
        if self.kind == "seconds":
            return local.replace(tzinfo=timezone.utc)
        return _utc(pendulum.datetime(local.year, local.month, local.day, local.hour, local.minute,
                                      local.second, local.microsecond, tz=self.tz))


def _window(start: pendulum.DateTime, end: pendulum.DateTime, tz: str) -> Window:
    return Window(_utc(start), _utc(end), _label(start.in_timezone(tz), end.in_timezone(tz), tz))


def _label(start: pendulum.DateTime, end: pendulum.DateTime, tz: str) -> str:
    if all(t.hour == t.minute == t.second == t.microsecond == 0 for t in (start, end)):
        fmt = "YYYY-MM-DD"
    elif all(t.second == t.microsecond == 0 for t in (start, end)):
        fmt = "YYYY-MM-DD HH:mm"
    else:  # a split at a row's timestamp
        fmt = "YYYY-MM-DD HH:mm:ss.SSSSSS"
    suffix = "" if tz == "UTC" else f" {tz}"
    return f"{start.format(fmt)} → {end.format(fmt)}{suffix}"


def _utc(value: datetime) -> datetime:
    """A plain ``datetime`` in UTC (pendulum's subclass does not survive XCom as is)."""
    u = value.astimezone(timezone.utc)
    return datetime(u.year, u.month, u.day, u.hour, u.minute, u.second, u.microsecond,
                    tzinfo=timezone.utc)


@dataclass(frozen=True)
class SizedWindow:
    """A window with the number of rows the planner expects in it."""

    window: Window
    rows: int

    def to_dict(self) -> dict[str, Any]:
        return {**self.window.to_dict(), "rows": self.rows}


SplitPoints = Callable[[Window, int], list[datetime]]


def size_by_rows(windows: list[Window], counts: list[int], split_points: SplitPoints, *,
                 max_rows: int, max_partitions: int, min_rows: int = 1, tz: str = "UTC"
                 ) -> list[SizedWindow]:
    """Fit calendar windows to the data: split busy ones, join quiet ones, skip empty ones, cap.

    * A window holding more than ``max_rows`` rows is cut into ``ceil(rows /
      max_rows)`` pieces at the row quantiles ``split_points`` returns (all
      rows sharing one timestamp stay together, so a piece can be larger).
    * A window holding no rows is dropped: a partition that does nothing still
      costs a task start.
    * Quiet neighbours are joined until a piece holds ``min_rows`` (never past
      ``max_rows``): each task's start-up and each partition's last, partly
      filled batch then count for little.
    * While there are more than ``max_partitions`` pieces, neighbours are merged
      pairwise, so a long range is coarsened rather than refused; the cap wins
      over ``max_rows``.
    The pieces still tile the occupied range without gaps between neighbours
    that were merged, and stay half-open, so every row belongs to one piece.
    """
    pieces: list[SizedWindow] = []
    for window, rows in zip(windows, counts):
        if rows <= 0:
            continue
        if rows <= max_rows:
            pieces.append(SizedWindow(window, rows))
            continue
        parts = math.ceil(rows / max_rows)
        cuts = sorted({p for p in split_points(window, parts) if window.start < p < window.end})
        bounds = [window.start, *cuts, window.end]
        for start, end in zip(bounds, bounds[1:]):
            pieces.append(SizedWindow(_window(pendulum.instance(start), pendulum.instance(end), tz),
                                      rows // (len(cuts) + 1)))
    if min_rows > 1:
        groups: list[list[SizedWindow]] = []
        for piece in pieces:
            held = sum(p.rows for p in groups[-1]) if groups else 0
            if groups and held < min_rows and held + piece.rows <= max_rows:
                groups[-1].append(piece)
            else:
                groups.append([piece])
        pieces = [_join(group, tz) for group in groups]
    while len(pieces) > max_partitions:
        pieces = [_join(pieces[i:i + 2], tz) for i in range(0, len(pieces), 2)]
    return pieces


def _join(pieces: list[SizedWindow], tz: str) -> SizedWindow:
    """One window from the first piece's start to the last one's end (gaps between hold no rows)."""
    if len(pieces) == 1:
        return pieces[0]
    start, end = pieces[0].window.start, pieces[-1].window.end
    return SizedWindow(_window(pendulum.instance(start), pendulum.instance(end), tz),
                       sum(p.rows for p in pieces))
