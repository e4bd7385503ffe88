"""One source, declared by the deployment: a replay started with no conf sends exactly what its
primary sent, and a trigger reaches nothing the declaration does not name.

Through dag.test() with the real SDK, embedded PostgreSQL and the local API in its default
(contract-only) mode, on a table whose columns are not the recipe's."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from include import local_airflow
from include.synap_local.process import running_synap
from tests.conftest import read_store

pytestmark = pytest.mark.integration
UTC = timezone.utc
TURNS = 60
# The app's own names: nothing of the recipe's.
CHATS = {"source_table": "chats", "user_id_column": "uid", "customer_id_column": "tenant",
         "conversation_id_column": "thread", "message_index_column": "seq",
         "user_text_column": "question", "assistant_text_column": "answer",
         "created_at_column": "asked_at", "source_timezone": "Europe/Berlin"}
PRIVATE = {"redact_pii": True, "pii_entities": ["email"],
           "document_transform": "tests.integration.transforms.clean_turn"}


def make_chats(pg: Any) -> None:
    """``TURNS`` turns, each question carrying an email address, each answer a signature."""
    thread = str(uuid.uuid4())
    with pg.connect() as conn:
        conn.execute("DROP TABLE IF EXISTS chats")
        conn.execute("CREATE TABLE chats (uid text, tenant text, thread uuid, seq int, question text,"
                     " answer text, asked_at timestamp)")  # naive: read in Europe/Berlin
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO chats VALUES (%s,%s,%s,%s,%s,%s,%s)", [
                (f"u{i % 3}", "acme", thread, i, f"mail me at person{i}@example.com",
                 f"noted {i}\n-- \nyour agent", datetime(2024, 5, 1) + timedelta(hours=i))
                for i in range(TURNS)])


@pytest.fixture()
def two_regions(local_pg, synap, use_connections, declare, tmp_path, monkeypatch):
    """The primary's Synap (the test's), and a second region's, as regions.yaml names it."""
    make_chats(local_pg)
    declare(**CHATS, **PRIVATE)
    regions = tmp_path / "regions.yaml"
    regions.write_text("regions:\n  - {name: second, synap_conn_id: synap_second, "
                       "schedule: after_primary}\n")
    monkeypatch.setenv("SYNAP_REGIONS_FILE", str(regions))
    use_connections(synap_extra={"backoff_max": 4})
    with running_synap(tmp_path / "second.sqlite3", "--tenant",
                       "second-key:inst_00000000000000e2:b2b") as second:
        monkeypatch.setenv("AIRFLOW_CONN_SYNAP_SECOND", json.dumps(
            {"conn_type": "synap", "host": second.url, "password": "second-key"}))
        yield second


def test_a_replay_started_with_no_conf_sends_what_its_mapped_redacted_primary_sent(
        airflow_db, two_regions, stored_documents):
    primary = local_airflow.run_dag("synap_backfill", {"verify_sample": 0})
    assert str(primary.state) == "success"
    replay = local_airflow.run_dag("synap_replay_second", {})  # as the scheduler starts it
    assert str(replay.state) == "success"

    first, second = stored_documents(), read_store(two_regions.db_path)
    assert len(first) == TURNS
    assert {d["document_id"]: d["document"] for d in second} == {
        d["document_id"]: d["document"] for d in first}
    assert {d["instance_id"] for d in second} == {"inst_00000000000000e2"}
    for document in (*first, *second):
        assert "@example.com" not in document["document"]  # redacted in both regions
        assert "<EMAIL>" in document["document"]
        assert "your agent" not in document["document"]  # the declared transform, in both
    # The original time of a naive column, read in the declared zone.
    assert min(d["document_created_at"] for d in first).startswith("2024-04-30T22:00:00")


