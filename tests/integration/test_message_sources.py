"""Apps' own schemas, one row per message, declared as operating.md's "Your app's schema" says,
backfilled without a view: every turn stored once with its text, ids and original time.

Through dag.test() with the real SDK, embedded PostgreSQL and the local API in its default
(contract-only) mode. The turns each test expects are made here, in Python, by the rule
``extract/message_sql.py`` states, from the messages the test wrote: never read back from
the SQL under test.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable
from zoneinfo import ZoneInfo

import pytest

from include import local_airflow
from synap_backfill.common.frame import frame
from synap_backfill.common.ids import conversation_uuid
from tests.integration.synap_memories import live_documents, memories

pytestmark = pytest.mark.integration
UTC = timezone.utc
FAST = {"requests_per_minute": 0}
T0 = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)
REPLY_WITHIN = 3600


@dataclass
class Message:
    key: Any
    conversation: Any
    role: str  # "user", "assistant", or anything else (skipped)
    text: str
    at: datetime
    user: str
    kept: bool = True  # the declared filter keeps it (an agent's private note does not)


@dataclass
class Turn:
    key: Any
    conversation: Any
    user_text: str
    replies: list[str] = field(default_factory=list)
    at: datetime | None = None
    user: str = ""


def conversations(n: int, seed: int, key: Callable[[int], Any], conversation: Callable[[int], Any],
                  days: int = 6) -> list[Message]:
    """``n`` conversations of every case the rule names: a greeting before the first question,
    several replies, a system row between them, two questions in a row, a reply after the
    bound, an agent's private note."""
    out: list[Message] = []
    k = 0
    for c in range(n):
        at = T0 + timedelta(hours=(c * 37 + seed) % (24 * days))
        script = [("assistant", "Hi, how can I help?"), ("user", f"my plan is basic-{c}"),
                  ("assistant", f"noted basic-{c}"), ("system", "tool call"),
                  ("assistant", "anything else?"), ("note", "private: check billing"),
                  ("user", "also"), ("user", f"I live in city-{c % 7}"),
                  ("assistant", f"city-{c % 7} it is")]
        if c % 4 == 0:
            script.append(("late", "sorry for the wait"))
        for step, (role, text) in enumerate(script):
            k += 1
            when = at + (timedelta(seconds=20 * step) if role != "late" else timedelta(hours=3))
            out.append(Message(key(k), conversation(c), {"late": "assistant", "note": "assistant"}
                               .get(role, role), text, when, f"user-{c % 5}", kept=role != "note"))
    return out


def expected_turns(messages: list[Message]) -> list[Turn]:
    """The rule, in Python: each user message a turn; the assistant messages after it, before
    the next user message and within the bound, its replies, in order."""
    turns: list[Turn] = []
    by_conversation: dict[Any, list[Message]] = {}
    for m in messages:
        if m.kept and m.role in ("user", "assistant"):
            by_conversation.setdefault(m.conversation, []).append(m)
    for conv, ms in by_conversation.items():
        current: Turn | None = None
        for m in sorted(ms, key=lambda m: m.at):
            if m.role == "user":
                current = Turn(m.key, conv, m.text, [], m.at, m.user)
                turns.append(current)
            elif current is not None and m.at < current.at + timedelta(seconds=REPLY_WITHIN):
                current.replies.append(m.text)
    return turns


def skipped(messages: list[Message]) -> dict[str, int]:
    kept = [m for m in messages if m.kept]
    roles = sum(1 for m in kept if m.role not in ("user", "assistant"))
    replies = sum(len(t.replies) for t in expected_turns(messages))
    assistants = sum(1 for m in kept if m.role == "assistant")
    return {"role is neither the user's nor the assistant's": roles,
            "assistant message with no user message in the reply_within_seconds before it":
                assistants - replies}


def number_of(key: Any) -> int:
    """The whole number a message key names its turn by (``common.ids.message_key_sql``)."""
    text = str(key)
    if text.lstrip("-").isdigit() and len(text.lstrip("-")) <= 18:
        return int(text)
    return int(hashlib.md5(text.encode()).hexdigest()[:15], 16)


