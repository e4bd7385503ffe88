from datetime import datetime, timedelta, timezone

import pytest

from include.backfill.config import timestamp
from include.backfill.windows import TooManyPartitions, Window, covering_range, plan_windows

UTC = timezone.utc


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_windows_are_contiguous_half_open_and_cover_the_range():
    windows = plan_windows(utc(2024, 3, 1), utc(2024, 3, 4), "P1D")
    assert [(w.start, w.end) for w in windows] == [
        (utc(2024, 3, 1), utc(2024, 3, 2)), (utc(2024, 3, 2), utc(2024, 3, 3)),
        (utc(2024, 3, 3), utc(2024, 3, 4))]
    assert all(a.end == b.start for a, b in zip(windows, windows[1:]))
    assert [w.label for w in windows] == [
        "2024-03-01 → 2024-03-02", "2024-03-02 → 2024-03-03", "2024-03-03 → 2024-03-04"]


def test_a_boundary_instant_belongs_to_exactly_one_window():
    windows = plan_windows(utc(2024, 3, 1), utc(2024, 3, 4), "P1D")
    for instant in (utc(2024, 3, 2), utc(2024, 3, 2) - timedelta(microseconds=1), utc(2024, 3, 1)):
        assert sum(w.contains(instant) for w in windows) == 1
    assert not any(w.contains(utc(2024, 3, 4)) for w in windows)  # end is exclusive


def test_the_last_window_is_cut_at_the_end():
    windows = plan_windows(utc(2024, 3, 1), utc(2024, 3, 2, 6), "P1D")
    assert windows[-1].start == utc(2024, 3, 2) and windows[-1].end == utc(2024, 3, 2, 6)
    assert windows[-1].label == "2024-03-02 00:00 → 2024-03-02 06:00"


def test_a_day_follows_the_local_calendar_across_dst_in_a_non_utc_zone():
    # Europe/Berlin: clocks go forward on 2024-03-31 and back on 2024-10-27.
    spring = plan_windows(utc(2024, 3, 29, 23), utc(2024, 4, 1, 22), "P1D", "Europe/Berlin")
    assert [w.end - w.start for w in spring] == [timedelta(hours=24), timedelta(hours=23),
                                                  timedelta(hours=24)]
    assert spring[1].label == "2024-03-31 → 2024-04-01 Europe/Berlin"
    autumn = plan_windows(utc(2024, 10, 26, 22), utc(2024, 10, 27, 23), "P1D", "Europe/Berlin")
    assert [w.end - w.start for w in autumn] == [timedelta(hours=25)]


def test_pt24h_is_always_24_hours_even_across_dst():
    windows = plan_windows(utc(2024, 3, 30, 23), utc(2024, 4, 1, 23), "PT24H", "Europe/Berlin")
    assert all(w.end - w.start == timedelta(hours=24) for w in windows)


def test_a_timestamp_without_a_zone_is_read_as_utc():
    assert timestamp("start", "2024-03-01T00:00:00") == utc(2024, 3, 1)
    assert timestamp("start", "2024-03-01T01:00:00+01:00") == utc(2024, 3, 1)
    assert timestamp("start", "2024-03-01T00:00:00Z") == utc(2024, 3, 1)


def test_the_covering_range_starts_at_local_midnight_and_ends_after_the_last_row():
    assert covering_range(utc(2024, 3, 1, 5), utc(2024, 3, 3, 7), "P1D") == (
        utc(2024, 3, 1), utc(2024, 3, 4))
    # A last row exactly on a boundary needs the next window: windows are half-open.
    assert covering_range(utc(2024, 3, 1, 5), utc(2024, 3, 3), "P1D")[1] == utc(2024, 3, 4)
    assert covering_range(utc(2024, 3, 1, 5), utc(2024, 3, 1, 5), "PT6H") == (
        utc(2024, 3, 1), utc(2024, 3, 1, 6))
    assert covering_range(utc(2024, 3, 1, 5), utc(2024, 3, 1, 5), "P1D", "America/New_York") == (
        utc(2024, 3, 1, 5), utc(2024, 3, 2, 5))


def test_an_empty_range_plans_no_windows():
    assert plan_windows(utc(2024, 3, 1), utc(2024, 3, 1), "P1D") == []


def test_too_many_windows_is_refused_with_advice():
    with pytest.raises(TooManyPartitions, match="larger window_size"):
        plan_windows(utc(2020, 1, 1), utc(2024, 1, 1), "PT1H", max_partitions=1000)


def test_a_window_survives_the_round_trip_through_xcom():
    window = plan_windows(utc(2024, 3, 1), utc(2024, 3, 2), "P1D")[0]
    assert Window.from_dict(window.to_dict()) == window
