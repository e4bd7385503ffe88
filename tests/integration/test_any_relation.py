"""Any relation a user points the backfill at: views, materialized views, partitioned tables,
mixed-case names, and timestamps nobody can represent. Each through the DAG, with exact counts
and every stored document checked field by field."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from include import local_airflow
from synap_backfill.delivery.documents import RejectReason
from tests.conftest import make_table, read_store

pytestmark = pytest.mark.integration
UTC = timezone.utc
AT = datetime(2024, 5, 1, 9, 0, 0, 123456, tzinfo=UTC)


def summary_counts(dag_run: Any) -> tuple[int, int, int, dict[str, int]]:
    (summary,) = local_airflow.task_results(dag_run, "summarize")
    return (summary["rows_read"], summary["ingested"], summary["duplicates"],
            summary["rejected_by_reason"])


def assert_stored_exactly(db_path: Any, expected: list[tuple]) -> None:
    """``expected``: (conversation_id, index, user, customer, user_text, assistant_text, created_at)."""
    docs = {d["document_id"]: d for d in read_store(db_path)}
    assert len(docs) == len(expected)
    for conv, index, user, customer, user_text, assistant_text, at in expected:
        doc = docs[f"backfill:{conv}:{index}"]
        assert datetime.fromisoformat(doc["document_created_at"]) == at.astimezone(UTC)
        assert doc["document_created_at"].endswith("+00:00")
        assert (doc["user_id"], doc["customer_id"]) == (user, customer)
        assert doc["document"] == f"User: {user_text}\nAssistant: {assistant_text}"


@pytest.fixture()
def messages(local_pg) -> list[tuple]:
    """A messages table (one row per message), and the turns a view pairs it into."""
    turns = []
    with local_pg.connect() as conn:
        conn.execute("DROP TABLE IF EXISTS app_messages CASCADE")
        conn.execute("CREATE TABLE app_messages (id bigserial PRIMARY KEY, conv uuid, seq int,"
                     " role text, body text, account text, org text, sent_at timestamptz)")
        for c in range(3):
            conv = str(uuid.uuid4())
            for turn in range(4):
                at = AT + timedelta(days=c, minutes=turn)
                user_text, reply = f"question {c}.{turn} ✓", f"answer {c}.{turn}"
                conn.execute("INSERT INTO app_messages (conv, seq, role, body, account, org, sent_at)"
                             " VALUES (%s, %s, 'user', %s, %s, %s, %s),"
                             " (%s, %s, 'assistant', %s, %s, %s, %s)",
                             (conv, 2 * turn, user_text, f"u{c}", "acme", at,
                              conv, 2 * turn + 1, reply, f"u{c}", "acme", at + timedelta(seconds=5)))
                turns.append((conv, turn, f"u{c}", "acme", user_text, reply, at))
        conn.execute("""CREATE VIEW app_turns AS
            SELECT q.account AS user_id, q.org AS customer_id, q.conv AS conversation_id,
                   q.seq / 2 AS message_index, q.body AS user_text, a.body AS assistant_text,
                   q.sent_at AS created_at
            FROM app_messages q JOIN app_messages a ON a.conv = q.conv AND a.seq = q.seq + 1
            WHERE q.role = 'user'""")
    return turns


def test_a_view_pairing_messages_into_turns(messages, run_backfill, synap):
    dag_run = run_backfill(source_table="app_turns", min_rows_per_partition=1)

    assert str(dag_run.state) == "success"
    assert summary_counts(dag_run) == (12, 12, 0, {})
    assert_stored_exactly(synap.db_path, messages)


def test_a_materialized_view(messages, local_pg, run_backfill, synap):
    with local_pg.connect() as conn:
        conn.execute("CREATE MATERIALIZED VIEW app_turns_mv AS SELECT * FROM app_turns")

    dag_run = run_backfill(source_table="app_turns_mv")

    assert str(dag_run.state) == "success"
    assert summary_counts(dag_run) == (12, 12, 0, {})
    assert_stored_exactly(synap.db_path, messages)


def test_a_table_partitioned_by_month_with_bad_rows_in_two_children(local_pg, run_backfill, synap):
    conv = str(uuid.uuid4())
    good = [(conv, i, "u1", "c1", f"turn {i}", "ok", datetime(2024, 4 + i % 2, 10 + i, tzinfo=UTC))
            for i in range(6)]
    bad = [(conv, 10, "u1", "c1", "", "", datetime(2024, 4, 20, tzinfo=UTC)),  # April's child
           (conv, 11, "u1", "c1", None, None, datetime(2024, 5, 20, tzinfo=UTC))]  # May's
    with local_pg.connect() as conn:
        conn.execute("DROP TABLE IF EXISTS conv_by_month CASCADE")
        conn.execute("CREATE TABLE conv_by_month (conversation_id uuid, message_index int,"
                     " user_id text, customer_id text, user_text text, assistant_text text,"
                     " created_at timestamptz) PARTITION BY RANGE (created_at)")
        conn.execute("CREATE TABLE conv_2024_04 PARTITION OF conv_by_month"
                     " FOR VALUES FROM ('2024-04-01') TO ('2024-05-01')")
        conn.execute("CREATE TABLE conv_2024_05 PARTITION OF conv_by_month"
                     " FOR VALUES FROM ('2024-05-01') TO ('2024-06-01')")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO conv_by_month VALUES (%s,%s,%s,%s,%s,%s,%s)", good + bad)

    dag_run = run_backfill(source_table="conv_by_month", window_size="P1M", max_rejected_share=1)

    assert str(dag_run.state) == "success"
    assert summary_counts(dag_run) == (8, 6, 0, {RejectReason.EMPTY_TURN: 2})
    assert_stored_exactly(synap.db_path, good)
    with local_pg.connect() as conn:
        recorded = conn.execute("SELECT partition, row_key FROM synap_backfill.rejected_rows"
                                " WHERE run_id = %s ORDER BY row_key", (dag_run.run_id,)).fetchall()
    # Both children hold their bad row at ctid (0,4), in one partition: keyed by
    # ctid, one of them was lost.
    assert recorded == [("2024-04-01 → 2024-06-01", f"{conv}:10"),
                        ("2024-04-01 → 2024-06-01", f"{conv}:11")]


def test_a_mixed_case_schema_and_table(local_pg, run_backfill, synap):
    conv = str(uuid.uuid4())
    rows = [(conv, i, "u1", "c1", f"turn {i}", "ok", AT + timedelta(hours=i)) for i in range(5)]
    with local_pg.connect() as conn:
        conn.execute('DROP SCHEMA IF EXISTS "ChatApp" CASCADE')
        conn.execute('CREATE SCHEMA "ChatApp"')
        conn.execute('CREATE TABLE "ChatApp"."Turns" ("ConversationId" uuid, "Idx" int,'
                     ' "UserId" text, "OrgId" text, "Asked" text, "Answered" text, "At" timestamptz)')
        with conn.cursor() as cur:
            cur.executemany('INSERT INTO "ChatApp"."Turns" VALUES (%s,%s,%s,%s,%s,%s,%s)', rows)

    dag_run = run_backfill(source_table="ChatApp.Turns", conversation_id_column="ConversationId",
                           message_index_column="Idx", user_id_column="UserId",
                           customer_id_column="OrgId", user_text_column="Asked",
                           assistant_text_column="Answered", created_at_column="At")

    assert str(dag_run.state) == "success"
    assert summary_counts(dag_run) == (5, 5, 0, {})
    assert_stored_exactly(synap.db_path, rows)


def test_timestamps_nobody_can_represent_are_rejected_and_the_plan_goes_on(
        local_pg, run_backfill, synap, caplog):
    caplog.set_level("INFO", logger="synap_backfill")
    conv = str(uuid.uuid4())
    good = [(conv, i, "u1", "c1", f"turn {i}", "ok", AT + timedelta(hours=i)) for i in range(4)]
    # The SDK accepts year 9999: the user's call, sent, and shown in the plan log.
    good.append((conv, 9, "u1", "c1", "far future", "ok", datetime(9999, 6, 1, 12, tzinfo=UTC)))
    make_table(local_pg, "conv_infinite", [(u, c, cv, i, q, a, t) for cv, i, u, c, q, a, t in good])
    with local_pg.connect() as conn:
        for index, literal in enumerate(["infinity", "-infinity", "10000-01-01", "0100-01-01 BC"]):
            conn.execute("INSERT INTO conv_infinite VALUES ('u1', 'c1', %s, %s, 'x', 'y', %s)",
                         (conv, 10 + index, literal))

    dag_run = run_backfill(source_table="conv_infinite", max_rejected_share=1,
                           min_rows_per_partition=1)

    assert str(dag_run.state) == "success"
    assert summary_counts(dag_run) == (9, 5, 0, {RejectReason.UNREPRESENTABLE_TIMESTAMP: 4})
    assert_stored_exactly(synap.db_path, good)
    (plan,) = local_airflow.task_results(dag_run, "plan_partitions")
    assert [w["label"] for w in plan] == ["2024-05-01 → 2024-05-02", "9999-06-01 → 9999-06-02",
                                          "rows without a usable timestamp"]
    assert "from the window 2024-05-01 → 2024-05-02 to 9999-06-01 → 9999-06-02" in caplog.text


def test_a_tiebreak_column_orders_copies_of_one_turn_and_the_first_is_sent(
        local_pg, run_backfill, synap):
    conv = str(uuid.uuid4())
    with local_pg.connect() as conn:
        conn.execute("DROP TABLE IF EXISTS conv_tiebreak")
        conn.execute("CREATE TABLE conv_tiebreak (id int PRIMARY KEY, conversation_id uuid,"
                     " message_index int, user_id text, customer_id text, user_text text,"
                     " assistant_text text, created_at timestamptz)")
        # The same turn three times at one instant, inserted out of id order.
        for row_id, text in [(30, "third"), (10, "first"), (20, "second")]:
            conn.execute("INSERT INTO conv_tiebreak VALUES (%s, %s, 0, 'u1', 'c1', %s, 'ok', %s)",
                         (row_id, conv, text, AT))

    dag_run = run_backfill(source_table="conv_tiebreak", tiebreak_column="id", max_rejected_share=1)

    assert summary_counts(dag_run) == (3, 1, 0, {RejectReason.DUPLICATED_IN_SOURCE: 2})
    assert_stored_exactly(synap.db_path, [(conv, 0, "u1", "c1", "first", "ok", AT)])


def test_a_partition_of_only_rejected_rows_checkpoints_as_it_goes(local_pg, run_backfill, synap):
    conv = str(uuid.uuid4())
    with local_pg.connect() as conn:
        conn.execute("DROP TABLE IF EXISTS conv_all_bad")
        conn.execute("CREATE TABLE conv_all_bad AS SELECT %s::uuid AS conversation_id,"
                     " i AS message_index, 'u1' AS user_id, 'c1' AS customer_id, ''::text AS user_text,"
                     " ''::text AS assistant_text, %s::timestamptz + i * interval '1 second' AS created_at"
                     " FROM generate_series(1, 3500) AS i", (conv, AT))

    dag_run = run_backfill(source_table="conv_all_bad", max_rejected_share=1)

    assert summary_counts(dag_run) == (3500, 0, 0, {RejectReason.EMPTY_TURN: 3500})
    with local_pg.connect() as conn:
        (recorded,) = conn.execute("SELECT count(*) FROM synap_backfill.rejected_rows"
                                   " WHERE run_id = %s", (dag_run.run_id,)).fetchone()
    assert recorded == 3500
    assert synap.get("/_local/stats")["documents"] == {}


def test_a_unique_index_on_the_turn_spares_the_planner_its_copies_pass(
        local_pg, run_backfill, synap, caplog):
    caplog.set_level("INFO", logger="synap_backfill")
    conv = str(uuid.uuid4())
    rows = [(conv, i, "u1", "c1", f"turn {i}", "ok", AT + timedelta(hours=i)) for i in range(5)]
    with local_pg.connect() as conn:
        conn.execute("DROP TABLE IF EXISTS conv_unique")
        conn.execute("CREATE TABLE conv_unique (conversation_id uuid, message_index int,"
                     " user_id text, customer_id text, user_text text, assistant_text text,"
                     " created_at timestamptz, UNIQUE (message_index, conversation_id))")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO conv_unique VALUES (%s,%s,%s,%s,%s,%s,%s)", rows)

    dag_run = run_backfill(source_table="conv_unique")

    assert summary_counts(dag_run) == (5, 5, 0, {})
    assert "conv_unique has a unique index on (conversation_id, message_index)" in caplog.text
    assert "has no index on created_at" in caplog.text  # the plan warns, with the statement
    assert 'CREATE INDEX CONCURRENTLY ON "conv_unique" ("created_at")' in caplog.text