def assert_stored_exactly(stored: list[dict], turns: list[Turn], conversation_id: Callable[[Any], str],
                          customer: str | None = None) -> None:
    got = {d["document_id"]: d for d in stored}
    want = {f"backfill:{conversation_id(t.conversation)}:{number_of(t.key)}": t for t in turns}
    assert set(got) == set(want)
    for doc_id, turn in want.items():
        doc = got[doc_id]
        assert doc["document"] == frame(turn.user_text, "\n".join(turn.replies))
        assert datetime.fromisoformat(doc["document_created_at"]) == turn.at  # to the microsecond
        assert doc["user_id"] == turn.user
        assert doc["metadata"]["conversation_id"] == conversation_id(turn.conversation)
        if customer is not None:
            assert doc["customer_id"] == customer


def result(dag_run: Any, task: str = "summarize") -> dict:
    assert str(dag_run.state) == "success"
    (value,) = local_airflow.task_results(dag_run, task)
    return value


def insert(pg: Any, ddl: list[str], statement: str, rows: list[tuple]) -> None:
    with pg.connect() as conn:
        for sql in ddl:
            conn.execute(sql)
        with conn.cursor() as cur:
            cur.executemany(statement, rows)


# -- a message table with a role column ------------------------------------------------------
SUPPORT = {"source_table": "support_messages", "conversation_id_column": "conversation_id",
           "user_id_column": "author", "customer_id_column": "tenant",
           "created_at_column": "created_at", "message_key_column": "id",
           "messages": {"role_column": "role", "text_column": "content",
                        "filter": "NOT internal", "reply_within_seconds": REPLY_WITHIN},
           "ledger_schema": "msg_support", "max_rows_per_partition": 25,
           "min_rows_per_partition": 1}


def test_a_message_table_with_a_role_column_is_backfilled_once_and_one_deleted_reply_touches_its_turn(
        local_pg, run_backfill, stored_documents, synap):
    messages = conversations(24, seed=3, key=lambda k: uuid.UUID(int=k), conversation=lambda c:
                             uuid.UUID(int=10_000 + c))
    insert(local_pg, ["DROP TABLE IF EXISTS support_messages",
                      "CREATE TABLE support_messages (id uuid PRIMARY KEY, conversation_id uuid,"
                      " author text, tenant text, role text, content text, created_at timestamptz,"
                      " internal boolean)", "CREATE INDEX ON support_messages (created_at)"],
           "INSERT INTO support_messages VALUES (%s,%s,%s,%s,%s,%s,%s,%s)",
           [(m.key, m.conversation, m.user, "acme", m.role if m.role != "system" else "system",
             m.text, m.at, not m.kept) for m in messages])
    turns = expected_turns(messages)
    first = run_backfill(synap_extra=FAST, **SUPPORT)
    summary = result(first)
    assert (summary["rows_read"], summary["ingested"], summary["rejected"]) == (len(turns), len(turns), 0)
    assert summary["skipped_messages"] == skipped(messages)
    assert_stored_exactly(stored_documents(), turns, str, customer="acme")

    # Nothing changed: nothing read, nothing sent.
    again = result(run_backfill(synap_extra=FAST, **SUPPORT))
    assert (again["rows_read"], again["ingested"]) == (0, 0)

    # The app deletes one reply: exactly its turn is replaced, no other turn is touched.
    victim = next(t for t in turns if len(t.replies) == 2)
    gone = next(m for m in messages if m.text == victim.replies[1] and m.conversation ==
                victim.conversation and m.role == "assistant")
    with local_pg.connect() as conn:
        conn.execute("DELETE FROM support_messages WHERE id = %s", (gone.key,))
    before = {d["document_id"]: d for d in stored_documents()}
    applied = result(run_backfill(synap_extra=FAST, apply_source_changes="apply", **SUPPORT))
    assert applied["ingested"] == 1
    doc_id = f"backfill:{victim.conversation}:{number_of(victim.key)}"
    new = {d["document_id"]: d for d in stored_documents()}
    assert set(new) - set(before) == {doc_id + ":u1"}
    assert new[doc_id + ":u1"]["document"] == frame(victim.user_text, victim.replies[0])
    assert set(synap.get("/_local/stats")["memory_deletes"]) == memories(before[doc_id])

    # An undo of the first run deletes the memories of its documents and nothing else: the
    # apply run's replacement lives on.
    undone = result(local_airflow.run_dag("synap_undo", {"run_id": first.run_id,
                                                         "dry_run": False}), "summarize_undo")
    assert undone["documents"] == len(turns) and undone["failed"] == {}
    assert list(live_documents(synap)) == [f"{victim.conversation}:{number_of(victim.key)}"]
    assert [d["document_id"] for d in live_documents(synap)[
        f"{victim.conversation}:{number_of(victim.key)}"]] == [doc_id + ":u1"]


