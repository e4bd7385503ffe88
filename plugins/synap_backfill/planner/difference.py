"""Planning by difference: what a run reads, given what its Synap target already holds.

The planner counts every row of the run's range into the inventory's
15-minute buckets, with a fingerprint of their keys (``buckets.py``), in the
one pass it makes anyway. Each bucket is then:

* **unchanged**: the target holds it with the same row count and fingerprint,
  under the same document settings. It is not read and not sent; its rows are
  counted as ``unchanged``.
* **planned**: new (never held), or changed since it was held (rows arrived
  late, or left). A changed bucket is read whole: documents already accepted
  come back as duplicates, and only its new rows are ingested.
* **held under other settings** (a conflict): the target holds it, but from
  documents built another way (another column mapped as the user, another
  mode). Sending them again cannot change what Synap holds for those
  document ids, so the plan stops and names the run that wrote them, unless
  ``resend_unchanged`` says to send anyway.
* **outside**: a scheduled run looks back before its data interval only for
  buckets it has held and that changed, and for new rows in ranges earlier
  runs covered; other history is not its business.

A bucket cut by an explicit ``start`` or ``end`` holds only part of its rows:
it is always planned, and never written to the inventory, so partial counts
never stand for a whole bucket.

Planned buckets are then laid on the calendar of ``window_size`` (``layout``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Iterable, Mapping

from synap_backfill.common.buckets import UNTIMED, bucket_end, bucket_label, bucket_start
from synap_backfill.common.config import PRIVATE_SETTINGS
from synap_backfill.common.windows import window_key

UNTIMED_LABEL = "rows without a usable timestamp"
Range = tuple[datetime, datetime]


@dataclass(frozen=True)
class BucketCount:
    """A bucket's rows, the fingerprint of their keys and that of their content
    (``common.buckets.fingerprint``: signed 64-bit numbers), as counted or as read.

    ``content``: None where it is not known: a bucket held by a run from before content
    fingerprints (its keys are compared, and its content is taken as the baseline).
    """

    bucket: int
    rows: int
    fingerprint: int
    content: int | None = None


@dataclass(frozen=True)
class Holder:
    """The run that last accounted for a bucket on a target, and the settings it built documents with."""

    dag_id: str
    run_id: str
    digest: str
    settings: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def describe(self) -> str:
        return f"run {self.run_id!r} of DAG {self.dag_id!r}"


@dataclass(frozen=True)
class HeldBucket:
    bucket: int
    rows: int
    fingerprint: int
    holder: Holder
    content: int | None = None  # None: held before content fingerprints


@dataclass(frozen=True)
class PlannedPartition:
    """One mapped partition: its span, the ranges of it that it reads, and what the plan counted.

    ``ranges``: half-open UTC ranges inside ``[start, end)``, in order; empty for the
    untimed partition. ``rows``: rows the plan expects it to read. ``unchanged``: rows
    inside its span that the target holds unchanged and it does not read.
    """

    label: str
    start: datetime | None
    end: datetime | None
    ranges: tuple[Range, ...] = ()
    rows: int = 0
    unchanged: int = 0
    sample_of: Mapping[str, Any] | None = None
    # It reads buckets the target holds (changed since): their turns are looked up in the
    # ledger's held_turns before sending.
    reads_held: bool = False
    # Turns the target holds in its span that the source edited or deleted (changes.py).
    edited: int = 0
    deleted: int = 0

    @property
    def key(self) -> str:
        return window_key(_iso(self.start), _iso(self.end))

    @property
    def timed(self) -> bool:
        return self.start is not None

    def to_dict(self) -> dict[str, Any]:
        """The XCom shape: window bounds and counts, never rows."""
        out: dict[str, Any] = {"label": self.label, "start": _iso(self.start),
                               "end": _iso(self.end), "rows": self.rows,
                               "unchanged": self.unchanged}
        if self.ranges != ((self.start, self.end),) and self.timed:
            out["ranges"] = [[s.isoformat(), e.isoformat()] for s, e in self.ranges]
        if self.sample_of:
            out["sample_of"] = dict(self.sample_of)
        if self.reads_held:
            out["reads_held"] = True
        for name in ("edited", "deleted"):
            if getattr(self, name):
                out[name] = getattr(self, name)
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "PlannedPartition":
        start = datetime.fromisoformat(raw["start"]) if raw.get("start") else None
        end = datetime.fromisoformat(raw["end"]) if raw.get("end") else None
        if raw.get("ranges"):
            ranges = tuple((datetime.fromisoformat(s), datetime.fromisoformat(e))
                           for s, e in raw["ranges"])
        else:
            ranges = ((start, end),) if start is not None and end is not None else ()
        return cls(raw["label"], start, end, ranges, int(raw.get("rows") or 0),
                   int(raw.get("unchanged") or 0), raw.get("sample_of"), bool(raw.get("reads_held")),
                   int(raw.get("edited") or 0), int(raw.get("deleted") or 0))

    def with_sample(self, whole: Mapping[str, Any]) -> "PlannedPartition":
        return replace(self, sample_of=dict(whole))

    def reads_whole(self, bucket: int) -> bool:
        """Whether this partition reads every row of ``bucket`` (so may hold it in the inventory)."""
        if bucket == UNTIMED:
            return not self.timed
        lo, hi = bucket_start(bucket), bucket_end(bucket)
        return any(s <= lo and hi <= e for s, e in self.ranges)


@dataclass(frozen=True)
class Deletion:
    """A held bucket whose source now holds fewer rows (at least ``held - now`` were deleted)."""

    bucket: int
    held: int
    now: int
    holder: Holder


@dataclass
class Difference:
    """Each bucket of the run's range, classified against what the target holds."""

    planned: list[BucketCount] = field(default_factory=list)
    unchanged: list[BucketCount] = field(default_factory=list)
    outside: list[int] = field(default_factory=list)  # a lookback's history: neither read nor counted
    partial: set[int] = field(default_factory=set)  # cut by start or end: read, never held
    new_rows: int = 0
    changed_rows: int = 0
    deletions: list[Deletion] = field(default_factory=list)
    conflicts: list[HeldBucket] = field(default_factory=list)
    # Held by keys only (before content fingerprints), keys unchanged: unchanged, and their
    # content as counted now becomes what the inventory compares the next run with.
    adopt: list[BucketCount] = field(default_factory=list)
    edited: list[int] = field(default_factory=list)  # held buckets whose keys stayed, content not
    held_planned: set[int] = field(default_factory=set)  # planned buckets the target holds
    # Held buckets whose rows, keys or content differ now (deleted ones included), whole:
    # where a turn-by-turn comparison looks for edited and deleted turns (changes.py).
    changed: set[int] = field(default_factory=set)

    @property
    def unchanged_rows(self) -> int:
        return sum(b.rows for b in self.unchanged)

    @property
    def planned_rows(self) -> int:
        return sum(b.rows for b in self.planned)

    @property
    def deleted_rows(self) -> int:
        return sum(d.held - d.now for d in self.deletions)


