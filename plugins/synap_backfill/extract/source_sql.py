"""Every SQL statement against the source, written here alone.

``SourceSQL`` is built once from what a source is (the declared relation, its
columns, tiebreak and length limit: ``SourceSQL.declared(config)``; or what a holding
recorded of them: ``SourceSQL.recorded(...)``) and gives each reader its
statement: planning's bucket counts and copies, a window's rows, the turns of
changed buckets, a person's rows, a rekey's rows, an undo's conversation scopes,
and preflight's catalog probes. The fragments they share are written once: the
relation, the column expressions, the window filter, the customer, the turn key,
the whole-index rule, the representable time, the blank turn and the document
frame's length. ``tests/unit/test_layout.py`` fails on SQL against the source
anywhere else. Values always travel as parameters; names are quoted here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Mapping

from synap_backfill.common.buckets import BUCKET_SECONDS
from synap_backfill.common.config import BackfillConfig, SourceColumns
from synap_backfill.common.db import quote_identifier as q
from synap_backfill.common.frame import FRAME_CHARS
from synap_backfill.common.ids import conversation_uuid_sql, message_key_sql, turn_sql

NULL_INDEX = -(2**63)  # where a NULL message_index sorts (the order key folds NULLs)
# The columns of a window's and the untimed rows' statements, in order, before k0..k3.
FIELDS = ("conversation_id, message_index, user_id, customer_id, user_text, assistant_text,"
          " created_at, repeats_earlier, unrepresentable_time, row_hash, content_hash, too_long")
_COLUMNS = FIELDS.replace(",", "").split()
_EPOCH = "timestamptz '1970-01-01 00:00:00+00'"
# What Python and the SDK hold, with a day's margin: as epoch seconds for numeric times.
_FIRST = int(datetime(1, 1, 2, tzinfo=timezone.utc).timestamp())
_LAST = int(datetime(9999, 12, 31, tzinfo=timezone.utc).timestamp())
_ISO = (r"'^[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}([.][0-9]+)?)?)?"
        r"(Z|[+-][0-9]{2}(:?[0-9]{2})?)?$'")
_ISO_BOUND = "'YYYY-MM-DD\"T\"HH24:MI:SS'"


def literal(text: str) -> str:
    """A declared value as an SQL string literal (standard_conforming_strings, the default)."""
    return "'" + text.replace("'", "''") + "'"


@dataclass(frozen=True)
class SourceSQL:
    """The source's SQL: ``table`` is ``TABLE`` or ``SCHEMA.TABLE`` (a recorded
    ``database.schema.table`` keeps its last two parts); ``columns`` as mapped. With
    ``query`` (a declared SELECT), the relation is that query, named ``table``."""

    table: str
    columns: SourceColumns
    tiebreak: str | None = None
    max_document_chars: int = 100_000
    query: str | None = None
    time_format: str = "timestamp"  # created_at_format
    any_conversation: bool = False  # conversation_ids "any": a non-UUID id is sent as its uuid3
    message_key: str | None = None  # message_key_column: names the turn instead of the index

    @classmethod
    def declared(cls, config: BackfillConfig) -> "SourceSQL":
        """The relation as declared (a message table's rows, not its turns: ``sources.turns``)."""
        return cls(config.source_table, config.columns, config.tiebreak_column,
                   config.max_document_chars, config.source_query, config.created_at_format,
                   config.conversation_ids == "any", config.message_key_column)

    @classmethod
    def recorded(cls, table: str, columns: Mapping[str, str], query: str | None = None,
                 settings: Mapping[str, Any] | None = None) -> "SourceSQL":
        """From what a holding (or an undone run) recorded: its relation (or query), columns,
        and how its rows are read (``settings``: its document settings)."""
        settings = settings or {}
        mapped = {name: columns.get(name) or "" for name in SourceColumns.__dataclass_fields__}
        return cls(".".join(table.split(".")[-2:]), SourceColumns(**mapped), query=query or None,
                   time_format=settings.get("created_at_format") or "timestamp",
                   any_conversation=settings.get("conversation_ids") == "any",
                   message_key=settings.get("message_key_column") or None)

    def scoped(self, ranges: int = 0, start: bool = False, end: bool = False) -> "SourceSQL":
        """The same source, for a statement that reads only ``ranges`` (or ``start``/``end``):
        a table of turns is read as it is; a message table narrows what it reads."""
        return self

    # -- fragments ---------------------------------------------------------------------------
    @property
    def base(self) -> str:
        """The declared relation, or the declared query as a derived table (PostgreSQL pushes a
        filter on its output column down to the base table's index)."""
        if self.query:
            return f"({self.query}) AS {q(self.table.split('.')[-1])}"
        return ".".join(q(part) for part in self.table.split("."))

    @property
    def relation(self) -> str:
        """What a statement reads turns FROM: here the declared relation itself."""
        return self.base

    @property
    def conversation(self) -> str:
        column = q(self.columns.conversation_id)
        return conversation_uuid_sql(f"{column}::text") if self.any_conversation else column

    @property
    def index(self) -> str:
        return message_key_sql(q(self.message_key)) if self.message_key else q(
            self.columns.message_index)

    @property
    def instant(self) -> str:
        """The row's time as a ``timestamptz``, whatever ``created_at`` holds."""
        col = self.created_at
        return {"timestamp": f"{col}::timestamptz",
                "epoch_seconds": f"to_timestamp({col}::double precision)",
                "epoch_milliseconds": f"to_timestamp({col}::double precision / 1000)",
                "iso8601": f"(CASE WHEN {col}::text ~ {_ISO} THEN {col}::text::timestamptz END)",
                }[self.time_format]

    def bound(self, name: str, shift: int = 0) -> str:
        """The parameter ``name`` (an instant), ``shift`` seconds on, in ``created_at``'s own type,
        so a comparison with the column is served by its index."""
        at = f"%({name})s" if not shift else f"(%({name})s::timestamptz + interval '{shift} seconds')"
        if self.time_format == "epoch_seconds":
            return f"extract(epoch FROM {at}::timestamptz)::bigint"
        if self.time_format == "epoch_milliseconds":
            return f"(extract(epoch FROM {at}::timestamptz) * 1000)::bigint"
        if self.time_format == "iso8601":
            return f"to_char({at}::timestamptz AT TIME ZONE 'UTC', {_ISO_BOUND})"
        return at

    @property
    def created_at(self) -> str:
        return q(self.columns.created_at)

    @property
    def turn(self) -> str:
        """The row's turn key, ``<conversation>:<index>`` (``common.ids.turn_sql``)."""
        return turn_sql(self.conversation, self.index)

    def customer(self, trimmed: bool = False) -> str:
        """The customer id as text; NULL for a source without customers."""
        if not self.columns.customer_id:
            return "NULL::text"
        text = f"{q(self.columns.customer_id)}::text"
        return f"btrim({text})" if trimmed else text

    @property
    def user(self) -> str:
        """The user id as a person is named by it: text, trimmed."""
        return f"btrim({q(self.columns.user_id)}::text)"

    @property
    def keyed(self) -> str:
        """The row has a turn key: a conversation and a whole message index (``extract.reader.whole_index``
        rejects the rest: 1.5, NaN and infinity never round onto a turn)."""
        return (f"{self.conversation} IS NOT NULL AND {self.index} IS NOT NULL"
                f" AND {self.index}::numeric = trunc({self.index}::numeric)")

    @property
    def representable(self) -> str:
        """The timestamp is finite and inside what Python and the SDK hold (a day's margin)."""
        col = self.created_at
        if self.time_format in ("epoch_seconds", "epoch_milliseconds"):
            scale = 1000 if self.time_format == "epoch_milliseconds" else 1
            return f"({col} >= {_FIRST * scale} AND {col} < {_LAST * scale})"
        if self.time_format == "iso8601":
            return f"({self.instant} >= '0001-01-02' AND {self.instant} < '9999-12-31')"
        return f"(isfinite({col}) AND {col} >= '0001-01-02' AND {col} < '9999-12-31')"

    @property
    def blank(self) -> str:
        """Both texts NULL or white space, as ``delivery.documents.build_document`` rejects a turn."""
        return " AND ".join(f"COALESCE({q(t)}::text, '') ~ '^[[:space:]]*$'"
                            for t in (self.columns.user_text, self.columns.assistant_text))

    @property
    def bucket(self) -> str:
        """The row's inventory bucket's start (NULL where its time is not representable)."""
        return (f"CASE WHEN {self.representable} THEN date_bin('{BUCKET_SECONDS} seconds',"
                f" {self.instant}, {_EPOCH}) END")

    def in_ranges(self, ranges: int) -> str:
        """The timestamp lies in one of ``ranges`` half-open ranges (``%(s<i>)s``, ``%(e<i>)s``),
        compared on the column's own type: OR-ed bounds let its index read each range alone."""
        return " OR ".join(f"({self.created_at} >= {self.bound(f's{i}')} AND {self.created_at}"
                           f" < {self.bound(f'e{i}')})" for i in range(ranges))

    def between(self, start: bool, end: bool) -> list[str]:
        """``%(start)s`` and/or ``%(end)s`` bounds on the timestamp, as conditions."""
        return ([f"{self.created_at} >= {self.bound('start')}"] if start else []) + \
            ([f"{self.created_at} < {self.bound('end')}"] if end else [])

    @property
    def row_hash(self) -> str:
        """One row's share of its bucket's fingerprint (``buckets.py``), a ``bigint``.

        A hash of each part of the row's key, seeded apart and XORed: the conversation id as
        text, the message index as a numeric (so 3 and 3.0 hash alike), and the timestamp as
        the instant it reads as (so the session's time zone prints nothing into it). NULLs
        hash as 0.
        """
        return (f"(hashtextextended(COALESCE({self.conversation}::text, ''), 1)"
                f" # COALESCE(hash_numeric_extended({self.index}::numeric, 2), 0)"
                f" # COALESCE(timestamptz_hash_extended({self.instant}, 3), 0))")

    @property
    def content_hash(self) -> str:
        """One row's share of its bucket's content fingerprint, a ``bigint``: a hash of what
        shapes its document beyond its key: both texts, the user and customer ids, the instant.

        Each field is hashed with a seed of its own and the hashes XORed, so a value moved to
        another field, or NULL against empty, never hashes alike, and no row is copied into a
        concatenated string. Also a turn's content, compared turn by turn where a bucket
        changed (``holdings/changes.py``).
        """
        c = self.columns
        parts = [c.user_text, c.assistant_text, c.user_id] + ([c.customer_id] if c.customer_id else [])
        hashes = " # ".join(f"COALESCE(hashtextextended({q(p)}::text, {11 + i}), {i + 1})"
                            for i, p in enumerate(parts))
        return (f"({hashes} # COALESCE(timestamptz_hash_extended({self.instant}, 5),"
                f" 0))")

    @property
    def too_long(self) -> str:
        """The document (frame and both texts) is longer than the limit, counted by the server,
        so a text over it never crosses the wire to the worker."""
        c = self.columns
        length = (f"(char_length(COALESCE({q(c.user_text)}::text, ''))"
                  f" + char_length(COALESCE({q(c.assistant_text)}::text, '')) + {FRAME_CHARS})")
        return f"{length} > {int(self.max_document_chars)}"

    def _order_key(self, timed: bool) -> list[str]:
        tiebreak = f"COALESCE({q(self.tiebreak)}::text, '')" if self.tiebreak else "''::text"
        # numeric, not bigint: a cast to bigint rounds 1.5 onto 2, making two turns one key.
        keys = [f"COALESCE({self.conversation}::text, '')",
                f"COALESCE({self.index}::numeric, {NULL_INDEX})", tiebreak]
        return ([self.created_at] if timed else []) + keys

    def _select(self, timed: bool) -> str:
        """The row's fields, its flags and the order key (``k0``..``k3``), before the resume."""
        c = self.columns
        key = self._order_key(timed)
        # Rows equal on the turn's key are copies of one turn at one time: the window
        # function rides on the ORDER BY's sort, so it costs no extra pass.
        repeats = (f"row_number() OVER (PARTITION BY {', '.join(key[:-1])} ORDER BY {key[-1]}) > 1"
                   if timed else "false")
        names = ["k0", "k1", "k2", "k3"][-len(key):]
        return (
            f"SELECT {self.conversation}::text, {self.index}, {q(c.user_id)}::text,"
            f" {self.customer()}, CASE WHEN {self.too_long} THEN NULL ELSE"
            f" textsend({q(c.user_text)}::text) END,"
            f" CASE WHEN {self.too_long} THEN NULL ELSE textsend({q(c.assistant_text)}::text) END,"
            f" {self.instant if timed else 'NULL::timestamptz'},"
            f" {repeats} AS repeats_earlier,"
            f" {'false' if timed else self.created_at + ' IS NOT NULL'} AS unrepresentable_time,"
            f" {self.row_hash} AS row_hash, {self.content_hash} AS content_hash,"
            f" {self.too_long} AS too_long,"
            f" {', '.join(f'{k} AS {n}' for k, n in zip(key, names))}"
            f" FROM {self.relation}")

    # -- statements --------------------------------------------------------------------------
    def window_rows(self, ranges: int, *, after: bool = False) -> str:
        """A partition's rows: half-open ranges (``%(s0)s``, ``%(e0)s``, ...), a total order;
        optionally after a position. The copy flag is computed over the whole partition,
        before the resume filter, so a resumed read flags the same rows as a first one."""
        resume = (" WHERE (k0, k1, k2, k3) > (%(a_ts)s, %(a_conv)s, %(a_idx)s::numeric, %(a_tb)s)"
                  if after else "")
        return (f"SELECT {FIELDS}, k0, k1, k2, k3 FROM ({self.scoped(ranges)._select(timed=True)}"
                f" WHERE {self.in_ranges(ranges)})"
                f" AS w({', '.join(_COLUMNS)}, k0, k1, k2, k3){resume} ORDER BY k0, k1, k2, k3")

    def untimed_rows(self, *, after: bool = False) -> str:
        """Rows without a usable timestamp (NULL, or one nobody can represent)."""
        resume = " WHERE (k1, k2, k3) > (%(a_conv)s, %(a_idx)s::numeric, %(a_tb)s)" if after else ""
        return (f"SELECT {FIELDS}, NULL, k1, k2, k3 FROM ({self._select(timed=False)}"
                f" WHERE {self.created_at} IS NULL OR NOT {self.representable})"
                f" AS w({', '.join(_COLUMNS)}, k1, k2, k3){resume} ORDER BY k1, k2, k3")

    def copies(self, start: bool, end: bool) -> str:
        """Turns held by rows at different timestamps (``%(start)s``/``%(end)s`` when bounded):
        grouped by the columns themselves (numeric equality: 3 and 3.0 are one turn)."""
        at = self.instant
        bounds = "".join(f" AND {b}" for b in self.between(start, end))
        return (f"SELECT {self.conversation}::text, {self.index}, min({at}), max({at})"
                f" FROM {self.scoped(0, start, end).relation} WHERE {self.representable}{bounds}"
                f" AND {self.conversation} IS NOT NULL AND {self.index} IS NOT NULL"
                f" GROUP BY {self.conversation}, {self.index} HAVING min({at}) < max({at})")

    def bucket_counts(self, where: str, content: bool, scope: "SourceSQL | None" = None) -> str:
        """Rows, key and (``content``) content fingerprints per bucket, in one pass. The bucket's
        number is made from its start once a group (a whole multiple of the bucket, so the
        division is exact): no instant crosses the wire."""
        contents = f"sum({self.content_hash})" if content else "NULL"
        return (f"SELECT extract(epoch FROM b)::bigint / {BUCKET_SECONDS}, n, h, c FROM"
                f" (SELECT {self.bucket} AS b, count(*) AS n, sum({self.row_hash}) AS h,"
                f" {contents} AS c FROM {(scope or self).relation}{' WHERE ' + where if where else ''}"
                f" GROUP BY 1) AS counted")

    def bucket_turns(self, where: str) -> str:
        """The keyed turns of some buckets (``where``): key, instant, content hash, blank."""
        return (f"SELECT {self.turn}, {self.instant}, {self.content_hash},"
                f" ({self.blank}) FROM {self.relation} WHERE ({where}) AND {self.representable}"
                f" AND {self.keyed} ORDER BY ({self.turn}) COLLATE \"C\"")

    def in_buckets(self) -> str:
        """The row's bucket is one of ``%(at)s`` (a scan, whatever the indexes)."""
        return (f"date_bin('{BUCKET_SECONDS} seconds', {self.instant}, {_EPOCH})"
                " = ANY(%(at)s)")

    def persons(self) -> str:
        """Every user id (trimmed) with its row count: a person is found by hash, in Python."""
        return (f"SELECT {self.user}, count(*) FROM {self.relation}"
                f" WHERE {q(self.columns.user_id)} IS NOT NULL GROUP BY 1")

    def person_turns(self) -> str:
        """The keyed turns of one user (``%s``, trimmed), with their customer."""
        return (f"SELECT DISTINCT {self.turn}, {self.customer(trimmed=True)} FROM {self.relation}"
                f" WHERE {self.user} = %s AND {self.keyed}")

    def turn_persons(self) -> str:
        """Every keyed turn with its user and customer (trimmed), in the turn's byte order."""
        return (f"SELECT {self.turn}, {self.user}, {self.customer(trimmed=True)} FROM {self.relation}"
                f" WHERE {self.keyed} ORDER BY ({self.turn}) COLLATE \"C\"")

    def conversation_scopes(self) -> str:
        """One (user, customer) per conversation of ``%s`` (a list of conversation ids)."""
        return (f"SELECT DISTINCT ON (1) {self.conversation}::text, {q(self.columns.user_id)}::text,"
                f" {self.customer()} FROM {self.relation}"
                f" WHERE {self.conversation}::text = ANY(%s)")

    # -- probes (the catalog, about the source) ---------------------------------------------
    def result_columns(self) -> str:
        """The query's result with no row: its columns' names and types, for preflight."""
        return f"SELECT * FROM {self.base} LIMIT 0"

    def shape_probes(self) -> list[tuple[str, str]]:
        """(key, a statement reading no row) for SQL the deployment declared beyond columns."""
        return []

    @staticmethod
    def type_facts() -> str:
        """Each type of ``%s`` (type oids): its oid, name as shown, and category."""
        return "SELECT t.oid, format_type(t.oid, NULL), t.typcategory FROM pg_type t WHERE t.oid = ANY(%s)"

    @staticmethod
    def database() -> str:
        return "SELECT current_database()"

    def relation_oid(self) -> tuple[str, tuple[str]]:
        return "SELECT to_regclass(%s)::oid", (self.base,)

    @staticmethod
    def relation_facts() -> str:
        """Of ``%s`` (the relation's oid): its name as the database gives it, whether the
        connection may SELECT it."""
        return ("SELECT format('%%s.%%s.%%s', current_database(), n.nspname, c.relname),"
                " has_table_privilege(c.oid, 'SELECT')"
                " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = %s")

    @staticmethod
    def relation_columns() -> str:
        """Of ``%s`` (the relation's oid): each column's name, type as shown, and category."""
        return ("SELECT a.attname, format_type(a.atttypid, a.atttypmod), t.typcategory"
                " FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid"
                " WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped")

    @staticmethod
    def readable_relations() -> str:
        """The relations of schema ``%s`` (empty: the search_path), for a typo's suggestion."""
        return ("SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid ="
                " c.relnamespace WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND (CASE WHEN %s = ''"
                " THEN n.nspname = ANY(current_schemas(false)) ELSE n.nspname = %s END)")

    def unique_turns(self) -> tuple[str, tuple[str, list[str], str]]:
        """A unique index on the turn's key column, alone or with the conversation: no copies."""
        key = self.message_key or self.columns.message_index
        return ("SELECT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = to_regclass(%s)"
                " AND i.indisunique AND i.indpred IS NULL AND i.indnkeyatts <= 2"
                " AND (SELECT array_agg(a.attname::text) FROM pg_attribute a"
                "      WHERE a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey[0:1]))"
                "     <@ %s::text[] AND %s = ANY (SELECT a.attname::text FROM pg_attribute a"
                "      WHERE a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey[0:1])))",
                (self.base, [self.columns.conversation_id, key], key))

    def timestamp_index(self) -> tuple[str, tuple[str, str]]:
        """Whether an index leads with the timestamp column, for a table or materialized view."""
        return ("SELECT c.relkind IN ('r', 'p', 'm'), EXISTS (SELECT 1 FROM pg_index i"
                " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]"
                " WHERE i.indrelid = c.oid AND a.attname = %s)"
                " FROM pg_class c WHERE c.oid = to_regclass(%s)",
                (self.columns.created_at, self.base))

    def index_hint(self) -> str:
        """The statement that gives the timestamp an index (said, never run)."""
        return f"CREATE INDEX CONCURRENTLY ON {self.base} ({self.created_at})"