@pytest.mark.parametrize("synap", [("--tenant", "local-dev-key::b2c")], indirect=True,
                         ids=["b2c"])
def test_a_person_is_erased_from_a_message_table_and_held_back_from_its_next_runs(
        local_pg, run_backfill, stored_documents, synap, monkeypatch):
    messages = conversations(15, seed=5, key=lambda k: 1000 + k, conversation=lambda c: c)
    insert(local_pg, ["DROP TABLE IF EXISTS erase_messages",
                      "CREATE TABLE erase_messages (id int PRIMARY KEY, chat int, author text,"
                      " role text, content text, created_at timestamptz)"],
           "INSERT INTO erase_messages VALUES (%s,%s,%s,%s,%s,%s)",
           [(m.key, m.conversation, m.user, m.role, m.text, m.at) for m in messages if m.kept])
    monkeypatch.setenv("AIRFLOW_CONN_SYNAP_PERSON_KEY", json.dumps(
        {"conn_type": "generic", "password": "a-long-random-person-key-for-tests"}))
    shape = {"source_table": "erase_messages", "conversation_id_column": "chat",
             "user_id_column": "author", "customer_id_column": "", "created_at_column": "created_at",
             "conversation_ids": "any", "message_key_column": "id", "ledger_schema": "msg_erase",
             "messages": {"role_column": "role", "text_column": "content"}}
    turns = expected_turns([m for m in messages if m.kept])
    assert result(run_backfill(synap_extra=FAST, **shape))["ingested"] == len(turns)
    theirs = [t for t in turns if t.user == "user-1"]
    assert theirs and len(theirs) < len(turns)

    erased = result(local_airflow.run_dag("synap_erase", {"user_id": "user-1", "dry_run": False,
                                                          "ledger_schema": "msg_erase"}),
                    "summarize_erase")
    assert (erased["documents"], erased["problems"]) == (len(theirs), [])
    assert live_documents(synap, "user-1") == {}
    assert len(live_documents(synap)) == len(turns) - len(theirs)
    again = result(run_backfill(synap_extra=FAST, resend_unchanged=True, **shape))
    assert (again["suppressed"], again["ingested"] + again["duplicates"]) == (
        len(theirs), len(turns) - len(theirs))


# -- the same backfill, whatever the app's shape -------------------------------------------
@dataclass(frozen=True)
class Shape:
    """How one app stores its messages, and the declaration that reads it."""

    name: str
    tables: list[str]
    statement: str
    row: Callable[[Message], tuple]
    declared: dict[str, Any]
    key: Callable[[int], Any]
    conversation: Callable[[int], Any]
    conversation_id: Callable[[Any], str] = str
    user: Callable[[Any], str] | None = None  # the user id, where it is not the generator's
    extra: Callable[[list[Message]], tuple[str, list[tuple]]] | None = None


