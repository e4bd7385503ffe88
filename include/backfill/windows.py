"""Splitting a time range into half-open ``[start, end)`` partitions.

Bounds are UTC instants, and each window's end is the next one's start, so a
row sits in exactly one window whatever its timestamp, boundaries included.
The grid is laid out in a *partition* time zone: ``P1D`` in Europe/Berlin is
one local calendar day, which is 23 or 25 hours on the days the clocks
change. ``PT24H`` is always 24 hours.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

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
                f"{max_partitions} windows of {window_size}: choose a larger window_size, "
                "a shorter range, or raise max_partitions")
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
    midnight = all(t.hour == t.minute == t.second == t.microsecond == 0 for t in (start, end))
    fmt = "YYYY-MM-DD" if midnight else "YYYY-MM-DD HH:mm"
    suffix = "" if tz == "UTC" else f" {tz}"
    return f"{start.format(fmt)} → {end.format(fmt)}{suffix}"


def _utc(value: datetime) -> datetime:
    """A plain ``datetime`` in UTC (pendulum's subclass does not survive XCom as is)."""
    u = value.astimezone(timezone.utc)
    return datetime(u.year, u.month, u.day, u.hour, u.minute, u.second, u.microsecond,
                    tzinfo=timezone.utc)
