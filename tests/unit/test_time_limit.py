"""A partition's time limit grows with its planned batches at the target's pace, never below the waits."""

from __future__ import annotations

from datetime import timedelta

from synap_backfill.pipeline.time_limit import partition_time_limit

SYNAP = {"requests_per_minute": 600.0, "max_wait": 600.0, "not_ready_max_wait": 1800.0}
WAITS = 600 + 1800 + 600 + 600  # max_wait, not_ready_max_wait, an earlier attempt's lock, reading


def test_an_empty_partition_gets_the_waits_a_healthy_attempt_may_spend():
    assert partition_time_limit(0, 100, SYNAP) == timedelta(seconds=WAITS + 1)  # one batch, 0.3 s up


def test_the_limit_is_three_times_the_batches_at_the_connections_pace_plus_the_waits():
    # 100,000 rows in batches of 100: 1,000 batches, 100 s at 600 a minute, 1,000 s at 60.
    assert partition_time_limit(100_000, 100, SYNAP) == timedelta(seconds=WAITS + 300)
    slow = {**SYNAP, "requests_per_minute": 60.0}
    assert partition_time_limit(100_000, 100, slow) == timedelta(seconds=WAITS + 3000)


def test_an_unpaced_connection_is_timed_at_600_batches_a_minute():
    assert partition_time_limit(100_000, 100, {**SYNAP, "requests_per_minute": 0.0}) == \
        partition_time_limit(100_000, 100, SYNAP)


def test_shorter_waits_on_the_connection_shorten_the_limit():
    quick = {**SYNAP, "max_wait": 0.0, "not_ready_max_wait": 0.0}
    assert partition_time_limit(100_000, 100, quick) == timedelta(seconds=1200 + 300)
