"""The calendar of a run's windows, laid over the inventory's 15-minute UTC buckets.

Bounds are UTC instants, and each window's end is the next one's start, so a
row sits in exactly one window whatever its timestamp, boundaries included.
The grid is laid out in a *partition* time zone: ``P1D`` in Europe/Berlin is
one local calendar day, which is 23 or 25 hours on the days the clocks
change; ``P1W`` runs Monday to Monday; ``P1M`` is a calendar month. A size
with a time part is absolute and a whole number of quarter hours: ``PT24H``
is always 24 hours, and ``PT6H`` windows start at 00, 06, 12 and 18 UTC.

Every window bound is a bucket boundary (``buckets.py``): local midnight in
any zone in use today is one, and a bound in an old local-mean-time offset
(before the 1970s in a few zones) moves up to the next one. So each bucket
lies in exactly one window, and the planner sizes windows from its bucket
counts without another query.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import pendulum

from synap_backfill.common.buckets import BUCKET_SECONDS, bucket_start, snap_up
from synap_backfill.common.checks import window_duration

EPOCH_MONDAY = date(2000, 1, 3)  # day- and week-sized windows count from a Monday
LAST_LOCAL = datetime(9999, 12, 31)  # no window ends later (what Python can hold, less a day)
_EPOCH = datetime(1970, 1, 1)


@dataclass(frozen=True)
class Window:
    """A half-open slice of time ``[start, end)`` in UTC."""

    start: datetime
    end: datetime
    label: str

    def contains(self, ts: datetime) -> bool:
        return self.start <= ts < self.end


@dataclass(frozen=True)
class Grid:
    """The windows' calendar in the partition zone: which window a bucket lies in, and its bounds."""

    kind: str  # "months", "days" (local calendar) or "seconds" (absolute, from 1970 UTC)
    step: int  # months, days or seconds in a window
    tz: str
    _lower: dict[int, datetime] = field(default_factory=dict, compare=False, hash=False, repr=False)

    @classmethod
    def of(cls, window_size: str, tz: str = "UTC") -> "Grid":
        size = window_duration(window_size)
        months = size.years * 12 + size.months
        if months:
            return cls("months", months, tz)
        if "T" not in window_size:  # days and weeks: the local calendar's
            return cls("days", size.weeks * 7 + size.remaining_days, tz)
        return cls("seconds", int(size.total_seconds()), tz)  # a multiple of BUCKET_SECONDS

    def window_of(self, bucket: int) -> int:
        """The index of the window holding ``bucket``."""
        if self.kind == "seconds":
            return bucket * BUCKET_SECONDS // self.step
        start = bucket_start(bucket)
        k = self._index(start.astimezone(ZoneInfo(self.tz)).replace(tzinfo=None))
        # Local time runs back an hour in autumn: the bounds decide, not the wall clock.
        while start < self.lower(k):
            k -= 1
        while start >= self.lower(k + 1):
            k += 1
        return k

    def windows_of(self, buckets: list[int]) -> list[int]:
        """``window_of`` for each of ``buckets`` (sorted): one lookup per window, not per bucket."""
        out: list[int] = []
        k, lo, hi = 0, None, None
        for bucket in buckets:
            start = bucket_start(bucket)
            if lo is None or hi is None or not lo <= start < hi:
                k = self.window_of(bucket)
                lo, hi = self.lower(k), self.lower(k + 1)
            out.append(k)
        return out

    def lower(self, k: int) -> datetime:
        """Window ``k``'s first instant, in UTC, on a bucket boundary."""
        if k not in self._lower:
            self._lower[k] = self._lower_bound(k)
        return self._lower[k]

    def window(self, k: int) -> Window:
        return window_between(self.lower(k), self.lower(k + 1), self.tz)

    def _lower_bound(self, k: int) -> datetime:
        local = self._start(k)
        if self.kind == "seconds":
            return local.replace(tzinfo=timezone.utc)
        return snap_up(_utc(pendulum.datetime(local.year, local.month, local.day, local.hour,
                                              local.minute, local.second, tz=self.tz)))

    def _index(self, local: datetime) -> int:
        if self.kind == "months":
            return (local.year * 12 + local.month - 1) // self.step
        return (local.date() - EPOCH_MONDAY).days // self.step

    def _start(self, k: int) -> datetime:
        """Local wall-clock start of window ``k`` (UTC for kind "seconds")."""
        try:
            if self.kind == "months":
                month = k * self.step
                return min(datetime(month // 12, month % 12 + 1, 1), LAST_LOCAL)
            if self.kind == "days":
                return min(datetime.combine(EPOCH_MONDAY, time()) + timedelta(days=k * self.step),
                           LAST_LOCAL)
            return min(_EPOCH + timedelta(seconds=k * self.step), LAST_LOCAL)
        except (OverflowError, ValueError):  # past year 9999
            return LAST_LOCAL


def window_between(start: datetime, end: datetime, tz: str) -> Window:
    """A window with its label in ``tz``: whole days as dates, else minutes, else microseconds."""
    local_start, local_end = (pendulum.instance(t).in_timezone(tz) for t in (start, end))
    if all(t.hour == t.minute == t.second == t.microsecond == 0 for t in (local_start, local_end)):
        fmt = "YYYY-MM-DD"
    elif all(t.second == t.microsecond == 0 for t in (local_start, local_end)):
        fmt = "YYYY-MM-DD HH:mm"
    else:  # an explicit start or end between minutes
        fmt = "YYYY-MM-DD HH:mm:ss.SSSSSS"
    suffix = "" if tz == "UTC" else f" {tz}"
    return Window(_utc(start), _utc(end),
                  f"{local_start.format(fmt)} → {local_end.format(fmt)}{suffix}")


def _utc(value: datetime) -> datetime:
    """A plain ``datetime`` in UTC (pendulum's subclass does not survive XCom as is)."""
    u = value.astimezone(timezone.utc)
    return datetime(u.year, u.month, u.day, u.hour, u.minute, u.second, u.microsecond,
                    tzinfo=timezone.utc)


def window_key(start: str | None, end: str | None) -> str:
    """Identifies a planned window, from its ISO bounds (labels are for people and may repeat)."""
    return f"{start}|{end}"
