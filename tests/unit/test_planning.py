"""Planning by difference: each bucket classified against what the target holds."""

from datetime import datetime, timezone

from synap_backfill.common.buckets import UNTIMED, bucket_of
from synap_backfill.planner.difference import (
    BucketCount,
    HeldBucket,
    Holder,
    PlannedPartition,
    conflict_message,
    difference,
    lost_ranges,
)

UTC = timezone.utc
EARLIER = Holder("synap_backfill", "manual__1", "digest-a",
                 {"mode": "long-range", "columns": {"user_id": "user_id"}})


def at(day: int, hour: int = 0, minute: int = 0) -> int:
    return bucket_of(datetime(2024, 5, day, hour, minute, tzinfo=UTC))


def count(bucket: int, rows: int, fp: int = 7) -> BucketCount:
    return BucketCount(bucket, rows, fp)


def held(bucket: int, rows: int, fp: int = 7, holder: Holder = EARLIER) -> HeldBucket:
    return HeldBucket(bucket, rows, fp, holder)


def test_a_bucket_held_with_the_same_rows_and_settings_is_unchanged_and_not_planned():
    diff = difference([count(at(1), 5), count(at(2), 3)], {at(1): held(at(1), 5)}, digest="digest-a")
    assert [c.bucket for c in diff.unchanged] == [at(1)]
    assert [c.bucket for c in diff.planned] == [at(2)]
    assert (diff.unchanged_rows, diff.new_rows, diff.changed_rows) == (5, 3, 0)


def test_late_rows_change_the_fingerprint_and_deleted_rows_are_counted_per_bucket():
    diff = difference([count(at(1), 6, fp=8), count(at(2), 2, fp=9)],
                      {at(1): held(at(1), 5), at(2): held(at(2), 4), at(3): held(at(3), 7)},
                      digest="digest-a")
    assert [c.bucket for c in diff.planned] == [at(1), at(2)]
    assert diff.changed_rows == 8
    # Two rows left bucket 2, and bucket 3 is gone altogether.
    assert [(d.bucket, d.held, d.now) for d in diff.deletions] == [(at(2), 4, 2), (at(3), 7, 0)]
    assert diff.deleted_rows == 9


def test_the_same_count_with_other_keys_is_a_change():
    diff = difference([count(at(1), 5, fp=1)], {at(1): held(at(1), 5, fp=2)}, digest="digest-a")
    assert [c.bucket for c in diff.planned] == [at(1)] and not diff.unchanged


def test_a_bucket_held_under_other_document_settings_is_a_conflict_naming_the_run():
    diff = difference([count(at(1), 5)], {at(1): held(at(1), 5)}, digest="digest-b")
    assert [c.bucket for c in diff.conflicts] == [at(1)] and not diff.planned
    message = conflict_message(diff.conflicts, {"mode": "long-range",
                                                "columns": {"user_id": "customer_id"}},
                               source="db.public.conversations", target="inst_1")
    assert "run 'manual__1' of DAG 'synap_backfill'" in message
    assert "user_id_column was 'user_id', now 'customer_id'" in message
    assert "resend_unchanged" in message and "synap_undo" in message


def test_resend_unchanged_plans_every_bucket_whatever_is_held():
    diff = difference([count(at(1), 5), count(at(2), 3)],
                      {at(1): held(at(1), 5), at(2): held(at(2), 3, holder=Holder("d", "r", "x"))},
                      digest="digest-a", resend=True)
    assert [c.bucket for c in diff.planned] == [at(1), at(2)]
    assert not diff.unchanged and not diff.conflicts


def test_resend_unchanged_never_overrides_other_redaction_settings():
    redacting = {"mode": "long-range", "columns": {"user_id": "user_id"}, "redact_pii": True}
    diff = difference([count(at(1), 5)], {at(1): held(at(1), 5)}, digest="digest-b", resend=True,
                      settings=redacting)
    assert [c.bucket for c in diff.conflicts] == [at(1)] and not diff.planned


