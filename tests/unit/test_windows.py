from datetime import datetime, timedelta, timezone

import pytest

from synap_backfill.common.buckets import bucket_of, bucket_start
from synap_backfill.common.checks import ParamError, timestamp
from synap_backfill.common.windows import Grid
from synap_backfill.planner.difference import BucketCount, Difference
from synap_backfill.planner.layout import lay_out

UTC = timezone.utc


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def windows(grid: Grid, *instants: datetime) -> list:
    """The windows holding these instants, in order, once each."""
    ks = sorted({grid.window_of(bucket_of(at)) for at in instants})
    return [grid.window(k) for k in ks]


def test_windows_are_contiguous_half_open_and_labelled():
    found = windows(Grid.of("P1D"), utc(2024, 3, 1, 5), utc(2024, 3, 1, 9), utc(2024, 3, 2),
                    utc(2024, 3, 4, 23, 59))
    assert [(w.start, w.end) for w in found] == [
        (utc(2024, 3, 1), utc(2024, 3, 2)), (utc(2024, 3, 2), utc(2024, 3, 3)),
        (utc(2024, 3, 4), utc(2024, 3, 5))]  # March 3 holds nothing
    assert [w.label for w in found] == [
        "2024-03-01 → 2024-03-02", "2024-03-02 → 2024-03-03", "2024-03-04 → 2024-03-05"]


def test_a_boundary_instant_belongs_to_exactly_one_window():
    grid = Grid.of("P1D")
    found = windows(grid, utc(2024, 3, 1), utc(2024, 3, 2), utc(2024, 3, 3))
    for instant in (utc(2024, 3, 2), utc(2024, 3, 2) - timedelta(microseconds=1), utc(2024, 3, 1)):
        assert sum(w.contains(instant) for w in found) == 1
        assert grid.window(grid.window_of(bucket_of(instant))).contains(instant)


def test_a_day_follows_the_local_calendar_across_dst_in_a_non_utc_zone():
    # Europe/Berlin: clocks go forward on 2024-03-31 and back on 2024-10-27.
    berlin = Grid.of("P1D", "Europe/Berlin")
    spring = windows(berlin, utc(2024, 3, 30, 12), utc(2024, 3, 31, 12), utc(2024, 4, 1, 12))
    assert [w.end - w.start for w in spring] == [timedelta(hours=24), timedelta(hours=23),
                                                  timedelta(hours=24)]
    assert spring[1].label == "2024-03-31 → 2024-04-01 Europe/Berlin"
    # Local 02:00-03:00 happens twice on 2024-10-27: both belong to that day.
    autumn = windows(berlin, utc(2024, 10, 27, 0, 30), utc(2024, 10, 27, 1, 30))
    assert [w.end - w.start for w in autumn] == [timedelta(hours=25)]


def test_a_zone_a_quarter_hour_off_utc_keeps_its_local_midnight():
    kathmandu = Grid.of("P1D", "Asia/Kathmandu")  # UTC+05:45
    (day,) = windows(kathmandu, utc(2024, 3, 1, 12))
    assert (day.start, day.end) == (utc(2024, 2, 29, 18, 15), utc(2024, 3, 1, 18, 15))


def test_pt24h_is_always_24_hours_even_across_dst():
    grid = Grid.of("PT24H", "Europe/Berlin")
    assert (grid.kind, grid.step) == ("seconds", 86400)
    found = windows(grid, *(utc(2024, 3, 25) + timedelta(days=n, hours=1) for n in range(10)))
    assert len(found) == 10 and all(w.end - w.start == timedelta(hours=24) for w in found)
    assert found[0].start == utc(2024, 3, 25)


def test_weeks_run_monday_to_monday_and_months_are_calendar_months():
    (week,) = windows(Grid.of("P1W"), utc(2024, 3, 6, 12))  # a Wednesday
    assert (week.start, week.end) == (utc(2024, 3, 4), utc(2024, 3, 11))
    (month,) = windows(Grid.of("P1M"), utc(2024, 2, 10))
    assert (month.start, month.end) == (utc(2024, 2, 1), utc(2024, 3, 1))


def test_a_row_in_year_9999_costs_one_window_and_no_window_ends_past_what_python_holds():
    found = windows(Grid.of("P1M"), utc(2024, 3, 1), utc(9999, 12, 20))
    assert len(found) == 2 and found[-1].end == utc(9999, 12, 31)


@pytest.mark.parametrize("size", ["PT10M", "PT20M", "PT1H10M"])
def test_a_window_with_a_time_part_is_whole_quarter_hours(size):
    with pytest.raises(ParamError, match="15 minutes"):
        Grid.of(size)
    assert Grid.of("PT15M").step == 900 and Grid.of("P1DT12H").step == 129600


def test_a_timestamp_without_a_zone_is_read_as_utc():
    assert timestamp("start", "2024-03-01T00:00:00") == utc(2024, 3, 1)
    assert timestamp("start", "2024-03-01T01:00:00+01:00") == utc(2024, 3, 1)
    assert timestamp("start", "2024-03-01T00:00:00Z") == utc(2024, 3, 1)


