"""Reading the conversation relation: its time range, and one window's rows.

Any relation that can be SELECTed works: a table, a view, a materialized
view, a partitioned or a foreign table, in any schema. Nothing depends on a
physical row id.

Works on any DB-API connection from psycopg 3 or psycopg2 (what
``PostgresHook.get_conn()`` returns, depending on the SQLAlchemy version), so
it is testable without Airflow.

Time zones: the session's ``TimeZone`` is set to the source time zone, so a
``timestamp without time zone`` column is read as local time there, both in
the window filter (Postgres compares it with the UTC bounds in that zone) and
in the ``::timestamptz`` value we read back. Filter and value use the same
conversion, so a row's document timestamp always lies in its window. A
``timestamptz`` column is unaffected.

Rows come through a server-side (named) cursor in ``fetch_size`` chunks, so a
partition's memory does not grow with its row count. Their order is the row's
own key, ``(created_at, conversation_id, message_index)``, NULLs folded to
fixed values, then the optional ``tiebreak_column`` (a column unique per row,
such as a primary key). Rows equal on the key are copies of one turn, one
document: all but the first are flagged (``SourceRow.repeats_earlier``) and
rejected, and a partition never checkpoints between two of them, so it can
resume strictly after the last acknowledged row (a ``Position``).

A position is the sort key exactly as the query sorted it, never a converted
value: the timestamp column's own value (a ``timestamp without time zone`` is
ordered by its wall-clock time, and in a spring-forward gap wall-clock order
and instant order disagree), and ``message_index`` as a ``numeric`` (a cast to
``bigint`` would round 1.5 onto 2). A ``message_index`` that is not a whole
number is flagged (``SourceRow.index_not_whole``) and rejected; a whole one in
a ``numeric`` or floating-point column (``3.0``) is the integer ``3``.

Timestamps nobody can represent (``±infinity``, or outside the years 1 to
9999 that Python and the SDK hold) never reach a window: such rows are read
with the rows without a timestamp and rejected with their own reason.

Texts are read as bytes (``textsend``) and decoded here, so a row holding
invalid UTF-8 (possible in a ``SQL_ASCII`` database) is rejected alone
instead of failing the whole fetch.

Copies in the source (rows with the same ``conversation_id`` and
``message_index``, which make the same document) are found here, on the read
side: copies with the same timestamp sit next to each other in the window's
order and all but the first are flagged by the query itself; copies at
different timestamps may sit in different windows, so the planner lists them
in one pass (``copies_at_different_times``) and each partition sends only the
earliest.
"""

from __future__ import annotations

import logging
from contextlib import closing
from dataclasses import dataclass
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any, Callable, Iterator, Sequence, Tuple

from synap_backfill.common.buckets import UNTIMED, fingerprint
from synap_backfill.common.config import BackfillConfig
from synap_backfill.common.db import as_text, is_database_error, sqlstate
from synap_backfill.common.errors import sql_error
from synap_backfill.common.ids import document_id, row_key
from synap_backfill.extract import sources
from synap_backfill.extract.message_sql import MessageSQL
from synap_backfill.extract.source_sql import NULL_INDEX
from synap_backfill.planner.difference import BucketCount

log = logging.getLogger("synap_backfill")
CONNECTION_LOST = ("08000", "08003", "08006", "57P01", "57P02", "57P03")  # not the relation's fault

# The read's sort key as PostgreSQL sorted it: the timestamp column's own value (None for
# untimed rows), the conversation key, the message index key (numeric) and the tiebreak.
Position = Tuple[Any, str, Any, str]
Group = Tuple[Any, str, Any]  # a turn at one time: rows sharing it are copies


@dataclass(frozen=True, slots=True)
class SourceRow:
    """One conversation turn as read; any field may be None in a dirty table."""

    conversation_id: str | None
    message_index: int | None  # a whole number; None when NULL or not whole
    user_id: str | None
    customer_id: str | None
    user_text: str | None
    assistant_text: str | None
    created_at: datetime | None
    tiebreak: str = ""  # the tiebreak column's value as text ("" without one)
    invalid_text: bool = False  # a text column held bytes that are not UTF-8
    repeats_earlier: bool = False  # an earlier row has the same timestamp, conversation and index
    unrepresentable_time: bool = False  # created_at is ±infinity or outside the years 1-9999
    index_not_whole: bool = False  # message_index holds a fraction (1.5), NaN or infinity
    sort_key: Position = (None, "", NULL_INDEX, "")  # the read's order key, as sorted
    row_hash: int = 0  # the row's share of its bucket's fingerprint (``row_hash_sql``)
    content_hash: int = 0  # the row's share of its bucket's content fingerprint (``content_hash_sql``)
    index_text: str = ""  # message_index as stored, for the row key of one that is not whole
    # Its document would be longer than max_document_chars, measured in SQL: its texts were
    # never fetched (a 1 GB cell costs the worker nothing), and it is rejected as too long.
    too_long: bool = False

    @property
    def key(self) -> str:
        """Identifies the row in logs and reject lists without its text (see ``row_key``)."""
        return row_key(self.conversation_id, self.index_text if self.index_not_whole
                       else self.message_index)

    @property
    def group(self) -> Group:
        return self.sort_key[:3]

    @property
    def position(self) -> Position:
        return self.sort_key