BERLIN = ZoneInfo("Europe/Berlin")
LANGCHAIN_TYPES = {"user": "human", "assistant": "ai"}
SHAPES = [
    # LangChain's message store: a JSON message, integer session ids, a serial key, epoch
    # milliseconds; the user is on the session's row (a declared join).
    Shape("json-message-epoch-ms-user-on-the-conversation",
          ["CREATE TABLE lc_sessions (session_id int PRIMARY KEY, owner text)",
           "CREATE TABLE lc_messages (id bigint PRIMARY KEY, session_id int, message jsonb,"
           " created_ms bigint)", "CREATE INDEX ON lc_messages (created_ms)"],
          "INSERT INTO lc_messages VALUES (%s,%s,%s,%s)",
          lambda m: (m.key, m.conversation, json.dumps(
              {"type": LANGCHAIN_TYPES.get(m.role, m.role), "data": {"content": m.text}}),
                     int(m.at.timestamp() * 1000)),
          {"source_table": "lc_turns", "source_query":
              "SELECT m.*, s.owner FROM lc_messages m JOIN lc_sessions s USING (session_id)",
           "conversation_id_column": "session_id", "user_id_column": "owner",
           "customer_id_column": "", "created_at_column": "created_ms",
           "created_at_format": "epoch_milliseconds", "conversation_ids": "any",
           "message_key_column": "id",
           "messages": {"role_column": "message", "role_path": "$.type", "user_roles": ["human"],
                        "assistant_roles": ["ai"], "text_column": "message",
                        "text_path": "$.data.content"}},
          key=lambda k: k, conversation=lambda c: 500 + c,
          conversation_id=lambda c: conversation_uuid(str(c)),
          extra=lambda ms: ("INSERT INTO lc_sessions VALUES (%s,%s) ON CONFLICT DO NOTHING",
                            sorted({(m.conversation, m.user) for m in ms}))),
    # Vercel's AI chatbot: an array of parts (text among reasoning and tool parts), text ids,
    # a naive timestamp in the app's zone, the user on the chat's row.
    Shape("parts-array-naive-time-text-ids",
          ["CREATE TABLE ai_chats (id text PRIMARY KEY, user_id text)",
           "CREATE TABLE ai_messages (id text PRIMARY KEY, chat_id text, role text, parts jsonb,"
           " created_at timestamp)", "CREATE INDEX ON ai_messages (created_at)"],
          "INSERT INTO ai_messages VALUES (%s,%s,%s,%s,%s)",
          lambda m: (m.key, m.conversation, m.role, json.dumps(
              [{"type": "reasoning", "text": "thinking"}, {"type": "text", "text": m.text},
               {"type": "tool-weather", "input": {}}]),
                     m.at.astimezone(BERLIN).replace(tzinfo=None)),
          {"source_table": "ai_turns", "source_query":
              "SELECT m.*, c.user_id FROM ai_messages m JOIN ai_chats c ON c.id = m.chat_id",
           "conversation_id_column": "chat_id", "user_id_column": "user_id",
           "customer_id_column": "", "created_at_column": "created_at",
           "source_timezone": "Europe/Berlin", "conversation_ids": "any",
           "message_key_column": "id",
           "messages": {"role_column": "role", "text_column": "parts",
                        "text_path": '$[*] ? (@.type == "text").text'}},
          key=lambda k: f"msg_{k:05d}", conversation=lambda c: f"chat-{c}",
          conversation_id=lambda c: conversation_uuid(str(c)),
          extra=lambda ms: ("INSERT INTO ai_chats VALUES (%s,%s) ON CONFLICT DO NOTHING",
                            sorted({(m.conversation, m.user) for m in ms}))),
    # An event log (Rasa's tracker): the text inside JSON held as text, which other events'
    # rows do not hold; epoch seconds as a float; the sender is the conversation and the user.
    Shape("event-log-json-text-float-epoch-seconds",
          ["CREATE TABLE events (id serial PRIMARY KEY, sender_id text, type_name text,"
           " timestamp double precision, data text)", "CREATE INDEX ON events (timestamp)"],
          "INSERT INTO events VALUES (%s,%s,%s,%s,%s)",
          lambda m: (m.key, m.conversation, {"user": "user", "assistant": "bot"}.get(m.role, "action"),
                     m.at.timestamp(), json.dumps({"text": m.text}) if m.role in (
                         "user", "assistant") else "<not json>"),
          {"source_table": "events", "conversation_id_column": "sender_id",
           "user_id_column": "sender_id", "customer_id_column": "", "created_at_column": "timestamp",
           "created_at_format": "epoch_seconds", "conversation_ids": "any",
           "message_key_column": "id",
           "messages": {"role_column": "type_name", "user_roles": ["user"], "assistant_roles": ["bot"],
                        "text_column": "data", "text_path": "$.text"}},
          key=lambda k: k, conversation=lambda c: f"sender-{c}",
          conversation_id=lambda c: conversation_uuid(str(c)), user=str),
    # ISO-8601 text times, integer roles (0 the user's, 1 the assistant's, 2 anything else).
    Shape("iso-text-times-integer-roles",
          ["CREATE TABLE desk (id serial PRIMARY KEY, ticket uuid, who text, author_type int,"
           " message text, sent_at text)", "CREATE INDEX ON desk (sent_at)"],
          "INSERT INTO desk VALUES (%s,%s,%s,%s,%s,%s)",
          lambda m: (m.key, m.conversation, m.user, {"user": 0, "assistant": 1}.get(m.role, 2),
                     m.text, m.at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")),
          {"source_table": "desk", "conversation_id_column": "ticket", "user_id_column": "who",
           "customer_id_column": "", "created_at_column": "sent_at",
           "created_at_format": "iso8601", "message_key_column": "id",
           "messages": {"role_column": "author_type", "user_roles": [0], "assistant_roles": [1],
                        "text_column": "message"}},
          key=lambda k: k, conversation=lambda c: uuid.UUID(int=5 << 64 | c)),
]


@pytest.mark.parametrize("synap", [("--tenant", "local-dev-key::b2c")], indirect=True,
                         ids=["b2c"])  # apps without customers: a B2C instance
@pytest.mark.parametrize("shape", SHAPES, ids=[s.name for s in SHAPES])
def test_each_documented_shape_is_backfilled_exactly_without_a_view(
        shape, synap, local_pg, run_backfill, stored_documents):
    messages = [m for m in conversations(12, seed=len(shape.name), key=shape.key,
                                         conversation=shape.conversation) if m.kept]
    if shape.user is not None:
        for m in messages:
            m.user = shape.user(m.conversation)
    tables = [t.split("(")[0].split()[-1] for t in shape.tables if t.startswith("CREATE TABLE")]
    insert(local_pg, [f"DROP TABLE IF EXISTS {t} CASCADE" for t in tables] + shape.tables,
           shape.statement, [shape.row(m) for m in messages])
    if shape.extra:
        insert(local_pg, [], *shape.extra(messages))
    turns = expected_turns(messages)
    summary = result(run_backfill(synap_extra=FAST, ledger_schema=f"msg_{len(shape.name)}",
                                  max_rows_per_partition=10, min_rows_per_partition=1,
                                  **shape.declared))
    assert (summary["rows_read"], summary["ingested"], summary["rejected"]) == (
        len(turns), len(turns), 0)
    assert summary["skipped_messages"] == {k: v for k, v in skipped(messages).items() if v}
    assert_stored_exactly(stored_documents(), turns, shape.conversation_id)


@pytest.mark.parametrize("created_at_format, column, value", [
    ("timestamp", "timestamptz", "{t}"),
    ("epoch_milliseconds", "bigint", "(extract(epoch FROM {t}) * 1000)::bigint"),
    ("iso8601", "text", "to_char({t} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")])
def test_a_windows_range_reaches_the_message_tables_time_index_in_the_columns_own_type(
        local_pg, created_at_format, column, value):
    """The window's statement reads the message table through its index on the time column:
    the bounds are converted to the column's type, never the column to theirs."""
    from synap_backfill.common.config import BackfillConfig
    from synap_backfill.extract import sources

    table = f"indexed_{created_at_format}"
    at = value.format(t="(%s::timestamptz + i * interval '10 seconds')")
    with local_pg.connect() as conn:
        conn.execute(f"DROP TABLE IF EXISTS {table}")
        conn.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, conv uuid, who text, role text,"
                     f" body text, at {column})")
        conn.execute(f"INSERT INTO {table} SELECT i, md5((i / 6)::text)::uuid, 'u', CASE WHEN"
                     f" mod(i, 2) = 0 THEN 'user' ELSE 'assistant' END, 'x', {at}"
                     f" FROM generate_series(1, 200000) AS i", (T0,))
        conn.execute(f"CREATE INDEX {table}_at ON {table} (at)")
        conn.execute(f"ANALYZE {table}")
    config = BackfillConfig.from_params({
        "source_table": table, "conversation_id_column": "conv", "user_id_column": "who",
        "customer_id_column": "", "created_at_column": "at", "created_at_format": created_at_format,
        "message_key_column": "id", "messages": {"role_column": "role", "text_column": "body"}})
    day = {"s0": T0 + timedelta(days=3), "e0": T0 + timedelta(days=4)}
    with local_pg.connect() as conn:
        plan = "\n".join(r[0] for r in conn.execute(
            "EXPLAIN " + sources.turns(config).window_rows(1), day))
        read = conn.execute(f"SELECT count(*) FROM ({sources.turns(config).window_rows(1)}) AS w",
                            day).fetchone()[0]
    assert f"{table}_at" in plan and "Seq Scan" not in plan, plan
    assert read == 8640 // 2  # a day of messages every 10 s: half of them questions


