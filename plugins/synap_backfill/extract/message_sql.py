"""A message table's SQL: the same statements as ``source_sql``, over its turns.

``MessageSQL`` is a ``SourceSQL`` whose relation is the message table's turns, made
in SQL by one rule, so every statement (planning, windows, changes, erase, undo)
reads the same turns:

* A message is a row the ``filter`` keeps whose role is one of ``user_roles`` or
  ``assistant_roles``; any other role is skipped (counted by ``skipped_messages``).
* In each conversation, in order of time then message key, **each user message
  starts a turn**, named by its message key and timed by its own ``created_at``:
  the turn's document id and time never depend on another message.
* The assistant messages after it, up to the next user message and less than
  ``reply_within_seconds`` after it, are its replies, joined in order. A reply
  later than that, or one before any user message of its conversation (a
  greeting), belongs to no turn: skipped, counted by reason (one reason for both).
* Consecutive user messages are turns of their own (the first has no reply): a
  rule that merged them would need the whole conversation to place a message.
* A message without a usable time is a turn alone, and rejected for its time.

Every turn lies within ``reply_within_seconds`` (``H``) of its user message, so a
window ``[s, e)`` reads its turns from the messages in ``[s, e + H)`` alone: the
look-ahead holds the replies of its last turns. Counting skipped messages also looks
back ``H`` (whether a reply near ``s`` had its question before it). The range
predicate is on the message table's own ``created_at``, in its own type, so its
index serves: a window reads each of its messages about ``1 + H / window`` times.
A statement over the whole table reads it once (``msgs``, kept by PostgreSQL where
a statement uses it twice).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from synap_backfill.common.config import SourceColumns
from synap_backfill.common.db import quote_identifier as q
from synap_backfill.common.grain import MessageGrain
from synap_backfill.extract.source_sql import SourceSQL, literal

# The turns' columns, as a table of the recipe's shape names them.
TURN_COLUMNS = SourceColumns("user_id", "customer_id", "conversation_id", "message_index",
                             "user_text", "assistant_text", "created_at")
SKIPPED_ROLE = "role is neither the user's nor the assistant's"
# A greeting before any question, or a reply later than the bound: which of the two a scope
# cannot always tell (the question may lie before it), so they are one reason.
SKIPPED_UNASKED = "assistant message with no user message in the reply_within_seconds before it"


@dataclass(frozen=True)
class MessageSQL(SourceSQL):
    """``messages``: the message table as declared (relation or query, its columns, key,
    time format); ``grain``: its roles, texts, filter and reply bound; ``scope``: what a
    statement reads, ``(ranges, start, end)`` as in ``SourceSQL.scoped`` (None: all)."""

    messages: SourceSQL | None = None
    grain: MessageGrain | None = None
    scope: tuple[int, bool, bool] | None = None

    @classmethod
    def over(cls, messages: SourceSQL, grain: MessageGrain) -> "MessageSQL":
        columns = replace(TURN_COLUMNS, customer_id="customer_id" if messages.columns.customer_id
                          else "")
        return cls(messages.table, columns, None, messages.max_document_chars, messages.query,
                   messages.time_format, messages=messages, grain=grain)

    def scoped(self, ranges: int = 0, start: bool = False, end: bool = False) -> "MessageSQL":
        return replace(self, scope=(ranges, start, end))

    @property
    def _m(self) -> SourceSQL:
        assert self.messages is not None
        return self.messages

    @property
    def _g(self) -> MessageGrain:
        assert self.grain is not None
        return self.grain

    # -- the message row ------------------------------------------------------------------
    def _json(self, column: str, path: str | None, first: bool) -> str:
        col = q(column)
        if not path:
            return f"{col}::text"
        if first:
            return f"(jsonb_path_query_first({col}::jsonb, {literal(path)}::jsonpath) #>> '{{}}')"
        return (f"(SELECT string_agg(v #>> '{{}}', E'\\n' ORDER BY o) FROM jsonb_path_query("
                f"{col}::jsonb, {literal(path)}::jsonpath) WITH ORDINALITY AS p(v, o))")

    @property
    def asks(self) -> str:
        """true for a user message, false for an assistant's, NULL for any other role."""
        g = self._g
        role = self._json(g.role_column, g.role_path, first=True)
        values = lambda roles: ", ".join(literal(r) for r in roles)  # noqa: E731
        return (f"(CASE WHEN {role} IN ({values(g.user_roles)}) THEN true"
                f" WHEN {role} IN ({values(g.assistant_roles)}) THEN false END)")

    @property
    def body(self) -> str:
        g = self._g
        return self._json(g.text_column, g.text_path, first=False)

    def _message_fields(self) -> str:
        m = self._m
        # The text only of a message: an event log's other rows need not hold JSON.
        return (f"{m.conversation}::text AS conv, {m.index} AS idx, {q(m.columns.user_id)}::text"
                f" AS uid, {m.customer()} AS cid, {self.asks} AS asks, CASE WHEN {self.asks}"
                f" IS NOT NULL THEN {self.body} END AS body, {m.created_at} AS ts")

    def _kept(self) -> str:
        g = self._g
        return f" AND ({g.filter})" if g.filter else ""

    def _reach(self, back: bool) -> str:
        """What a scoped statement reads: its ranges (or bounds) on the message table's own time
        column, widened after each by the reply bound (the replies of its last turns) and, with
        ``back``, before each (whether a reply near its start had its question)."""
        if self.scope is None:
            return ""
        ranges, start, end = self.scope
        m, h = self._m, self._g.reply_within_seconds
        before = -h if back else 0
        if ranges:
            return " AND (" + " OR ".join(
                f"({m.created_at} >= {m.bound(f's{i}', before)} AND {m.created_at}"
                f" < {m.bound(f'e{i}', h)})" for i in range(ranges)) + ")"
        return "".join([f" AND {m.created_at} >= {m.bound('start', before)}"] if start else []) + \
            "".join([f" AND {m.created_at} < {m.bound('end', h)}"] if end else [])

    def _messages(self, back: bool = False) -> str:
        """``msgs``: the rows the filter keeps, read once (a statement that uses it twice makes
        PostgreSQL keep it, not read the table again): fields, a usable time, its instant."""
        m = self._m
        timed = f"({m.created_at} IS NOT NULL AND {m.representable})"
        return (f"WITH msgs AS (SELECT {self._message_fields()}, {timed} AS timed,"
                f" CASE WHEN {timed} THEN {m.instant} END AS at FROM {m.base}"
                f" WHERE true{self._kept()}{self._reach(back)})")

    @property
    def _ordered(self) -> str:
        """Timed messages with their place: ``n`` the user messages so far in the conversation
        (the turn they belong to), ``asked`` the time of the last one."""
        return ("SELECT *, count(*) FILTER (WHERE asks) OVER w AS n,"
                " max(at) FILTER (WHERE asks) OVER w AS asked FROM msgs"
                " WHERE timed AND asks IS NOT NULL"
                " WINDOW w AS (PARTITION BY conv ORDER BY at, idx ROWS UNBOUNDED PRECEDING)")

    @property
    def _late(self) -> str:
        h = self._g.reply_within_seconds
        return f"at >= asked + interval '{h} seconds'"

    # -- the turns --------------------------------------------------------------------------
    @property
    def relation(self) -> str:
        """The turns, with the recipe's columns; untimed messages too unless scoped."""
        cust = ", cid AS customer_id" if self.columns.customer_id else ""
        asked = lambda field: f"max({field}) FILTER (WHERE asks)"  # noqa: E731 (one per turn)
        turns = (f"SELECT conv AS conversation_id, {asked('idx')} AS message_index,"
                 f" {asked('uid')} AS user_id, {asked('cid')} AS cid, {asked('body')} AS user_text,"
                 f" string_agg(body, E'\\n' ORDER BY at, idx) FILTER (WHERE NOT asks AND NOT"
                 f" ({self._late})) AS assistant_text, {asked('ts')} AS created_at"
                 f" FROM ({self._ordered}) AS ordered WHERE n > 0 GROUP BY conv, n")
        if self.scope is None:
            turns += (" UNION ALL SELECT conv, idx, uid, cid, CASE WHEN asks THEN body END,"
                      " CASE WHEN NOT asks THEN body END, ts FROM msgs"
                      " WHERE NOT timed AND asks IS NOT NULL")
        return (f"({self._messages()} SELECT conversation_id, message_index, user_id{cust},"
                f" user_text, assistant_text, created_at FROM ({turns}) AS made) AS turns")

    def skipped_messages(self) -> str:
        """Messages of the scope that make no turn's text, by reason (each counted once, in the
        range its own time lies in): ``(reason, count)``. One read of the table."""
        m = self._m
        _, start, end = self.scope or (0, False, False)
        own = "".join([f" AND ts >= {m.bound('start')}"] if start else []) + \
            "".join([f" AND ts < {m.bound('end')}"] if end else [])
        return (f"{self._messages(back=True)} SELECT {literal(SKIPPED_UNASKED)}, count(*)"
                f" FROM ({self._ordered}) AS ordered WHERE NOT asks AND (n = 0 OR {self._late})"
                f"{own} GROUP BY 1 UNION ALL SELECT {literal(SKIPPED_ROLE)}, count(*) FROM msgs"
                f" WHERE asks IS NULL{own} HAVING count(*) > 0")

    # -- probes: the message table's own ---------------------------------------------------
    def shape_probes(self) -> list[tuple[str, str]]:
        """(key, a statement reading no row) for each declared piece of SQL: PostgreSQL parses
        a path or a filter it cannot run before any row is read."""
        g, base = self._g, self._m.base
        probes = [("messages.role_path" if g.role_path else "messages.role_column",
                   f"SELECT {self.asks} FROM {base} LIMIT 0"),
                  ("messages.text_path" if g.text_path else "messages.text_column",
                   f"SELECT {self.body} FROM {base} LIMIT 0")]
        if g.filter:
            probes.append(("messages.filter", f"SELECT 1 FROM {base} WHERE ({g.filter}) LIMIT 0"))
        return probes

    def unique_turns(self) -> tuple[str, tuple[str, list[str], str]]:
        return self._m.unique_turns()

    def timestamp_index(self) -> tuple[str, tuple[str, str]]:
        return self._m.timestamp_index()

    def index_hint(self) -> str:
        return self._m.index_hint()
