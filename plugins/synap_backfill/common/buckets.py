"""The grain at which a Synap target's inventory knows what it holds: 15-minute UTC buckets.

The planner counts every row into one of these buckets in the pass it makes
anyway, with a fingerprint of the rows' keys, and a partition tallies the rows
it accounts for into the same buckets. A bucket is fixed in UTC, whatever a
run's ``window_size`` or ``partition_timezone``: every zone in use today is a
whole number of quarter hours off UTC, so a bucket lies inside one calendar
window of any grid, and inventories written by runs with different windows
compare bucket for bucket.

A bucket's fingerprint is the sum, modulo 2**64, of a hash of each row's
``(conversation_id, message_index, created_at)`` (``extract.source_sql.SourceSQL.row_hash``,
computed by PostgreSQL on both sides, so planner and partition agree to the
bit). A sum is order-free and additive: the rows of a bucket read in any
order, or in two attempts, give the same fingerprint.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

BUCKET_SECONDS = 900
UNTIMED = -(2 ** 31)  # the bucket of rows without a usable timestamp
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MODULUS = 2 ** 64


def bucket_of(instant: datetime) -> int:
    """The bucket of an aware instant (floor, also before 1970)."""
    return math.floor((instant - _EPOCH).total_seconds() / BUCKET_SECONDS)


def bucket_start(bucket: int) -> datetime:
    return _EPOCH + timedelta(seconds=bucket * BUCKET_SECONDS)


def bucket_end(bucket: int) -> datetime:
    return bucket_start(bucket + 1)


def bucket_label(bucket: int) -> str:
    """``2024-05-01 10:15 UTC``, or what the untimed bucket holds."""
    if bucket == UNTIMED:
        return "rows without a usable timestamp"
    return bucket_start(bucket).strftime("%Y-%m-%d %H:%M UTC")


def fingerprint(hash_sum: int) -> int:
    """A sum of row hashes as a signed 64-bit number (what a ``bigint`` column holds)."""
    value = int(hash_sum) % _MODULUS
    return value - _MODULUS if value >= 2 ** 63 else value


def snap_up(instant: datetime) -> datetime:
    """The first bucket boundary at or after ``instant`` (a window's bound in an old local-mean-time
    zone that is not a whole quarter hour off UTC)."""
    bucket = bucket_of(instant)
    return instant if bucket_start(bucket) == instant else bucket_start(bucket + 1)