@pytest.mark.parametrize("synap", [("--tenant", "local-dev-key::b2c")], indirect=True,
                         ids=["b2c"])
def test_a_turn_table_without_a_position_column_is_read_by_its_key_and_one_deleted_turn_touches_only_it(
        local_pg, run_backfill, stored_documents, synap):
    """The recipe's shape, the question and the answer on one row, but no message_index: the
    row's own key (a uuid) names the turn, and integer conversation ids are taken."""
    rows = [(uuid.UUID(int=k), k // 5, f"user-{k % 3}", f"question {k}", f"answer {k}",
             T0 + timedelta(minutes=7 * k)) for k in range(1, 61)]
    insert(local_pg, ["DROP TABLE IF EXISTS qa_rows",
                      "CREATE TABLE qa_rows (id uuid PRIMARY KEY, thread int, who text, question"
                      " text, answer text, asked_at timestamptz)"],
           "INSERT INTO qa_rows VALUES (%s,%s,%s,%s,%s,%s)", rows)
    shape = {"source_table": "qa_rows", "conversation_id_column": "thread",
             "user_id_column": "who", "customer_id_column": "", "user_text_column": "question",
             "assistant_text_column": "answer", "created_at_column": "asked_at",
             "message_key_column": "id", "conversation_ids": "any", "ledger_schema": "msg_qa"}
    assert result(run_backfill(synap_extra=FAST, **shape))["ingested"] == len(rows)
    want = {f"backfill:{conversation_uuid(str(t))}:{number_of(k)}": frame(q, a)
            for k, t, _, q, a, _ in rows}
    assert {d["document_id"]: d["document"] for d in stored_documents()} == want

    # The app deletes the first turn of a conversation: no other turn is renamed or resent.
    with local_pg.connect() as conn:
        conn.execute("DELETE FROM qa_rows WHERE id = %s", (rows[5][0],))
    applied = result(run_backfill(synap_extra=FAST, apply_source_changes="apply", **shape))
    assert (applied["ingested"], applied["source_changes"]["deleted"]) == (0, 1)
    gone = f"backfill:{conversation_uuid(str(rows[5][1]))}:{number_of(rows[5][0])}"
    assert set(synap.get("/_local/stats")["memory_deletes"]) == memories(
        next(d for d in stored_documents() if d["document_id"] == gone))