@pytest.mark.parametrize("conf, named", [
    ({"source_table": "accounts", "conversation_id_column": "password_hash"},
     "conversation_id_column"),  # the first of the keys, by name
    ({"document_transform": "builtins.print"}, "document_transform"),
    ({"ledger_schema": "public"}, "ledger_schema"),
    ({"pii_token_key_conn_id": "postgres_default"}, "pii_token_key_conn_id"),
])
def test_a_conf_that_reaches_past_the_declaration_is_refused_before_anything_is_read(
        airflow_db, local_pg, synap, use_connections, declare, stored_documents, capfd, conf,
        named):
    make_chats(local_pg)
    declare(**CHATS)
    use_connections()
    with local_pg.connect() as conn:
        conn.execute("DROP TABLE IF EXISTS accounts")
        conn.execute("CREATE TABLE accounts (password_hash text)")
        before = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()

    dag_run = local_airflow.run_dag("synap_backfill", {"verify_sample": 0, **conf})

    assert str(dag_run.state) == "failed"
    (failure,) = local_airflow.task_xcom(dag_run, "resolve_config", "failure")
    assert failure.startswith(f"param {named!r}: declared by the deployment")
    assert stored_documents() == []
    with local_pg.connect() as conn:
        after = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
    assert after == before  # no ledger table in the app's schema
    output = capfd.readouterr()
    assert "mail me at" not in output.out + output.err  # no text printed by any transform


def batch_requests(synap: Any) -> int:
    return sum(n for k, n in synap.get("/_local/stats")["requests"].items() if "memories/batch" in k)


def test_an_unchanged_source_keeps_its_digest_and_is_not_resent_once_it_is_declared(
        airflow_db, local_pg, synap, use_connections, declare, stored_documents):
    from synap_backfill.airflow.backfill.dag import backfill_params
    from synap_backfill.airflow.backfill.tasks import plan_partitions, resolve_config, run_partition
    from synap_backfill.common.config import BackfillConfig

    make_chats(local_pg)
    use_connections()
    # Before the upgrade: the source from the trigger form, as an undeclared DAG's run takes it.
    form = {name: param.value for name, param in backfill_params().items()}
    before = resolve_config({**form, **CHATS, **PRIVATE}, conf={**CHATS, **PRIVATE}, known=form,
                            declared=None, dag_id="synap_backfill")
    for window in plan_partitions(before, dag_id="synap_backfill", run_id="before_upgrade"):
        run_partition(before, window, dag_id="synap_backfill", run_id="before_upgrade")
    assert len(stored_documents()) == TURNS
    sent = batch_requests(synap)

    declare(**CHATS, **PRIVATE)  # the same source, now declared by the deployment
    after = local_airflow.run_dag("synap_backfill", {"verify_sample": 0})

    assert str(after.state) == "success"
    (declared,) = local_airflow.task_results(after, "resolve_config")
    assert BackfillConfig.from_dict(declared).settings_digest == \
        BackfillConfig.from_dict(before).settings_digest
    (summary,) = local_airflow.task_results(after, "summarize")
    assert (summary["rows_read"], summary["unchanged"]) == (0, TURNS)
    assert batch_requests(synap) == sent  # nothing re-planned or resent


def sqlstate(exc: BaseException) -> str | None:
    return getattr(exc, "pgcode", None) or getattr(exc, "sqlstate", None)


def test_a_source_connection_can_write_nothing_and_cancels_a_statement_past_its_timeout(
        local_pg, use_connections):
    from synap_backfill.airflow.source_hook import source_hook

    use_connections()
    with local_pg.connect() as conn:
        conn.execute("DROP TABLE IF EXISTS untouched")
    conn = source_hook("postgres_default", statement_timeout=1).get_conn()
    try:
        with pytest.raises(Exception) as refused:
            conn.cursor().execute("CREATE TABLE untouched (x int)")
        assert sqlstate(refused.value) == "25006"  # read_only_sql_transaction
        conn.rollback()
        with pytest.raises(Exception) as cancelled:
            conn.cursor().execute("SELECT pg_sleep(5)")
        assert sqlstate(cancelled.value) == "57014"  # query_canceled: the statement timeout
    finally:
        conn.close()
    with local_pg.connect() as check:
        assert check.execute("SELECT to_regclass('untouched')").fetchone() == (None,)


def test_a_role_that_may_only_select_the_source_is_enough_to_backfill_it(
        airflow_db, local_pg, synap, use_connections, declare, stored_documents, monkeypatch):
    make_chats(local_pg)
    with local_pg.connect() as conn:
        conn.execute("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'chats_reader')"
                     " THEN CREATE ROLE chats_reader LOGIN; END IF; END $$")
        conn.execute("GRANT SELECT ON chats TO chats_reader")
    use_connections()
    reader = json.loads(local_pg.airflow_connection())
    monkeypatch.setenv("AIRFLOW_CONN_CHATS_READER", json.dumps({**reader, "login": "chats_reader"}))
    # The ledger is the deployment's own database; the source, a read-only role on the app's.
    declare(**CHATS, postgres_conn_id="chats_reader", ledger_conn_id="postgres_default")

    dag_run = local_airflow.run_dag("synap_backfill", {"verify_sample": 0})

    assert str(dag_run.state) == "success"
    assert len(stored_documents()) == TURNS