def test_only_a_range_of_more_than_a_day_with_nothing_left_in_it_is_a_lost_range():
    buckets = [at(d, h) for d in range(1, 8) for h in (9, 15)]  # two a day, a week
    inventory = {b: held(b, 3) for b in buckets}
    kept = [count(b, 3) for b in buckets if not at(2, 9) <= b <= at(4, 15)]
    diff = difference(kept, inventory, digest="digest-a")
    assert lost_ranges(diff, kept) == [(at(2, 9), at(4, 15))]
    # Users deleting turns here and there: no range, however many.
    scattered = [count(b, 3) for i, b in enumerate(buckets) if i % 2]
    diff = difference(scattered, inventory, digest="digest-a")
    assert lost_ranges(diff, scattered) == []
    # Rows left in the middle: two short runs, neither over a day.
    kept = [count(b, 3) for b in buckets if not at(2, 9) <= b <= at(4, 15) or b in (at(3, 9),
                                                                                     at(3, 15))]
    diff = difference(kept, inventory, digest="digest-a")
    assert lost_ranges(diff, kept) == []


def test_buckets_cut_by_an_explicit_range_are_always_planned_and_marked_partial():
    start = datetime(2024, 5, 1, 10, 7, tzinfo=UTC)
    diff = difference([count(at(1, 10), 2), count(at(1, 10, 15), 5)],
                      {at(1, 10): held(at(1, 10), 2), at(1, 10, 15): held(at(1, 10, 15), 5)},
                      digest="digest-a", start=start)
    assert diff.partial == {at(1, 10)}
    assert [c.bucket for c in diff.planned] == [at(1, 10)]
    assert [c.bucket for c in diff.unchanged] == [at(1, 10, 15)]


def test_a_scheduled_run_looks_back_only_for_changed_held_buckets_and_covered_new_rows():
    interval = datetime(2024, 5, 10, tzinfo=UTC)
    covered = [(datetime(2024, 5, 3, tzinfo=UTC), datetime(2024, 5, 5, tzinfo=UTC))]
    diff = difference(
        [count(at(1), 4), count(at(2), 5, fp=1), count(at(3), 6), count(at(4), 1), count(at(10), 2)],
        {at(2): held(at(2), 4), at(3): held(at(3), 6)},
        digest="digest-a", lookback_before=interval, covered=covered)
    # May 1: never held, never covered: history. May 2: held and changed. May 3: unchanged.
    # May 4: new rows inside a covered range (late). May 10: the interval itself.
    assert [c.bucket for c in diff.planned] == [at(2), at(4), at(10)]
    assert diff.outside == [at(1)]
    assert [c.bucket for c in diff.unchanged] == [at(3)]


def test_rows_without_a_timestamp_are_one_bucket_held_like_any_other():
    diff = difference([count(UNTIMED, 3)], {UNTIMED: held(UNTIMED, 3)}, digest="digest-a")
    assert [c.bucket for c in diff.unchanged] == [UNTIMED]


def test_a_planned_partition_survives_the_round_trip_through_xcom():
    day = datetime(2024, 5, 1, tzinfo=UTC)
    one = PlannedPartition("2024-05-01 → 2024-05-02", day, day.replace(day=2),
                           ((day, day.replace(day=2)),), rows=12)
    assert "ranges" not in one.to_dict()
    two = PlannedPartition("x", day, day.replace(day=3), ((day, day.replace(hour=5)),
                                                          (day.replace(day=2), day.replace(day=3))),
                           rows=3, unchanged=40, sample_of={"rows": 9})
    for partition in (one, two):
        assert PlannedPartition.from_dict(partition.to_dict()) == partition


def test_an_edit_that_keeps_every_key_changes_the_content_fingerprint_and_the_bucket_is_planned():
    diff = difference([BucketCount(at(1), 5, 7, content=11)],
                      {at(1): HeldBucket(at(1), 5, 7, EARLIER, content=10)}, digest="digest-a")
    assert [c.bucket for c in diff.planned] == [at(1)] and not diff.unchanged
    assert (diff.edited, diff.changed_rows, diff.deletions) == ([at(1)], 5, [])


def test_a_bucket_held_before_content_fingerprints_is_compared_by_keys_and_adopts_the_content():
    now = BucketCount(at(1), 5, 7, content=11)
    diff = difference([now], {at(1): HeldBucket(at(1), 5, 7, EARLIER, content=None)},
                      digest="digest-a")
    assert diff.unchanged == [now] and diff.adopt == [now] and not diff.planned