BAD_SHAPES = [
    ({"messages": {"role_column": "rol", "text_column": "content"}},
     "param 'messages.role_column': bad_messages has no column 'rol' (did you mean 'role'?)"),
    ({"messages": {"role_column": "role", "text_column": "content", "text_path": "$.data["}},
     "param 'messages.text_path': PostgreSQL refused it"),
    ({"messages": {"role_column": "role", "text_column": "content", "filter": "NOT hidden"}},
     "param 'messages.filter': PostgreSQL refused it"),
    ({"created_at_format": "epoch_seconds"},
     "param 'created_at_column': column 'created_at' of bad_messages is timestamp with time zone,"
     " not a number (epoch seconds)"),
    ]


@pytest.mark.parametrize("change, failure", BAD_SHAPES, ids=[f[1].split("'")[1]
                                                             for f in BAD_SHAPES])
def test_a_misdeclared_message_table_is_refused_in_one_line_naming_its_key_before_any_read(
        local_pg, synap, use_connections, change, failure):
    from synap_backfill.airflow.backfill.resolve import resolve_config
    from synap_backfill.common.source import SourceDeclaration

    insert(local_pg, ["DROP TABLE IF EXISTS bad_messages",
                      "CREATE TABLE bad_messages (id int PRIMARY KEY, chat uuid, author text,"
                      " tenant text, role text, content text, created_at timestamptz)"],
           "INSERT INTO bad_messages VALUES (%s,%s,%s,%s,%s,%s,%s)", [])
    use_connections()
    declared = {"source_table": "bad_messages", "conversation_id_column": "chat",
                "user_id_column": "author", "customer_id_column": "tenant",
                "message_key_column": "id",
                "messages": {"role_column": "role", "text_column": "content"}, **change}
    with pytest.raises(Exception) as refused:
        resolve_config({}, conf={}, declared=SourceDeclaration.of("the test", **declared))
    assert str(refused.value).startswith(failure) and "\n" not in str(refused.value)


