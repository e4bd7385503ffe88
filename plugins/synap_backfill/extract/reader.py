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
from dataclasses import dataclass
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any, Iterator, Sequence, Tuple

from synap_backfill.common.buckets import BUCKET_SECONDS, UNTIMED, fingerprint
from synap_backfill.common.db import as_text, is_database_error, quote_identifier, sqlstate
from synap_backfill.common.errors import sql_error
from synap_backfill.common.config import BackfillConfig
from synap_backfill.extract.planning import BucketCount
from synap_backfill.common.ids import document_id, row_key


log = logging.getLogger("synap_backfill")
CONNECTION_LOST = ("08000", "08003", "08006", "57P01", "57P02", "57P03")  # not the relation's fault

# The read's sort key as PostgreSQL sorted it: the timestamp column's own value (None for
# untimed rows), the conversation key, the message index key (numeric) and the tiebreak.
Position = Tuple[Any, str, Any, str]
Group = Tuple[Any, str, Any]  # a turn at one time: rows sharing it are copies
NULL_INDEX = -9223372036854775808  # where a NULL message_index sorts
DOCUMENT_FRAME_CHARS = len("User: \nAssistant: ")  # documents.build_document's frame


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


def quoted_table(config: BackfillConfig) -> str:
    return ".".join(quote_identifier(part) for part in config.source_table.split("."))


def representable(config: BackfillConfig) -> str:
    """SQL: the timestamp is finite and inside what Python and the SDK hold (a day's margin for zones)."""
    col = quote_identifier(config.columns.created_at)
    return f"(isfinite({col}) AND {col} >= '0001-01-02' AND {col} < '9999-12-31')"


def row_hash_sql(config: BackfillConfig) -> str:
    """SQL: one row's share of its bucket's fingerprint (``buckets.py``), a ``bigint``.

    A hash of each part of the row's key, seeded apart and XORed: the conversation id as
    text, the message index as a numeric (so 3 and 3.0 hash alike), and the timestamp as the
    instant it reads as (so the session's time zone prints nothing into it). NULLs hash as 0.
    """
    c = config.columns
    q = quote_identifier
    return (f"(hashtextextended(COALESCE({q(c.conversation_id)}::text, ''), 1)"
            f" # COALESCE(hash_numeric_extended({q(c.message_index)}::numeric, 2), 0)"
            f" # COALESCE(timestamptz_hash_extended({q(c.created_at)}::timestamptz, 3), 0))")


def content_hash_sql(config: BackfillConfig) -> str:
    """SQL: one row's share of its bucket's content fingerprint, a ``bigint``: a hash of what
    shapes its document beyond its key: both texts, the user and customer ids and the instant.

    Each field is hashed with a seed of its own and the hashes XORed, so a value moved to
    another field, or NULL against empty, never hashes alike, and no row is copied into a
    concatenated string. Computed by PostgreSQL, from the stored values: a text the worker
    could not decode still hashes. Also a turn's content, compared turn by turn where a
    bucket changed (``changes.py``).
    """
    c = config.columns
    q = quote_identifier
    parts = [c.user_text, c.assistant_text, c.user_id] + ([c.customer_id] if c.customer_id else [])
    hashes = " # ".join(f"COALESCE(hashtextextended({q(p)}::text, {11 + i}), {i + 1})"
                        for i, p in enumerate(parts))
    return f"({hashes} # COALESCE(timestamptz_hash_extended({q(c.created_at)}::timestamptz, 5), 0))"