def range_args(ranges: Sequence[tuple[datetime, datetime]]) -> dict[str, datetime]:
    args: dict[str, datetime] = {}
    for i, (start, end) in enumerate(ranges):
        args[f"s{i}"], args[f"e{i}"] = start, end
    return args


def copies_at_different_times(conn: Any, config: BackfillConfig, start: datetime | None,
                              end: datetime | None) -> list[tuple[str, datetime, datetime]]:
    """Turns held by rows at different timestamps in ``[start, end)`` (None: unbounded):
    (document id, first, last).

    One pass over the range (a hash or sorted aggregate), whatever the indexes.
    """
    set_session_timezone(conn, config.source_timezone)
    with conn.cursor() as cur:
        # Room for the hash table: the aggregate holds a group per distinct turn.
        cur.execute("SET LOCAL work_mem = '256MB'")
        cur.execute(sources.turns(config).copies(start is not None, end is not None),
                    {"start": start, "end": end})
        found = []
        for conv, index, first, last in cur.fetchall():
            first_utc, last_utc = _as_utc(first), _as_utc(last)
            whole, _ = whole_index(index)
            if first_utc is not None and last_utc is not None and whole is not None:
                found.append((document_id(as_text(conv), whole), first_utc, last_utc))
    conn.commit()
    return found


def set_session_timezone(conn: Any, tz: str) -> None:
    with conn.cursor() as cur:
        cur.execute("SELECT set_config('TimeZone', %s, false)", (tz,))


def bucket_counts(conn: Any, config: BackfillConfig, *, start: datetime | None = None,
                  end: datetime | None = None,
                  ranges: Sequence[tuple[datetime, datetime]] | None = None,
                  untimed: bool | None = None) -> list[BucketCount]:
    """Rows per inventory bucket, with the fingerprints of their keys and content, in one pass.

    Without bounds: the whole relation, rows without a usable timestamp in the bucket
    ``UNTIMED``. With ``start`` and/or ``end``, or ``ranges``: only rows in them (and the
    untimed rows too when ``untimed``).
    """
    set_session_timezone(conn, config.source_timezone)
    sql = sources.turns(config)
    whole = start is None and end is None and ranges is None
    args: dict[str, Any] = {"start": start, "end": end}
    conditions = sql.between(start is not None, end is not None)
    where = f"({' AND '.join(conditions)} AND {sql.representable})" if conditions else ""
    if ranges is not None:
        where = f"({sql.in_ranges(len(ranges))})" if ranges else "false"
        args.update(range_args(ranges))
    if untimed and not whole:
        where = f"({where} OR {sql.created_at} IS NULL OR NOT {sql.representable})"

    # What the statement reads: only the bounds' rows (a message table's, widened by its replies).
    scope = (None if whole or untimed else sql.scoped(len(ranges)) if ranges is not None
             else sql.scoped(0, start is not None, end is not None))

    def count(content: bool) -> list[tuple]:
        with conn.cursor() as cur:
            cur.execute(sql.bucket_counts(where, content, scope), args)
            rows = cur.fetchall()
        conn.commit()
        return rows

    try:
        rows = count(content=True)
    except Exception as exc:
        # A relation whose text columns raise on some row (a view's failing cast): its
        # buckets are compared by keys alone, and the partition reading that row fails on
        # it alone, in one line, as it would have without content fingerprints.
        if not is_database_error(exc) or sqlstate(exc) in CONNECTION_LOST:
            raise
        conn.rollback()
        log.warning("%s raised reading its texts (%s): its buckets are compared by their keys"
                    " only, and edits to them are not seen", config.source_table, sql_error(exc))
        rows = count(content=False)
    counts = (BucketCount(UNTIMED if at is None else int(at), int(n),
                          fingerprint(int(hashes or 0)),
                          None if contents is None else fingerprint(int(contents)))
              for at, n, hashes, contents in rows)
    return sorted(counts, key=lambda c: c.bucket)


def skipped_messages(conn: Any, config: BackfillConfig, start: datetime | None,
                     end: datetime | None) -> dict[str, int]:
    """A message table's messages in ``[start, end)`` that make no turn's text, by reason
    (``extract.message_sql``); empty for a table of turns."""
    sql = sources.turns(config)
    if not isinstance(sql, MessageSQL):
        return {}
    set_session_timezone(conn, config.source_timezone)
    with conn.cursor() as cur:
        cur.execute(sql.scoped(0, start is not None, end is not None).skipped_messages(),
                    {"start": start, "end": end})
        found = {as_text(reason): int(n) for reason, n in cur.fetchall() if n}
    conn.commit()
    return found


def turns_are_unique(conn: Any, config: BackfillConfig) -> bool:
    """A unique index on exactly (conversation_id, message_index): the source holds no copies."""
    sql = sources.turns(config)
    if sql.query:  # a query's rows: no index of its own to vouch for them
        return False
    with conn.cursor() as cur:
        cur.execute(*sql.unique_turns())
        (unique,) = cur.fetchone()
    conn.commit()
    return bool(unique)