def difference(counted: Iterable[BucketCount], held: Mapping[int, HeldBucket], *, digest: str,
               resend: bool = False, start: datetime | None = None, end: datetime | None = None,
               lookback_before: datetime | None = None,
               covered: Iterable[tuple[datetime | None, datetime | None]] = (),
               settings: Mapping[str, Any] | None = None) -> Difference:
    """Classify every counted bucket, and every held bucket now empty, against the inventory.

    ``start``/``end``: the range that was counted (buckets they cut are partial).
    ``settings``: the run's document settings. ``resend`` overrides a conflict of settings,
    never one of redaction or the transform (``PRIVATE_SETTINGS``): Synap keeps a document
    id's first version, so resending cannot take out what was sent unredacted.
    ``lookback_before``: a scheduled run's interval start (counted from the first row, so
    ``start`` is None); earlier buckets are planned only when held and changed, or new
    inside a range an earlier run ``covered``.
    """
    diff = Difference()
    covered = list(covered)
    seen = set()
    for count in sorted(counted, key=lambda c: c.bucket):
        seen.add(count.bucket)
        b = count.bucket
        timed = b != UNTIMED
        if timed and ((start is not None and bucket_start(b) < start)
                      or (end is not None and bucket_end(b) > end)):
            diff.partial.add(b)
            diff.planned.append(count)
            if b in held:
                diff.held_planned.add(b)
            continue
        mine = held.get(b)
        history = timed and lookback_before is not None and bucket_end(b) <= lookback_before
        same_keys = mine is not None and (mine.rows, mine.fingerprint) == (count.rows, count.fingerprint)
        # A bucket held before content fingerprints is compared by its keys alone.
        same = same_keys and (mine is None or mine.content is None or count.content is None
                              or mine.content == count.content)
        if mine is None:
            if history and not _inside(b, covered):
                diff.outside.append(b)
            else:
                diff.new_rows += count.rows
                diff.planned.append(count)
            continue
        if same and not resend and mine.holder.digest == digest:
            diff.unchanged.append(count)
            if mine.content is None and count.content is not None:
                diff.adopt.append(count)
            continue
        private_conflict = (resend and mine.holder.digest != digest and settings is not None
                            and _private_settings(mine.holder.settings) != _private_settings(settings))
        if (mine.holder.digest != digest and not resend) or private_conflict:
            if history and same:
                diff.outside.append(b)  # someone else's, unchanged: not this run's history
            else:
                diff.conflicts.append(mine)
            continue
        diff.held_planned.add(b)
        if not same:
            diff.changed_rows += count.rows
            diff.changed.add(b)
            if same_keys:
                diff.edited.append(b)
            if mine.rows > count.rows:
                diff.deletions.append(Deletion(b, mine.rows, count.rows, mine.holder))
        diff.planned.append(count)
    for b, mine in held.items():
        if b in seen or mine.rows == 0:
            continue
        if b == UNTIMED:
            if start is None and lookback_before is None:
                diff.deletions.append(Deletion(b, mine.rows, 0, mine.holder))
            continue
        inside = ((start is None or bucket_start(b) >= start) and (end is None or bucket_end(b) <= end))
        if inside:
            diff.deletions.append(Deletion(b, mine.rows, 0, mine.holder))
            diff.changed.add(b)
    diff.deletions.sort(key=lambda d: d.bucket)
    return diff