# A read-only SELECT as the source: the user on the conversation's row, a join away.
JOIN = ("SELECT m.thread, m.seq, m.question, m.answer, m.asked_at, t.uid, t.tenant"
        " FROM {messages} m JOIN threads t ON t.thread = m.thread")
JOINED = {"source_table": "chat_turns", "user_id_column": "uid", "customer_id_column": "tenant",
          "conversation_id_column": "thread", "message_index_column": "seq",
          "user_text_column": "question", "assistant_text_column": "answer",
          "created_at_column": "asked_at"}


def make_threads(pg: Any, messages: str, rows: int, threads: int = 20) -> None:
    """``rows`` turns over ``threads`` conversations, a minute apart; each thread's user and
    customer on its own row in ``threads``."""
    with pg.connect() as conn:
        conn.execute(f"DROP TABLE IF EXISTS {messages}")
        conn.execute("DROP TABLE IF EXISTS threads")
        conn.execute("CREATE TABLE threads (thread uuid PRIMARY KEY, uid text, tenant text)")
        conn.execute("INSERT INTO threads SELECT ('00000000-0000-4000-8000-' || lpad(i::text, 12,"
                     " '0'))::uuid, 'u' || mod(i, 4), 'acme' FROM generate_series(0, %s) i",
                     (threads - 1,))
        conn.execute(f"CREATE TABLE {messages} AS SELECT ('00000000-0000-4000-8000-' ||"
                     f" lpad(mod(i, {threads})::text, 12, '0'))::uuid AS thread, i / {threads} AS seq,"
                     " 'question ' || i AS question, 'answer ' || i AS answer,"
                     " timestamptz '2024-05-01' + i * interval '1 minute' AS asked_at"
                     " FROM generate_series(0, %s) i", (rows - 1,))
        conn.execute(f"CREATE INDEX ON {messages} (asked_at)")
        conn.execute(f"ANALYZE {messages}")
        conn.execute("ANALYZE threads")


def test_a_windows_range_reaches_the_base_tables_index_through_a_declared_select(local_pg):
    from synap_backfill.common.source import SourceDeclaration
    from synap_backfill.extract import sources

    make_threads(local_pg, "messages_1m", rows=1_000_000, threads=1000)
    declared = SourceDeclaration.of(source_query=JOIN.format(messages="messages_1m"), **JOINED)
    from synap_backfill.common.config import BackfillConfig

    sql = sources.turns(BackfillConfig.from_params(declared.values))
    day = {"s0": datetime(2024, 5, 2, tzinfo=UTC), "e0": datetime(2024, 5, 3, tzinfo=UTC)}
    with local_pg.connect() as conn:
        plan = "\n".join(r[0] for r in conn.execute("EXPLAIN " + sql.window_rows(1), day))
        counted = conn.execute(f"SELECT count(*) FROM {sql.relation} WHERE {sql.in_ranges(1)}",
                               day).fetchone()
    assert "Index" in plan and "messages_1m_asked_at_idx" in plan, plan  # not a Seq Scan of 1M
    assert "Seq Scan on messages_1m" not in plan, plan
    assert counted == (1440,)  # a day of minutes


def test_a_declared_select_over_a_join_is_backfilled_and_a_person_erased_from_it(
        airflow_db, local_pg, synap, use_connections, declare, stored_documents, monkeypatch):
    make_threads(local_pg, "thread_messages", rows=TURNS, threads=6)
    monkeypatch.setenv("AIRFLOW_CONN_SYNAP_PERSON_KEY", json.dumps(
        {"conn_type": "generic", "password": "a-long-random-person-key-for-this-test-only"}))
    use_connections()
    declare(source_query=JOIN.format(messages="thread_messages"), ledger_schema="joined_ledger",
            **JOINED)

    backfill = local_airflow.run_dag("synap_backfill", {"verify_sample": 0})

    assert str(backfill.state) == "success"
    stored = stored_documents()
    assert len(stored) == TURNS
    with local_pg.connect() as conn:
        users = dict(conn.execute("SELECT m.thread::text || ':' || m.seq, t.uid FROM thread_messages"
                                  " m JOIN threads t USING (thread)").fetchall())
    assert {d["document_id"].split(":", 1)[1]: d["user_id"] for d in stored} == users
    theirs = sum(1 for u in users.values() if u == "u1")

    erase = local_airflow.run_dag("synap_erase", {"user_id": "u1", "customer_id": "acme",
                                                  "dry_run": False})

    assert str(erase.state) == "success"
    (summary,) = local_airflow.task_results(erase, "summarize_erase")
    assert (summary["documents"], summary["problems"]) == (theirs, [])
    assert summary["deleted"] > 0


