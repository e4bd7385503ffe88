from datetime import datetime, timedelta, timezone

import pytest

from include.backfill.config import timestamp
from include.backfill.windows import (TooManyPartitions, Window, covering_range, plan_windows,
                                      size_by_rows)

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


def day(n: int) -> Window:
    return plan_windows(utc(2024, 3, n), utc(2024, 3, n + 1), "P1D")[0]


def no_split(window, parts):
    raise AssertionError("nothing should be split")


def test_empty_windows_are_skipped_and_quiet_ones_kept():
    sized = size_by_rows([day(1), day(2), day(3)], [5, 0, 7], no_split, max_rows=100, max_partitions=10)
    assert [(s.window.label, s.rows) for s in sized] == [
        ("2024-03-01 → 2024-03-02", 5), ("2024-03-03 → 2024-03-04", 7)]


def test_a_busy_window_is_split_at_the_row_quantiles_it_is_given():
    cuts = [utc(2024, 3, 1, 8), utc(2024, 3, 1, 16, 30, 5, 123)]
    sized = size_by_rows([day(1)], [300], lambda w, parts: cuts[:parts - 1], max_rows=100,
                         max_partitions=10)
    assert [(s.window.start, s.window.end) for s in sized] == [
        (utc(2024, 3, 1), cuts[0]), (cuts[0], cuts[1]), (cuts[1], utc(2024, 3, 2))]
    assert [s.rows for s in sized] == [100, 100, 100]
    assert sized[2].window.label == "2024-03-01 16:30:05.000123 → 2024-03-02 00:00:00.000000"


def test_split_points_outside_the_window_or_repeated_are_ignored():
    sized = size_by_rows([day(1)], [300], lambda w, parts: [utc(2024, 3, 1), utc(2024, 3, 1, 12),
                                                            utc(2024, 3, 1, 12), utc(2024, 3, 2)],
                         max_rows=100, max_partitions=10)
    assert [(s.window.start, s.window.end) for s in sized] == [
        (utc(2024, 3, 1), utc(2024, 3, 1, 12)), (utc(2024, 3, 1, 12), utc(2024, 3, 2))]


def test_too_many_partitions_are_merged_with_their_neighbours_until_under_the_cap():
    days = [day(n) for n in range(1, 11)]
    sized = size_by_rows(days, [1] * 10, no_split, max_rows=100, max_partitions=4)
    assert len(sized) == 3  # 10 → 5 → 3
    assert sized[0].window.start == utc(2024, 3, 1) and sized[-1].window.end == utc(2024, 3, 11)
    assert all(a.window.end == b.window.start for a, b in zip(sized, sized[1:]))
    assert sum(s.rows for s in sized) == 10
    assert sized[0].window.label == "2024-03-01 → 2024-03-05"


def test_quiet_neighbours_are_joined_up_to_the_minimum_but_never_past_the_maximum():
    days = [day(n) for n in range(1, 8)]
    sized = size_by_rows(days, [40, 30, 0, 50, 90, 10, 10], no_split, max_rows=100,
                         max_partitions=10, min_rows=60)
    # 40+30 reaches 60; 50 cannot take 90 (140 > 100); 90 is enough alone; 10+10.
    assert [s.rows for s in sized] == [70, 50, 90, 20]
    assert [s.window.label for s in sized] == [
        "2024-03-01 → 2024-03-03", "2024-03-04 → 2024-03-05", "2024-03-05 → 2024-03-06",
        "2024-03-06 → 2024-03-08"]


def test_a_minimum_of_one_keeps_a_partition_per_calendar_window():
    sized = size_by_rows([day(1), day(2)], [5, 7], no_split, max_rows=100, max_partitions=10,
                         min_rows=1)
    assert [s.rows for s in sized] == [5, 7]
