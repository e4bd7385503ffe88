"""Splitting a time range into half-open ``[start, end)`` partitions.

Bounds are UTC instants, and each window's end is the next one's start, so a
row sits in exactly one window whatever its timestamp, boundaries included.
The grid is laid out in a *partition* time zone: ``P1D`` in Europe/Berlin is
one local calendar day, which is 23 or 25 hours on the days the clocks
change. ``PT24H`` is always 24 hours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

import pendulum

from .config import window_duration


class TooManyPartitions(ValueError):
    """The range splits into more windows than the run allows."""


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
    def from_dict(cls, raw: dict[str, Any]) -> "Window":
        return cls(datetime.fromisoformat(raw["start"]), datetime.fromisoformat(raw["end"]),
                   raw["label"])


def plan_windows(start: datetime, end: datetime, window_size: str, tz: str = "UTC", *,
                 max_partitions: int = 1000) -> list[Window]:
    """Windows from ``start`` stepping by ``window_size``; the last is cut at ``end``."""
    if end <= start:
        return []
    size = window_duration(window_size)
    cursor = pendulum.instance(start).in_timezone(tz)
    stop = pendulum.instance(end)
    bounds = [cursor]
    while bounds[-1] < stop:
        if len(bounds) > max_partitions:
            raise TooManyPartitions(
                f"the range {start.isoformat()} to {end.isoformat()} splits into more than "
                f"{max_partitions} windows of {window_size}: choose a larger window_size "
                "or a shorter range")
        bounds.append(min(bounds[-1] + size, stop.in_timezone(tz)))
    return [_window(a, b, tz) for a, b in zip(bounds, bounds[1:])]


def covering_range(first: datetime, last: datetime, window_size: str,
                   tz: str = "UTC") -> tuple[datetime, datetime]:
    """The smallest range on the window grid that holds both ``first`` and ``last``.

    The grid starts at local midnight of ``first``'s day (the first of its month
    for month- or year-sized windows), so windows fall on readable boundaries.
    The end is strictly after ``last``: the windows are half-open.
    """
    size = window_duration(window_size)
    first_local = pendulum.instance(first).in_timezone(tz)
    anchor = first_local.start_of("month" if size.years or size.months else "day")
    while anchor + size <= first_local:
        anchor = anchor + size
    end = anchor + size
    last_local = pendulum.instance(last)
    while end <= last_local:
        end = end + size
    return _utc(anchor), _utc(end)


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
