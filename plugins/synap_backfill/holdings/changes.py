"""Source changes, turn by turn: which held turns were edited or deleted in the source.

The planner's counting pass finds the buckets that changed (their rows, keys or
content fingerprints differ from what the target holds). Only inside those
buckets, this compares what the target holds of each turn (``held_turns``:
the content hash sent) with what the source holds now, in one streamed merge
of two reads ordered by the turn's key, so memory stays flat however many
turns changed:

* **edited**: the source still holds the turn (in any changed bucket, or in a
  bucket never held before: a turn whose timestamp moved is an edit, wherever
  it moved to), none of its rows with the content that was sent;
* **deleted**: no row of the turn is left; or every row of it is now empty
  (**emptied**: both texts blank), which the backfill rejects, so its memories
  are deleted as a deletion's are;
* **unknown**: held by a run from before the ledger kept turns' content, so an
  edit cannot be told; counted, never acted on.

What to do with them is ``apply_source_changes``: report them (the default),
or apply them (``airflow/source_changes.py``: the held document's memories
deleted; an edited turn sent again under its next generation's id). A change
stays pending (its buckets are not held as read, so the next run finds it
again) until it is applied.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import groupby
from typing import Any, Iterable, Iterator, Literal

from synap_backfill.common.buckets import BUCKET_SECONDS, bucket_label, bucket_of, bucket_start
from synap_backfill.common.config import BackfillConfig
from synap_backfill.common.db import add_column, as_text, quote_identifier, stream
from synap_backfill.extract import sources
from synap_backfill.extract.reader import range_args, set_session_timezone

Kind = Literal["edited", "deleted"]
RANGES_FOR_INDEX = 200  # changed buckets read as ranges (an index helps) up to this many runs


@dataclass(frozen=True)
class TurnChange:
    """One held turn the source no longer holds as it was sent: no text, only ids and buckets."""

    turn: str  # conversation_id:message_index
    kind: Kind
    held_bucket: int  # where the target holds it
    source_bucket: int | None  # where the source holds it now (an edit, emptied); None: deleted
    document_id: str
    ingestion_id: str | None  # None: its memories cannot be looked up (its answer was lost)
    emptied: bool = False  # a deletion: the source still holds it, with both texts blank


@dataclass
class SourceChanges:
    """What the per-turn comparison of the changed buckets found."""

    changes: list[TurnChange] = field(default_factory=list)
    unknown: int = 0  # held turns whose sent content is not known
    compared: int = 0  # held turns compared

    @property
    def edited(self) -> list[TurnChange]:
        return [c for c in self.changes if c.kind == "edited"]

    @property
    def deleted(self) -> list[TurnChange]:
        """Deleted turns, the emptied ones included."""
        return [c for c in self.changes if c.kind == "deleted"]

    @property
    def emptied(self) -> list[TurnChange]:
        return [c for c in self.changes if c.emptied]

    @property
    def buckets(self) -> set[int]:
        """Buckets with a change pending: neither is held as read until it is applied."""
        out = {c.held_bucket for c in self.changes}
        return out | {c.source_bucket for c in self.changes if c.source_bucket is not None}

    def count_in(self, kind: Kind, start: datetime | None, end: datetime | None) -> int:
        """Changes of ``kind`` whose held bucket lies in ``[start, end)`` (None: unbounded)."""
        return sum(1 for c in self.changes if c.kind == kind and _within(c.held_bucket, start, end))

    def by_bucket(self, limit: int = 3) -> str:
        """``2024-05-01 10:15 UTC: 3 edited, 1 deleted; ...`` for the buckets with most changes."""
        per: dict[int, list[int]] = {}
        for c in self.changes:
            tally = per.setdefault(c.held_bucket, [0, 0])
            tally[0 if c.kind == "edited" else 1] += 1
        shown = sorted(per.items(), key=lambda item: (-sum(item[1]), item[0]))[:limit]
        text = "; ".join(f"{bucket_label(b)}: {e} edited, {d} deleted" for b, (e, d) in shown)
        return text + (f"; and {len(per) - limit} more buckets" if len(per) > limit else "")


def _within(bucket: int, start: datetime | None, end: datetime | None) -> bool:
    at = bucket_start(bucket)
    return (start is None or at >= start) and (end is None or at < end)


def find_changes(source_conn: Any, ledger_conn: Any, config: BackfillConfig, holding: int,
                 buckets: Iterable[int], new_buckets: Iterable[int] = ()) -> SourceChanges:
    """Compare, turn by turn, what the target holds in ``buckets`` with what the source holds.

    ``new_buckets``: buckets the target never held, where a turn that left ``buckets`` may
    have moved (its timestamp changed): looked up there only for turns not found, in one
    more read of those buckets, and then an edit, not a deletion.
    """
    buckets = sorted(set(buckets))
    found = SourceChanges()
    if not buckets:
        return found
    held = _held(ledger_conn, config.ledger_schema, holding, buckets)
    # The source's rows of each turn together (copies of a turn share its key).
    source = ((turn, list(rows)) for turn, rows in
              groupby(_source(source_conn, config, buckets), key=lambda row: row[0]))
    current = next(source, None)
    gone: list[TurnChange] = []
    for turn, bucket, content, document_id, ingestion_id in held:  # one row per turn
        found.compared += 1
        while current is not None and current[0] < turn:
            current = next(source, None)
        if current is None or current[0] != turn:
            gone.append(TurnChange(turn, "deleted", bucket, None, document_id, ingestion_id))
            continue
        rows = current[1]
        if content is None:
            found.unknown += 1
        elif all(hash_ != content for _, _, hash_, _ in rows):
            change = _changed(turn, bucket, rows, document_id, ingestion_id)
            found.changes.append(change)
    new_buckets = sorted(set(new_buckets) - set(buckets))
    moved: dict[str, list[tuple[str, int, int, bool]]] = {}
    if gone and new_buckets:
        wanted = {c.turn for c in gone}
        for turn, group in groupby(_source(source_conn, config, new_buckets), key=lambda r: r[0]):
            if turn in wanted:
                moved[turn] = list(group)
    for change in gone:
        now = moved.get(change.turn)
        found.changes.append(change if now is None else _changed(
            change.turn, change.held_bucket, now, change.document_id, change.ingestion_id))
    return found


def _changed(turn: str, bucket: int, rows: list[tuple[str, int, int, bool]], document_id: str,
             ingestion_id: str | None) -> TurnChange:
    """A held turn the source holds with other content: edited, or emptied (a deletion)."""
    if all(empty for _, _, _, empty in rows):
        return TurnChange(turn, "deleted", bucket, rows[0][1], document_id, ingestion_id,
                          emptied=True)
    first = next(row for row in rows if not row[3])
    return TurnChange(turn, "edited", bucket, first[1], document_id, ingestion_id)


def _held(conn: Any, schema: str, holding: int, buckets: list[int]
          ) -> Iterator[tuple[str, int, int | None, str, str | None]]:
    s = quote_identifier(schema)
    yield from stream(conn, "synap_backfill_held_turns",
                      f"SELECT turn, bucket, content, document_id, ingestion_id::text FROM"
                      f" {s}.held_turns WHERE holding = %s AND bucket = ANY(%s)"
                      ' ORDER BY turn COLLATE "C"', (holding, buckets))


def _source(conn: Any, config: BackfillConfig, buckets: list[int]
            ) -> Iterator[tuple[str, int, int, bool]]:
    """(turn, bucket, content hash, both texts blank) of every row of ``buckets`` that can make
    a document's key, ordered by the turn's key as ``held_turns`` is (byte order)."""
    set_session_timezone(conn, config.source_timezone)
    sql = sources.turns(config)
    runs = _runs(buckets)
    args: dict[str, Any] = {}
    if len(runs) <= RANGES_FOR_INDEX:
        where = sql.in_ranges(len(runs))
        args.update(range_args(runs))
    else:  # a scan, whatever the indexes: each row's bucket tested against the list
        where = sql.in_buckets()
        args["at"] = [bucket_start(b) for b in buckets]
    rows = stream(conn, "synap_backfill_source_turns", sql.bucket_turns(where), args)
    for key, at, content, empty in rows:
        yield as_text(key), bucket_of(at), int(content), bool(empty)


def _runs(buckets: list[int]) -> list[tuple[datetime, datetime]]:
    """Sorted buckets as half-open ranges, neighbours joined."""
    runs: list[list[int]] = []
    for b in buckets:
        if runs and runs[-1][1] == b:
            runs[-1][1] = b + 1
        else:
            runs.append([b, b + 1])
    return [(bucket_start(lo), bucket_start(lo) + timedelta(seconds=BUCKET_SECONDS * (hi - lo)))
            for lo, hi in runs]


def create_tables(cur: Any, s: str) -> None:
    """DDL (``s``: the quoted schema), for ``schema.ensure_tables``: each run's changes."""
    cur.execute(f"""CREATE TABLE IF NOT EXISTS {s}.source_changes (
        run int NOT NULL, turn text NOT NULL, kind text NOT NULL, held_bucket int NOT NULL,
        source_bucket int, document_id text NOT NULL, ingestion_id uuid,
        PRIMARY KEY (run, turn))""")
    # Version 4: emptied turns (a deletion), and which changes an apply carried out.
    for column, kind in (("emptied", "boolean NOT NULL DEFAULT false"),
                         ("applied", "boolean NOT NULL DEFAULT false")):
        add_column(cur, s, "source_changes", column, kind)