LOST_RANGE = timedelta(days=1)  # held buckets gone together over longer than this: an accident?


def lost_ranges(diff: Difference, counted: Iterable[BucketCount], *,
                longer_than: timedelta = LOST_RANGE) -> list[tuple[int, int]]:
    """Runs of held buckets the source now holds nothing of, with no row in between, spanning
    more than ``longer_than`` (first bucket, last bucket): a detached partition or a view's new
    WHERE looks like this; users deleting what they wrote does not."""
    gone = {d.bucket for d in diff.deletions if d.now == 0 and d.bucket != UNTIMED}
    if not gone:
        return []
    present = {c.bucket for c in counted if c.rows and c.bucket != UNTIMED}
    runs: list[list[int]] = []
    previous_gone = False
    for b in sorted(gone | present):
        if b in gone:
            if previous_gone:
                runs[-1][1] = b
            else:
                runs.append([b, b])
        previous_gone = b in gone
    return [(lo, hi) for lo, hi in runs if bucket_end(hi) - bucket_start(lo) > longer_than]


def describe_range(first: int, last: int) -> str:
    """``2024-03-01 00:00 → 2024-03-31 23:45 UTC`` (bucket starts and the last one's end)."""
    return f"{bucket_start(first):%Y-%m-%d %H:%M} → {bucket_end(last):%Y-%m-%d %H:%M} UTC"


def _inside(bucket: int, covered: list[tuple[datetime | None, datetime | None]]) -> bool:
    lo, hi = bucket_start(bucket), bucket_end(bucket)
    return any((s is None or s <= lo) and (e is None or hi <= e) for s, e in covered)


def describe_buckets(buckets: Iterable[int], limit: int = 3) -> str:
    """``2024-05-01 10:15 UTC, 2024-05-02 08:00 UTC and 4 more``."""
    labels = [bucket_label(b) for b in sorted(buckets)]
    shown = ", ".join(labels[:limit])
    return shown + (f" and {len(labels) - limit} more" if len(labels) > limit else "")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def conflict_message(conflicts: list[HeldBucket], settings: Mapping[str, Any], *, source: str,
                     target: str) -> str:
    """Why the plan stops on buckets held under other document settings, and what to do."""
    holders: dict[Holder, int] = {}
    for held in conflicts:
        holders[held.holder] = holders.get(held.holder, 0) + held.rows
    named = sorted(holders.items(), key=lambda item: -item[1])
    runs = "; ".join(f"{h.describe()} ({n} rows{_changes(h.settings, settings)})"
                     for h, n in named[:3]) + (f"; and {len(named) - 3} more runs" if len(named) > 3 else "")
    private = any(_private_settings(h.settings) != _private_settings(settings) for h in holders)
    return (f"{len(conflicts)} buckets ({sum(holders.values())} rows) of {source} are held by Synap"
            f" instance {target} under other document settings, written by {runs}. Sending them"
            " again does not change what Synap holds under their document ids: undo that run"
            " (DAG synap_undo) and run again"
            + (". Synap keeps those turns as that run sent them, with the personal data it did not"
               " redact: only an undo takes them out" if private else
               ", or set resend_unchanged to send them anyway"))


def _private_settings(settings: Mapping[str, Any]) -> tuple[Any, ...]:
    """What redaction and the transform made of the texts (config.document_settings)."""
    return tuple(json.dumps(settings.get(k), sort_keys=True) for k in PRIVATE_SETTINGS)


def _changes(then: Mapping[str, Any], now: Mapping[str, Any]) -> str:
    """``; user_id_column was 'customer_id', now 'user_id'`` (names of columns and modes, no data)."""
    def flat(settings: Mapping[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in settings.items() if k != "columns"}
        out.update({f"{k}_column": v for k, v in (settings.get("columns") or {}).items()})
        return out
    before, after = flat(then), flat(now)
    changed = [f"{k} was {before.get(k)!r}, now {after.get(k)!r}" for k in sorted(set(before) | set(after))
               if before.get(k) != after.get(k)]
    return f"; {', '.join(changed)}" if changed else ""
