from datetime import datetime, timedelta, timezone

from include.backfill.config import timestamp
from include.backfill.windows import Grid, Window, size_by_rows

UTC = timezone.utc


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def hours(*local: tuple[int, ...], rows: int = 1) -> list[tuple[datetime, int]]:
    """Fine buckets of a day-sized grid (local wall-clock hours), ``rows`` each."""
    return [(datetime(*t), rows) for t in local]


def test_only_occupied_windows_exist_contiguous_half_open_and_labelled():
    windows, counts, _ = Grid.of("P1D").windows(hours((2024, 3, 1, 5), (2024, 3, 1, 9),
                                                       (2024, 3, 2, 0), (2024, 3, 4, 23)))
    assert [(w.start, w.end) for w in windows] == [
        (utc(2024, 3, 1), utc(2024, 3, 2)), (utc(2024, 3, 2), utc(2024, 3, 3)),
        (utc(2024, 3, 4), utc(2024, 3, 5))]  # March 3 holds nothing
    assert counts == [2, 1, 1]
    assert [w.label for w in windows] == [
        "2024-03-01 → 2024-03-02", "2024-03-02 → 2024-03-03", "2024-03-04 → 2024-03-05"]


def test_a_boundary_instant_belongs_to_exactly_one_window():
    windows, _, _ = Grid.of("P1D").windows(hours((2024, 3, 1, 0), (2024, 3, 2, 0), (2024, 3, 3, 0)))
    for instant in (utc(2024, 3, 2), utc(2024, 3, 2) - timedelta(microseconds=1), utc(2024, 3, 1)):
        assert sum(w.contains(instant) for w in windows) == 1
    assert not any(w.contains(utc(2024, 3, 4)) for w in windows)  # end is exclusive


def test_an_explicit_range_clips_the_first_and_last_window():
    windows, _, _ = Grid.of("P1D").windows(hours((2024, 3, 1, 12), (2024, 3, 2, 3)),
                                           start=utc(2024, 3, 1, 12), end=utc(2024, 3, 2, 6))
    assert (windows[0].start, windows[-1].end) == (utc(2024, 3, 1, 12), utc(2024, 3, 2, 6))
    assert windows[-1].label == "2024-03-02 00:00 → 2024-03-02 06:00"


def test_a_day_follows_the_local_calendar_across_dst_in_a_non_utc_zone():
    # Europe/Berlin: clocks go forward on 2024-03-31 and back on 2024-10-27.
    berlin = Grid.of("P1D", "Europe/Berlin")
    spring, _, _ = berlin.windows(hours((2024, 3, 30, 12), (2024, 3, 31, 12), (2024, 4, 1, 12)))
    assert [w.end - w.start for w in spring] == [timedelta(hours=24), timedelta(hours=23),
                                                  timedelta(hours=24)]
    assert spring[1].label == "2024-03-31 → 2024-04-01 Europe/Berlin"
    autumn, _, _ = berlin.windows(hours((2024, 10, 27, 12)))
    assert [w.end - w.start for w in autumn] == [timedelta(hours=25)]


def test_pt24h_is_always_24_hours_even_across_dst():
    grid = Grid.of("PT24H", "Europe/Berlin")
    assert (grid.kind, grid.step) == ("seconds", 86400)
    march_2024 = int(utc(2024, 3, 25).timestamp()) // grid.fine  # the clocks change on the 31st
    windows, _, _ = grid.windows([(march_2024 + n * 64, 1) for n in range(10)])
    assert len(windows) == 10 and all(w.end - w.start == timedelta(hours=24) for w in windows)
    assert windows[0].start == utc(2024, 3, 25)


def test_weeks_run_monday_to_monday_and_months_are_calendar_months():
    weeks, _, _ = Grid.of("P1W").windows(hours((2024, 3, 6, 12)))  # a Wednesday
    assert (weeks[0].start, weeks[0].end) == (utc(2024, 3, 4), utc(2024, 3, 11))
    months, _, _ = Grid.of("P1M").windows([(datetime(2024, 2, 10), 1)])
    assert (months[0].start, months[0].end) == (utc(2024, 2, 1), utc(2024, 3, 1))


def test_a_row_in_year_9999_costs_one_window_and_no_window_ends_past_what_python_holds():
    windows, counts, _ = Grid.of("P1M").windows([(datetime(2024, 3, 1), 5),
                                                 (datetime(9999, 12, 20), 1)])
    assert counts == [5, 1] and len(windows) == 2
    assert windows[-1].end == utc(9999, 12, 31)


def test_a_busy_window_is_cut_between_fine_buckets_by_their_counts():
    windows, _, split = Grid.of("P1D").windows(hours((2024, 3, 1, 1), (2024, 3, 1, 2),
                                                     (2024, 3, 1, 9), (2024, 3, 1, 20), rows=50))
    assert split(windows[0], 2) == [utc(2024, 3, 1, 9)]
    assert split(windows[0], 4) == [utc(2024, 3, 1, 2), utc(2024, 3, 1, 9), utc(2024, 3, 1, 20)]
    # Three pieces of at most 67 rows cannot be had from buckets of 50: four of 50.
    assert split(windows[0], 3) == [utc(2024, 3, 1, 2), utc(2024, 3, 1, 9), utc(2024, 3, 1, 20)]


def test_a_timestamp_without_a_zone_is_read_as_utc():
    assert timestamp("start", "2024-03-01T00:00:00") == utc(2024, 3, 1)
    assert timestamp("start", "2024-03-01T01:00:00+01:00") == utc(2024, 3, 1)
    assert timestamp("start", "2024-03-01T00:00:00Z") == utc(2024, 3, 1)


def test_a_window_survives_the_round_trip_through_xcom():
    window = day(1)
    assert Window.from_dict(window.to_dict()) == window


def day(n: int) -> Window:
    return Window(utc(2024, 3, n), utc(2024, 3, n + 1), f"2024-03-{n:02d} → 2024-03-{n + 1:02d}")


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