def save_changes(conn: Any, schema: str, run: int, found: SourceChanges) -> None:
    """Replace the run's changes (planned again: what this plan found)."""
    s = quote_identifier(schema)
    rows = found.changes
    with conn.cursor() as cur:
        cur.execute(f"DELETE FROM {s}.source_changes WHERE run = %s", (run,))
        if rows:
            cur.execute(
                f"INSERT INTO {s}.source_changes (run, turn, kind, held_bucket, source_bucket,"
                " document_id, ingestion_id, emptied) SELECT %s, * FROM unnest(%s::text[],"
                " %s::text[], %s::int[], %s::int[], %s::text[], %s::uuid[], %s::boolean[])",
                (run, [c.turn for c in rows], [c.kind for c in rows],
                 [c.held_bucket for c in rows], [c.source_bucket for c in rows],
                 [c.document_id for c in rows], [c.ingestion_id for c in rows],
                 [c.emptied for c in rows]))
    conn.commit()


def load_changes(conn: Any, schema: str, run: int) -> SourceChanges:
    s = quote_identifier(schema)
    with conn.cursor() as cur:
        cur.execute(f"SELECT turn, kind, held_bucket, source_bucket, document_id, ingestion_id::text,"
                    f" emptied FROM {s}.source_changes WHERE run = %s ORDER BY held_bucket, turn",
                    (run,))
        found = SourceChanges([TurnChange(*row) for row in cur.fetchall()])
    conn.commit()
    return found