def test_a_redacted_message_table_replays_as_declared_and_a_blanked_column_deletes_nothing(
        airflow_db, local_pg, synap, use_connections, declare, tmp_path, monkeypatch,
        stored_documents):
    """The one declaration read the same way by a region's replay (started with no conf), with
    redaction; then a migration that blanks the message text is refused before any delete."""
    from include.synap_local.process import running_synap
    from tests.conftest import read_store

    messages = [m for m in conversations(10, seed=9, key=lambda k: uuid.UUID(int=3 << 64 | k),
                                         conversation=lambda c: uuid.UUID(int=4 << 64 | c))
                if m.kept]
    for m in messages:
        if m.role == "user" and m.text.startswith("my plan"):
            m.text += f" (write to person{m.conversation.int % 100}@example.com)"
    insert(local_pg, ["DROP TABLE IF EXISTS shared_messages",
                      "CREATE TABLE shared_messages (id uuid PRIMARY KEY, conversation_id uuid,"
                      " author text, tenant text, role text, content text,"
                      " created_at timestamptz)"],
           "INSERT INTO shared_messages VALUES (%s,%s,%s,%s,%s,%s,%s)",
           [(m.key, m.conversation, m.user, "acme", m.role, m.text, m.at) for m in messages])
    declare(source_table="shared_messages", user_id_column="author", customer_id_column="tenant",
            message_key_column="id", ledger_schema="msg_shared", redact_pii=True,
            pii_entities=["email"], messages={"role_column": "role", "text_column": "content"})
    regions = tmp_path / "regions.yaml"
    regions.write_text("regions:\n  - {name: second, synap_conn_id: synap_second, "
                       "schedule: after_primary}\n")
    monkeypatch.setenv("SYNAP_REGIONS_FILE", str(regions))
    use_connections(synap_extra=FAST)
    turns = expected_turns(messages)
    with running_synap(tmp_path / "second.sqlite3", "--tenant",
                       "second-key:inst_00000000000000e3:b2b") as second:
        monkeypatch.setenv("AIRFLOW_CONN_SYNAP_SECOND", json.dumps(
            {"conn_type": "synap", "host": second.url, "password": "second-key",
             "extra": FAST}))
        assert result(local_airflow.run_dag("synap_backfill", {"verify_sample": 0}))[
            "ingested"] == len(turns)
        assert result(local_airflow.run_dag("synap_replay_second", {}))["ingested"] == len(turns)
        first, replayed = stored_documents(), read_store(second.db_path)
    assert {d["document_id"]: d["document"] for d in replayed} == {
        d["document_id"]: d["document"] for d in first}
    assert len(first) == len(turns)
    assert all("@example.com" not in d["document"] for d in first)
    assert sum("<EMAIL>" in d["document"] for d in first) == 10

    # A migration blanks every message's text: refused before the first delete.
    with local_pg.connect() as conn:
        conn.execute("UPDATE shared_messages SET content = ''")
    refused = local_airflow.run_dag("synap_backfill", {"verify_sample": 0,
                                                       "apply_source_changes": "apply"})
    assert str(refused.state) == "failed"
    (failure,) = local_airflow.task_xcom(refused, "plan_partitions", "failure")
    assert f"{len(turns)} emptied in the source), more than max_source_change_share" in failure
    assert synap.get("/_local/stats")["memory_deletes"] == {}
    assert len(live_documents(synap)) == len(turns), "a memory was deleted"
