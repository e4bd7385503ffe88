"""Checking what a run read against what the source holds, bucket by bucket, after the partitions.

The plan counted each bucket before the run (rows and the fingerprint of their
keys), each partition held what it read of a bucket in the inventory, and the
summary counts the planned buckets once more. For every bucket of a partition
that finished:

* **read = source now**: held as read. The usual case.
* **the source changed since planning** (rows arrived or left while the run
  read): reported, and let go from the inventory, so the next run reads it
  again. Nothing was lost: those rows were not there to read, or were read
  and are gone.
* **the source did not change, but the read differs from it**: a read that
  skipped (or doubled) rows. The run fails, naming the bucket; the bucket is
  let go too.

A bucket only partly read (cut by an explicit start or end) is never held, so
it is not checked here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from synap_backfill.common.buckets import UNTIMED, fingerprint
from synap_backfill.common.config import BackfillConfig
from synap_backfill.extract.reader import bucket_counts
from synap_backfill.holdings.inventory import Inventory, RunRecord
from synap_backfill.planner.difference import BucketCount, PlannedPartition, describe_buckets


@dataclass
class Reconciliation:
    checked: int = 0
    changed: list[int] = field(default_factory=list)  # the source changed while the run read
    skipped: list[tuple[int, int, int]] = field(default_factory=list)  # (bucket, source, read)

    def notes(self) -> list[str]:
        if not self.changed:
            return []
        return [f"{len(self.changed)} buckets changed in the source while the run read them (rows"
                f" arrived or left): {describe_buckets(self.changed)}; they are not held, so the"
                " next run reads them again"]

    def problems(self) -> list[str]:
        if not self.skipped:
            return []
        first = ", ".join(f"{describe_buckets([b])} (the source holds {n} rows, as planned; the"
                          f" read accounted for {r})" for b, n, r in self.skipped[:3])
        more = f" and {len(self.skipped) - 3} more" if len(self.skipped) > 3 else ""
        return [f"the read of {len(self.skipped)} unchanged buckets differs from the source:"
                f" {first}{more}; they are not held, so the next run reads them again"]


def reconcile(conn: Any, config: BackfillConfig, inventory: Inventory, record: RunRecord,
              finished: Iterable[PlannedPartition], unheld: Iterable[int] = ()) -> Reconciliation:
    """Recount the buckets the ``finished`` partitions planned, compare, let go what differs.

    ``unheld``: buckets the partitions read but did not hold on purpose (source changes
    reported, not applied: the next run reads them again), not checked here.
    """
    unheld = set(unheld)
    result = Reconciliation()
    finished = list(finished)
    if record.holding is None or not finished:
        return result
    planned_by_key = inventory.planned(record.id)
    planned: dict[int, tuple[BucketCount, PlannedPartition]] = {}
    for partition in finished:
        for count in planned_by_key.get(partition.key, []):
            if partition.reads_whole(count.bucket) and count.bucket not in unheld:
                planned[count.bucket] = (count, partition)
    if not planned:
        return result
    ranges = _merged([r for p in finished if p.timed for r in p.ranges])
    now = {c.bucket: c for c in bucket_counts(conn, config, ranges=ranges,
                                                 untimed=UNTIMED in planned)}
    read = inventory.held_by(record.holding, record.id)
    for bucket, (plan, _) in sorted(planned.items()):
        result.checked += 1
        source = now.get(bucket, BucketCount(bucket, 0, 0))
        got = read.get(bucket, BucketCount(bucket, 0, 0))
        if _same(got, source):
            continue
        if _same(plan, source):
            result.skipped.append((bucket, source.rows, got.rows))
        else:
            result.changed.append(bucket)
    inventory.release(record.holding, result.changed + [b for b, _, _ in result.skipped],
                      run=record.id)
    return result


def _same(a: BucketCount, b: BucketCount) -> bool:
    """Same rows and keys, and the same content where both sides know it."""
    return (a.rows == b.rows and fingerprint(a.fingerprint) == fingerprint(b.fingerprint)
            and (a.content is None or b.content is None
                 or fingerprint(a.content) == fingerprint(b.content)))


def _merged(ranges: list[Any]) -> list[Any]:
    """Ranges sorted, with touching or overlapping ones joined (fewer ORs in the recount)."""
    out: list[Any] = []
    for start, end in sorted(ranges):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(end, out[-1][1]))
        else:
            out.append((start, end))
    return out