def test_a_cron_replays_interval_of_the_declared_source_is_sent_as_the_primary_sends_it(
        airflow_db, local_pg, synap, use_connections, declare, stored_documents):
    """dag.test() makes manual runs only: the task bodies, as the runner calls them for a
    scheduled run, with the declaration the replay's DAG is built from."""
    from synap_backfill.airflow.backfill.dag import backfill_params
    from synap_backfill.airflow.backfill.tasks import plan_partitions, resolve_config, run_partition
    from synap_backfill.common.source import SourceDeclaration

    make_chats(local_pg)
    use_connections()
    primary = SourceDeclaration.of(**CHATS, **PRIVATE)
    replay = primary.overriding("regions.yaml, region 'cron'", synap_conn_id="synap_default")
    form = {name: param.value for name, param in backfill_params(replay).items()}
    day = (datetime(2024, 5, 1, 22, tzinfo=UTC), datetime(2024, 5, 2, 22, tzinfo=UTC))

    config = resolve_config(form, conf={}, known=form, interval=day, declared=replay,
                            dag_id="synap_replay_cron")
    for window in plan_partitions(config, dag_id="synap_replay_cron", run_id="scheduled__1"):
        run_partition(config, window, dag_id="synap_replay_cron", run_id="scheduled__1")

    sent = stored_documents()
    # The naive asked_at read in Europe/Berlin: May 2 00:00 to May 3 00:00 local, 24 turns.
    assert len(sent) == 24
    assert all("<EMAIL>" in d["document"] and "@example.com" not in d["document"]
               and "your agent" not in d["document"] for d in sent)


def test_undo_and_rekey_read_the_declared_mapped_source_as_the_backfill_did(
        airflow_db, local_pg, synap, use_connections, declare, stored_documents, monkeypatch):
    make_chats(local_pg)
    monkeypatch.setenv("AIRFLOW_CONN_SYNAP_PERSON_KEY", json.dumps(
        {"conn_type": "generic", "password": "first-person-key-for-this-test-only-0001"}))
    use_connections(synap_extra={"requests_per_minute": 0})
    declare(**CHATS, **PRIVATE, ledger_schema="mapped_ledger")
    backfill = local_airflow.run_dag("synap_backfill", {"verify_sample": 0})
    assert str(backfill.state) == "success" and len(stored_documents()) == TURNS

    # A new key: the rekey finds every person in the mapped source (uid, tenant), by its columns.
    monkeypatch.setenv("AIRFLOW_CONN_SYNAP_PERSON_KEY", json.dumps(
        {"conn_type": "generic", "password": "second-person-key-for-this-test-only-02",
         "extra": {"previous_passwords": ["first-person-key-for-this-test-only-0001"]}}))
    rekey = local_airflow.run_dag("synap_rekey", {"dry_run": False})
    assert str(rekey.state) == "success"
    (rekeyed,) = local_airflow.task_results(rekey, "summarize_rekey")
    assert (rekeyed["rederived"], rekeyed["left"]) == (TURNS, 0)

    undo = local_airflow.run_dag("synap_undo", {"run_id": backfill.run_id, "dry_run": False})
    assert str(undo.state) == "success"
    (undone,) = local_airflow.task_results(undo, "summarize_undo")
    assert (undone["documents"], undone["failed"]) == (TURNS, {}) and undone["deleted"] > 0
    # Another DAG's run is not this deployment's to undo.
    with pytest.raises(Exception, match="dag_id|enum|not one of"):
        local_airflow.run_dag("synap_undo", {"dag_id": "someone_elses_dag", "run_id": "x"})