def pending_buckets(conn: Any, schema: str, run: int) -> set[int]:
    """Buckets of the run's plan with a change not applied (held and source sides): not held as
    read, so the next run finds the change again (report mode: every change)."""
    s = quote_identifier(schema)
    with conn.cursor() as cur:
        cur.execute(f"SELECT held_bucket FROM {s}.source_changes WHERE run = %s AND NOT applied"
                    f" UNION SELECT source_bucket FROM {s}.source_changes WHERE run = %s"
                    " AND NOT applied AND source_bucket IS NOT NULL", (run, run))
        found = {int(b) for (b,) in cur.fetchall()}
    conn.commit()
    return found


def mark_applied(conn: Any, schema: str, run: int, holding: int) -> int:
    """Mark the run's changes whose held document is no longer held (its memories were deleted:
    ``deletion.undo_ledger.PartitionUndoLedger.save`` forgot it) as applied; how many are left pending."""
    s = quote_identifier(schema)
    with conn.cursor() as cur:
        cur.execute(f"UPDATE {s}.source_changes c SET applied = true WHERE c.run = %s AND NOT"
                    f" EXISTS (SELECT 1 FROM {s}.held_turns h WHERE h.holding = %s AND h.turn ="
                    " c.turn AND h.document_id = c.document_id)", (run, holding))
        cur.execute(f"SELECT count(*) FROM {s}.source_changes WHERE run = %s AND NOT applied",
                    (run,))
        (left,) = cur.fetchone()
    conn.commit()
    return int(left)


def describe(found: SourceChanges) -> dict[str, int]:
    """The counts, for the plan's record and XCom."""
    return {"edited": len(found.edited), "deleted": len(found.deleted),
            "emptied": len(found.emptied), "unknown": found.unknown, "compared": found.compared}