def planned(*cells: tuple[datetime, int]) -> Difference:
    """Every one of these buckets planned, none held."""
    return Difference(planned=[BucketCount(bucket_of(at), n, 0) for at, n in cells])


def layout(diff: Difference, size: str = "P1D", **limits):
    return lay_out(diff, Grid.of(size), start=limits.pop("start", None), end=limits.pop("end", None),
                   **{"max_rows": 100, "min_rows": 1, "max_partitions": 10, **limits})


def test_empty_windows_make_no_partition_and_quiet_ones_are_kept():
    plan = layout(planned((utc(2024, 3, 1, 5), 5), (utc(2024, 3, 3, 5), 7)))
    assert [(p.label, p.rows) for p in plan.partitions] == [
        ("2024-03-01 → 2024-03-02", 5), ("2024-03-03 → 2024-03-04", 7)]
    assert all(p.ranges == ((p.start, p.end),) for p in plan.partitions)


def test_a_busy_window_is_cut_between_buckets_by_their_counts():
    hours = [utc(2024, 3, 1, h) for h in (1, 2, 9, 20)]
    plan = layout(planned(*((at, 50) for at in hours)), max_rows=100)
    assert [(p.start, p.end, p.rows) for p in plan.partitions] == [
        (utc(2024, 3, 1), utc(2024, 3, 1, 9), 100), (utc(2024, 3, 1, 9), utc(2024, 3, 2), 100)]
    assert plan.partitions[1].label == "2024-03-01 09:00 → 2024-03-02 00:00"
    # Three pieces of at most 67 rows cannot be had from buckets of 50: four of 50.
    four = layout(planned(*((at, 50) for at in hours)), max_rows=67)
    assert [p.rows for p in four.partitions] == [50, 50, 50, 50]


def test_an_explicit_range_clips_the_first_and_last_partition():
    plan = layout(planned((utc(2024, 3, 1, 12, 7), 1), (utc(2024, 3, 2, 3), 1)),
                  start=utc(2024, 3, 1, 12, 7), end=utc(2024, 3, 2, 6))
    assert (plan.partitions[0].start, plan.partitions[-1].end) == (utc(2024, 3, 1, 12, 7),
                                                                    utc(2024, 3, 2, 6))
    assert plan.partitions[-1].label == "2024-03-02 00:00 → 2024-03-02 06:00"


def test_too_many_partitions_are_merged_with_their_neighbours_until_under_the_cap():
    plan = layout(planned(*((utc(2024, 3, n, 1), 1) for n in range(1, 11))), max_partitions=4)
    assert len(plan.partitions) == 3  # 10 → 5 → 3
    spans = [(p.start, p.end) for p in plan.partitions]
    assert spans[0][0] == utc(2024, 3, 1) and spans[-1][1] == utc(2024, 3, 11)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert plan.rows == 10 and plan.partitions[0].label == "2024-03-01 → 2024-03-05"


def test_quiet_neighbours_are_joined_up_to_the_minimum_but_never_past_the_maximum():
    rows = {1: 40, 2: 30, 4: 50, 5: 90, 6: 10, 7: 10}
    plan = layout(planned(*((utc(2024, 3, d, 1), n) for d, n in rows.items())), min_rows=60)
    # 40+30 reaches 60; 50 cannot take 90 (140 > 100); 90 is enough alone; 10+10.
    assert [p.rows for p in plan.partitions] == [70, 50, 90, 20]
    assert [p.label for p in plan.partitions] == [
        "2024-03-01 → 2024-03-03", "2024-03-04 → 2024-03-05", "2024-03-05 → 2024-03-06",
        "2024-03-06 → 2024-03-08"]


def test_held_buckets_inside_a_partition_are_cut_out_of_its_ranges_and_counted_unchanged():
    b = bucket_of
    diff = Difference(planned=[BucketCount(b(utc(2024, 3, 1, 1)), 3, 0),
                               BucketCount(b(utc(2024, 3, 1, 9)), 2, 0)],
                      unchanged=[BucketCount(b(utc(2024, 3, 1, 5)), 40, 0),
                                 BucketCount(b(utc(2024, 3, 4, 5)), 7, 0)])
    plan = layout(diff)
    (partition,) = plan.partitions
    assert (partition.rows, partition.unchanged) == (5, 40)
    assert partition.ranges == ((utc(2024, 3, 1), utc(2024, 3, 1, 5)),
                                (utc(2024, 3, 1, 5, 15), utc(2024, 3, 2)))
    assert plan.unchanged_outside == 7  # March 4 is held whole: not a partition at all
    assert partition.reads_whole(b(utc(2024, 3, 1, 1))) and not partition.reads_whole(
        b(utc(2024, 3, 1, 5)))
    assert bucket_start(b(utc(2024, 3, 1, 5, 14))) == utc(2024, 3, 1, 5)