def _select(config: BackfillConfig, timed: bool) -> str:
    """The row's fields, its flags and the order key (``k0``..``k3``), before the resume filter."""
    c = config.columns
    q = quote_identifier
    customer = f"{q(c.customer_id)}::text" if c.customer_id else "NULL::text"
    key = _order_key(config, timed)
    # Rows equal on the turn's key are copies of one turn at one time: the window
    # function rides on the ORDER BY's sort, so it costs no extra pass.
    repeats = (f"row_number() OVER (PARTITION BY {', '.join(key[:-1])} ORDER BY {key[-1]}) > 1"
               if timed else "false")
    names = ["k0", "k1", "k2", "k3"][-len(key):]
    # The document's length ("User: " + user + "\nAssistant: " + assistant) from the
    # server's count, so a text over the limit is never sent over the wire to the worker.
    length = (f"(char_length(COALESCE({q(c.user_text)}::text, ''))"
              f" + char_length(COALESCE({q(c.assistant_text)}::text, '')) + {DOCUMENT_FRAME_CHARS})")
    too_long = f"{length} > {int(config.max_document_chars)}"
    return (
        f"SELECT {q(c.conversation_id)}::text, {q(c.message_index)}, {q(c.user_id)}::text,"
        f" {customer}, CASE WHEN {too_long} THEN NULL ELSE textsend({q(c.user_text)}::text) END,"
        f" CASE WHEN {too_long} THEN NULL ELSE textsend({q(c.assistant_text)}::text) END,"
        f" {q(c.created_at) + '::timestamptz' if timed else 'NULL::timestamptz'},"
        f" {repeats} AS repeats_earlier,"
        f" {'false' if timed else q(c.created_at) + ' IS NOT NULL'} AS unrepresentable_time,"
        f" {row_hash_sql(config)} AS row_hash, {content_hash_sql(config)} AS content_hash,"
        f" {too_long} AS too_long,"
        f" {', '.join(f'{k} AS {n}' for k, n in zip(key, names))}"
        f" FROM {quoted_table(config)}")


def _order_key(config: BackfillConfig, timed: bool) -> list[str]:
    c = config.columns
    q = quote_identifier
    tiebreak = f"COALESCE({q(config.tiebreak_column)}::text, '')" if config.tiebreak_column else "''::text"
    # numeric, not bigint: a cast to bigint rounds 1.5 onto 2, making two turns one key.
    keys = [f"COALESCE({q(c.conversation_id)}::text, '')",
            f"COALESCE({q(c.message_index)}::numeric, {NULL_INDEX})", tiebreak]
    return ([q(c.created_at)] if timed else []) + keys


_FIELDS = ("conversation_id, message_index, user_id, customer_id, user_text, assistant_text,"
           " created_at, repeats_earlier, unrepresentable_time, row_hash, content_hash, too_long")
_COLUMNS = _FIELDS.replace(",", "").split()


def select_slice_sql(config: BackfillConfig, ranges: int = 1, *, after: bool = False) -> str:
    """The partition's query: half-open ranges (``%(s0)s``, ``%(e0)s``, ...), a total order;
    optionally after a position.

    The copy flag is computed over the whole partition, before the resume filter,
    so a resumed read flags the same rows as a first one.
    """
    resume = (" WHERE (k0, k1, k2, k3) > (%(a_ts)s, %(a_conv)s, %(a_idx)s::numeric, %(a_tb)s)"
              if after else "")
    return (f"SELECT {_FIELDS}, k0, k1, k2, k3 FROM ({_select(config, timed=True)}"
            f" WHERE {in_ranges_sql(config, ranges)})"
            f" AS w({', '.join(_COLUMNS)}, k0, k1, k2, k3){resume} ORDER BY k0, k1, k2, k3")


def in_ranges_sql(config: BackfillConfig, ranges: int) -> str:
    """SQL: the timestamp lies in one of ``ranges`` half-open ranges (``%(s<i>)s``, ``%(e<i>)s``).

    OR-ed bounds let an index on the column read each range alone (a bitmap OR).
    """
    q = quote_identifier(config.columns.created_at)
    return " OR ".join(f"({q} >= %(s{i})s AND {q} < %(e{i})s)" for i in range(ranges))


def range_args(ranges: Sequence[tuple[datetime, datetime]]) -> dict[str, datetime]:
    args: dict[str, datetime] = {}
    for i, (start, end) in enumerate(ranges):
        args[f"s{i}"], args[f"e{i}"] = start, end
    return args


def select_untimed_sql(config: BackfillConfig, *, after: bool = False) -> str:
    """Rows without a usable timestamp (NULL, or one nobody can represent): they belong to no window."""
    q = quote_identifier(config.columns.created_at)
    resume = " WHERE (k1, k2, k3) > (%(a_conv)s, %(a_idx)s::numeric, %(a_tb)s)" if after else ""
    return (f"SELECT {_FIELDS}, NULL, k1, k2, k3 FROM ({_select(config, timed=False)}"
            f" WHERE {q} IS NULL OR NOT {representable(config)})"
            f" AS w({', '.join(_COLUMNS)}, k1, k2, k3){resume} ORDER BY k1, k2, k3")