def timestamp_index(conn: Any, config: BackfillConfig) -> bool | None:
    """Whether an index leads with the timestamp column; None when the relation is not a
    table or materialized view (a view's cost is its query's)."""
    sql = sources.turns(config)
    if sql.query:  # its cost is its own, as a view's
        return None
    with conn.cursor() as cur:
        cur.execute(*sql.timestamp_index())
        row = cur.fetchone()
    conn.commit()
    if row is None or not row[0]:
        return None
    return bool(row[1])


def window_reader(connect: Callable[[], Any], config: BackfillConfig,
                  ranges: Sequence[tuple[datetime, datetime]] | None
                  ) -> Callable[[Position | None], Iterator[SourceRow]]:
    """A partition's read, from where a pass starts: each pass on a new connection
    (``connect``), so that after a lost connection the next pass opens another."""
    def read(after: Position | None) -> Iterator[SourceRow]:
        with closing(connect()) as conn:
            yield from read_window(conn, config, ranges, after)

    return read


def read_window(conn: Any, config: BackfillConfig,
                ranges: Sequence[tuple[datetime, datetime]] | None,
                after: Position | None = None) -> Iterator[SourceRow]:
    """Yield the rows of a partition's ``ranges`` (``None``: the rows with no usable timestamp)
    in order, strictly after ``after`` when resuming."""
    set_session_timezone(conn, config.source_timezone)
    args: dict[str, Any] = {}
    if after is not None:
        args.update(a_ts=after[0], a_conv=after[1], a_idx=str(after[2]), a_tb=after[3])
    if ranges is None:
        sql = sources.turns(config).untimed_rows(after=after is not None)
    else:
        sql = sources.turns(config).window_rows(len(ranges), after=after is not None)
        args.update(range_args(ranges))
    with conn.cursor(name="synap_backfill_window") as cur:
        cur.execute(sql, args)
        while True:
            chunk = cur.fetchmany(config.fetch_size)
            if not chunk:
                break
            for (conv, index, user, customer, user_raw, assistant_raw, created, repeats,
                 unrepresentable, row_hash, content_hash, too_long, k0, k1, k2, k3) in chunk:
                user_text, user_ok = _text(user_raw)
                assistant_text, assistant_ok = _text(assistant_raw)
                whole, not_whole = whole_index(index)
                yield SourceRow(as_text(conv), whole, as_text(user), as_text(customer), user_text,
                                assistant_text, _as_utc(created), as_text(k3),
                                not (user_ok and assistant_ok), bool(repeats),
                                bool(unrepresentable), not_whole,
                                (k0, as_text(k1), k2, as_text(k3)), int(row_hash),
                                int(content_hash), str(index) if not_whole else "", bool(too_long))
    conn.commit()


def whole_index(value: Any) -> tuple[int | None, bool]:
    """A ``message_index`` as the integer it holds, and whether it holds a fraction instead.

    Integer columns give ints; a ``numeric`` or floating-point column gives ``3`` for ``3.0``
    and (None, True) for ``1.5``, NaN or infinity, which are rejected, never rounded.
    """
    if value is None or isinstance(value, int):
        return value, False
    try:
        whole = int(value)
    except (ValueError, OverflowError):  # NaN, infinity
        return None, True
    return (whole, False) if whole == value else (None, True)


def position_to_json(position: Position | None) -> Any:
    """A position as JSON, keeping the timestamp's own type: aware, naive (wall-clock) or a date."""
    if position is None:
        return None
    at, conversation, index, tiebreak = position
    if isinstance(at, datetime):
        at = {"at": at.isoformat(), "naive": at.tzinfo is None}
    elif isinstance(at, date):
        at = {"date": at.isoformat()}
    elif isinstance(at, Decimal):  # epoch numbers in a numeric column
        at = {"numeric": str(at)}
    elif isinstance(at, str):  # ISO-8601 text, compared as text
        at = {"text": at}
    return [at, conversation, str(index), tiebreak]


def position_from_json(raw: Any) -> Position | None:
    if not raw:
        return None
    at, conversation, index, tiebreak = raw
    if isinstance(at, dict) and "date" in at:
        at = date.fromisoformat(at["date"])
    elif isinstance(at, dict) and "numeric" in at:
        at = Decimal(at["numeric"])
    elif isinstance(at, dict) and "text" in at:
        at = at["text"]
    elif isinstance(at, dict):
        at = datetime.fromisoformat(at["at"])
    elif isinstance(at, str):  # a checkpoint written before positions kept their type: UTC
        at = datetime.fromisoformat(at)
        at = at if at.tzinfo else at.replace(tzinfo=timezone.utc)
    return (at, conversation, Decimal(str(index)), tiebreak)


def _text(raw: Any) -> tuple[str | None, bool]:
    """Decoded text and whether it was valid UTF-8."""
    if raw is None:
        return None, True
    try:
        return bytes(raw).decode("utf-8"), True
    except UnicodeDecodeError:
        return None, False


def _as_utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:  # cannot happen after ::timestamptz, kept for safety
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)