def copies_at_different_times(conn: Any, config: BackfillConfig, start: datetime | None,
                              end: datetime | None) -> list[tuple[str, datetime, datetime]]:
    """Turns held by rows at different timestamps in ``[start, end)`` (None: unbounded):
    (document id, first, last).

    One pass over the range (a hash or sorted aggregate), whatever the indexes.
    """
    set_session_timezone(conn, config.source_timezone)
    c = config.columns
    q = quote_identifier
    col = q(c.created_at)
    with conn.cursor() as cur:
        # Grouped by the columns themselves (numeric equality: 3 and 3.0 are one turn), with
        # room for the hash table: the aggregate holds a group per distinct turn.
        cur.execute("SET LOCAL work_mem = '256MB'")
        cur.execute(
            f"SELECT {q(c.conversation_id)}::text, {q(c.message_index)},"
            f" min({col})::timestamptz, max({col})::timestamptz FROM {quoted_table(config)}"
            f" WHERE {representable(config)}"
            f"{' AND ' + col + ' >= %(start)s' if start is not None else ''}"
            f"{' AND ' + col + ' < %(end)s' if end is not None else ''}"
            f" AND {q(c.conversation_id)} IS NOT NULL AND {q(c.message_index)} IS NOT NULL"
            f" GROUP BY {q(c.conversation_id)}, {q(c.message_index)}"
            f" HAVING min({col}) < max({col})", {"start": start, "end": end})
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
    col = quote_identifier(config.columns.created_at)
    whole = start is None and end is None and ranges is None
    conditions = []
    args: dict[str, Any] = {"start": start, "end": end}
    if start is not None:
        conditions.append(f"{col} >= %(start)s")
    if end is not None:
        conditions.append(f"{col} < %(end)s")
    where = f"({' AND '.join(conditions)} AND {representable(config)})" if conditions else ""
    if ranges is not None:
        where = f"({in_ranges_sql(config, len(ranges))})" if ranges else "false"
        args.update(range_args(ranges))
    if untimed and not whole:
        where = f"({where} OR {col} IS NULL OR NOT {representable(config)})"
    def count(content: bool) -> list[tuple]:
        contents = f"sum({content_hash_sql(config)})" if content else "NULL"
        with conn.cursor() as cur:
            # The bucket's number is made from its start once a group (the start is a whole
            # multiple of the bucket, so the division is exact): no instant crosses the wire.
            cur.execute(f"SELECT extract(epoch FROM b)::bigint / {BUCKET_SECONDS}, n, h, c FROM"
                        f" (SELECT CASE WHEN {representable(config)} THEN date_bin('{BUCKET_SECONDS}"
                        f" seconds', {col}::timestamptz, timestamptz '1970-01-01 00:00:00+00') END"
                        f" AS b, count(*) AS n, sum({row_hash_sql(config)}) AS h, {contents} AS c"
                        f" FROM {quoted_table(config)}"
                        f"{' WHERE ' + where if where else ''} GROUP BY 1) AS counted", args)
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


def turns_are_unique(conn: Any, config: BackfillConfig) -> bool:
    """A unique index on exactly (conversation_id, message_index): the source holds no copies."""
    c = config.columns
    with conn.cursor() as cur:
        cur.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = to_regclass(%s)"
            " AND i.indisunique AND i.indpred IS NULL AND i.indnkeyatts = 2"
            " AND (SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_attribute a"
            "      WHERE a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey[0:1]))"
            "     = (SELECT array_agg(x ORDER BY x) FROM unnest(%s::text[]) AS x))",
            (quoted_table(config), [c.conversation_id, c.message_index]))
        (unique,) = cur.fetchone()
    conn.commit()
    return bool(unique)


def timestamp_index(conn: Any, config: BackfillConfig) -> bool | None:
    """Whether an index leads with the timestamp column; None when the relation is not a
    table or materialized view (a view's cost is its query's)."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT c.relkind IN ('r', 'p', 'm'), EXISTS (SELECT 1 FROM pg_index i"
            " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]"
            " WHERE i.indrelid = c.oid AND a.attname = %s)"
            " FROM pg_class c WHERE c.oid = to_regclass(%s)",
            (config.columns.created_at, quoted_table(config)))
        row = cur.fetchone()
    conn.commit()
    if row is None or not row[0]:
        return None
    return bool(row[1])


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
        sql = select_untimed_sql(config, after=after is not None)
    else:
        sql = select_slice_sql(config, len(ranges), after=after is not None)
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
    return [at, conversation, str(index), tiebreak]


def position_from_json(raw: Any) -> Position | None:
    if not raw:
        return None
    at, conversation, index, tiebreak = raw
    if isinstance(at, dict) and "date" in at:
        at = date.fromisoformat(at["date"])
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
